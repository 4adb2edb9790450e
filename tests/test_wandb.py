"""W&B tracking (ppox.tracking) in wandb's offline mode: the run directory holds the scalars, config, summary."""

import json
import subprocess
import sys
import time

import pytest

from ppox.cli import main

pytest.importorskip("wandb")


@pytest.fixture
def tiny(tmp_path):
    from ppox.rl.config import PPOConfig

    def make(**kw):
        values = dict(env_id="CartPole-v1", total_timesteps=256, num_envs=2, num_steps=32, num_minibatches=2,
                      update_epochs=1, eval_episodes=0, tensorboard=False, progress=False,
                      run_dir=str(tmp_path / "run"))
        return PPOConfig(**{**values, **kw})

    return make


def offline_runs(wandb_dir):
    return sorted((wandb_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def records(path, expected: bytes, timeout: float = 30.0) -> bytes:
    """The run's record log once it holds `expected` (wandb's service process writes it; on a busy machine that
    can lag the client's return from finish()), or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        data = path.read_bytes()
        if expected in data or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield wandb_dir
    import wandb

    wandb.teardown()  # wandb caches its settings (WANDB_DIR) per process: the next test starts afresh


def test_offline_run_holds_the_tensorboard_scalars_config_and_summary(tiny, offline):
    from ppox.rl.ppo import PPO

    model = PPO(tiny(total_timesteps=128, num_envs=2, num_steps=16, eval_episodes=2, wandb=True,
                     wandb_tags=("smoke", "ci"), wandb_run_name="tiny-run")).learn()
    (path,) = offline_runs(offline)
    data = records(path, b"final_train_return_mean")  # protobuf records, keys and JSON values stored as text
    run_id = json.loads((model.run_dir / "wandb.json").read_text())["id"]
    assert run_id in path.name
    # the same tags as TensorBoard, in every iteration's history record (4 iterations; the run summary repeats them)
    for tag in (b"losses/policy_loss", b"losses/value_loss", b"charts/learning_rate", b"charts/sps"):
        assert data.count(tag) >= 4, tag
    assert b"tiny-run" in data and b"smoke" in data  # name and tags
    assert b"num_minibatches" in data and b"clip_coef" in data  # the config
    assert b"eval_return_mean" in data and b"final_train_return_mean" in data  # the summary


@pytest.mark.slow
def test_resumed_run_and_eval_videos_log_to_the_same_wandb_run(tiny, offline, tmp_path):
    pytest.importorskip("moviepy")
    from ppox.rl.ppo import PPO

    model = PPO(tiny(total_timesteps=64, num_envs=2, num_steps=16, wandb=True)).learn()
    run_id = json.loads((model.run_dir / "wandb.json").read_text())["id"]
    assert main(["eval", str(model.run_dir), "--episodes", "1", "--video", str(tmp_path / "videos")]) == 0
    runs = offline_runs(offline)
    assert all(run_id in p.name for p in runs) and len(runs) == 2  # the eval appended to the same run id
    media = list(runs[-1].parent.glob("files/media/videos/**/*.mp4"))
    assert media


def test_wandb_is_not_imported_unless_asked_for(tiny):
    config = tiny(total_timesteps=64).to_dict()
    code = ("import sys\nfrom ppox.rl.ppo import PPO\nfrom ppox.rl.config import PPOConfig\n"
            f"PPO(PPOConfig.from_dict({config!r})).learn()\n"
            "assert not {'wandb', 'optuna', 'onnx', 'onnxruntime'} & set(sys.modules), sys.modules.keys()\n")
    subprocess.run([sys.executable, "-c", code], check=True)
