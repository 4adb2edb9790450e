"""`ppox llm train` under torchrun: 2 gloo processes, one policy; and the same run with --fsdp."""

import json
import os
import subprocess

import pytest
import torch

from .test_torchrun import TORCHRUN, env

STEPS, BATCH = 2, 8


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from ppox.llm.demo import tiny_gpt2
    from ppox.llm.tasks import char_tokenizer

    path = tmp_path_factory.mktemp("llm") / "model"
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = tiny_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_on_two_processes(model_path, run_dir, *flags: str) -> None:
    cmd = [*TORCHRUN, "-m", "ppox", "llm", "train", "--model-path", str(model_path), "--task", "arithmetic",
           "--total-steps", str(STEPS), "--batch-size", str(BATCH), "--num-minibatches", "2",
           "--max-new-tokens", "4", "--num-test", "8", "--reward", "partial", "--learning-rate", "1e-3",
           "--torch-threads", "1", "--run-dir", str(run_dir), "--no-tensorboard", *flags]
    proc = subprocess.run(cmd, env={**env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(tiny_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "run"
    train_on_two_processes(tiny_model, run)
    return run


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_llm_training_on_two_processes_keeps_weights_identical(ddp_run):
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_identical_across_ranks"]
    assert summary["completions"] == STEPS * 2 * BATCH  # steps x ranks x batch
    assert len(records(ddp_run)) == STEPS
    assert (ddp_run / "policy" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_training_matches_the_ddp_run_and_saves_full_weights(tiny_model, ddp_run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "fsdp"
    train_on_two_processes(tiny_model, run, "--fsdp")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["completions"] == STEPS * 2 * BATCH

    # same seeds, same data: every logged statistic of every step matches the unsharded run
    for fsdp_rec, ddp_rec in zip(records(run), records(ddp_run), strict=True):
        for key in ("reward_mean", "kl_ref", "policy_loss", "value_loss", "approx_kl", "clipfrac", "entropy",
                    "response_len_mean", "eval_accuracy"):
            if key in ddp_rec:
                assert fsdp_rec[key] == pytest.approx(ddp_rec[key], rel=1e-4, abs=1e-6), key

    # the saved policy is the full model, loadable by plain transformers, and equal to the DDP result
    model = AutoModelForCausalLM.from_pretrained(run / "policy", local_files_only=True)
    reference = AutoModelForCausalLM.from_pretrained(ddp_run / "policy", local_files_only=True)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    state, ref_state = model.state_dict(), reference.state_dict()
    assert state.keys() == ref_state.keys()
    for name, tensor in state.items():
        assert tensor.shape == ref_state[name].shape, name
        assert torch.allclose(tensor, ref_state[name], atol=1e-5), name
    assert not all(torch.equal(t, initial.state_dict()[n]) for n, t in state.items())  # it did train
    critic, ref_critic = load_file(run / "critic.safetensors"), load_file(ddp_run / "critic.safetensors")
    assert critic.keys() == ref_critic.keys()
    for name, tensor in critic.items():
        assert torch.allclose(tensor, ref_critic[name], atol=1e-5), name


def test_fsdp_needs_a_torchrun_launch_and_no_lora(tiny_model, monkeypatch):
    from ppox.errors import ConfigError
    from ppox.llm import LLMPPOConfig, LLMPPOTrainer
    from ppox.llm.models import load_policy

    with pytest.raises(ConfigError, match="LoRA"):
        LLMPPOConfig(fsdp=True, lora_r=8)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model, tokenizer = load_policy(tiny_model)
    with pytest.raises(ConfigError, match="torchrun"):
        LLMPPOTrainer(LLMPPOConfig(fsdp=True, batch_size=4, num_minibatches=1), model, tokenizer,
                      lambda p, c: [0.0] * len(p), ["1+1="])
