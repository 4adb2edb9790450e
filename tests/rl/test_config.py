import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ppox.errors import ConfigError
from ppox.rl.config import PPOConfig, load_presets, preset_config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clip_coef": 0.0}, "clip_coef"),
        ({"clip_coef": -0.1}, "clip_coef"),
        ({"num_minibatches": 3}, "not divisible"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.01}, "gamma"),
        ({"gae_lambda": 1.5}, "gae_lambda"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"num_envs": 0}, "num_envs"),
        ({"kl_estimator": "k7"}, "kl_estimator"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"clip_coef": None}, "kl-penalty"),
        ({"ent_coef": -1.0}, "ent_coef"),
        ({"target_kl": 0.0}, "target_kl"),
        ({"hidden_sizes": (64, 0)}, "hidden_sizes"),
    ],
)
def test_invalid_values_are_refused_with_the_field_name(changes, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**changes)


def test_gamma_one_is_valid_and_penalty_alone_is_valid():
    PPOConfig(gamma=1.0)
    PPOConfig(clip_coef=None, kl_penalty="loss")


def test_presets_cover_the_required_envs_and_are_valid():
    presets = load_presets()
    for env_id in ("CartPole-v1", "Acrobot-v1", "MountainCarContinuous-v0", "Pendulum-v1", "HalfCheetah-v5",
                   "Hopper-v5", "Walker2d-v5", "InvertedPendulum-v5", "cleanrl", "cleanrl-continuous"):
        assert env_id in presets
        preset_config(env_id if "-v" in env_id else "CartPole-v1", preset=env_id)


def test_preset_resolution():
    assert preset_config("CartPole-v1").num_envs == load_presets()["CartPole-v1"]["num_envs"]
    cfg = preset_config("CartPole-v1", "cleanrl", seed=7)
    assert (cfg.num_envs, cfg.num_steps, cfg.seed, cfg.preset) == (4, 128, 7, "cleanrl")
    assert preset_config("LunarLander-v3").num_envs == PPOConfig().num_envs  # no preset: defaults
    with pytest.raises(ConfigError, match="did you mean cleanrl"):
        preset_config("CartPole-v1", "cleanrll")


def test_json_round_trip():
    cfg = PPOConfig(hidden_sizes=(32, 16), clip_coef_high=0.28)
    assert PPOConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        PPOConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": "x"}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),  # bool is not an int
        ({"seed": 1.0}, "seed must be an integer"),
        ({"device": 3}, "device must be a string"),
        ({"hidden_sizes": [64.5]}, "hidden_sizes must be a list of integers"),
        ({"hidden_sizes": (64, True)}, "hidden_sizes must be a list of integers"),
        ({"anneal_lr": 1}, "anneal_lr must be true/false"),
        ({"learning_rate": "0.1"}, "learning_rate must be a number"),
        ({"clip_coef": "none"}, "clip_coef must be a number or None"),
        ({"activation": "gelu"}, "activation must be 'tanh' or 'relu'"),
        ({"run_dir": 5}, "run_dir must be a string or None"),
    ],
)
def test_wrong_types_are_refused_at_construction(changes, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**changes)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(PPOConfig)
                                  if f.type in ("float", "float | None")])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_non_finite_values(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
        PPOConfig(**{name: value})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": -1}, "seed must be an integer in"),
        ({"seed": 2**32}, "seed must be an integer in"),
        ({"device": "meta"}, "unknown device 'meta'"),
        ({"device": "cuda:x"}, "unknown device"),
        ({"torch_threads": 1_000_000}, "torch_threads must be <= 1024"),
    ],
)
def test_seed_device_and_threads_are_bounded(changes, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**changes)


def test_plain_values_are_normalised():
    cfg = PPOConfig(learning_rate=1, seed=np.int64(3), hidden_sizes=[32, 16], run_dir=Path("runs/x"))
    assert type(cfg.learning_rate) is float and type(cfg.seed) is int and cfg.hidden_sizes == (32, 16)
    assert cfg.run_dir == "runs/x" and PPOConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for device in ("cpu", "cuda", "cuda:1", "mps", "auto"):
        PPOConfig(device=device)
    PPOConfig(seed=0)
    PPOConfig(seed=2**32 - 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "-1"], "seed must be an integer in"),
        (["--seed", "1e23"], "seed"),
        (["--device", "meta"], "unknown device 'meta'"),
        (["--vf-coef", "nan"], "vf_coef must be a finite number"),
        (["--ent-coef", "inf"], "ent_coef must be a finite number"),
        (["--learning-rate", "inf"], "learning_rate must be a finite number"),
    ],
)
def test_cli_refuses_bad_seed_device_and_non_finite_values_in_one_line(tmp_path, capsys, argv, message):
    from ppox.cli import main

    rc = main(["train", "CartPole-v1", *argv, "--total-timesteps", "256", "--no-progress",
               "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()
