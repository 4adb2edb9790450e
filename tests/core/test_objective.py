"""One objective config: defined and validated once, composed into both trainers' configs, fed to the update,
with one set of names (old names still accepted for one release)."""

import dataclasses
import importlib
import json
import re
import warnings

import pytest

from ppox import PPO
from ppox.core.objective import DEPRECATED_NAMES, ObjectiveConfig, deprecated_flags
from ppox.errors import ConfigError
from ppox.llm.config import LLMPPOConfig
from ppox.rl.config import PPOConfig

cli_main = importlib.import_module("ppox.cli.main")  # the module (ppox.cli.main is also the function's name)
cli_llm = importlib.import_module("ppox.cli.llm")
OBJECTIVE_FIELDS = [f.name for f in dataclasses.fields(ObjectiveConfig)]
TRAINER_CONFIGS = [PPOConfig, LLMPPOConfig]


# ---------------------------------------------------------------------------- composition
@pytest.mark.parametrize("cls", TRAINER_CONFIGS)
def test_both_configs_compose_the_objective_with_flat_fields(cls):
    assert issubclass(cls, ObjectiveConfig)
    names = [f.name for f in dataclasses.fields(cls)]
    assert set(OBJECTIVE_FIELDS) <= set(names) and len(names) == len(set(names))
    cfg = cls(clip_coef=0.1, norm_adv=False, kl_target=0.02)  # flat keyword arguments
    assert (cfg.clip_coef, cfg.norm_adv, cfg.kl_target) == (0.1, False, 0.02)


def test_each_trainer_keeps_its_own_defaults():
    rl, llm = PPOConfig(), LLMPPOConfig()
    # RL: CleanRL's (= ObjectiveConfig's own defaults)
    assert {n: getattr(rl, n) for n in OBJECTIVE_FIELDS} == dataclasses.asdict(ObjectiveConfig())
    assert (rl.gamma, rl.vf_coef, rl.ent_coef, rl.kl_penalty, rl.kl_coef, rl.kl_target) == (
        0.99, 0.5, 0.01, "none", 1.0, 0.01)
    assert (llm.gamma, llm.vf_coef, llm.ent_coef, llm.kl_penalty, llm.kl_coef, llm.kl_target) == (
        1.0, 0.1, 0.0, "reward", 0.05, None)
    assert (llm.vf_clip_coef, llm.kl_estimator, rl.vf_clip_coef, rl.kl_estimator) == (0.2, None, None, "k3")


# ---------------------------------------------------------------------------- validated once
@pytest.mark.parametrize("cls", TRAINER_CONFIGS)
def test_the_objective_is_validated_by_one_function_called_once(cls, monkeypatch):
    calls = []
    original = ObjectiveConfig.validate
    monkeypatch.setattr(ObjectiveConfig, "validate", lambda self: calls.append(1) or original(self))
    cls()
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gamma": 0.0}, "gamma must be in"),
        ({"gae_lambda": 1.5}, "gae_lambda must be in"),
        ({"clip_coef": 1.5}, "clip_coef must be in"),
        ({"clip_coef_high": -0.1}, "clip_coef_high must be > 0"),
        ({"dual_clip": 0.5}, "dual_clip must be > 1"),
        ({"clip_coef": None, "kl_penalty": "none"}, "no trust region: add --kl-penalty loss"),
        ({"vf_clip_coef": 0.0}, "vf_clip_coef must be > 0"),
        ({"vf_coef": -1.0}, "vf_coef must be >= 0"),
        ({"ent_coef": -1.0}, "ent_coef must be >= 0"),
        ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
        ({"kl_target": 0.0}, "kl_target must be > 0"),
        ({"target_kl": -1.0}, "target_kl must be > 0"),
        ({"kl_estimator": "k7"}, "kl_estimator"),
        ({"loss_agg_mode": "sum"}, "loss_agg_mode"),
    ],
)
@pytest.mark.parametrize("cls", TRAINER_CONFIGS)
def test_both_trainers_refuse_a_bad_objective_with_the_same_message(cls, changes, message):
    with pytest.raises(ConfigError, match=message):
        cls(**changes)
    with pytest.raises(ConfigError, match=message):
        ObjectiveConfig(**changes).validate()


def test_kl_penalty_reward_needs_a_reference_model():
    LLMPPOConfig(kl_penalty="reward")
    with pytest.raises(ConfigError, match="kl_penalty must be 'none' or 'loss'"):
        PPOConfig(kl_penalty="reward")  # the gymnasium trainer has no reference model


# ---------------------------------------------------------------------------- what the update reads
def test_update_objective_is_the_configs_objective_fields():
    cfg = PPOConfig(clip_coef=0.1, kl_penalty="loss", norm_adv=False, ent_coef=0.0)
    obj = cfg.update_objective()
    assert type(obj) is ObjectiveConfig
    assert dataclasses.asdict(obj) == {n: getattr(cfg, n) for n in OBJECTIVE_FIELDS}


def test_llm_update_objective_leaves_whitening_and_the_reference_kl_to_the_trainer():
    cfg = LLMPPOConfig(clip_coef=0.1, kl_penalty="loss", norm_adv=True, loss_agg_mode="seq-mean-token-sum")
    obj = cfg.update_objective()
    assert type(obj) is ObjectiveConfig
    assert (obj.norm_adv, obj.kl_penalty, obj.resolved_kl_estimator) == (False, "none", "k3")
    assert (obj.clip_coef, obj.loss_agg_mode, obj.vf_clip_coef) == (0.1, "seq-mean-token-sum", 0.2)


def test_the_trainer_hands_its_configs_objective_to_the_update(tmp_path, monkeypatch):
    import ppox.core.update

    seen = []
    original = ppox.core.update.ppo_loss

    def spy(out, mb, objective, *args, **kwargs):
        seen.append(objective)
        return original(out, mb, objective, *args, **kwargs)

    monkeypatch.setattr(ppox.core.update, "ppo_loss", spy)
    model = PPO("CartPole-v1", total_timesteps=128, num_envs=2, num_steps=32, num_minibatches=2, update_epochs=1,
                clip_coef=0.15, kl_penalty="loss", compile=False, tensorboard=False, progress=False,
                live_doctor=False, eval_episodes=0, run_dir=tmp_path / "run")
    model.learn()
    assert seen and all(obj == model.config.update_objective() for obj in seen)
    assert seen[0].clip_coef == 0.15 and seen[0].kl_penalty == "loss"


# ---------------------------------------------------------------------------- deprecated names
@pytest.mark.parametrize(
    ("cls", "old", "new", "value"),
    [
        (LLMPPOConfig, "whiten_advantages", "norm_adv", False),
        (LLMPPOConfig, "target_ref_kl", "kl_target", 0.05),
        (PPOConfig, "target_ref_kl", "kl_target", 0.05),
    ],
)
def test_old_keyword_arguments_work_with_one_deprecation_warning(cls, old, new, value):
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use {new}") as record:
        cfg = cls(**{old: value})
    assert getattr(cfg, new) == value and len(record) == 1
    assert old not in cfg.to_dict()
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        assert getattr(cls().replace(**{old: value}), new) == value


@pytest.mark.parametrize(("old", "new"), [(True, "loss"), (False, "none")])
def test_the_old_boolean_kl_penalty_still_works(old, new, tmp_path):
    with pytest.warns(DeprecationWarning, match=f"kl_penalty={old} is deprecated"):
        assert PPOConfig(kl_penalty=old, clip_coef=None if old else 0.2).kl_penalty == new
    with pytest.warns(DeprecationWarning):
        assert PPOConfig.from_dict({**PPOConfig().to_dict(), "kl_penalty": old}).kl_penalty == new


def test_an_old_config_json_still_loads(tmp_path):
    old_llm = {**LLMPPOConfig().to_dict(), "whiten_advantages": False, "target_ref_kl": 3.0}
    del old_llm["norm_adv"], old_llm["kl_target"]
    with pytest.warns(DeprecationWarning):
        cfg = LLMPPOConfig(**json.loads(json.dumps(old_llm)))  # how `ppox llm train --resume` reads it
    assert (cfg.norm_adv, cfg.kl_target) == (False, 3.0)
    old_rl = {**PPOConfig().to_dict(), "kl_penalty": True, "clip_coef": None}
    with pytest.warns(DeprecationWarning):
        assert PPOConfig.from_dict(old_rl).kl_penalty == "loss"


def test_old_and_new_name_together_is_an_error():
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="both whiten_advantages"):
        warnings.simplefilter("ignore")
        LLMPPOConfig(whiten_advantages=False, norm_adv=True)


def test_every_deprecated_name_maps_to_an_objective_field():
    assert set(DEPRECATED_NAMES.values()) <= set(OBJECTIVE_FIELDS)


@pytest.mark.parametrize(
    ("argv", "expected", "warning"),
    [
        (["--whiten-advantages"], ["--norm-adv"], "--whiten-advantages is deprecated; use --norm-adv"),
        (["--no-whiten-advantages"], ["--no-norm-adv"], "use --no-norm-adv"),
        (["--target-ref-kl", "0.1"], ["--kl-target", "0.1"], "--target-ref-kl is deprecated; use --kl-target"),
        (["--target_ref_kl=0.1"], ["--kl-target=0.1"], "use --kl-target"),
        (["--kl-penalty"], ["--kl-penalty", "loss"], "use --kl-penalty loss"),
        (["--kl-penalty", "--seed", "2"], ["--kl-penalty", "loss", "--seed", "2"], "use --kl-penalty loss"),
        (["--no-kl-penalty"], ["--kl-penalty", "none"], "use --kl-penalty none"),
    ],
)
def test_deprecated_flags_are_rewritten_with_one_warning_line(argv, expected, warning, capsys):
    assert deprecated_flags(argv) == expected
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and warning in err


def test_current_flags_pass_through_silently(capsys):
    argv = ["--kl-penalty", "reward", "--norm-adv", "--kl-target", "0.1", "--", "--whiten-advantages"]
    assert deprecated_flags(argv) == argv
    assert capsys.readouterr().err == ""


def test_ppox_train_accepts_the_old_kl_penalty_switch(monkeypatch, capsys):
    configs = []
    monkeypatch.setattr(cli_main, "run_training", lambda config, env_fn=None: configs.append(config) or 0)
    assert cli_main.main(["train", "--kl-penalty", "Acrobot-v1", "--clip-coef", "0.1"]) == 0
    assert (configs[0].env_id, configs[0].kl_penalty, configs[0].clip_coef) == ("Acrobot-v1", "loss", 0.1)
    assert "warning: --kl-penalty without a value is deprecated" in capsys.readouterr().err


def test_ppox_llm_train_accepts_the_old_flags(monkeypatch, capsys):
    class Built(Exception):
        pass

    def build_trainer(cfg):
        raise Built(cfg)

    monkeypatch.setattr(cli_llm, "build_trainer", build_trainer)
    with pytest.raises(Built) as exc:
        cli_llm.main(["train", "--model-path", "m", "--no-whiten-advantages", "--target-ref-kl", "4"])
    cfg = exc.value.args[0]
    assert (cfg.norm_adv, cfg.kl_target) == (False, 4.0)
    err = capsys.readouterr().err
    assert "warning: --no-whiten-advantages is deprecated; use --no-norm-adv" in err
    assert "warning: --target-ref-kl is deprecated; use --kl-target" in err


# ---------------------------------------------------------------------------- flags are flat
def _help(main, argv, capsys) -> str:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("main", "argv"), [(cli_main.main, ["train", "--help"]),
                                              (cli_llm.main, ["train", "--help"])])
def test_objective_flags_are_flat_in_both_clis(main, argv, capsys):
    text = _help(main, argv, capsys)
    for name in OBJECTIVE_FIELDS:
        assert re.search(f"--{name.replace('_', '-')}(?![\\w-])", text), name
    assert "--objective." not in text and "whiten" not in text and "target-ref-kl" not in text
