"""Does the callback machinery cost the fast path anything? CartPole-v1, --preset cleanrl, alternating runs:

* none:      `ppox train` with no callback (the rollout's per-step hook stays None)
* noop_step: the same run through the Python API with a callback whose _on_step returns True (the rollout calls
             the hook once per vectorised env step: the price of a per-step callback)
* noop_update: a callback with only _on_update (per iteration, no per-step hook)

    .venv/bin/python benchmarks/bench_callbacks.py --steps 200000 --repeats 3

Writes benchmarks/results/callbacks_CartPole-v1_<steps>.{json,md} with the exact command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import json, sys, time
from ppox.rl.callbacks import BaseCallback
from ppox.rl.config import preset_config
from ppox.rl.ppo import PPO

class NoopStep(BaseCallback):
    def _on_step(self):
        return True

class NoopUpdate(BaseCallback):
    def _on_update(self):
        return True

mode, steps, run_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = preset_config("CartPole-v1", "cleanrl", total_timesteps=steps, run_dir=run_dir, progress=False,
                       tensorboard=False, eval_episodes=0, live_doctor=False)
callback = {"none": None, "noop_step": NoopStep(), "noop_update": NoopUpdate()}[mode]
start = time.perf_counter()
model = PPO(config).learn(callback=callback)
print(json.dumps({"wall": time.perf_counter() - start, "sps": model.summary["sps"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    modes = ["none", "noop_step", "noop_update"]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:  # alternate the order against drift
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, "-c", RUN, mode, str(args.steps), str(Path(tmp) / "run")],
                                     check=True, capture_output=True, text=True).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(mode, results[mode][-1], flush=True)
    command = f".venv/bin/python benchmarks/bench_callbacks.py --steps {args.steps} --repeats {args.repeats}"
    summary = {m: {"sps_median": statistics.median(x["sps"] for x in v),
                   "wall_median": statistics.median(x["wall"] for x in v), "runs": v} for m, v in results.items()}
    out_dir = Path(__file__).parent / "results"
    stem = out_dir / f"callbacks_CartPole-v1_{args.steps}"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "results": summary}, indent=2) + "\n")
    lines = [f"# Callback overhead, CartPole-v1 --preset cleanrl, {args.steps} steps", "", f"`{command}`", "",
             "| callbacks | median SPS | median wall (s) | runs (SPS) |", "|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['sps_median']:.0f} | {s['wall_median']:.1f} | "
                     + ", ".join(f"{x['sps']:.0f}" for x in s["runs"]) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
