"""Train shipped presets over several seeds and plot their learning curves (the README's figure).

    python benchmarks/preset_curves.py --envs CartPole-v1 Pendulum-v1 --seeds 1 2 3 -o docs/img/preset_curves.png

Each run goes to runs/curves/<env>__<seed>; the plot shows the mean episodic return and a 95%
bootstrap band over seeds (ppox plot). Writes docs/img/preset_curves.json with the exact command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Acrobot-v1", "Pendulum-v1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out-dir", default="runs/curves")
    parser.add_argument("-o", "--output", default="docs/img/preset_curves.png")
    parser.add_argument("--extra", default="", help="extra `ppox train` flags, e.g. '--total-timesteps 50000'")
    args = parser.parse_args()

    runs = []
    for env_id in args.envs:
        for seed in args.seeds:
            run_dir = Path(args.out_dir) / f"{env_id}__{seed}"
            cmd = [sys.executable, "-m", "ppox", "train", env_id, "--seed", str(seed), "--run-dir", str(run_dir),
                   "--overwrite", "--no-progress", "--no-tensorboard", *shlex.split(args.extra)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            summary = json.loads((run_dir / "summary.json").read_text())
            runs.append(summary)
            print(f"{env_id} seed {seed}: eval {summary['eval_return_mean']:.1f} "
                  f"in {time.perf_counter() - start:.0f}s ({summary['total_timesteps']} steps)", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "ppox", "plot", f"{args.out_dir}/*", "-o", args.output], check=True)
    record = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "runs": runs}
    Path(args.output).with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
