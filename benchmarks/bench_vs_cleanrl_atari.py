"""ppox vs CleanRL's own `ppo_atari.py` on an Atari game, same settings, run side by side.

    python benchmarks/bench_vs_cleanrl_atari.py --cleanrl-dir ../shared/peers/cleanrl \
        --env BreakoutNoFrameskip-v4 --seeds 2 --steps 1000000

CleanRL's file runs unmodified from the folder given (its `cleanrl_utils` beside it), under a launcher that
registers the ALE ids and gives it gymnasium 0.29's wrapper names and vector-env info format, which the
file was written for (see CLEANRL_LAUNCH). ppox runs `ppox train <env>` with its `atari` preset, which is
CleanRL's settings (8 envs x 128 steps, 4 minibatches, 4 epochs, lr 2.5e-4 annealed, clip 0.1, ent 0.01,
vf 0.5, grad norm 0.5, the Nature CNN shared by actor and critic, the nine Atari wrappers). Runs alternate
(ppox first for odd seeds, CleanRL first for even ones), each a fresh subprocess on the CPU.

Measures: env-steps/s over the whole run (steps / the process's wall time, start-up included) and the
training return (whole games) at the same steps: the mean of the games that ended in each window of
`--window` steps, from CleanRL's printed `episodic_return` lines and ppox's metrics.jsonl. Results (Markdown
and JSON, the producing command at the top) go to benchmarks/results/. Needs `pip install -e .[atari,bench]`
(ale-py, opencv for CleanRL's wrappers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# CleanRL's ppo_atari.py is written for gymnasium 0.29: the launcher gives it that version's wrapper names and
# its vector env (same-step autoreset, infos["final_info"] a per-env list of dicts) on top of gymnasium 1.x,
# then runs the file unmodified. Nothing of its algorithm is touched.
CLEANRL_LAUNCH = """
import sys, runpy, numpy as np, ale_py, gymnasium as gym
gym.register_envs(ale_py)
gym.wrappers.GrayScaleObservation = gym.wrappers.GrayscaleObservation
gym.wrappers.FrameStack = gym.wrappers.FrameStackObservation

class SyncVectorEnv029(gym.vector.SyncVectorEnv):
    def __init__(self, env_fns, **kw):
        super().__init__(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, **kw)

    def step(self, actions):
        obs, reward, terminated, truncated, infos = super().step(actions)
        final = infos.get("final_info")
        if final is not None:
            per_env = np.full(self.num_envs, None, dtype=object)
            episode, mask = final.get("episode"), final.get("_episode")
            if episode is not None:
                for i in np.flatnonzero(mask):
                    per_env[i] = {"episode": {"r": np.array([episode["r"][i]]), "l": np.array([episode["l"][i]])}}
            infos = dict(infos, final_info=per_env)
        return obs, reward, terminated, truncated, infos

gym.vector.SyncVectorEnv = SyncVectorEnv029
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
RETURN_LINE = re.compile(r"global_step=(\d+), episodic_return=\[?([-\d.eE+]+)\]?")


def run_cleanrl(cleanrl_dir: Path, env: str, seed: int, steps: int, workdir: Path) -> dict:
    script = cleanrl_dir / "ppo_atari.py"
    cmd = [sys.executable, "-c", CLEANRL_LAUNCH, str(script), "--env-id", env, "--seed", str(seed),
           "--total-timesteps", str(steps), "--no-cuda"]
    environ = dict(os.environ, PYTHONPATH=f"{cleanrl_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=environ, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"CleanRL failed:\n{proc.stderr[-3000:]}")
    games = [(int(m[1]), float(m[2])) for m in RETURN_LINE.finditer(proc.stdout)]
    return {"impl": "cleanrl", "seed": seed, "wall_s": round(wall, 1), "games": games,
            "steps": steps, "command": shlex.join(cmd)}


def run_ppox(env: str, seed: int, steps: int, workdir: Path) -> dict:
    run_dir = workdir / f"ppox_{seed}"
    cmd = [sys.executable, "-m", "ppox", "train", env, "--seed", str(seed), "--total-timesteps", str(steps),
           "--run-dir", str(run_dir), "--overwrite", "--no-progress", "--eval-episodes", "0", "--no-tensorboard"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ppox failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # ppox logs the mean of each iteration's finished games; weight it by their count, at the iteration's end
    games = [(r["global_step"], r["episodic_return_mean"]) for r in rows if r["episodes"]
             for _ in range(r["episodes"])]
    return {"impl": "ppox", "seed": seed, "wall_s": round(wall, 1), "games": games,
            "steps": rows[-1]["global_step"], "command": shlex.join(cmd)}


def windows(games: list[tuple[int, float]], steps: int, window: int) -> list[float | None]:
    out = []
    for end in range(window, steps + 1, window):
        inside = [r for s, r in games if end - window < s <= end]
        out.append(round(statistics.mean(inside), 2) if inside else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cleanrl-dir", type=Path, required=True, help="folder holding CleanRL's ppo_atari.py")
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=None, help="steps per return window (default steps/5)")
    parser.add_argument("--out", default=None, help="result file stem (default atari_<env>_<steps>)")
    args = parser.parse_args()
    window = args.window or max(1024, args.steps // 5)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            order = ["ppox", "cleanrl"] if seed % 2 else ["cleanrl", "ppox"]
            for impl in order:
                print(f"seed {seed}: {impl} ...", flush=True)
                runs.append(run_ppox(args.env, seed, args.steps, Path(tmp)) if impl == "ppox"
                            else run_cleanrl(args.cleanrl_dir.resolve(), args.env, seed, args.steps, Path(tmp)))
                r = runs[-1]
                print(f"  {r['steps'] / r['wall_s']:.0f} env-steps/s, {len(r['games'])} games", flush=True)
    table = {}
    for impl in ("ppox", "cleanrl"):
        mine = [r for r in runs if r["impl"] == impl]
        sps = [r["steps"] / r["wall_s"] for r in mine]
        curves = [windows(r["games"], args.steps, window) for r in mine]
        mean_curve = []
        for i in range(len(curves[0])):
            values = [c[i] for c in curves if c[i] is not None]
            mean_curve.append(round(statistics.mean(values), 2) if values else None)
        table[impl] = {"sps_mean": round(statistics.mean(sps), 1), "sps": [round(s, 1) for s in sps],
                       "return_curve": mean_curve}
    ratio = table["ppox"]["sps_mean"] / table["cleanrl"]["sps_mean"]
    command = "python " + shlex.join(sys.argv)
    stem = args.out or f"atari_{args.env.replace('/', '_')}_{args.steps}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"command": command, "env": args.env, "steps": args.steps, "seeds": args.seeds, "window": window,
         "summary": table, "sps_ratio": round(ratio, 2), "runs": runs}, indent=1))
    ends = list(range(window, args.steps + 1, window))
    lines = [f"# ppox vs CleanRL ppo_atari.py: {args.env}, {args.steps:,} steps, {args.seeds} seeds (CPU)", "",
             f"`{command}`", "", "| | env-steps/s (mean; per seed) | " +
             " | ".join(f"return @{e // 1000}k" for e in ends) + " |",
             "|---|---|" + "---|" * len(ends)]
    for impl in ("ppox", "cleanrl"):
        t = table[impl]
        lines.append(f"| {impl} | {t['sps_mean']:.0f} ({', '.join(f'{s:.0f}' for s in t['sps'])}) | " +
                     " | ".join("-" if v is None else f"{v:.2f}" for v in t["return_curve"]) + " |")
    lines += ["", f"env-steps/s ratio ppox / CleanRL: {ratio:.2f}. Returns: training games (whole games) ending "
              f"in each {window:,}-step window, mean over seeds. Wall time includes process start-up."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
