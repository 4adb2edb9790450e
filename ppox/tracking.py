"""Experiment tracking with Weights & Biases, through wandb's own client (imported only when a run asks for it).

The logger (ppox.logger) sends W&B the same scalars it writes to TensorBoard, under the same tags; the run
context opens the W&B run with the run's config and closes it with summary.json. The W&B run id is kept in
RUN_DIR/wandb.json, so a resumed run and `ppox eval --video` (its videos) log into the same W&B run.
WANDB_MODE=offline logs to files (wandb's `sync` uploads them later).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ppox.errors import PPOXError
from ppox.io import atomic_write_json, read_json

RUN_ID_FILE = "wandb.json"


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise PPOXError("--wandb needs the wandb client: pip install 'ppox[wandb]'") from None
    return wandb


class WandbRun:
    """One W&B run for a ppox run directory: opened (or resumed by the id in RUN_DIR/wandb.json) at
    construction; log(), finish(summary)."""

    def __init__(self, run_dir: str | Path, settings: dict[str, Any], config: dict[str, Any] | None = None,
                 resume: bool = False) -> None:
        wandb = _import_wandb()
        self.run_dir = Path(run_dir)
        saved = self.run_dir / RUN_ID_FILE
        run_id = read_json(saved).get("id") if resume and saved.is_file() else None
        try:
            self._run = wandb.init(
                project=settings.get("project"), entity=settings.get("entity"),
                name=settings.get("name") or self.run_dir.name, tags=list(settings.get("tags") or []),
                config=config, dir=None, id=run_id, resume="allow" if run_id else None,
                reinit="create_new",
            )
        except Exception as exc:  # no login, no network (use WANDB_MODE=offline), ...
            raise PPOXError(f"could not start the W&B run: {type(exc).__name__}: {exc}") from None
        atomic_write_json(saved, {"id": self._run.id, "project": self._run.project})

    def log(self, scalars: dict[str, float], step: int) -> None:
        self._run.log(scalars, step=step)

    def log_videos(self, paths: Iterable[str | Path]) -> None:
        wandb = _import_wandb()
        self._run.log({f"videos/{Path(p).stem}": wandb.Video(str(p)) for p in paths})

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """Record the summary (numbers and strings) and close the run; idempotent."""
        run, self._run = getattr(self, "_run", None), None
        if run is None:
            return
        if summary:
            for key, value in summary.items():
                if isinstance(value, int | float | str | bool):
                    run.summary[key] = value
        try:
            run.finish()
        except Exception as exc:  # closing never masks the run's own outcome, but is never silent either
            print(f"warning: could not close the W&B run ({type(exc).__name__}: {str(exc)[:200]}); its records may "
                  "be incomplete", file=sys.stderr, flush=True)


def log_videos(run_dir: str | Path, settings: dict[str, Any], paths: list[Path]) -> None:
    """Add `ppox eval --video`'s files to the W&B run of `run_dir` (resumed by its id)."""
    run = WandbRun(run_dir, settings, resume=True)
    try:
        run.log_videos(paths)
    finally:
        run.finish()
