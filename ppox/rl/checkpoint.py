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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import sys
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppox import __version__
from ppox.errors import ModelFileError, PPOXError
from ppox.io import (
    FORMAT_VERSION,
    atomic_write_bytes,
    atomic_write_json,
    check_format_version,
    load_tensors,
    read_json,
    save_tensors,
)

if TYPE_CHECKING:
    from ppox.rl.ppo import PPO

CHECKPOINTS = "checkpoints"
LATEST = "latest"
KIND = "ppox.rl.checkpoint"
ENV_STATE_FILE = "env_state.pkl"


# ---------------------------------------------------------------------------- stop signals
class StopSignals:
    """SIGINT/SIGTERM set a flag; the trainer finishes its iteration, checkpoints and stops.

    A second signal raises KeyboardInterrupt at once (the last checkpoint on disk stays valid).
    Outside the main thread no handler can be installed and this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

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
    live = boundary is None
    b = capture_boundary(trainer) if live else boundary
    iteration = int(b["iteration"])
    name = f"ckpt_{iteration}"
    tmp = begin_checkpoint(trainer.run_dir, name)

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
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish_checkpoint(tmp: Path, name: str, keep_last: int) -> Path:
    """Rename the finished `tmp` (from begin_checkpoint) to <name>, point `latest` at it, prune to keep_last."""
    root = tmp.parent
    final = root / name
    if final.exists():  # a stale checkpoint from a killed attempt past the one resumed from
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / LATEST, (name + "\n").encode())
    prune_checkpoints(root, keep_last, keep=name)
    return final


def clear_checkpoints(run_dir: str | Path) -> None:
    """Remove RUN_DIR/checkpoints (a fresh run in a directory it may --overwrite)."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        shutil.rmtree(root)


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
    name = path.name
    if not name.startswith("ckpt_"):
        return None
    try:
        return int(name.removeprefix("ckpt_"))
    except ValueError:
        return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories (those holding state.json), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(it, p) for p in root.iterdir() if p.is_dir() and (it := iteration_of(p)) is not None
             and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep_last: int, keep: str) -> None:
    complete = list_checkpoints(root.parent)
    for path in complete[:-keep_last] if keep_last > 0 else complete:
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.iterdir():  # temporary directories of killed writers
        ours = path.name.endswith(f"-{os.getpid()}")
        if path.name.startswith(".ckpt_") and ".tmp-" in path.name and not ours:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The directory `latest` names; if that is missing or damaged, the newest complete checkpoint."""
    run_dir = Path(run_dir)
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        candidate = root / name
        if name and "/" not in name and (candidate / "state.json").is_file():
            return candidate
    complete = list_checkpoints(run_dir)
    if not complete:
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


def resume(cls: type[PPO], run_dir: str | Path, env_fn=None, total_timesteps: int | None = None,
           **overrides: Any) -> PPO:
    """A trainer restored from RUN_DIR's latest checkpoint; its learn() continues the run."""
    from ppox.rl.config import PPOConfig

    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir)
    state = read_state(ckpt)
    try:
        config = PPOConfig.from_dict(state["config"])
    except (KeyError, TypeError, PPOXError) as exc:
        raise ModelFileError(f"{ckpt / 'state.json'} holds no valid config ({exc})") from None
    changes: dict[str, Any] = dict(overrides)
    changes["run_dir"] = str(run_dir)
    if total_timesteps is not None:
        changes["total_timesteps"] = int(total_timesteps)
    config = config.replace(**changes)
    config.validate()
    if config.env_id is None and env_fn is None:
        raise PPOXError("this run used a custom environment: pass env_fn to PPO.resume")

    trainer = cls(config, env_fn=env_fn)
    try:
        _restore(trainer, ckpt, state)
    except BaseException:
        trainer.close()
        raise
    trainer.run_dir = run_dir
    if not trainer.collective.is_main:  # torchrun: rank 0 owns the run directory
        return trainer
    discard_after(run_dir, trainer.iteration)
    return trainer


def discard_after(run_dir: str | Path, iteration: int) -> None:
    """On resume from `iteration`: drop later metrics lines and later checkpoints (a killed run's leftovers)."""
    truncate_metrics(run_dir, iteration)
    for stale in list_checkpoints(run_dir):  # written after `latest` by a killed process: superseded
        if iteration_of(stale) > iteration:
            shutil.rmtree(stale, ignore_errors=True)


def _restore(trainer: PPO, ckpt: Path, state: dict[str, Any]) -> None:
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
        raise ModelFileError(
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
    if not path.is_file():
        return
    kept: list[str] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        it = record.get("iteration") if isinstance(record, dict) else None
        if isinstance(it, int) and it <= iteration:
            kept.append(line)
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


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
