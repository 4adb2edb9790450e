"""ppox.logger: metrics.jsonl and TensorBoard carry the same values."""

from __future__ import annotations

import json

import numpy as np

from ppox.logger import MetricsLogger, _tb_tag


def test_tensorboard_holds_every_logged_scalar_at_its_step(tmp_path):
    """An iteration's scalars go to TensorBoard as one event (not one per value): every number of every record
    is there under its tag at the record's global_step, as float32 like add_scalar writes it; None and NaN are
    left out, as before."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [{"iteration": i, "global_step": 512 * i, "policy_loss": 0.1 * i - 0.25, "sps": 1234.5 + i,
                "episodes": i, "episodic_return_mean": None if i == 1 else 20.0 * i, "approx_kl": float("nan"),
                "learning_rate": 2.5e-4 * (1 - i / 4), "eval_return_mean": float("inf")} for i in range(1, 4)]
    logger = MetricsLogger(tmp_path, tensorboard=True)
    for record in records:
        logger.log(record)
    logger.close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == json.loads(
        json.dumps(records))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("iteration", "global_step") and value is not None and not np.isnan(value):
                expected.setdefault(_tb_tag(key), []).append((record["global_step"], float(np.float32(value))))
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == points, tag
