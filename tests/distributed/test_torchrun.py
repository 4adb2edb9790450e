"""torchrun end to end: 2 gloo processes solve CartPole with identical weights, and survive a killed rank."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_solve_cartpole_with_identical_weights(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        # the preset's 100k steps on each rank (the budget is global, so 200k in all)
        [*TORCHRUN, "-m", "ppox", "train", "CartPole-v1", "--total-timesteps", "200000", "--run-dir", str(run),
         "--no-progress", "--no-tensorboard"], env=env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["weights_identical_across_ranks"]
    assert summary["eval_return_mean"] >= 475.0, summary
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # global steps count both ranks' environments: 2 x 8 envs x 32 steps per iteration
    assert records[0]["global_step"] == 2 * 8 * 32


def worker_pids(parent: int) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the processes torchrun started (found through /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"LOCAL_RANK="):
                found[int(item.split(b"=", 1)[1])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_rank_restarts_the_group_from_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    total = 2 * 4 * 64 * 40  # 40 iterations of 2 ranks x 4 envs x 64 steps
    cmd = [*TORCHRUN, "--max-restarts=1", "-m", "ppox", "train", "CartPole-v1",
           "--preset", "cleanrl", "--num-envs", "4", "--num-steps", "64", "--total-timesteps", str(total),
           "--checkpoint-every", "5", "--run-dir", str(run), "--no-progress", "--no-tensorboard",
           "--eval-episodes", "2"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 200
    while not (run / "checkpoints" / "latest").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    pids = worker_pids(proc.pid)
    assert 1 in pids, pids
    os.kill(pids[1], signal.SIGKILL)  # rank 1 dies mid-run
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "resuming" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records]
    assert iterations == list(range(1, 41))  # each iteration exactly once, none lost
    steps = [r["global_step"] for r in records]
    assert steps == sorted(steps) and steps[-1] == total
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights_identical_across_ranks"]
