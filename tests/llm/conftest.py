import os

os.environ["HF_HUB_OFFLINE"] = "1"  # build everything locally; never reach the network

import pytest
import torch

from ppox.llm.demo import tiny_gpt2
from ppox.llm.tasks import char_tokenizer

torch.set_num_threads(2)

# Prompts of different lengths, so that left padding differs from row to row.
PROMPTS = ["1+2=", "12+345=", "7-8=", "100-99=", "5+5=", "321+1=", "9-10=", "44+4="]


@pytest.fixture
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def tiny_lm(tokenizer):
    torch.manual_seed(0)
    return tiny_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=32)


def zero_reward(prompts, completions):
    return [0.0] * len(completions)


def length_reward(prompts, completions):
    return [float(len(c)) for c in completions]
