"""ppox vs Stable-Baselines3 on identical PPO settings, run side by side; plus time-to-solve and scale.

Every training run is a fresh subprocess (fair start, own peak RSS). In `compare`, ppox and SB3
runs alternate (ppox first for odd seeds, SB3 first for even ones) so both see the same machine
load. Results (Markdown + JSON, the producing command at the top) go to benchmarks/results/.

    python benchmarks/bench_vs_sb3.py compare --envs CartPole-v1 Acrobot-v1 --seeds 3 --steps 500000
    python benchmarks/bench_vs_sb3.py compare --envs HalfCheetah-v5 --seeds 3 --steps 100000 --eval-episodes 5
    python benchmarks/bench_vs_sb3.py solve --seeds 5          # CartPole-v1 preset to eval >= 475
    python benchmarks/bench_vs_sb3.py scale --num-envs 1024    # training vs env-only rate
    python benchmarks/bench_vs_sb3.py row1 --seeds 3 --steps 200000   # README row 1: `ppox train CartPole-v1` + flags

SB3 is the optional extra `pip install -e .[bench]`; this script installs nothing.
Settings (CleanRL's, for both libraries): discrete envs 4 envs x 128 steps, 4 minibatches
(batch_size 128), 4 epochs, lr 2.5e-4 linearly annealed, gamma 0.99, GAE 0.95, clip 0.2 (value
clip 0.2), ent 0.01, vf 0.5, max_grad_norm 0.5, separate 64x64 tanh actor/critic, orthogonal
init, advantage normalisation, CPU. Continuous (MuJoCo): 1 env x 2048 steps, 32 minibatches
(batch_size 64), 10 epochs, lr 3e-4 annealed, ent 0, observation + reward normalisation.
The return measure is the same for both: mean deterministic return over --eval-episodes episodes
on fresh gymnasium envs, normalisation statistics frozen.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONTINUOUS = {"HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "InvertedPendulum-v5", "Pendulum-v1",
              "MountainCarContinuous-v0"}


def preset_for(env_id: str) -> str:
    return "cleanrl-continuous" if env_id in CONTINUOUS else "cleanrl"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------- one run (child process)
def run_ppox(a: argparse.Namespace) -> dict:
    import torch

    from ppox.rl.config import preset_config
    from ppox.rl.ppo import PPO

    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset_config(a.env, preset=a.preset or preset_for(a.env), seed=a.seed, total_timesteps=a.steps,
                            compile=a.compile, torch_threads=a.threads, progress=False, tensorboard=False,
                            eval_episodes=0, run_dir=tmp, overwrite=True,
                            **({"env_backend": a.env_backend} if a.env_backend else {}),
                            **({"num_envs": a.num_envs} if a.num_envs else {}))
        model = PPO(cfg)
        start = time.perf_counter()
        model.learn()
        wall = time.perf_counter() - start
        ev = model.evaluate(a.eval_episodes) if a.eval_episodes else {"mean": None, "std": None}
        compile_s = model.compile_timer.seconds
    return {"lib": "ppox", "wall_s": wall, "steps": model.global_step, "sps": model.global_step / wall,
            "compile_s": compile_s, "sps_excl_compile": model.global_step / max(wall - compile_s, 1e-9),
            "eval_mean": ev["mean"], "eval_std": ev["std"], "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "compile": a.compile, "env_backend": model.envs.backend}


def run_sb3(a: argparse.Namespace) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(a.threads)
    continuous = a.env in CONTINUOUS
    n_envs = a.num_envs or (1 if continuous else 4)
    venv = make_vec_env(a.env, n_envs=n_envs, seed=a.seed, vec_env_cls=DummyVecEnv)
    if continuous:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0, gamma=0.99)
    lr = 3e-4 if continuous else 2.5e-4
    n_steps = 2048 if continuous else 128
    model = PPO(
        "MlpPolicy", venv, n_steps=n_steps, batch_size=(n_steps * n_envs) // (32 if continuous else 4),
        n_epochs=10 if continuous else 4, learning_rate=lambda frac: frac * lr,
        clip_range=0.2, clip_range_vf=0.2, vf_coef=0.5,
        # row1: ppox's CartPole-v1 preset under CleanRL's shape flags (its gamma, GAE lambda, ent_coef, target_kl;
        # SB3's target_kl stops within an epoch, at 1.5 x target_kl per minibatch)
        **({"gamma": 0.98, "gae_lambda": 0.8, "ent_coef": 0.0, "target_kl": 0.03} if getattr(a, "row1", False)
           else {"gamma": 0.99, "gae_lambda": 0.95, "ent_coef": 0.0 if continuous else 0.01}),
        max_grad_norm=0.5, normalize_advantage=True, seed=a.seed, device="cpu", verbose=0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh,
                       "ortho_init": True, "log_std_init": 0.0},
    )
    start = time.perf_counter()
    model.learn(a.steps)
    wall = time.perf_counter() - start
    # evaluation: same protocol as ppox (fresh gymnasium envs, frozen normalisation, deterministic)
    returns: list[float] = []
    env = gym.make(a.env)
    for ep in range(a.eval_episodes):
        obs, _ = env.reset(seed=a.seed + 100_000 + ep)
        done, total = False, 0.0
        while not done:
            x = venv.normalize_obs(obs) if continuous else obs
            action, _ = model.predict(np.asarray(x), deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            done = term or trunc
        returns.append(total)
    steps = model.num_timesteps
    return {"lib": "sb3", "wall_s": wall, "steps": steps, "sps": steps / wall, "compile_s": 0.0,
            "sps_excl_compile": steps / wall, "eval_mean": float(np.mean(returns)) if returns else None,
            "eval_std": float(np.std(returns)) if returns else None, "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "compile": False, "env_backend": "gymnasium"}


ROW1 = ["CartPole-v1", "--num-envs", "4", "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "4",
        "--learning-rate", "2.5e-4", "--total-timesteps"]


def run_ppox_cli(a: argparse.Namespace) -> dict:
    """The row-1 command exactly as a user types it (ppox's default path: no --compile flag), plus seed and run dir."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "ppox", "train", *ROW1, str(a.steps), "--seed", str(a.seed),
               "--run-dir", f"{tmp}/run", "--no-progress", "--eval-episodes", str(a.eval_episodes)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        process_s = time.perf_counter() - start
        if out.returncode:
            raise SystemExit(f"ppox failed:\n{out.stderr[-3000:]}")
        summary = json.loads(Path(tmp, "run", "summary.json").read_text())
    return {"lib": "ppox", "wall_s": summary["wall_seconds"], "steps": summary["total_timesteps"],
            "sps": summary["sps"], "compile_s": summary["compile_seconds"], "process_s": process_s,
            "sps_excl_compile": summary["total_timesteps"] / max(summary["wall_seconds"] - summary["compile_seconds"],
                                                                 1e-9),
            "eval_mean": summary["eval_return_mean"], "eval_std": summary["eval_return_std"], "peak_rss_mib": None,
            "torch_threads": 1, "compile": summary["compile"], "compile_reason": summary.get("compile_reason"),
            "env_backend": "auto"}


def row1(a: argparse.Namespace, command: str) -> None:
    """The README's row 1: `ppox train CartPole-v1` + CleanRL's shape flags against SB3 at the same settings."""
    runs: list[dict] = []
    for seed in range(1, a.seeds + 1):
        for lib in (["ppox", "sb3"] if seed % 2 else ["sb3", "ppox"]):
            r = (run_ppox_cli(argparse.Namespace(seed=seed, steps=a.steps, eval_episodes=a.eval_episodes))
                 if lib == "ppox" else child("sb3", env="CartPole-v1", seed=seed, steps=a.steps, threads=1, row1=True,
                                             eval_episodes=a.eval_episodes))
            r.update(env="CartPole-v1", seed=seed)
            runs.append(r)
            print(f"seed {seed} {lib}: {r['sps']:,.0f} sps, compile {r['compile_s']:.1f} s, eval {fmt(r['eval_mean'])}",
                  file=sys.stderr)
    per = {lib: [r for r in runs if r["lib"] == lib] for lib in ("ppox", "sb3")}
    md = [f"ppox: `ppox train {' '.join(ROW1)} {a.steps}` (+ --seed, --run-dir, --no-progress), its default path; "
          "sps from its summary.json (learn's wall time, compile included). SB3: PPO with the same settings "
          "(gamma 0.98, GAE 0.8, ent 0, target_kl 0.03, 4 envs x 128 steps, batch 128, 4 epochs, lr 2.5e-4 annealed, "
          "clip 0.2, value clip 0.2). Alternating, ppox first on odd seeds.", "",
          "| lib | seed | sps | compile s | eval return |", "|---|---:|---:|---:|---:|"]
    md += [f"| {r['lib']} | {r['seed']} | {r['sps']:,.0f} | {r['compile_s']:.1f} | {fmt(r['eval_mean'])} |"
           for r in runs]
    pairs = paired_ratios(runs, "CartPole-v1")
    med = {lib: statistics.median(r["sps"] for r in rs) for lib, rs in per.items()}
    md += ["", f"median sps: ppox {med['ppox']:,.0f}, SB3 {med['sb3']:,.0f}: ratio {med['ppox'] / med['sb3']:.2f}x; "
           f"paired ratios {', '.join(f'{x:.2f}x' for x in pairs)}",
           f"ppox's compile decision: {per['ppox'][0].get('compile_reason')}"]
    write(a.name or f"compare_CartPole-v1_{a.steps}_row1", command, md, {"runs": runs})


def child(lib: str, **kw) -> dict:
    args = [sys.executable, __file__, "_run", "--lib", lib]
    for k, v in kw.items():
        if isinstance(v, bool):
            args.append(f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
        elif v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{lib} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- reports
def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value (scipy if present), None if undefined."""
    if len(a) < 2 or len(b) < 2 or (statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0):
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else None
    try:
        from scipy import stats as st
    except ImportError:
        return welch_p_numpy(a, b)
    return float(st.ttest_ind(a, b, equal_var=False).pvalue)


def welch_p_numpy(a: list[float], b: list[float]) -> float:
    """Welch's t-test without scipy: t, Welch-Satterthwaite df, two-sided tail of Student's t by
    numerical integration (substituting x = |t| / u, u in (0, 1])."""
    import math

    import numpy as np

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = abs(statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    if t == 0:
        return 1.0
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = np.linspace(1e-9, 1.0, 200_001)
    x = t / u
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df)) * t / (u * u)
    tail = float(np.sum((f[1:] + f[:-1]) * np.diff(u)) / 2)
    return min(1.0, 2 * tail)


def write(name: str, command: str, md_lines: list[str], data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    import platform

    header = [f"# {name}", "", "Command:", "", f"    {command}", "",
              f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at "
              f"the end, python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(header + md_lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"command": command, **data}, indent=2) + "\n")
    print("\n".join(header + md_lines))


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


# ---------------------------------------------------------------------------- targets
def compare(a: argparse.Namespace, command: str) -> None:
    runs: list[dict] = []
    for env in a.envs:
        for seed in range(1, a.seeds + 1):
            order = ["ppox", "sb3"] if seed % 2 else ["sb3", "ppox"]
            for lib in order:
                r = child(lib, env=env, seed=seed, steps=a.steps, threads=a.threads, compile=a.compile,
                          eval_episodes=a.eval_episodes, env_backend=a.env_backend if lib == "ppox" else None)
                r.update(env=env, seed=seed)
                runs.append(r)
                print(f"{env} seed {seed} {lib}: {r['sps']:,.0f} sps, {r['wall_s']:.1f} s, "
                      f"eval {fmt(r['eval_mean'])}, compile {r['compile_s']:.1f} s", file=sys.stderr)
    md = ["ppox and SB3 alternate run by run (same load). sps = env steps / wall seconds of `learn` "
          "(ppox: compile time included; the excl. column leaves it out). Return = mean deterministic "
          f"eval return over {a.eval_episodes} episodes per seed, then mean ± std over seeds; p = Welch t-test.", "",
          "| env | lib | seeds | steps | sps median (min-max) | sps excl. compile | ratio ppox/SB3 (median sps) "
          "| compile s | return mean ± std | p | peak RSS MiB |",
          "|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|"]
    summary = {}
    for env in a.envs:
        per = {lib: [r for r in runs if r["env"] == env and r["lib"] == lib] for lib in ("ppox", "sb3")}
        sps = {lib: stats([r["sps"] for r in rs]) for lib, rs in per.items()}
        ratio = sps["ppox"]["median"] / sps["sb3"]["median"]
        rets = {lib: [r["eval_mean"] for r in rs if r["eval_mean"] is not None] for lib, rs in per.items()}
        p = welch_p(rets["ppox"], rets["sb3"]) if rets["ppox"] and rets["sb3"] else None
        summary[env] = {"sps": sps, "ratio": ratio, "returns": rets, "p_value": p}
        for lib, rs in per.items():
            s = sps[lib]
            excl = statistics.median(r["sps_excl_compile"] for r in rs)
            ret = stats(rets[lib]) if rets[lib] else None
            spread = f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"
            md.append(f"| {env} | {lib} | {len(rs)} | {a.steps:,} | {spread} "
                      f"| {excl:,.0f} | {ratio:.2f}x | {statistics.median(r['compile_s'] for r in rs):.1f} "
                      f"| {fmt(ret and ret['mean'])} ± {fmt(ret and ret['std'])} | {fmt(p, 2)} "
                      f"| {max(r['peak_rss_mib'] for r in rs):,.0f} |")
    md += ["", "Paired ratio (ppox sps / SB3 sps of the same seed, the two runs back to back; less sensitive "
           "to load changes than the ratio of medians):", ""]
    for env in a.envs:
        pairs = paired_ratios(runs, env)
        summary[env]["paired_ratios"] = pairs
        md.append(f"* {env}: median {statistics.median(pairs):.2f}x (per seed: "
                  f"{', '.join(f'{x:.2f}x' for x in pairs)})")
    write(a.name or f"compare_{'_'.join(a.envs)}_{a.steps}", command, md, {"runs": runs, "summary": summary})


def paired_ratios(runs: list[dict], env: str) -> list[float]:
    """ppox sps / SB3 sps per seed (the two runs of a seed run back to back)."""
    by = {(r["seed"], r["lib"]): r["sps"] for r in runs if r["env"] == env}
    seeds = sorted({s for s, _ in by})
    return [by[(s, "ppox")] / by[(s, "sb3")] for s in seeds if (s, "ppox") in by and (s, "sb3") in by]


class Solved(Exception):
    pass


def solve_once(a: argparse.Namespace, seed: int) -> dict:
    from ppox.rl.config import preset_config
    from ppox.rl.ppo import PPO

    class Timed(PPO):
        def _record(self, *args, **kwargs):
            record = super()._record(*args, **kwargs)
            if self.iteration % a.eval_every == 0:
                pause = time.perf_counter()
                ev = self.evaluate(a.eval_episodes, seed=seed)
                self.eval_seconds += time.perf_counter() - pause
                self.curve.append((time.perf_counter() - self.t0 - self.eval_seconds, self.global_step, ev["mean"]))
                if ev["mean"] >= a.threshold:
                    raise Solved
            return record

    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset_config(a.env, preset=a.preset, seed=seed, compile=a.compile, torch_threads=a.threads,
                            progress=False, tensorboard=False, eval_episodes=0, run_dir=tmp, overwrite=True,
                            total_timesteps=a.max_steps, **({"env_backend": a.env_backend} if a.env_backend else {}))
        t0 = time.perf_counter()  # the clock starts before construction (env creation, compile included)
        model = Timed(cfg)
        model.t0, model.eval_seconds, model.curve = t0, 0.0, []
        solved = False
        try:
            model.learn()
        except Solved:
            solved = True
        seconds = time.perf_counter() - t0 - model.eval_seconds
    return {"seed": seed, "solved": solved, "seconds": seconds, "steps": model.global_step,
            "compile_s": model.compile_timer.seconds, "eval_seconds_excluded": model.eval_seconds,
            "env_backend": model.envs.backend, "curve": model.curve}


def solve(a: argparse.Namespace, command: str) -> None:
    rows = []
    for seed in range(1, a.seeds + 1):
        r = child("solve", env=a.env, seed=seed, preset=a.preset, threads=a.threads, compile=a.compile,
                  eval_episodes=a.eval_episodes, eval_every=a.eval_every, threshold=a.threshold,
                  max_steps=a.max_steps, env_backend=a.env_backend)
        print(f"seed {seed}: solved={r['solved']} {r['seconds']:.1f} s {r['steps']} steps", file=sys.stderr)
        rows.append(r)
    secs = [r["seconds"] if r["solved"] else float("inf") for r in rows]
    med = statistics.median(secs)
    md = [f"Wall seconds from constructing `PPO` (envs, networks, compile included) until the mean "
          f"deterministic return over {a.eval_episodes} eval episodes (checked every {a.eval_every} "
          f"iterations; evaluation time excluded) is >= {a.threshold}.", "",
          "| seed | solved | seconds | env steps | compile s |", "|---:|---|---:|---:|---:|"]
    md += [f"| {r['seed']} | {r['solved']} | {r['seconds']:.1f} | {r['steps']:,} | {r['compile_s']:.1f} |"
           for r in rows]
    md += ["", f"**Median over {len(rows)} seeds: {med:.1f} s**", "",
           "Seconds depend on the machine's load (see the load average above): compare medians from idle runs; "
           "the env steps per seed do not depend on load."]
    # the env backend is in the default name: `auto` picks the numpy twin on CPU, a different benchmark
    backend = rows[0]["env_backend"] if rows else "unknown"
    write(a.name or f"solve_{a.env}_{'compile' if a.compile else 'eager'}_{backend}", command, md,
          {"median_seconds": med, "runs": rows})


def scale_once(a: argparse.Namespace) -> dict:
    import torch

    from ppox.envs import make_torch_vec_env
    from ppox.rl.config import preset_config
    from ppox.rl.ppo import PPO

    torch.set_num_threads(a.threads or torch.get_num_threads())
    # env-only rate (benchmarks/env_throughput.py's method: actions drawn before timing)
    env = make_torch_vec_env(a.env, a.num_envs, device="cpu", seed=0)
    env.reset()
    n = env.single_action_space.n
    actions = torch.randint(0, n, (200, a.num_envs), generator=torch.Generator().manual_seed(0))
    for t in range(20):
        env.step(actions[t])
    start = time.perf_counter()
    for t in range(200):
        env.step(actions[t])
    env_rate = 200 * a.num_envs / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset_config(a.env, preset="cleanrl", seed=1, num_envs=a.num_envs, num_steps=a.num_steps,
                            num_minibatches=a.num_minibatches, update_epochs=a.update_epochs,
                            total_timesteps=a.steps, env_backend="torch", compile=a.compile,
                            torch_threads=a.threads, progress=False, tensorboard=False, eval_episodes=0,
                            run_dir=tmp, overwrite=True)
        model = PPO(cfg)
        start = time.perf_counter()
        model.learn()
        wall = time.perf_counter() - start
    compile_s = model.compile_timer.seconds
    train = model.global_step / max(wall - compile_s, 1e-9)
    return {"env_only_sps": env_rate, "train_sps": train, "train_sps_incl_compile": model.global_step / wall,
            "ratio": train / env_rate, "compile_s": compile_s, "steps": model.global_step,
            "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib()}


def scale(a: argparse.Namespace, command: str) -> None:
    r = child("scale", env=a.env, num_envs=a.num_envs, num_steps=a.num_steps, num_minibatches=a.num_minibatches,
              update_epochs=a.update_epochs, steps=a.steps, threads=a.threads, compile=a.compile)
    md = [f"{a.env}, torch backend, {a.num_envs} envs x {a.num_steps} steps, {a.num_minibatches} minibatches, "
          f"{a.update_epochs} epochs, torch threads {r['threads']}.", "",
          "| env-only env-steps/s | training env-steps/s (excl. compile) | ratio | incl. compile | compile s "
          "| peak RSS MiB |", "|---:|---:|---:|---:|---:|---:|",
          f"| {r['env_only_sps']:,.0f} | {r['train_sps']:,.0f} | {100 * r['ratio']:.1f}% "
          f"| {r['train_sps_incl_compile']:,.0f} | {r['compile_s']:.1f} | {r['peak_rss_mib']:,.0f} |"]
    write(a.name or f"scale_{a.env}_{a.num_envs}", command, md, r)


# ---------------------------------------------------------------------------- CLI
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, threads=1):
        sp.add_argument("--threads", type=int, default=threads, help="torch threads (both libraries)")
        sp.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="ppox: compiled minibatch update (--no-compile: eager)")
        sp.add_argument("--name", default=None, help="results file name (default from the settings)")

    c = sub.add_parser("compare", help="ppox vs SB3, alternating, N seeds")
    c.add_argument("--envs", nargs="+", default=["CartPole-v1"])
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--steps", type=int, default=100_000)
    c.add_argument("--eval-episodes", type=int, default=20)
    c.add_argument("--env-backend", default=None, choices=["gymnasium", "numpy", "torch", "auto"],
                   help="ppox's env backend (default: the preset's; SB3 always steps the gymnasium env)")
    common(c)

    s = sub.add_parser("solve", help="time to solve with ppox's best preset")
    s.add_argument("--env", default="CartPole-v1")
    s.add_argument("--preset", default="CartPole-v1")
    s.add_argument("--seeds", type=int, default=5)
    s.add_argument("--threshold", type=float, default=475.0)
    s.add_argument("--eval-every", type=int, default=10)
    s.add_argument("--eval-episodes", type=int, default=20)
    s.add_argument("--max-steps", type=int, default=300_000)
    s.add_argument("--env-backend", default=None, choices=["gymnasium", "numpy", "torch", "auto"],
                   help="default: the preset's")
    common(s)

    g = sub.add_parser("scale", help="training vs env-only rate with many batched torch envs")
    g.add_argument("--env", default="CartPole-v1")
    g.add_argument("--num-envs", type=int, default=1024)
    g.add_argument("--num-steps", type=int, default=16)
    g.add_argument("--num-minibatches", type=int, default=4)
    g.add_argument("--update-epochs", type=int, default=4)
    g.add_argument("--steps", type=int, default=500_000)
    # 1 torch thread: on the shared 2-core machine 2 threads made both the env-only and the training
    # rate ~110x and ~40x slower (thread wake-ups under load; benchmarks/results/scale_CartPole-v1_1024*)
    common(g, threads=1)

    w = sub.add_parser("row1", help="the row-1 command (ppox's default path) vs SB3 at its settings")
    w.add_argument("--seeds", type=int, default=3)
    w.add_argument("--steps", type=int, default=200_000)
    w.add_argument("--eval-episodes", type=int, default=20)
    w.add_argument("--name", default=None, help="results file name")

    r = sub.add_parser("_run", help=argparse.SUPPRESS)  # one run in a child process; prints JSON
    r.add_argument("--lib", required=True)
    for name in ("env", "preset", "env-backend"):
        r.add_argument(f"--{name}", default=None)
    for name in ("seed", "steps", "threads", "eval-episodes", "num-envs", "eval-every", "max-steps",
                 "num-steps", "num-minibatches", "update-epochs"):
        r.add_argument(f"--{name}", type=int, default=None)
    r.add_argument("--threshold", type=float, default=None)
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    r.add_argument("--row1", action=argparse.BooleanOptionalAction, default=False)

    a = p.parse_args()
    command = "python benchmarks/bench_vs_sb3.py " + shlex.join(sys.argv[1:])
    if a.cmd == "_run":
        fn = {"ppox": run_ppox, "sb3": run_sb3, "solve": lambda x: solve_once(x, x.seed), "scale": scale_once}
        print(json.dumps(fn[a.lib](a)))
    else:
        {"compare": compare, "solve": solve, "scale": scale, "row1": row1}[a.cmd](a, command)


if __name__ == "__main__":
    main()
