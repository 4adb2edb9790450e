"""What the commands of `ppox` share: tyro parsing with one-line errors, run-directory globs, the summary table."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import re
import sys
from pathlib import Path
from typing import Any, TypeVar

import tyro

from ppox.errors import PPOXError


def error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


T = TypeVar("T")


AUTO_SWITCH_VALUES = ("True", "False", "auto", "true", "false")


def auto_switches(cls: type) -> set[str]:
    """The flag names of fields typed `bool | Literal["auto"]` (e.g. PPOConfig.compile): tyro wants a value
    for them (`--compile {True,False,auto}`); `--compile` and `--no-compile` alone work too."""
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    return {f.name.replace("_", "-") for f in fields
            if str(f.type).replace(" ", "").replace('"', "'") == "bool|Literal['auto']"}


def _expand_auto_switches(cls: type, argv: list[str]) -> list[str]:
    names = auto_switches(cls)
    out: list[str] = []
    for i, arg in enumerate(argv):
        name = arg[2:].replace("_", "-") if arg.startswith("--") else ""
        if name in names and (i + 1 == len(argv) or argv[i + 1] not in AUTO_SWITCH_VALUES):
            out += [arg, "True"]
        elif name.startswith("no-") and name[3:] in names:
            out += [f"--{name[3:]}", "False"]
        else:
            out.append(arg)
    return out


def parse_args(cls: type[T], argv: list[str], prog: str, **kwargs: Any) -> T:
    """tyro.cli, with its multi-line error box turned into one PPOXError line (--help is untouched)."""
    captured = io.StringIO()
    argv = _expand_auto_switches(cls, argv)
    try:
        with contextlib.redirect_stderr(captured):
            parsed = tyro.cli(cls, args=argv, prog=prog, **kwargs)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise PPOXError(f"{_box_message(captured.getvalue())} (`{prog} --help` lists the flags)") from None
    sys.stderr.write(captured.getvalue())  # warnings from a successful parse still reach the user
    return parsed


def _box_message(text: str) -> str:
    """The first section of tyro's error box, as one line.

    rich draws the box with unicode lines on a terminal and with ASCII or none on a pipe, so the
    sections are found by their rules (runs of line characters), whatever draws them.
    """
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        content = line.strip().strip("│|╭╮╰╯+").strip()
        if re.search(r"[─━\-=]{4,}", content):  # a rule, maybe with the box title in it: a boundary
            sections.append([])
            continue
        if content:
            sections[-1].append(content)
    found = [" ".join(lines) for lines in sections if lines]
    if "│" not in text and len(found) > 1:  # without box lines the title stands on its own line first
        found = found[1:]
    return found[0] if found else (text.strip().splitlines() or ["invalid arguments"])[-1].strip()


_GLOB_CHARS = frozenset("*?[")


def expand_run_dirs(paths: tuple[str, ...] | list[str]) -> list[str]:
    """Run directories named directly or by a quoted glob; a glob that matches nothing is an error.

    The shell expands an unquoted `runs/CartPole-v1__1__*` to every match, so commands that take a
    run directory take several; quoting the pattern must give the same answer.
    """
    if not paths:
        raise PPOXError("give at least one run directory (or a quoted glob pattern)")
    dirs: list[str] = []
    for path in paths:
        if not Path(path).exists() and _GLOB_CHARS & set(path):
            matches = sorted(m for m in glob.glob(path) if Path(m).is_dir())
            if not matches:
                raise PPOXError(f"no run directory matches {path!r}")
            dirs.extend(matches)
        else:
            dirs.append(path)
    return list(dict.fromkeys(dirs))


def elastic_restart_run_dir(argv: list[str]) -> str | None:
    """The --run-dir to resume when torchrun restarted the worker group after a failure, else None."""
    import os

    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or "--resume" in argv:
        return None
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--run-dir=") else (
            argv[i + 1] if arg == "--run-dir" and i + 1 < len(argv) else None)
        if value is not None:
            from ppox.runs import list_checkpoints

            return value if list_checkpoints(value) else None
    return None


def print_summary(summary: dict, run_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ppox run {run_dir}", show_header=False)
    evaluated = summary.get("eval_return_mean") is not None
    for key in ("env_id", "seed", "total_timesteps", "wall_seconds", "sps", "eval_return_mean", "eval_return_std",
                "eval_episodes", "final_train_return_mean"):
        if key in ("eval_return_std", "eval_episodes") and not evaluated:
            continue
        table.add_row("sps (mean)" if key == "sps" else key, _summary_cell(summary, key))  # bar: last iteration
    Console().print(table)
    if summary.get("eval_return_mean") is not None:
        print(f"eval: mean return {summary['eval_return_mean']:.2f} +- {summary['eval_return_std']:.2f} over "
              f"{summary['eval_episodes']} episodes (deterministic)")


def _summary_cell(summary: dict, key: str) -> str:
    value = summary.get(key)
    if value is None:
        if key == "eval_return_mean":
            why = "interrupted: not evaluated" if summary.get("interrupted") else "not evaluated: --eval-episodes 0"
            return f"—  ({why})"
        if key == "final_train_return_mean":
            return "—  (no training episode finished)"
        return "—"
    return f"{value:.2f}" if isinstance(value, float) else str(value)

