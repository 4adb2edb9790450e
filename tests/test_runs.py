"""ppox.runs: the checkpoint-directory protocol both trainers share."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from ppox import runs
from ppox.errors import ModelFileError


def _complete(run_dir, iteration: int):
    tmp = runs.begin_checkpoint(run_dir, f"ckpt_{iteration}")
    (tmp / "state.json").write_text("{}")
    return tmp


def test_publish_points_latest_at_the_newest_and_prunes_to_keep_last(tmp_path):
    for i in (1, 2, 3):
        runs.publish_checkpoint(_complete(tmp_path, i), f"ckpt_{i}", keep_last=2)
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["ckpt_2", "ckpt_3"]
    assert runs.latest_checkpoint(tmp_path).name == "ckpt_3"
    assert (runs.checkpoint_dir(tmp_path) / runs.LATEST).read_text() == "ckpt_3\n"


def test_a_damaged_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    runs.publish_checkpoint(_complete(tmp_path, 4), "ckpt_4", keep_last=3)
    (runs.checkpoint_dir(tmp_path) / runs.LATEST).write_bytes(b"\xff\xfe")
    latest, problem = runs.read_latest(tmp_path)
    assert latest is None and problem == "is not text"
    assert runs.latest_checkpoint(tmp_path).name == "ckpt_4"


def test_find_checkpoint_names_what_is_missing(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        runs.find_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ModelFileError, match="holds no checkpoint"):
        runs.find_checkpoint(tmp_path)


def test_clear_checkpoints_keeps_foreign_files(tmp_path):
    runs.publish_checkpoint(_complete(tmp_path, 1), "ckpt_1", keep_last=3)
    (runs.checkpoint_dir(tmp_path) / "ckpt_1" / "notes.txt").write_text("mine")
    runs.clear_checkpoints(tmp_path)
    assert (runs.checkpoint_dir(tmp_path) / "ckpt_1" / "notes.txt").read_text() == "mine"
    assert not (runs.checkpoint_dir(tmp_path) / runs.LATEST).exists()


def test_discard_after_drops_later_metrics_and_checkpoints(tmp_path):
    for i in (1, 2, 3):
        runs.publish_checkpoint(_complete(tmp_path, i), f"ckpt_{i}", keep_last=5)
    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"iteration": {i}, "global_step": {10 * i}}}\n'
                                                    for i in (1, 2, 3)) + '{"iteration": 4, "glo')
    runs.discard_after(tmp_path, 2)
    assert runs.metrics_index(tmp_path) == {1: 10, 2: 20}
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["ckpt_1", "ckpt_2"]


def test_optimizer_state_round_trips_through_tensors_and_json():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    tensors: dict[str, torch.Tensor] = {}
    flat = runs.flatten_optimizer(optimizer.state_dict(), tensors)
    restored = runs.unflatten_optimizer(flat, tensors)
    assert restored["param_groups"][0]["betas"] == optimizer.state_dict()["param_groups"][0]["betas"]
    assert torch.equal(restored["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_stop_signals_flag_the_first_signal_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with runs.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before
