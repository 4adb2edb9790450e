"""Env-only stepping rate of the batched torch CartPole vs gymnasium's numpy one; with --backends,
microseconds per vector step of gymnasium's sync vector env, ppox's numpy twins and envpool.

Actions are generated before timing, so the numbers are pure env.step cost
(physics, TimeLimit and autoreset). Prints a Markdown table.

    python benchmarks/env_throughput.py [--steps 300] [--cuda]
    python benchmarks/env_throughput.py --backends [--envs CartPole-v1 Acrobot-v1] [--num-envs 4 1024]
    python benchmarks/env_throughput.py --parity [--episodes 3000]   # envpool vs gymnasium, random policy

--backends and --parity time envpool when it is installed (``pip install envpool``), else skip it.
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


# ----------------------------------------------------------------------------- --backends
def _median_us_per_step(step, actions: np.ndarray, repeats: int, budget_s: float) -> tuple[float, float, float]:
    """(median, min, max) microseconds per call of ``step(actions[t])`` over ``repeats`` timed runs,
    each of as many steps as fit in ``budget_s`` (at least 20, at most ``len(actions)``)."""
    for t in range(20):  # warm-up (and calibration)
        step(actions[t])
    start = time.perf_counter()
    for t in range(20):
        step(actions[t])
    per_step = (time.perf_counter() - start) / 20
    steps = int(min(len(actions), max(20, budget_s / max(per_step, 1e-9))))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for t in range(steps):
            step(actions[t])
        runs.append(1e6 * (time.perf_counter() - start) / steps)
    return float(np.median(runs)), min(runs), max(runs)


def _envpool_or_none():
    try:
        import envpool
    except ImportError:
        return None
    return envpool


def backend_rows(env_ids: list[str], sizes: list[int], repeats: int, budget_s: float):
    """Rows (env, num_envs, implementation, median us, min us, max us) per vector step."""
    from ppox.envs import make_numpy_vec_env

    envpool = _envpool_or_none()
    rows = []
    for env_id in env_ids:
        for n in sizes:
            n_actions = gym.make(env_id).action_space.n
            actions = np.random.default_rng(0).integers(0, n_actions, size=(4000, n))
            impls: list[tuple[str, object, np.ndarray]] = []
            same_step = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
            impls.append(("gymnasium make_vec sync", gym.make_vec(env_id, n, vectorization_mode="sync",
                                                                   vector_kwargs=same_step), actions))
            impls.append(("ppox numpy twin", make_numpy_vec_env(env_id, n), actions))
            if envpool is not None:
                a32 = actions.astype(np.int32)
                for threads in (1, 2, 0):
                    env = envpool.make_gymnasium(env_id, num_envs=n, batch_size=n, num_threads=threads, seed=0)
                    impls.append((f"envpool sync, num_threads={threads}", env, a32))
            for name, env, acts in impls:
                env.reset(seed=0)
                med, lo, hi = _median_us_per_step(env.step, acts, repeats, budget_s)
                rows.append((env_id, n, name, med, lo, hi))
                env.close()
            if envpool is not None and n >= 8:  # async: recv() a half batch, send() its actions
                half = n // 2
                env = envpool.make_gymnasium(env_id, num_envs=n, batch_size=half, num_threads=0, seed=0)
                env.async_reset()
                a32 = actions[:, :half].astype(np.int32)

                def half_step(a, env=env):
                    *_, info = env.recv()
                    env.send(a, info["env_id"])

                med, lo, hi = _median_us_per_step(half_step, a32, repeats, budget_s)
                # two half-batch recv/send rounds step every env once
                rows.append((env_id, n, f"envpool async, batch_size={half}, 2 rounds", 2 * med, 2 * lo, 2 * hi))
                env.close()
    return rows


# ------------------------------------------------------------------------------ --parity
def random_policy_episodes(env, episodes: int, next_step: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, returns) of the first ``episodes`` episodes under uniform random actions. With
    ``next_step`` (envpool), the step after an episode's end only resets that env: it is not counted."""
    rng = np.random.default_rng(seed)
    n = env.num_envs
    env.reset(seed=seed)
    ret, length = np.zeros(n), np.zeros(n, dtype=np.int64)
    resetting = np.zeros(n, dtype=bool)
    lengths, returns = [], []
    space = env.single_action_space
    while len(lengths) < episodes:
        _, r, te, tr, _ = env.step(rng.integers(0, space.n, size=n).astype(np.int32))
        live = ~resetting
        ret[live] += r[live]
        length[live] += 1
        done = (te | tr) & live
        lengths += length[done].tolist()
        returns += ret[done].tolist()
        ret[done], length[done] = 0, 0
        resetting = done if next_step else np.zeros(n, dtype=bool)
    return np.array(lengths[:episodes]), np.array(returns[:episodes])


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value (ties make it conservative)."""
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    d = float(np.abs(cdf_a - cdf_b).max())
    en = np.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    k = np.arange(1, 101)
    p = float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * (k * lam) ** 2)), 0.0, 1.0)) if lam > 0 else 1.0
    return d, p


def parity_rows(env_ids: list[str], episodes: int, num_envs: int = 64):
    envpool = _envpool_or_none()
    if envpool is None:
        raise SystemExit("--parity needs envpool (pip install envpool)")
    rows = []
    for env_id in env_ids:
        same_step = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        ref = gym.make_vec(env_id, num_envs, vectorization_mode="sync", vector_kwargs=same_step)
        pool = envpool.make_gymnasium(env_id, num_envs=num_envs, seed=0)
        lg, rg = random_policy_episodes(ref, episodes, next_step=False)
        lp, rp = random_policy_episodes(pool, episodes, next_step=True)
        for name, (lengths, returns) in (("gymnasium", (lg, rg)), ("envpool", (lp, rp))):
            rows.append((env_id, name, lengths.mean(), lengths.std(), returns.mean(), returns.std(),
                         int(lengths.max())))
        rows.append((env_id, "KS length / return (D, p)", *ks_two_sample(lg, lp), *ks_two_sample(rg, rp), 0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per configuration")
    parser.add_argument("--num-envs", type=int, nargs="+", default=None, help="default 1024 4096 (--backends: 4 1024)")
    parser.add_argument("--cuda", action="store_true", help="also time the torch env on CUDA")
    parser.add_argument("--backends", action="store_true",
                        help="us per vector step: gymnasium sync, ppox numpy twins, envpool (if installed)")
    parser.add_argument("--parity", action="store_true", help="random-policy episodes: envpool vs gymnasium")
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Acrobot-v1"])
    parser.add_argument("--repeats", type=int, default=7, help="--backends: timed runs per configuration")
    parser.add_argument("--budget", type=float, default=0.3, help="--backends: seconds per timed run")
    parser.add_argument("--episodes", type=int, default=3000, help="--parity: episodes per implementation")
    args = parser.parse_args()
    if args.backends:
        print("| env | num_envs | implementation | us per vector step (median) | min-max | env-steps/s |")
        print("|---|---:|---|---:|---|---:|")
        for env_id, n, name, med, lo, hi in backend_rows(args.envs, args.num_envs or [4, 1024], args.repeats,
                                                         args.budget):
            print(f"| {env_id} | {n} | {name} | {med:,.1f} | {lo:,.1f}-{hi:,.1f} | {1e6 * n / med:,.0f} |")
        return
    if args.parity:
        print("| env | implementation | length mean | length std | return mean | return std | longest |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for env_id, name, *v in parity_rows(args.envs, args.episodes):
            if name.startswith("KS"):
                print(f"| {env_id} | {name} | D={v[0]:.3f} | p={v[1]:.2f} | D={v[2]:.3f} | p={v[3]:.2f} | |")
            else:
                print(f"| {env_id} | {name} | {v[0]:.2f} | {v[1]:.2f} | {v[2]:.2f} | {v[3]:.2f} | {v[4]} |")
        return
    args.num_envs = args.num_envs or [1024, 4096]

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
