"""Checkpoints and exact resume (docs/reliability.md, guarantees 1 and 2)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ppox import runs
from ppox.cli import main
from ppox.rl import checkpoint as ckpt
from ppox.rl.envs import VecEnv
from ppox.rl.ppo import PPO, TIMING_KEYS

REPO = Path(__file__).resolve().parents[2]
TINY = dict(num_steps=16, num_envs=2, total_timesteps=640, tensorboard=False, progress=False, eval_episodes=0,
            update_epochs=2, num_minibatches=2)
CLI_TINY = ["--num-steps", "16", "--num-envs", "2", "--update-epochs", "2", "--num-minibatches", "2",
            "--no-tensorboard", "--no-progress", "--eval-episodes", "0"]


class Killed(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing in ppox handles it."""


def metrics(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "model.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    ma, mb = metrics(a), metrics(b)
    assert [m["iteration"] for m in mb] == list(range(1, len(ma) + 1))
    assert ma == mb


def kill_at_env_step(monkeypatch, n: int) -> None:
    calls = {"n": 0}
    original = VecEnv.step

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == n:
            monkeypatch.setattr(VecEnv, "step", original)
            raise Killed
        return original(self, actions)

    monkeypatch.setattr(VecEnv, "step", step)


# ---------------------------------------------------------------------------- contents and layout
def test_checkpoint_holds_the_whole_trainer_state(tmp_path):
    run = tmp_path / "run"
    PPO("Pendulum-v1", run_dir=run, norm_obs=True, norm_reward=True, kl_penalty="loss", checkpoint_every=2,
        keep_checkpoints=3, **{**TINY, "total_timesteps": 256}).learn()
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "ckpt_8"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["ckpt_4", "ckpt_6", "ckpt_8"]  # last K
    last = root / "ckpt_8"
    assert {p.name for p in last.iterdir()} == {"model.safetensors", "model.json", "trainer.safetensors",
                                                 "state.json", "env_state.pkl"}
    state = json.loads((last / "state.json").read_text())
    assert state["iteration"] == 8 and state["global_step"] == 256
    assert state["env_state"]["captured"] is True and len(state["env_state"]["sha256"]) == 64
    assert state["optimizer"]["param_groups"][0]["lr"] > 0
    assert "coef" in state["kl_controller"]
    assert len(state["numpy_rng"]["key"]) == 624 and len(state["python_rng"][1]) == 625
    tensors = load_file(str(last / "trainer.safetensors"))
    for key in ("rng.torch", "rng.shuffle", "next_obs", "episode.return", "episode.length", "obs_rms.mean",
                "reward_rms.var", "reward_returns"):
        assert key in tensors, key
    assert any(k.startswith("optim.") and k.endswith(".exp_avg_sq") for k in tensors)
    assert tensors["episode.return"].dtype == torch.float64
    # a checkpoint is also a model directory
    model = PPO.load(last)
    assert model.global_step == 256


def test_rng_states_are_restored(tmp_path):
    run = tmp_path / "run"
    PPO("CartPole-v1", run_dir=run, **{**TINY, "total_timesteps": 64}).learn()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    PPO.resume(run)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_latest_pointer_is_written_last_and_a_torn_checkpoint_is_ignored(tmp_path):
    run = tmp_path / "run"
    PPO("CartPole-v1", run_dir=run, checkpoint_every=1, **{**TINY, "total_timesteps": 96}).learn()
    root = run / "checkpoints"
    # a writer killed mid-way leaves a temporary directory and maybe a renamed directory `latest` misses
    (root / ".ckpt_4.tmp-99999").mkdir()
    (root / ".ckpt_4.tmp-99999" / "model.safetensors").write_bytes(b"torn")
    torn = root / "ckpt_5"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")  # no state.json: incomplete
    assert runs.latest_checkpoint(run).name == "ckpt_3"
    (root / "latest").write_text("ckpt_77\n")  # pointing at nothing: fall back to the newest complete one
    assert runs.latest_checkpoint(run).name == "ckpt_3"
    (root / "latest").unlink()
    assert runs.latest_checkpoint(run).name == "ckpt_3"


def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = ckpt.save_tensors

    def dying_save(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # die inside the 3rd checkpoint, after its model files, before trainer state
            raise Killed
        return original(path, tensors, metadata)

    monkeypatch.setattr(ckpt, "save_tensors", dying_save)
    with pytest.raises(Killed):
        PPO("CartPole-v1", run_dir=run, checkpoint_every=1, **{**TINY, "total_timesteps": 320}).learn()
    monkeypatch.setattr(ckpt, "save_tensors", original)
    assert (run / "checkpoints" / "latest").read_text().strip() == "ckpt_2"
    resumed = PPO.resume(run)
    assert resumed.iteration == 2 and resumed.global_step == 64


# ---------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("kill_step", [5, 16 * 7 + 3, 16 * 9])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, monkeypatch, kill_step):
    ref, run = tmp_path / "ref", tmp_path / "run"
    PPO("CartPole-v1", run_dir=ref, checkpoint_every=3, **TINY).learn()
    kill_at_env_step(monkeypatch, kill_step)
    with pytest.raises(Killed):
        PPO("CartPole-v1", run_dir=run, checkpoint_every=3, **TINY).learn()
    assert (run / "checkpoints").exists() == (kill_step > 16 * 3)  # the first checkpoint ends iteration 3
    if not (run / "checkpoints").exists():  # killed before the first checkpoint: start again
        (run / "metrics.jsonl").unlink(missing_ok=True)
        PPO("CartPole-v1", run_dir=run, checkpoint_every=3, overwrite=True, **TINY).learn()
    else:
        PPO.resume(run).learn()
    assert_same_run(ref, run)


def test_resume_with_normalisation_and_adaptive_kl_is_exact(tmp_path, monkeypatch):
    kw = dict(TINY, total_timesteps=320, norm_obs=True, norm_reward=True, kl_penalty="loss", checkpoint_every=2)
    ref, run = tmp_path / "ref", tmp_path / "run"
    PPO("Pendulum-v1", run_dir=ref, **kw).learn()
    kill_at_env_step(monkeypatch, 16 * 5 + 7)
    with pytest.raises(Killed):
        PPO("Pendulum-v1", run_dir=run, **kw).learn()
    PPO.resume(run).learn()
    assert_same_run(ref, run)


def test_resume_through_the_cli_truncates_metrics(tmp_path, monkeypatch, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = ["train", "CartPole-v1", *CLI_TINY, "--total-timesteps", "640", "--checkpoint-every", "4"]
    assert main([*args, "--run-dir", str(ref)]) == 0
    kill_at_env_step(monkeypatch, 16 * 10 + 1)  # iterations 1-10 logged, checkpoint at 8
    with pytest.raises(Killed):
        main([*args, "--run-dir", str(run)])
    assert len(metrics(run)) == 10
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 11, "glo')  # a line torn by the kill
    assert main(["train", "--resume", str(run)]) == 0
    assert "resuming" in capsys.readouterr().err
    assert_same_run(ref, run)


def test_resume_of_a_missing_or_empty_run_dir_is_one_line(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint" in err and "\n" not in err
    assert main(["train", "--resume", str(tmp_path), "--learning-rate", "1"]) == 2
    assert "unexpected argument" in capsys.readouterr().err


def _spawn_training(run: Path, total: int, extra: list[str] = ()) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "ppox", "train", "CartPole-v1", *CLI_TINY, "--total-timesteps", str(total),
           "--run-dir", str(run), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)


def _wait_for_lines(run: Path, proc: subprocess.Popen, n: int, timeout: float = 60.0) -> None:
    path = run / "metrics.jsonl"
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.005)


def test_sigkill_at_an_arbitrary_point_then_resume_is_exact(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    total = 1600  # 50 iterations
    proc = _spawn_training(run, total, ["--checkpoint-every", "3"])
    _wait_for_lines(run, proc, random.Random().randint(4, 40))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    PPO("CartPole-v1", run_dir=ref, checkpoint_every=3, **{**TINY, "total_timesteps": total}).learn()
    # killed after >= 4 metrics lines (or after it finished): the checkpoint of iteration 3 is complete
    assert (run / "checkpoints").exists(), proc.stderr.read().decode()[-2000:]
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(ref, run)


def test_sigterm_finishes_the_iteration_checkpoints_and_resumes_exactly(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    total = 3200
    proc = _spawn_training(run, total)  # checkpoint_every 0: only at the end and on a signal
    _wait_for_lines(run, proc, 5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    latest = runs.latest_checkpoint(run)
    assert int(latest.name.removeprefix("ckpt_")) == len(metrics(run))  # the stopped iteration is complete
    PPO("CartPole-v1", run_dir=ref, **{**TINY, "total_timesteps": total}).learn()
    PPO.resume(run).learn()
    assert_same_run(ref, run)


def test_sigint_in_process_checkpoints_at_the_iteration_end(tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = VecEnv.step

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == 16 * 3 + 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, actions)

    monkeypatch.setattr(VecEnv, "step", step)
    # the handler the process started with (SIG_IGN when launched in the background by a shell)
    before = signal.getsignal(signal.SIGINT)
    model = PPO("CartPole-v1", run_dir=run, **TINY).learn()
    assert model.interrupted and model.iteration == 4
    assert runs.latest_checkpoint(run).name == "ckpt_4"
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


# ---------------------------------------------------------------------------- env state
def test_mujoco_env_state_is_captured(tmp_path, monkeypatch):
    pytest.importorskip("mujoco")
    ref, run = tmp_path / "ref", tmp_path / "run"
    kw = dict(TINY, num_envs=1, num_steps=32, total_timesteps=192, checkpoint_every=2, norm_obs=True)
    PPO("Hopper-v5", run_dir=ref, **kw).learn()
    kill_at_env_step(monkeypatch, 32 * 5 + 9)
    with pytest.raises(Killed):
        PPO("Hopper-v5", run_dir=run, **kw).learn()
    state = json.loads((runs.latest_checkpoint(run) / "state.json").read_text())
    assert state["iteration"] == 4 and state["env_state"]["captured"]  # mid-episode MuJoCo state
    PPO.resume(run).learn()
    assert_same_run(ref, run)


def test_async_envs_cannot_be_captured_and_resume_says_so_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    PPO("CartPole-v1", run_dir=run, vectorization="async", **{**TINY, "total_timesteps": 64}).learn()
    state = json.loads((runs.latest_checkpoint(run) / "state.json").read_text())
    assert state["env_state"]["captured"] is False and "async" in state["env_state"]["reason"]
    capsys.readouterr()
    model = PPO.resume(run, total_timesteps=128)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "async" in warnings[0] and "new episodes" in warnings[0]
    model.learn()
    assert model.global_step == 128
    assert [m["iteration"] for m in metrics(run)] == [1, 2, 3, 4]


@pytest.mark.parametrize(("env_backend", "env_id"), [("torch", "CartPole-v1"), ("numpy", "Acrobot-v1")])
def test_batched_backend_env_state_is_captured(tmp_path, monkeypatch, env_backend, env_id):
    ref, run = tmp_path / "ref", tmp_path / "run"
    kw = dict(TINY, env_backend=env_backend, num_envs=4, total_timesteps=640, checkpoint_every=2)
    PPO(env_id, run_dir=ref, **kw).learn()
    kill_at_env_step(monkeypatch, 16 * 5 + 3)
    with pytest.raises(Killed):
        PPO(env_id, run_dir=run, **kw).learn()
    assert json.loads((runs.latest_checkpoint(run) / "state.json").read_text())["env_state"]["captured"]
    PPO.resume(run).learn()
    assert_same_run(ref, run)


def test_resume_arguments_are_parsed_alike_for_both_trainers():
    from ppox.cli.resume import parse_resume_args
    from ppox.errors import PPOXError

    opts, flags = ("--resume", "--total-timesteps"), ("--no-progress",)
    assert parse_resume_args(["--resume", "r", "--total_timesteps=7", "--no-progress"], opts, flags) == {
        "--resume": "r", "--total-timesteps": "7", "--no-progress": True}
    for bad in (["--total-timesteps", "7"], ["--resume"], ["--resume", "r", "--lr", "1"]):
        with pytest.raises(PPOXError, match="usage: ppox train --resume"):
            parse_resume_args(bad, opts, flags)
