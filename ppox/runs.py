"""Run directories shared by both trainers: the checkpoint-directory protocol and stop signals.

A run directory RUN_DIR holds config.json, metrics.jsonl, summary.json and RUN_DIR/checkpoints/:

    checkpoints/ckpt_<n>/      one complete checkpoint per saved iteration (or LLM step) n; complete
                               means it holds state.json, which is written last
    checkpoints/latest         one line: the name of the newest complete checkpoint
    checkpoints/.ckpt_<n>.tmp-<pid>/   a checkpoint being written (a killed writer's: cleaned later)
    checkpoints/rejected_<name>        an unusable checkpoint moved aside: kept for the user, ignored

A checkpoint is written into a temporary directory (begin_checkpoint) that is renamed into place
before `latest` is replaced (publish_checkpoint), so a process killed at any instant leaves `latest`
naming a complete checkpoint. What the files inside a checkpoint hold is each trainer's business
(ppox.rl.checkpoint, ppox.llm.checkpoint); this module knows only the directory layout. Deleting only
removes files ppox writes, never through a symlink.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from ppox.errors import ModelFileError, PPOXError
from ppox.io import (
    RunDirError,
    atomic_write_bytes,
    check_format_version,
    is_stale_tmp,
    os_error,
    read_json,
    remove_stale_tmp,
)

CHECKPOINTS = "checkpoints"


LATEST = "latest"


ENV_STATE_FILE = "env_state.pkl"


REJECTED_PREFIX = "rejected_"  # an unusable checkpoint moved aside: kept for the user, ignored by ppox


# the files ppox writes into a checkpoint directory (RL and LLM); deleting a checkpoint removes only these
CHECKPOINT_FILES = frozenset({"model.safetensors", "model.json", "trainer.safetensors", "state.json", ENV_STATE_FILE,
                              "policy.safetensors", "critic.safetensors"})


class StopSignals:
    """SIGINT/SIGTERM set a flag; the trainer finishes its iteration, checkpoints and stops.

    A second signal ends the run at once (the last checkpoint on disk stays valid): a second SIGTERM
    gets the default action, which kills the process; a second SIGINT raises KeyboardInterrupt, and
    a third one gets the default action. Outside the main thread no handler can be installed and
    this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            # A trainer stuck in env code (a hung step, C code that never returns to the interpreter)
            # might never run a Python handler again: the default action of SIGTERM needs none.
            if signal.SIGTERM in self._previous:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            return
        for sig in self._previous:  # should KeyboardInterrupt be swallowed by env code, Ctrl-C still ends it
            signal.signal(sig, signal.SIG_DFL)
        raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                with contextlib.suppress(ValueError, OSError):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def begin_checkpoint(run_dir: str | Path, name: str) -> Path:
    """An empty temporary directory RUN_DIR/checkpoints/.<name>.tmp-<pid> to write a checkpoint into."""
    root = checkpoint_dir(run_dir)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    try:
        if root.is_symlink():
            raise RunDirError(f"{root} is a symbolic link; ppox does not write through symlinks: remove it")
        root.mkdir(parents=True, exist_ok=True)
        if tmp.is_symlink() or tmp.exists():
            remove_checkpoint_dir(tmp, aside=True)
        tmp.mkdir()
    except OSError as exc:
        raise os_error(exc, tmp) from None
    return tmp


def publish_checkpoint(tmp: Path, name: str, keep_last: int) -> Path:
    """Rename the finished `tmp` (from begin_checkpoint) to <name>, point `latest` at it, prune to keep_last."""
    root = tmp.parent
    final = root / name
    if final.is_symlink() or final.exists():  # a stale checkpoint from a killed attempt past the one resumed from
        remove_checkpoint_dir(final, aside=True)
    try:
        os.replace(tmp, final)
    except OSError as exc:
        raise os_error(exc, final) from None
    atomic_write_bytes(root / LATEST, (name + "\n").encode())
    prune_checkpoints(root, keep_last, keep=name)
    return final


def remove_checkpoint_dir(path: Path, aside: bool = False) -> bool:
    """Delete a checkpoint directory ppox wrote: its ppox files (CHECKPOINT_FILES, temporary files), then
    the directory if that left it empty. Symlinks are never followed and foreign files never deleted;
    with `aside`, a directory they keep is renamed to rejected_<name> instead. True if it is gone."""
    try:
        if path.is_symlink():
            if not aside:
                return False
            path.unlink()  # the link itself, not what it points to
            return True
        if not path.is_dir():
            return False
        for entry in path.iterdir():
            if not entry.is_symlink() and entry.is_file() and (entry.name in CHECKPOINT_FILES or is_stale_tmp(entry)):
                entry.unlink()
        if not any(path.iterdir()):
            path.rmdir()
            return True
        if aside:
            move_aside(path)
            return True
        return False
    except OSError as exc:
        raise os_error(exc, path, "remove") from None


def move_aside(path: Path) -> Path:
    """Rename checkpoints/<name> to checkpoints/rejected_<name>[_k]: kept for the user, ignored by ppox."""
    target = path.with_name(REJECTED_PREFIX + path.name.lstrip("."))
    k = 1
    while target.exists() or target.is_symlink():
        k += 1
        target = path.with_name(f"{REJECTED_PREFIX}{path.name.lstrip('.')}_{k}")
    try:
        os.rename(path, target)
    except OSError as exc:
        raise os_error(exc, path, "move aside") from None
    return target


def _is_tmp_dir(path: Path) -> bool:
    return path.name.startswith(".ckpt_") and ".tmp-" in path.name


def clear_checkpoints(run_dir: str | Path) -> None:
    """Remove the checkpoints of an earlier run (a fresh run in a directory it may --overwrite).

    Only what ppox wrote goes: ckpt_<n> directories' ppox files, `latest`, temporary directories and
    files. Foreign files (and their directories) stay; nothing is deleted through a symlink.
    """
    root = checkpoint_dir(run_dir)
    if root.is_symlink():
        raise RunDirError(f"{root} is a symbolic link; ppox does not delete through symlinks: remove it")
    if not root.is_dir():
        return
    try:
        for entry in root.iterdir():
            if entry.is_symlink():
                continue
            if entry.name == LATEST and entry.is_file():
                entry.unlink()
            elif entry.is_dir() and (iteration_of(entry) is not None or _is_tmp_dir(entry)):
                remove_checkpoint_dir(entry)
            elif is_stale_tmp(entry):
                entry.unlink()
        if not any(root.iterdir()):
            root.rmdir()
    except OSError as exc:
        raise os_error(exc, root, "clear") from None


def clean_stale(run_dir: str | Path) -> None:
    """Remove what killed writers left: `.*.tmp` files in RUN_DIR and checkpoints/, and temporary checkpoint
    directories. Call with the run directory's lock held (no other writer can be running)."""
    run_dir = Path(run_dir)
    remove_stale_tmp(run_dir)
    root = checkpoint_dir(run_dir)
    if root.is_dir() and not root.is_symlink():
        remove_stale_tmp(root)
        with contextlib.suppress(OSError, PPOXError):
            for entry in root.iterdir():
                if _is_tmp_dir(entry) and not entry.is_symlink() and entry.is_dir():
                    remove_checkpoint_dir(entry)


def flatten_optimizer(state_dict: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Optimizer tensors into `tensors` as optim.<param>.<key>; the rest (param groups, scalars) as JSON."""
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    groups = []
    for group in state_dict["param_groups"]:
        groups.append({k: list(v) if isinstance(v, tuple) else v for k, v in group.items()})
    return {"param_groups": groups, "scalars": scalars, "tuple_keys": ["betas"]}


def unflatten_optimizer(optim_json: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in optim_json.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    tuple_keys = set(optim_json.get("tuple_keys", []))
    groups = [{k: tuple(v) if k in tuple_keys and isinstance(v, list) else v for k, v in g.items()}
              for g in optim_json["param_groups"]]
    return {"state": state, "param_groups": groups}


def iteration_of(path: Path) -> int | None:
    digits = path.name.removeprefix("ckpt_")
    if digits == path.name or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories (those holding state.json), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(it, p) for p in root.iterdir() if (it := iteration_of(p)) is not None and not p.is_symlink()
             and p.is_dir() and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep_last: int, keep: str) -> None:
    complete = list_checkpoints(root.parent)
    for path in complete[:-keep_last] if keep_last > 0 else complete:
        if path.name != keep:
            with contextlib.suppress(PPOXError):
                remove_checkpoint_dir(path)
    for path in root.iterdir():  # temporary directories of killed writers
        ours = path.name.endswith(f"-{os.getpid()}")
        if _is_tmp_dir(path) and not ours and not path.is_symlink():
            with contextlib.suppress(PPOXError):
                remove_checkpoint_dir(path)


def read_latest(run_dir: str | Path) -> tuple[Path | None, str | None]:
    """(the complete checkpoint `latest` names, None) or (None, what is wrong with `latest`; None if absent)."""
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if not pointer.is_file() or pointer.is_symlink():
        return None, ("is not a regular file" if pointer.exists() or pointer.is_symlink() else None)
    try:
        raw = pointer.read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None, "is not text"
    if not name or "/" in name or iteration_of(Path(name)) is None:
        return None, f"names {name[:40]!r}, not a checkpoint directory"
    if not (root / name / "state.json").is_file():
        return None, f"names {name}, which is missing or incomplete"
    return root / name, None


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The directory `latest` names; if that is missing or damaged, the newest complete checkpoint."""
    run_dir = Path(run_dir)
    latest, _ = read_latest(run_dir)
    if latest is not None:
        return latest
    complete = list_checkpoints(run_dir)
    if not complete:
        root = checkpoint_dir(run_dir)
        raise ModelFileError(f"{run_dir} holds no checkpoint (no {root}/ckpt_*/state.json) to resume from")
    return complete[-1]


def read_state(ckpt: Path, kind: str, what: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint's state.json, checked: format version, `kind`, the `required` keys present."""
    path = ckpt / "state.json"
    state = read_json(path, "checkpoint state")
    check_format_version(state, path)
    if state.get("kind") != kind:
        raise ModelFileError(f"{path} is not a {what} (kind {state.get('kind')!r})")
    for key in required:
        if key not in state:
            raise ModelFileError(f"{path} lacks {key!r}: a damaged checkpoint")
    return state


def find_checkpoint(run_dir: str | Path) -> Path:
    """The latest complete checkpoint of RUN_DIR (a clear error if the directory or checkpoints are missing)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelFileError(f"run directory {run_dir} does not exist")
    return latest_checkpoint(run_dir)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metrics_index(run_dir: str | Path) -> dict[int, int] | None:
    """{iteration: global_step} of RUN_DIR/metrics.jsonl (None if there is none). Unparsable lines (one torn
    by a kill) are skipped; bytes that are not text anywhere but in the last line are refused (RunDirError)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    lines = raw.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    index: dict[int, int] = {}
    for number, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            if number == len(lines):  # torn by a kill mid-write
                continue
            raise RunDirError(f"{path} holds binary data (line {number} is not UTF-8 text), so it is not ppox's "
                              "metrics log; move it aside to resume") from None
        record = _parse_line(text)
        if record is not None:
            index[record[0]] = record[1]
    return index


def _parse_line(text: str) -> tuple[int, int] | None:
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    it, step = record.get("iteration"), record.get("global_step")
    return (it, step if is_int(step) else -1) if is_int(it) else None


def run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/config.json, or None if it is missing or unreadable (then there is nothing to check against)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return read_json(path, "config")
    except PPOXError as exc:
        print(f"warning: {exc}; the checkpoint's config is not checked against it", file=sys.stderr)
        return None


def is_main_process() -> bool:
    """Rank 0 under torchrun (known before the process group exists), else True."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


def discard_after(run_dir: str | Path, iteration: int) -> None:
    """On resume from `iteration`: drop later metrics lines and later checkpoints (a killed run's leftovers).

    Call only once the restored state is known good (and with the run directory's lock held).
    """
    truncate_metrics(run_dir, iteration)
    for stale in list_checkpoints(run_dir):  # written after `latest` by a killed process: superseded
        if iteration_of(stale) > iteration:
            remove_checkpoint_dir(stale, aside=True)


def truncate_metrics(run_dir: str | Path, iteration: int) -> None:
    """Keep the metrics.jsonl lines of iterations <= `iteration` (drop later and torn lines), atomically."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_symlink():
        raise RunDirError(f"{path} is a symbolic link; ppox does not write through symlinks: remove it")
    if not path.is_file():
        return
    metrics_index(run_dir)  # refuses a file that is not ppox's log (binary) before anything is dropped
    kept: list[bytes] = []
    for line in path.read_bytes().splitlines():
        try:
            record = _parse_line(line.decode("utf-8"))
        except UnicodeDecodeError:  # the last line, torn by a kill
            continue
        if record is not None and record[0] <= iteration:
            kept.append(line)
    atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))

