"""Safe loading, environment faults, numerical faults and bad input (docs/reliability.md, 3-6)."""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppox import runs
from ppox.cli import main
from ppox.errors import ConfigError, EnvError, ModelFileError, TrainingHalted
from ppox.rl.config import PPOConfig
from ppox.rl.ppo import PPO

TINY = dict(num_steps=16, num_envs=2, total_timesteps=320, tensorboard=False, progress=False, eval_episodes=0,
            update_epochs=2, num_minibatches=2)
CLI_TINY = ["--num-steps", "16", "--num-envs", "2", "--update-epochs", "2", "--num-minibatches", "2",
            "--no-tensorboard", "--no-progress", "--eval-episodes", "0", "--total-timesteps", "64"]


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    err = "\n".join(line for line in lines if not line.startswith("[doctor]"))  # the live doctor's own lines
    assert err.startswith("error: "), err
    assert "\n" not in err, err
    assert "Traceback" not in err
    return err


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- 3. safe loading
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    PPO("CartPole-v1", run_dir=run, **{**TINY, "total_timesteps": 64}).learn()
    return run


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_payload_in_model_file_is_refused_and_never_run(trained, tmp_path, capsys, protocol):
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    marker = tmp_path / "pwned"
    (model_dir / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker), protocol=protocol))
    with pytest.raises(ModelFileError) as info:
        PPO.load(model_dir)
    assert "model.safetensors" in str(info.value)
    assert "pickle" in str(info.value) or "not a valid safetensors file" in str(info.value)
    assert main(["eval", str(model_dir), "--episodes", "1"]) == 2
    assert "model.safetensors" in one_line_error(capsys)
    assert not marker.exists()


def test_torch_save_file_is_refused(trained, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    torch.save({"w": torch.zeros(2)}, model_dir / "model.safetensors")
    with pytest.raises(ModelFileError, match="pickle payload"):
        PPO.load(model_dir)


def test_pickle_payload_in_checkpoint_tensors_is_refused(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "pwned"
    last = runs.latest_checkpoint(run)
    (last / "trainer.safetensors").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    assert main(["train", "--resume", str(run)]) == 2
    assert "trainer.safetensors" in one_line_error(capsys)
    assert not marker.exists()


def test_replaced_env_state_pickle_is_refused_by_checksum(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "pwned"
    (runs.latest_checkpoint(run) / "env_state.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["train", "--resume", str(run)]) == 2
    assert "SHA-256" in one_line_error(capsys)
    assert not marker.exists()


def test_load_never_reads_env_state(trained, tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    shutil.copytree(runs.latest_checkpoint(trained), model_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("PPO.load unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    PPO.load(model_dir).predict(np.zeros(4, dtype=np.float32))


# ---------------------------------------------------------------------------- 4. environment faults
class FaultyEnv(gym.Env):
    """Steps fine until `fail_at`; then faults once per existing token file (token None: every episode)."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, mode: str = "raise", fail_at: int = 20, token: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.mode, self.fail_at, self.token = mode, fail_at, token
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-0.1, 0.1, 2).astype(np.float32), {}

    def _take_token(self) -> bool:
        if self.token is None:
            return True
        try:
            os.unlink(self.token)
        except FileNotFoundError:
            return False
        return True

    def step(self, action):
        self.t += 1
        obs = self.np_random.uniform(-0.1, 0.1, 2).astype(np.float32)
        reward = 1.0
        if self.t == self.fail_at and self._take_token():
            if self.mode == "raise":
                raise RuntimeError(f"simulator blew up at step {self.t}")
            if self.mode == "exit":
                os._exit(3)
            if self.mode == "nan_obs":
                obs = np.full(2, np.nan, dtype=np.float32)
            if self.mode == "inf_reward":
                reward = float("inf")
        return obs, reward, False, self.t >= 30, {}


def _faulty(tmp_path: Path, mode: str, once: bool = True, fail_at: int = 20):
    token = None
    if once:
        token = tmp_path / f"token-{mode}"
        token.write_text("")
    return functools.partial(FaultyEnv, mode=mode, fail_at=fail_at, token=None if token is None else str(token))


@pytest.mark.parametrize(("mode", "vectorization"), [
    ("raise", "async"), ("exit", "async"), ("nan_obs", "sync"), ("inf_reward", "async"), ("raise", "sync"),
])
def test_env_fault_restarts_envs_and_counts_it(tmp_path, mode, vectorization):
    run = tmp_path / "run"
    cfg = PPOConfig(env_id=None, run_dir=str(run), vectorization=vectorization, **TINY)
    model = PPO(cfg, env_fn=_faulty(tmp_path, mode)).learn()
    model.close()
    rows = metrics(run)
    assert [r["iteration"] for r in rows] == list(range(1, 11))
    assert rows[-1]["env_restarts"] == 1 and rows[0]["env_restarts"] == 0
    assert model.global_step == 320


@pytest.mark.parametrize(("mode", "vectorization", "words"), [
    ("raise", "async", "RuntimeError: simulator blew up at step 10"),
    ("exit", "async", "worker process died (exit code 3)"),
    ("nan_obs", "sync", "non-finite observation"),
])
def test_env_faults_past_the_limit_checkpoint_and_stop(tmp_path, mode, vectorization, words):
    run = tmp_path / "run"
    cfg = PPOConfig(env_id=None, run_dir=str(run), vectorization=vectorization, max_env_restarts=2,
                    **{**TINY, "total_timesteps": 640})
    model = PPO(cfg, env_fn=_faulty(tmp_path, mode, once=False, fail_at=10))
    with pytest.raises(TrainingHalted) as info:
        model.learn()
    model.close()
    message = str(info.value)
    assert "environment " in message and words in message, message
    assert "--max-env-restarts 2" in message and "checkpoint of iteration" in message
    assert "\n" not in message
    state = json.loads((runs.latest_checkpoint(run) / "state.json").read_text())
    assert state["env_restarts"] == 2
    assert state["iteration"] == len(metrics(run))  # the last complete iteration
    resumed = PPO.resume(run, env_fn=_faulty(tmp_path, mode, once=True, fail_at=10), max_env_restarts=5)
    assert resumed.iteration == state["iteration"]
    resumed.close()


def test_env_fault_without_restarts_configured_is_reported_by_cli(tmp_path, capsys, monkeypatch):
    import ppox.rl.envs as envs_module

    original = envs_module.make_single_env

    def make(env_id, **kwargs):
        return gym.wrappers.TransformObservation(original(env_id, **kwargs), lambda o: o * np.nan, None)

    monkeypatch.setattr(envs_module, "make_single_env", make)
    run = tmp_path / "run"
    # the fault is in gymnasium's env (the CartPole-v1 preset would train on ppox's numpy twin)
    assert main(["train", "CartPole-v1", *CLI_TINY, "--max-env-restarts", "0", "--env-backend", "gymnasium",
                 "--run-dir", str(run)]) == 2
    err = one_line_error(capsys)
    assert "environment 0" in err and "non-finite observation" in err and "checkpoint" in err


# ---------------------------------------------------------------------------- 5. numerical faults
def test_huge_learning_rate_stops_with_checkpoint_and_causes(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "CartPole-v1", *CLI_TINY, "--total-timesteps", "640", "--learning-rate", "1e30",
            "--no-anneal-lr", "--run-dir", str(run)]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "non-finite" in err and "learning rate too high" in err and "checkpoint of iteration" in err
    rows = metrics(run)
    assert rows[-1]["skipped_updates"] > 0
    last = runs.latest_checkpoint(run)
    assert int(last.name.removeprefix("ckpt_")) == rows[-1]["iteration"]
    PPO.load(last)


def test_nonfinite_forward_skips_updates_and_keeps_weights(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model = PPO("CartPole-v1", run_dir=run, **TINY)
    before = {k: v.clone() for k, v in model.agent.state_dict().items()}
    original = model._forward

    def nan_forward(mb):
        out = original(mb)
        out.logprobs = out.logprobs * float("nan")
        return out

    monkeypatch.setattr(model, "_forward", nan_forward)
    with pytest.raises(TrainingHalted, match="likely causes"):
        model.learn()
    after = model.agent.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every update was skipped
    state = json.loads((runs.latest_checkpoint(run) / "state.json").read_text())
    assert state["skipped_updates"] >= 10 and state["iteration"] == 3  # 2 epochs x 2 minibatches per iteration


# ---------------------------------------------------------------------------- 6. bad input
@pytest.mark.parametrize(("args", "words"), [
    (["--num-envs", "0"], "num_envs must be > 0"),
    (["--num-minibatches", "3"], "not divisible by num_minibatches"),
    (["--gamma", "1.5"], "gamma must be in (0, 1]"),
    (["--learning-rate", "-1"], "learning_rate must be > 0"),
    (["--clip-coef", "None"], "no trust region"),
    (["--max-env-restarts", "-1"], "max_env_restarts must be >= 0"),
    (["--keep-checkpoints", "0"], "keep_checkpoints must be >= 1"),
    (["--device", "tpu9"], "device"),
])
def test_invalid_config_is_one_line_exit_2(tmp_path, capsys, args, words):
    run = tmp_path / "run"
    assert main(["train", "CartPole-v1", *CLI_TINY, *args, "--run-dir", str(run)]) == 2
    assert words in one_line_error(capsys)
    assert not run.exists()


def test_unknown_env_id_suggests_close_matches(tmp_path, capsys):
    assert main(["train", "CartPol-v1", *CLI_TINY, "--run-dir", str(tmp_path / "r")]) == 2
    err = one_line_error(capsys)
    assert "unknown environment id 'CartPol-v1'" in err and "CartPole-v1" in err


def test_unsupported_spaces_are_reported():
    class BitsObs(FaultyEnv):
        def __init__(self):
            super().__init__()
            self.observation_space = gym.spaces.MultiBinary(3)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(3, dtype=np.int8), {}

        def step(self, action):
            return np.zeros(3, dtype=np.int8), 0.0, False, False, {}

    with pytest.raises(EnvError, match=r"observation space MultiBinary\(3\) is not supported"):
        PPO(PPOConfig(env_id=None, **TINY), env_fn=BitsObs)

    class ImageActions(FaultyEnv):
        def __init__(self):
            super().__init__()
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32)

    with pytest.raises(EnvError, match="action space"):
        PPO(PPOConfig(env_id=None, **TINY), env_fn=ImageActions)


def test_existing_run_dir_is_refused_and_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("precious\n")
    assert main(["train", "CartPole-v1", *CLI_TINY, "--run-dir", str(run)]) == 2
    err = one_line_error(capsys)
    assert "already exists" in err and "--overwrite" in err and "--resume" in err
    assert (run / "metrics.jsonl").read_text() == "precious\n"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]
    assert main(["train", "CartPole-v1", *CLI_TINY, "--run-dir", str(run), "--overwrite"]) == 0
    assert runs.latest_checkpoint(run).name == "ckpt_2"


def _model_copy(trained: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    return model_dir


@pytest.mark.parametrize(("damage", "words"), [
    ("truncate_tensors", "not a valid safetensors file"),
    ("garbage_json", "not valid JSON"),
    ("newer_format", "newer ppox"),
    ("no_format", "no format_version"),
    ("wrong_env", "was trained on"),
    ("missing", "does not exist"),
    ("wrong_shapes", "does not match the network"),
])
def test_bad_model_files_are_one_line_exit_2(trained, tmp_path, capsys, damage, words):
    model_dir = _model_copy(trained, tmp_path)
    meta_path = model_dir / "model.json"
    meta = json.loads(meta_path.read_text())
    if damage == "truncate_tensors":
        data = (model_dir / "model.safetensors").read_bytes()
        (model_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_json":
        meta_path.write_text("{not json")
    elif damage == "newer_format":
        meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    elif damage == "no_format":
        meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "format_version"}))
    elif damage == "wrong_env":
        meta["config"]["env_id"] = "Acrobot-v1"
        meta_path.write_text(json.dumps(meta))
    elif damage == "missing":
        shutil.rmtree(model_dir)
    elif damage == "wrong_shapes":
        meta["config"]["hidden_sizes"] = [8]
        meta_path.write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in model_dir.glob("*") if p.is_file()} if model_dir.exists() else {}
    assert main(["eval", str(model_dir), "--episodes", "1"]) == 2
    assert words in one_line_error(capsys)
    assert before == ({p: p.read_bytes() for p in model_dir.glob("*") if p.is_file()} if model_dir.exists() else {})


def test_model_for_another_env_is_refused_in_python(trained):
    with pytest.raises(ModelFileError, match="was trained on CartPole-v1"):
        PPO.load(trained, env_fn=lambda: gym.make("Acrobot-v1"))


def test_newer_checkpoint_format_is_refused(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    state_path = runs.latest_checkpoint(run) / "state.json"
    state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "format_version": 7}))
    assert main(["train", "--resume", str(run)]) == 2
    assert "newer ppox" in one_line_error(capsys)


def test_invalid_config_in_python_api():
    with pytest.raises(ConfigError, match="num_steps must be > 0"):
        PPO("CartPole-v1", num_steps=0)
    with pytest.raises(ConfigError, match="unknown config field"):
        PPO("CartPole-v1", no_such_field=1)
    with pytest.raises(EnvError, match="unknown environment id"):
        PPO("NoSuchEnv-v0", **TINY)


def test_custom_env_failing_the_checker_is_reported_in_plain_words():
    class BadReset(FaultyEnv):
        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(3, dtype=np.float32), {}  # not in the observation space

    with pytest.raises(EnvError) as info:
        PPO(PPOConfig(env_id=None, **TINY), env_fn=BadReset)
    assert "env checker" in str(info.value) and "observation" in str(info.value).lower()

    def broken_factory():
        raise OSError("simulator licence not found")

    with pytest.raises(EnvError, match="the env factory raised OSError: simulator licence not found"):
        PPO(PPOConfig(env_id=None, **TINY), env_fn=broken_factory)


def test_async_envs_leave_the_trainers_ctrl_c_handler_alone(tiny):
    import signal

    from ppox import PPO

    before = signal.getsignal(signal.SIGINT)
    model = PPO(tiny(vectorization="async", num_envs=2))
    try:
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        model.close()
