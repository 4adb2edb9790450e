"""Time ppox's compiled PPO update (ppox.rl.fast.CompiledUpdate) by how many minibatch steps one compiled call runs.

    python benchmarks/bench_compiled_update.py [--unroll iteration epoch minibatch minibatch-dynamo eager] \
        [--target-kl 0.03] [--name NAME]

"minibatch" is the default path: on a CPU one ahead-of-time compiled library call per minibatch (ppox.rl.aot;
its first call loads the library, or builds it if this machine has not yet); "minibatch-dynamo" is the same
step compiled in-process by torch.compile (what a GPU, or PPOX_AOT=0, uses).

Each setting runs in a fresh process (so its compile time is what a new run pays, with inductor's warm
on-disk cache after the first setting has filled it): one update of the CartPole-sized policy at CleanRL's
settings (512 transitions, 4 minibatches x 4 epochs), then the mean of `--updates` further updates. Prints a
markdown table: first-call seconds (trace + compile or cache load) and milliseconds per update afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def one(unroll: str, updates: int, target_kl: float | None, epochs: int, minibatches: int) -> dict:
    import torch
    from gymnasium import spaces

    from ppox.core.objective import ObjectiveConfig
    from ppox.core.update import PolicyOutput, ppo_update
    from ppox.rl.fast import CompiledUpdate
    from ppox.rl.policy import Policy
    from ppox.rl.spaces import ActionSpec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    agent = Policy(spaces.Box(-10.0, 10.0, (4,)), ActionSpec("discrete", nvec=(2,), start=(0,)), (64, 64))
    opt = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    n = 512
    obs = torch.randn(n, 4)
    with torch.no_grad():
        actions, logprobs, values = agent.act(obs)
    batch = {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values,
             "advantages": torch.randn(n), "returns": torch.randn(n)}
    gen = torch.Generator().manual_seed(0)
    if unroll == "eager":
        def run():
            return ppo_update(batch, lambda mb: PolicyOutput(*agent(mb["obs"], mb["actions"])), opt,
                              agent.parameters(), ObjectiveConfig(), update_epochs=epochs, num_minibatches=minibatches,
                              max_grad_norm=0.5, target_kl=target_kl, generator=gen)
    else:
        fast = CompiledUpdate(agent, opt, ObjectiveConfig(), 0.5, compile=True)
        fast.unroll = "minibatch" if unroll == "minibatch-dynamo" else unroll
        fast.ahead_of_time = fast.ahead_of_time and unroll == "minibatch"

        def run():
            return fast.update(batch, update_epochs=epochs, num_minibatches=minibatches, target_kl=target_kl,
                               generator=gen)
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(updates):
        result = run()
    per = (time.perf_counter() - start) / updates
    return {"unroll": unroll, "first_call_s": round(first, 3), "ms_per_update": round(per * 1e3, 3),
            "epochs_run": result.epochs_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unroll", nargs="+", default=["iteration", "epoch", "minibatch", "eager"])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--target-kl", type=float, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="rounds over the settings, alternating")
    parser.add_argument("--name", default=None, help="also write benchmarks/results/<name>.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.updates, args.target_kl, args.epochs, args.minibatches)))
        return
    rows = []
    for _ in range(args.repeat):
        for unroll in args.unroll:
            cmd = [sys.executable, __file__, "--one", unroll, "--updates", str(args.updates), "--epochs",
                   str(args.epochs), "--minibatches", str(args.minibatches)]
            if args.target_kl is not None:
                cmd += ["--target-kl", str(args.target_kl)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    lines = [f"Command:\n\n    python benchmarks/bench_compiled_update.py {' '.join(sys.argv[1:])}\n",
             f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
             f"{time.strftime('%Y-%m-%d %H:%M')}. One update = {args.epochs} epochs x {args.minibatches} minibatches "
             "of the CartPole-sized policy on 512 transitions; each setting in a fresh process.\n",
             "| setting | first call (s) | ms per update | epochs run |", "|---|---:|---:|---:|"]
    lines += [f"| {r['unroll']} | {r['first_call_s']} | {r['ms_per_update']} | {r['epochs_run']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.name:
        out = Path(__file__).resolve().parent / "results" / f"{args.name}.md"
        out.write_text(f"# {args.name}\n\n{text}")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
