"""One process per run directory, no writes or deletes through symlinks, one line for an unusable
run directory or a full disk (issue 12, items 10, 11 and 17; docs/reliability.md)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppox import runs
from ppox.cli import main
from ppox.io import LOCK_FILE, RunDirBusyError, RunDirError, RunDirLock, atomic_write_json
from ppox.logger import MetricsLogger
from ppox.rl import checkpoint as ckpt
from ppox.rl.ppo import PPO

REPO = Path(__file__).resolve().parents[2]
CLI_TINY = ["--num-steps", "16", "--num-envs", "2", "--update-epochs", "2", "--num-minibatches", "2",
            "--no-tensorboard", "--no-progress", "--eval-episodes", "0", "--no-live-doctor"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def train(run: Path, *extra: str, total: int = 64) -> int:
    return main(["train", "CartPole-v1", *CLI_TINY, "--total-timesteps", str(total), "--run-dir", str(run), *extra])


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file under `run` (not following symlinks) and its bytes."""
    return {str(p.relative_to(run)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"<dir/link>")
            for p in sorted(run.rglob("*"))}


@pytest.fixture
def finished_run(tmp_path) -> Path:
    run = tmp_path / "run"
    assert train(run, "--checkpoint-every", "1") == 0
    return run


# ---------------------------------------------------------------------------- item 10: the run-directory lock
def test_run_dir_lock_refuses_a_second_holder_naming_its_pid(tmp_path):
    run = tmp_path / "run"
    with RunDirLock(run) as lock:
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirBusyError, match=f"PID {os.getpid()}"):
            RunDirLock(run).acquire()
        assert lock.held
    assert not (run / LOCK_FILE).exists()  # released and removed: the directory is as it was
    RunDirLock(run).acquire().release()


def test_stale_lock_file_of_a_killed_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("999999\n")  # a SIGKILLed holder: the file stays, its flock is gone
    assert train(run) == 0
    assert not (run / LOCK_FILE).exists()


def test_overwrite_run_while_another_process_trains_is_refused_and_untouched(finished_run, capsys):
    before = snapshot(finished_run)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ppox.io import RunDirLock; "
         "lock = RunDirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)", str(finished_run)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train(finished_run, "--overwrite") == 2
        err = one_line_error(capsys)
        assert "in use by another ppox process" in err and f"PID {holder.pid}" in err
        assert main(["train", "--resume", str(finished_run)]) == 2
        assert f"PID {holder.pid}" in one_line_error(capsys)
        with pytest.raises(RunDirBusyError):
            PPO("CartPole-v1", run_dir=finished_run, overwrite=True, total_timesteps=64, num_steps=16, num_envs=2,
                tensorboard=False, progress=False, eval_episodes=0).learn()
    finally:
        holder.kill()
        holder.wait()
    after = snapshot(finished_run)
    after.pop(LOCK_FILE, None)  # the killed holder's stale file
    before.pop(LOCK_FILE, None)
    assert after == before  # metrics, checkpoints and results of the other run are untouched


def test_lock_is_held_for_the_whole_run_and_released_after(tmp_path, monkeypatch):
    run = tmp_path / "run"
    seen = []
    original = ckpt.save_checkpoint

    def probing_save(trainer, *args, **kwargs):
        with pytest.raises(RunDirBusyError):
            RunDirLock(run).acquire()
        seen.append(trainer.iteration)
        return original(trainer, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", probing_save)
    assert train(run, "--checkpoint-every", "1") == 0
    assert seen == [1, 2]
    assert not (run / LOCK_FILE).exists()
    RunDirLock(run).acquire().release()


def test_resume_holds_the_lock_until_its_learn_ends(finished_run):
    resumed = PPO.resume(finished_run, total_timesteps=96)
    with pytest.raises(RunDirBusyError):  # a second resume between PPO.resume and learn()
        PPO.resume(finished_run)
    resumed.learn()
    assert resumed.iteration == 3
    PPO.resume(finished_run).close()  # free again


def test_refused_existing_run_dir_gets_no_lock_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("precious\n")
    assert train(run) == 2
    assert "already exists" in one_line_error(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


# ---------------------------------------------------------------------------- item 11: symlinks
def test_metrics_symlink_is_refused_and_its_target_untouched(finished_run, tmp_path, capsys):
    target = tmp_path / "victim.txt"
    target.write_text("do not truncate me\n")
    (finished_run / "metrics.jsonl").unlink()
    (finished_run / "metrics.jsonl").symlink_to(target)
    assert train(finished_run, "--overwrite") == 2
    err = one_line_error(capsys)
    assert "metrics.jsonl" in err and "symbolic link" in err
    assert target.read_text() == "do not truncate me\n"
    assert main(["train", "--resume", str(finished_run)]) == 2
    assert "symbolic link" in one_line_error(capsys)
    assert target.read_text() == "do not truncate me\n"


@pytest.mark.parametrize("name", ["config.json", "summary.json", "model.safetensors", "checkpoints"])
def test_other_symlinked_run_files_are_refused(finished_run, tmp_path, capsys, name):
    target = tmp_path / "victim"
    (finished_run / name).rename(target)
    (finished_run / name).symlink_to(target)
    before = snapshot(target) if target.is_dir() else target.read_bytes()
    assert train(finished_run, "--overwrite") == 2
    assert "symbolic link" in one_line_error(capsys)
    assert (snapshot(target) if target.is_dir() else target.read_bytes()) == before


def test_symlink_inside_checkpoints_is_refused(finished_run, tmp_path, capsys):
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    state = finished_run / "checkpoints" / "ckpt_2" / "state.json"
    state.unlink()
    state.symlink_to(target)
    assert train(finished_run, "--overwrite") == 2
    assert "symbolic link" in one_line_error(capsys)
    assert target.read_bytes() == b"precious"


def test_run_dir_that_is_a_symlink_is_refused(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert train(tmp_path / "link") == 2
    assert "is a symbolic link" in one_line_error(capsys)
    assert list(real.iterdir()) == []


def test_writers_replace_a_symlink_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").symlink_to(target)
    atomic_write_json(run / "config.json", {"a": 1})  # the rename replaces the link itself
    assert not (run / "config.json").is_symlink() and target.read_text() == "keep\n"
    (run / "metrics.jsonl").symlink_to(target)
    with pytest.raises(RunDirError, match="symbolic link"):
        MetricsLogger(run, tensorboard=False, append=True)  # O_NOFOLLOW
    logger = MetricsLogger(run, tensorboard=False, append=False)  # fresh: an empty file renamed over the link
    logger.log({"iteration": 1, "global_step": 1})
    logger.close()
    assert target.read_text() == "keep\n"
    assert (run / "metrics.jsonl").read_text() == '{"iteration": 1, "global_step": 1}\n'


def test_overwrite_removes_only_what_ppox_wrote(finished_run, tmp_path):
    root = finished_run / "checkpoints"
    (root / "notes.txt").write_text("mine")
    (root / "mydata").mkdir()
    (root / "mydata" / "x.bin").write_bytes(b"x")
    (root / "ckpt_2" / "extra.bin").write_bytes(b"foreign file in a ppox directory")
    (root / "ckpt_77").mkdir()
    (root / "ckpt_77" / "dataset.csv").write_text("a,b\n")
    assert train(finished_run, "--overwrite", total=32) == 0
    assert (root / "notes.txt").read_text() == "mine"
    assert (root / "mydata" / "x.bin").read_bytes() == b"x"
    assert (root / "ckpt_77" / "dataset.csv").read_text() == "a,b\n"
    assert (root / "ckpt_2" / "extra.bin").exists() and not (root / "ckpt_2" / "state.json").exists()
    assert runs.latest_checkpoint(finished_run).name == "ckpt_1"


# ---------------------------------------------------------------------------- item 17: unusable run directories
def _read_only(real, run: Path):
    def call(path, *args, **kwargs):
        if str(path).startswith(str(run)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    return call


@pytest.mark.parametrize("kind", ["file", "dev_null", "proc", "read_only"])
def test_unusable_run_dir_is_one_line(tmp_path, capsys, monkeypatch, kind):
    if kind == "file":
        run = tmp_path / "run"
        run.write_text("not a directory")
    elif kind == "dev_null":
        run = Path("/dev/null")
    elif kind == "proc":
        run = Path("/proc/ppox_run_dir")
    else:  # root ignores permissions: simulate a read-only file system
        run = tmp_path / "ro"
        for name in ("open", "mkdir"):
            monkeypatch.setattr(os, name, _read_only(getattr(os, name), run))
    assert train(run) == 2
    err = one_line_error(capsys)
    assert str(run) in err
    if kind == "read_only":
        assert "Read-only file system" in err


def test_disk_full_during_a_checkpoint_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd):
        if ".ckpt_2.tmp" in os.readlink(f"/proc/self/fd/{fd}"):  # the disk fills up during the 2nd checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert train(run, "--checkpoint-every", "1", total=96) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and "--resume" in err
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "ckpt_1"
    assert sorted(p.name for p in root.iterdir()) == ["ckpt_1", "latest"]  # no half-written directory
    assert not [p for p in run.rglob("*.tmp*")]
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the run continues
    assert main(["train", "--resume", str(run)]) == 0
    assert runs.latest_checkpoint(run).name == "ckpt_3"


def test_disk_full_while_logging_metrics_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_write = os.write

    def write(fd, data):
        if b'"iteration": 2' in bytes(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert train(run, "--checkpoint-every", "1", total=96) == 2
    err = one_line_error(capsys)
    assert "metrics.jsonl" in err and "No space left on device" in err
    assert runs.latest_checkpoint(run).name == "ckpt_1"
    assert (run / "metrics.jsonl").read_text().count("\n") == 1

