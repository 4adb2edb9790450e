"""Image observations: layout, uint8 storage, the CNN and Dict encoders, model files, resume, `module:EnvId`,
MinAtar (docs/pixels.md)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from safetensors.torch import load_file, save_file

from ppox.errors import ConfigError, EnvError, ModelFileError
from ppox.rl.buffer import Rollout
from ppox.rl.envs import NonFiniteEnvValue, VecEnv, check_env_id
from ppox.rl.export import export_policy
from ppox.rl.policy import CNNEncoder, DictEncoder, ImageMLPEncoder, MLPEncoder, Policy, encoder_name
from ppox.rl.ppo import PPO
from ppox.rl.rollout import TorchCollector
from ppox.rl.spaces import (
    action_spec,
    encode_flat,
    encode_obs,
    image_layout,
    image_shape,
    obs_floats,
    obs_storage,
    packed_dict,
    unpack_dict,
)

from .pixel_envs import PixelPick
from .test_checkpoint import Killed, assert_same_run, kill_at_env_step

PICK = "tests.rl.pixel_envs:PixelPick-v0"
PICK_DICT = "tests.rl.pixel_envs:PixelPickDict-v0"
TINY = dict(num_steps=16, num_envs=2, total_timesteps=128, tensorboard=False, progress=False, eval_episodes=0,
            update_epochs=2, num_minibatches=2, live_doctor=False)


def box(shape, dtype=np.uint8, high=255):
    return spaces.Box(0, high, shape, dtype)


# ---------------------------------------------------------------------------- spaces
@pytest.mark.parametrize("shape, dtype, layout", [
    ((4, 84, 84), np.uint8, "CHW"), ((84, 84, 3), np.uint8, "HWC"), ((10, 10, 4), np.bool_, "HWC"),
    ((10, 10, 10), np.bool_, "HWC"), ((4, 84, 84), np.float32, None), ((84, 84), np.uint8, None),
])
def test_image_layout(shape, dtype, layout):
    assert image_layout(box(shape, dtype, 1 if dtype is np.bool_ else 255)) == layout


def test_hwc_images_are_stored_uint8_chw_not_flattened():
    space = box((5, 6, 3))  # HWC: 5 rows, 6 columns, 3 channels
    obs = np.arange(2 * 5 * 6 * 3, dtype=np.uint8).reshape(2, 5, 6, 3)  # a batch of 2
    t = encode_obs(obs, space)
    assert t.dtype == torch.uint8 and t.shape == (2, 3, 5, 6)
    assert t[1, 2, 4, 1] == obs[1, 4, 1, 2]  # (env, channel, row, column) <- (env, row, column, channel)
    assert obs_storage(space) == ((3, 5, 6), torch.uint8)
    assert torch.equal(encode_obs(torch.from_numpy(obs), space), t)  # tensors alike


def test_flat_spaces_keep_their_float_vectors():
    assert obs_storage(spaces.Box(-1, 1, (3,))) == ((3,), torch.float32)
    assert obs_storage(spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Discrete(3)})) == ((5,), torch.float32)


def test_dict_images_are_stored_uint8_and_vector_keys_float32():
    # keys in order: image (HWC 5x6x3 uint8), n (Discrete 3: one-hot), v (Box 2 float32)
    d = spaces.Dict({"image": box((5, 6, 3)), "v": spaces.Box(-1, 1, (2,)), "n": spaces.Discrete(3)})
    layout = packed_dict(d)
    assert layout.vector_keys == ("n", "v") and layout.vector_width == 5 and layout.images == (("image", (3, 5, 6)),)
    assert obs_storage(d) == ((4 * 5 + 90,), torch.uint8)  # 110 bytes a row, was 95 float32 values (380 bytes)
    rng = np.random.default_rng(0)
    raw = {"image": rng.integers(0, 256, (2, 5, 6, 3)).astype(np.uint8), "n": np.array([2, 0]),
           "v": np.array([[0.25, -1.0], [np.pi, 1e-30]], np.float32)}
    packed = encode_obs(raw, d)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 110)
    vector, (image,) = unpack_dict(packed[:, :], layout)
    assert vector.dtype == torch.float32 and image.dtype == torch.uint8
    torch.testing.assert_close(vector, torch.tensor([[0, 0, 1, 0.25, -1.0], [1, 0, 0, np.float32(np.pi), 1e-30]]),
                               rtol=0, atol=0)  # exact: the float32 bits themselves
    assert torch.equal(image, encode_obs(raw["image"], d["image"]))  # (C, H, W) as a plain image is stored
    torch.testing.assert_close(obs_floats(packed, d), vector, rtol=0, atol=0)
    np.testing.assert_array_equal(obs_floats(packed.numpy(), d), vector.numpy())
    as_tensors = encode_obs({k: torch.from_numpy(v) for k, v in raw.items()}, d)  # torch envs' Dicts alike
    assert torch.equal(as_tensors, packed)


# ---------------------------------------------------------------------------- encoders
def test_nature_cnn_shapes_and_pixel_scaling():
    torch.manual_seed(0)
    cnn = CNNEncoder(4, 84, 84, 1 / 255)
    shapes = [tuple(m.weight.shape) for m in cnn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert shapes == [(32, 4, 8, 8), (64, 32, 4, 4), (64, 64, 3, 3), (512, 3136)]  # 3136 = 64 * 7 * 7
    assert cnn.out_features == 512
    x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    by_hand = torch.relu(cnn.fc(cnn.convs(x.float() / 255).flatten(1)))
    torch.testing.assert_close(cnn(x), by_hand)
    # orthogonal init with gain sqrt(2): the rows of the flattened first conv are orthogonal, norm sqrt(2)
    w = cnn.convs[0].weight.flatten(1)
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(32), atol=1e-4, rtol=0)


def test_small_images_get_minatar_network():
    cnn = CNNEncoder(*image_shape(box((10, 10, 4), np.bool_, 1)), 1.0)
    shapes = [tuple(m.weight.shape) for m in cnn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert shapes == [(16, 4, 3, 3), (128, 16 * 8 * 8)]


def test_dict_encoder_is_a_cnn_per_image_and_an_mlp_for_the_rest():
    torch.manual_seed(0)
    space = spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "image": box((12, 12, 1)), "b": spaces.Discrete(3)})
    enc = DictEncoder(space, (8,), "tanh")
    assert enc.out_features == 128 + 8
    raw = {"a": np.array([[0.5, -0.5]], np.float32), "b": np.array([2]),
           "image": np.random.default_rng(0).integers(0, 256, (1, 12, 12, 1)).astype(np.uint8)}
    packed = encode_obs(raw, space)  # uint8: vector keys in the space's order (sorted: a, b), then the image
    expected = torch.cat([enc.cnns[0](torch.from_numpy(raw["image"]).permute(0, 3, 1, 2)),
                          enc.mlp(torch.tensor([[0.5, -0.5, 0.0, 0.0, 1.0]]))], dim=1)
    assert packed.dtype == torch.uint8
    torch.testing.assert_close(enc(packed), expected)
    torch.testing.assert_close(enc(encode_flat(raw, space)), expected, rtol=0, atol=0)  # export's float input


def test_encoder_choice_and_override(capsys):
    image, flat = box((4, 84, 84)), spaces.Box(-1, 1, (3,))
    assert encoder_name(image) == "cnn" and encoder_name(flat) == "mlp"
    assert encoder_name(spaces.Dict({"i": image, "v": flat})) == "cnn"
    with pytest.raises(ConfigError, match="encoder cnn needs image observations"):
        encoder_name(flat, "cnn")
    policy = Policy(image, action_spec(spaces.Discrete(2)), encoder="mlp")
    assert type(policy.actor_body) is ImageMLPEncoder and not policy.fusable  # never into the numpy step
    encoder_name(spaces.Box(0, 1, (3, 9, 9)))  # a float rank-3 Box: flattened, and said so once
    encoder_name(spaces.Box(0, 1, (3, 9, 9)))
    assert capsys.readouterr().err.count("flattened into an MLP") == 1
    assert type(Policy(flat, action_spec(spaces.Discrete(2))).actor_body) is MLPEncoder


# ---------------------------------------------------------------------------- env ids
def test_module_env_id_imports_only_that_module():
    assert check_env_id(PICK) == "PixelPick-v0"
    with pytest.raises(EnvError, match="could not import 'no_such_module_xyz'"):
        check_env_id("no_such_module_xyz:Foo-v0")
    with pytest.raises(EnvError, match="not of the form module:EnvId"):
        check_env_id("os; rm:Foo-v0")


def test_minatar_ids_get_the_minatar_preset_and_uint8_planes(tmp_path):
    with PPO("MinAtar/Breakout-v1", run_dir=tmp_path / "r", **TINY) as model:
        assert model.config.preset == "minatar" and model.config.shared_trunk
        obs = model.envs.reset()
        assert obs.dtype == torch.uint8 and obs.shape == (2, 4, 10, 10)
        assert isinstance(model.collector, TorchCollector)  # a CNN falls back to the torch rollout


# ---------------------------------------------------------------------------- training, files, resume
def test_image_env_trains_with_uint8_rollout_storage_and_saves_loads(tmp_path):
    with PPO(PICK, run_dir=tmp_path / "run", **TINY) as model:
        assert isinstance(model.agent.actor_body, CNNEncoder) and isinstance(model.collector, TorchCollector)
        model.learn()
        obs = np.zeros((12, 12, 1), np.uint8)
        obs[3:5, 8:10] = 255
        action = model.predict(obs)
        batch = model.predict(np.stack([obs, obs]))
    loaded = PPO.load(tmp_path / "run")
    assert loaded.predict(obs) == action and list(loaded.predict(np.stack([obs, obs]))) == list(batch)
    assert loaded.evaluate(episodes=2)["episodes"] == 2


def test_dict_image_env_trains_with_uint8_images_in_the_rollout(tmp_path, monkeypatch):
    buffers = []
    allocate = Rollout.allocate
    monkeypatch.setattr(Rollout, "allocate", lambda *a, **kw: buffers.append(allocate(*a, **kw)) or buffers[-1])
    with PPO(PICK_DICT, run_dir=tmp_path / "run", **TINY) as model:
        assert isinstance(model.agent.actor_body, DictEncoder)
        model.learn()
        obs = {"image": np.zeros((12, 12, 1), np.uint8), "noise": np.array([0.5, -0.5], np.float32)}
        obs["image"][3:5, 8:10] = 255
        action = model.predict(obs)
    (buf,) = buffers
    # a row: the 2 noise values as float32 bytes, then the 12x12 image: 152 bytes, where float32 took 146 x 4
    assert buf.obs.dtype == torch.uint8 and buf.obs.shape == (16, 2, 8 + 144)
    assert buf.obs.nbytes * 3.8 < 16 * 2 * 146 * 4
    noise, (image,) = unpack_dict(buf.obs.flatten(0, 1), packed_dict(model.observation_space))
    assert ((noise >= -1) & (noise <= 1)).all() and noise.abs().sum() > 0  # the env's values, bit for bit
    assert (image.flatten(1).max(1).values == 255).all() and image.shape == (32, 1, 12, 12)  # each holds its block
    loaded = PPO.load(tmp_path / "run")
    assert loaded.predict(obs) == action
    assert loaded.evaluate(episodes=2)["episodes"] == 2
    for fmt in ("onnx", "torchscript"):  # the exported graph takes the float32 flat encoding (no bitcast)
        assert export_policy(loaded, tmp_path / f"policy.{fmt}", fmt).max_abs_diff <= 1e-5


def test_recurrent_dict_image_policy_replays_packed_sequences(tmp_path):
    with PPO(PICK_DICT, run_dir=tmp_path / "run", memory="lstm", **TINY) as model:
        model.learn()  # the update replays (sequences, steps, nbytes) uint8 rows through the DictEncoder
        assert model._next_obs.dtype == torch.uint8
        obs = {"image": np.zeros((12, 12, 1), np.uint8), "noise": np.zeros(2, np.float32)}
        action, state = model.predict(obs, state=None, episode_start=np.array([True]))
    assert state.shape == (1, model.agent.state_size) and action in (0, 1)


def _rewrite_header(path: Path, change) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_load_checks_conv_layers_against_the_spaces(tmp_path):
    with PPO(PICK, run_dir=tmp_path / "run", **dict(TINY, total_timesteps=32)) as model:
        model.learn()
    weights = tmp_path / "run" / "model.safetensors"

    def swap_conv(header):  # same byte count, another kernel shape: (16, 1, 3, 3) -> (16, 3, 3, 1)
        header["agent.actor_body.convs.0.weight"]["shape"] = [16, 3, 3, 1]

    _rewrite_header(weights, swap_conv)
    with pytest.raises(ModelFileError, match=r"actor_body\.convs\.0\.weight"):
        PPO.load(tmp_path / "run")


def test_norm_obs_is_refused_for_images(tmp_path):
    with pytest.raises(ConfigError, match="norm_obs does not apply to image"):
        PPO(PICK, run_dir=tmp_path / "run", norm_obs=True, **TINY)


@pytest.mark.parametrize("env_id", [PICK, PICK_DICT])
def test_cnn_resume_after_kill_is_exact(tmp_path, monkeypatch, env_id):
    kw = dict(TINY, total_timesteps=96, checkpoint_every=2)
    ref, run = tmp_path / "ref", tmp_path / "run"
    PPO(env_id, run_dir=ref, **kw).learn()
    kill_at_env_step(monkeypatch, 16 * 2 + 5)
    with pytest.raises(Killed):
        PPO(env_id, run_dir=run, **kw).learn()
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    next_obs = load_file(ckpt / "trainer.safetensors")["next_obs"]
    assert next_obs.dtype == torch.uint8  # images (and a Dict's packed rows) are checkpointed as stored
    PPO.resume(run).learn()
    assert_same_run(ref, run)


def test_a_checkpoint_with_float32_dict_images_resumes_with_new_episodes(tmp_path, monkeypatch, capsys):
    kw = dict(TINY, total_timesteps=96, checkpoint_every=2)
    run = tmp_path / "run"
    kill_at_env_step(monkeypatch, 16 * 2 + 5)
    with pytest.raises(Killed):
        PPO(PICK_DICT, run_dir=run, **kw).learn()
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    tensors = load_file(ckpt / "trainer.safetensors")
    tensors["next_obs"] = torch.zeros(2, 146)  # the float32 flat rows that checkpoints held before packing
    save_file(tensors, ckpt / "trainer.safetensors")
    PPO.resume(run).learn()
    assert "older layout" in capsys.readouterr().err
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["global_step"] == 96


def test_vecenv_reports_whole_images_and_finished_env_indices():
    envs = VecEnv(PICK, 2, 0, torch.device("cpu"))
    envs.reset()
    for _ in range(15):
        result = envs.step(torch.zeros(2, dtype=torch.long))
        assert result.finished_envs == []
    result = envs.step(torch.zeros(2, dtype=torch.long))
    assert result.obs.dtype == torch.uint8 and result.obs.shape == (2, 1, 12, 12)
    assert result.finished_envs == [0, 1] and result.finished_lengths == [16, 16]
    assert not math.isnan(sum(result.finished_returns))
    envs.close()


def test_a_nan_in_a_dict_images_vector_key_is_caught():
    class NaNNoise(PixelPick):  # env 1's noise turns NaN after the reset; the packed row would hide it
        nan = False

        def _obs(self):
            obs = super()._obs()
            obs["noise"][0] = np.nan if self.nan else 0.0
            return obs

    envs = VecEnv(PICK_DICT, 2, 0, torch.device("cpu"), env_fn=lambda: TimeLimit(NaNNoise(dict_obs=True), 16))
    envs.reset()
    envs.envs.envs[1].unwrapped.nan = True
    with pytest.raises(NonFiniteEnvValue, match="environment 1 returned a non-finite observation"):
        envs.step(torch.zeros(2, dtype=torch.long))
    envs.close()


# ---------------------------------------------------------------------------- learning (slow)
@pytest.mark.slow
def test_an_image_env_through_env_fn_is_learned(tmp_path):
    """PixelPick (random play: 8 of 16): the MinAtar-size CNN learns to read the image. Measured curve,
    seed 1 (this machine): training return 8.4 at 1k steps, 13.1 at 7k, 15.6 at 20k; evaluation 16.0 at
    30k (8 s). Threshold 14."""
    model = PPO("CartPole-v1", env_fn=lambda: TimeLimit(PixelPick(), 16),
                preset="minatar", total_timesteps=30_000, run_dir=tmp_path / "run", progress=False,
                tensorboard=False, eval_episodes=20, seed=1, live_doctor=False)
    model.learn()
    assert model.summary["eval_return_mean"] >= 14


@pytest.mark.slow
def test_minatar_breakout_is_learned(tmp_path):
    """MinAtar Breakout-v1 with the minatar preset, seed 1: random play returns ~0.35. Measured curve of this
    100k-step run (this machine, ~25 s): training return 1.2 at 17k steps, 3.0 at 34k, 4.1 at 99k; evaluation
    4.1. Threshold 2.5."""
    model = PPO("MinAtar/Breakout-v1", total_timesteps=100_000, run_dir=tmp_path / "run", progress=False,
                tensorboard=False, eval_episodes=10, seed=1, live_doctor=False)
    model.learn()
    assert model.summary["eval_return_mean"] >= 2.5


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_torchrun_cnn_run_has_identical_weights(tmp_path):
    """Two torchrun processes train one CNN policy (MinAtar's images): gradients averaged every minibatch, so
    both ranks end with bit-identical weights, and rank 0's model file loads and predicts."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ppox",
           "train", "MinAtar/Breakout-v1", "--num-envs", "2", "--num-steps", "32", "--num-minibatches", "2",
           "--total-timesteps", str(2 * 2 * 32 * 3), "--run-dir", str(run), "--no-progress", "--no-tensorboard",
           "--eval-episodes", "1"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_identical_across_ranks"]
    model = PPO.load(run)
    assert type(model.agent.actor_body) is not MLPEncoder  # a CNN encoder was trained and saved
    obs = np.zeros(model.observation_space.shape, dtype=model.observation_space.dtype)
    assert model.predict(obs) in range(model.spec.head_size)
