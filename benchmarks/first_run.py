"""A machine's first run of a configuration: wall time of `ppox train` with nothing cached, by how it builds.

    python benchmarks/first_run.py --runs 3 --label CartPole-v1_cleanrl_500000 -- \
        CartPole-v1 --preset cleanrl --total-timesteps 500000

A compiled CPU run loads its update (and, on ppox's twins, its rollout) from ahead-of-time libraries that the first
run of a configuration on a machine builds (ppox.rl.aot). Each run here is a fresh `ppox train` process with empty
ppox and inductor cache directories (a machine that has never built anything, the SIMD probe included), in one of
these modes, alternating (A B C, C B A, ...):

* `child`: the default; the update's library builds in a child process while the trainer builds the rollout's
  (`PPOX_AOT_BACKGROUND=1`);
* `here`: every library built in the training process, one after another (`PPOX_AOT_BACKGROUND=0`);
* `eager`: `--no-compile`, nothing built (what the first run would take without compiling).

Then one `warm` run reuses the last `child` run's caches (every later run on that machine). Reports each run's
process wall time (start-up, building, training, evaluation) and CPU seconds, the evaluation return, and the median
per mode. Writes results/first_run_<label>.{md,json} with the command at the top.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results

MODES = {"child": ({"PPOX_AOT_BACKGROUND": "1"}, []), "here": ({"PPOX_AOT_BACKGROUND": "0"}, []),
         "eager": ({}, ["--no-compile"])}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(args: list[str], mode: str, caches: Path) -> dict:
    env_vars, flags = MODES.get(mode, ({}, []))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        env = {**os.environ, **env_vars, "PPOX_CACHE_DIR": str(caches / "ppox"),
               "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "PYTHONHASHSEED": "0"}
        cmd = [sys.executable, "-m", "ppox", "train", *args, *flags, "--run-dir", str(run_dir), "--no-progress"]
        start, cpu_start = time.perf_counter(), _children_cpu()
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise SystemExit(f"{mode}: ppox train failed:\n{done.stderr[-3000:]}")
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
        single = run_dir / "summary.json"  # `--seeds`: population.json, its rate in agent-env-steps/s
        summary = json.loads((single if single.exists() else run_dir / "population.json").read_text())
    sps = summary.get("sps", summary.get("agent_env_steps_per_second"))
    return {"mode": mode, "process_seconds": wall, "cpu_seconds": cpu, "sps": sps,
            "compile_seconds": summary.get("compile_seconds"), "eval_return": summary.get("eval_return_mean")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per mode")
    parser.add_argument("--modes", default="child,here,eager", help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--label", default="CartPole-v1_cleanrl_500000")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: the `ppox train` arguments")
    ns = parser.parse_args()
    modes = ns.modes.split(",")
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: comma-separated, of {', '.join(MODES)}")
    train_args = ns.train_args[1:] if ns.train_args[:1] == ["--"] else ns.train_args
    rows, last_child = [], None
    try:
        for i in range(ns.runs):
            for mode in (modes if i % 2 == 0 else modes[::-1]):
                caches = Path(tempfile.mkdtemp(prefix="ppox-first-run-"))
                row = {"run": i + 1, **run_once(train_args, mode, caches)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if mode == "child":
                    if last_child is not None:
                        shutil.rmtree(last_child, ignore_errors=True)
                    last_child = caches
                else:
                    shutil.rmtree(caches, ignore_errors=True)
        if last_child is not None:
            row = {"run": ns.runs, **run_once(train_args, "warm", last_child)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if last_child is not None:
            shutil.rmtree(last_child, ignore_errors=True)
    command = " ".join(["python", *sys.argv])
    lines = [f"# A machine's first run: {ns.label}", "", f"`{command}`", "",
             "Empty ppox and inductor caches per run (`warm`: the last `child` run's caches again). Process wall time "
             "includes start-up, building, training and evaluation.", "",
             "| mode | run | process s | CPU s | (agent-)env-steps/s (summary) | compile s (summary) | eval return |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        compile_s = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        lines.append(f"| {r['mode']} | {r['run']} | {r['process_seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['sps']:,.0f} | {compile_s} | {r['eval_return']} |")
    seen = list(dict.fromkeys(r["mode"] for r in rows))
    medians = {m: statistics.median(r["process_seconds"] for r in rows if r["mode"] == m) for m in seen}
    lines += ["", "| mode | median process s |", "|---|---:|"]
    lines += [f"| {m} | {medians[m]:.1f} |" for m in seen]
    if "child" in medians and "here" in medians:
        lines += ["", f"here / child: {medians['here'] / medians['child']:.2f}x"]
    write_results(f"first_run_{ns.label}", lines, command, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
