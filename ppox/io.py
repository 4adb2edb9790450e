"""Safe model files: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

Writes are atomic (temporary file, fsync, rename), so a crash at any instant leaves either the
old file or the new one, never a torn one. The rename replaces a symlink at the destination instead
of writing through it, and files opened for appending refuse symlinks (O_NOFOLLOW). An OSError
(disk full, read-only file system, ...) becomes a RunDirError: one line naming the file.

A run directory is written by one process at a time: RunDirLock holds an exclusive flock on
RUN_DIR/.ppox.lock for the life of a run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ppox.errors import ModelFileError, PPOXError

FORMAT_VERSION = 1
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, and torch.save's zip container
LOCK_FILE = ".ppox.lock"
# what ppox writes at the top of a run directory (RL and LLM runs); `checkpoints` is checked to its leaves
RUN_DIR_NAMES = ("metrics.jsonl", "config.json", "summary.json", "model.safetensors", "model.json", "tb",
                 "checkpoints", "policy", "critic.safetensors", LOCK_FILE)


class RefusedFileError(ModelFileError):
    """A file refused on principle (a pickle payload, a newer format, a checksum mismatch): never skipped over."""


class RunDirError(PPOXError):
    """A run directory or a file in it that cannot be used: not a directory, a symlink, unwritable, disk full."""


class RunDirBusyError(RunDirError):
    """Another process holds the run directory's lock."""


def os_error(exc: OSError, path: str | Path, action: str = "write") -> RunDirError:
    """One line for an OSError on `path` (disk full, read-only, permission, not a directory, ...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = " (disk full: free space; files already written are intact)"
    elif exc.errno == errno.EROFS:
        hint = " (read-only file system: choose another --run-dir)"
    elif exc.errno == errno.ELOOP:
        hint = " (a symbolic link: ppox never writes through symlinks; remove it)"
    return RunDirError(f"could not {action} {path}: {reason}{hint}")


@contextmanager
def _atomic_target(path: Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symlink at `path` itself, never its target
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with _atomic_target(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tensors made contiguous and detached)."""
    path = Path(path)
    with _atomic_target(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as exc:  # its I/O errors (disk full) arrive as SafetensorError
            raise RunDirError(f"could not write {path}: {str(exc).splitlines()[0][:200]}") from None


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True if every floating-point element of `tensors` is finite (no copy; one device sync per device and dtype).

    Checked per group as one sum of L1 norms (one fused kernel over all of a group's tensors on a GPU, instead of
    two ops per tensor): NaN and inf propagate through a sum, so a finite sum means every element is finite. A sum
    that is not finite is confirmed element-wise, since finite values can also overflow it."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point():
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    for group in groups.values():
        if not bool(torch.stack(torch._foreach_norm(group, 1)).sum().isfinite()) and not all(
                bool(torch.isfinite(t).all()) for t in group):
            return False
    return True


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; refuse anything else (a pickle payload above all) with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    if head.startswith(PICKLE_MAGIC):
        raise RefusedFileError(
            f"{path} carries a pickle payload (torch.save format); ppox only loads safetensors files "
            "and never unpickles model files"
        )
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a valid safetensors file ({exc})") from None


def parse_json(text: str | bytes, path: str | Path) -> Any:
    """json.loads with every failure (bad syntax, not UTF-8, nested too deep) as one ModelFileError line."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelFileError(f"{path} is not valid JSON (nested too deeply)") from None


def read_json(path: str | Path, what: str = "metadata") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    data = parse_json(raw, path)
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} does not hold a JSON object")
    return data


def check_format_version(meta: dict[str, Any], path: str | Path) -> None:
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{path} has no format_version: not a ppox model file")
    if version > FORMAT_VERSION:
        raise RefusedFileError(
            f"{path} was written by a newer ppox (format {version}; this ppox reads up to {FORMAT_VERSION}): "
            "upgrade ppox"
        )


# ---------------------------------------------------------------------------- appending (metrics.jsonl)
def open_append(path: str | Path, fresh: bool = False) -> int:
    """A file descriptor appending to `path`, never through a symlink (O_NOFOLLOW).

    `fresh`: start from an empty file, put in place by an atomic rename, so a symlink or a hard link
    at `path` is replaced rather than its target truncated.
    """
    path = Path(path)
    if fresh:
        atomic_write_bytes(path, b"")
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise os_error(exc, path) from None


def write_all(fd: int, data: bytes, path: str | Path) -> None:
    """os.write until all of `data` is written (one call for a short line: no torn lines between writers)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise os_error(exc, path) from None


# ---------------------------------------------------------------------------- run directories
def check_run_dir(run_dir: str | Path) -> None:
    """Refuse (RunDirError) a run directory that is a symlink or not a directory, or whose ppox files
    (RUN_DIR_NAMES; all of checkpoints/ to its leaves) are symlinks: ppox would write or delete through them."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise RunDirError(f"run directory {run_dir} is a symbolic link; ppox does not write through symlinks: "
                          "pass the real path")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    for name in RUN_DIR_NAMES:
        path = run_dir / name
        if path.is_symlink():
            raise RunDirError(f"{path} is a symbolic link; ppox does not write through symlinks: remove it")
    root = run_dir / "checkpoints"
    if root.is_dir():
        try:
            for entry in root.iterdir():
                if entry.name != "latest" and not entry.name.startswith(("ckpt_", ".ckpt_")):
                    continue  # not ppox's (or a rejected checkpoint, which ppox leaves alone)
                children = entry.iterdir() if entry.is_dir() and not entry.is_symlink() else ()
                for path in (entry, *children):
                    if path.is_symlink():
                        raise RunDirError(f"{path} is a symbolic link; ppox does not write or delete through "
                                          "symlinks: remove it")
        except OSError as exc:
            raise os_error(exc, root, "read") from None


def make_run_dir(run_dir: str | Path) -> Path:
    """Create RUN_DIR (and parents) after check_run_dir; one clear line when that is impossible."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, run_dir, "create run directory") from None
    return run_dir


def is_stale_tmp(path: Path) -> bool:
    """A temporary file of an atomic write (`.<name>.<random>.tmp`, a regular file, not a symlink)."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file() and not path.is_symlink()


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Delete the temporary files killed writers left in `directory` (call with the run's lock held)."""
    removed = []
    with suppress(OSError):
        for path in Path(directory).iterdir():
            if is_stale_tmp(path):
                with suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


class RunDirLock:
    """An exclusive lock on a run directory for the life of a run: flock(LOCK_EX | LOCK_NB) on
    RUN_DIR/.ppox.lock, which holds the owner's PID. A second process gets RunDirBusyError naming it.

    >>> with RunDirLock(run_dir):      # or lock = RunDirLock(run_dir).acquire(); ...; lock.release()
    ...     train()

    The kernel drops the lock when its process dies (even by SIGKILL); a stale file is reused. The file
    is removed on release, so a refused or finished run leaves the directory as it found it. With
    torchrun only rank 0 (the writer) locks.
    """

    def __init__(self, run_dir: str | Path, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.create = create
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            return self
        if self.create:
            make_run_dir(self.run_dir)
        else:
            check_run_dir(self.run_dir)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise os_error(exc, self.path, "create the lock file") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                raise RunDirBusyError(
                    f"run directory {self.run_dir} is in use by another ppox process (PID {owner}); wait for it "
                    "to finish, stop it, or choose another --run-dir") from None
            except OSError as exc:
                os.close(fd)
                raise os_error(exc, self.path, "lock") from None
            # the previous holder may have removed the file between our open and flock: lock the file in place
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise os_error(exc, self.path) from None
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.lstat(self.path)):
                os.unlink(self.path)  # still holding the lock: nobody can be between open and flock on it
        os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with suppress(Exception):
            self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
