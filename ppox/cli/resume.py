"""`--resume RUN_DIR` command lines: their parser (`ppox train`, `ppox llm train`, `ppox llm demo`) and
`ppox train --resume RUN_DIR`, which continues a gymnasium run from its latest checkpoint."""

from __future__ import annotations

import sys
from typing import Any

from ppox.cli.common import print_summary
from ppox.errors import PPOXError

RESUME_USAGE = "usage: ppox train --resume RUN_DIR [--total-timesteps N] [--no-progress]"


def parse_resume_args(argv: list[str], options: tuple[str, ...], flags: tuple[str, ...] = (),
                      usage: str = RESUME_USAGE) -> dict[str, str | bool]:
    """The arguments of a `--resume RUN_DIR` command line (`ppox train`, `ppox llm train`).

    Each of `options` takes a value (`--key VALUE` or `--key=VALUE`, `_` or `-` in the name), each
    of `flags` stands alone; anything else is an error showing `usage`, since a resumed run keeps its
    saved config. Returns {option or flag: value or True}, always with "--resume".
    """
    found: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        key, _, inline = argv[i].partition("=")
        key = "--" + key[2:].replace("_", "-") if key.startswith("--") else key
        if key in flags and not inline:
            found[key] = True
            i += 1
            continue
        if key not in options:
            raise PPOXError(f"--resume continues a run with its saved config; unexpected argument {argv[i]!r}. "
                            f"{usage}")
        value = inline or (argv[i + 1] if i + 1 < len(argv) else None)
        if value is None:
            raise PPOXError(f"{key} needs a value; {usage}")
        found[key] = value
        i += 1 if inline else 2
    if "--resume" not in found:
        raise PPOXError(usage)
    return found


def resume_main(argv: list[str]) -> int:
    """`ppox train --resume RUN_DIR`: continue RUN_DIR's run from its latest checkpoint."""
    from ppox.rl.ppo import PPO

    args = parse_resume_args(argv, ("--resume", "--total-timesteps"), ("--progress", "--no-progress"))
    run_dir = str(args["--resume"])
    overrides: dict[str, Any] = {}
    if "--progress" in args or "--no-progress" in args:
        overrides["progress"] = "--no-progress" not in args
    total: int | None = None
    if "--total-timesteps" in args:
        try:
            total = int(args["--total-timesteps"])
        except ValueError:
            raise PPOXError(f"--total-timesteps must be an integer, got {args['--total-timesteps']!r}") from None
    model = PPO.resume(run_dir, total_timesteps=total, **overrides)
    start = model.iteration
    print(f"resuming {run_dir} from iteration {start} (global step {model.global_step})", file=sys.stderr)
    model.learn()
    print_summary(model.summary, model.run_dir)
    if model.interrupted:
        print(f"interrupted: checkpoint of iteration {model.iteration} saved in {model.run_dir}",
              file=sys.stderr)
        return 130
    return 0

