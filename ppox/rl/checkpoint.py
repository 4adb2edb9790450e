"""Resumable checkpoints of a PPO run: write, find, load, resume (`ppox train --resume RUN_DIR`).

A checkpoint is a directory RUN_DIR/checkpoints/ckpt_<iteration>/ holding

    model.safetensors, model.json   the model, exactly as PPO.save writes it (PPO.load reads it)
    trainer.safetensors             optimizer tensors, normalisation statistics, RNG states, next obs,
                                    in-progress episode returns/lengths
    state.json                      iteration, global step, optimizer param groups, adaptive-KL beta,
                                    python/numpy RNG states, recent returns, config, env-state record
    env_state.pkl                   the environments (pickle), where they can be captured

Every file is written atomically into a temporary directory that is renamed into place; only then is
RUN_DIR/checkpoints/latest (one line: the directory name) replaced, atomically. A process killed at
any instant therefore leaves `latest` naming a complete checkpoint. env_state.pkl is the only pickle
ppox ever reads, only on --resume of a run directory, and only when its SHA-256 matches state.json
(see docs/reliability.md for the trust model).

Resume holds the run directory's lock (ppox.io.RunDirLock) and checks a checkpoint against the run
(state.json's types, its iteration against its name and metrics.jsonl, its config against config.json,
its spaces against the env) before it changes anything; an unusable newest checkpoint is moved aside
(`rejected_ckpt_<n>`) with a warning line and the previous good one is taken. Deleting only removes
files ppox writes, never through a symlink.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import signal
import sys
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppox import __version__
from ppox.errors import ConfigError, ModelFileError, PPOXError
from ppox.io import (
    FORMAT_VERSION,
    RefusedFileError,
    RunDirError,
    RunDirLock,
    all_finite,
    atomic_write_bytes,
    atomic_write_json,
    check_format_version,
    check_run_dir,
    is_stale_tmp,
    load_tensors,
    os_error,
    read_json,
    remove_stale_tmp,
    save_tensors,
)

if TYPE_CHECKING:
    from ppox.rl.ppo import PPO

CHECKPOINTS = "checkpoints"
LATEST = "latest"
KIND = "ppox.rl.checkpoint"
ENV_STATE_FILE = "env_state.pkl"
REJECTED_PREFIX = "rejected_"  # an unusable checkpoint moved aside: kept for the user, ignored by ppox
# the files ppox writes into a checkpoint directory (RL and LLM); deleting a checkpoint removes only these
CHECKPOINT_FILES = frozenset({"model.safetensors", "model.json", "trainer.safetensors", "state.json", ENV_STATE_FILE,
                              "policy.safetensors", "critic.safetensors"})
# config fields a resume or a later learn() may change: not part of a run's identity
VOLATILE_CONFIG = frozenset({"run_dir", "total_timesteps", "progress", "overwrite"})


# ---------------------------------------------------------------------------- stop signals
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


# ---------------------------------------------------------------------------- capture
def capture_boundary(trainer: PPO) -> dict[str, Any]:
    """Copies of the trainer state the rollout changes (RNGs, normalisers, episode counters, next obs).

    Taken at the start of each iteration (cheap: a few kB), so a run that stops on an env fault
    mid-rollout can still checkpoint the last iteration boundary. Model and optimizer are not
    copied: only the update changes them, and an env fault happens before it.
    """
    envs = trainer.envs
    state: dict[str, Any] = {
        "iteration": trainer.iteration,
        "global_step": trainer.global_step,
        "skipped_updates": trainer.skipped_updates,
        "consecutive_skips": trainer._consecutive_skips,
        "recent_returns": list(trainer.recent_returns),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": trainer._shuffle_generator().get_state(),
        # the numpy rollout's action noise (NumpyPolicy); a JSON-able dict
        "policy_rng": trainer._policy_rng.bit_generator.state,
        "episode_return": envs._episode_return.copy(),
        "episode_length": envs._episode_length.copy(),
        "next_obs": None if trainer._next_obs is None else trainer._next_obs.detach().clone(),
        "obs_rms": None,
        "reward_rms": None,
        "reward_returns": None,
    }
    if trainer.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if trainer.obs_norm is not None:
        state["obs_rms"] = {k: v.clone() for k, v in trainer.obs_norm.rms.state_dict().items()}
    if trainer.reward_scaler is not None:
        state["reward_rms"] = {k: v.clone() for k, v in trainer.reward_scaler.rms.state_dict().items()}
        state["reward_returns"] = trainer.reward_scaler.returns.clone()
    return state


class WeightGuard:
    """The weights and optimizer state at the last iteration boundary, to fall back on when an update
    makes the weights non-finite: a checkpoint or model file then holds the last finite ones.

    save() copies into buffers allocated once (a few tensor copies per iteration); finite() is one
    reduction per parameter tensor.
    """

    def __init__(self, trainer: PPO) -> None:
        self.params = [p for p in trainer.agent.parameters()]
        self.optimizer = trainer.optimizer
        self._params: list[torch.Tensor] | None = None
        self._optim: dict[torch.Tensor, dict[str, Any]] = {}

    def save(self) -> None:
        with torch.no_grad():
            if self._params is None:
                self._params = [p.detach().clone() for p in self.params]
            else:
                for saved, p in zip(self._params, self.params, strict=True):
                    saved.copy_(p)
        self._optim = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                       for p, st in self.optimizer.state.items()}

    def finite(self) -> bool:
        return all_finite(self.params)

    def restore(self) -> None:
        if self._params is None:
            return
        with torch.no_grad():
            for saved, p in zip(self._params, self.params, strict=True):
                p.copy_(saved)
        self.optimizer.state.clear()
        for p, st in self._optim.items():
            self.optimizer.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}


class _EnvPickler(pickle.Pickler):
    """Pickle environments by their full __dict__.

    gymnasium's EzPickle (MuJoCo, Box2D envs) pickles only the constructor arguments, so a plain
    pickle would rebuild a fresh env and lose the simulator state; this keeps it.
    """

    def reducer_override(self, obj):
        from gymnasium.utils import EzPickle

        if isinstance(obj, EzPickle) and not isinstance(obj, type):
            return (_new_object, (type(obj),), dict(obj.__dict__), None, None, _set_dict)
        return NotImplemented


def _new_object(cls):
    return cls.__new__(cls)


def _set_dict(obj, state: dict) -> None:
    obj.__dict__.update(state)


def capture_envs(trainer: PPO) -> tuple[bytes | None, str]:
    """(pickle of the environments, "") or (None, why they cannot be captured)."""
    import gymnasium as gym

    inner = trainer.envs.envs
    if isinstance(inner, gym.vector.AsyncVectorEnv):
        return None, "async vectorisation keeps the envs in worker processes"
    if isinstance(inner, gym.vector.SyncVectorEnv):
        payload: dict[str, Any] = {"kind": "sync", "envs": inner.envs}
    else:
        payload = {"kind": "vector", "env": inner}
    buffer = io.BytesIO()
    try:
        _EnvPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"the envs cannot be pickled ({type(exc).__name__}: {first})"
    return buffer.getvalue(), ""


# ---------------------------------------------------------------------------- write
def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def save_checkpoint(trainer: PPO, boundary: dict[str, Any] | None = None, capture_env_state: bool = True,
                    note: str | None = None) -> Path:
    """Write RUN_DIR/checkpoints/ckpt_<iteration>/ atomically, then point `latest` at it; prune to K.

    `boundary` (from capture_boundary) replaces the live rollout state: used when a run stops
    mid-iteration; its envs are then not captured (they are reset on resume).
    """
    if trainer.run_dir is None:
        raise PPOXError("a checkpoint needs a run directory: call learn() first")
    if not all_finite(trainer.agent.parameters()):
        raise ModelFileError("refusing to write non-finite (NaN/inf) weights into a checkpoint; the last "
                             "checkpoint on disk is unchanged")
    live = boundary is None
    b = capture_boundary(trainer) if live else boundary
    iteration = int(b["iteration"])
    name = f"ckpt_{iteration}"
    tmp = begin_checkpoint(trainer.run_dir, name)
    try:
        return _write_checkpoint(trainer, b, live, capture_env_state, note, tmp, name)
    except Exception:  # disk full, ...: no half-written directory stays behind (a kill leaves one: cleaned later)
        with contextlib.suppress(OSError, PPOXError):
            remove_checkpoint_dir(tmp)
        raise


def _write_checkpoint(trainer: PPO, b: dict[str, Any], live: bool, capture_env_state: bool, note: str | None,
                      tmp: Path, name: str) -> Path:
    iteration = int(b["iteration"])

    tensors: dict[str, torch.Tensor] = {
        "rng.torch": b["torch_rng"],
        "rng.shuffle": b["shuffle_rng"],
        "episode.return": torch.from_numpy(np.ascontiguousarray(b["episode_return"])),
        "episode.length": torch.from_numpy(np.ascontiguousarray(b["episode_length"])),
    }
    for i, s in enumerate(b.get("cuda_rng", [])):
        tensors[f"rng.cuda.{i}"] = s
    if b["next_obs"] is not None:
        tensors["next_obs"] = b["next_obs"]
    if b["obs_rms"] is not None:
        tensors.update({f"obs_rms.{k}": v for k, v in b["obs_rms"].items()})
    if b["reward_rms"] is not None:
        tensors.update({f"reward_rms.{k}": v for k, v in b["reward_rms"].items()})
        tensors["reward_returns"] = b["reward_returns"]
    optim_json = flatten_optimizer(trainer.optimizer.state_dict(), tensors)

    env_record: dict[str, Any] = {"captured": False, "reason": note or "the run stopped mid-iteration"}
    if live and capture_env_state:
        blob, reason = capture_envs(trainer)
        if blob is not None:
            atomic_write_bytes(tmp / ENV_STATE_FILE, blob)
            digest = hashlib.sha256(blob).hexdigest()
            env_record = {"captured": True, "file": ENV_STATE_FILE, "sha256": digest}
        else:
            env_record = {"captured": False, "reason": reason}

    numpy_rng = b["numpy_rng"]
    python_rng = b["python_rng"]
    state = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "ppox_version": __version__,
        "iteration": iteration,
        "global_step": int(b["global_step"]),
        "skipped_updates": int(b["skipped_updates"]),
        "consecutive_skips": int(b["consecutive_skips"]),
        "env_restarts": trainer.envs.restarts,  # restarts used so far, also mid-iteration
        "recent_returns": [float(x) for x in b["recent_returns"]],
        "kl_controller": trainer.kl_controller.state_dict(),
        "optimizer": optim_json,
        "python_rng": [python_rng[0], list(python_rng[1]), python_rng[2]],
        "numpy_rng": {"name": numpy_rng[0], "key": [int(x) for x in numpy_rng[1]], "pos": int(numpy_rng[2]),
                      "has_gauss": int(numpy_rng[3]), "cached_gaussian": float(numpy_rng[4])},
        "policy_rng": b.get("policy_rng"),
        "wall_seconds": float(trainer._wall_seconds),
        "config": trainer.config.to_dict(),
        "env_state": env_record,
    }
    global_step = trainer.global_step
    trainer.global_step = int(b["global_step"])
    try:
        trainer.save(tmp)  # model.safetensors + model.json: `ppox eval` and PPO.load read a checkpoint too
    finally:
        trainer.global_step = global_step
    save_tensors(tmp / "trainer.safetensors", tensors)
    atomic_write_json(tmp / "state.json", state)  # written last: a directory with state.json is complete

    return publish_checkpoint(tmp, name, trainer.config.keep_checkpoints)


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


# ---------------------------------------------------------------------------- load / resume
def read_state(ckpt: Path, kind: str = KIND, what: str = "ppox checkpoint",
               required: tuple[str, ...] = ()) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------- validation against the run
_INT_FIELDS = ("iteration", "global_step", "skipped_updates", "consecutive_skips", "env_restarts")
_REQUIRED = ("iteration", "global_step", "skipped_updates", "recent_returns", "kl_controller", "optimizer",
             "python_rng", "numpy_rng", "config", "env_state")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_state(ckpt: Path, state: dict[str, Any]) -> None:
    """The types and ranges of an RL state.json's fields (ModelFileError naming the first wrong one)."""
    path = ckpt / "state.json"

    def bad(key: str, want: str) -> ModelFileError:
        return ModelFileError(f"{path}: {key!r} must be {want}, got {str(state.get(key))[:40]!r}: a damaged "
                              "checkpoint")

    for key in _INT_FIELDS:
        if (key in state or key in _REQUIRED) and not (_is_int(state.get(key)) and state[key] >= 0):
            raise bad(key, "an integer >= 0")
    if not isinstance(state["recent_returns"], list) or not all(_is_number(x) for x in state["recent_returns"]):
        raise bad("recent_returns", "a list of numbers")
    for key in ("kl_controller", "optimizer", "numpy_rng", "config", "env_state"):
        if not isinstance(state[key], dict):
            raise bad(key, "a JSON object")
    if not isinstance(state["optimizer"].get("param_groups"), list) or not all(
            isinstance(g, dict) for g in state["optimizer"]["param_groups"]):
        raise bad("optimizer", "an object with a list of param_groups")
    py = state["python_rng"]
    if not (isinstance(py, list) and len(py) == 3 and _is_int(py[0]) and isinstance(py[1], list)
            and all(_is_int(x) for x in py[1])):
        raise bad("python_rng", "[version, [ints], gauss]")
    nr = state["numpy_rng"]
    if not (isinstance(nr.get("name"), str) and isinstance(nr.get("key"), list) and all(_is_int(x) for x in nr["key"])
            and _is_int(nr.get("pos")) and _is_int(nr.get("has_gauss")) and _is_number(nr.get("cached_gaussian"))):
        raise bad("numpy_rng", "{name, key, pos, has_gauss, cached_gaussian}")
    if state.get("policy_rng") is not None and not isinstance(state["policy_rng"], dict):
        raise bad("policy_rng", "a JSON object")
    if "wall_seconds" in state and not _is_number(state["wall_seconds"]):
        raise bad("wall_seconds", "a number")


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
    return (it, step if _is_int(step) else -1) if _is_int(it) else None


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


def check_against_run(ckpt: Path, state: dict[str, Any], config: dict[str, Any] | None,
                      metrics: dict[int, int] | None) -> None:
    """A checkpoint belongs to this run: its iteration matches its name and metrics.jsonl (iteration and
    global step), and its config is the one in config.json (env id first). ModelFileError otherwise."""
    iteration = state["iteration"]
    if iteration_of(ckpt) != iteration:
        raise ModelFileError(f"{ckpt / 'state.json'} says iteration {iteration}, not its directory's: a damaged "
                             "or misplaced checkpoint")
    if config is not None:
        saved = state["config"]
        if saved.get("env_id") != config.get("env_id"):
            raise ModelFileError(f"{ckpt} was written by a run on {saved.get('env_id')}, but this run directory's "
                                 f"config.json is for {config.get('env_id')}: not this run's checkpoint")
        differ = sorted(k for k in set(saved) | set(config)
                        if k not in VOLATILE_CONFIG and saved.get(k) != config.get(k))
        if differ:
            raise ModelFileError(f"{ckpt} was written with another config than this run's config.json "
                                 f"(differs in {', '.join(differ[:4])}): not this run's checkpoint")
    if metrics is not None and iteration > 0:
        if iteration not in metrics:
            last = max(metrics, default=0)
            raise ModelFileError(f"{ckpt} is at iteration {iteration}, which metrics.jsonl does not hold (it ends at "
                                 f"iteration {last}): not this run's checkpoint")
        if metrics[iteration] != state["global_step"]:
            raise ModelFileError(f"{ckpt} is at global step {state['global_step']}, metrics.jsonl logged "
                                 f"{metrics[iteration]} at iteration {iteration}: not this run's checkpoint")


def check_spaces(trainer: PPO, ckpt: Path) -> None:
    """The checkpoint's model was trained on this env's observation and action spaces."""
    meta = read_json(ckpt / "model.json")
    if meta.get("obs_dim") != trainer.envs.obs_dim or meta.get("action_spec") != trainer.spec.to_dict():
        raise ModelFileError(
            f"{ckpt}: its model has observation size {meta.get('obs_dim')} and actions {meta.get('action_spec')}, "
            f"this run's env {trainer.config.env_id} {trainer.envs.obs_dim} and {trainer.spec.to_dict()}")


def _is_main_process() -> bool:
    """Rank 0 under torchrun (known before the process group exists), else True."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------- resume
def resume(cls: type[PPO], run_dir: str | Path, env_fn=None, total_timesteps: int | None = None,
           **overrides: Any) -> PPO:
    """A trainer restored from RUN_DIR's newest usable checkpoint; its learn() continues the run.

    Rank 0 takes the run directory's lock first and the trainer keeps it until its learn() ends, so
    a second resume or training run into RUN_DIR stops with one line instead of tearing its files.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    if not run_dir.is_dir():
        raise ModelFileError(f"run directory {run_dir} does not exist")
    lock = RunDirLock(run_dir, create=False).acquire() if _is_main_process() else None
    try:
        trainer = _resume_locked(cls, run_dir, env_fn, total_timesteps, overrides)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer._run_lock = lock
    return trainer


def _trained_on_custom_env(ckpt: Path) -> bool:
    """PPO.save marks a model trained through env_fn (its env_id is then the env's name, not a registered id)."""
    try:
        return read_json(ckpt / "model.json").get("custom_env") is True
    except PPOXError:
        return False


def _config_of(ckpt: Path, state: dict[str, Any], run_dir: Path, env_fn, total_timesteps: int | None,
               overrides: dict[str, Any]):
    from ppox.rl.config import PPOConfig

    try:
        config = PPOConfig.from_dict(state["config"])
        config.validate()
    except (KeyError, TypeError, ValueError, PPOXError) as exc:
        raise ModelFileError(f"{ckpt / 'state.json'} holds no valid config ({exc})") from None
    changes: dict[str, Any] = dict(overrides)
    changes["run_dir"] = str(run_dir)
    if total_timesteps is not None:
        changes["total_timesteps"] = int(total_timesteps)
    config = config.replace(**changes)
    config.validate()
    if env_fn is None and (config.env_id is None or _trained_on_custom_env(ckpt)):
        raise ConfigError(f"this run used a custom environment ({config.env_id}): pass env_fn to PPO.resume")
    return config


def _resume_locked(cls: type[PPO], run_dir: Path, env_fn, total_timesteps: int | None,
                   overrides: dict[str, Any]) -> PPO:
    latest, problem = read_latest(run_dir)
    complete = list_checkpoints(run_dir)
    if latest is not None:  # newer ones are a killed writer's, past `latest`: superseded
        newest = iteration_of(latest)
        candidates = [latest, *(p for p in reversed(complete) if iteration_of(p) < newest)]
        later = [p for p in complete if iteration_of(p) > newest]
    else:
        candidates, later = list(reversed(complete)), []
    if not candidates:
        raise ModelFileError(f"{run_dir} holds no checkpoint (no {checkpoint_dir(run_dir)}/ckpt_*/state.json) "
                             "to resume from")
    is_main = _is_main_process()
    if problem is not None and is_main:
        print(f"warning: {checkpoint_dir(run_dir) / LATEST} {problem}; trying the newest complete checkpoint, "
              f"{candidates[0].name}", file=sys.stderr)
    metrics = metrics_index(run_dir)
    config = run_config(run_dir)
    rejected: list[tuple[Path, str]] = []
    for ckpt in candidates:
        try:
            state = _checked_state(ckpt, config, metrics)
            trainer = cls(_config_of(ckpt, state, run_dir, env_fn, total_timesteps, overrides), env_fn=env_fn)
            try:
                check_spaces(trainer, ckpt)
                _restore(trainer, ckpt, state)
            except BaseException:
                trainer.close()
                raise
        except RefusedFileError:
            raise  # a pickle payload, a newer format, a bad checksum: never skipped over
        except ModelFileError as exc:
            rejected.append((ckpt, str(exc)))
            continue
        break
    else:
        newest, why = rejected[0]
        more = f" (and {len(rejected) - 1} older checkpoint(s) unusable too)" if len(rejected) > 1 else ""
        raise ModelFileError(f"no usable checkpoint in {run_dir}: {newest.name}: {why}{more}")
    trainer.run_dir = run_dir
    if not is_main:  # torchrun: rank 0 owns the run directory
        return trainer
    # the restored state is good: only now change the run directory
    for path, why in rejected:
        aside = move_aside(path)
        print(f"warning: {path.name} is unusable ({why}); moved it to {aside.name} and resumed from the previous "
              f"good checkpoint, {ckpt.name}", file=sys.stderr)
    for path in later:
        try:
            _checked_state(path, config, metrics)
        except ModelFileError as exc:
            aside = move_aside(path)
            print(f"warning: {path.name} does not belong to this run ({exc}); moved it to {aside.name}",
                  file=sys.stderr)
    if rejected or problem is not None:
        atomic_write_bytes(checkpoint_dir(run_dir) / LATEST, (ckpt.name + "\n").encode())
    clean_stale(run_dir)
    discard_after(run_dir, trainer.iteration)
    return trainer


def _checked_state(ckpt: Path, config: dict[str, Any] | None, metrics: dict[int, int] | None) -> dict[str, Any]:
    state = read_state(ckpt, required=_REQUIRED)
    check_state(ckpt, state)
    check_against_run(ckpt, state, config, metrics)
    return state


def discard_after(run_dir: str | Path, iteration: int) -> None:
    """On resume from `iteration`: drop later metrics lines and later checkpoints (a killed run's leftovers).

    Call only once the restored state is known good (and with the run directory's lock held).
    """
    truncate_metrics(run_dir, iteration)
    for stale in list_checkpoints(run_dir):  # written after `latest` by a killed process: superseded
        if iteration_of(stale) > iteration:
            remove_checkpoint_dir(stale, aside=True)


def _restore(trainer: PPO, ckpt: Path, state: dict[str, Any]) -> None:
    try:
        _restore_fields(trainer, ckpt, state)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        raise ModelFileError(f"{ckpt} holds a field of the wrong type or shape ({type(exc).__name__}: {first}): "
                             "a damaged checkpoint") from None


def _restore_fields(trainer: PPO, ckpt: Path, state: dict[str, Any]) -> None:
    model_tensors = load_tensors(ckpt / "model.safetensors", trainer.device)
    tensors = load_tensors(ckpt / "trainer.safetensors", "cpu")
    agent_state = {k.removeprefix("agent."): v for k, v in model_tensors.items() if k.startswith("agent.")}
    try:
        trainer.agent.load_state_dict(agent_state, strict=True)
        trainer.optimizer.load_state_dict(unflatten_optimizer(state["optimizer"], tensors))
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"checkpoint {ckpt} does not match this network/environment: {first}") from None
    device = trainer.device

    def t(key: str) -> torch.Tensor:
        if key not in tensors:
            raise ModelFileError(f"checkpoint {ckpt} lacks {key}")
        return tensors[key]

    if trainer.obs_norm is not None:
        trainer.obs_norm.rms.load_state_dict(
            {k: t(f"obs_rms.{k}").to(device) for k in ("mean", "var", "count")})
    if trainer.reward_scaler is not None:
        trainer.reward_scaler.rms.load_state_dict(
            {k: t(f"reward_rms.{k}").to(device) for k in ("mean", "var", "count")})
        trainer.reward_scaler.returns = t("reward_returns").to(device).clone()
    trainer.kl_controller.load_state_dict(state["kl_controller"])
    trainer.iteration = int(state["iteration"])
    trainer.global_step = int(state["global_step"])
    trainer.skipped_updates = int(state["skipped_updates"])
    trainer._consecutive_skips = int(state.get("consecutive_skips", 0))
    trainer.recent_returns = deque(state["recent_returns"], maxlen=trainer.recent_returns.maxlen)
    trainer.envs.restarts = int(state.get("env_restarts", 0))
    trainer._wall_seconds = float(state.get("wall_seconds", 0.0))
    trainer._start_time -= trainer._wall_seconds  # wall_time keeps counting from where the run stopped

    env_record = state.get("env_state", {})
    restored_envs = False
    if not trainer.collective.is_main:  # the checkpoint holds rank 0's envs; other ranks start anew
        env_record = {"captured": False, "reason": f"rank {trainer.collective.rank} envs are not checkpointed"}
    if env_record.get("captured"):
        path = ckpt / env_record.get("file", ENV_STATE_FILE)
        reason = _restore_envs(trainer, path, env_record.get("sha256"))
        restored_envs = reason is None
    else:
        reason = env_record.get("reason", "not recorded")
    if restored_envs:
        trainer.envs._episode_return[:] = t("episode.return").numpy()
        trainer.envs._episode_length[:] = t("episode.length").numpy()
        trainer._next_obs = t("next_obs").to(device)
    elif trainer.collective.is_main:
        n = trainer.envs.num_envs
        print(f"warning: resume from {ckpt.name}: environment state not restored ({reason}); "
              f"the {n} env(s) start new episodes, so this run will not match an uninterrupted one exactly",
              file=sys.stderr)

    # RNG states last: building the trainer above consumed random numbers
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    nr = state["numpy_rng"]
    np.random.set_state((nr["name"], np.asarray(nr["key"], dtype=np.uint32), nr["pos"], nr["has_gauss"],
                         nr["cached_gaussian"]))
    torch.set_rng_state(t("rng.torch"))
    trainer._shuffle_generator().set_state(t("rng.shuffle"))
    policy_rng = trainer._policy_rng
    if state.get("policy_rng") is not None:
        policy_rng.bit_generator.state = state["policy_rng"]
    cuda_states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                               key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if trainer.collective.enabled:  # distinct action noise and shuffling per rank after a restart
        rank_seed = trainer.config.seed + trainer.collective.rank + 7919 * trainer.iteration
        torch.manual_seed(rank_seed)
        trainer._shuffle_generator().manual_seed(rank_seed)
        policy_rng.bit_generator.state = np.random.default_rng(rank_seed).bit_generator.state
    if not restored_envs:
        obs = trainer.envs.reset(seed=trainer.envs.seed + 104_729 * (trainer.iteration + 1))  # envs.seed: per rank
        trainer._next_obs = trainer._normalize(obs, update=True)
        if trainer.reward_scaler is not None:
            trainer.reward_scaler.returns.zero_()


def _restore_envs(trainer: PPO, path: Path, sha256: str | None) -> str | None:
    """Load env_state.pkl into the trainer's envs; None on success, else why not."""
    import gymnasium as gym

    if not path.is_file():
        return f"{path.name} is missing"
    blob = path.read_bytes()
    if sha256 is None or hashlib.sha256(blob).hexdigest() != sha256:
        raise RefusedFileError(
            f"{path} does not match the SHA-256 recorded in state.json: refusing to unpickle it")
    inner = trainer.envs.envs
    try:
        payload = pickle.loads(blob)  # own run directory, checksum verified (docs/reliability.md)
    except Exception as exc:
        return f"{path.name} could not be loaded: {type(exc).__name__}: {exc}"
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind == "sync" and isinstance(inner, gym.vector.SyncVectorEnv):
        envs = payload["envs"]
        if len(envs) != len(inner.envs):
            return f"{path.name} holds {len(envs)} envs, the run has {len(inner.envs)}"
        old, inner.envs = inner.envs, list(envs)
        for env in old:
            with contextlib.suppress(Exception):
                env.close()
        return None
    if kind == "vector" and not isinstance(inner, gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv):
        with contextlib.suppress(Exception):
            inner.close()
        trainer.envs.envs = payload["env"]
        return None
    return f"{path.name} holds {kind!r} envs, which do not fit this run's vectorisation"


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


# ---------------------------------------------------------------------------- CLI
RESUME_USAGE = "usage: ppox train --resume RUN_DIR [--total-timesteps N] [--no-progress]"


def parse_resume_args(argv: list[str], options: tuple[str, ...], flags: tuple[str, ...] = (),
                      usage: str = RESUME_USAGE) -> dict[str, str | bool]:
    """The arguments of a `--resume RUN_DIR` command line (`ppox train`, `ppox llm train`).

    Each of `options` takes a value (`--key VALUE` or `--key=VALUE`, `_` or `-` in the name), each
    of `flags` stands alone; anything else is an error showing `usage`, since a resumed run keeps its
    saved config. Returns {option or flag: value or True}, always with "--resume".
    """
    found: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        key, _, inline = argv[i].partition("=")
        key = "--" + key[2:].replace("_", "-") if key.startswith("--") else key
        if key in flags and not inline:
            found[key] = True
            i += 1
            continue
        if key not in options:
            raise PPOXError(f"--resume continues a run with its saved config; unexpected argument {argv[i]!r}. "
                            f"{usage}")
        value = inline or (argv[i + 1] if i + 1 < len(argv) else None)
        if value is None:
            raise PPOXError(f"{key} needs a value; {usage}")
        found[key] = value
        i += 1 if inline else 2
    if "--resume" not in found:
        raise PPOXError(usage)
    return found


def resume_main(argv: list[str]) -> int:
    """`ppox train --resume RUN_DIR`: continue RUN_DIR's run from its latest checkpoint."""
    from ppox.cli import _print_summary
    from ppox.rl.ppo import PPO

    args = parse_resume_args(argv, ("--resume", "--total-timesteps"), ("--progress", "--no-progress"))
    run_dir = str(args["--resume"])
    overrides: dict[str, Any] = {}
    if "--progress" in args or "--no-progress" in args:
        overrides["progress"] = "--no-progress" not in args
    total: int | None = None
    if "--total-timesteps" in args:
        try:
            total = int(args["--total-timesteps"])
        except ValueError:
            raise PPOXError(f"--total-timesteps must be an integer, got {args['--total-timesteps']!r}") from None
    model = PPO.resume(run_dir, total_timesteps=total, **overrides)
    start = model.iteration
    print(f"resuming {run_dir} from iteration {start} (global step {model.global_step})", file=sys.stderr)
    model.learn()
    _print_summary(model.summary, model.run_dir)
    if model.interrupted:
        print(f"interrupted: checkpoint of iteration {model.iteration} saved in {model.run_dir}",
              file=sys.stderr)
        return 130
    return 0
