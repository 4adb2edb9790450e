"""The arithmetic task of the offline demo: a character-level tokenizer, problems, and rewards.

Problems are "a+b=" or "a-b=" with 1-3 digit operands; the completion is the decimal result
followed by the end-of-sequence token, e.g. prompt "12+345=" -> completion "357<eos>".
The tokenizer is a `tokenizers` word-level model over single characters wrapped in a
PreTrainedTokenizerFast, so `save_pretrained` writes a tokenizer.json that plain
`transformers.AutoTokenizer.from_pretrained` reloads.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

import torch

from ppox.errors import PPOXError
from ppox.llm.rollout import sample, tokenize_prompts

PAD, EOS = "<pad>", "<eos>"
ARITHMETIC_CHARS = "0123456789+-="
_PROBLEM = re.compile(r"^\s*(-?\d+)\s*([+-])\s*(-?\d+)\s*=\s*$")


def char_tokenizer(chars: str = ARITHMETIC_CHARS):
    """A character-level PreTrainedTokenizerFast: ids 0 = <pad>, 1 = <eos>, then one id per char.

    Prompts are left-padded (generation appends to the right end of every row).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # every character is a token
    backend.decoder = decoders.Fuse()  # decode without spaces between characters
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, padding_side="left")


@dataclass(frozen=True)
class Problem:
    prompt: str  # "12+345="
    answer: str  # "357"


def make_problem(rng: random.Random) -> Problem:
    """One problem: each operand has 1, 2 or 3 digits (equally likely), the operator is + or -."""

    def operand() -> int:
        digits = rng.randint(1, 3)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    a, b = operand(), operand()
    op = rng.choice("+-")
    return Problem(f"{a}{op}{b}=", str(a + b if op == "+" else a - b))


def arithmetic_splits(num_test: int, num_train: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, test) problem lists; no test prompt ever appears in the training split."""
    rng = random.Random(seed)
    test: dict[str, Problem] = {}
    while len(test) < num_test:
        p = make_problem(rng)
        test[p.prompt] = p
    train: list[Problem] = []
    while len(train) < num_train:
        p = make_problem(rng)
        if p.prompt not in test:
            train.append(p)
    return train, list(test.values())


def solve(prompt: str) -> str:
    """The correct answer of an arithmetic prompt (the reward needs no lookup table)."""
    m = _PROBLEM.match(prompt)
    if m is None:
        raise PPOXError(f"not an arithmetic prompt: {prompt!r} (expected e.g. '12+345=')")
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b)


def exact_match_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """1.0 when the completion (stripped) equals the answer, else 0.0."""
    return [float(c.strip() == solve(p)) for p, c in zip(prompts, completions, strict=True)]


def partial_credit_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Shaped reward in [0, 1]: 1 for an exact match, else the share of answer characters right.

    Characters are compared right-aligned (units with units, tens with tens) and divided by the
    longer of answer and completion, so padding an answer with junk never pays; capped at 0.5
    for a wrong answer so that exact matches always stand out.
    """
    rewards = []
    for p, c in zip(prompts, completions, strict=True):
        answer, c = solve(p), c.strip()
        if c == answer:
            rewards.append(1.0)
            continue
        same = sum(x == y for x, y in zip(reversed(answer), reversed(c), strict=False))
        rewards.append(0.5 * same / max(len(answer), len(c), 1))
    return rewards


REWARDS = {"exact": exact_match_reward, "partial": partial_credit_reward}


@torch.no_grad()
def greedy_accuracy(model, tokenizer, problems: list[Problem], max_new_tokens: int = 6,
                    batch_size: int = 250) -> tuple[float, float]:
    """(exact-match accuracy of greedy completions, generated tokens per second)."""
    model.eval()
    correct, tokens, seconds = 0.0, 0, 0.0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        prompts = [p.prompt for p in chunk]
        ids, mask = tokenize_prompts(tokenizer, prompts, max_new_tokens, None, model.device)
        t0 = time.perf_counter()
        responses = sample(model, ids, mask, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           do_sample=False)
        seconds += time.perf_counter() - t0
        tokens += int((responses != tokenizer.pad_token_id).sum())
        completions = tokenizer.batch_decode(responses, skip_special_tokens=True)
        correct += sum(exact_match_reward(prompts, completions))
    return correct / len(problems), tokens / max(seconds, 1e-9)
