"""Throughput of 1 vs N torchrun processes on an env-bound task, and the terms of a scaling model.

    python benchmarks/bench_distributed.py --env HalfCheetah-v5 --procs 1 2 --steps-per-rank 16384

Weak scaling: every rank runs the preset's rollout (its own envs, distinct seeds), so N processes
collect N times the data per iteration; env-steps/s should grow close to N while env stepping
dominates. The model terms are measured separately:
  t_rollout   one rank's rollout (env steps + policy), seconds per iteration
  t_update    one rank's PPO epochs without communication, seconds per iteration
  t_allreduce one all-reduce of the parameters' gradients (gloo), per minibatch step, for each N
and per-iteration time = t_rollout / N + t_update + n_minibatch_steps * t_allreduce(N) for a fixed
global batch split over N ranks. Writes benchmarks/results/distributed_<env>.{json,md}.
Installs nothing; needs the env's extra (e.g. gymnasium[mujoco]).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_torchrun(env_id: str, preset: str, procs: int, steps_per_rank: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "ppox", "train", env_id, "--preset", preset, "--seed", str(seed),
               "--total-timesteps", str(steps_per_rank * procs), "--run-dir", str(run_dir),
               "--no-progress", "--no-tensorboard", "--eval-episodes", "0", "--no-live-doctor"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        elapsed = time.perf_counter() - start
        summary = json.loads((run_dir / "summary.json").read_text())
    return {"procs": procs, "sps": summary["sps"], "wall_seconds": summary["wall_seconds"],
            "process_seconds": round(elapsed, 2), "total_timesteps": summary["total_timesteps"],
            "weights_identical_across_ranks": summary["weights_identical_across_ranks"]}


def measure_terms(env_id: str, preset: str, iterations: int = 3) -> dict:
    """t_rollout and t_update of one process, timed around the trainer's own methods."""
    from ppox import PPO

    with tempfile.TemporaryDirectory() as tmp:
        model = PPO(env_id, preset=preset, run_dir=str(Path(tmp) / "r"), progress=False, tensorboard=False,
                    eval_episodes=0, live_doctor=False)
        times = {"rollout": [], "update": []}
        for name, attr in (("rollout", "_collect"), ("update", "_update")):
            original = getattr(model, attr)

            def timed(*args, _orig=original, _name=name):
                start = time.perf_counter()
                out = _orig(*args)
                times[_name].append(time.perf_counter() - start)
                return out

            setattr(model, attr, timed)
        cfg = model.config
        model.learn(total_timesteps=cfg.batch_size * (iterations + 1))
        n_params = sum(p.numel() for p in model.agent.parameters())
    steps = cfg.update_epochs * cfg.num_minibatches
    return {"t_rollout": statistics.median(times["rollout"][1:]), "t_update": statistics.median(times["update"][1:]),
            "batch_size": cfg.batch_size, "minibatch_steps": steps, "param_count": n_params,
            "param_bytes": 4 * n_params}


def _allreduce_worker(rank: int, world: int, port: int, numel: int, reps: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x = torch.ones(numel)
    for _ in range(10):
        dist.all_reduce(x)
    samples = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(x)
        samples.append(time.perf_counter() - start)
    if rank == 0:
        out["seconds"] = statistics.median(samples)
    dist.destroy_process_group()


def measure_allreduce(world: int, numel: int, reps: int = 200) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_allreduce_worker, args=(world, port, numel, reps, out), nprocs=world, join=True)
    return out["seconds"]


def project(terms: dict, alpha: float, beta: float, procs: int) -> float:
    """Per-iteration seconds for a fixed global batch on `procs` ranks (ring all-reduce, alpha-beta)."""
    hops = 2 * (procs - 1)  # a ring all-reduce: reduce-scatter then all-gather
    allreduce = hops * alpha + hops / procs * terms["param_bytes"] * beta
    return terms["t_rollout"] / procs + terms["t_update"] + terms["minibatch_steps"] * allreduce


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--preset", default="cleanrl-continuous")
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps-per-rank", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    runs = [run_torchrun(args.env, args.preset, n, args.steps_per_rank, args.seed) for n in args.procs]
    base = runs[0]["sps"]
    for r in runs:
        r["speedup"] = round(r["sps"] / base, 3)
        r["efficiency"] = round(r["speedup"] / (r["procs"] / runs[0]["procs"]), 3)
    terms = measure_terms(args.env, args.preset)
    allreduce = {n: measure_allreduce(n, terms["param_count"]) for n in args.procs if n > 1}
    tiny = {n: measure_allreduce(n, 1) for n in args.procs if n > 1}
    # alpha-beta fit from the largest N measured: latency from a 1-float message, bandwidth from the rest
    n_fit = max(allreduce) if allreduce else None
    alpha = tiny[n_fit] / (2 * (n_fit - 1)) if n_fit else 0.0
    beta = ((allreduce[n_fit] - tiny[n_fit]) / (2 * (n_fit - 1) / n_fit * terms["param_bytes"])) if n_fit else 0.0
    projection = {n: project(terms, alpha, beta, n) for n in (1, 2, 8, 64, 512)}

    result = {"command": command, "env": args.env, "preset": args.preset, "cpu_count": os.cpu_count(),
              "runs": runs, "terms": terms, "allreduce_seconds": allreduce, "allreduce_1float_seconds": tiny,
              "alpha_seconds": alpha, "beta_seconds_per_byte": beta, "projected_iteration_seconds": projection}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"distributed_{args.env}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# torchrun scaling on {args.env} ({args.preset})", "", f"Command: `{command}`",
             f"Machine: {os.cpu_count()} CPU cores, gloo backend, OMP_NUM_THREADS=1.", "",
             "| processes | env-steps/s | speedup | efficiency | weights identical |", "|---|---|---|---|---|"]
    lines += [f"| {r['procs']} | {r['sps']:.0f} | {r['speedup']:.2f} | {r['efficiency']:.2f} | "
              f"{r['weights_identical_across_ranks']} |" for r in runs]
    lines += ["", "Measured terms (one process):", "",
              f"- t_rollout = {terms['t_rollout'] * 1e3:.1f} ms per iteration ({terms['batch_size']} env steps)",
              f"- t_update = {terms['t_update'] * 1e3:.1f} ms per iteration "
              f"({terms['minibatch_steps']} minibatch steps)",
              f"- parameters: {terms['param_count']} ({terms['param_bytes']} bytes of float32 gradients)"]
    lines += [f"- all-reduce of the gradients on {n} processes: {s * 1e6:.0f} µs (1 float: {tiny[n] * 1e6:.0f} µs)"
              for n, s in allreduce.items()]
    lines += ["", f"Fitted ring model: alpha = {alpha * 1e6:.1f} µs per hop, beta = {beta * 1e9:.3f} ns per byte.", "",
              "| processes | projected seconds per iteration (fixed global batch) | speedup vs 1 |", "|---|---|---|"]
    lines += [f"| {n} | {t:.4f} | {projection[1] / t:.2f} |" for n, t in projection.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
