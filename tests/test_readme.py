"""The README's Python quickstart and command lines run as written, in order (with smaller budgets)."""

import glob
import shlex
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quickstart_runs(tmp_path, monkeypatch):
    block = README.read_text().split("```python\n")[1].split("```")[0]
    small = (block.replace("model.learn(100_000)", "model.learn(512)")
             .replace("total_timesteps=20_000", "total_timesteps=512, eval_episodes=2"))
    assert small != block, "the README quickstart changed: update this test"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(small, str(README), "exec"), namespace)
    assert namespace["custom"].summary["total_timesteps"] == 512
    assert (tmp_path / "my_model" / "model.safetensors").is_file()




CLI_SECTIONS = ("## Quickstart: command line", "## See what training did")
TINY = ["--total-timesteps", "256", "--num-envs", "2", "--num-steps", "32", "--no-progress", "--no-tensorboard",
        "--eval-episodes", "2", "--no-compile"]


def _readme_commands() -> list[tuple[str, list[str]]]:
    """The `ppox` lines of the README's command-line sections in order, as (line, argv after `ppox`)."""
    text = README.read_text()
    commands = []
    for heading in CLI_SECTIONS:
        block = text.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
        commands += [(line, shlex.split(line, comments=True)[1:]) for line in block.splitlines()
                     if line.startswith("ppox ")]
    return commands


def _bash_glob(line: str, argv: list[str]) -> list[str]:
    """Expand unquoted glob words as bash does (a pattern that matches nothing stays as written)."""
    out: list[str] = []
    for arg in argv:
        quoted = f'"{arg}"' in line or f"'{arg}'" in line
        out += [arg] if quoted or not set("*?[") & set(arg) else (sorted(glob.glob(arg)) or [arg])
    return out


def test_command_line_quickstart_runs_in_order(tmp_path, monkeypatch, capsys):
    """`make run`, then each README command as written (tiny budgets): every one exits cleanly, no error."""
    pytest.importorskip("moviepy")
    from ppox.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "CartPole-v1", *TINY]) == 0  # what `make run` runs first
    started = int(time.time())
    commands = _readme_commands()
    for line, words in commands:
        argv = _bash_glob(line, words)
        if argv[:1] == ["train"] and "--help" in argv:
            with pytest.raises(SystemExit) as exc:
                main(argv)
            assert exc.value.code == 0
            continue
        if argv[0] == "train":
            while int(time.time()) == started:  # default run dirs are named by the second: keep them apart
                time.sleep(0.05)
            started = int(time.time())
            argv += TINY
        elif argv[0] == "eval":
            argv += ["--episodes", "1"]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0 or (argv[0] == "doctor" and code == 1), (line, code, err)  # doctor: 1 = findings
        assert "error:" not in err, (line, err)
    assert {words[0] for _, words in commands} >= {"train", "eval", "doctor", "plot", "presets"}
    assert len(glob.glob("runs/CartPole-v1__1__*")) == 2  # so the lines globbing them got two run dirs
    assert (tmp_path / "curves.png").is_file()
