"""Env-only stepping rate of the batched torch CartPole vs gymnasium's numpy one.

Actions are generated before timing, so the numbers are pure env.step cost
(physics, TimeLimit and autoreset). Prints a Markdown table.

    python benchmarks/env_throughput.py [--steps 300] [--cuda]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from ppox.envs import make_torch_vec_env


def time_torch(num_envs: int, steps: int, device: str) -> float:
    """Env-steps per second of the torch CartPole."""
    env = make_torch_vec_env("CartPole-v1", num_envs, device=device, seed=0)
    env.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    actions = torch.randint(0, 2, (steps, num_envs), device=device, generator=gen)
    for t in range(min(steps, 20)):  # warm-up: allocator, kernels, caches
        env.step(actions[t])
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for t in range(steps):
        env.step(actions[t])
    if device != "cpu":
        torch.cuda.synchronize()
    return steps * num_envs / (time.perf_counter() - start)


def time_gymnasium(num_envs: int, steps: int) -> float:
    """Env-steps per second of gymnasium's own numpy CartPoleVectorEnv."""
    env = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, size=(steps, num_envs))
    for t in range(min(steps, 20)):
        env.step(actions[t])
    start = time.perf_counter()
    for t in range(steps):
        env.step(actions[t])
    rate = steps * num_envs / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per configuration")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--cuda", action="store_true", help="also time the torch env on CUDA")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    rows: list[tuple[str, str, int, str, float]] = []
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        for n in args.num_envs:
            rows.append(("ppox torch", "cpu", n, str(threads), time_torch(n, args.steps, "cpu")))
        if default_threads == 1:
            break
    torch.set_num_threads(default_threads)
    if args.cuda and torch.cuda.is_available():
        for n in [*args.num_envs, 65536]:
            rows.append(("ppox torch", "cuda", n, "-", time_torch(n, args.steps, "cuda")))
    for n in args.num_envs:
        rows.append(("gymnasium vector_entry_point (numpy)", "cpu", n, "-", time_gymnasium(n, args.steps)))

    print("| implementation | device | num_envs | torch threads | env-steps/s | us/step |")
    print("|---|---|---:|---:|---:|---:|")
    for name, device, n, threads, rate in rows:
        print(f"| {name} | {device} | {n} | {threads} | {rate:,.0f} | {1e6 * n / rate:,.0f} |")


if __name__ == "__main__":
    main()
