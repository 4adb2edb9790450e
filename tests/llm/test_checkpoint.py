"""Checkpoints and resume of LLM runs: a resumed run equals an uninterrupted one, damage is reported."""

import json

import pytest
import torch

from ppox.errors import PPOXError
from ppox.llm.config import LLMPPOConfig
from ppox.llm.demo import tiny_gpt2
from ppox.llm.trainer import LLMPPOTrainer
from ppox.runs import checkpoint_dir, latest_checkpoint

from .conftest import PROMPTS

TIMING = {"gen_tokens_per_s", "gen_seconds", "update_tokens_per_s", "update_seconds", "step_seconds"}


def sevens(prompts, completions):
    return [c.count("7") / max(len(c), 1) for c in completions]


def fresh_model(tokenizer):
    torch.manual_seed(0)
    return tiny_gpt2(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=32)


def make(tokenizer, reward=sevens, **overrides) -> LLMPPOTrainer:
    cfg = LLMPPOConfig(
        batch_size=8, num_minibatches=2, max_new_tokens=5, learning_rate=3e-3, total_steps=4, checkpoint_every=2,
        kl_target=0.05, kl_horizon=64, tensorboard=False, torch_threads=2, seed=5,
    ).replace(**overrides)
    return LLMPPOTrainer(cfg, fresh_model(tokenizer), tokenizer, reward, PROMPTS * 2)


def metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def state(trainer) -> dict[str, torch.Tensor]:
    out = {f"policy.{k}": v for k, v in trainer.policy.state_dict().items()}
    out.update({f"critic.{k}": v for k, v in trainer.critic.state_dict().items()})
    for i, s in trainer.optimizer.state_dict()["state"].items():
        out.update({f"optim.{i}.{k}": v for k, v in s.items()})
    return out


class Crash(Exception):
    pass


def crashing_after(calls: int):
    """A reward function that dies on call `calls + 1`, like a process killed mid-step."""
    count = 0

    def reward(prompts, completions):
        nonlocal count
        count += 1
        if count > calls:
            raise Crash("killed")
        return sevens(prompts, completions)

    return reward


@pytest.mark.parametrize("lora", [0, 4])
def test_resumed_run_equals_uninterrupted_run(tokenizer, tmp_path, lora):
    if lora:
        pytest.importorskip("peft")
    straight = make(tokenizer, lora_r=lora)
    straight.learn(tmp_path / "straight")

    run = tmp_path / "run"
    with pytest.raises(Exception, match="killed"):  # dies in step 3, after the checkpoint of step 2
        make(tokenizer, reward=crashing_after(2), lora_r=lora).learn(run)
    assert latest_checkpoint(run).name == "ckpt_2"
    assert len(metrics(run)) == 2

    resumed = make(tokenizer, lora_r=lora)  # a new process: fresh model, fresh RNGs
    assert resumed.resume(run).name == "ckpt_2" and resumed.step_count == 2
    history = resumed.learn(run)
    assert [r["iteration"] for r in history] == [1, 2, 3, 4]

    a, b = state(straight), state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics(run) == metrics(tmp_path / "straight")
    # the adaptive controller moved and was restored
    assert resumed.kl_controller.coef == straight.kl_controller.coef != 0.05

    from safetensors.torch import load_file

    saved = load_file(latest_checkpoint(run) / "policy.safetensors")
    if lora:  # only the adapters: the frozen base is the model the run started from
        assert saved and all(".lora_" in k for k in saved)
    else:
        assert len(saved) == len(list(resumed.policy.parameters()))


def test_checkpoint_every_and_keep(tokenizer, tmp_path):
    trainer = make(tokenizer, total_steps=5, checkpoint_every=2, keep_checkpoints=2)
    trainer.learn(tmp_path)
    names = sorted(p.name for p in checkpoint_dir(tmp_path).iterdir())
    assert names == ["ckpt_4", "ckpt_5", "latest"]  # every 2 steps and at the end, the last 2 kept
    assert latest_checkpoint(tmp_path).name == "ckpt_5"


def test_kill_while_writing_keeps_the_previous_checkpoint(tokenizer, tmp_path, monkeypatch):
    import ppox.llm.checkpoint as ckpt_module

    real = ckpt_module.atomic_write_json
    writes = 0

    def dying_write(path, obj):
        nonlocal writes
        writes += 1
        if writes == 2:  # the second checkpoint dies just before its state.json lands
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(ckpt_module, "atomic_write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        make(tokenizer, checkpoint_every=1).learn(tmp_path)
    monkeypatch.setattr(ckpt_module, "atomic_write_json", real)
    assert latest_checkpoint(tmp_path).name == "ckpt_1"

    resumed = make(tokenizer, checkpoint_every=1)
    resumed.resume(tmp_path)
    assert resumed.step_count == 1
    resumed.learn(tmp_path)
    assert [r["iteration"] for r in metrics(tmp_path)] == [1, 2, 3, 4]
    leftovers = [p.name for p in checkpoint_dir(tmp_path).iterdir() if ".tmp-" in p.name]
    assert not leftovers


@pytest.mark.parametrize("damage", ["policy.safetensors", "trainer.safetensors", "state.json"])
def test_damaged_checkpoint_is_a_clear_error(tokenizer, tmp_path, damage):
    make(tokenizer, total_steps=1).learn(tmp_path)
    path = latest_checkpoint(tmp_path) / damage
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(PPOXError, match=damage.replace(".", r"\.")):
        make(tokenizer).resume(tmp_path)


def test_mismatched_or_missing_checkpoint_is_a_clear_error(tokenizer, tmp_path):
    with pytest.raises(PPOXError, match="does not exist"):
        make(tokenizer).resume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PPOXError, match="no checkpoint"):
        make(tokenizer).resume(tmp_path / "empty")
    make(tokenizer, total_steps=1).learn(tmp_path / "run")
    with pytest.raises(PPOXError, match="does not match"):
        make(tokenizer, critic="shared").resume(tmp_path / "run")


def test_cli_resume(tokenizer, tmp_path):
    from ppox.cli.llm import main

    fresh_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    run = tmp_path / "run"
    common = ["--model-path", str(tmp_path / "model"), "--batch-size", "8", "--num-minibatches", "2",
              "--max-new-tokens", "4", "--num-test", "8", "--torch-threads", "2", "--no-tensorboard"]
    assert main(["train", *common, "--total-steps", "2", "--run-dir", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--total-steps", "3"]) == 0
    assert [r["iteration"] for r in metrics(run)] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert main(["train", "--resume", str(run), "--learning-rate", "1"]) == 2  # the run's own config only
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2


def test_sigint_stops_after_the_step_with_a_checkpoint_and_resume_finishes(tokenizer, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from ppox.cli.llm import main
    from tests.rl.test_checkpoint import REPO, _wait_for_lines

    fresh_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    run, total = tmp_path / "run", 20
    cmd = [sys.executable, "-m", "ppox", "llm", "train", "--model-path", str(tmp_path / "model"), "--batch-size", "8",
           "--num-minibatches", "2", "--max-new-tokens", "4", "--num-test", "8", "--torch-threads", "1",
           "--no-tensorboard", "--checkpoint-every", "0", "--total-steps", str(total), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_lines(run, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "SIGINT: stopped after step" in err and f"ppox llm train --resume {run}" in err
    stopped = len(metrics(run))
    assert 1 <= stopped < total
    assert latest_checkpoint(run).name == f"ckpt_{stopped}"  # --checkpoint-every 0: written for the signal
    assert json.loads((run / "summary.json").read_text())["interrupted"]

    assert main(["train", "--resume", str(run)]) == 0
    assert [r["iteration"] for r in metrics(run)] == list(range(1, total + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == total and not summary["interrupted"]


def test_sigterm_in_process_stops_with_a_checkpoint_and_restores_the_handler(tokenizer, tmp_path):
    import os
    import signal

    calls = 0

    def reward(prompts, completions):
        nonlocal calls
        calls += 1
        if calls == 2:  # during step 2: the step finishes, then the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return sevens(prompts, completions)

    before = signal.getsignal(signal.SIGTERM)
    trainer = make(tokenizer, reward=reward, checkpoint_every=0)
    history = trainer.learn(tmp_path)
    assert trainer.interrupted and [r["iteration"] for r in history] == [1, 2]
    assert latest_checkpoint(tmp_path).name == "ckpt_2"
    assert signal.getsignal(signal.SIGTERM) is before


TINY_DEMO = ["--num-test", "8", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--sft-steps", "2",
             "--sft-batch-size", "8", "--torch-threads", "2", "--ppo.batch-size", "8", "--ppo.num-minibatches", "1",
             "--ppo.update-epochs", "1", "--ppo.max-new-tokens", "4", "--ppo.eval-every", "0",
             "--ppo.checkpoint-every", "0", "--ppo.no-tensorboard"]


def test_stopped_demo_continues_with_the_printed_command_and_with_demo_resume(tmp_path, monkeypatch, capfd):
    """Issue 12 item 2: the demo saved model_path null, so its printed resume command failed."""
    import shlex
    import signal

    from ppox.cli import main as ppox_main

    stop_after: set[int] = {1, 2}
    step = LLMPPOTrainer.step

    def step_then_stop(self, prompts=None):  # Ctrl-C arriving during a PPO step
        record = step(self, prompts)
        if self.step_count in stop_after:
            signal.raise_signal(signal.SIGTERM)
        return record

    monkeypatch.setattr(LLMPPOTrainer, "step", step_then_stop)
    run = tmp_path / "demo run"  # a space: the printed command must quote it
    assert ppox_main(["llm", "demo", "--run-dir", str(run), "--ppo.total-steps", "3", *TINY_DEMO]) == 130
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "loss_type" not in err  # issue 12 item 6: no transformers noise
    printed = err.split("continue with `")[1].split("`")[0]
    assert f"ppox llm demo --resume {run}" in err
    assert [r["iteration"] for r in metrics(run)] == [1]

    argv = shlex.split(printed)
    assert argv[:4] == ["ppox", "llm", "train", "--resume"]
    assert ppox_main(argv[1:]) == 130  # the printed command works (and is stopped again after step 2)
    assert [r["iteration"] for r in metrics(run)] == [1, 2]

    assert ppox_main(["llm", "demo", "--resume", str(run)]) == 0
    assert [r["iteration"] for r in metrics(run)] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ppo_steps"] == 3 and not summary["interrupted"]
    assert summary["accuracy_before"] == json.loads((run / "demo.json").read_text())["accuracy_before"]
    assert "accuracy_after" in summary and "Writing model shards" not in capfd.readouterr().err

    assert ppox_main(["llm", "demo", "--resume", str(tmp_path / "elsewhere")]) == 2
    assert ppox_main(["llm", "demo", "--resume", str(run), "--n-layer", "2"]) == 2


def test_quiet_transformers_restores_the_callers_settings():
    from transformers.utils import logging as hf_logging

    from ppox.llm.models import quiet_transformers

    hf_logging.set_verbosity_info()
    try:
        with quiet_transformers():
            assert hf_logging.get_verbosity() == hf_logging.ERROR and not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.INFO and hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity_warning()
