"""Prompt datasets: a list of strings, read from a file or made by a task, served in shuffled batches."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from ppox.errors import PPOXError


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (a 'prompt' field per line) or a text file (one prompt per line)."""
    path = Path(path)
    if not path.is_file():
        raise PPOXError(f"prompt file {path} does not exist")
    prompts: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PPOXError(f"{path}:{n} is not valid JSON ({exc})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise PPOXError(f"{path}:{n} has no string field 'prompt'")
            prompts.append(record["prompt"])
        else:
            prompts.append(line)
    return check_prompts(prompts, str(path))


def check_prompts(prompts: Sequence[str], source: str = "the prompt dataset") -> list[str]:
    prompts = list(prompts)
    if not prompts:
        raise PPOXError(f"{source} is empty: PPO needs at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise PPOXError(f"prompt {i} of {source} is not a non-empty string: {p!r}")
    return prompts


def prompt_batches(prompts: Sequence[str], batch_size: int, seed: int) -> Iterator[list[str]]:
    """Endless batches: a fresh shuffle per pass over the data (a small dataset repeats within a batch)."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(len(prompts)))
                rng.shuffle(order)
            batch.append(prompts[order.pop()])
        yield batch
