"""Agent-env-steps/s of a population: `ppox train ENV --seeds 1-N` (ppox.rl.population), compiled and eager.

Each run is a fresh subprocess of the exact CLI command a user types; the modes alternate (compiled first on
odd repeats, eager first on even ones) so both see the same machine load. The rate is population.json's
`agent_env_steps_per_second`: every agent's env steps over the training loop's wall time, compile included
(PureJaxRL's convention), final evaluation excluded; the rate without compile and the compile seconds are
reported beside it. Written to results/seeds_<env>_<n>x<steps>.{json,md} with the commands.

    python benchmarks/bench_seeds.py --env CartPole-v1 --seeds 64 --steps 50000 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def command(env: str, seeds: int, steps: int, compile: bool, run_dir: str) -> list[str]:
    """The ppox command timed: CleanRL's settings (`--preset cleanrl`: 4 envs x 128 steps per agent, 4 minibatches
    x 4 epochs), `steps` env steps per agent."""
    return ["ppox", "train", env, "--preset", "cleanrl", "--seeds", f"1-{seeds}", "--total-timesteps", str(steps),
            "--compile" if compile else "--no-compile", "--no-progress", "--no-tensorboard", "--no-live-doctor",
            "--eval-episodes", "10", "--run-dir", run_dir]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, default=64, help="agents: seeds 1..N")
    parser.add_argument("--steps", type=int, default=50_000, help="env steps per agent")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for compile in ((True, False) if repeat % 2 == 0 else (False, True)):
                run_dir = f"{tmp}/r{repeat}_{int(compile)}"
                cmd = command(args.env, args.seeds, args.steps, compile, run_dir)
                start = time.perf_counter()
                subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], check=True, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - start
                pop = json.loads(Path(run_dir, "population.json").read_text())
                runs.append({"compile": compile, "repeat": repeat, "process_wall_seconds": round(wall, 1),
                             **{k: pop[k] for k in ("agent_env_steps_per_second",
                                                    "agent_env_steps_per_second_excl_compile", "wall_seconds",
                                                    "compile_seconds",
                                                    "eval_return_mean", "eval_return_std",
                                                    "final_train_return_mean")},
                             "command": shlex.join(cmd).replace(run_dir, "RUN_DIR")})
                print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for compile in (True, False):
        mode = [r for r in runs if r["compile"] is compile]
        summary["compiled" if compile else "eager"] = {
            "median_agent_env_steps_per_second": statistics.median(r["agent_env_steps_per_second"] for r in mode),
            "median_excl_compile": statistics.median(r["agent_env_steps_per_second_excl_compile"] for r in mode),
            "runs": len(mode)}
    name = f"seeds_{args.env}_{args.seeds}x{args.steps}"
    RESULTS.mkdir(exist_ok=True)
    this = "python benchmarks/bench_seeds.py " + shlex.join(sys.argv[1:])
    (RESULTS / f"{name}.json").write_text(json.dumps({"command": this, "summary": summary, "runs": runs}, indent=2))
    lines = [f"# {args.seeds} agents of {args.env}, {args.steps} env steps each", "", f"`{this}`", "",
             "| mode | agent-env-steps/s incl. compile | excl. compile | wall s (training) | compile s | eval return "
             "(mean ± std over agents) | command |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {'compiled' if r['compile'] else 'eager'} | {r['agent_env_steps_per_second']:,.0f} | "
                     f"{r['agent_env_steps_per_second_excl_compile']:,.0f} | {r['wall_seconds']} | "
                     f"{r['compile_seconds']} | {r['eval_return_mean']:.1f} ± "
                     f"{r['eval_return_std']:.1f} | `{r['command']}` |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
