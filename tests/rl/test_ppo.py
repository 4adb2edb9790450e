"""The trainer end to end on tiny budgets: files written, save/load, determinism, CLI, Ctrl-C."""

import json

import numpy as np
import pytest
import torch

from ppox import PPO
from ppox.cli import main
from ppox.errors import ModelFileError
from ppox.rl.ppo import TIMING_KEYS

METRIC_KEYS = {
    "global_step", "episodic_return_mean", "episodic_return_min", "episodic_return_max", "episodic_length_mean",
    "policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac", "explained_variance",
    "kl_coef", "learning_rate", "sps",
}


def read_metrics(run_dir):
    return [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]


def test_run_directory_contents(tiny, tmp_path):
    model = PPO(tiny(eval_episodes=2, tensorboard=True)).learn()
    run = model.run_dir
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "model.json", "summary.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    records = read_metrics(run)
    assert len(records) == 4 and [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert set(records[0]) >= METRIC_KEYS
    summary = json.loads((run / "summary.json").read_text())
    for key in ("env_id", "seed", "total_timesteps", "wall_seconds", "sps", "eval_return_mean",
                "eval_return_std", "eval_episodes"):
        assert key in summary
    assert summary["total_timesteps"] == 256 and summary["eval_episodes"] == 2
    assert summary["sps"] == pytest.approx(256 / summary["wall_seconds"], rel=0.01)
    assert json.loads((run / "config.json").read_text())["env_id"] == "CartPole-v1"


def test_tensorboard_events_are_readable(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = PPO(tiny(tensorboard=True)).learn()
    acc = EventAccumulator(str(model.run_dir / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "losses/approx_kl" in tags and "charts/learning_rate" in tags
    assert len(acc.Scalars("losses/policy_loss")) == 4


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_save_load_predict_identical_actions(tiny, tmp_path, env_id):
    model = PPO(tiny(env_id=env_id, norm_obs=True)).learn()
    loaded = PPO.load(model.run_dir)
    rng = np.random.default_rng(0)
    space = model.observation_space
    obs = rng.uniform(-1.0, 1.0, size=(16, *space.shape)).astype(np.float32)
    assert np.array_equal(model.predict(obs), loaded.predict(obs))
    assert np.array_equal(model.predict(obs[0]), loaded.predict(obs[0]))
    assert torch.equal(model.obs_norm.rms.mean, loaded.obs_norm.rms.mean)
    # statistics are frozen at evaluation
    before = loaded.obs_norm.rms.count.clone()
    loaded.evaluate(episodes=2)
    assert torch.equal(loaded.obs_norm.rms.count, before)


def test_same_seed_gives_identical_metrics(tiny, tmp_path):
    runs = []
    for name in ("a", "b"):
        model = PPO(tiny(run_dir=str(tmp_path / name), total_timesteps=512)).learn()
        runs.append([{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(model.run_dir)])
    assert runs[0] == runs[1]
    other = PPO(tiny(run_dir=str(tmp_path / "c"), total_timesteps=512, seed=2)).learn()
    assert [r["policy_loss"] for r in read_metrics(other.run_dir)] != [r["policy_loss"] for r in runs[0]]


def test_ctrl_c_saves_model_and_summary(tiny, monkeypatch):
    model = PPO(tiny(total_timesteps=2048))
    original = model._collect
    calls = {"n": 0}

    def interrupted_collect(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(model, "_collect", interrupted_collect)
    model.learn()
    assert model.interrupted
    summary = json.loads((model.run_dir / "summary.json").read_text())
    assert summary["interrupted"] and summary["total_timesteps"] == 2 * 64
    assert PPO.load(model.run_dir).global_step == 128


def test_load_refuses_a_mismatched_env(tiny):
    model = PPO(tiny()).learn()
    meta = json.loads((model.run_dir / "model.json").read_text())
    meta["config"]["env_id"] = "Acrobot-v1"
    (model.run_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="trained on"):  # load needs no env: the mismatch shows at evaluate
        PPO.load(model.run_dir).evaluate(episodes=1)


def test_cli_train_then_eval(tmp_path, capsys):
    run = tmp_path / "cli"
    rc = main(["train", "CartPole-v1", "--total-timesteps", "512", "--num-envs", "2", "--num-steps", "64",
               "--run-dir", str(run), "--eval-episodes", "2", "--no-tensorboard", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "eval: mean return" in out
    assert main(["eval", str(run), "--episodes", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["episodes"] == 3 and len(result["returns"]) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "CartPol-v1"], "did you mean CartPole-v1"),
        (["train", "CartPole-v1", "--clip-coef", "0"], "clip_coef must be in"),
        (["train", "CartPole-v1", "--num-minibatches", "3"], "not divisible"),
        (["train", "CartPole-v1", "--preset", "nope"], "unknown preset"),
        (["eval", "/nonexistent/run"], "does not exist"),
        (["frobnicate"], "unknown command"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_existing_run_dir_is_refused(tiny, capsys):
    PPO(tiny()).learn()
    model = PPO(tiny())
    with pytest.raises(Exception, match="already exists"):
        model.learn()


def test_live_doctor_warns_once_during_training(tiny, capsys):
    # a huge learning rate with many epochs blows the trust region: KL per update far above 0.1
    PPO(tiny(learning_rate=0.05, update_epochs=10, total_timesteps=64 * 15, anneal_lr=False)).learn()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[doctor]")]
    assert any("kl_high" in line for line in lines), err
    codes = [line.split(": ")[2] for line in lines]
    assert len(codes) == len(set(codes))  # one line per kind of problem, not a flood
