"""ppox.run_context: the run bookkeeping both trainers share."""

from __future__ import annotations

import json

import pytest
import torch

from ppox.distributed import Collective
from ppox.io import RunDirBusyError, RunDirError, RunDirLock
from ppox.run_context import RunContext, WeightGuard, hold_run_dir, mean_over_ranks, weight_hashes

SINGLE = Collective()


def _context(run_dir, **kwargs):
    lock = hold_run_dir(None, run_dir)
    return RunContext(run_dir, SINGLE, lock, fresh=True, config={"seed": 1}, tensorboard=False, **kwargs)


def test_run_context_writes_config_and_metrics_and_holds_the_lock_until_released(tmp_path):
    run = _context(tmp_path / "run")
    with run:
        run.log({"iteration": 1, "global_step": 8})
        with pytest.raises(RunDirBusyError):
            RunDirLock(tmp_path / "run").acquire()
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"seed": 1}
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text()) == {"iteration": 1, "global_step": 8}
    run.release()
    RunDirLock(tmp_path / "run").acquire().release()


def test_a_second_signal_marks_the_run_interrupted_and_calls_on_exit(tmp_path):
    ended = []
    run = _context(tmp_path / "run", on_exit=lambda: ended.append(True))
    with run:
        raise KeyboardInterrupt
    assert run.interrupted and ended == [True]
    run.release()


def test_an_error_releases_the_lock_and_a_run_dir_error_says_how_to_resume(tmp_path):
    run = _context(tmp_path / "run", resume_command="ppox train --resume")
    (tmp_path / "run" / "checkpoints" / "ckpt_1").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "ckpt_1" / "state.json").write_text("{}")
    with pytest.raises(RunDirError, match="continue with `ppox train --resume"), run:
        raise RunDirError("disk full")
    RunDirLock(tmp_path / "run").acquire().release()  # released


def test_without_catch_interrupt_a_second_signal_propagates_and_releases(tmp_path):
    run = _context(tmp_path / "run", catch_interrupt=False)
    with pytest.raises(KeyboardInterrupt), run:
        raise KeyboardInterrupt
    RunDirLock(tmp_path / "run").acquire().release()


def test_checkpoint_due_after_the_last_and_every_kth_iteration(tmp_path):
    run = _context(tmp_path / "run", checkpoint_every=3)
    assert [i for i in range(1, 8) if run.checkpoint_due(i, last=7)] == [3, 6, 7]
    run.release()


def test_weight_guard_restores_the_last_finite_weights():
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(layer.parameters())
    guard = WeightGuard(layer.parameters(), optimizer)
    guard.save()
    saved = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.fill_(float("nan"))
    assert not guard.finite()
    guard.restore()
    assert guard.finite() and torch.equal(layer.weight, saved)


def test_single_process_helpers_are_identities():
    assert mean_over_ranks(SINGLE, {"a": 1.5, "name": "x"}) == {"a": 1.5, "name": "x"}
    assert len(weight_hashes(SINGLE, torch.nn.Linear(2, 2))) == 1
