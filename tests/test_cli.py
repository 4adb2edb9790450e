"""The command line, through `ppox.cli.main([...])`, with tiny training budgets."""

import json

import pytest

from ppox.cli import main
from ppox.cli.common import print_summary

TINY = ["--total-timesteps", "256", "--num-envs", "2", "--num-steps", "32", "--no-progress", "--no-tensorboard",
        "--eval-episodes", "2"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two CartPole runs of seed 1, as `make run` then the README's first quickstart line leave them."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for name in ("CartPole-v1__1__a", "CartPole-v1__1__b"):
        assert main(["train", "CartPole-v1", *TINY, "--run-dir", str(root / name)]) == 0
        dirs.append(str(root / name))
    return root, dirs


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_train_without_env_id_says_what_it_trains(tmp_path, capsys):
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "run")]) == 0
    assert "no ENV_ID given: training CartPole-v1" in capsys.readouterr().err


def test_train_with_env_id_does_not_warn(tmp_path, capsys):
    assert main(["train", "CartPole-v1", *TINY, "--run-dir", str(tmp_path / "run")]) == 0
    assert "no ENV_ID given" not in capsys.readouterr().err


def test_train_help_documents_resume(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "--resume RUN_DIR" in capsys.readouterr().out


def test_doctor_reports_on_each_of_several_run_dirs(two_runs, capsys):
    _, dirs = two_runs
    assert main(["doctor", *dirs]) in (0, 1)
    out = capsys.readouterr().out
    assert all(f"ppox doctor: {d}" in out for d in dirs), out


def test_doctor_accepts_a_quoted_glob(two_runs, capsys):
    root, dirs = two_runs
    assert main(["doctor", str(root / "CartPole-v1__1__*")]) in (0, 1)
    out = capsys.readouterr().out
    assert all(f"ppox doctor: {d}" in out for d in dirs), out


def test_doctor_glob_matching_nothing_is_one_line(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nothing__*")]) == 2
    assert "no run directory matches" in _one_error_line(capsys.readouterr().err)


def test_eval_of_several_run_dirs_prints_one_line_each(two_runs, capsys):
    _, dirs = two_runs
    assert main(["eval", *dirs, "--episodes", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert all(d in line and "mean return" in line for d, line in zip(dirs, lines, strict=True)), lines


def test_eval_json_of_several_run_dirs_is_a_list(two_runs, capsys):
    _, dirs = two_runs
    assert main(["eval", *dirs, "--episodes", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["run_dir"] for r in results] == dirs and all(r["episodes"] == 2 for r in results)


def test_eval_json_of_one_run_dir_is_an_object(two_runs, capsys):
    _, dirs = two_runs
    assert main(["eval", dirs[0], "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and len(result["returns"]) == 2


def test_eval_video_prints_the_return(two_runs, tmp_path, capsys):
    pytest.importorskip("moviepy")
    _, dirs = two_runs
    assert main(["eval", dirs[0], "--episodes", "1", "--video", str(tmp_path / "videos")]) == 0
    out = capsys.readouterr().out
    assert "CartPole-v1: mean return" in out and ".mp4" in out, out
    # the printed return is the recorded episode's: the same seed evaluated without video agrees
    assert main(["eval", dirs[0], "--episodes", "1", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert f"mean return {plain['mean']:.2f}" in out


def test_eval_video_of_several_runs_gets_a_folder_each(two_runs, tmp_path, capsys):
    pytest.importorskip("moviepy")
    _, dirs = two_runs
    assert main(["eval", *dirs, "--episodes", "1", "--video", str(tmp_path / "videos")]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "videos").glob("*/*.mp4")) == [
        "CartPole-v1__1__a", "CartPole-v1__1__b"]


def test_bad_flag_is_one_error_line_not_a_box(capsys):
    assert main(["eval", "somewhere", "--bogus"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--bogus" in line and "ppox eval --help" in line


def test_bad_value_is_one_error_line(capsys):
    assert main(["train", "CartPole-v1", "--num-envs", "many"]) == 2
    assert "--num-envs" in _one_error_line(capsys.readouterr().err)


def test_interrupted_summary_says_not_evaluated_instead_of_none(capsys):
    summary = {"env_id": "CartPole-v1", "seed": 1, "total_timesteps": 64, "wall_seconds": 0.5, "sps": 128.0,
               "interrupted": True, "eval_return_mean": None, "eval_return_std": None, "eval_episodes": 0,
               "final_train_return_mean": None}
    print_summary(summary, "runs/x")
    out = capsys.readouterr().out
    assert "None" not in out and "interrupted: not evaluated" in out, out


@pytest.mark.parametrize("command", ["eval", "doctor", "plot"])
def test_no_run_dir_is_one_error_line(command, capsys):
    assert main([command]) == 2
    assert "at least one run directory" in _one_error_line(capsys.readouterr().err)


def test_env_id_after_a_boolean_flag_is_the_env_id(tmp_path, capsys):
    assert main(["train", "--no-progress", "Acrobot-v1", *TINY, "--run-dir", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["env_id"] == "Acrobot-v1"
