"""Vectorised environments behind one small interface that speaks torch tensors.

`VecEnv.step` returns everything the rollout needs as tensors on the training device, including
the true final observation of envs whose episode just ended (autoreset in the same step), and
tracks the undiscounted episode returns and lengths of the raw rewards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import multiprocessing
import signal
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.async_vector_env import AsyncState

from ppox.errors import ConfigError, EnvError
from ppox.rl.atari import (
    ATARI_EXTRA,
    GAME_INFO_KEY,
    AleVectorEnv,
    import_env_module,
    is_atari,
    make_atari_env,
    register_suite,
)
from ppox.rl.spaces import (
    ActionSpec,
    action_spec,
    check_observation_space,
    encode_image_np,
    encode_obs,
    image_layout,
    obs_dim,
    obs_floats,
    to_env_action,
)

EnvFn = Callable[[], gym.Env]
ACTION_MASK_KEY = "action_mask"  # a Dict observation's / info's action mask (not fed to the encoder)
# entries of the observation that are velocities, zeroed by --mask-velocity (rl-zoo's MaskVelocityWrapper's
# table, plus Acrobot's two angular velocities): fully observable tasks become POMDPs
VELOCITY_INDICES = {
    "CartPole-v0": (1, 3), "CartPole-v1": (1, 3), "MountainCar-v0": (1,), "MountainCarContinuous-v0": (1,),
    "Pendulum-v1": (2,), "Acrobot-v1": (4, 5), "LunarLander-v3": (2, 3, 5), "LunarLanderContinuous-v3": (2, 3, 5),
}


def velocity_indices(env_id: str | None) -> list[int]:
    """The velocity entries of `env_id`'s observations; ConfigError for an env not in VELOCITY_INDICES."""
    if env_id not in VELOCITY_INDICES:
        raise ConfigError(f"--mask-velocity knows the velocities of {', '.join(VELOCITY_INDICES)}; not of {env_id}")
    return list(VELOCITY_INDICES[env_id])
OBS_CHECKS = 8  # the first reset and this many steps have their observations checked against the space
_WARNED: set[tuple[str, str]] = set()  # (env name, problem) warned about (or left to a worker to): once per process


def check_env_id(env_id: str) -> str:
    """The registered id `env_id` names; EnvError with close matches when there is none.

    `module:EnvId` (gymnasium's form) imports `module` first, which registers its envs; ALE ids
    (`ALE/Breakout-v5`, `BreakoutNoFrameskip-v4`) and MinAtar ids register their suite (ppox.rl.atari)."""
    if ":" in env_id:
        env_id = import_env_module(env_id)
    register_suite(env_id)
    if env_id.startswith("ppox/"):
        import ppox.envs  # noqa: F401  registers ppox's randomised ids
    if env_id in gym.registry:
        return env_id
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.registry for the ids"
    raise EnvError(f"unknown environment id {env_id!r}{hint}")


def make_single_env(env_id: str, **kwargs) -> gym.Env:
    """One env of a registered id (see `check_env_id`); an Atari game comes with the Atari preprocessing
    (ppox.rl.atari.make_atari_env)."""
    env_id = check_env_id(env_id)
    if "mujoco" in str(gym.spec(env_id).entry_point):
        _route_mujoco_warnings()
    try:
        return make_atari_env(env_id, **kwargs) if is_atari(env_id) else gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        extra = ATARI_EXTRA if is_atari(env_id) else "e.g. pip install 'ppox[mujoco]'"
        raise EnvError(f"{env_id} needs an optional dependency: {exc} ({extra})") from None
    except gym.error.Error as exc:
        raise EnvError(f"could not create {env_id}: {exc}") from None


def _route_mujoco_warnings() -> None:
    """MuJoCo's default warning handler prints every warning and appends it to MUJOCO_LOG.TXT in the working
    directory: a file in the user's directory and, with gymnasium's HalfCheetah under MuJoCo 4, the same deprecation
    line for each env made (9 per default run: training and evaluation envs). Unless the process set its own handler,
    say each distinct warning once on stderr and write no file."""
    try:
        import mujoco
    except ImportError:  # gym.make says which dependency is missing
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def _mujoco_warning(message: str) -> None:
    _warn_once("MuJoCo", message, f"reported: {message}")


class NonFiniteEnvValue(EnvError):
    """An env returned NaN/Inf in its observation or reward."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class EnvStepTimeout(EnvError):
    """An async worker did not answer within --env-step-timeout (its workers are already shut down)."""

    def __init__(self, index: int | None, detail: str) -> None:
        super().__init__(f"{'an environment' if index is None else f'environment {index}'}: {detail}")
        self.index = index
        self.detail = detail


@dataclass
class StepResult:
    """Tensors on the training device; numpy arrays when `VecEnv.step` was given numpy actions."""

    obs: torch.Tensor | np.ndarray  # (num_envs, obs_dim) float32 next observation (reset obs where an episode ended)
    reward: torch.Tensor | np.ndarray  # (num_envs,) float32
    terminated: torch.Tensor | np.ndarray  # (num_envs,) bool
    truncated: torch.Tensor | np.ndarray  # (num_envs,) bool
    final_obs: torch.Tensor | np.ndarray  # (num_envs, obs_dim) true last observation where an episode ended
    finished_returns: list[float]  # undiscounted returns of the episodes that ended this step
    finished_lengths: list[int]
    finished_envs: list[int] = dataclasses.field(default_factory=list)  # the env index of each of them
    action_mask: torch.Tensor | np.ndarray | None = None  # (num_envs, head_size) bool valid actions of `obs`


class VecEnv:
    """num_envs copies of one environment, stepped together; autoreset in the same step."""

    def __init__(
        self,
        env_id: str | None,
        num_envs: int,
        seed: int,
        device: torch.device,
        backend: str = "gymnasium",
        vectorization: str = "auto",
        env_fn: EnvFn | None = None,
        max_restarts: int | None = None,
        step_timeout: float | None = None,
        action_masks: bool = True,
        mask_velocity: bool = False,
    ) -> None:
        if step_timeout is not None and not (isinstance(step_timeout, int | float) and 0 < step_timeout < math.inf):
            raise ConfigError(f"env_step_timeout must be a number of seconds > 0, got {step_timeout!r}")
        self.device = device
        self.num_envs = num_envs
        self.seed = seed
        self.env_id = env_id
        # env faults (a worker that raises or dies, non-finite values): None = raise EnvError at once;
        # N = reset/recreate the envs up to N times (see step and docs/reliability.md)
        self.max_restarts = max_restarts
        self.restarts = 0
        # seconds an async worker may take for one reset/step before it counts as an env fault
        self.step_timeout = step_timeout
        self._last_obs: torch.Tensor | None = None
        # a finaliser, not __del__: it also runs at interpreter exit, before multiprocessing joins
        # the workers (which would wait forever on one stuck in env code)
        self._holder = _EnvHolder()
        self._finalizer = weakref.finalize(self, _shutdown_holder, self._holder)
        self.backend = backend = resolve_env_backend(backend, env_id, device, env_fn, vectorization, step_timeout)
        self.name = env_id or _factory_name(env_fn)
        # Atari: the agent's episodes end with each life, the metrics' with each game (ppox.rl.atari)
        self.whole_games = False
        self._fresh_obs = False  # the env returns a new observation array every step (no copy needed)
        if backend == "numpy":
            from ppox.envs import NUMPY_ENV_IDS, RANDOMIZED_ENV_IDS, make_numpy_vec_env

            if env_id not in NUMPY_ENV_IDS + RANDOMIZED_ENV_IDS:
                raise EnvError(
                    f"env_backend numpy has no {env_id!r}; it has {', '.join(NUMPY_ENV_IDS)} "
                    "(use --env-backend gymnasium or auto)"
                )
            self.envs = make_numpy_vec_env(env_id, num_envs, seed=seed)
            # a new float32 (num_envs, obs_dim) array each step; a randomised env's Dict is encoded
            self._fresh_obs = not isinstance(self.envs.single_observation_space, gym.spaces.Dict)
        elif backend == "torch":
            from ppox.envs import RANDOMIZED_ENV_IDS, TORCH_ENV_IDS, make_torch_vec_env

            if env_id not in TORCH_ENV_IDS + RANDOMIZED_ENV_IDS:
                raise EnvError(
                    f"env_backend torch has no {env_id!r}; it has {', '.join(TORCH_ENV_IDS)} "
                    "(use --env-backend gymnasium)"
                )
            self.envs = make_torch_vec_env(env_id, num_envs, device=device, seed=seed)
        else:
            if env_fn is None:
                self.whole_games = is_atari(check_env_id(env_id))
                if backend == "ale" and not self.whole_games:
                    raise EnvError(f"env_backend ale runs ALE games only, not {env_id!r} (use --env-backend gymnasium)")
                env_fn = lambda: make_single_env(env_id)  # noqa: E731
            self._env_fn = env_fn
            try:
                # a timeout needs worker processes: a sync env stuck in step() cannot be stopped
                self.envs = self._make_gym_vector_env(vectorization == "async" or step_timeout is not None)
            except EnvError:
                raise
            except Exception as exc:  # a user's env factory failed: say so in one line
                raise EnvError(f"could not create the environment: {type(exc).__name__}: {exc}") from None
        self.single_observation_space = self.envs.single_observation_space
        self.single_action_space = self.envs.single_action_space
        # a Dict observation's "action_mask" key is the action mask, not an input of the policy
        self.env_observation_space = self.single_observation_space  # as the env declares it
        if isinstance(self.single_observation_space, gym.spaces.Dict) and ACTION_MASK_KEY in \
                self.single_observation_space.spaces:
            self.single_observation_space = gym.spaces.Dict(
                {k: v for k, v in self.single_observation_space.spaces.items() if k != ACTION_MASK_KEY})
        self.use_action_masks = action_masks
        self._mask_source: str | None = None  # "obs", "info", "method" or "none"; found at the first reset
        # source "method" on a SyncVectorEnv: each sub-env's bound `action_masks` (what SyncVectorEnv.call looks up
        # through the wrappers on every call), bound to the vector env it was read from (a restart makes a new one)
        self._mask_fns: tuple[Any, list[Callable[[], Any]]] | None = None
        self.action_mask: np.ndarray | None = None  # (num_envs, head_size) bool, valid actions of the current obs
        self._steps = 0
        self._hidden = velocity_indices(self.name) if mask_velocity else None
        check_observation_space(self.single_observation_space)
        self.spec: ActionSpec = action_spec(self.single_action_space)
        # what `_env_actions_np` applies, made once: a continuous space's bounds (float32 (dim,) each), else the
        # offsets of Discrete/MultiDiscrete spaces that do not start at 0 (None: the actions are the env's as they are)
        spec = self.spec
        self._np_bounds = ((np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32))
                           if spec.kind == "continuous" else None)
        self._np_offset = (np.asarray(spec.start if spec.kind == "multidiscrete" else spec.start[0])
                           if spec.kind != "continuous" and any(spec.start) else None)
        self.obs_dim = obs_dim(self.single_observation_space)
        self._episode_return = np.zeros(num_envs, dtype=np.float64)
        self._episode_length = np.zeros(num_envs, dtype=np.int64)
        self.numpy_backend = backend == "numpy" or isinstance(
            self.envs, gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv | AleVectorEnv)
        self._box_obs = isinstance(self.single_observation_space, gym.spaces.Box)
        self._discrete_obs = isinstance(self.single_observation_space, gym.spaces.Discrete)
        self._image = image_layout(self.single_observation_space) is not None  # kept uint8 (C, H, W)
        # ppox's own envs match their spaces; a gymnasium env's first observations are checked
        self._obs_checks_left = OBS_CHECKS + 1 if backend == "gymnasium" else 0

    @property
    def envs(self):
        return self._holder.envs

    @envs.setter
    def envs(self, value) -> None:
        self._holder.envs = value

    def state_dict(self) -> dict[str, Any]:
        """The bookkeeping a resumed run needs, as copies: restarts used so far and the returns and lengths of
        the episodes in progress. The environments themselves are not in it (ppox.rl.checkpoint pickles them
        where it can)."""
        return {"restarts": self.restarts, "episode_return": self._episode_return.copy(),
                "episode_length": self._episode_length.copy(),
                "action_mask": None if self.action_mask is None else self.action_mask.copy(),
                "action_mask_source": self._mask_source}

    @property
    def twin(self) -> Any | None:
        """ppox's numpy twin behind these envs where it steps them as they are: its physics can then run elsewhere
        (ppox.rl.compiled_rollout); else None."""
        return self._as_they_are("numpy")

    @property
    def torch_env(self) -> Any | None:
        """ppox's batched torch env behind these envs where it steps them as they are: its physics can then run
        inside a CUDA graph (ppox.rl.graphed_rollout); else None."""
        return self._as_they_are("torch")

    def _as_they_are(self, backend: str) -> Any | None:
        """The env of `backend` behind these envs, where nothing changes its steps (no randomisation, no hidden
        velocities); else None."""
        if self.backend != backend or self._hidden is not None:
            return None
        return self.envs if getattr(self.envs, "randomization", None) is None else None

    def record_steps(self, steps: int, episode_return: np.ndarray, episode_length: np.ndarray) -> None:
        """After `steps` vector steps of the twin taken outside `step` (ppox.rl.compiled_rollout): the returns and
        lengths of the episodes now in progress, (num_envs,) each."""
        self._episode_return[:] = episode_return
        self._episode_length[:] = episode_length
        self._steps += steps

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state_dict(); episode counters given as None are left alone (the envs start new episodes)."""
        self.restarts = int(state["restarts"])
        if state.get("episode_return") is not None:
            self._episode_return[:] = state["episode_return"]
        if state.get("episode_length") is not None:
            self._episode_length[:] = state["episode_length"]
        if state.get("action_mask") is not None:  # the masks of the restored envs' current observations
            self.action_mask = np.asarray(state["action_mask"], dtype=bool).reshape(self.num_envs, -1)
            source = state.get("action_mask_source")
            self._mask_source = source if source in ("obs", "info", "method") else self._mask_source

    def _make_gym_vector_env(self, use_async: bool) -> gym.vector.VectorEnv:
        """num_envs copies of self._env_fn in a gymnasium vector env, same-step autoreset (env_backend ale:
        ALE's C++ vector env, ppox.rl.atari.AleVectorEnv)."""
        if self.backend == "ale" and self.env_id is not None and self.whole_games:
            return AleVectorEnv(self.env_id, self.num_envs)
        mode = gym.vector.AutoresetMode.SAME_STEP
        if use_async:
            # worker 0 checks its first observations' dtype, which the shared-memory batch hides
            check = self._box_obs_space() and (self.name, "dtype") not in _WARNED
            fns = [_WorkerEnvFn(self._env_fn, self.name, check and i == 0) for i in range(self.num_envs)]
            # forked workers inherit the trainer's signal handlers (StopSignals during learn()): with
            # SIGINT/SIGTERM blocked until _WorkerEnvFn installs the worker's own, none can reach those
            blocked = _sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
            try:
                envs = gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
            finally:
                _sigmask(signal.SIG_SETMASK, blocked)
            if check:  # the worker cannot tell this process whether it warned: one check per env name
                _WARNED.add((self.name, "dtype"))
            return envs
        # copy=False: _encode_np copies the observations once anyway
        return gym.vector.SyncVectorEnv([self._env_fn] * self.num_envs, autoreset_mode=mode, copy=False)

    def _box_obs_space(self) -> bool:
        # called before single_observation_space is set (the spaces come from the vector env)
        space = getattr(self, "single_observation_space", None)
        return space is None or isinstance(space, gym.spaces.Box)

    def _check_obs(self, obs, raw_dtype: bool) -> None:
        """Warn once (per env name and problem, per process) about observations outside the declared
        space or of another dtype. Only the first reset and OBS_CHECKS steps: never on the hot path.

        raw_dtype: `obs` has the dtype the env returned (not a batch buffer of the space's dtype).
        """
        self._obs_checks_left -= 1
        space = self.env_observation_space
        if isinstance(space, gym.spaces.Box):
            arr = np.asarray(obs)
            if raw_dtype and arr.dtype != space.dtype:
                _warn_once(self.name, "dtype", f"returned observation of dtype {arr.dtype}, declared {space.dtype}")
            if arr.shape[1:] != space.shape:
                _warn_once(self.name, "shape", f"returned observation of shape {arr.shape[1:]}, declared "
                                               f"{space.shape}")
                return
            if (self.name, "bounds") in _WARNED or arr.dtype.kind not in "biuf":
                return
            with np.errstate(invalid="ignore"):
                outside = (arr < space.low) | (arr > space.high)  # NaN: reported as non-finite instead
            if outside.any():
                env, *element = (int(i) for i in np.argwhere(outside)[0])
                where = f", element [{', '.join(map(str, element))}]" if element else ""
                low, high = space.low[tuple(element)], space.high[tuple(element)]
                _warn_once(self.name, "bounds", f"returned observation outside the declared bounds (environment "
                                                f"{env}{where}: {arr[(env, *element)]} not in [{low}, {high}])")
            return
        if (self.name, "space") in _WARNED:
            return
        for env, one in enumerate(gym.vector.utils.iterate(self.envs.observation_space, obs)):
            if not space.contains(one):
                _warn_once(self.name, "space", f"returned observation outside the declared observation space "
                                               f"{space} (environment {env})")
                return

    def _encode(self, obs) -> torch.Tensor:
        if self.numpy_backend:
            return torch.from_numpy(self._encode_np(obs)).to(self.device)
        return encode_obs(obs, self.single_observation_space, self.device)

    def _encode_np(self, obs) -> np.ndarray:
        """Raw numpy observations -> a new float32 array (num_envs, obs_dim) (never the env's own buffer)."""
        if self._fresh_obs:  # ppox's numpy envs: already a new float32 (num_envs, obs_dim) array
            return obs
        if self._image:  # uint8 (num_envs, C, H, W)
            return encode_image_np(obs, self.single_observation_space)
        if self._box_obs:
            obs = np.asarray(obs)
            return np.array(obs.reshape(obs.shape[0], -1), dtype=np.float32)
        if self._discrete_obs:  # encode_obs's one-hot, in numpy: (num_envs, n) float32
            space = self.single_observation_space
            return np.eye(int(space.n), dtype=np.float32)[np.asarray(obs).reshape(-1) - int(space.start)]
        return encode_obs(obs, self.single_observation_space, "cpu").numpy()

    def reset(self, seed: int | None = None) -> torch.Tensor:
        seed = self.seed if seed is None else seed
        if self.step_timeout is not None and isinstance(self.envs, gym.vector.AsyncVectorEnv):
            self.envs.reset_async(seed=seed)
            obs, info = self._wait("reset")
        else:
            obs, info = self.envs.reset(seed=seed)
        if self._obs_checks_left:
            self._check_obs(obs, raw_dtype=False)
        self._episode_return[:] = 0
        self._episode_length[:] = 0
        self._last_obs = self._hide_velocities(self._encode(obs))
        if self.use_action_masks:
            if self._mask_source is None:
                self._mask_source = self._find_mask_source(obs, info)
            self.action_mask = self._read_action_mask(obs, info)
        return self._last_obs

    def _find_mask_source(self, obs, info: dict) -> str:
        """Where this env's action masks come from: a Dict observation's "action_mask" key, the reset info's
        "action_mask", the env's `action_masks()` method (sb3-contrib's convention), else "none"."""
        if isinstance(obs, dict) and ACTION_MASK_KEY in obs:
            return "obs"
        if isinstance(info, dict) and ACTION_MASK_KEY in info:
            return "info"
        if isinstance(self.envs, gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv):
            # asked, not tried: a failed call shuts an async worker down
            return "method" if all(self.envs.call("has_wrapper_attr", "action_masks")) else "none"
        return "none"

    def _read_action_mask(self, obs, info: dict | None) -> np.ndarray | None:
        """The action masks of the current observations, (num_envs, head_size) bool; EnvError naming the env
        and the step when one offers no valid action (every action of a Discrete space, or of one part of a
        MultiDiscrete space, masked)."""
        source = self._mask_source
        if source == "none" or source is None:
            return None
        mask = self._call_action_masks() if source == "method" else None
        if mask is None:
            raw = obs[ACTION_MASK_KEY] if source == "obs" else (
                info[ACTION_MASK_KEY] if source == "info" else np.stack(self.envs.call("action_masks")))
            mask = np.asarray(raw).astype(bool, copy=source == "obs").reshape(self.num_envs, -1)
        if mask.shape[1] != self.spec.head_size:
            raise EnvError(f"{self.name}'s action mask has {mask.shape[1]} entries per env; its action space "
                           f"{self.single_action_space} needs {self.spec.head_size} (one per choice)")
        nvec = self.spec.nvec
        # one sub-space (Discrete): any() per row, the reduceat's answer at ~2/3 of its cost
        valid = mask.any(axis=1) if len(nvec) == 1 else np.logical_or.reduceat(
            mask, np.cumsum((0, *nvec[:-1])), axis=1).all(axis=1)
        if not valid.all():
            i = int(np.flatnonzero(~valid)[0])
            raise EnvError(f"environment {i} of {self.name} offers no valid action: its action mask is all False "
                           f"at step {int(self._episode_length[i])} of its episode (vector step {self._steps})")
        return mask

    def _call_action_masks(self) -> np.ndarray | None:
        """`action_masks()` of every sub-env of a SyncVectorEnv, written row by row into a new (num_envs, head_size)
        bool array: the same calls as `SyncVectorEnv.call("action_masks")` without its per-call attribute lookup
        through the wrappers and the stacking (~40% of the read for 4 envs). None for async workers (the generic
        path reads theirs)."""
        envs = self.envs
        if not isinstance(envs, gym.vector.SyncVectorEnv):
            return None
        if self._mask_fns is None or self._mask_fns[0] is not envs:
            self._mask_fns = (envs, [env.get_wrapper_attr("action_masks") for env in envs.envs])
        head = self.spec.head_size
        mask = np.empty((self.num_envs, head), dtype=bool)
        for i, fn in enumerate(self._mask_fns[1]):
            raw = fn()
            try:
                if len(raw) != head:  # a row of another length would broadcast into this one
                    raise ValueError
                mask[i] = raw
            except (ValueError, TypeError):  # not a flat row: flattened, as the generic path's reshape does
                flat = np.asarray(raw).reshape(-1)
                if flat.size != head:
                    raise EnvError(f"{self.name}'s action mask has {flat.size} entries per env; its action space "
                                   f"{self.single_action_space} needs {head} (one per choice)") from None
                mask[i] = flat.astype(bool)
        return mask

    def _hide_velocities(self, obs):
        """Zero the velocity entries of flat observations (numpy or torch, (num_envs, obs_dim)), in place."""
        if self._hidden is not None:
            obs[:, self._hidden] = 0
        return obs

    def step(self, actions: torch.Tensor | np.ndarray) -> StepResult:
        """Step every env; with max_restarts set, an env fault restarts the envs (see _recover).

        numpy actions (gymnasium backends only, the CPU rollout of ppox.rl.ppo): the result holds
        numpy arrays, with no tensor conversions at all.
        """
        if self.max_restarts is None:
            return self._step(actions)
        try:
            result = self._step(actions)
        except Exception as exc:
            fault = _fault_of(exc, self.envs)
            if fault is None:
                raise
        else:
            self._last_obs = result.obs
            return result
        # outside the except block: workers forked while handling it would chain it to their own errors
        result = self._recover(*fault)
        return _as_numpy(result) if isinstance(actions, np.ndarray) else result

    def _recover(self, index: int | None, error: str, recreate: bool) -> StepResult:
        """Drop the in-progress episodes of all envs, recreate the vector env (a worker raised or died)
        or just reset it (non-finite values), and return a step in which every episode was truncated.

        The transition that failed gets reward 0 and bootstraps from the observation before it.
        """
        where = f"environment {index}" if index is not None else "an environment"
        if self.restarts >= self.max_restarts:
            if recreate:
                _shutdown(self.envs)  # broken workers: nothing to wait for at close()
            raise EnvError(
                f"{where} failed: {error}; giving up after {self.restarts} restart(s) "
                f"(--max-env-restarts {self.max_restarts})"
            )
        self.restarts += 1
        if recreate:
            _shutdown(self.envs)
            self.envs = self._make_gym_vector_env(isinstance(self.envs, gym.vector.AsyncVectorEnv))
        previous = self._last_obs
        if isinstance(previous, np.ndarray):
            previous = torch.from_numpy(previous).to(self.device)
        obs = self.reset(seed=self.seed + 7919 * self.restarts)
        zeros = torch.zeros(self.num_envs, device=self.device)
        return StepResult(
            obs=obs,
            reward=zeros,
            terminated=torch.zeros(self.num_envs, dtype=torch.bool, device=self.device),
            truncated=torch.ones(self.num_envs, dtype=torch.bool, device=self.device),
            final_obs=previous if previous is not None else obs,
            finished_returns=[],
            finished_lengths=[],
            action_mask=None if self.action_mask is None else torch.from_numpy(self.action_mask).to(self.device),
        )

    def _step(self, actions: torch.Tensor | np.ndarray) -> StepResult:
        if isinstance(actions, np.ndarray):
            return self._step_np(self._env_actions_np(actions))
        if self.numpy_backend:
            r = self._step_np(to_env_action(actions, self.spec))
            device = self.device

            def t(x: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(x).to(device)  # no copy on the CPU

            obs = t(r.obs)
            return StepResult(obs=obs, reward=t(r.reward), terminated=t(r.terminated), truncated=t(r.truncated),
                              final_obs=obs if r.final_obs is r.obs else t(r.final_obs),
                              finished_returns=r.finished_returns, finished_lengths=r.finished_lengths,
                              finished_envs=r.finished_envs,
                              action_mask=None if r.action_mask is None else t(r.action_mask))
        # batched torch env: stays on the device
        env_actions = actions
        obs, reward, terminated, truncated, info = self.envs.step(env_actions)
        reward_np = reward.cpu().numpy() if isinstance(reward, torch.Tensor) else np.asarray(reward)
        term_np = terminated.cpu().numpy() if isinstance(terminated, torch.Tensor) else np.asarray(terminated)
        trunc_np = truncated.cpu().numpy() if isinstance(truncated, torch.Tensor) else np.asarray(truncated)
        if not np.all(np.isfinite(reward_np)):
            bad = int(np.flatnonzero(~np.isfinite(reward_np))[0])
            raise NonFiniteEnvValue(bad, f"environment {bad} returned a non-finite reward ({reward_np[bad]})")

        self._episode_return += reward_np
        self._episode_length += 1
        done = np.logical_or(term_np, trunc_np)
        finished_returns: list[float] = []
        finished_lengths: list[int] = []
        next_obs = self._encode(obs)
        final_obs = next_obs
        if done.any():
            finished_returns = self._episode_return[done].tolist()
            finished_lengths = self._episode_length[done].tolist()
            self._episode_return[done] = 0
            self._episode_length[done] = 0
            final_obs = next_obs.clone()
            idx = np.flatnonzero(done)
            raw_final = info["final_obs"]
            if isinstance(raw_final, torch.Tensor):
                final_obs[idx] = self._encode(raw_final[idx]) if raw_final.shape[0] else final_obs[idx]
            elif isinstance(raw_final, dict):  # a Dict observation of tensors (ppox's randomised torch envs)
                final_obs[idx] = self._encode({k: v[idx] for k, v in raw_final.items()})
            else:
                # gymnasium: an object array holding the last observation of each ended env
                for i in idx:
                    one = _batch_of_one(raw_final[i], self.single_observation_space)
                    final_obs[i] = self._encode(one)[0]
        floats = obs_floats(next_obs, self.single_observation_space)  # a packed Dict: its vector keys
        if not torch.isfinite(floats).all():
            bad = int(torch.nonzero(~torch.isfinite(floats).all(dim=1))[0])
            raise NonFiniteEnvValue(bad, f"environment {bad} returned a non-finite observation")
        self._hide_velocities(final_obs)
        return StepResult(
            obs=self._hide_velocities(next_obs),
            reward=torch.as_tensor(reward_np, dtype=torch.float32, device=self.device),
            terminated=torch.as_tensor(term_np, dtype=torch.bool, device=self.device),
            truncated=torch.as_tensor(trunc_np, dtype=torch.bool, device=self.device),
            final_obs=final_obs,
            finished_returns=finished_returns,
            finished_lengths=finished_lengths,
            finished_envs=np.flatnonzero(done).tolist(),
        )

    def _env_actions_np(self, actions: np.ndarray) -> np.ndarray:
        """`to_env_action` for numpy policy actions: Gaussian actions clipped to the bounds (np.clip's values, without
        its Python wrapper), offsets added."""
        if self._np_bounds is not None:
            return np.minimum(np.maximum(actions, self._np_bounds[0]), self._np_bounds[1])
        if self._np_offset is not None:
            return actions + self._np_offset
        return actions

    def _check_finite(self, reward: np.ndarray, obs: np.ndarray) -> None:
        """NonFiniteEnvValue naming the first env whose reward or (float) observation is NaN/Inf.

        First one float64 sum per array instead of isfinite().all() (half the calls): a NaN/inf entry makes the sum
        non-finite, float32 entries cannot overflow it (a float64 reward sum that does goes to the exact check,
        which then finds nothing).
        """
        if math.isfinite(reward.sum()) and (obs.dtype.kind != "f" or math.isfinite(obs.sum(dtype=np.float64))):
            return
        if not np.isfinite(reward).all():
            bad = int(np.flatnonzero(~np.isfinite(reward))[0])
            raise NonFiniteEnvValue(bad, f"environment {bad} returned a non-finite reward ({reward[bad]})")
        if obs.dtype.kind == "f" and not np.isfinite(obs).all():  # images (uint8) are finite
            bad = int(np.flatnonzero(~np.isfinite(obs.reshape(len(obs), -1)).all(axis=1))[0])
            raise NonFiniteEnvValue(bad, f"environment {bad} returned a non-finite observation")

    def _step_twin(self, env_actions: np.ndarray) -> StepResult:
        """`_step_np` for ppox's numpy twins (ppox.envs.numpy_envs), which return a new float32 observation
        array, float64 rewards, bool flags, no action masks, and an info that is non-empty exactly when an
        episode ended: the same results with a fraction of the per-step calls."""
        obs, reward, terminated, truncated, info = self.envs.step(env_actions)
        self._check_finite(reward, obs)
        self._episode_return += reward
        self._episode_length += 1
        final_obs = obs
        finished_returns: list[float] = []
        finished_lengths: list[int] = []
        finished_envs: list[int] = []
        if info:
            done = info["_final_obs"]
            finished_envs = np.flatnonzero(done).tolist()
            finished_returns = self._episode_return[done].tolist()
            finished_lengths = self._episode_length[done].tolist()
            self._episode_return[done] = 0
            self._episode_length[done] = 0
            final_obs = obs.copy()
            final_obs[done] = info["final_obs"][done]
        self._steps += 1
        return self._np_result(obs, reward, terminated, truncated, final_obs,
                               (finished_returns, finished_lengths, finished_envs))

    def _step_np(self, env_actions: np.ndarray) -> StepResult:
        """One step of a gymnasium vector env, all in numpy (float32 obs and reward, bool flags)."""
        if self._fresh_obs:
            return self._step_twin(env_actions)
        raw_dtype = False
        games: dict[int, dict] = {}  # whole_games: env index -> the statistics of its game that ended
        info = None
        if (isinstance(self.envs, gym.vector.SyncVectorEnv) and (self._box_obs or self._discrete_obs)
                and self._mask_source != "info"):
            obs, reward, terminated, truncated, raw_final = _step_sync_envs(
                self.envs.envs, env_actions, self.spec, games if self.whole_games else None)
            raw_dtype = True
        else:
            if self.step_timeout is not None and isinstance(self.envs, gym.vector.AsyncVectorEnv):
                self.envs.step_async(env_actions)
                obs, reward, terminated, truncated, info = self._wait("step")
            else:
                obs, reward, terminated, truncated, info = self.envs.step(env_actions)
            raw_final = info.get("final_obs")
            if self.whole_games:
                games = _game_infos(info)
        if self._obs_checks_left:
            self._check_obs(obs, raw_dtype)
        reward = np.asarray(reward)
        next_obs = self._encode_np(obs)
        self._check_finite(reward, obs_floats(next_obs, self.single_observation_space))
        self._episode_return += reward
        self._episode_length += 1
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        final_obs = next_obs
        finished_returns: list[float] = []
        finished_lengths: list[int] = []
        finished_envs: list[int] = []
        if done.any():
            finished_envs = np.flatnonzero(done).tolist()
            finished_returns = self._episode_return[done].tolist()
            finished_lengths = self._episode_length[done].tolist()
            if self.whole_games:  # a lost life ends the agent's episode; only a game's end is reported
                finished_envs = sorted(games)
                finished_returns = [float(games[i]["r"]) for i in finished_envs]
                finished_lengths = [int(games[i]["l"]) for i in finished_envs]
            self._episode_return[done] = 0
            self._episode_length[done] = 0
            final_obs = next_obs.copy()
            if self._fresh_obs:  # a (num_envs, obs_dim) float32 array
                final_obs[done] = raw_final[done]
            else:
                for i in np.flatnonzero(done):  # raw_final[i]: the last observation of ended env i
                    final_obs[i] = self._encode_np(_batch_of_one(raw_final[i], self.single_observation_space))[0]
        self._steps += 1
        if self.use_action_masks and self._mask_source != "none":
            self.action_mask = self._read_action_mask(obs, info)
        return self._np_result(next_obs, reward, terminated, truncated, final_obs,
                               (finished_returns, finished_lengths, finished_envs))

    def _np_result(self, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                   final_obs: np.ndarray, finished: tuple[list[float], list[int], list[int]]) -> StepResult:
        """A numpy step's StepResult: velocities hidden where asked, float32 rewards, the current action mask;
        `finished`: (returns, lengths, env indices) of the episodes that ended."""
        return StepResult(
            obs=self._hide_velocities(obs),
            reward=reward.astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            final_obs=self._hide_velocities(final_obs),
            finished_returns=finished[0],
            finished_lengths=finished[1],
            finished_envs=finished[2],
            action_mask=self.action_mask,
        )

    def _wait(self, call: str):
        """reset_wait/step_wait of the async envs, at most step_timeout seconds; a timeout shuts the
        workers down (one is stuck in env code) and raises EnvStepTimeout."""
        envs = self.envs
        try:
            return getattr(envs, f"{call}_wait")(timeout=self.step_timeout)
        except multiprocessing.TimeoutError:
            late = [i for i, pipe in enumerate(envs.parent_pipes) if pipe is not None and not pipe.poll(0)]
            _shutdown(envs)
            raise EnvStepTimeout(late[0] if late else None, f"{self.name} did not return from {call}() within "
                                 f"{self.step_timeout:g} s (--env-step-timeout {self.step_timeout:g})") from None

    def close(self) -> None:
        """Close the envs (idempotent); async workers with a call in flight are terminated, not awaited."""
        if not self._finalizer.detach():
            return
        envs = self.envs
        if isinstance(envs, gym.vector.AsyncVectorEnv) and envs._state != AsyncState.DEFAULT:
            _shutdown(envs)  # interrupted mid-step: a worker may be stuck in env code
            return
        try:
            envs.close()
        except Exception:  # a dead async worker: terminate the rest rather than wait on it
            _shutdown(envs)


def resolve_env_backend(backend: str, env_id: str | None, device: torch.device, env_fn: EnvFn | None,
                        vectorization: str = "auto", step_timeout: float | None = None) -> str:
    """The backend a VecEnv uses: "auto" is "numpy" (ppox's numpy twin, same dynamics step for step)
    when the env id has one, the device is a CPU, no env_fn is given, vectorization is not async and
    no step timeout is set; else "gymnasium". An env_fn always means gymnasium."""
    if env_fn is not None:
        return "gymnasium"
    if backend == "auto":
        from ppox.envs import NUMPY_ENV_IDS, RANDOMIZED_ENV_IDS

        cpu = torch.device(device).type == "cpu"
        in_process = vectorization != "async" and step_timeout is None
        twin = env_id in NUMPY_ENV_IDS + RANDOMIZED_ENV_IDS
        return "numpy" if twin and cpu and in_process else "gymnasium"
    if step_timeout is not None and backend != "gymnasium":
        raise ConfigError(f"--env-step-timeout needs gymnasium envs in worker processes; env_backend {backend} "
                          "steps ppox's own envs in this process (use --env-backend gymnasium or auto)")
    return backend


def _step_sync_envs(envs: list[gym.Env], actions: np.ndarray, spec: ActionSpec, games: dict | None = None):
    """`SyncVectorEnv.step` with same-step autoreset for Box or Discrete observations, without its per-step
    bookkeeping (infos, batching into its own buffer): the same env calls in the same order, so the
    same results, ~15-20 us less per step for 4 envs. Returns (obs list, rewards, terminated,
    truncated, final observations by env index); `games`, if given, gets the whole-game statistics
    (info["episode"], ppox.rl.atari) of the envs whose game ended, by env index."""
    n = len(envs)
    obs, final = [None] * n, {}
    rewards = np.empty(n, dtype=np.float64)
    terminated = np.empty(n, dtype=bool)
    truncated = np.empty(n, dtype=bool)
    acts = actions.tolist() if spec.kind == "discrete" else actions  # python ints check fastest
    for i in range(n):  # `i` names the failing env for _fault_of
        env = envs[i]
        o, rewards[i], term, trunc, info = env.step(acts[i])
        terminated[i], truncated[i] = term, trunc
        if term or trunc:
            final[i] = o
            if games is not None and GAME_INFO_KEY in info:
                games[i] = info[GAME_INFO_KEY]
            o, _ = env.reset()
        obs[i] = o
    return np.stack(obs), rewards, terminated, truncated, final


def _game_infos(info: dict) -> dict[int, dict]:
    """The whole-game statistics in a gymnasium vector env's same-step info: {env index: {"r", "l"}}."""
    final = info.get("final_info") or {}
    stats, mask = final.get(GAME_INFO_KEY), final.get(f"_{GAME_INFO_KEY}")
    if stats is None or mask is None:
        return {}
    return {int(i): {"r": stats["r"][i], "l": stats["l"][i]} for i in np.flatnonzero(mask)}


def _as_numpy(result: StepResult) -> StepResult:
    """A StepResult of (CPU) tensors as numpy arrays."""
    def arr(x):
        return x.cpu().numpy() if isinstance(x, torch.Tensor) else x

    return StepResult(arr(result.obs), arr(result.reward), arr(result.terminated), arr(result.truncated),
                      arr(result.final_obs), result.finished_returns, result.finished_lengths,
                      result.finished_envs, arr(result.action_mask))


def _batch_of_one(obs, space: gym.Space):
    """Wrap one env's raw observation in a leading batch dimension of 1, for encode_obs."""
    if isinstance(space, gym.spaces.Dict):
        return {k: _batch_of_one(obs[k], s) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_batch_of_one(o, s) for o, s in zip(obs, space.spaces, strict=True))
    return np.asarray(obs)[None]


_WORKER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _sigmask(how: int, signals) -> set:
    """signal.pthread_sigmask where the platform has it (not Windows, which has no fork either)."""
    if not hasattr(signal, "pthread_sigmask"):
        return set()
    return signal.pthread_sigmask(how, signals)


class _WorkerEnvFn:
    """Env factory run inside an async worker: the worker ignores SIGINT, so Ctrl-C reaches only the
    trainer, which finishes its iteration and checkpoints (the workers stop when the trainer closes them).
    SIGTERM gets its default action back (a forked worker inherits the trainer's handler, which would
    turn `terminate()` into a stop request the worker never acts on)."""

    def __init__(self, env_fn: EnvFn, name: str = "", check_dtype: bool = False) -> None:
        self.env_fn = env_fn
        self.name = name
        self.check_dtype = check_dtype

    def __call__(self) -> gym.Env:
        # AsyncVectorEnv also calls the factory once in the trainer's own process (to read the
        # spaces): only a worker process may change its signal handling
        if multiprocessing.parent_process() is None:
            return self.env_fn()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)  # blocked by the trainer while forking
        env = self.env_fn()
        if self.check_dtype and isinstance(env.observation_space, gym.spaces.Box):
            env = _DtypeCheck(env, self.name)
        return env


class _DtypeCheck(gym.Wrapper):
    """Warns once if the env's first observations differ from its declared dtype (an async worker's
    shared-memory batch converts them, so the trainer cannot see it); free after OBS_CHECKS steps."""

    def __init__(self, env: gym.Env, name: str) -> None:
        super().__init__(env)
        self._name = name
        self._left = OBS_CHECKS + 1

    def _check(self, obs) -> None:
        self._left -= 1
        dtype = np.asarray(obs).dtype
        if dtype != self.observation_space.dtype:
            self._left = 0
            _warn_once(self._name, "dtype", f"returned observation of dtype {dtype}, declared "
                                            f"{self.observation_space.dtype}")

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self._left:
            self._check(obs)
        return obs, info

    def step(self, action):
        result = self.env.step(action)
        if self._left:
            self._check(result[0])
        return result


def _warn_once(name: str, problem: str, text: str) -> None:
    if (name, problem) in _WARNED:
        return
    _WARNED.add((name, problem))
    print(f"warning: {name} {text}", file=sys.stderr, flush=True)


def _factory_name(env_fn: EnvFn | None) -> str:
    """A readable name for a user's env factory: the class or function (under functools.partial)."""
    fn = getattr(env_fn, "func", env_fn)
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _fault_of(exc: BaseException, envs) -> tuple[int | None, str, bool] | None:
    """(env index, error text, recreate?) when `exc` is an environment fault, else None (a bug: re-raise)."""
    if isinstance(exc, NonFiniteEnvValue):
        return exc.index, str(exc).removeprefix(f"environment {exc.index} "), False
    if isinstance(exc, EnvStepTimeout):
        return exc.index, exc.detail, True
    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(envs, gym.vector.AsyncVectorEnv):
        index = _traceback_local(exc, "_raise_if_errors", "index")  # the worker whose error gymnasium raised
        if index is None:  # a dead worker: its pipe's recv() failed
            index = _traceback_local(exc, "step_wait", "env_idx")
        if index is None:
            return None
        if isinstance(exc, EOFError | ConnectionError | OSError):
            process = envs.processes[index]
            process.join(timeout=1.0)
            error = f"its worker process died (exit code {process.exitcode})"
        return index, error, True
    if isinstance(envs, gym.vector.SyncVectorEnv):
        index = _traceback_local(exc, "step", "i", module="sync_vector_env")
        if index is None:
            index = _traceback_local(exc, "_step_sync_envs", "i")
        if index is not None:
            return index, error, True
    return None


def _traceback_local(exc: BaseException, function: str, name: str, module: str = "") -> int | None:
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == function and module in code.co_filename and name in tb.tb_frame.f_locals:
            value = tb.tb_frame.f_locals[name]
            return int(value) if isinstance(value, int | np.integer) else None
        tb = tb.tb_next
    return None


class _EnvHolder:
    """The vector env of a VecEnv, reachable by its finaliser without a reference to the VecEnv."""

    envs = None


def _shutdown_holder(holder: _EnvHolder) -> None:
    if holder.envs is not None:
        _shutdown(holder.envs)


def _shutdown(envs) -> None:
    """Close a vector env that may be broken (dead or failed workers) without waiting on it."""
    if isinstance(envs, gym.vector.AsyncVectorEnv):
        if envs.closed:
            return
        for process in envs.processes:
            if process.is_alive():
                process.terminate()
        for process in envs.processes:
            process.join(timeout=5.0)
        for pipe in envs.parent_pipes:
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        envs.closed = True
        return
    with contextlib.suppress(Exception):
        envs.close()
