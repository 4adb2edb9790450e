"""Per-iteration metrics to metrics.jsonl and TensorBoard (one write per iteration, no per-step sync)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True, append: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = open(self.path, "a" if append else "w")  # noqa: SIM115 (kept open for the run)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record["global_step"])
            for key, value in record.items():
                if key in ("global_step", "iteration") or value is None:
                    continue
                if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                    self._tb.add_scalar(_tb_tag(key), value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def _tb_tag(key: str) -> str:
    if key.startswith("episodic_"):
        return f"charts/{key}"
    if key in ("learning_rate", "sps", "kl_coef", "wall_time", "env_restarts", "skipped_updates"):
        return f"charts/{key}"
    return f"losses/{key}"
