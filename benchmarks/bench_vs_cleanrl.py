"""ppox vs CleanRL's own `ppo.py` / `ppo_continuous_action.py`, same settings, run side by side.

    python benchmarks/bench_vs_cleanrl.py --envs CartPole-v1 --seeds 3 --steps 500000
    python benchmarks/bench_vs_cleanrl.py --envs HalfCheetah-v5 Hopper-v5 Walker2d-v5 --seeds 3 --steps 100000

CleanRL's files run from the folder given (`--cleanrl-dir`, default ../shared/peers/cleanrl), each a fresh
subprocess: `ppo.py` for discrete actions (CartPole-v1, Acrobot-v1), `ppo_continuous_action.py` for MuJoCo
(its default ids are v4; gymnasium 1.x ships v5, passed with --env-id). ppox runs `ppox train ENV --preset
cleanrl` (`--preset cleanrl-continuous` for MuJoCo): CleanRL's settings, ppox's default path otherwise. Runs
alternate (ppox first for odd seeds, CleanRL first for even ones) so both see the same machine load.
CleanRL gets 1 torch thread by default (`OMP_NUM_THREADS`; its files have no flag), as ppox's default:
`--threads 0` leaves torch's default, which on a small shared machine is far slower.

CleanRL's files are written for gymnasium 0.29. Under gymnasium 1.x `ppo.py` runs but logs no returns (1.x
has no per-env `final_info` list) and steps with next-step autoreset; `ppo_continuous_action.py` stops at
once (`TransformObservation` needs an `observation_space` argument in 1.x). So by default they run under
a launcher that gives them 0.29's wrapper names, `TransformObservation` signature and vector env
(same-step autoreset, per-env `final_info`) and then runs the file unmodified (`--bare` runs it without);
nothing of the algorithm is touched. Every results file records what the bare file does here, checked
with a short run at the start.

Measures per run: env-steps/s two ways, (1) steps / the process's wall seconds (start-up, imports,
construction included; the same clock for both) and (2) each library's own figure (CleanRL's last printed
`SPS:`, counted from after env and network construction; ppox's summary.json `sps`, counted from `PPO(...)`,
compile included); the training return (whole games that ended in the last `--window` steps; CleanRL's
printed `episodic_return` lines and ppox's metrics.jsonl, both the raw env return); ppox's final
deterministic evaluation (summary.json, its default 20 episodes), which CleanRL does not have. Results
(Markdown and JSON, the producing command at the top) go to benchmarks/results/. CleanRL needs only torch,
gymnasium (mujoco for MuJoCo), tyro and tensorboard, all in ppox's own dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_vs_cleanrl_atari import CLEANRL_LAUNCH
from bench_vs_sb3 import CONTINUOUS, fmt, stats, welch_p, write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLEANRL = ROOT.parent / "shared" / "peers" / "cleanrl"
# gymnasium 0.29's TransformObservation took no observation_space (it kept the env's); 1.x requires the
# argument, None meaning the same thing. Prepended to the Atari launcher, which supplies the rest.
TRANSFORM_OBSERVATION_029 = """
import gymnasium as gym
class TransformObservation029(gym.wrappers.TransformObservation):
    def __init__(self, env, func, observation_space=None):
        super().__init__(env, func, observation_space)
gym.wrappers.TransformObservation = TransformObservation029
"""
LAUNCH = TRANSFORM_OBSERVATION_029 + CLEANRL_LAUNCH
RETURN_LINE = re.compile(r"global_step=(\d+), episodic_return=\[?([-\d.eE+]+)\]?")
SPS_LINE = re.compile(r"^SPS: (\d+)", re.M)
# CleanRL's batch per iteration (num_envs x num_steps): the short bare-file check runs one iteration
CLEANRL_BATCH = {"ppo.py": 4 * 128, "ppo_continuous_action.py": 1 * 2048}


def cleanrl_script(env: str) -> str:
    return "ppo_continuous_action.py" if env in CONTINUOUS else "ppo.py"


def ppox_preset(env: str) -> str:
    return "cleanrl-continuous" if env in CONTINUOUS else "cleanrl"


def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return f"CPU: {cpu}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at the start."


def versions(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("ppox", "torch", "gymnasium", *names):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def train_return(games: list[tuple[int, float]], steps: int, window: int) -> float | None:
    """Mean return of the training games that ended in the last `window` of `steps` env steps."""
    inside = [r for s, r in games if s > steps - window]
    return statistics.fmean(inside) if inside else None


# ---------------------------------------------------------------------------- one run each (subprocesses)
def run_ppox_cli(base: list[str], env: str, seed: int, steps: int, workdir: Path, extra: list[str] = ()) -> dict:
    """`base` (e.g. [python, -m, ppox, train, ENV, --preset, cleanrl]) + seed, budget and a private run dir."""
    run_dir = workdir / f"ppox_{env}_{seed}"
    cmd = [*base, "--seed", str(seed), "--total-timesteps", str(steps), "--run-dir", str(run_dir), "--overwrite",
           "--no-progress", "--no-tensorboard", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ppox failed ({shlex.join(cmd)}):\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # metrics.jsonl has each iteration's mean over the games that ended in it: weight by their count
    games = [(r["global_step"], r["episodic_return_mean"]) for r in rows if r.get("episodes")
             for _ in range(r["episodes"])]
    done = summary["total_timesteps"]
    return {"impl": "ppox", "env": env, "seed": seed, "steps": done, "process_wall_s": wall,
            "sps_process": done / wall, "sps_own": summary["sps"], "wall_s": summary["wall_seconds"],
            "compile_s": summary["compile_seconds"],
            "sps_excl_compile": done / max(summary["wall_seconds"] - summary["compile_seconds"], 1e-9),
            "eval_mean": summary["eval_return_mean"], "eval_std": summary["eval_return_std"],
            "games": games, "command": shlex.join(cmd)}


def cleanrl_cmd(cleanrl_dir: Path, env: str, seed: int, steps: int, bare: bool) -> list[str]:
    script = str(cleanrl_dir / cleanrl_script(env))
    launcher = [] if bare else ["-c", LAUNCH]
    return [sys.executable, *launcher, script, "--env-id", env, "--seed", str(seed), "--total-timesteps",
            str(steps), "--no-cuda"]


def cleanrl_env(cleanrl_dir: Path, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{cleanrl_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if threads > 0:  # CleanRL's files have no thread flag; torch reads its intra-op thread count from these
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_cleanrl(cleanrl_dir: Path, env: str, seed: int, steps: int, workdir: Path, bare: bool,
                threads: int) -> dict:
    cmd = cleanrl_cmd(cleanrl_dir, env, seed, steps, bare)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=cleanrl_env(cleanrl_dir, threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"CleanRL failed ({shlex.join(cmd)}):\n{proc.stderr[-3000:]}")
    games = [(int(m[1]), float(m[2])) for m in RETURN_LINE.finditer(proc.stdout)]
    own = [int(x) for x in SPS_LINE.findall(proc.stdout)]
    # CleanRL runs num_iterations = steps // batch full iterations
    done = steps // CLEANRL_BATCH[cleanrl_script(env)] * CLEANRL_BATCH[cleanrl_script(env)]
    return {"impl": "cleanrl", "env": env, "seed": seed, "steps": done, "process_wall_s": wall,
            "sps_process": done / wall, "sps_own": own[-1] if own else None, "wall_s": None, "compile_s": 0.0,
            "sps_excl_compile": own[-1] if own else None, "eval_mean": None, "eval_std": None, "games": games,
            "command": shlex.join(cmd).replace(shlex.quote(LAUNCH), "\"$(bench_vs_cleanrl.LAUNCH)\"")}


def check_bare(cleanrl_dir: Path, env: str, workdir: Path, threads: int) -> dict:
    """Run CleanRL's file without the launcher for one iteration: does it run, does it log returns?"""
    batch = CLEANRL_BATCH[cleanrl_script(env)]
    steps = batch * (20 if env not in CONTINUOUS else 1)  # enough CartPole games to end, one MuJoCo iteration
    cmd = cleanrl_cmd(cleanrl_dir, env, 1, steps, bare=True)
    proc = subprocess.run(cmd, cwd=workdir, env=cleanrl_env(cleanrl_dir, threads), capture_output=True, text=True)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:]
        verdict = f"fails: {last[0] if last else f'exit {proc.returncode}'}"
    else:
        logged = len(RETURN_LINE.findall(proc.stdout))
        verdict = ("runs, logs returns" if logged else
                   f"runs, but logs no episodic returns in {steps:,} steps (gymnasium 1.x has no per-env "
                   "`final_info` list) and steps with 1.x's next-step autoreset")
    return {"env": env, "command": shlex.join(cmd), "verdict": verdict}


# ---------------------------------------------------------------------------- report
def summarise(runs: list[dict], env: str, steps: int, window: int, peer: str) -> dict:
    per = {impl: [r for r in runs if r["env"] == env and r["impl"] == impl] for impl in ("ppox", peer)}
    out: dict = {}
    for impl, rs in per.items():
        rets = [x for x in (train_return(r["games"], r["steps"], window) for r in rs) if x is not None]
        out[impl] = {"sps_process": stats([r["sps_process"] for r in rs]),
                     "sps_own": stats([r["sps_own"] for r in rs]) if all(r["sps_own"] for r in rs) else None,
                     "train_returns": rets, "eval_returns": [r["eval_mean"] for r in rs if r["eval_mean"] is not None],
                     "compile_s": statistics.median(r["compile_s"] for r in rs)}
    by = {(r["seed"], r["impl"]): r for r in runs if r["env"] == env}
    seeds = sorted({s for s, _ in by})
    out["paired_process"] = [by[(s, "ppox")]["sps_process"] / by[(s, peer)]["sps_process"] for s in seeds
                             if (s, "ppox") in by and (s, peer) in by]
    own = [(by[(s, "ppox")]["sps_own"], by[(s, peer)]["sps_own"]) for s in seeds if (s, "ppox") in by
           and (s, peer) in by]
    out["paired_own"] = [a / b for a, b in own if a and b]
    out["ratio_process_medians"] = out["ppox"]["sps_process"]["median"] / out[peer]["sps_process"]["median"]
    a, b = out["ppox"]["train_returns"], out[peer]["train_returns"]
    out["p_train_return"] = welch_p(a, b) if a and b else None
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    s = stats(values)
    return f"{fmt(s['mean'])} ± {fmt(s['std'])}"


def ratios(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}x ({', '.join(f'{x:.2f}' for x in xs)})" if xs else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cleanrl-dir", type=Path, default=DEFAULT_CLEANRL, help="folder holding CleanRL's ppo*.py")
    p.add_argument("--envs", nargs="+", default=["CartPole-v1"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--window", type=int, default=None, help="training-return window in steps (default steps/5)")
    p.add_argument("--threads", type=int, default=1,
                   help="CleanRL's torch threads (OMP_NUM_THREADS; ppox's default is 1); 0 = torch's default")
    p.add_argument("--bare", action="store_true", help="run CleanRL's files without the gymnasium-0.29 launcher")
    p.add_argument("--ppox-cmd", default="{python} -m ppox train {env} --preset {preset}",
                   help="ppox's command; the script adds --seed, --total-timesteps and a run dir")
    p.add_argument("--name", default=None, help="result file stem (default cleanrl_<envs>_<steps>)")
    a = p.parse_args()
    command = "python benchmarks/bench_vs_cleanrl.py " + shlex.join(sys.argv[1:])
    cleanrl_dir = a.cleanrl_dir.resolve()
    if not (cleanrl_dir / "ppo.py").exists():
        raise SystemExit(f"no CleanRL ppo.py in {cleanrl_dir}: pass --cleanrl-dir (a checkout of vwxyzjn/cleanrl)")
    window = a.window or max(1, a.steps // 5)
    machine = machine_line()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bare = [check_bare(cleanrl_dir, env, workdir, a.threads) for env in dict.fromkeys(
            "HalfCheetah-v5" if e in CONTINUOUS else "CartPole-v1" for e in a.envs)]
        for b in bare:
            print(f"bare {b['env']}: {b['verdict']}", file=sys.stderr)
        for env in a.envs:
            base = shlex.split(a.ppox_cmd.format(python=sys.executable, env=env, preset=ppox_preset(env)))
            for seed in range(1, a.seeds + 1):
                for impl in (["ppox", "cleanrl"] if seed % 2 else ["cleanrl", "ppox"]):
                    r = (run_ppox_cli(base, env, seed, a.steps, workdir) if impl == "ppox"
                         else run_cleanrl(cleanrl_dir, env, seed, a.steps, workdir, a.bare, a.threads))
                    runs.append(r)
                    print(f"{env} seed {seed} {impl}: {r['sps_process']:,.0f} env-steps/s (process), own "
                          f"{fmt(r['sps_own'], 0)}, train return {fmt(train_return(r['games'], r['steps'], window))}",
                          file=sys.stderr)
    summary = {env: summarise(runs, env, a.steps, window, "cleanrl") for env in a.envs}
    md = [machine, f"Versions: {versions('mujoco', 'tyro')}.", "",
          "Runs alternate (ppox first for odd seeds, CleanRL first for even ones), each a fresh subprocess, CPU. "
          "**process** env-steps/s = steps / the process's wall seconds (imports, construction, compile included: "
          "the same clock for both); **own** = each library's own figure (CleanRL: its last printed `SPS:`, from "
          "after construction; ppox: summary.json `sps`, from `PPO(...)`, compile included). Paired = ppox / "
          "CleanRL of the same seed, the two runs back to back. **train return** = mean raw return of the "
          f"training games that ended in the last {window:,} steps, then mean ± std over seeds (like with like); "
          "**ppox eval** = ppox's final deterministic evaluation (20 episodes, fresh gymnasium env; CleanRL has "
          "none). p = Welch t-test on the training returns. Torch threads: ppox 1 (its default); CleanRL "
          f"{a.threads or 'torch default'} (OMP_NUM_THREADS; its files have no flag for it).", "",
          "| env | lib | seeds | steps | process env-steps/s median (min-max) | own env-steps/s median "
          "| ppox compile s | train return | ppox eval | p |",
          "|---|---|---:|---:|---|---:|---:|---|---|---:|"]
    for env in a.envs:
        s = summary[env]
        for impl in ("ppox", "cleanrl"):
            t = s[impl]
            sp = t["sps_process"]
            md.append(f"| {env} | {impl} | {a.seeds} | {a.steps:,} | {sp['median']:,.0f} ({sp['min']:,.0f}-"
                      f"{sp['max']:,.0f}) | {fmt(t['sps_own'] and t['sps_own']['median'], 0)} "
                      f"| {t['compile_s']:.1f} | {mean_std(t['train_returns'])} "
                      f"| {mean_std(t['eval_returns']) if impl == 'ppox' else '-'} "
                      f"| {fmt(s['p_train_return'], 2) if impl == 'ppox' else ''} |")
    md += ["", "Ratios ppox / CleanRL (median over seeds, per seed in brackets):", ""]
    for env in a.envs:
        s = summary[env]
        md.append(f"* {env}: paired process {ratios(s['paired_process'])}; paired own {ratios(s['paired_own'])}; "
                  f"ratio of process medians {s['ratio_process_medians']:.2f}x")
    md += ["", "CleanRL's files " + ("ran bare (`--bare`)." if a.bare else
           "ran under the gymnasium-0.29 launcher (see the script's docstring); run bare here they do this:"), ""]
    md += [f"* `{b['command']}`: {b['verdict']}" for b in bare]
    md += ["", "Per-run commands are in the JSON file."]
    for r in runs:  # the JSON keeps the returns' summary, not every game
        r["train_return"] = train_return(r.pop("games"), r["steps"], window)
    write(a.name or f"cleanrl_{'_'.join(a.envs)}_{a.steps}", command, md,
          {"window": window, "bare_check": bare, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
