"""Teacher-student distillation (ppox.rl.distill): the privileged latent, a student that never sees the
privileged key, the adaptation error falling, exact resume, the CLI, and (slow) the demo's result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppox.cli.main import main
from ppox.rl.config import preset_config
from ppox.rl.distill import DistillConfig, Distiller, load_student
from ppox.rl.policy import LATENT_DIM, PrivilegedEncoder
from ppox.rl.ppo import PPO

ENV = "ppox/CartPoleRandomized-v0"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A briefly trained teacher: enough for the plumbing (the slow test trains a real one)."""
    path = tmp_path_factory.mktemp("teacher")
    model = PPO(preset_config(ENV, "CartPole-v1", total_timesteps=512, num_envs=4, num_steps=64, seed=3,
                              run_dir=str(path), progress=False, eval_episodes=0, tensorboard=False,
                              live_doctor=False))
    model.learn()
    model.close()
    return path


def small(teacher_dir, run_dir, **kw) -> DistillConfig:
    values = {"teacher": str(teacher_dir), "run_dir": str(run_dir), "num_envs": 4, "num_steps": 32,
              "total_timesteps": 4 * 32 * 4, "progress": False, "eval_episodes": 0, "tensorboard": False,
              "update_epochs": 2, "num_minibatches": 2, "seed": 5, **kw}
    return DistillConfig(**values)


def test_teacher_embeds_only_the_privileged_key(teacher_dir) -> None:
    model = PPO.load(teacher_dir)
    body = model.agent.actor_body
    assert isinstance(body, PrivilegedEncoder)
    obs = torch.randn(5, model.obs_dim)
    z = model.agent.latent(obs)
    assert z.shape == (5, LATENT_DIM)
    changed = obs.clone()
    a, b = body.privileged_part
    changed[:, :a] += 1.0  # the deployable keys ("obs" sorts first)
    torch.testing.assert_close(model.agent.latent(changed), z)  # z reads the privileged key alone
    changed = obs.clone()
    changed[:, a:b] += 0.5
    assert not torch.allclose(model.agent.latent(changed), z)


def test_the_privileged_key_never_reaches_the_student(teacher_dir, tmp_path) -> None:
    distiller = Distiller(small(teacher_dir, tmp_path / "s"))
    seen = []
    adaptation = distiller.student.adaptation
    adaptation.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    distiller.learn()
    distiller.close()
    student = distiller.student
    # the adaptation module's input: H (deployable obs, action) pairs and the current deployable obs
    assert set(seen) == {student.history * student.step_width + student.deployable_dim}
    assert student.deployable_dim == 4  # CartPole's observation; the 6 privileged numbers are not in it
    # the saved student runs on the env without a privileged key at all
    deployed = load_student(tmp_path / "s")
    from ppox.envs import make_numpy_vec_env

    env = make_numpy_vec_env("ppox/CartPoleRandomizedBlind-v0", 3, seed=0)
    obs, _ = env.reset(seed=0)
    actions = deployed.predict(obs)
    assert actions.shape == (3,) and set(actions.tolist()) <= {0, 1}
    assert deployed.predict(obs[0]).shape == ()


def test_adaptation_latent_error_falls(teacher_dir, tmp_path) -> None:
    distiller = Distiller(small(teacher_dir, tmp_path / "s", total_timesteps=4 * 32 * 8))
    distiller.learn()
    distiller.close()
    rows = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    first, last = rows[0]["latent_mse"], np.mean([r["latent_mse"] for r in rows[-3:]])
    # measured (seed 5): 2.72, 2.33, 1.96, 1.85, 1.89, 1.57, 1.87, 1.58: the last three average 0.62 of the first
    assert last < 0.8 * first, [r["latent_mse"] for r in rows]
    assert all(r["latent_mse_after_update"] < r["latent_mse"] for r in rows[:3])


def test_resume_continues_exactly(teacher_dir, tmp_path) -> None:
    straight = Distiller(small(teacher_dir, tmp_path / "a"))
    straight.learn()
    straight.close()
    first = Distiller(small(teacher_dir, tmp_path / "b", total_timesteps=4 * 32 * 2))
    first.learn()
    first.close()
    resumed = Distiller.resume(tmp_path / "b", total_timesteps=4 * 32 * 4)
    resumed.learn()
    resumed.close()
    for key, value in straight.student.adaptation.state_dict().items():
        torch.testing.assert_close(resumed.student.adaptation.state_dict()[key], value, rtol=0, atol=0)

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k not in ("sps", "wall_time")}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert rows("a") == rows("b")


def test_cli_errors_are_one_line(teacher_dir, tmp_path, capsys) -> None:
    assert main(["distill", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "x")]) == 2
    assert main(["distill", "demo", "--episodes", "0", "--run-dir", str(tmp_path / "d")]) == 2
    assert main(["distill", str(teacher_dir), "--history", "0"]) == 2
    plain = PPO(preset_config("CartPole-v1", total_timesteps=64, num_envs=2, num_steps=32, progress=False,
                              eval_episodes=0, run_dir=str(tmp_path / "plain"), tensorboard=False))
    plain.learn()
    plain.close()
    assert main(["distill", str(tmp_path / "plain"), "--run-dir", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 4
    assert "Traceback" not in "\n".join(err)


@pytest.mark.slow
def test_demo_student_reaches_teacher_and_beats_blind(tmp_path) -> None:
    """The demo at its default budgets (fixed seed 1): the student reaches >= 90% of the teacher's return
    and beats the blind baseline on 50 held-out randomised episodes. Thresholds from the measured run
    (docs/distillation.md): teacher 500.0, student 480.3, blind 95.5. Smaller budgets (teacher 60k, student
    20k steps) were measured to fail (teacher 424, student 217), so the test runs the full demo (about 1 min on
    this 2-core machine when quiet, ~5 min under heavy load)."""
    from ppox.rl.distill import demo

    summary = demo(tmp_path / "demo", seed=1, progress=False, echo=lambda line: None)
    assert summary["student_return"] >= 0.9 * summary["teacher_return"], summary
    assert summary["student_return"] > summary["blind_return"] + 100, summary
    assert np.isfinite(summary["wall_seconds"])


def test_sigkill_then_resume_is_exact(teacher_dir, tmp_path) -> None:
    """A distillation killed with SIGKILL at an arbitrary point resumes from its last complete checkpoint and
    ends as the uninterrupted run does (weights and metrics)."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    iterations = 30
    flags = ["--num-envs", "4", "--num-steps", "32", "--total-timesteps", str(4 * 32 * iterations),
             "--update-epochs", "2", "--num-minibatches", "2", "--seed", "5", "--eval-episodes", "0",
             "--no-tensorboard", "--no-progress", "--checkpoint-every", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    proc = subprocess.Popen([sys.executable, "-m", "ppox", "distill", str(teacher_dir), "--run-dir", str(run), *flags],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=repo)
    wanted, end = random.Random().randint(4, 25), time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None:
        path = run / "metrics.jsonl"
        if path.exists() and path.read_bytes().count(b"\n") >= wanted:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (run / "checkpoints").exists(), proc.stderr.read().decode()[-2000:]
    assert main(["distill", "--resume", str(run), "--no-progress"]) == 0
    straight = Distiller(small(teacher_dir, tmp_path / "ref", total_timesteps=4 * 32 * iterations,
                               checkpoint_every=3))
    straight.learn()
    straight.close()
    resumed = load_student(run)
    for key, value in straight.student.adaptation.state_dict().items():
        torch.testing.assert_close(resumed.student.adaptation.state_dict()[key], value, rtol=0, atol=0)

    def rows(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("sps", "wall_time")}
                for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert rows(run) == rows(tmp_path / "ref")
