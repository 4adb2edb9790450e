"""Learning tests: the shipped presets really solve their tasks with a fixed seed (slow, run in CI)."""

import pytest

from ppox import PPO


@pytest.mark.slow
def test_cartpole_preset_solves_cartpole(tmp_path):
    model = PPO("CartPole-v1", seed=1, run_dir=str(tmp_path / "cp"), progress=False, tensorboard=False)
    model.learn()
    assert model.summary["eval_episodes"] == 20
    assert model.summary["eval_return_mean"] >= 475.0, model.summary


@pytest.mark.slow
def test_pendulum_preset_learns_continuous_control(tmp_path):
    model = PPO("Pendulum-v1", seed=1, run_dir=str(tmp_path / "pd"), progress=False, tensorboard=False)
    model.learn()
    assert model.summary["eval_return_mean"] >= -300.0, model.summary
