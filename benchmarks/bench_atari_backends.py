"""ppox's two Atari env backends side by side: `--env-backend ale` (ALE's C++ vector env,
ppox.rl.atari.AleVectorEnv) vs the default gymnasium path (AtariPreprocessing + ppox's wrappers +
FrameStackObservation in a sync vector env), both with the nine Atari details as ppox configures them.

    python benchmarks/bench_atari_backends.py [--env BreakoutNoFrameskip-v4] [--num-envs 8] [--rounds 2]
        [--env-steps 2000] [--train-steps 20480]

Two measurements, alternating the backends within each round (the first backend flips every round):
* env only: env-steps/s of ppox's `VecEnv` (what the trainer steps: the vector env and the encoding to a
  uint8 (num_envs, 4, 84, 84) tensor) under uniformly random actions drawn before timing, after a warm-up.
* training: `ppox train <env> --env-backend <b> --total-timesteps N` (the `atari` preset: 8 envs x 128
  steps, the Nature CNN), each a fresh subprocess on the CPU: env-steps/s over the process's wall time
  (start-up included) and ppox's own `sps` of its last iteration.

Medians over rounds. Results (Markdown and JSON, the producing command at the top) go to benchmarks/results/.
Needs `pip install -e .[atari]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("ale", "gymnasium")


def env_only(env_id: str, backend: str, num_envs: int, steps: int, seed: int) -> float:
    """Env-steps/s of ppox's VecEnv on `backend` under random actions (a warm-up of 50 steps untimed)."""
    from ppox.rl.envs import VecEnv

    envs = VecEnv(env_id, num_envs, seed, torch.device("cpu"), backend=backend)
    try:
        envs.reset()
        n = int(envs.single_action_space.n)
        actions = torch.from_numpy(np.random.default_rng(seed).integers(0, n, (steps + 50, num_envs)))
        for t in range(50):
            envs.step(actions[t])
        start = time.perf_counter()
        for t in range(50, steps + 50):
            envs.step(actions[t])
        return steps * num_envs / (time.perf_counter() - start)
    finally:
        envs.close()


def train(env_id: str, backend: str, steps: int, seed: int, workdir: Path) -> dict:
    run_dir = workdir / f"{backend}_{seed}"
    cmd = [sys.executable, "-m", "ppox", "train", env_id, "--env-backend", backend, "--seed", str(seed),
           "--total-timesteps", str(steps), "--run-dir", str(run_dir), "--overwrite", "--no-progress",
           "--eval-episodes", "0", "--no-tensorboard"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ppox train --env-backend {backend} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    games = sum(r["episodes"] for r in rows)
    return {"backend": backend, "seed": seed, "steps": rows[-1]["global_step"], "wall_s": round(wall, 1),
            "sps_wall": round(rows[-1]["global_step"] / wall, 1), "sps_last_iteration": rows[-1]["sps"],
            "games": games, "command": shlex.join(cmd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--env-steps", type=int, default=2000, help="vector steps per env-only measurement")
    parser.add_argument("--train-steps", type=int, default=20480, help="0: skip the training runs")
    parser.add_argument("--out", default=None, help="result file stem (default atari_backends_<env>_<steps>)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # env-only: the envs' own threads (ALE) are what is measured, not torch's
    env_rates: dict[str, list[float]] = {b: [] for b in BACKENDS}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]
            for backend in order:
                rate = env_only(args.env, backend, args.num_envs, args.env_steps, seed=r)
                env_rates[backend].append(round(rate, 1))
                print(f"round {r + 1} env-only {backend}: {rate:.0f} env-steps/s", flush=True)
            if args.train_steps:
                for backend in order:
                    runs.append(train(args.env, backend, args.train_steps, r + 1, Path(tmp)))
                    print(f"round {r + 1} train {backend}: {runs[-1]['sps_wall']:.0f} env-steps/s (wall), "
                          f"{runs[-1]['sps_last_iteration']:.0f} (last iteration)", flush=True)
    summary = {}
    for b in BACKENDS:
        mine = [x for x in runs if x["backend"] == b]
        summary[b] = {"env_only_median": round(statistics.median(env_rates[b]), 1), "env_only": env_rates[b]}
        if mine:
            summary[b]["train_sps_wall_median"] = round(statistics.median(x["sps_wall"] for x in mine), 1)
            summary[b]["train_sps_last_median"] = round(statistics.median(x["sps_last_iteration"] for x in mine), 1)
    command = "python " + shlex.join(sys.argv)
    stem = args.out or f"atari_backends_{args.env.replace('/', '_')}_{args.train_steps}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"command": command, "env": args.env, "num_envs": args.num_envs, "rounds": args.rounds,
         "env_steps": args.env_steps, "train_steps": args.train_steps, "summary": summary, "runs": runs,
         "cpu_count": os.cpu_count()}, indent=1))
    lines = [f"# ppox Atari env backends: {args.env}, {args.num_envs} envs, {args.rounds} rounds (CPU)", "",
             f"`{command}`", "",
             "| backend | env-only env-steps/s (median; per round) | training env-steps/s, wall (median) | "
             "training env-steps/s, last iteration (median) |", "|---|---|---|---|"]
    for b in BACKENDS:
        s = summary[b]
        lines.append(f"| {b} | {s['env_only_median']:.0f} ({', '.join(f'{v:.0f}' for v in s['env_only'])}) | "
                     f"{s.get('train_sps_wall_median', '-')} | {s.get('train_sps_last_median', '-')} |")
    ratio = summary["ale"]["env_only_median"] / summary["gymnasium"]["env_only_median"]
    lines += ["", f"env-only ratio ale / gymnasium: {ratio:.2f}."]
    if runs:
        t = summary["ale"]["train_sps_wall_median"] / summary["gymnasium"]["train_sps_wall_median"]
        lines += [f"training ratio ale / gymnasium (wall, start-up included): {t:.2f}; "
                  f"{args.train_steps:,} steps per run, the `atari` preset."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
