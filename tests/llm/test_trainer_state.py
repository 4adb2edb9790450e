"""LLMPPOTrainer's public state API and the deprecated train() name."""

import pytest
import torch

import ppox.llm.trainer as trainer_module
from ppox.llm.config import LLMPPOConfig
from ppox.llm.trainer import LLMPPOTrainer

from .conftest import PROMPTS, length_reward


def _trainer(tiny_lm, tokenizer, **kw):
    cfg = LLMPPOConfig(batch_size=4, num_minibatches=2, max_new_tokens=4, total_steps=1, tensorboard=False, **kw)
    return LLMPPOTrainer(cfg, tiny_lm, tokenizer, length_reward, PROMPTS)


def test_state_dict_round_trips_counters_and_random_streams(tiny_lm, tokenizer):
    trainer = _trainer(tiny_lm, tokenizer)
    trainer.step()
    state = trainer.state_dict()
    expected_noise = torch.rand(3)
    trainer.step()
    trainer.load_state_dict(state)
    assert trainer.step_count == 1 and trainer.global_step == 4
    assert trainer.state_dict()["rng"]["prompts"] == state["rng"]["prompts"]
    assert torch.equal(torch.rand(3), expected_noise)


def test_train_is_a_deprecated_alias_of_learn(tiny_lm, tokenizer, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "_train_warned", False)
    trainer = _trainer(tiny_lm, tokenizer)
    with pytest.warns(DeprecationWarning, match="renamed learn"):
        history = trainer.train(tmp_path / "run")
    assert len(history) == 1 and (tmp_path / "run" / "policy").is_dir()
    assert "deprecated: call learn()" in capsys.readouterr().err
    assert not hasattr(trainer, "kl_ctl") and trainer.kl_controller.coef > 0
