"""ppox vs PureJaxRL's own `ppo.py` (end-to-end JAX PPO) at CleanRL's settings, run side by side on the CPU.

    python benchmarks/bench_vs_purejaxrl.py --envs CartPole-v1 Acrobot-v1 --seeds 3 --steps 500000
    python benchmarks/bench_vs_purejaxrl.py --envs CartPole-v1 --num-seeds-vmapped 64 --steps 100000

PureJaxRL runs from the folder given (`--purejaxrl-dir`, default ../shared/peers/purejaxrl) as it is: this
script imports its `make_train(config)` with CleanRL's settings in PureJaxRL's config keys (4 envs x 128
steps, 4 minibatches x 4 epochs, lr 2.5e-4 annealed, gamma 0.99, GAE 0.95, clip 0.2, ent 0.01, vf 0.5, grad
norm 0.5, 64x64 tanh actor and critic), compiles `jax.jit(make_train(config))` ahead of time (`.lower(rng)
.compile()`: the compile seconds) and then times the call until its outputs are ready (the run seconds).
gymnax has CartPole-v1 and Acrobot-v1 with gymnasium's dynamics and limits. ppox runs `ppox train ENV
--preset cleanrl --seed S` (the same settings, ppox's default path otherwise; `--ppox-cmd` changes it). Each
run is a fresh subprocess; ppox and PureJaxRL alternate (ppox first for odd seeds) so both see the same load.

Env-steps/s, both including and excluding compile: PureJaxRL steps / (compile + run) and steps / run;
ppox steps / summary.json `wall_seconds` (from `PPO(...)`, env and network construction and compile
included) and steps / (that - compile_seconds). The process's whole wall time (imports included) is
reported too. Returns, like with like: the training return (whole games that ended in the last `--window`
steps: PureJaxRL's `returned_episode_returns` and ppox's metrics.jsonl); ppox's final deterministic
evaluation (20 episodes on the gymnasium env) is a separate column, PureJaxRL has none.

`--num-seeds-vmapped N`: PureJaxRL's headline mode, `jax.vmap(make_train(config))` over N rng keys in one
compiled call (as in its README), vs `ppox train ENV --preset cleanrl --seeds 1-N` (one process, the agents
batched); agent-env-steps/s = N x steps / seconds.

Needs `pip install -e ".[bench-jax]"` (jax, flax, optax, distrax, gymnax<1.0: PureJaxRL's wrappers use gymnax
0.0.x's 5-value `step`). Results (Markdown and JSON, the producing command at the top) go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_vs_cleanrl import ROOT, machine_line, mean_std, ratios, run_ppox_cli, summarise, train_return, versions
from bench_vs_sb3 import fmt, stats, write

DEFAULT_PUREJAXRL = ROOT.parent / "shared" / "peers" / "purejaxrl"
JAX_PACKAGES = ("jax", "jaxlib", "flax", "optax", "distrax", "gymnax")
INSTALL_HINT = 'PureJaxRL needs the bench-jax extra: pip install -e ".[bench-jax]" (jax flax optax distrax gymnax<1.0)'
# CleanRL's ppo.py defaults in PureJaxRL's config keys (ppox's `--preset cleanrl` holds the same values)
CLEANRL_CONFIG = {"LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "UPDATE_EPOCHS": 4, "NUM_MINIBATCHES": 4,
                  "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01, "VF_COEF": 0.5,
                  "MAX_GRAD_NORM": 0.5, "ACTIVATION": "tanh", "ANNEAL_LR": True, "DEBUG": False}


# ---------------------------------------------------------------------------- PureJaxRL (child process)
def purejaxrl_child(a: argparse.Namespace) -> dict:
    """One PureJaxRL training (or N vmapped ones) in this process; returns timings and the training games."""
    sys.path.insert(0, str(a.purejaxrl_dir))  # its ppo.py imports `wrappers` from beside it
    import jax
    import numpy as np
    from ppo import make_train

    config = dict(CLEANRL_CONFIG, ENV_NAME=a.env, TOTAL_TIMESTEPS=a.steps)
    compile_s, run_s, out = compile_and_run(make_train, config, a.seed, a.vmapped)
    metrics = out["metrics"]
    # (NUM_UPDATES, NUM_STEPS, NUM_ENVS), with a leading agent axis when vmapped
    ended = np.asarray(metrics["returned_episode"]).reshape(a.vmapped or 1, -1, config["NUM_ENVS"])
    returns = np.asarray(metrics["returned_episode_returns"]).reshape(ended.shape)
    steps = config["NUM_UPDATES"] * config["NUM_STEPS"] * config["NUM_ENVS"]
    games = []  # per agent: (global step at which the game ended, its return)
    for agent in range(ended.shape[0]):
        t, _ = np.nonzero(ended[agent])
        games.append([((int(i) + 1) * config["NUM_ENVS"], float(r)) for i, r in zip(t, returns[agent][ended[agent]],
                                                                                    strict=True)])
    return {"compile_s": compile_s, "run_s": run_s, "steps": steps, "agents": ended.shape[0], "games": games,
            "jax_backend": jax.default_backend(), "jax_devices": len(jax.devices())}


def compile_and_run(make_train, config: dict, seed: int, vmapped: int = 0) -> tuple[float, float, dict]:
    """PureJaxRL's `make_train(config)` under `jax.jit` (`vmapped` > 0: vmapped over that many keys): (compile
    seconds, run seconds until its outputs are ready, outputs). `make_train` fills NUM_UPDATES = steps //
    (NUM_STEPS * NUM_ENVS) full iterations."""
    import jax

    train = make_train(config)
    key = jax.random.PRNGKey(seed)
    if vmapped:
        train, key = jax.vmap(train), jax.random.split(key, vmapped)
    start = time.perf_counter()
    compiled = jax.jit(train).lower(key).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(key))
    return compile_s, time.perf_counter() - start, out


def versions_line(a: argparse.Namespace) -> str:
    """Package versions; PureJaxRL's from the interpreter that runs it (`--jax-python`) when that is another one."""
    if not a.jax_python:
        return versions(*JAX_PACKAGES)
    code = ("from importlib.metadata import version as v; import sys; "
            f"print(', '.join(f'{{n}} {{v(n)}}' for n in {JAX_PACKAGES!r}))")
    theirs = subprocess.run([a.jax_python, "-c", code], capture_output=True, text=True).stdout.strip()
    return f"{versions()}; PureJaxRL under {a.jax_python}: {theirs}"


def run_purejaxrl(a: argparse.Namespace, env: str, seed: int, steps: int, workdir: Path, vmapped: int = 0) -> dict:
    cmd = [a.jax_python or sys.executable, __file__, "_purejaxrl", "--purejaxrl-dir", str(a.purejaxrl_dir),
           "--env", env, "--seed", str(seed), "--steps", str(steps), "--vmapped", str(vmapped)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=jax_environ(a), timeout=a.timeout)
    except subprocess.TimeoutExpired:
        # seen with the vmapped call on jax 0.10 / CPU: compile ends, then every XLA thread waits forever
        raise SystemExit(f"PureJaxRL did not finish in {a.timeout} s ({shlex.join(cmd)})") from None
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"PureJaxRL failed ({shlex.join(cmd)}):\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    n = r["agents"]
    incl, excl = r["compile_s"] + r["run_s"], r["run_s"]
    return {"impl": "purejaxrl", "env": env, "seed": seed, "steps": r["steps"], "agents": n, "process_wall_s": wall,
            "sps_process": n * r["steps"] / wall, "sps_own": n * r["steps"] / incl, "wall_s": incl,
            "compile_s": r["compile_s"], "run_s": r["run_s"], "sps_excl_compile": n * r["steps"] / excl,
            "eval_mean": None, "eval_std": None, "games": r["games"][0] if n == 1 else None,
            "agent_games": r["games"] if n > 1 else None, "jax_backend": r["jax_backend"], "command": shlex.join(cmd)}


def jax_environ(a: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if a.jax_single_thread:  # XLA's CPU client: one intra-op thread, like ppox's default of 1 torch thread
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env


# ---------------------------------------------------------------------------- ppox --seeds (vmapped mode)
def run_ppox_seeds(base: list[str], env: str, n: int, steps: int, workdir: Path) -> dict:
    run_dir = workdir / f"ppox_{env}_seeds"
    cmd = [*base, "--total-timesteps", str(steps), "--run-dir", str(run_dir), "--overwrite", "--no-progress",
           "--no-tensorboard"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ppox failed ({shlex.join(cmd)}):\n{proc.stderr[-3000:]}")
    summaries = sorted(run_dir.glob("**/summary.json"))  # RUN_DIR/seed_<k>/summary.json, one per agent
    if len(summaries) != n:
        raise SystemExit(f"expected {n} summary.json files under {run_dir}, found {len(summaries)}: does "
                         f"`{shlex.join(base)}` train {n} agents? (--ppox-seeds-cmd)")
    agents, agent_games = [], []
    for path in summaries:
        s = json.loads(path.read_text())
        rows = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        agent_games.append([(r["global_step"], r["episodic_return_mean"]) for r in rows if r.get("episodes")
                            for _ in range(r["episodes"])])
        agents.append(s)
    total = sum(s["total_timesteps"] for s in agents)
    loop = max(s["wall_seconds"] for s in agents)  # the agents share one loop: its wall time
    compile_s = max(s["compile_seconds"] for s in agents)
    return {"impl": "ppox", "env": env, "seed": 1, "steps": agents[0]["total_timesteps"], "agents": n,
            "process_wall_s": wall, "sps_process": total / wall, "sps_own": total / loop, "wall_s": loop,
            "compile_s": compile_s, "sps_excl_compile": total / max(loop - compile_s, 1e-9),
            "eval_mean": statistics.fmean(s["eval_return_mean"] for s in agents if s["eval_return_mean"] is not None)
            if any(s["eval_return_mean"] is not None for s in agents) else None,
            "eval_std": None, "games": None, "agent_games": agent_games, "command": shlex.join(cmd)}


# ---------------------------------------------------------------------------- targets
def compare(a: argparse.Namespace, command: str, workdir: Path) -> None:
    window = a.window or max(1, a.steps // 10)
    machine = machine_line()
    runs: list[dict] = []
    for env in a.envs:
        base = shlex.split(a.ppox_cmd.format(python=sys.executable, env=env))
        for seed in range(1, a.seeds + 1):
            for impl in (["ppox", "purejaxrl"] if seed % 2 else ["purejaxrl", "ppox"]):
                r = (run_ppox_cli(base, env, seed, a.steps, workdir) if impl == "ppox"
                     else run_purejaxrl(a, env, seed, a.steps, workdir))
                runs.append(r)
                print(f"{env} seed {seed} {impl}: {r['sps_own']:,.0f} env-steps/s incl. compile, "
                      f"{r['sps_excl_compile']:,.0f} excl. ({r['compile_s']:.1f} s compile), train return "
                      f"{fmt(train_return(r['games'], r['steps'], window))}", file=sys.stderr)
    summary = {env: summarise(runs, env, a.steps, window, "purejaxrl") for env in a.envs}
    for env in a.envs:  # incl./excl. compile: the numbers this comparison is about
        s, by = summary[env], {(r["seed"], r["impl"]): r for r in runs if r["env"] == env}
        for impl in ("ppox", "purejaxrl"):
            s[impl]["sps_excl_compile"] = stats([r["sps_excl_compile"] for r in runs
                                                  if r["env"] == env and r["impl"] == impl])
        seeds = range(1, a.seeds + 1)
        s["paired_excl_compile"] = [by[(k, "ppox")]["sps_excl_compile"] / by[(k, "purejaxrl")]["sps_excl_compile"]
                                    for k in seeds]
        s["ratio_own_medians"] = s["ppox"]["sps_own"]["median"] / s["purejaxrl"]["sps_own"]["median"]
        s["ratio_excl_medians"] = (s["ppox"]["sps_excl_compile"]["median"]
                                   / s["purejaxrl"]["sps_excl_compile"]["median"])
    jax_threads = "1 XLA thread (--jax-single-thread)" if a.jax_single_thread else "XLA's default (all cores)"
    md = [machine, f"Versions: {versions_line(a)}.", "",
          f"CleanRL's settings for both (4 envs x 128 steps, 4 minibatches x 4 epochs, lr 2.5e-4 annealed), "
          f"{a.steps:,} steps asked ({runs[0]['steps']:,} done: whole iterations), CPU. ppox: "
          f"`{a.ppox_cmd.format(python='python', env='ENV')} --seed S` (1 torch thread, its default); PureJaxRL: "
          f"its `make_train` under `jax.jit`, {jax_threads}. Runs alternate, each a fresh subprocess.", "",
          "**incl. compile** = PureJaxRL steps / (compile + run); ppox steps / summary.json wall_seconds (from "
          "`PPO(...)`: construction and compile included). **excl.** leaves compile out. **process** = steps / "
          "the whole process (imports included). **train return** = mean return of the training games that ended "
          f"in the last {window:,} steps, mean ± std over seeds (both libraries, like with like); **ppox eval** = "
          "ppox's final deterministic evaluation (20 episodes, gymnasium env), which PureJaxRL does not have. "
          "p = Welch t-test on the training returns.", "",
          "| env | lib | seeds | env-steps/s incl. compile, median (min-max) | excl. compile | process "
          "| compile s | train return | ppox eval | p |",
          "|---|---|---:|---|---:|---:|---:|---|---|---:|"]
    for env in a.envs:
        s = summary[env]
        for impl in ("ppox", "purejaxrl"):
            t = s[impl]
            own = t["sps_own"]
            md.append(f"| {env} | {impl} | {a.seeds} | {own['median']:,.0f} ({own['min']:,.0f}-{own['max']:,.0f}) "
                      f"| {t['sps_excl_compile']['median']:,.0f} | {t['sps_process']['median']:,.0f} "
                      f"| {t['compile_s']:.1f} | {mean_std(t['train_returns'])} "
                      f"| {mean_std(t['eval_returns']) if impl == 'ppox' else '-'} "
                      f"| {fmt(s['p_train_return'], 2) if impl == 'ppox' else ''} |")
    md += ["", "Ratios ppox / PureJaxRL (paired: the same seed's two runs, back to back; median, per seed in "
           "brackets):", ""]
    for env in a.envs:
        s = summary[env]
        md.append(f"* {env}: incl. compile paired {ratios(s['paired_own'])}, of medians {s['ratio_own_medians']:.2f}x; "
                  f"excl. compile paired {ratios(s['paired_excl_compile'])}, of medians "
                  f"{s['ratio_excl_medians']:.2f}x; process paired {ratios(s['paired_process'])}")
    md += ["", "Per-run commands are in the JSON file."]
    for r in runs:
        r["train_return"] = train_return(r.pop("games"), r["steps"], window)
        r.pop("agent_games", None)
    write(a.name or f"purejaxrl_{'_'.join(a.envs)}_{a.steps}", command, md,
          {"window": window, "summary": summary, "runs": runs})


def vmapped(a: argparse.Namespace, command: str, workdir: Path) -> None:
    n, window = a.num_seeds_vmapped, a.window or max(1, a.steps // 10)
    machine = machine_line()
    runs: list[dict] = []
    for env in a.envs:
        base = shlex.split(a.ppox_seeds_cmd.format(python=sys.executable, env=env, n=n))
        for rep in range(1, a.repeats + 1):
            for impl in (["ppox", "purejaxrl"] if rep % 2 else ["purejaxrl", "ppox"]):
                r = (run_ppox_seeds(base, env, n, a.steps, workdir) if impl == "ppox"
                     else run_purejaxrl(a, env, 1, a.steps, workdir, vmapped=n))
                r["repeat"] = rep
                rets = [x for x in (train_return(g, r["steps"], window) for g in r.pop("agent_games")) if x is not None]
                r["train_return_agents"] = stats(rets) if rets else None
                runs.append(r)
                print(f"{env} x{n} repeat {rep} {impl}: {r['sps_own']:,.0f} agent-env-steps/s incl. compile, "
                      f"{r['sps_excl_compile']:,.0f} excl. ({r['compile_s']:.1f} s compile)", file=sys.stderr)
    md = [machine, f"Versions: {versions_line(a)}.", "",
          f"{n} independent agents in one process, CleanRL's settings each (4 envs x 128 steps, 4x4 minibatches/"
          f"epochs), {a.steps:,} steps per agent, CPU. PureJaxRL: `jax.jit(jax.vmap(make_train(config)))` over "
          f"{n} rng keys; ppox: `{a.ppox_seeds_cmd.format(python='python', env='ENV', n=n)}`. Runs alternate. "
          "**agent-env-steps/s** = agents x steps / seconds: incl. compile (PureJaxRL compile + run; ppox the "
          "agents' loop from construction), excl. compile, and process (imports included). Train return = mean "
          f"over agents of each agent's training games ending in the last {window:,} steps (mean ± std over "
          "agents, min-max).", "",
          "| env | lib | repeat | agent-env-steps/s incl. compile | excl. compile | process | compile s "
          "| train return over agents | ppox eval (agents' mean) |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
    summary: dict = {}
    for env in a.envs:
        mine = {impl: [r for r in runs if r["env"] == env and r["impl"] == impl] for impl in ("ppox", "purejaxrl")}
        for impl, rs in mine.items():
            for r in rs:
                t = r["train_return_agents"]
                ret = "-" if t is None else f"{t['mean']:.1f} ± {t['std']:.1f} ({t['min']:.1f}-{t['max']:.1f})"
                md.append(f"| {env} | {impl} | {r['repeat']} | {r['sps_own']:,.0f} | {r['sps_excl_compile']:,.0f} "
                          f"| {r['sps_process']:,.0f} | {r['compile_s']:.1f} | {ret} | {fmt(r['eval_mean'])} |")
        med = {impl: {k: statistics.median(r[k] for r in rs) for k in ("sps_own", "sps_excl_compile", "sps_process")}
               for impl, rs in mine.items()}
        summary[env] = {"medians": med, "ratios": {k: med["ppox"][k] / med["purejaxrl"][k] for k in med["ppox"]}}
    md += ["", "Ratios ppox / PureJaxRL of the medians over repeats:", ""]
    for env in a.envs:
        q = summary[env]["ratios"]
        md.append(f"* {env}: incl. compile {q['sps_own']:.2f}x, excl. compile {q['sps_excl_compile']:.2f}x, "
                  f"process {q['sps_process']:.2f}x")
    md += ["", "Per-run commands are in the JSON file."]
    write(a.name or f"purejaxrl_vmapped{n}_{'_'.join(a.envs)}_{a.steps}", command, md,
          {"window": window, "summary": summary, "runs": runs})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--purejaxrl-dir", type=Path, default=DEFAULT_PUREJAXRL, help="folder holding PureJaxRL's ppo.py")
    p.add_argument("--envs", nargs="+", default=["CartPole-v1", "Acrobot-v1"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--window", type=int, default=None, help="training-return window in steps (default steps/10)")
    p.add_argument("--ppox-cmd", default="{python} -m ppox train {env} --preset cleanrl",
                   help="ppox's command; the script adds --seed, --total-timesteps and a run dir")
    p.add_argument("--num-seeds-vmapped", type=int, default=0, metavar="N",
                   help="PureJaxRL vmapped over N seeds vs ppox --seeds 1-N (agent-env-steps/s)")
    p.add_argument("--ppox-seeds-cmd", default="{python} -m ppox train {env} --preset cleanrl --seeds 1-{n}",
                   help="ppox's command in --num-seeds-vmapped mode ({n}: the number of agents)")
    p.add_argument("--repeats", type=int, default=2, help="--num-seeds-vmapped: alternating repeats of each")
    p.add_argument("--timeout", type=int, default=1800, help="seconds before a PureJaxRL run counts as hung")
    p.add_argument("--jax-python", default=None, metavar="PYTHON",
                   help="interpreter with jax etc. for PureJaxRL's runs (default: this one); e.g. a venv with "
                        "jax 0.4.30, whose vmapped run does not hang on a CPU as jax 0.10.2's does")
    p.add_argument("--jax-single-thread", action="store_true", help="run XLA's CPU client on one thread")
    p.add_argument("--name", default=None, help="result file stem (default purejaxrl_<...>)")
    if sys.argv[1:2] == ["_purejaxrl"]:  # one PureJaxRL training in this (child) process; prints JSON
        c = argparse.ArgumentParser()
        for name, kind in (("--purejaxrl-dir", Path), ("--env", str), ("--seed", int), ("--steps", int),
                           ("--vmapped", int)):
            c.add_argument(name, type=kind, required=True)
        print(json.dumps(purejaxrl_child(c.parse_args(sys.argv[2:]))))
        return
    a = p.parse_args()
    a.purejaxrl_dir = a.purejaxrl_dir.resolve()
    if not (a.purejaxrl_dir / "ppo.py").exists():
        raise SystemExit(f"no PureJaxRL ppo.py in {a.purejaxrl_dir}: pass --purejaxrl-dir (a checkout of "
                         "luchris429/purejaxrl's purejaxrl/ folder)")
    missing = [name for name in ("jax", "flax", "optax", "distrax", "gymnax") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not installed. {INSTALL_HINT}")
    command = "python benchmarks/bench_vs_purejaxrl.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        (vmapped if a.num_seeds_vmapped else compare)(a, command, Path(tmp))


if __name__ == "__main__":
    main()
