"""ONNX / TorchScript export (ppox.rl.export): parity with PPO.predict, normalisation and clipping included."""

import numpy as np
import pytest
import torch

from ppox.cli import main
from ppox.errors import PPOXError
from ppox.rl.export import DeployedPolicy, export_policy
from ppox.rl.ppo import PPO

ort = pytest.importorskip("onnxruntime")


def trained(tiny, env_id, **kw):
    return PPO(tiny(env_id, total_timesteps=128, num_envs=2, num_steps=32, **kw)).learn()


def run_onnx(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_onnx_matches_predict_with_obs_normalisation_and_action_clipping(tiny, tmp_path):
    model = trained(tiny, "Pendulum-v1", norm_obs=True)
    rms = model.obs_norm.rms  # statistics far from (0, 1), so that a graph without them would disagree
    rms.mean = torch.tensor([0.5, -0.3, 2.0], dtype=torch.float64)
    rms.var = torch.tensor([0.04, 9.0, 4.0], dtype=torch.float64)
    with torch.no_grad():
        model.agent.actor_head.bias.fill_(1.5)  # means around +-2 and beyond: the [-2, 2] clip matters
        model.agent.actor_head.weight.mul_(300.0)
    path = tmp_path / "policy.onnx"
    report = export_policy(model, path)
    assert report.max_abs_diff <= 1e-5 and report.inputs == ["obs"]
    obs = np.random.default_rng(0).uniform(-3, 3, size=(64, 3)).astype(np.float32)
    (actions,) = run_onnx(path, {"obs": obs})
    expected = model.predict(obs)
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    assert (np.abs(expected) == 2.0).any() and (np.abs(expected) < 2.0).any()  # clipped and unclipped rows
    # without the normaliser the same weights answer differently: the graph holds the frozen statistics
    model.obs_norm = None
    assert np.abs(model.predict(obs) - actions).max() > 1e-2


def test_onnx_discrete_actions_are_integers_equal_to_predict(tiny, tmp_path):
    model = trained(tiny, "CartPole-v1")
    path = tmp_path / "policy.onnx"
    export_policy(model, path)
    obs = np.random.default_rng(1).normal(size=(100, 4)).astype(np.float32)
    (actions,) = run_onnx(path, {"obs": obs})
    assert actions.dtype == np.int64
    np.testing.assert_array_equal(actions, model.predict(obs))


def test_torchscript_export_matches_predict(tiny, tmp_path):
    model = trained(tiny, "Pendulum-v1", norm_obs=True)
    path = tmp_path / "policy.pt"
    report = export_policy(model, path, "torchscript")
    assert report.max_abs_diff <= 1e-5
    obs = np.random.default_rng(2).normal(size=(16, 3)).astype(np.float32)
    out = torch.jit.load(str(path))(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(out, model.predict(obs), atol=1e-5)


def test_parity_failure_writes_nothing(tiny, tmp_path, monkeypatch):
    model = trained(tiny, "Pendulum-v1")
    original = DeployedPolicy._env_action
    monkeypatch.setattr(DeployedPolicy, "_env_action", lambda self, a: original(self, a) + 0.1)
    with pytest.raises(PPOXError, match="differs from ppox's predict"):
        export_policy(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_export_reports_the_parity_check(tiny, tmp_path, capsys):
    model = trained(tiny, "CartPole-v1")
    out = tmp_path / "p.onnx"
    assert main(["export", str(model.run_dir), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "parity: onnxruntime vs ppox predict on 256 observations" in text and out.is_file()
    assert main(["export", str(tmp_path / "missing"), "-o", str(out)]) == 2


def test_recurrent_policy_exports_its_state_as_inputs_and_outputs(tiny, tmp_path):
    model = PPO(tiny("CartPole-v1", memory="gru", memory_size=8))
    path = tmp_path / "policy.onnx"
    report = export_policy(model, path)
    assert report.inputs == ["obs", "state", "episode_starts"] and report.outputs == ["actions", "state_out"]
    rng = np.random.default_rng(3)
    obs = rng.normal(size=(6, 4)).astype(np.float32)
    state = rng.normal(size=(6, model.agent.state_size)).astype(np.float32)
    for starts in (np.zeros(6, np.float32), np.ones(6, np.float32), np.array([1, 0, 1, 0, 0, 1], np.float32)):
        actions, new_state = run_onnx(path, {"obs": obs, "state": state, "episode_starts": starts})
        ref_actions, ref_state = model.agent.policy_action(
            torch.from_numpy(obs), True, state=torch.from_numpy(state), episode_starts=torch.from_numpy(starts) > 0.5)
        np.testing.assert_array_equal(actions, ref_actions.numpy())
        np.testing.assert_allclose(new_state, ref_state.numpy(), atol=1e-5)


def test_cnn_policy_exports_with_image_input(tiny, tmp_path):
    pytest.importorskip("minatar")
    model = PPO(tiny("MinAtar/Breakout-v1"))
    report = export_policy(model, tmp_path / "policy.onnx", batch=32)
    assert report.max_abs_diff == 0.0 and report.note is None
