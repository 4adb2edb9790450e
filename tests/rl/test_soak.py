"""Soak: train in a subprocess, SIGKILL it at random moments, resume, repeat (docs/reliability.md, 7)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ppox import runs
from ppox.rl.ppo import PPO, TIMING_KEYS

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--num-steps", "16", "--num-envs", "2", "--update-epochs", "2", "--num-minibatches", "2",
        "--no-tensorboard", "--no-progress", "--eval-episodes", "0", "--checkpoint-every", "2",
        "--keep-checkpoints", "2"]
TOTAL = 3200  # 100 iterations of 32 steps


def _lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_random_sigkills_and_resumes_lose_nothing(tmp_path):
    rng = random.Random(os.getpid())
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = [sys.executable, "-m", "ppox", "train", "CartPole-v1", *ARGS, "--total-timesteps", str(TOTAL),
             "--run-dir", str(run)]
    again = [sys.executable, "-m", "ppox", "train", "--resume", str(run), "--no-progress"]
    kills, resumed_from = 0, []
    deadline = time.monotonic() + 90
    cmd = first
    while True:
        assert time.monotonic() < deadline, "soak did not finish"
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 6:
            start = _lines(run)
            target = start + rng.randint(1, 12)
            while proc.poll() is None and _lines(run) < target:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))  # anywhere inside an iteration or a checkpoint write
        if proc.poll() is None and kills < 6:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            _, err = proc.communicate(timeout=60)
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        if runs.list_checkpoints(run):
            resumed_from.append(runs.latest_checkpoint(run).name)
            cmd = again
        else:  # killed before the first checkpoint was complete: start over
            cmd = [*first, "--overwrite"]
    assert kills >= 3

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records]
    assert iterations == list(range(1, TOTAL // 32 + 1))  # every iteration exactly once, in order
    steps = [r["global_step"] for r in records]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == TOTAL
    final = runs.latest_checkpoint(run)
    assert final.name == f"ckpt_{TOTAL // 32}"
    model = PPO.load(final)
    assert model.global_step == TOTAL
    resumed = PPO.resume(run)
    assert resumed.iteration == TOTAL // 32 and resumed.global_step == TOTAL

    # and the interrupted run is the uninterrupted one
    ref = tmp_path / "ref"
    PPO("CartPole-v1", run_dir=ref, num_steps=16, num_envs=2, update_epochs=2, num_minibatches=2,
        tensorboard=False, progress=False, eval_episodes=0, checkpoint_every=2, total_timesteps=TOTAL).learn()
    ref_records = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    assert strip(records) == strip(ref_records), f"resumed from {resumed_from}"
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
