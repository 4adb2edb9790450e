"""Where a training iteration's time goes: rollout, advantages, update and the rest of the loop (logging, guards,
bookkeeping), per iteration, with the device synchronised around each phase (so each phase is charged its own
GPU work; the synchronisation itself costs a little).

    python benchmarks/profile_iteration.py --device cuda --num-envs 4096 --num-steps 32 --iterations 30
    PPOX_CUDA_GRAPHS=0 python benchmarks/profile_iteration.py --device cuda ...   # without the CUDA graphs

Prints one Markdown table (median ms per iteration per phase over the iterations after the first `--skip`).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import statistics
import tempfile
import time
from collections import defaultdict

import torch

from ppox.rl.ppo import PPO


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--device", default="cuda")
    p.add_argument("--num-envs", type=int, default=4096)
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="first iterations left out (compile, capture)")
    p.add_argument("--compile", default="true", choices=["true", "false", "auto"])
    p.add_argument("--profile-construction", action="store_true", help="cProfile of PPO(...) (top 18 entries)")
    a = p.parse_args()
    compile_setting = {"true": True, "false": False, "auto": "auto"}[a.compile]
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        profiler = cProfile.Profile() if a.profile_construction else None
        if profiler is not None:
            profiler.enable()
        model = PPO(a.env, env_backend="torch", device=a.device, num_envs=a.num_envs, num_steps=a.num_steps,
                    num_minibatches=4, update_epochs=4, learning_rate=2.5e-4, compile=compile_setting, progress=False,
                    total_timesteps=a.iterations * a.num_envs * a.num_steps, run_dir=run_dir)
        construction = time.perf_counter() - start
        construction_profile = None
        if profiler is not None:
            profiler.disable()
            construction_profile = pstats.Stats(profiler)
        for phase in ("_collect", "_advantages", "_update", "_record"):
            method = getattr(model, phase)

            def timed(*args, _method=method, _phase=phase, **kwargs):
                sync()
                t0 = time.perf_counter()
                out = _method(*args, **kwargs)
                sync()
                times[_phase].append(time.perf_counter() - t0)
                return out

            setattr(model, phase, timed)
        marks: list[float] = []
        record = model._record

        def record_and_mark(*args, **kwargs):
            out = record(*args, **kwargs)
            marks.append(time.perf_counter())
            return out

        model._record = record_and_mark
        model.learn()
    iterations = [b - a_ for a_, b in itertools.pairwise(marks)][a.skip:]
    rows = {k.lstrip("_"): statistics.median(v[a.skip + 1:]) * 1e3 for k, v in times.items()}
    total = statistics.median(iterations) * 1e3
    steps = a.num_envs * a.num_steps
    print(f"| {a.env} {a.num_envs}x{a.num_steps} on {a.device} | median ms per iteration |")
    print("|---|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| rest of the loop (iteration - phases) | {total - sum(rows.values()):.2f} |")
    print(f"| iteration | {total:.2f} ({steps / total * 1e3 / 1e6:.2f}M env-steps/s) |")
    print(f"| construction s / compile s | {construction:.1f} / {model.compile_timer.seconds:.1f} |")
    print(f"| collector | {type(model.collector).__name__} |")
    for what, seconds in model.compile_timer.parts.items():
        print(f"| compile: {what} | {seconds:.1f} s |")
    if construction_profile is not None:
        print("construction, top cumulative:")
        construction_profile.sort_stats("cumulative").print_stats(18)


if __name__ == "__main__":
    main()
