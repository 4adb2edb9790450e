"""Where the benchmark scripts write their results: results/<name>.md (the table, command on top) and .json."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, lines: list[str], command: str, rows: list[dict]) -> None:
    """results/<name>.md from `lines`, results/<name>.json with the command and every run's row; prints the table."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"command": command, "runs": rows}, indent=1))
    print("\n".join(lines))
