"""Safe model files: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

Writes are atomic (temporary file, fsync, rename), so a crash at any instant leaves either the
old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ppox.errors import ModelFileError

FORMAT_VERSION = 1
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, and torch.save's zip container


@contextmanager
def _atomic_target(path: Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    with _atomic_target(Path(path)) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; refuse anything else (a pickle payload above all) with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(PICKLE_MAGIC):
        raise ModelFileError(
            f"{path} carries a pickle payload (torch.save format); ppox only loads safetensors files "
            "and never unpickles model files"
        )
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a valid safetensors file ({exc})") from None


def read_json(path: str | Path, what: str = "metadata") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} does not hold a JSON object")
    return data


def check_format_version(meta: dict[str, Any], path: str | Path) -> None:
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path} has no format_version: not a ppox model file")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer ppox (format {version}; this ppox reads up to {FORMAT_VERSION}): "
            "upgrade ppox"
        )
