"""A/B of the numpy rollout and of the per-iteration logging, in one process: another tree's
ppox/rl/rollout.py + ppox/rl/envs.py (and ppox/logger.py + ppox/diagnostics/doctor.py) against this one's.

    python benchmarks/ab_rollout.py --before /tmp/ppox_before --env CartPole-v1 --rollouts 100

The other tree's modules are loaded under other names next to today's package (the rest of ppox is
shared), the two collectors fill a 128-step x 4-env buffer alternately from the same seeds, and the
buffers of their first rollout must be equal (the same maths). Reports CPU time of this thread per
rollout (median and min; CPU time, not wall time, as the machine is shared), and per iteration of a
390-iteration run: MetricsLogger.log (with TensorBoard; process CPU time, as TensorBoard writes from a
thread) and LiveDoctor.update at the trainer's cadence. Writes results/ab_rollout_<env>.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rollout_ab(before: Path, env_id: str, rollouts: int) -> list[str]:
    from ppox.rl import envs as new_envs
    from ppox.rl import rollout as new_rollout
    from ppox.rl.policy import Policy

    old_rollout = load("before_rollout", before / "ppox/rl/rollout.py")
    old_envs = load("before_envs", before / "ppox/rl/envs.py")

    def build(r, e):
        env = e.VecEnv(env_id, 4, 1, torch.device("cpu"), backend="numpy")
        torch.manual_seed(0)
        policy = Policy(env.single_observation_space, env.spec, hidden_sizes=(64, 64))
        collector = r.NumpyCollector(env, r.NumpyPolicy(policy, np.random.default_rng(0)), 128, None, None)
        return collector, r.Rollout.allocate(128, 4, env.obs_dim, env.spec, "cpu"), env.reset()

    sides = {"before": build(old_rollout, old_envs), "after": build(new_rollout, new_envs)}
    obs = {k: v[2] for k, v in sides.items()}
    times: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(rollouts):
        for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
            collector, buf, _ = sides[name]
            start = time.thread_time()
            obs[name], _ = collector.collect(buf, obs[name], [])
            times[name].append(time.thread_time() - start)
        if i == 0:
            a, b = sides["before"][1], sides["after"][1]
            for key in ("obs", "actions", "logprobs", "values", "rewards", "terminated", "episode_end", "final_values"):
                assert torch.equal(getattr(a, key), getattr(b, key)), f"the rollouts differ in {key}"
    out = []
    for name, t in times.items():
        t = np.array(t[3:]) * 1e3
        out.append(f"| rollout (128 steps x 4 envs, {env_id}) | {name} | {np.median(t):.2f} | {t.min():.2f} |")
    return out


def logging_ab(before: Path, iterations: int = 390) -> list[str]:
    from ppox import logger as new_logger
    from ppox.diagnostics import doctor as new_doctor

    old_doctor = load("before_doctor", before / "ppox/diagnostics/doctor.py")
    old_logger = load("before_logger", before / "ppox/logger.py")
    rng = np.random.default_rng(0)
    config = {"env_id": "CartPole-v1", "num_envs": 4, "num_steps": 128, "total_timesteps": 512 * iterations,
              "learning_rate": 2.5e-4, "clip_coef": 0.2, "target_kl": None}
    records = [{"iteration": i + 1, "global_step": 512 * (i + 1), "wall_time": 0.01 * i, "episodes": 3,
                "episodic_return_mean": 20.0 + i, "episodic_return_min": 10.0, "episodic_return_max": 30.0 + i,
                "episodic_length_mean": 20.0 + i, "policy_loss": float(rng.normal()), "value_loss": float(rng.random()),
                "entropy": 0.69 - 0.001 * i, "approx_kl": float(rng.random()) * 0.01, "old_approx_kl": 0.01,
                "clipfrac": 0.1, "explained_variance": float(rng.random()), "kl_coef": 0.0, "learning_rate": 2.5e-4,
                "skipped_updates": 0, "env_restarts": 0, "sps": 50000.0} for i in range(iterations)]
    every = max(1, iterations // 100)  # PPO.learn's doctor cadence
    out = []
    for name, doctor_module, logger_module in (("before", old_doctor, old_logger), ("after", new_doctor, new_logger)):
        spent = {"logger": 0.0, "doctor": 0.0}
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                doctor, logger = doctor_module.LiveDoctor(config), logger_module.MetricsLogger(tmp, tensorboard=True)
                for i, record in enumerate(records):
                    start = time.process_time()
                    logger.log(record)
                    mid = time.process_time()
                    doctor.update(record, check=(i + 1) % every == 0 or i + 1 == iterations)
                    spent["logger"] += mid - start
                    spent["doctor"] += time.process_time() - mid
                logger.close()
        for part, seconds in spent.items():
            out.append(f"| {part}, per iteration of {iterations} | {name} | {1e3 * seconds / (3 * iterations):.3f} | |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other tree (a directory holding ppox/)")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--rollouts", type=int, default=100)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    rows = rollout_ab(ns.before, ns.env, ns.rollouts) + logging_ab(ns.before)
    command = " ".join(["python", *sys.argv])
    lines = [f"# A/B of the numpy rollout and the per-iteration logging ({ns.env})", "", f"`{command}`", "",
             "| part | tree | median ms | min ms |", "|---|---|---:|---:|", *rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ab_rollout_{ns.env}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"command": command}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
