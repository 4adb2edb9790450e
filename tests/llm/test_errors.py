"""Bad input fails early with a PPOXError that names the problem."""

import math

import pytest
from transformers import GPT2Config, GPT2ForSequenceClassification

from ppox.cli.llm import main
from ppox.errors import ConfigError, ModelFileError, PPOXError
from ppox.llm.config import LLMPPOConfig
from ppox.llm.data import load_prompts
from ppox.llm.demo import tiny_gpt2
from ppox.llm.models import load_policy
from ppox.llm.trainer import LLMPPOTrainer

from .conftest import PROMPTS, zero_reward


def trainer_for(model, tokenizer, reward=zero_reward, prompts=PROMPTS, **overrides):
    cfg = LLMPPOConfig(batch_size=4, num_minibatches=1, max_new_tokens=4, tensorboard=False).replace(**overrides)
    return LLMPPOTrainer(cfg, model, tokenizer, reward, prompts)


def test_prompt_longer_than_context(tokenizer):
    model = tiny_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=12)
    trainer = trainer_for(model, tokenizer, prompts=["123+456=", "1234567+1="], max_new_tokens=4)
    with pytest.raises(PPOXError, match="exceeds the model's context of 12 tokens"):
        trainer.rollout(["123+456=", "1234567+1="])


def test_empty_dataset(tiny_lm, tokenizer, tmp_path):
    with pytest.raises(PPOXError, match="empty"):
        trainer_for(tiny_lm, tokenizer, prompts=[])
    (tmp_path / "p.jsonl").write_text("\n")
    with pytest.raises(PPOXError, match="empty"):
        load_prompts(tmp_path / "p.jsonl")


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (lambda p, c: 1 / 0, "raised ZeroDivisionError"),
        (lambda p, c: [math.nan] * len(c), "non-finite reward"),
        (lambda p, c: [1.0, 2.0], "returned 2 rewards for 4 completions"),
        (lambda p, c: None, "must return a list of numbers"),
    ],
)
def test_bad_reward_function(tiny_lm, tokenizer, reward, message):
    trainer = trainer_for(tiny_lm, tokenizer, reward=reward)
    with pytest.raises(PPOXError, match=message):
        trainer.step(PROMPTS[:4])


def test_model_directory_that_is_not_a_causal_lm(tmp_path, tokenizer):
    config = GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2, num_labels=1)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "classifier")
    with pytest.raises(ModelFileError, match="not a causal language model"):
        load_policy(tmp_path / "classifier")
    with pytest.raises(ModelFileError, match=r"no config\.json"):
        load_policy(tmp_path)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_policy(tmp_path / "missing")


def test_config_validation():
    with pytest.raises(ConfigError, match="num_minibatches"):
        LLMPPOConfig(batch_size=10, num_minibatches=3)
    with pytest.raises(ConfigError, match="clip_coef"):
        LLMPPOConfig(clip_coef=1.5)
    with pytest.raises(ConfigError, match="top_p"):
        LLMPPOConfig(top_p=0.0)


def test_cli_reports_errors_on_one_line(tmp_path, capsys):
    assert main(["train", "--model-path", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model directory") and "\n" not in err
    assert main(["train"]) == 2
    assert "--model-path is required" in capsys.readouterr().err
    assert main(["train", "--batch-size", "10", "--num-minibatches", "3"]) == 2
    assert "num_minibatches" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["train", "--help"]) == 0
    assert "--kl-penalty" in capsys.readouterr().out
