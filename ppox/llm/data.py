"""Prompt datasets: a list of strings, read from a file or made by a task, served in shuffled batches."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ppox.errors import PPOXError

DEFAULT_MAX_PROMPT_BYTES = 2**20  # when the model states no context length
BYTES_PER_TOKEN = 64  # generous: a prompt longer than context * 64 bytes cannot fit any real tokenizer's context


def max_prompt_bytes(context: int | None) -> int:
    """The longest prompt line worth tokenising for a model of `context` tokens (None: unknown)."""
    return DEFAULT_MAX_PROMPT_BYTES if context is None else context * BYTES_PER_TOKEN


def load_prompts(path: str | Path, max_bytes: int = DEFAULT_MAX_PROMPT_BYTES) -> list[str]:
    """Prompts from a .jsonl file (a 'prompt' field per line) or a text file (one prompt per line).

    Lines are read with a bound of `max_bytes` each, before any decoding or tokenising: a
    huge line (tokenisers need gigabytes for a few MB of text) or a binary file is refused with
    one error naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise PPOXError(f"prompt file {path} does not exist")
    prompts: list[str] = []
    with open(path, "rb") as f:
        n = 0
        while raw := f.readline(max_bytes + 2):  # + room for the line's own "\r\n"
            n += 1
            line_bytes = raw.rstrip(b"\r\n")
            if len(line_bytes) > max_bytes:
                raise PPOXError(f"{path}:{n} is longer than {max_bytes} bytes, more than any prompt that fits the "
                                "model's context: shorten or remove that line")
            if b"\0" in line_bytes:
                raise PPOXError(f"{path}:{n} contains a NUL byte: a prompt file must be UTF-8 text (binary file?)")
            try:
                line = line_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PPOXError(f"{path}:{n} is not UTF-8 text (byte {exc.start}): a prompt file must be UTF-8 "
                                "text (binary file?)") from None
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PPOXError(f"{path}:{n} is not valid JSON ({exc})") from None
                if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                    raise PPOXError(f"{path}:{n} has no string field 'prompt'")
                if "\0" in record["prompt"]:
                    raise PPOXError(f"{path}:{n}: the prompt contains a NUL character")
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


class PromptBatches:
    """Endless batches: a fresh shuffle per pass over the data (a small dataset repeats within a batch).

    Its state (the shuffle RNG and what is left of the current pass) goes into checkpoints, so a
    resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, prompts: Sequence[str], batch_size: int, seed: int) -> None:
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def __iter__(self) -> Iterator[list[str]]:
        return self

    def __next__(self) -> list[str]:
        batch = []
        while len(batch) < self.batch_size:
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            batch.append(self.prompts[self.order.pop()])
        return batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self.order), "num_prompts": len(self.prompts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_prompts"] != len(self.prompts):
            raise PPOXError(f"the checkpoint's prompt sampler saw {state['num_prompts']} prompts, this run has "
                            f"{len(self.prompts)}: resume with the same prompt dataset")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = [int(i) for i in state["order"]]
