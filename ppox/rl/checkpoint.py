"""Resumable checkpoints of a PPO run: write, find, load, resume (`ppox train --resume RUN_DIR`).

A checkpoint is a directory RUN_DIR/checkpoints/ckpt_<iteration>/ holding

    model.safetensors, model.json   the model, exactly as PPO.save writes it (PPO.load reads it)
    trainer.safetensors             optimizer tensors, normalisation statistics, RNG states, next obs,
                                    in-progress episode returns/lengths
    state.json                      iteration, global step, optimizer param groups, adaptive-KL beta,
                                    python/numpy RNG states, recent returns, config, env-state record
    env_state.pkl                   the environments (pickle), where they can be captured

What is saved comes from the trainer's public state API, PPO.state_dict() (itself made of the
normalisers' and VecEnv's state_dict()), and goes back through PPO.load_state_dict(); this module only
maps it to files. The directory protocol is ppox.runs': every file is written atomically into a temporary
directory that is renamed into place; only then is RUN_DIR/checkpoints/latest (one line: the directory
name) replaced, atomically. A process killed at
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
import pickle
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ppox import __version__
from ppox.errors import ConfigError, ModelFileError, PPOXError
from ppox.io import (
    FORMAT_VERSION,
    RefusedFileError,
    RunDirLock,
    all_finite,
    atomic_write_bytes,
    atomic_write_json,
    check_run_dir,
    load_tensors,
    read_json,
    save_tensors,
)
from ppox.rl.envs import VecEnv
from ppox.runs import (
    ENV_STATE_FILE,
    LATEST,
    begin_checkpoint,
    checkpoint_dir,
    clean_stale,
    discard_after,
    flatten_optimizer,
    is_int,
    is_main_process,
    is_number,
    iteration_of,
    list_checkpoints,
    metrics_index,
    move_aside,
    publish_checkpoint,
    read_latest,
    read_state,
    remove_checkpoint_dir,
    run_config,
    unflatten_optimizer,
)


class Checkpointable(Protocol):
    """What checkpointing needs of a trainer (ppox.rl.ppo.PPO): its public state API and a few attributes."""

    config: Any
    envs: VecEnv
    spec: Any
    agent: torch.nn.Module
    device: torch.device
    collective: Any
    run_dir: Path | None
    run_dir_lock: RunDirLock | None
    iteration: int
    global_step: int

    def state_dict(self, rollout_only: bool = False) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def save(self, path: str | Path) -> Path: ...
    def close(self) -> None: ...


KIND = "ppox.rl.checkpoint"
# config fields a resume or a later learn() may change: not part of a run's identity
VOLATILE_CONFIG = frozenset({"run_dir", "total_timesteps", "progress", "overwrite"})


RMS_KEYS = ("mean", "var", "count")  # a running mean/std's tensors, obs_rms.<key> and reward_rms.<key> in the files


# ---------------------------------------------------------------------------- environments
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


def capture_envs(envs: VecEnv) -> tuple[bytes | None, str]:
    """(pickle of the environments, "") or (None, why they cannot be captured)."""
    import gymnasium as gym

    inner = envs.envs
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
# ---------------------------------------------------------------------------- write
def save_checkpoint(trainer: Checkpointable, boundary: dict[str, Any] | None = None, capture_env_state: bool = True,
                    note: str | None = None) -> Path:
    """Write RUN_DIR/checkpoints/ckpt_<iteration>/ atomically, then point `latest` at it; prune to K.

    `boundary` (trainer.state_dict(rollout_only=True) at the start of the iteration) replaces the live
    rollout state: used when a run stops mid-iteration; its envs are then not captured (they are reset on
    resume).
    """
    if trainer.run_dir is None:
        raise PPOXError("a checkpoint needs a run directory: call learn() first")
    if not all_finite(trainer.agent.parameters()):
        raise ModelFileError("refusing to write non-finite (NaN/inf) weights into a checkpoint; the last "
                             "checkpoint on disk is unchanged")
    state = trainer.state_dict()
    if boundary is not None:
        state.update(boundary)
    name = f"ckpt_{int(state['iteration'])}"
    tmp = begin_checkpoint(trainer.run_dir, name)
    try:
        return _write_checkpoint(trainer, state, boundary is None and capture_env_state, note, tmp, name)
    except Exception:  # disk full, ...: no half-written directory stays behind (a kill leaves one: cleaned later)
        with contextlib.suppress(OSError, PPOXError):
            remove_checkpoint_dir(tmp)
        raise


def _write_checkpoint(trainer: Checkpointable, s: dict[str, Any], capture_envs_now: bool, note: str | None,
                      tmp: Path, name: str) -> Path:
    rng, envs = s["rng"], s["envs"]
    tensors: dict[str, torch.Tensor] = {
        "rng.torch": rng["torch"],
        "rng.shuffle": rng["shuffle"],
        "episode.return": torch.from_numpy(np.ascontiguousarray(envs["episode_return"])),
        "episode.length": torch.from_numpy(np.ascontiguousarray(envs["episode_length"])),
    }
    for i, cuda_state in enumerate(rng.get("cuda", [])):
        tensors[f"rng.cuda.{i}"] = cuda_state
    if s["next_obs"] is not None:
        tensors["next_obs"] = s["next_obs"]
    if s.get("memory") is not None:  # a recurrent policy's carried state
        tensors.update({f"memory.{k}": v for k, v in s["memory"].items()})
    if envs.get("action_mask") is not None:  # the masks of the envs' current observations
        tensors["envs.action_mask"] = torch.from_numpy(np.ascontiguousarray(envs["action_mask"]))
    if s["obs_norm"] is not None:
        tensors.update({f"obs_rms.{k}": v for k, v in s["obs_norm"].items()})
    if s["reward_scaler"] is not None:
        tensors.update({f"reward_rms.{k}": s["reward_scaler"][k] for k in RMS_KEYS})
        tensors["reward_returns"] = s["reward_scaler"]["returns"]
    optim_json = flatten_optimizer(s["optimizer"], tensors)

    env_record: dict[str, Any] = {"captured": False, "reason": note or "the run stopped mid-iteration"}
    if capture_envs_now:
        blob, reason = capture_envs(trainer.envs)
        if blob is not None:
            atomic_write_bytes(tmp / ENV_STATE_FILE, blob)
            digest = hashlib.sha256(blob).hexdigest()
            env_record = {"captured": True, "file": ENV_STATE_FILE, "sha256": digest}
        else:
            env_record = {"captured": False, "reason": reason}

    numpy_rng, python_rng = rng["numpy"], rng["python"]
    state = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "ppox_version": __version__,
        "iteration": int(s["iteration"]),
        "global_step": int(s["global_step"]),
        "skipped_updates": int(s["skipped_updates"]),
        "consecutive_skips": int(s["consecutive_skips"]),
        "env_restarts": trainer.envs.restarts,  # restarts used so far, also mid-iteration
        "action_mask_source": envs.get("action_mask_source"),
        "recent_returns": [float(x) for x in s["recent_returns"]],
        "kl_controller": s["kl_controller"],
        "optimizer": optim_json,
        "python_rng": [python_rng[0], list(python_rng[1]), python_rng[2]],
        "numpy_rng": {"name": numpy_rng[0], "key": [int(x) for x in numpy_rng[1]], "pos": int(numpy_rng[2]),
                      "has_gauss": int(numpy_rng[3]), "cached_gaussian": float(numpy_rng[4])},
        "policy_rng": rng.get("policy"),
        "wall_seconds": float(s["wall_seconds"]),
        "config": trainer.config.to_dict(),
        "env_state": env_record,
    }
    global_step = trainer.global_step
    trainer.global_step = int(s["global_step"])
    try:
        trainer.save(tmp)  # model.safetensors + model.json: `ppox eval` and PPO.load read a checkpoint too
    finally:
        trainer.global_step = global_step
    save_tensors(tmp / "trainer.safetensors", tensors)
    atomic_write_json(tmp / "state.json", state)  # written last: a directory with state.json is complete
    return publish_checkpoint(tmp, name, trainer.config.keep_checkpoints)


# ---------------------------------------------------------------------------- load / resume
# ---------------------------------------------------------------------------- validation against the run
_INT_FIELDS = ("iteration", "global_step", "skipped_updates", "consecutive_skips", "env_restarts")
_REQUIRED = ("iteration", "global_step", "skipped_updates", "recent_returns", "kl_controller", "optimizer",
             "python_rng", "numpy_rng", "config", "env_state")


def check_state(ckpt: Path, state: dict[str, Any]) -> None:
    """The types and ranges of an RL state.json's fields (ModelFileError naming the first wrong one)."""
    path = ckpt / "state.json"

    def bad(key: str, want: str) -> ModelFileError:
        return ModelFileError(f"{path}: {key!r} must be {want}, got {str(state.get(key))[:40]!r}: a damaged "
                              "checkpoint")

    for key in _INT_FIELDS:
        if (key in state or key in _REQUIRED) and not (is_int(state.get(key)) and state[key] >= 0):
            raise bad(key, "an integer >= 0")
    if not isinstance(state["recent_returns"], list) or not all(is_number(x) for x in state["recent_returns"]):
        raise bad("recent_returns", "a list of numbers")
    for key in ("kl_controller", "optimizer", "numpy_rng", "config", "env_state"):
        if not isinstance(state[key], dict):
            raise bad(key, "a JSON object")
    if not isinstance(state["optimizer"].get("param_groups"), list) or not all(
            isinstance(g, dict) for g in state["optimizer"]["param_groups"]):
        raise bad("optimizer", "an object with a list of param_groups")
    py = state["python_rng"]
    if not (isinstance(py, list) and len(py) == 3 and is_int(py[0]) and isinstance(py[1], list)
            and all(is_int(x) for x in py[1])):
        raise bad("python_rng", "[version, [ints], gauss]")
    nr = state["numpy_rng"]
    if not (isinstance(nr.get("name"), str) and isinstance(nr.get("key"), list) and all(is_int(x) for x in nr["key"])
            and is_int(nr.get("pos")) and is_int(nr.get("has_gauss")) and is_number(nr.get("cached_gaussian"))):
        raise bad("numpy_rng", "{name, key, pos, has_gauss, cached_gaussian}")
    if state.get("policy_rng") is not None and not isinstance(state["policy_rng"], dict):
        raise bad("policy_rng", "a JSON object")
    if "wall_seconds" in state and not is_number(state["wall_seconds"]):
        raise bad("wall_seconds", "a number")


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


def check_spaces(trainer: Checkpointable, ckpt: Path) -> None:
    """The checkpoint's model was trained on this env's observation and action spaces."""
    meta = read_json(ckpt / "model.json")
    if meta.get("obs_dim") != trainer.envs.obs_dim or meta.get("action_spec") != trainer.spec.to_dict():
        raise ModelFileError(
            f"{ckpt}: its model has observation size {meta.get('obs_dim')} and actions {meta.get('action_spec')}, "
            f"this run's env {trainer.config.env_id} {trainer.envs.obs_dim} and {trainer.spec.to_dict()}")


# ---------------------------------------------------------------------------- resume
def resume(cls: type[Checkpointable], run_dir: str | Path, env_fn=None, total_timesteps: int | None = None,
           **overrides: Any) -> Checkpointable:
    """A trainer restored from RUN_DIR's newest usable checkpoint; its learn() continues the run.

    Rank 0 takes the run directory's lock first and the trainer keeps it until its learn() ends, so
    a second resume or training run into RUN_DIR stops with one line instead of tearing its files.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    if not run_dir.is_dir():
        raise ModelFileError(f"run directory {run_dir} does not exist")
    lock = RunDirLock(run_dir, create=False).acquire() if is_main_process() else None
    try:
        trainer = _resume_locked(cls, run_dir, env_fn, total_timesteps, overrides)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.run_dir_lock = lock
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


def _resume_locked(cls: type[Checkpointable], run_dir: Path, env_fn, total_timesteps: int | None,
                   overrides: dict[str, Any]) -> Checkpointable:
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
    is_main = is_main_process()
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
    state = read_state(ckpt, KIND, "ppox checkpoint", _REQUIRED)
    check_state(ckpt, state)
    check_against_run(ckpt, state, config, metrics)
    return state


def _restore(trainer: Checkpointable, ckpt: Path, state: dict[str, Any]) -> None:
    try:
        _restore_fields(trainer, ckpt, state)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        raise ModelFileError(f"{ckpt} holds a field of the wrong type or shape ({type(exc).__name__}: {first}): "
                             "a damaged checkpoint") from None


def _restore_fields(trainer: Checkpointable, ckpt: Path, state: dict[str, Any]) -> None:
    """Turn the checkpoint's files into trainer.state_dict()'s layout and load it."""
    model_tensors = load_tensors(ckpt / "model.safetensors", trainer.device)
    tensors = load_tensors(ckpt / "trainer.safetensors", "cpu")

    def t(key: str) -> torch.Tensor:
        if key not in tensors:
            raise ModelFileError(f"checkpoint {ckpt} lacks {key}")
        return tensors[key]

    env_record = state.get("env_state", {})
    if not trainer.collective.is_main:  # the checkpoint holds rank 0's envs; other ranks start anew
        env_record = {"captured": False, "reason": f"rank {trainer.collective.rank} envs are not checkpointed"}
    restored_envs = False
    if env_record.get("captured"):
        reason = restore_envs(trainer.envs, ckpt / env_record.get("file", ENV_STATE_FILE), env_record.get("sha256"))
        restored_envs = reason is None
    else:
        reason = env_record.get("reason", "not recorded")
    py, nr = state["python_rng"], state["numpy_rng"]
    rng: dict[str, Any] = {
        "python": (py[0], tuple(py[1]), py[2]),
        "numpy": (nr["name"], np.asarray(nr["key"], dtype=np.uint32), nr["pos"], nr["has_gauss"],
                  nr["cached_gaussian"]),
        "torch": t("rng.torch"),
        "shuffle": t("rng.shuffle"),
        "policy": state.get("policy_rng"),
        "cuda": [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                            key=lambda k: int(k.rsplit(".", 1)[1]))],
    }
    config = trainer.config
    trainer_state = {
        "agent": {k.removeprefix("agent."): v for k, v in model_tensors.items() if k.startswith("agent.")},
        "optimizer": unflatten_optimizer(state["optimizer"], tensors),
        "obs_norm": {k: t(f"obs_rms.{k}") for k in RMS_KEYS} if config.norm_obs else None,
        "reward_scaler": {**{k: t(f"reward_rms.{k}") for k in RMS_KEYS}, "returns": t("reward_returns")}
        if config.norm_reward else None,
        "kl_controller": state["kl_controller"],
        "iteration": state["iteration"],
        "global_step": state["global_step"],
        "skipped_updates": state["skipped_updates"],
        "consecutive_skips": state.get("consecutive_skips", 0),
        "recent_returns": state["recent_returns"],
        "wall_seconds": state.get("wall_seconds", 0.0),
        "envs": {"restarts": state.get("env_restarts", 0),
                 "episode_return": t("episode.return").numpy() if restored_envs else None,
                 "episode_length": t("episode.length").numpy() if restored_envs else None,
                 "action_mask": t("envs.action_mask").numpy() if restored_envs and "envs.action_mask" in tensors
                 else None,
                 "action_mask_source": state.get("action_mask_source")},
        "next_obs": t("next_obs") if restored_envs else None,
        "memory": {k: t(f"memory.{k}") for k in ("state", "episode_starts")}
        if restored_envs and "memory.state" in tensors else None,
        "rng": rng,
    }
    try:
        trainer.load_state_dict(trainer_state)
    except RuntimeError as exc:  # load_state_dict of the network or the optimizer
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"checkpoint {ckpt} does not match this network/environment: {first}") from None
    if not restored_envs and trainer.collective.is_main:
        n = trainer.envs.num_envs
        print(f"warning: resume from {ckpt.name}: environment state not restored ({reason}); "
              f"the {n} env(s) start new episodes, so this run will not match an uninterrupted one exactly",
              file=sys.stderr)


def restore_envs(envs: VecEnv, path: Path, sha256: str | None) -> str | None:
    """Load env_state.pkl (checked against its SHA-256) into `envs`; None on success, else why not."""
    import gymnasium as gym

    if not path.is_file():
        return f"{path.name} is missing"
    blob = path.read_bytes()
    if sha256 is None or hashlib.sha256(blob).hexdigest() != sha256:
        raise RefusedFileError(
            f"{path} does not match the SHA-256 recorded in state.json: refusing to unpickle it")
    inner = envs.envs
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
        envs.envs = payload["env"]
        return None
    return f"{path.name} holds {kind!r} envs, which do not fit this run's vectorisation"


# ---------------------------------------------------------------------------- CLI
