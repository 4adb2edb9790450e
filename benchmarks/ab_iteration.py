"""A/B of whole training iterations: the same `ppox train` command run on two source trees, alternating.

    python benchmarks/ab_iteration.py --tree before=/tmp/ppox_before --tree after=. --runs 3 -- \
        CartPole-v1 --num-envs 4 --num-steps 128 --num-minibatches 4 --update-epochs 4 --learning-rate 2.5e-4 \
        --compile --total-timesteps 200000

Each tree is a directory holding a `ppox` package (a checkout, or a copy with some files swapped back);
every run is a fresh subprocess with that directory first on PYTHONPATH (it checks which ppox it
imported), so both trees run in the same environment and see the same machine load, in the order A B, B A,
A B, ... Per run it reports the median wall time of one iteration (the differences of consecutive
`wall_time` stamps in metrics.jsonl: everything between two records, from the rollout to the logging, the
first `--skip` iterations left out for warm-up and compiling), env-steps/s of the whole run (compile
included, summary.json) and the CPU seconds of the whole process (all its threads: less sensitive to a
shared machine's load than wall time; start-up and compiling included, the same work in both trees).
Writes results/ab_iteration_<label>.{md,json} with the command at the top.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(tree: Path, args: list[str], skip: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        code = ("import sys, ppox; from pathlib import Path; "
                f"assert Path(ppox.__file__).resolve().is_relative_to(Path({str(tree.resolve())!r})), ppox.__file__; "
                "from ppox.cli.main import main; sys.exit(main(sys.argv[1:]))")
        cmd = [sys.executable, "-c", code, "train", *args, "--run-dir", str(run_dir), "--eval-episodes", "0"]
        start, cpu_start = time.perf_counter(), _children_cpu()
        # cwd: not the caller's directory, which `-c` would put first on sys.path (its ppox, not the tree's)
        done = subprocess.run(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise SystemExit(f"{tree}: ppox train failed:\n{done.stderr[-3000:]}")
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
    stamps = [r["wall_time"] for r in records]
    gaps = [b - a for a, b in zip(stamps[skip:], stamps[skip + 1:], strict=False)]
    return {"iteration_ms": 1e3 * statistics.median(gaps), "sps": summary["sps"], "process_seconds": wall,
            "cpu_seconds": cpu,
            "iterations": len(records), "final_return": records[-1].get("episodic_return_mean")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR (two of them)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tree")
    parser.add_argument("--skip", type=int, default=10, help="first iterations left out of the median")
    parser.add_argument("--label", default="CartPole-v1_row1")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: the `ppox train` arguments")
    ns = parser.parse_args()
    trees = dict(t.split("=", 1) for t in ns.tree)
    if len(trees) != 2:
        parser.error("give exactly two --tree NAME=DIR")
    train_args = ns.train_args[1:] if ns.train_args[:1] == ["--"] else ns.train_args
    names = list(trees)
    rows = []
    for i in range(ns.runs):
        for name in (names if i % 2 == 0 else names[::-1]):
            result = {"tree": name, "run": i + 1, **run_once(Path(trees[name]), train_args, ns.skip)}
            rows.append(result)
            print(json.dumps(result), flush=True)
    command = " ".join(["python", *sys.argv])
    lines = [f"# A/B of whole iterations: {ns.label}", "", f"`{command}`", "",
             "| tree | run | median iteration (ms) | env-steps/s incl. compile | process s | CPU s | final return |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['tree']} | {r['run']} | {r['iteration_ms']:.2f} | {r['sps']:,.0f} | {r['process_seconds']:.1f} "
              f"| {r['cpu_seconds']:.1f} | {r['final_return']} |" for r in rows]
    medians = {n: statistics.median(r["iteration_ms"] for r in rows if r["tree"] == n) for n in names}
    sps = {n: statistics.median(r["sps"] for r in rows if r["tree"] == n) for n in names}
    cpu = {n: statistics.median(r["cpu_seconds"] for r in rows if r["tree"] == n) for n in names}
    lines += ["", "| tree | median of the runs' median iteration (ms) | median env-steps/s | median CPU s |",
              "|---|---:|---:|---:|"]
    lines += [f"| {n} | {medians[n]:.2f} | {sps[n]:,.0f} | {cpu[n]:.1f} |" for n in names]
    lines += ["", f"{names[0]} / {names[1]} iteration time: {medians[names[0]] / medians[names[1]]:.2f}x"]
    write_results(f"ab_iteration_{ns.label}", lines, command, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
