"""The bookkeeping around a training run, shared by both trainers (ppox.rl.ppo.PPO, ppox.llm.trainer.LLMPPOTrainer).

A trainer's learn() keeps only its algorithm (collect -> advantages -> update -> log); everything a run needs
around it lives here: the run directory's lock, config.json, metrics.jsonl, stop signals and their agreement
across ranks, the checkpoint cadence, the progress bar, the live doctor, the last finite weights, the statistics
and weight hashes of all ranks. With torchrun, rank 0 alone touches the run directory.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppox.distributed import Collective, parameter_hash
from ppox.errors import PPOXError
from ppox.io import RunDirError, RunDirLock, all_finite, atomic_write_json
from ppox.logger import MetricsLogger
from ppox.runs import StopSignals, clean_stale, clear_checkpoints, list_checkpoints


def hold_run_dir(lock: RunDirLock | None, run_dir: Path) -> RunDirLock:
    """`lock` if it already holds `run_dir`, else a new lock on it (`lock` released): one process per run
    directory, so a second run or --resume into it stops with one line (RunDirBusyError). Creates the
    directory; refuses symlinks."""
    if lock is not None and lock.held and lock.run_dir.resolve() == run_dir.resolve():
        return lock
    if lock is not None:
        lock.release()
    return RunDirLock(run_dir).acquire()


def stop_requested(stop: StopSignals, collective: Collective) -> str | None:
    """The signal seen here or (torchrun) on any rank, else None: one all-reduced flag, so all ranks stop together."""
    if not collective.enabled:
        return stop.requested
    if collective.sum_(torch.tensor([float(stop.requested is not None)]))[0] > 0:
        return stop.requested or "stop requested on another rank"
    return None


def mean_over_ranks(collective: Collective, stats: dict[str, Any]) -> dict[str, Any]:
    """`stats` with every number averaged over the ranks (one all-reduce); other values as they are."""
    keys = sorted(k for k, v in stats.items() if isinstance(v, int | float))
    values = collective.mean_(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64))
    return {**stats, **dict(zip(keys, values.tolist(), strict=True))}


def weight_hashes(collective: Collective, module: torch.nn.Module) -> list[str]:
    """Every rank's parameter hash, in rank order: all equal means bit-identical weights everywhere."""
    return [str(h) for h in collective.gather_objects(parameter_hash(module))]


class WeightGuard:
    """The weights and optimizer state at the last iteration boundary, to fall back on when an update
    makes the weights non-finite: a checkpoint or model file then holds the last finite ones.

    save() copies into buffers allocated once (a few tensor copies per iteration); finite() is one
    reduction per parameter tensor.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        self.params = list(params)
        self.optimizer = optimizer
        self._params: list[torch.Tensor] | None = None
        self._optim: dict[torch.Tensor, dict[str, Any]] = {}
        self._optim_layout: list[tuple] | None = None  # what `_optim` holds copies of

    def save(self) -> None:
        with torch.no_grad():
            if self._params is None:
                self._params = [p.detach().clone() for p in self.params]
            else:
                torch._foreach_copy_(self._params, [p.detach() for p in self.params])
            # the optimizer's state into the copies of the last save where its layout is unchanged (one batched
            # copy: on a GPU, a few launches instead of one clone per tensor), else new copies
            layout = [(id(p), k, v.shape, v.dtype, v.device) if isinstance(v, torch.Tensor) else (id(p), k, v)
                      for p, st in self.optimizer.state.items() for k, v in st.items()]
            if layout == self._optim_layout:
                def tensors(state: dict) -> list[torch.Tensor]:
                    return [v for st in state.values() for v in st.values() if isinstance(v, torch.Tensor)]

                saved = tensors(self._optim)
                if saved:
                    torch._foreach_copy_(saved, tensors(self.optimizer.state))
                return
            self._optim_layout = layout
            self._optim = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                           for p, st in self.optimizer.state.items()}

    def finite(self) -> bool:
        return all_finite(self.params)

    def restore(self) -> None:
        if self._params is None:
            return
        with torch.no_grad():
            for saved, p in zip(self._params, self.params, strict=True):
                p.copy_(saved)
        self.optimizer.state.clear()
        for p, st in self._optim.items():
            self.optimizer.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}


def rounding_note(total_timesteps: int, steps_per_iteration: int) -> str | None:
    """The one-line note that training runs whole iterations, so not exactly `total_timesteps` steps
    (None when it does): learn runs max(1, total // steps_per_iteration) iterations."""
    iterations = max(1, total_timesteps // steps_per_iteration)
    actual = iterations * steps_per_iteration
    if actual == total_timesteps:
        return None
    direction = "down" if actual < total_timesteps else "up"
    s = "" if iterations == 1 else "s"
    return (f"note: total_timesteps {total_timesteps:,} is rounded {direction} to {actual:,} = {iterations:,} "
            f"iteration{s} × {steps_per_iteration:,} steps per iteration")


class Progress:
    """A rich progress bar with steps, SPS and recent mean return; silent when disabled.

    The bar's SPS is the last iteration's (it follows speed changes); summary.json's sps is the mean
    over the run, so the two are labelled differently.
    """

    def __init__(self, enabled: bool, total: int, env_id: str | None, note: str | None = None) -> None:
        self.enabled = enabled
        self._progress = None
        self._note = note
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            from rich.table import Column

            def whole() -> Column:  # never cut: on a narrow terminal the bar gives way (else "6144/184…")
                return Column(no_wrap=True)

            self._progress = Progress(
                TextColumn(f"[bold]{env_id}", table_column=whole()),
                BarColumn(bar_width=None, table_column=Column(ratio=1)),
                MofNCompleteColumn(table_column=whole()), TextColumn("steps", table_column=whole()),
                TextColumn("{task.fields[sps]} SPS (last iter)", table_column=whole()),
                TextColumn("return {task.fields[ret]}", table_column=whole()),
                TimeRemainingColumn(table_column=whole()), transient=False,
            )
            self._task = self._progress.add_task("train", total=total, sps="-", ret="-")

    def __enter__(self):
        if self._note:  # before the bar starts, so it is not redrawn over
            print(self._note, file=sys.stderr)
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False

    def print(self, line: str) -> None:
        """A line above the bar (stderr when there is no bar)."""
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr)

    def update(self, global_step: int, record: dict, recent_returns) -> None:
        if self._progress is None:
            return
        ret = f"{np.mean(recent_returns):.1f}" if recent_returns else "-"
        self._progress.update(self._task, completed=global_step, sps=f"{record['sps']:.0f}", ret=ret)


class RunContext:
    """One learn() call's bookkeeping, as a context manager around the training loop.

    Construction (rank 0): takes over `lock` (the run directory's, see hold_run_dir), clears an earlier run's
    checkpoints (`fresh`), removes killed writers' leftovers, writes config.json, opens metrics.jsonl
    (appending unless `fresh`). Entering catches SIGINT/SIGTERM and draws the progress bar. Inside:
    log(record), stop_requested(), checkpoint_due(i, last). Exit: the logger closed, bar and handlers
    restored, then `on_exit()` (the trainer saves what the run has so far); an error releases the lock (the
    error's message gains how to resume when it is a RunDirError and a checkpoint is on disk), and a
    KeyboardInterrupt (a second signal) marks the run interrupted and, with `catch_interrupt`, ends the
    loop quietly. Otherwise release() frees the lock once the trainer wrote its summary.
    """

    def __init__(self, run_dir: Path, collective: Collective, lock: RunDirLock | None, *, fresh: bool,
                 config: dict[str, Any], tensorboard: bool, checkpoint_every: int = 0,
                 resume_command: str = "ppox train --resume", progress: Progress | None = None,
                 doctor: Any = None, doctor_every: int = 1, on_exit: Callable[[], None] | None = None,
                 catch_interrupt: bool = True, wandb: dict[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.collective = collective
        self.is_main = collective.is_main
        self.lock = lock
        self.checkpoint_every = checkpoint_every
        self.resume_command = resume_command
        self.progress = progress if progress is not None else Progress(False, 0, None)
        self.doctor = doctor  # ppox.diagnostics.doctor.LiveDoctor, rank 0 only
        self.doctor_every = doctor_every
        self.on_exit = on_exit
        self.catch_interrupt = catch_interrupt
        self.stop = StopSignals()
        self.interrupted = False
        self.logger: MetricsLogger | None = None
        try:
            if self.is_main:
                if fresh:  # an --overwrite run drops the old run's checkpoints: they would shadow ours
                    clear_checkpoints(run_dir)
                clean_stale(run_dir)
                atomic_write_json(run_dir / "config.json", config)
                self.logger = MetricsLogger(run_dir, tensorboard, append=not fresh, wandb=wandb, config=config)
        except BaseException:
            self.release()
            raise

    def __enter__(self) -> RunContext:
        self.progress.__enter__()
        self.stop.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        caught = self.catch_interrupt and exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        failed = exc_type is not None and not caught
        self.interrupted = self.interrupted or caught
        try:
            self.stop.__exit__(exc_type, exc, tb)
            self.progress.__exit__(exc_type, exc, tb)
            if self.logger is not None:
                with contextlib.suppress(OSError):
                    self.logger.close()
            if self.on_exit is not None:
                self.on_exit()
        except PPOXError:
            if not failed:  # else the error already on its way says what went wrong
                failed = True
                raise
        except BaseException:
            failed = True
            raise
        finally:
            if failed:
                self.release()
        if exc_type is not None and issubclass(exc_type, RunDirError):  # disk full, ...: say how to go on
            intact = self.is_main and list_checkpoints(self.run_dir)
            hint = f"; continue with `{self.resume_command} {self.run_dir}`" if intact else ""
            raise RunDirError(f"{exc}{hint}") from None
        return caught

    def log(self, record: dict[str, Any], final: bool = False, recent_returns: Any = None) -> None:
        """One record to metrics.jsonl and TensorBoard, the live doctor (every doctor_every-th and the final
        record) and the progress bar."""
        if self.logger is not None:
            self.logger.log(record)
        if self.doctor is not None:
            check = record["iteration"] % self.doctor_every == 0 or final
            for line in self.doctor.update(record, check=check):
                self.progress.print(line)
        self.progress.update(record["global_step"], record, recent_returns)

    def stop_requested(self) -> str | None:
        """SIGINT/SIGTERM seen here or on any rank (see stop_requested)."""
        return stop_requested(self.stop, self.collective)

    def any_rank(self, flag: bool) -> bool:
        """`flag` true here or (torchrun) on any rank: one all-reduced flag, so all ranks act alike."""
        if not self.collective.enabled:
            return flag
        return bool(self.collective.sum_(torch.tensor([float(flag)]))[0] > 0)

    def checkpoint_due(self, iteration: int, last: int) -> bool:
        """A checkpoint after the last iteration and every checkpoint_every-th one."""
        return iteration == last or bool(self.checkpoint_every and iteration % self.checkpoint_every == 0)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        if self.logger is not None:
            self.logger.finish(summary)

    def release(self) -> None:
        """Close the W&B run if one is open and free the run directory's lock (idempotent)."""
        if self.logger is not None:
            self.logger.finish()
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.release()
