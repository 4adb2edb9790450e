"""`ppox llm train --resume` under torchrun: rank 0 writes the checkpoint, both ranks load it, and the
resumed run equals an uninterrupted one (every rank's RNG state is in the checkpoint)."""

import json
import os
import subprocess

import pytest
import torch

from .test_torchrun import TORCHRUN, env

TIMING = {"gen_tokens_per_s", "gen_seconds", "update_tokens_per_s", "update_seconds", "step_seconds"}


def launch(*args: str) -> None:
    cmd = [*TORCHRUN, "-m", "ppox", "llm", "train", *args]
    proc = subprocess.run(cmd, env={**env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]


def metrics(run) -> list[dict]:
    """Without timings, and without the held-out evaluation a run adds to its own last step."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING and not k.startswith("eval_")}
            for line in lines]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_llm_resume_on_two_processes_equals_uninterrupted_run(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from safetensors.torch import load_file

    from ppox.llm.demo import tiny_gpt2
    from ppox.llm.tasks import char_tokenizer

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    tiny_gpt2(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=32).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    flags = ["--model-path", str(tmp_path / "model"), "--batch-size", "8", "--num-minibatches", "2",
             "--max-new-tokens", "4", "--num-test", "8", "--reward", "partial", "--learning-rate", "1e-3",
             "--torch-threads", "1", "--no-tensorboard", "--checkpoint-every", "1"]

    launch(*flags, "--total-steps", "3", "--run-dir", str(tmp_path / "straight"))
    run = tmp_path / "run"
    launch(*flags, "--total-steps", "2", "--run-dir", str(run))
    rng = load_file(run / "checkpoints" / "ckpt_2" / "trainer.safetensors")
    assert {"rng.torch.0", "rng.torch.1"} <= rng.keys()  # rank 1's RNG state reached rank 0's checkpoint
    launch("--resume", str(run), "--total-steps", "3")

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["world_size"] == 2 and summary["weights_identical_across_ranks"]
    assert metrics(run) == metrics(tmp_path / "straight")
    a = load_file(run / "policy" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
