"""One-shot GPU benchmark: ppox (torch envs on CUDA) vs PureJaxRL's own ppo.py, CartPole-v1, many envs.

    python3 benchmarks/bench_gpu.py --out DIR [--seeds 2] [--steps 4000000] [--num-envs 4096] [--num-steps 32]
    python3 benchmarks/bench_gpu.py --out DIR --variant default --variant compile=True --variant compile=False
    python3 benchmarks/bench_gpu.py --out DIR --skip-purejaxrl --ppox-extra torch_threads=4

Both libraries get CleanRL's ppo.py settings except the batch shape: NUM_ENVS x NUM_STEPS (default 4096 x 32),
4 minibatches x 4 epochs, lr 2.5e-4 annealed, gamma 0.99, GAE 0.95, clip 0.2, ent 0.01, vf 0.5, grad norm 0.5,
64x64 tanh actor and critic. Every training is a fresh subprocess with a time limit (--timeout); ppox and
PureJaxRL alternate per seed (ppox first on odd seeds); a run that fails prints the tail of its output and the
benchmark goes on.

* ppox: `PPO(PPOConfig(..., env_backend="torch", device="cuda"))` then `learn()`. Construction is timed from
  outside; summary.json gives wall_seconds (from construction to the end of training, without the final
  evaluation) and compile_seconds. incl. compile = steps / wall_seconds; excl. = steps / (wall - compile);
  steady = steps / seconds over the second half of the iterations (metrics.jsonl wall_time); first iter =
  wall_time of iteration 1 (construction, CUDA warm-up and the first graph's compile included).
  `--variant` (repeatable, comma-separated PPOConfig key=value overrides, 'default' = none) gives one row each;
  `--ppox-extra key=value` applies to every variant.
* env-only: ppox's batched torch CartPole stepped with pre-generated random actions (num_steps * 50 steps,
  benchmarks/env_throughput.py's time_torch; median of 3), the ceiling for ppox's training rate.
* PureJaxRL: its `make_train(config)` from --purejaxrl-dir, `jax.jit(...).lower(key).compile()` (compile s),
  then the call until its outputs are ready (run s); excl. compile = steps / run. gymnax imports matplotlib and
  seaborn for rendering only: where they are not installed, stand-ins that fail on use take their place.

Training return: mean return of the training games that ended in the last 10% of the steps (ppox metrics.jsonl,
PureJaxRL returned_episode_returns). ppox's final deterministic evaluation (--eval-episodes on gymnasium's env) is
a separate column. Results: DIR/gpu_bench.md and DIR/gpu_bench.json (rewritten after every run), DIR/logs/.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench_vs_cleanrl import machine_line, train_return
from bench_vs_purejaxrl import CLEANRL_CONFIG, compile_and_run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PUREJAXRL = Path("shared") / "peers" / "purejaxrl"  # relative to the repository root
ENV_ID = "CartPole-v1"
VERSIONED = ("torch", "triton", "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
             "flax", "optax", "chex", "distrax", "tfp-nightly", "tensorflow-probability", "gymnax", "gymnasium",
             "numpy", "tyro")
# CleanRL's settings in PPOConfig's fields (PPOConfig's defaults already; spelled out so that they cannot drift)
PPOX_CLEANRL = {"learning_rate": 2.5e-4, "anneal_lr": True, "num_minibatches": 4, "update_epochs": 4, "gamma": 0.99,
                "gae_lambda": 0.95, "clip_coef": 0.2, "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5,
                "hidden_sizes": (64, 64), "activation": "tanh"}


# ---------------------------------------------------------------------------- children (one per run)
def ppox_child(spec: dict) -> dict:
    sys.path.insert(1, str(ROOT))  # the checkout's ppox, installed or not
    import torch

    from ppox import PPO
    from ppox.rl.config import PPOConfig

    fields = dict(PPOX_CLEANRL, env_id=ENV_ID, seed=spec["seed"], total_timesteps=spec["steps"],
                  num_envs=spec["num_envs"], num_steps=spec["num_steps"], env_backend="torch", device=spec["device"],
                  progress=False, tensorboard=False, run_dir=spec["run_dir"], overwrite=True,
                  eval_episodes=spec["eval_episodes"])
    fields.update(spec["overrides"])
    config = PPOConfig(**fields)
    start = time.perf_counter()
    model = PPO(config)
    construct_s = time.perf_counter() - start
    model.learn()
    run_dir = Path(spec["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = summary["total_timesteps"]
    # each metrics row holds the mean over the games that ended in its iteration: weight it by their count
    games = [(r["global_step"], r["episodic_return_mean"]) for r in rows if r.get("episodes")
             for _ in range(r["episodes"])]
    half = rows[len(rows) // 2 - 1] if len(rows) >= 4 else None  # the end of the first half's last iteration
    steady = ((rows[-1]["global_step"] - half["global_step"]) / max(rows[-1]["wall_time"] - half["wall_time"], 1e-9)
              if half else None)
    wall, compile_s = summary["wall_seconds"], summary["compile_seconds"]
    return {"steps": steps, "construct_s": construct_s, "wall_s": wall, "compile_s": compile_s,
            # excl.: the training loop alone, like PureJaxRL's timed call (construction: CUDA context, envs, networks)
            "sps_incl": steps / wall, "sps_excl": steps / max(wall - compile_s - construct_s, 1e-9),
            "sps_steady": steady,
            "first_iter_s": rows[0]["wall_time"] if rows else None, "compiled": summary["compile"],
            "compile_reason": summary["compile_reason"], "eval_return": summary["eval_return_mean"],
            "train_return": train_return(games, steps, max(1, steps // 10)), "iterations": summary["iterations"],
            "config": {k: v for k, v in config.to_dict().items() if k in fields},
            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch_cuda": torch.version.cuda}


def envonly_child(spec: dict) -> dict:
    sys.path.insert(1, str(ROOT))
    import torch
    from env_throughput import time_torch

    steps = spec["num_steps"] * 50
    rates = [time_torch(spec["num_envs"], steps, spec["device"]) for _ in range(3)]
    return {"sps": statistics.median(rates), "sps_all": rates, "steps_per_repeat": steps * spec["num_envs"],
            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def stub_plotting() -> list[str]:
    """gymnax 0.0.9 imports matplotlib and seaborn at import time (pong, rooms: rendering only); where they are not
    installed, modules that fail only when used stand in for them. Returns the names stubbed."""
    def missing(*_a, **_k):
        raise ImportError("matplotlib/seaborn are stand-ins here (benchmarks/bench_gpu.py): not installed")

    stubbed = []
    if importlib.util.find_spec("matplotlib") is None:
        mpl = types.ModuleType("matplotlib")
        for sub in ("pyplot", "colors", "animation", "cm", "patches"):
            mod = types.ModuleType(f"matplotlib.{sub}")
            mod.__getattr__ = missing  # type: ignore[attr-defined]
            setattr(mpl, sub, mod)
            sys.modules[mod.__name__] = mod
        sys.modules["matplotlib"] = mpl
        stubbed.append("matplotlib")
    if importlib.util.find_spec("seaborn") is None:
        sns = types.ModuleType("seaborn")
        sns.__getattr__ = missing  # type: ignore[attr-defined]
        sys.modules["seaborn"] = sns
        stubbed.append("seaborn")
    return stubbed


def purejaxrl_child(spec: dict) -> dict:
    stubbed = stub_plotting()
    sys.path.insert(0, spec["purejaxrl_dir"])  # its ppo.py imports `wrappers` from beside it
    import jax
    import numpy as np
    from ppo import make_train

    config = dict(CLEANRL_CONFIG, NUM_ENVS=spec["num_envs"], NUM_STEPS=spec["num_steps"], ENV_NAME=ENV_ID,
                  TOTAL_TIMESTEPS=spec["steps"])
    compile_s, run_s, out = compile_and_run(make_train, config, spec["seed"])
    metrics = out["metrics"]
    ended = np.asarray(metrics["returned_episode"]).reshape(-1, config["NUM_ENVS"])  # (updates * steps, envs)
    returns = np.asarray(metrics["returned_episode_returns"]).reshape(ended.shape)
    steps = config["NUM_UPDATES"] * config["NUM_STEPS"] * config["NUM_ENVS"]
    t, _ = np.nonzero(ended)
    games = list(zip(((t + 1) * config["NUM_ENVS"]).tolist(), returns[ended].tolist(), strict=True))
    return {"steps": steps, "compile_s": compile_s, "run_s": run_s, "wall_s": compile_s + run_s,
            "sps_incl": steps / (compile_s + run_s), "sps_excl": steps / run_s,
            "train_return": train_return(games, steps, max(1, steps // 10)), "iterations": config["NUM_UPDATES"],
            "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
            "stubbed": stubbed}


CHILDREN = {"_ppox": ppox_child, "_envonly": envonly_child, "_purejaxrl": purejaxrl_child}


# ---------------------------------------------------------------------------- parent
def parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(low)
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_overrides(text: str) -> dict:
    """'default' -> {}; 'compile=True,rollout_backend=torch' -> {...} (a comma splits only before `key=`)."""
    if text.strip() in ("", "default"):
        return {}
    out = {}
    for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"bad override {part!r}: expected key=value")
        out[key.strip()] = parse_value(value)
    return out


def package_versions() -> dict:
    out = {}
    for name in VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def gpu_name() -> str:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
        return proc.stdout.strip() or proc.stderr.strip() or f"nvidia-smi exit {proc.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi unavailable ({exc.__class__.__name__})"


class Bench:
    def __init__(self, a: argparse.Namespace, command: str):
        self.a, self.command = a, command
        self.out = Path(a.out).resolve()
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
        self.start = time.perf_counter()
        self.runs: list[dict] = []
        self.envonly: dict | None = None
        self.errors: dict[str, str] = {}  # a failed run's last log line -> the first run that ended so
        self.meta = {"command": command, "argv": sys.argv, "gpu": gpu_name(), "python": platform.python_version(),
                     "machine": machine_line(), "versions": package_versions(), "started": time.strftime("%F %T"),
                     "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}

    def child(self, kind: str, name: str, spec: dict, env: dict | None = None) -> dict | None:
        """Run one child (`kind`: _ppox, _envonly, _purejaxrl) with the time limit; None if it failed."""
        left = self.a.max_total - (time.perf_counter() - self.start)
        if left < 20:
            print(f"{name}: skipped, --max-total {self.a.max_total} s nearly spent", flush=True)
            self.runs.append({"name": name, "kind": kind, "failed": "skipped (--max-total)", **spec})
            return None
        limit = min(self.a.timeout, left)
        spec_path = self.tmp / f"{name}.spec.json"
        result_path = self.tmp / f"{name}.result.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), kind, str(spec_path), str(result_path)]
        log = self.out / "logs" / f"{name}.log"
        start = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own group: it and its compile workers
                proc.wait()
                rc = "timeout"
        wall = time.perf_counter() - start
        if rc != 0 or not result_path.exists():
            tail = log.read_text(errors="replace")[-self.a.tail:]
            why = f"timed out after {limit:.0f} s" if rc == "timeout" else f"exit {rc}"
            last = (tail.strip().splitlines() or [""])[-1]
            if last in self.errors:  # the same error again: one line, not the whole tail
                print(f"{name}: FAILED ({why}, {wall:.0f} s), same as {self.errors[last]}: {last[-200:]}", flush=True)
            else:
                self.errors[last] = name
                print(f"{name}: FAILED ({why}, {wall:.0f} s); log tail:\n{tail}\n--- end of {name}", flush=True)
            self.runs.append({"name": name, "kind": kind, "failed": why, "process_wall_s": wall, **spec})
            return None
        r = json.loads(result_path.read_text())
        r.update(process_wall_s=wall, name=name)
        return r

    def run_ppox(self, seed: int, variant: str, overrides: dict) -> None:
        a = self.a
        name = f"ppox_{slug(variant)}_s{seed}"
        spec = {"seed": seed, "steps": a.steps, "num_envs": a.num_envs, "num_steps": a.num_steps, "device": a.device,
                "run_dir": str(self.tmp / name), "eval_episodes": a.eval_episodes, "overrides": overrides}
        env = {}
        if a.fresh_compile_cache:  # cold torch.compile: inductor's, triton's and ppox's caches empty for this run
            cache = self.tmp / f"{name}_cache"
            env = {"TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton"),
                   "PPOX_CACHE_DIR": str(cache / "ppox")}
        r = self.child("_ppox", name, spec, env)
        if r is None:
            self.runs[-1].update(lib="ppox", variant=variant, seed=seed)
            return
        r.update(lib="ppox", variant=variant, seed=seed)
        self.runs.append(r)
        print(f"{name}: {rate(r['sps_excl'])}/s excl. compile, {rate(r['sps_incl'])}/s incl., steady "
              f"{rate(r['sps_steady'])}/s; construct {r['construct_s']:.1f} s, compile {r['compile_s']:.1f} s "
              f"({'compiled' if r['compiled'] else 'eager'}); train {num(r['train_return'])}, eval "
              f"{num(r['eval_return'])}; process {r['process_wall_s']:.0f} s", flush=True)

    def run_purejaxrl(self, seed: int) -> None:
        a = self.a
        name = f"purejaxrl_s{seed}"
        spec = {"seed": seed, "steps": a.steps, "num_envs": a.num_envs, "num_steps": a.num_steps,
                "purejaxrl_dir": str(a.purejaxrl_dir)}
        env = {"JAX_PLATFORMS": "cpu"} if a.device == "cpu" else {}
        r = self.child("_purejaxrl", name, spec, env)
        if r is None:
            self.runs[-1].update(lib="purejaxrl", variant="-", seed=seed)
            return
        r.update(lib="purejaxrl", variant="-", seed=seed)
        self.runs.append(r)
        print(f"{name}: {rate(r['sps_excl'])}/s excl. compile, {rate(r['sps_incl'])}/s incl.; compile "
              f"{r['compile_s']:.1f} s, run {r['run_s']:.1f} s; train {num(r['train_return'])}; jax "
              f"{r['jax_backend']}; process {r['process_wall_s']:.0f} s", flush=True)

    def run_envonly(self) -> None:
        a = self.a
        r = self.child("_envonly", "envonly", {"num_envs": a.num_envs, "num_steps": a.num_steps, "device": a.device})
        if r is not None:
            self.envonly = r
            print(f"envonly: ppox torch CartPole x{a.num_envs} on {a.device}: {rate(r['sps'])} env-steps/s "
                  f"(median of 3)", flush=True)

    # ------------------------------------------------------------------------ report
    def groups(self) -> list[tuple[str, str, list[dict]]]:
        keys = [("ppox", v) for v in self.a.variant] + [("purejaxrl", "-")]
        out = []
        for lib, variant in keys:
            rs = sorted((r for r in self.runs if r.get("lib") == lib and r.get("variant") == variant
                         and not r.get("failed")), key=lambda r: r["seed"])
            failed = [r for r in self.runs if r.get("lib") == lib and r.get("variant") == variant and r.get("failed")]
            if rs or failed:
                out.append((lib, variant, rs))
        return out

    def report(self) -> tuple[list[str], dict]:
        a = self.a
        env_sps = self.envonly["sps"] if self.envonly else None
        lines = [f"# GPU benchmark: ppox vs PureJaxRL, {ENV_ID}", "", f"Command: `{self.command}`", "",
                 f"GPU: {self.meta['gpu']}; {self.meta['machine']} Python {self.meta['python']}.",
                 "Versions: " + ", ".join(f"{k} {v}" for k, v in self.meta["versions"].items()) + ".", "",
                 f"{a.num_envs} envs x {a.num_steps} steps, 4 minibatches x 4 epochs, CleanRL's other settings, "
                 f"{a.steps:,} steps asked; device {a.device}. Env-steps/s: median over seeds [per seed]. "
                 "excl. = without compile (ppox: and without `PPO(...)` construction, as PureJaxRL times its call "
                 "alone); ppox incl. counts from `PPO(...)`; steady = second half of the "
                 "iterations; train = training games ending in the last 10% of steps; env-only % = excl. / "
                 "ppox's env-only rate; process = the child's whole wall time (imports, evaluation included).", "",
                 "| lib | variant | runs | excl. compile | incl. compile | steady | construct s | compile s "
                 "| first iter s | train return | eval return | % env-only | process s |",
                 "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        summary: dict = {}
        for lib, variant, rs in self.groups():
            ended = [str(r["failed"]) for r in self.runs if r.get("lib") == lib and r.get("variant") == variant
                     and r.get("failed")]
            n_skipped = sum(1 for why in ended if why.startswith("skipped"))
            n_failed = len(ended) - n_skipped
            runs = f"{len(rs)}" + (f" (+{n_failed} failed)" if n_failed else "") + (
                f" (+{n_skipped} not run: --max-total)" if n_skipped else "")
            if not rs:
                lines.append(f"| {lib} | {variant} | {runs} | - | - | - | - | - | - | - | - | - | - |")
                continue
            med = {k: median([r.get(k) for r in rs]) for k in ("sps_excl", "sps_incl", "sps_steady", "construct_s",
                                                               "compile_s", "first_iter_s", "train_return",
                                                               "eval_return", "process_wall_s")}
            summary[f"{lib}:{variant}"] = {**med, "seeds": [r["seed"] for r in rs]}
            per_seed = ", ".join(rate(r["sps_excl"]) for r in rs)
            mode = ""
            if lib == "ppox":
                modes = {"compiled" if r["compiled"] else "eager" for r in rs}
                mode = f" ({'/'.join(sorted(modes))})"
            elif any(r.get("jax_backend") not in ("gpu", "cuda") for r in rs) and a.device != "cpu":
                mode = f" (jax on {rs[0].get('jax_backend')}!)"
            pct = f"{100 * med['sps_excl'] / env_sps:.0f}%" if env_sps and lib == "ppox" else "-"
            lines.append(
                f"| {lib} | {variant}{mode} | {runs} | {rate(med['sps_excl'])} [{per_seed}] | {rate(med['sps_incl'])} "
                f"| {rate(med['sps_steady'])} | {num(med['construct_s'], 2)} | {num(med['compile_s'])} "
                f"| {num(med['first_iter_s'])} | {num(med['train_return'])} | {num(med['eval_return'])} | {pct} "
                f"| {num(med['process_wall_s'], 0)} |")
        lines.append("")
        if self.envonly:
            e = self.envonly
            lines.append(f"ppox env-only (torch CartPole x{a.num_envs}, {e['steps_per_repeat']:,} env-steps a repeat, "
                         f"random actions): {rate(e['sps'])} env-steps/s (median of "
                         f"{', '.join(rate(x) for x in e['sps_all'])}).")
        pj = {r["seed"]: r for r in self.runs if r.get("lib") == "purejaxrl" and not r.get("failed")}
        for variant in a.variant:
            mine = {r["seed"]: r for r in self.runs if r.get("lib") == "ppox" and r.get("variant") == variant
                    and not r.get("failed")}
            seeds = sorted(set(mine) & set(pj))
            if not seeds:
                continue
            paired = [mine[s]["sps_excl"] / pj[s]["sps_excl"] for s in seeds]
            paired_incl = [mine[s]["sps_incl"] / pj[s]["sps_incl"] for s in seeds]
            of_medians = median([mine[s]["sps_excl"] for s in seeds]) / median([pj[s]["sps_excl"] for s in seeds])
            summary[f"ratio:{variant}"] = {"paired_excl": paired, "paired_incl": paired_incl,
                                           "excl_of_medians": of_medians}
            lines.append(f"ppox[{variant}] / PureJaxRL, excl. compile: {of_medians:.2f}x of medians, paired "
                         f"[{', '.join(f'{x:.2f}' for x in paired)}]; incl. compile paired "
                         f"[{', '.join(f'{x:.2f}' for x in paired_incl)}].")
        stubbed = sorted({s for r in pj.values() for s in r.get("stubbed", [])})
        if stubbed:
            lines.append(f"PureJaxRL children ran with stand-ins for {', '.join(stubbed)} (gymnax's rendering only).")
        lines.append(f"Total {time.perf_counter() - self.start:.0f} s. Per-run details in gpu_bench.json, logs in "
                     "logs/.")
        return lines, summary

    def write(self) -> list[str]:
        lines, summary = self.report()
        (self.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
        data = {**self.meta, "total_s": time.perf_counter() - self.start, "envonly": self.envonly,
                "summary": summary, "runs": self.runs}
        (self.out / "gpu_bench.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        return lines


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x:,.0f}"


def num(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=.-]+", "_", text)[:60]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] in CHILDREN:  # a child: spec file in, result file out
        spec = json.loads(Path(sys.argv[2]).read_text())
        result = CHILDREN[sys.argv[1]](spec)
        Path(sys.argv[3]).write_text(json.dumps(result, default=str))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_bench.md, gpu_bench.json and logs/")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4_000_000)
    p.add_argument("--num-envs", type=int, default=4096)
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--variant", action="append", default=None,
                   help="ppox config overrides for one row, comma-separated key=value ('default' = none); repeatable")
    p.add_argument("--ppox-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="PPOConfig override for every ppox run (e.g. torch_threads=4); repeatable")
    p.add_argument("--purejaxrl-dir", type=Path, default=DEFAULT_PUREJAXRL,
                   help="folder holding PureJaxRL's ppo.py and wrappers.py (relative: to the repository root)")
    p.add_argument("--skip-purejaxrl", "--ppox-only", action="store_true", dest="skip_purejaxrl")
    p.add_argument("--skip-ppox", "--purejaxrl-only", action="store_true", dest="skip_ppox")
    p.add_argument("--skip-env-only", action="store_true")
    p.add_argument("--eval-episodes", type=int, default=20, help="ppox's final evaluation episodes (0: none)")
    p.add_argument("--fresh-compile-cache", action="store_true",
                   help="give every ppox run empty inductor/triton/ppox caches (cold torch.compile)")
    p.add_argument("--timeout", type=float, default=240, help="seconds per run before it is killed")
    p.add_argument("--max-total", type=float, default=560, help="start no run after this many seconds in all")
    p.add_argument("--tail", type=int, default=1500, help="characters of a failed run's log to print")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a local dry run
    a = p.parse_args()
    a.variant = a.variant or ["default"]
    extra = parse_overrides(",".join(a.ppox_extra))
    variants = [(v, {**extra, **parse_overrides(v)}) for v in a.variant]
    if not a.purejaxrl_dir.is_absolute():
        a.purejaxrl_dir = ROOT / a.purejaxrl_dir
    if not a.skip_purejaxrl and not (a.purejaxrl_dir / "ppo.py").exists():
        print(f"no PureJaxRL ppo.py in {a.purejaxrl_dir}: PureJaxRL skipped (--purejaxrl-dir)", flush=True)
        a.skip_purejaxrl = True
    command = "python3 benchmarks/bench_gpu.py " + shlex.join(sys.argv[1:])
    bench = Bench(a, command)
    print(f"GPU: {bench.meta['gpu']}; " + ", ".join(f"{k} {v}" for k, v in bench.meta["versions"].items()
                                                     if k in ("torch", "jax", "jaxlib", "gymnax", "distrax")),
          flush=True)
    try:
        if not a.skip_env_only and not a.skip_ppox:
            bench.run_envonly()
            bench.write()
        for seed in range(1, a.seeds + 1):
            order = (["ppox", "purejaxrl"] if seed % 2 else ["purejaxrl", "ppox"])
            for lib in order:
                if lib == "ppox" and not a.skip_ppox:
                    for variant, overrides in variants:
                        bench.run_ppox(seed, variant, overrides)
                        bench.write()
                elif lib == "purejaxrl" and not a.skip_purejaxrl:
                    bench.run_purejaxrl(seed)
                    bench.write()
    finally:
        lines = bench.write()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    table = next((i for i, line in enumerate(lines) if line.startswith("| lib")), 0)
    print("\n".join(lines[table:]))  # the table onwards; the header is in gpu_bench.md


if __name__ == "__main__":
    main()
