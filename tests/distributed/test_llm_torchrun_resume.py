"""`ppox llm train --resume` under torchrun: rank 0 writes the checkpoint, both ranks load it, and the
resumed run equals an uninterrupted one (every rank's RNG state is in the checkpoint); the same with
--fsdp, stopped by a SIGTERM to one rank, and an --fsdp checkpoint resumed without FSDP."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from .test_torchrun import TORCHRUN, env, worker_pids

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


def common_flags(tmp_path) -> list[str]:
    """A 1-layer GPT-2 written to tmp_path/model, and the flags of a short run on it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from ppox.llm.demo import tiny_gpt2
    from ppox.llm.tasks import char_tokenizer

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    tiny_gpt2(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=32).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return ["--model-path", str(tmp_path / "model"), "--batch-size", "8", "--num-minibatches", "2",
            "--max-new-tokens", "4", "--num-test", "8", "--reward", "partial", "--learning-rate", "1e-3",
            "--torch-threads", "1", "--no-tensorboard", "--checkpoint-every", "1"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_llm_resume_on_two_processes_equals_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    flags = common_flags(tmp_path)

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


RESUME_UNSHARDED = """
import sys

from ppox.llm.checkpoint import read_state
from ppox.runs import find_checkpoint
from ppox.cli.llm import build_trainer
from ppox.llm.config import LLMPPOConfig

run, total = sys.argv[1], int(sys.argv[2])
cfg = LLMPPOConfig(**read_state(find_checkpoint(run))["config"]).replace(fsdp=False, run_dir=run, total_steps=total)
trainer = build_trainer(cfg)
trainer.resume(run)
trainer.learn(run)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_run_stopped_by_sigterm_on_one_rank_resumes_to_the_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    flags = [*common_flags(tmp_path), "--fsdp"]
    total = 4
    launch(*flags, "--total-steps", str(total), "--run-dir", str(tmp_path / "straight"))

    # SIGTERM to rank 1 alone after its first step: both ranks agree to stop after the same step,
    # rank 0 writes a checkpoint of the sharded run, and the group exits with 130
    run = tmp_path / "run"
    cmd = [*TORCHRUN, "-m", "ppox", "llm", "train", *flags, "--total-steps", str(total), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, env={**env(), "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.time() < deadline, "no step finished"
        time.sleep(0.05)
    pids = worker_pids(proc.pid)
    assert 1 in pids, pids
    os.kill(pids[1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stop requested on another rank: stopped after step" in out, out[-3000:]
    stopped = len(metrics(run))
    assert 1 <= stopped < total
    assert (run / "checkpoints" / "latest").read_text().strip() == f"ckpt_{stopped}"
    assert json.loads((run / "summary.json").read_text())["interrupted"]

    # the files are those of an unsharded run: resumed without FSDP, the run ends where the sharded one does
    unsharded = tmp_path / "unsharded"
    shutil.copytree(run, unsharded)
    (tmp_path / "resume.py").write_text(RESUME_UNSHARDED)
    proc = subprocess.run([*TORCHRUN, str(tmp_path / "resume.py"), str(unsharded), str(total)],
                          env={**env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]

    launch("--resume", str(run))  # with FSDP, as the run was started
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == total and not summary["interrupted"]
    assert metrics(run) == metrics(tmp_path / "straight")
    straight = tmp_path / "straight"
    for name in ("policy/model.safetensors", "critic.safetensors"):
        a, b, c = (load_file(d / name) for d in (run, straight, unsharded))
        assert a.keys() == b.keys() == c.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key  # resumed sharded run: exactly the uninterrupted one
            assert torch.allclose(c[key], b[key], atol=1e-5), key  # FSDP vs unsharded: float reduction order
