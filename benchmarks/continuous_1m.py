"""ppox at CleanRL's continuous-control defaults over the standard 1M-step budget, next to CleanRL's published figures.

    python benchmarks/continuous_1m.py --envs HalfCheetah-v5 Hopper-v5 Walker2d-v5 --seeds 3 --runs-dir /tmp/mj

Each (env, seed) is `ppox train ENV --preset cleanrl-continuous --seed S --total-timesteps 1000000` in a fresh
subprocess, sequentially, into RUNS_DIR/ENV_sS (a finished run directory is read, not trained again, so a long
study can be continued). Reported per env, mean ± std over seeds: the training return (raw episodic returns of the
games that ended in the last 100k steps, the quantity CleanRL's figures average) and ppox's final deterministic
evaluation (20 episodes). CleanRL's figures are for the v4 envs (its README, `ppo_continuous_action.py`, 1M steps,
3 seeds); gymnasium 1.x ships v5, so the comparison is indicative, not paired. env-steps/s are not compared here
(the runs are long and the machine is shared): that is `bench_vs_cleanrl.py`'s job, alternating runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from bench_vs_sb3 import write

# CleanRL's published ppo_continuous_action.py returns at 1M steps (v4 envs): mean ± std over 3 seeds
CLEANRL_V4 = {"HalfCheetah-v5": (1442.64, 46.03), "Hopper-v5": (2382.86, 271.74), "Walker2d-v5": (2287.95, 571.78)}


def train_return(run_dir: Path, window: int) -> float | None:
    """Mean raw episodic return of the games that ended in the last `window` steps (per-iteration means,
    weighted by the games each iteration finished)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = records[-1]["global_step"]
    total, games = 0.0, 0
    for r in records:
        if r["global_step"] > last - window and r.get("episodes") and r.get("episodic_return_mean") is not None:
            total += r["episodic_return_mean"] * r["episodes"]
            games += r["episodes"]
    return total / games if games else None


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):,.1f} ± {std:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(CLEANRL_V4))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/continuous_1m"))
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--name", default=None)
    a = parser.parse_args()
    command = "python benchmarks/continuous_1m.py " + shlex.join(sys.argv[1:])
    rows, data = [], {"envs": {}}
    for env in a.envs:
        per_seed = []
        for seed in range(1, a.seeds + 1):
            run_dir = a.runs_dir / f"{env}_s{seed}"
            cmd = [sys.executable, "-m", "ppox", "train", env, "--preset", "cleanrl-continuous", "--seed", str(seed),
                   "--total-timesteps", str(a.steps), "--run-dir", str(run_dir), "--no-progress"]
            if not (run_dir / "summary.json").exists():
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            summary = json.loads((run_dir / "summary.json").read_text())
            per_seed.append({"seed": seed, "command": shlex.join(cmd),
                             "train_return": train_return(run_dir, a.window),
                             "eval_return": summary.get("eval_return_mean"),
                             "wall_seconds": summary.get("wall_seconds")})
        data["envs"][env] = per_seed
        train = [r["train_return"] for r in per_seed if r["train_return"] is not None]
        evals = [r["eval_return"] for r in per_seed if r["eval_return"] is not None]
        ref = CLEANRL_V4.get(env)
        rows.append(f"| {env} | {len(per_seed)} | {mean_std(train)} | {mean_std(evals)} | "
                    f"{f'{ref[0]:,.2f} ± {ref[1]:,.2f} (v4)' if ref else '-'} | "
                    + ", ".join(f"{r['train_return']:,.0f}" for r in per_seed if r["train_return"] is not None) + " |")
    md = [f"ppox `--preset cleanrl-continuous` (CleanRL's `ppo_continuous_action.py` defaults), {a.steps:,} steps per "
          "run, sequential fresh subprocesses. **train return** = raw returns of the training games that ended in the "
          f"last {a.window:,} steps, mean ± std over seeds; **eval** = ppox's final deterministic evaluation "
          "(20 episodes). CleanRL's figures: its published 1M-step results on the v4 envs (training returns).",
          "", "| env | seeds | ppox train return | ppox eval return | CleanRL (published) | train return per seed |",
          "|---|---:|---|---|---|---|", *rows]
    write(a.name or f"continuous_1m_{'_'.join(a.envs)}", command, md, data)


if __name__ == "__main__":
    main()
