"""`ppox llm train` under torchrun: 2 gloo processes, one policy, identical weights at the end."""

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_llm_training_on_two_processes_keeps_weights_identical(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from ppox.llm.demo import tiny_gpt2
    from ppox.llm.tasks import char_tokenizer

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = tiny_gpt2(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=32)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ppox",
           "llm", "train", "--model-path", str(tmp_path / "model"), "--task", "arithmetic", "--total-steps", "2",
           "--batch-size", "8", "--num-minibatches", "2", "--max-new-tokens", "4", "--num-test", "8",
           "--torch-threads", "1", "--run-dir", str(run), "--no-tensorboard"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_identical_across_ranks"]
    assert summary["completions"] == 2 * 2 * 8  # steps x ranks x batch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert (run / "policy" / "config.json").is_file()
