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
    PPOConfig(clip_coef=None, kl_penalty=True)


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
