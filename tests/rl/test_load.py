"""PPO.load: no env needed to predict, custom envs, more training, and hostile model files (issue 12)."""

import json
import math
import os
import shutil
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import save_file

import ppox.rl.envs
import ppox.rl.ppo
from ppox import PPO
from ppox.cli import main
from ppox.errors import EnvError, ModelFileError, PPOXError
from ppox.rl.config import PPOConfig
from ppox.rl.ppo import ObservationError
from ppox.rl.spaces import SpaceDecodeError, space_from_json, space_to_json

BOX = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)


class MyEnv(gym.Env):
    """An unregistered env with a Dict observation: nothing about it is CartPole."""

    observation_space = spaces.Dict({"pos": BOX, "mode": spaces.Discrete(4)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), False, self.t >= 8, {}


def one_line_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[doctor]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def saved(tiny, tmp_path):
    """A trained CartPole model directory (observation normalisation on, so obs_rms tensors are saved)."""
    model = PPO(tiny(norm_obs=True)).learn()
    return model.run_dir


def edit_meta(model_dir, change):
    path = model_dir / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


# ---------------------------------------------------------------------------- custom envs, no env at load
def test_custom_env_model_loads_and_predicts_without_an_env(tiny, tmp_path, monkeypatch):
    model = PPO(tiny(seed=3), env_fn=MyEnv).learn()
    assert model.config.env_id == "MyEnv"  # not the config's default CartPole-v1
    model.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "model.json").read_text())
    assert meta["env_id"] == "MyEnv" and meta["custom_env"] is True

    def no_envs(*args, **kwargs):
        raise AssertionError("PPO.load created an env")

    with monkeypatch.context() as m:
        m.setattr(ppox.rl.ppo, "VecEnv", no_envs)
        m.setattr(ppox.rl.envs, "make_single_env", no_envs)
        loaded = PPO.load(tmp_path / "saved")
        obs = [MyEnv.observation_space.sample() for _ in range(8)]
        assert [loaded.predict(o) for o in obs] == [model.predict(o) for o in obs]
        loaded.close()
    assert loaded.observation_space == MyEnv.observation_space and loaded.action_space == MyEnv.action_space
    with pytest.raises(EnvError, match=r"custom environment \(MyEnv\).*env_fn"):
        loaded.evaluate(episodes=1)
    assert PPO.load(tmp_path / "saved", env_fn=MyEnv).evaluate(episodes=2)["episodes"] == 2


def test_a_registered_env_from_env_fn_is_named_by_its_id(tiny):
    model = PPO(tiny(), env_fn=lambda: gym.make("Acrobot-v1"))
    assert model.config.env_id == "Acrobot-v1"
    model.close()


def test_loaded_model_trains_on_into_a_new_run_dir(tiny, tmp_path, monkeypatch):
    # 8 envs + reward scaling: load used to build its network and scaler for 1 env ("Expected size 8 but got size 1")
    model = PPO(tiny(num_envs=8, num_steps=16, norm_obs=True, norm_reward=True)).learn()
    before = {p.name: p.read_bytes() for p in model.run_dir.iterdir() if p.is_file()}
    monkeypatch.chdir(tmp_path)
    loaded = PPO.load(model.run_dir)
    loaded.learn(256)  # no run_dir: a new one, never the stored one
    assert (tmp_path / loaded.run_dir).parent == tmp_path / "runs"
    assert loaded.global_step == 2 * 256
    assert before == {p.name: p.read_bytes() for p in model.run_dir.iterdir() if p.is_file()}
    again = PPO.load(loaded.run_dir).learn(256, run_dir=tmp_path / "more")
    assert (tmp_path / "more" / "model.safetensors").is_file() and again.global_step == 3 * 256
    custom = PPO(tiny(run_dir=str(tmp_path / "custom")), env_fn=MyEnv).learn()
    PPO.load(custom.run_dir, env_fn=MyEnv).learn(128, run_dir=tmp_path / "custom_more")


def test_model_json_without_spaces_loads_the_old_way(saved, tiny):
    edit_meta(saved, lambda meta: meta.pop("spaces"))
    loaded = PPO.load(saved)
    assert loaded.observation_space == gym.make("CartPole-v1").observation_space
    assert loaded.predict(np.zeros(4, np.float32)) in (0, 1)


@pytest.mark.parametrize("space", [
    BOX,
    spaces.Box(0, 255, (2, 3), dtype=np.uint8),
    spaces.Box(np.array([-np.inf, 0.0]), np.array([np.inf, 2.0]), dtype=np.float64),
    spaces.Discrete(5, start=2),
    spaces.MultiDiscrete([2, 3]),
    spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[1, 1], [0, 0]]),
    spaces.MultiBinary(4),
    spaces.MultiBinary([2, 3]),
    spaces.Dict({"b": BOX, "a": spaces.Discrete(3)}),
    spaces.Tuple((spaces.Discrete(2), spaces.Dict({"x": BOX}))),
])
def test_space_json_round_trip(space):
    desc = json.loads(json.dumps(space_to_json(space), allow_nan=False))  # strict JSON: no Infinity
    back = space_from_json(desc, 1000)
    assert back == space and back.dtype == space.dtype
    if isinstance(space, spaces.Dict):
        assert list(back.spaces) == list(space.spaces)  # key order is the encoding order


@pytest.mark.parametrize("desc", [
    {"type": "Box", "shape": [10**9], "dtype": "float32", "low": 0, "high": 1},
    {"type": "Box", "shape": [2], "dtype": "float32", "low": [0], "high": 1},
    {"type": "Box", "shape": [2], "dtype": "object", "low": 0, "high": 1},
    {"type": "Box", "shape": [2], "dtype": "int64", "low": "inf", "high": 0},
    {"type": "Box", "shape": [1], "dtype": "float32", "low": 1, "high": 0},
    {"type": "Discrete", "n": True},
    {"type": "Pickle", "payload": "..."},
    {"type": "Tuple", "spaces": [{"type": "Tuple", "spaces": []}] * 5000},
])
def test_hostile_space_descriptions_are_refused(desc):
    with pytest.raises(SpaceDecodeError):
        space_from_json(desc, 1000)


# ---------------------------------------------------------------------------- resources (item 12)
@pytest.mark.parametrize("hidden", [[8000, 8000], [1000000000]])
def test_model_json_cannot_size_the_network(saved, hidden, capsys):
    edit_meta(saved, lambda meta: meta["config"].update(hidden_sizes=hidden))
    start = time.perf_counter()
    assert main(["eval", str(saved), "--episodes", "1"]) == 2
    assert time.perf_counter() - start < 5
    assert f"says hidden_sizes {hidden}" in one_line_error(capsys)


def test_model_json_cannot_size_the_thread_pool(saved, capsys):
    edit_meta(saved, lambda meta: meta["config"].update(torch_threads=1000000))
    assert main(["eval", str(saved), "--episodes", "1"]) == 2
    assert "torch_threads must be <= 1024" in one_line_error(capsys)
    PPO(PPOConfig(torch_threads=1024, num_envs=1, num_steps=4, num_minibatches=1)).close()
    assert torch.get_num_threads() <= (os.cpu_count() or 1)
    torch.set_num_threads(1)


def test_model_json_spaces_are_bounded_by_the_weights(saved):
    def huge(meta):
        meta["spaces"]["observation"] = {"type": "Box", "shape": [10**9], "dtype": "float32", "low": 0, "high": 1}

    edit_meta(saved, huge)
    with pytest.raises(ModelFileError, match="invalid space"):
        PPO.load(saved)

    def five(meta):
        meta["spaces"]["observation"] = {"type": "Box", "shape": [5], "dtype": "float32", "low": 0, "high": 1}

    edit_meta(saved, five)
    with pytest.raises(ModelFileError, match="do not fit its weights"):
        PPO.load(saved)


def _write_raw(path, header: dict, data: bytes = b"", length: int | None = None):
    blob = json.dumps(header).encode()
    path.write_bytes((len(blob) if length is None else length).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize("damage", ["huge_header_length", "tensor_past_the_end", "size_mismatch", "bad_dtype",
                                    "short_file"])
def test_safetensors_header_is_checked_against_the_file_size(saved, damage):
    path = saved / "model.safetensors"
    if damage == "huge_header_length":
        _write_raw(path, {}, length=2**60)
    elif damage == "tensor_past_the_end":  # 40 GB of weights declared in a tiny file
        _write_raw(path, {"agent.actor_body.0.weight": {"dtype": "F32", "shape": [100000, 100000],
                                                         "data_offsets": [0, 40_000_000_000]}})
    elif damage == "size_mismatch":
        _write_raw(path, {"agent.actor_body.0.weight": {"dtype": "F32", "shape": [64, 4], "data_offsets": [0, 4]}},
                   b"\0" * 4)
    elif damage == "bad_dtype":
        _write_raw(path, {"agent.actor_body.0.weight": {"dtype": "PY", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    else:
        path.write_bytes(b"\x01\x02")
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        PPO.load(saved)


def test_weights_that_do_not_match_the_network_are_refused_before_allocating(saved):
    from safetensors.torch import load_file

    tensors = load_file(saved / "model.safetensors")
    tensors["agent.critic_head.weight"] = torch.zeros(1, 65)
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(ModelFileError, match=r"critic_head\.weight"):
        PPO.load(saved)


# ---------------------------------------------------------------------------- non-finite values, types
def test_non_finite_weights_are_refused_naming_the_file(saved, capsys):
    from safetensors.torch import load_file

    tensors = load_file(saved / "model.safetensors")
    tensors["agent.actor_head.bias"][0] = float("nan")
    save_file(tensors, saved / "model.safetensors")
    assert main(["eval", str(saved), "--episodes", "1"]) == 2
    assert "model.safetensors holds non-finite weights" in one_line_error(capsys)


def test_predict_and_evaluate_refuse_non_finite_weights_in_memory(tiny):
    model = PPO(tiny())
    with torch.no_grad():
        model.agent.actor_head.weight[0, 0] = float("inf")
    with pytest.raises(PPOXError, match="not finite"):
        model.predict(np.zeros(4, np.float32))
    with pytest.raises(PPOXError, match="not finite"):
        model.evaluate(episodes=1)
    model.close()


@pytest.mark.parametrize("step", ["abc", math.inf, -1, 1.5, True])
def test_bad_global_step_is_one_model_file_error(saved, step, capsys):
    edit_meta(saved, lambda meta: meta.update(global_step=step))
    with pytest.raises(ModelFileError, match="global_step"):
        PPO.load(saved)
    assert main(["eval", str(saved), "--episodes", "1"]) == 2
    assert "global_step" in one_line_error(capsys)


def test_predict_refuses_observations_that_do_not_fit(saved, tiny):
    model = PPO.load(saved)
    assert model.predict(np.zeros((2, 4), np.float32)).shape == (2,)
    for bad in (np.zeros((2, 2, 4)), np.zeros(5), np.zeros((3, 2))):
        with pytest.raises(ObservationError, match="shape"):
            model.predict(bad)
    custom = PPO(tiny(), env_fn=MyEnv)
    assert custom.predict({"pos": np.zeros(3, np.float32), "mode": 1}) in (0, 1)
    with pytest.raises(ObservationError, match="outside"):
        custom.predict({"pos": np.zeros(3, np.float32), "mode": 7})
    with pytest.raises(ObservationError, match="keys"):
        custom.predict({"pos": np.zeros(3, np.float32)})
    with pytest.raises(ObservationError, match="disagree"):
        custom.predict({"pos": np.zeros((2, 3), np.float32), "mode": 1})
    custom.close()


def test_copied_model_dir_keeps_working(saved, tmp_path):
    """The stored run_dir is not used by load: a copied model directory loads the same."""
    shutil.copytree(saved, tmp_path / "copy")
    a, b = PPO.load(saved), PPO.load(tmp_path / "copy")
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    assert np.array_equal(a.predict(obs), b.predict(obs)) and a.config.run_dir is None


def test_resuming_a_custom_env_run_without_env_fn_says_so(tiny):
    from ppox.errors import ConfigError

    model = PPO(tiny(), env_fn=MyEnv).learn()
    with pytest.raises(ConfigError, match=r"custom environment \(MyEnv\): pass env_fn"):
        PPO.resume(model.run_dir)
    PPO.resume(model.run_dir, env_fn=MyEnv).close()
