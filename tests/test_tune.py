"""`ppox tune` (ppox.rl.tune): a tiny Optuna study that resumes, writes a preset `ppox train` accepts."""

import json
import tomllib

import pytest

from ppox.cli import main
from ppox.errors import ConfigError
from ppox.rl.tune import load_search_space

optuna = pytest.importorskip("optuna")

TINY = ["--timesteps", "256", "--evaluations", "2", "--eval-episodes", "1", "--startup-trials", "1",
        "--preset", "cleanrl"]


def space_file(tmp_path):
    # a 2-parameter space on tiny rollouts: each trial trains 256 steps in well under a second
    path = tmp_path / "space.toml"
    path.write_text('learning_rate = { type = "float", low = 1e-4, high = 1e-2, log = true }\n'
                    'num_steps = { type = "categorical", choices = [16, 32] }\n'
                    'update_epochs = { type = "fixed", value = 1 }\n'
                    'compile = { type = "fixed", value = false }\n'
                    'env_backend = { type = "fixed", value = "numpy" }\n')
    return str(path)


def test_resumed_study_continues_its_trial_count_and_writes_a_preset(tmp_path, capsys):
    study = tmp_path / "study"
    args = ["tune", "CartPole-v1", "--study-dir", str(study), "--space", space_file(tmp_path), *TINY]
    assert main([*args, "--trials", "2"]) == 0
    first = capsys.readouterr().out
    assert "2 finished trials (0 before this run)" in first
    assert main([*args, "--trials", "3"]) == 0
    assert "3 finished trials (2 before this run)" in capsys.readouterr().out
    loaded = optuna.load_study(study_name="ppox", storage=f"sqlite:///{study / 'study.db'}")
    assert [t.number for t in loaded.trials] == [0, 1, 2]
    assert all(t.intermediate_values for t in loaded.trials if t.state.name == "COMPLETE")  # reported evaluations
    assert (study / "trials.csv").read_text().count("\n") == 4
    assert (study / "optimization_history.png").is_file()
    preset = tomllib.loads((study / "best_preset.toml").read_text())
    (name, values), = preset.items()
    assert name == "tuned-CartPole-v1" and values["learning_rate"] == loaded.best_params["learning_rate"]
    # the preset trains as it is
    run = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--preset-file", str(study / "best_preset.toml"), "--total-timesteps",
                 "64", "--eval-episodes", "0", "--no-progress", "--no-tensorboard", "--run-dir", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == name and config["learning_rate"] == values["learning_rate"]


@pytest.mark.filterwarnings("ignore:Heartbeat")
def test_median_pruner_prunes_a_trial_worse_than_the_median(tmp_path):
    from ppox.rl import tune

    settings = tune.TuneSettings("CartPole-v1", "cleanrl", str(tmp_path), 1, 256, 2, 1, None, 0, 1)
    study = tune._study(settings)
    for value in (100.0, 120.0):  # two finished trials that reported high at step 128 (past the warm-up, 256 // 3)
        trial = study.ask()
        trial.report(value, 128)
        study.tell(trial, value)
    trial = study.ask()
    trial.report(110.0, 128)
    assert not trial.should_prune()  # above the median
    trial = study.ask()
    trial.report(5.0, 128)
    assert trial.should_prune()


def test_bad_search_space_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('not_a_field = { type = "float", low = 0, high = 1 }\n')
    with pytest.raises(ConfigError, match="not_a_field"):
        load_search_space("discrete", path)
    assert main(["tune", "CartPole-v1", "--space", str(path), "--study-dir", str(tmp_path / "s")]) == 2
    assert "not a PPOConfig field" in capsys.readouterr().err
