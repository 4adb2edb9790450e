"""PPO on gymnasium environments: rollout, advantages, update, logging, saving.

The math lives in ppox.core (losses, GAE, KL, the update loop); this module holds the state:
environments, networks, optimizer, normalisers, buffers and the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppox import __version__
from ppox.core import AdaptiveKLController, explained_variance, gae, kl_estimate
from ppox.core.update import PolicyOutput, ppo_update
from ppox.diagnostics.doctor import LiveDoctor
from ppox.distributed import init_device
from ppox.errors import ConfigError, EnvError, ModelFileError, PPOXError, TrainingHalted
from ppox.io import (
    FORMAT_VERSION,
    LOCK_FILE,
    RunDirLock,
    all_finite,
    atomic_write_json,
    check_format_version,
    check_run_dir,
    load_tensors,
    os_error,
    read_json,
    save_tensors,
)
from ppox.rl import aot
from ppox.rl import checkpoint as ckpt
from ppox.rl.buffer import Carry, Rollout
from ppox.rl.callbacks import CallbackLike, CallbackList, make_callbacks, start_callbacks
from ppox.rl.config import PPOConfig, preset_config
from ppox.rl.envs import ACTION_MASK_KEY, EnvFn, VecEnv
from ppox.rl.fast import (
    CompiledUpdate,
    CompileTimer,
    GraphedFunction,
    compile_torch_env,
    compiled_before,
    cuda_graphs_enabled,
    decide_compile,
    fallback_note,
    update_cache_key,
)
from ppox.rl.model_file import (
    ObservationError,
    architecture,
    batch_size_of,
    env_name,
    env_spaces,
    load_spaces,
    read_safetensors_header,
)
from ppox.rl.normalize import ObsNormalizer, RewardScaler
from ppox.rl.policy import Policy, forward_inputs
from ppox.rl.rollout import make_collector
from ppox.rl.spaces import (
    action_spec,
    check_observation_space,
    encode_obs,
    has_image,
    obs_dim,
    obs_storage,
    space_to_json,
    to_env_action,
)
from ppox.run_context import (
    Progress,
    RunContext,
    WeightGuard,
    hold_run_dir,
    mean_over_ranks,
    rounding_note,
    weight_hashes,
)

MAX_CONSECUTIVE_SKIPS = 10
SKIPPED_UPDATES_HALT = (
    "training stopped at iteration {iteration}: {skipped} minibatch updates had non-finite losses or gradients; "
    "likely causes: learning rate too high, unscaled rewards (try --norm-reward), unnormalised observations "
    "(try --norm-obs)"
)
RANK_SEED_STRIDE = 10_000  # env seeds of rank r start at seed + r * stride
TIMING_KEYS = ("sps", "wall_time")  # the only metrics that differ between two runs with one seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PPO:
    """Proximal Policy Optimization for a gymnasium environment.

    >>> agent = PPO("CartPole-v1", seed=1)      # the env's preset, with overrides
    >>> agent.learn(100_000)
    >>> agent.evaluate(episodes=20)["mean"]
    """

    def __init__(self, config: PPOConfig | str = "CartPole-v1", env_fn: EnvFn | None = None, **overrides: Any):
        if isinstance(config, str):
            config = preset_config(config, **overrides)
        elif isinstance(config, PPOConfig):
            config = config.replace(**overrides) if overrides else config
        else:
            raise ConfigError(f"PPO() takes a PPOConfig or an env id, got {type(config).__name__}")
        if env_fn is not None:
            # record the env actually trained on (its registered id, else its class name), not the
            # config's default id: model.json, the run directory and the summary are named after it
            config = config.replace(env_id=_check_user_env(env_fn))
        self._setup_runtime(config, env_fn)
        self._custom_env = env_fn is not None
        self._envs: VecEnv | None = self._make_envs()
        self._build(self._envs.single_observation_space, self._envs.single_action_space)

    def _setup_runtime(self, config: PPOConfig, env_fn: EnvFn | None) -> None:
        """Device, process group, threads and seeds: everything before the networks are built."""
        self.config = config
        self.env_fn = env_fn
        # torchrun (WORLD_SIZE > 1): join the process group; one GPU per process with NCCL
        self.device, self.collective = init_device(config.device)
        if config.torch_threads > 0:
            # threads beyond the machine's cores only cost memory: a model file must not size the pool
            torch.set_num_threads(min(config.torch_threads, os.cpu_count() or 1))
        seed_everything(config.seed)
        self._start_time = time.perf_counter()

    def _make_envs(self) -> VecEnv:
        config = self.config
        env_seed = config.seed + RANK_SEED_STRIDE * self.collective.rank  # distinct envs on every rank
        return VecEnv(
            config.env_id, config.num_envs, env_seed, self.device,
            backend=config.env_backend, vectorization=config.vectorization, env_fn=self.env_fn,
            max_restarts=config.max_env_restarts, step_timeout=config.env_step_timeout,
            action_masks=config.action_masks, mask_velocity=config.mask_velocity,
        )

    def _build(self, observation_space: Any, action_space: Any, uninitialised: bool = False) -> None:
        """Networks, optimizer and normalisers for these spaces; `uninitialised`: skip the random
        initialisation (PPO.load overwrites every weight, and orthogonal init of a big layer takes seconds)."""
        config = self.config
        check_observation_space(observation_space)
        self.observation_space = observation_space
        self.action_space = action_space
        self.spec = action_spec(action_space)
        self.obs_dim = obs_dim(observation_space)
        with torch.device("meta") if uninitialised else contextlib.nullcontext():
            agent = Policy(
                observation_space, self.spec, config.hidden_sizes, config.activation, config.shared_trunk,
                config.init_log_std, encoder=config.encoder, memory=config.memory, memory_size=config.memory_size,
            )
        if config.norm_obs and has_image(observation_space):
            raise ConfigError("norm_obs does not apply to image observations: the CNN scales pixels to [0, 1] "
                              "itself (drop --norm-obs)")
        self.agent = agent.to_empty(device=self.device) if uninitialised else agent.to(self.device)
        if self.collective.enabled:
            self.collective.broadcast_module(self.agent)  # one set of initial weights everywhere
            torch.manual_seed(config.seed + self.collective.rank)  # but distinct action noise per rank
        # foreach: one multi-tensor Adam step over all parameters (torch picks it only on CUDA by default); the same
        # numbers as the per-tensor loop (the same-seed record is identical), a fraction of its per-op overhead on
        # a CPU, where the eager update's many small tensors make the loop a large part of each minibatch
        aot.defer_dynamo_import()  # a run whose update loads an ahead-of-time library never imports the compiler
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=config.learning_rate, eps=1e-5, foreach=True)
        self.obs_norm = ObsNormalizer(self.obs_dim, config.clip_obs, self.device) if config.norm_obs else None
        self.reward_scaler = (
            RewardScaler(config.num_envs, config.gamma, config.clip_reward, self.device) if config.norm_reward else None
        )
        self.kl_controller = AdaptiveKLController(config.kl_coef, config.kl_target)
        self.objective = config.update_objective()  # what ppox.core's update reads
        # compiled fast paths (ppox.rl.fast); compile time is reported as compile_seconds
        self.compile_timer = CompileTimer()
        # the numpy rollout's action noise (ppox.rl.rollout.NumpyPolicy): seeded here, saved in checkpoints
        self._policy_rng = np.random.default_rng([config.seed % 2**63, self.collective.rank])
        self.collector = None  # the rollout backend, made with the envs (_attach_envs)
        self._gae_graph: tuple[Rollout, GraphedFunction] | bool | None = None  # (its buffer, graph); False: failed
        # a recurrent policy's state, carried across rollouts (ppox.rl.buffer.Carry); part of a checkpoint
        self._carry = Carry.fresh(self.agent, config.num_envs) if self.agent.recurrent else None
        self._compile_said = False
        self._decide_compile(config.total_timesteps)
        if self._envs is not None:
            self._attach_envs(self._envs)
        self.global_step = 0
        self.iteration = 0
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.skipped_updates = 0
        self.run_dir: Path | None = None
        self.run_dir_lock: RunDirLock | None = None  # held from resume() or learn() until learn() returns
        self._next_obs: torch.Tensor | None = None
        self._wall_seconds = 0.0
        self._shuffle_gen: torch.Generator | None = None  # minibatch shuffling; part of a checkpoint
        self._consecutive_skips = 0
        self.interrupted = False
        self.stopped_by: str | None = None

    def _attach_envs(self, envs: VecEnv) -> None:
        """The rollout backend for these envs (numpy or torch: ppox.rl.rollout.make_collector decides)."""
        self._make_collector(envs)
        if self.compile_decision.enabled and self.config.env_backend == "torch" and self.env_fn is None:
            compile_torch_env(envs.envs, self.compile_timer)

    def _make_collector(self, envs: VecEnv) -> None:
        # the rollout reads config.compile: it gets the resolved setting ("auto" decided by _decide_compile)
        self.collector = make_collector(self.config.replace(compile=self.compile_decision.enabled), envs, self.agent,
                                        self.obs_norm, self.reward_scaler, self._policy_rng, self.compile_timer,
                                        self._carry)

    def _decide_compile(self, total_timesteps: int) -> None:
        """Resolve config.compile ("auto": ppox.rl.fast.decide_compile) for a run of `total_timesteps` steps and
        make the compiled update (its graph is built on its first call)."""
        cfg = self.config
        iterations = max(1, total_timesteps // (cfg.batch_size * self.collective.world_size))
        self.compile_decision = decide_compile(
            cfg.compile, device=self.device, optimizer=self.optimizer, recurrent=self.agent.recurrent,
            distributed=self.collective.enabled, minibatch_updates=iterations * cfg.update_epochs * cfg.num_minibatches,
            ahead_of_time=aot.enabled(self.device, self.agent),
        )
        self._update_cache_key = update_cache_key(self.agent, self.objective, cfg.batch_size // cfg.num_minibatches,
                                                  self.device)
        self._compiled_update = CompiledUpdate(
            self.agent, self.optimizer, self.objective, cfg.max_grad_norm, compile=True, timer=self.compile_timer,
            cache_key=self._update_cache_key,
        ) if self.compile_decision.enabled else None

    def _set_total_timesteps(self, total_timesteps: int | None) -> None:
        """learn(total_timesteps=N): the run's new length (which also decides compile="auto" before a run starts)."""
        if total_timesteps is None:
            return
        if total_timesteps <= 0:
            raise ConfigError(f"total_timesteps must be > 0, got {total_timesteps}")
        self.config = self.config.replace(total_timesteps=int(total_timesteps))
        if self.config.compile == "auto" and self.iteration == 0:
            self._decide_compile(self.config.total_timesteps)
            if self._envs is not None:  # the rollout follows the decision (a compiled update rolls out compiled)
                self._make_collector(self._envs)

    def _say_compile_decision(self) -> None:
        """compile="auto": say once what was decided when it compiles or when a long run cannot (summary.json has it
        always); a short run staying eager is not news."""
        if self.config.compile != "auto" or not self.compile_decision.said or self._compile_said:
            return
        self._compile_said = True
        if self.collective.is_main:
            cold = self.compile_decision.enabled and not compiled_before(self._update_cache_key)
            note = (" (first time here: the compiled update (and rollout, on ppox's twins) is built once, which takes "
                    "a while; later runs load it)")
            print(f"compile: {self.compile_decision.reason}{note if cold else ''}", file=sys.stderr, flush=True)

    @property
    def envs(self) -> VecEnv:
        """The training envs; a loaded model creates them on first use (predicting needs none)."""
        if self._envs is None:
            self._require_env()
            envs = self._make_envs()
            try:
                self._check_env_fits(envs)
            except BaseException:
                envs.close()
                raise
            self._envs = envs
            self._attach_envs(envs)
        return self._envs

    @envs.setter
    def envs(self, value: VecEnv) -> None:
        self._envs = value

    def _require_env(self) -> None:
        """A model trained on a custom env can only make envs again with the user's env_fn."""
        if self.env_fn is None and self._custom_env:
            raise EnvError(
                f"this model was trained on a custom environment ({self.config.env_id}): pass its factory, "
                "PPO.load(path, env_fn=...), to evaluate or train it (predict needs none)"
            )

    def _check_env_fits(self, envs: VecEnv) -> None:
        if (envs.obs_dim != self.obs_dim or envs.spec != self.spec
                or obs_storage(envs.single_observation_space) != obs_storage(self.observation_space)):
            raise ModelFileError(
                f"the model was trained on {self.config.env_id} with observation space {self.observation_space} "
                f"and actions {self.action_space}; this environment has {envs.single_observation_space} and "
                f"actions {envs.single_action_space}"
            )

    def _check_finite_weights(self) -> None:
        """Refuse to act with NaN/Inf weights: every action would be garbage (argmax of NaN is 0)."""
        tensors = list(self.agent.parameters())
        if self.obs_norm is not None:
            tensors += [self.obs_norm.rms.mean, self.obs_norm.rms.var]
        # predict runs once per env step: check again only after a tensor changed (in-place updates bump
        # _version; the normaliser replaces its tensors). The key holds the tensors, not their ids: a freed
        # tensor's id can come back on its replacement.
        versions = [t._version for t in tensors]
        last = getattr(self, "_finite_key", None)
        if last is not None and last[1] == versions and all(a is b for a, b in zip(last[0], tensors, strict=True)):
            return
        if not all_finite(tensors):
            raise PPOXError(
                "the policy's weights are not finite (NaN or Inf): training diverged; load the last good "
                "checkpoint (RUN_DIR/checkpoints/ckpt_N, the one RUN_DIR/checkpoints/latest names)"
            )
        self._finite_key = (tensors, versions)

    # ------------------------------------------------------------------ observations
    def _normalize(self, obs: torch.Tensor, update: bool) -> torch.Tensor:
        return self.obs_norm(obs, update) if self.obs_norm is not None else obs

    # ------------------------------------------------------------------ rollout
    def _collect(self, buf: Rollout, finished: list[tuple[float, int]]) -> torch.Tensor:
        """Fill `buf` with num_steps steps of every env (ppox.rl.rollout); return V(s_T) for bootstrapping."""
        self._next_obs, last_value = self.collector.collect(buf, self._next_obs, finished)
        return last_value

    def _advantages(self, buf: Rollout, last_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages and returns of a rollout, (num_steps, num_envs) each. In a compiled GPU run one CUDA graph
        replay (the scan's num_steps small steps launched at once; its outputs are rewritten by the next rollout's)."""
        args = (buf.rewards, buf.values, buf.terminated, buf.episode_end, buf.final_values, last_value)
        if not (self.device.type == "cuda" and self.compile_decision.enabled and cuda_graphs_enabled()
                and self._gae_graph is not False):
            return self._gae(*args)
        if self._gae_graph is None or self._gae_graph[0] is not buf:
            try:
                self._gae_graph = (buf, GraphedFunction(self._gae, args))
            except Exception as exc:  # a failed capture: the eager scan serves, said once
                fallback_note("the CUDA graph of GAE", exc, "it runs eagerly")
                self._gae_graph = False
                return self._gae(*args)
        return self._gae_graph[1](*args)

    def _gae(self, rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, episode_end: torch.Tensor,
             final_values: torch.Tensor, last_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        next_values = torch.cat([values[1:], last_value.unsqueeze(0)], dim=0)  # (num_steps, num_envs)
        truncated = episode_end & ~terminated
        next_values = torch.where(truncated, final_values, next_values)
        return gae(rewards, values, next_values, terminated, episode_end, self.config.gamma, self.config.gae_lambda)

    # ------------------------------------------------------------------ training
    def learn(self, total_timesteps: int | None = None, run_dir: str | Path | None = None,
              callback: CallbackLike = None) -> PPO:
        """Train until `total_timesteps` env steps (default: the config's), logging to the run directory; `callback`:
        SB3-style hooks, one or a list (ppox.rl.callbacks). Each iteration: collect num_steps steps of every env ->
        GAE advantages -> PPO epochs -> log. The run's bookkeeping (run directory, signals, checkpoints, progress,
        summary) is ppox.run_context's."""
        self._set_total_timesteps(total_timesteps)
        cfg, world = self.config, self.collective.world_size
        num_iterations = max(1, cfg.total_timesteps // (cfg.batch_size * world))  # all ranks' steps count
        run, callbacks = self._open_run(run_dir, num_iterations, callback)
        with run:
            if self._next_obs is None:
                self._next_obs = self._normalize(self.envs.reset(), update=True)
            obs_shape, obs_dtype = obs_storage(self.observation_space)  # images: uint8 (C, H, W)
            buf = Rollout.allocate(cfg.num_steps, cfg.num_envs, obs_shape, self.spec, self.device, obs_dtype=obs_dtype,
                                   mask=self.envs.action_mask is not None, state_size=self.agent.state_size)
            start_callbacks(callbacks, self.collector)
            self._say_compile_decision()
            self._prebuild_update(buf)
            while self.iteration < num_iterations:
                boundary = self.state_dict(rollout_only=True)  # what a stop mid-iteration checkpoints
                self._guard.save()
                self.iteration += 1
                iter_start = time.perf_counter()
                if cfg.anneal_lr:  # linearly to 0 over the run
                    frac = 1.0 - (self.iteration - 1.0) / num_iterations
                    self.optimizer.param_groups[0]["lr"] = frac * cfg.learning_rate
                finished: list[tuple[float, int]] = []
                try:
                    last_value = self._collect(buf, finished)
                except EnvError as exc:  # past --max-env-restarts: keep the last iteration boundary
                    self._halt(str(exc), boundary)
                self.global_step += cfg.batch_size * world
                callbacks.on_rollout_end()
                batch = self._batch(buf, *self._advantages(buf, last_value))
                result = self._update(batch, self._shuffle_generator())
                self._check_update(result, boundary)
                kl_coef_used = self.kl_controller.coef
                if cfg.kl_penalty == "loss":  # the adaptive beta rule needs the measured KL
                    self.kl_controller.update(self._measure_kl(batch))
                if self.collective.enabled:
                    finished = self._sync_ranks(result.stats, finished)
                record = self._record(result.stats, finished, batch, kl_coef_used, iter_start)
                callbacks.on_update({"record": record})  # may add keys (evaluations) to the record
                self._wall_seconds = time.perf_counter() - self._start_time
                run.log(record, final=self.iteration == num_iterations, recent_returns=self.recent_returns)
                if self._consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    self._halt(SKIPPED_UPDATES_HALT.format(iteration=self.iteration, skipped=self.skipped_updates))
                if self._end_iteration(run, callbacks, num_iterations):
                    break
        self.interrupted = run.interrupted
        try:  # every rank must end with bit-identical weights: compare hashes of all ranks' parameters
            self.weight_hashes = weight_hashes(self.collective, self.agent)
            self.summary = self._write_summary(run, evaluate=not run.interrupted and run.is_main)
            callbacks.on_training_end()
        finally:
            run.release()
        self.collective.barrier()
        return self

    def _batch(self, buf: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rollout flattened for the update: (num_steps * num_envs, ...) each, and the action masks where
        the env gives them. A recurrent policy's batch is whole sequences instead, so that a minibatch is a set
        of them: (num_sequences, L, ...) each, L = bptt_length (default num_steps), with every sequence's
        `state` at its start (num_sequences, state_size) and its `episode_starts` (num_sequences, L)."""
        steps = {"obs": buf.obs, "actions": buf.actions, "logprobs": buf.logprobs, "advantages": advantages,
                 "returns": returns, "values": buf.values}  # (num_steps, num_envs, ...) each
        if buf.action_masks is not None:
            steps["action_mask"] = buf.action_masks
        if not self.agent.recurrent:
            return {k: v.flatten(0, 1) for k, v in steps.items()}  # obs: (batch, obs_dim) or (batch, C, H, W)
        num_steps, num_envs = buf.rewards.shape
        length = self.config.bptt_length or num_steps
        chunks = num_steps // length

        def sequences(x: torch.Tensor) -> torch.Tensor:  # (num_steps, num_envs, ...) -> (chunks * num_envs, L, ...)
            x = x.reshape(chunks, length, num_envs, *x.shape[2:]).transpose(1, 2)
            return x.reshape(chunks * num_envs, length, *x.shape[3:])

        batch = {k: sequences(v) for k, v in steps.items()}
        batch["episode_starts"] = sequences(buf.episode_starts)
        batch["state"] = buf.states[::length].reshape(chunks * num_envs, -1)  # the state at each chunk's start
        return batch

    def _open_run(self, run_dir: str | Path | None, num_iterations: int,
                  callback: CallbackLike = None) -> tuple[RunContext, CallbackList]:
        """The run context of one learn() call: run directory (rank 0), progress bar, live doctor, weight guard;
        and the run's callbacks (rank 0 runs them), checked before the run directory is touched."""
        callbacks = make_callbacks(callback if self.collective.is_main else None, self)
        cfg, world = self.config, self.collective.world_size
        continuing = self.iteration > 0 and (run_dir is None or Path(run_dir) == self.run_dir)
        is_main = self.collective.is_main  # with torchrun, rank 0 alone writes the run directory
        if is_main:  # takes the run directory's lock (self.run_dir_lock); the run context holds it from here on
            self.run_dir = self._prepare_run_dir(run_dir or (self.run_dir if continuing else None) or cfg.run_dir)
        lock, self.run_dir_lock = self.run_dir_lock, None
        steps = cfg.batch_size * world
        progress = Progress(cfg.progress and is_main, num_iterations * steps, cfg.env_id,
                            note=rounding_note(cfg.total_timesteps, steps) if is_main else None)
        self._guard = WeightGuard(self.agent.parameters(), self.optimizer)  # never save NaN/inf weights
        return RunContext(
            self.run_dir, self.collective, lock, fresh=not continuing, config=cfg.to_dict(),
            tensorboard=cfg.tensorboard, checkpoint_every=cfg.checkpoint_every, progress=progress,
            doctor=LiveDoctor(cfg.to_dict()) if cfg.live_doctor and is_main else None,
            doctor_every=max(1, num_iterations // 100),  # bounded cost: at most ~100 checks per run
            on_exit=self._end_run, wandb=cfg.wandb_settings(),
        ), callbacks

    def _end_iteration(self, run: RunContext, callbacks: CallbackList, last: int) -> bool:
        """Checkpoint when due; True when training stops here: SIGINT/SIGTERM or a callback, on any rank."""
        run.interrupted = run.stop_requested() is not None
        stop = run.interrupted or run.any_rank(callbacks.stopped_by is not None)
        if stop and not run.interrupted:
            self.stopped_by = callbacks.stopped_by or "a callback on another rank"
        if (stop or run.checkpoint_due(self.iteration, last)) and run.is_main:
            ckpt.save_checkpoint(self)
        return stop

    def _check_update(self, result: Any, boundary: dict[str, Any]) -> None:
        """After an update: halt on non-finite weights (restoring the last finite ones); count skipped minibatches."""
        if not self._guard.finite():
            self._guard.restore()
            self._halt(
                f"training stopped at iteration {self.iteration}: an update made the weights non-finite "
                "(NaN/inf); likely causes: learning rate too high, unscaled rewards (try --norm-reward), "
                f"unnormalised observations (try --norm-obs); the last finite weights (iteration "
                f"{boundary['iteration']}) were kept", boundary)
        self.skipped_updates += result.skipped_updates
        all_skipped = result.skipped_updates > 0 and result.optimizer_steps == 0
        self._consecutive_skips = self._consecutive_skips + result.skipped_updates if all_skipped else 0

    def _end_run(self) -> None:
        """After the training loop, however it ended: the model file holds the last finite weights."""
        self._wall_seconds = time.perf_counter() - self._start_time
        if not self._guard.finite():  # stopped inside an update (Ctrl-C twice): keep the weights it started from
            self._guard.restore()
        if self.iteration > 0 and self.collective.is_main:
            self.save(self.run_dir)

    def _prebuild_update(self, buf: Rollout) -> None:
        """Where the compiled update's library is not cached yet (a machine's first run of this configuration): build
        it in a child process while this one builds or runs the first rollout (ppox.rl.fast.CompiledUpdate.prebuild)."""
        if self._compiled_update is None or not self._compiled_update.supported or self.collective.enabled:
            return
        zeros = torch.zeros_like(buf.rewards)  # advantages and returns: only their layout matters here
        self._compiled_update.prebuild(self._batch(buf, zeros, zeros), update_epochs=self.config.update_epochs,
                                       num_minibatches=self.config.num_minibatches)

    def _update(self, batch: dict[str, torch.Tensor], generator: torch.Generator):
        """The PPO epochs on one rollout: the compiled update (ppox.rl.fast) or core's eager loop."""
        cfg = self.config
        if self._compiled_update is not None and self._compiled_update.supported and not self.collective.enabled:
            try:
                result = self._compiled_update.update(
                    batch, update_epochs=cfg.update_epochs, num_minibatches=cfg.num_minibatches,
                    target_kl=cfg.target_kl, kl_coef=self.kl_controller.coef, generator=generator,
                )
                if result is not None:  # None: a recurrent step that could not be built (noted); eager below
                    return result
            except RuntimeError as exc:
                if not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise
                # Compiling failed (no C++ compiler, an unsupported op, ...). The compiled update works on
                # copies and writes back only at its end, so the weights and Adam state are untouched:
                # train on with the eager update, same maths.
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                print(f"warning: --compile failed ({type(exc).__name__}: {first_line[:200]}); "
                      "using the eager update (pass --no-compile to skip compiling)", file=sys.stderr)
                self._compiled_update = None
        return ppo_update(
            batch, self._forward, self.optimizer, self.agent.parameters(), self.objective,
            update_epochs=cfg.update_epochs, num_minibatches=cfg.num_minibatches,
            max_grad_norm=cfg.max_grad_norm, target_kl=cfg.target_kl,
            kl_coef=self.kl_controller.coef, generator=generator,
            collective=self.collective if self.collective.enabled else None,
        )

    def _sync_ranks(self, stats: dict[str, float], finished: list[tuple[float, int]]) -> list[tuple[float, int]]:
        """Make logged statistics global: average the update stats, gather finished episodes, and
        pool the observation-normalisation statistics so every rank normalises alike."""
        stats.update(mean_over_ranks(self.collective, stats))
        returns = self.collective.gather_floats([r for r, _ in finished])
        lengths = self.collective.gather_floats([float(n) for _, n in finished])
        if self.obs_norm is not None:
            rms = self.obs_norm.rms
            mean = self.collective.mean_(rms.mean.clone())
            var = self.collective.mean_(rms.var + (rms.mean - mean) ** 2)  # pooled variance, equal counts
            rms.mean, rms.var = mean, var
            rms.count = self.collective.sum_(rms.count.clone())
        return [(r, int(n)) for r, n in zip(returns, lengths, strict=True)]

    # ------------------------------------------------------------------ state
    def state_dict(self, rollout_only: bool = False) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly, as copies: counters, RNG states, the normalisers,
        the envs' bookkeeping and next observation (ppox.rl.checkpoint writes it to files).

        `rollout_only`: only what a rollout changes, a few kB, taken at every iteration boundary so that a run
        stopped by an env fault mid-rollout can still checkpoint that boundary; the weights, optimizer, KL
        coefficient and wall time are left out (they change only in the update or with the clock).
        """
        rng: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "shuffle": self._shuffle_generator().get_state(),
            "policy": self._policy_rng.bit_generator.state,  # the numpy rollout's action noise; JSON-able
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state: dict[str, Any] = {
            "iteration": self.iteration,
            "global_step": self.global_step,
            "skipped_updates": self.skipped_updates,
            "consecutive_skips": self._consecutive_skips,
            "recent_returns": list(self.recent_returns),
            "rng": rng,
            "envs": self.envs.state_dict(),
            "next_obs": None if self._next_obs is None else self._next_obs.detach().clone(),
            # a recurrent policy's carried state and episode starts (None without memory)
            "memory": None if self._carry is None else {"state": self._carry.state.clone(),
                                                        "episode_starts": self._carry.episode_starts.clone()},
            "obs_norm": None if self.obs_norm is None else self.obs_norm.state_dict(),
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
        }
        if not rollout_only:
            state.update(agent=self.agent.state_dict(), optimizer=self.optimizer.state_dict(),
                         kl_controller=self.kl_controller.state_dict(), wall_seconds=self._wall_seconds)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a full state_dict(); the next learn() continues the run where it was taken.

        `state["next_obs"]` None (the envs could not be restored): the envs start new episodes instead,
        seeded from the iteration.
        """
        self.agent.load_state_dict(state["agent"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.obs_norm is not None:
            self.obs_norm.load_state_dict(state["obs_norm"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.iteration = int(state["iteration"])
        self.global_step = int(state["global_step"])
        self.skipped_updates = int(state["skipped_updates"])
        self._consecutive_skips = int(state["consecutive_skips"])
        self.recent_returns = deque(state["recent_returns"], maxlen=self.recent_returns.maxlen)
        self._wall_seconds = float(state["wall_seconds"])
        self._start_time -= self._wall_seconds  # wall_time keeps counting from where the run stopped
        self.envs.load_state_dict(state["envs"])
        next_obs = state["next_obs"]
        if next_obs is not None and (tuple(next_obs.shape[1:]), next_obs.dtype) != obs_storage(self.observation_space):
            # written before this storage (a Dict holding images was float32): new episodes, as without env state
            print("warning: the checkpoint's observations are stored in an older layout: the envs start new "
                  "episodes (the resume is not exact)", file=sys.stderr)
            next_obs = None
        self._next_obs = None if next_obs is None else next_obs.to(self.device)
        if self._carry is not None:  # the envs' episodes go on with the state they carried; new episodes start fresh
            memory = state.get("memory") if self._next_obs is not None else None
            fresh = Carry.fresh(self.agent, self.config.num_envs)
            self._carry.state = fresh.state if memory is None else memory["state"].to(self.device)
            self._carry.episode_starts = (fresh.episode_starts if memory is None
                                          else memory["episode_starts"].to(self.device, torch.bool))

        # RNG states last: building the trainer consumed random numbers
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self._shuffle_generator().set_state(rng["shuffle"])
        if rng.get("policy") is not None:
            self._policy_rng.bit_generator.state = rng["policy"]
        cuda_states = rng.get("cuda") or []
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        if self.collective.enabled:  # distinct action noise and shuffling per rank after a restart
            rank_seed = self.config.seed + self.collective.rank + 7919 * self.iteration
            torch.manual_seed(rank_seed)
            self._shuffle_generator().manual_seed(rank_seed)
            self._policy_rng.bit_generator.state = np.random.default_rng(rank_seed).bit_generator.state
        if self._next_obs is None:
            obs = self.envs.reset(seed=self.envs.seed + 104_729 * (self.iteration + 1))  # envs.seed: per rank
            self._next_obs = self._normalize(obs, update=True)
            if self.reward_scaler is not None:
                self.reward_scaler.returns.zero_()

    def _shuffle_generator(self) -> torch.Generator:
        if self._shuffle_gen is None:
            self._shuffle_gen = torch.Generator().manual_seed(self.config.seed + self.collective.rank)
        return self._shuffle_gen

    def _halt(self, message: str, boundary: dict[str, Any] | None = None) -> None:
        """Checkpoint the last good state and stop with `message` (TrainingHalted: the CLI exits 2)."""
        if boundary is not None:  # stopped mid-iteration: the previous iteration is the last complete one
            self.iteration = int(boundary["iteration"])
            self.global_step = int(boundary["global_step"])
        if not self.collective.is_main:
            raise TrainingHalted(f"{message} (rank {self.collective.rank}; rank 0 writes the checkpoint)")
        path = ckpt.save_checkpoint(self, boundary, note=message if boundary is not None else None)
        raise TrainingHalted(f"{message}; checkpoint of iteration {self.iteration} saved in {path}")

    def _forward(self, mb: dict[str, torch.Tensor]) -> PolicyOutput:
        return PolicyOutput(*self.agent(mb["obs"], mb["actions"], **forward_inputs(mb)))

    @torch.no_grad()
    def _measure_kl(self, batch: dict[str, torch.Tensor]) -> float:
        """KL(pi_old || pi_new) over the whole rollout, for the adaptive penalty rule."""
        logprobs = self._forward(batch).logprobs
        kl = kl_estimate(logprobs - batch["logprobs"], self.config.kl_estimator).mean().reshape(1)
        return float(self.collective.mean_(kl)[0])  # one beta for all ranks

    def _record(self, stats, finished, batch, kl_coef, iter_start) -> dict[str, Any]:
        # one array each (thousands of episodes end per iteration with thousands of envs)
        returns = np.fromiter((r for r, _ in finished), dtype=np.float64, count=len(finished))
        lengths = np.fromiter((n for _, n in finished), dtype=np.float64, count=len(finished))
        self.recent_returns.extend(returns[-(self.recent_returns.maxlen or len(returns)):].tolist())
        elapsed = time.perf_counter() - iter_start
        ended = len(returns) > 0
        return {
            "iteration": self.iteration,
            "global_step": self.global_step,
            "wall_time": round(time.perf_counter() - self._start_time, 4),
            "episodes": len(returns),
            "episodic_return_mean": float(returns.mean()) if ended else None,
            "episodic_return_min": float(returns.min()) if ended else None,
            "episodic_return_max": float(returns.max()) if ended else None,
            "episodic_length_mean": float(lengths.mean()) if ended else None,
            "policy_loss": stats.get("policy_loss", float("nan")),
            "value_loss": stats.get("value_loss", float("nan")),
            "entropy": stats.get("entropy", float("nan")),
            "approx_kl": stats.get("approx_kl", float("nan")),
            "old_approx_kl": stats.get("old_approx_kl", float("nan")),
            "clipfrac": stats.get("clipfrac", float("nan")),
            "explained_variance": explained_variance(batch["values"], batch["returns"]),
            "kl_coef": kl_coef if self.config.kl_penalty == "loss" else 0.0,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "skipped_updates": self.skipped_updates,
            "env_restarts": self.envs.restarts,
            "sps": round(self.config.batch_size * self.collective.world_size / max(elapsed, 1e-9), 1),
        }

    def _prepare_run_dir(self, run_dir: str | Path | None) -> Path:
        cfg = self.config
        if run_dir is None:
            safe_env = (cfg.env_id or "custom").replace("/", "_")
            run_dir = Path("runs") / f"{safe_env}__{cfg.seed}__{int(time.time())}"
        run_dir = Path(run_dir)
        # one process per run directory: a second run or --resume into it stops here with one line
        lock = self.run_dir_lock = hold_run_dir(self.run_dir_lock, run_dir)
        try:
            check_run_dir(run_dir)
            if self.run_dir is not None and run_dir == self.run_dir:
                return run_dir  # a second learn() call continues the same run
            try:
                used = [p for p in run_dir.iterdir() if p.name != LOCK_FILE]
            except OSError as exc:
                raise os_error(exc, run_dir, "read") from None
            if used and not cfg.overwrite:
                raise PPOXError(
                    f"run directory {run_dir} already exists; pass --overwrite, --resume, or choose another --run-dir"
                )
        except BaseException:
            self.run_dir_lock = None
            lock.release()
            raise
        return run_dir

    def _write_summary(self, run: RunContext, evaluate: bool) -> dict[str, Any]:
        cfg = self.config
        summary: dict[str, Any] = {
            "env_id": cfg.env_id,
            "seed": cfg.seed,
            "total_timesteps": self.global_step,
            "iterations": self.iteration,
            "wall_seconds": round(self._wall_seconds, 3),
            "sps": round(self.global_step / max(self._wall_seconds, 1e-9), 1),
            "compile": self.compile_decision.enabled and self._compiled_update is not None,
            "compile_reason": self.compile_decision.reason,
            "compile_seconds": round(self.compile_timer.seconds, 3),
            "interrupted": bool(getattr(self, "interrupted", False)),
            "stopped_by": self.stopped_by,  # the callback that stopped training early, if one did
            "eval_return_mean": None,
            "eval_return_std": None,
            "eval_episodes": 0,
            "final_train_return_mean": float(np.mean(self.recent_returns)) if self.recent_returns else None,
            "ppox_version": __version__,
            "world_size": self.collective.world_size,
            "weights_identical_across_ranks": len(set(getattr(self, "weight_hashes", [None]))) == 1,
        }
        if evaluate and cfg.eval_episodes > 0:
            ev = self.evaluate(cfg.eval_episodes)
            summary.update(eval_return_mean=ev["mean"], eval_return_std=ev["std"], eval_episodes=ev["episodes"])
        run.write_summary(summary)
        return summary

    # ------------------------------------------------------------------ inference
    def predict(self, obs, state: np.ndarray | None = None, episode_start: np.ndarray | None = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> Any:
        """Action(s) for one observation or a batch of them, in the env's format (clipped to bounds).

        A recurrent model (config memory "lstm"/"gru") returns `(actions, state)` (SB3's convention): pass the
        state back with the next observation, and `episode_start` (bool, one per observation) True where a new
        episode begins (state None: every episode starts now). `action_masks`: valid actions, (head_size,) or
        (batch, head_size) bool (MultiDiscrete: the sub-spaces' masks concatenated); a Dict observation's
        "action_mask" entry is used when none is given. An observation that fits neither one observation of
        the space nor a batch of them is refused (ObservationError) rather than silently reshaped.
        """
        if isinstance(state, bool):
            raise TypeError("predict(obs, state, episode_start, deterministic): pass deterministic= by keyword")
        self._check_finite_weights()
        if isinstance(obs, dict) and ACTION_MASK_KEY in obs and ACTION_MASK_KEY not in getattr(
                self.observation_space, "spaces", {}):
            obs = dict(obs)
            mask_in_obs = obs.pop(ACTION_MASK_KEY)
            action_masks = mask_in_obs if action_masks is None else action_masks
        single = batch_size_of(obs, self.observation_space, "observation") is None
        batch_obs = _batch_of_one(obs, self.observation_space) if single else obs
        x = self._normalize(encode_obs(batch_obs, self.observation_space, self.device), update=False)
        n = x.shape[0]
        mask = None
        if action_masks is not None:
            mask = torch.as_tensor(np.asarray(action_masks, dtype=bool), device=self.device).reshape(n, -1)
            if mask.shape[1] != self.spec.head_size:
                raise ObservationError(f"action_masks has {mask.shape[1]} entries per observation; this model's "
                                       f"actions need {self.spec.head_size} (one per choice)")
        if not self.agent.recurrent:
            actions = to_env_action(self.agent.policy_action(x, deterministic, mask), self.spec)
            return actions[0] if single else actions
        starts = None
        if state is not None:
            state = torch.as_tensor(np.asarray(state, dtype=np.float32), device=self.device).reshape(n, -1)
            if episode_start is not None:
                starts = torch.as_tensor(np.asarray(episode_start, dtype=bool), device=self.device).reshape(n)
        actions, new_state = self.agent.policy_action(x, deterministic, mask, state, starts)
        actions = to_env_action(actions, self.spec)
        return (actions[0] if single else actions), new_state.cpu().numpy()

    def evaluate(self, episodes: int = 20, deterministic: bool = True, seed: int | None = None,
                 num_envs: int | None = None) -> dict[str, Any]:
        """Mean/std undiscounted return over `episodes` episodes, normalisation statistics frozen.

        Each of the evaluation envs plays a fixed share of the episodes, so short episodes are not
        over-represented.
        """
        if episodes <= 0:
            raise ConfigError(f"episodes must be > 0, got {episodes}")
        self._check_finite_weights()
        self._require_env()
        num_envs = num_envs or min(episodes, 8)
        quota = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
        envs = VecEnv(self.config.env_id, num_envs, (self.config.seed if seed is None else seed) + 100_000,
                      self.device, backend="gymnasium", vectorization="sync", env_fn=self.env_fn,
                      action_masks=self.config.action_masks, mask_velocity=self.config.mask_velocity)
        returns: list[float] = []
        lengths: list[int] = []
        done_count = np.zeros(num_envs, dtype=np.int64)
        try:
            self._check_env_fits(envs)
            obs = envs.reset()
            carry = Carry.fresh(self.agent, num_envs) if self.agent.recurrent else None  # state per episode
            while (done_count < quota).any():
                mask = None if envs.action_mask is None else torch.from_numpy(envs.action_mask).to(self.device)
                x = self._normalize(obs, update=False)
                if carry is None:
                    actions = self.agent.policy_action(x, deterministic, mask)
                else:
                    actions, carry.state = self.agent.policy_action(x, deterministic, mask, carry.state,
                                                                    carry.episode_starts)
                result = envs.step(actions)
                if carry is not None:
                    carry.episode_starts = result.terminated | result.truncated
                # finished_envs: whole games for Atari (a lost life ends an episode, not a game)
                for i, ret, length in zip(result.finished_envs, result.finished_returns,
                                          result.finished_lengths, strict=True):
                    if done_count[i] < quota[i]:
                        returns.append(ret)
                        lengths.append(length)
                    done_count[i] += 1
                obs = result.obs
        finally:
            envs.close()
        return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "episodes": len(returns),
                "returns": returns, "lengths": lengths}

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write model.safetensors (weights and normalisation statistics) and model.json (metadata)."""
        path = Path(path)
        tensors = {f"agent.{k}": v for k, v in self.agent.state_dict().items()}
        if self.obs_norm is not None:
            tensors.update({f"obs_rms.{k}": v for k, v in self.obs_norm.rms.state_dict().items()})
        meta = {
            "format_version": FORMAT_VERSION,
            "ppox_version": __version__,
            "kind": "ppox.rl.PPO",
            "env_id": self.config.env_id,
            "custom_env": self._custom_env,
            "observation_space": str(self.observation_space),
            "action_space": str(self.action_space),
            # the spaces themselves, so that PPO.load needs no env to predict (plain JSON, no pickle)
            "spaces": {"observation": space_to_json(self.observation_space),
                       "action": space_to_json(self.action_space)},
            "obs_dim": self.obs_dim,
            "action_spec": self.spec.to_dict(),
            "global_step": self.global_step,
            "config": self.config.to_dict(),
        }
        save_tensors(path / "model.safetensors", tensors)
        atomic_write_json(path / "model.json", meta)
        return path

    @classmethod
    def load(cls, path: str | Path, env_fn: EnvFn | None = None, device: str | None = None) -> PPO:
        """Load a saved model (safetensors + JSON only) for prediction, evaluation or more training.

        No env is created: the spaces are in model.json. `evaluate()` and `learn()` create envs when
        called (a model trained on a custom env needs `env_fn` for them); `learn()` trains into a new
        run directory unless it is given one. The network's shape comes from the weight shapes in the
        safetensors header, checked against model.json before anything is allocated, so the memory a
        loaded model takes is bounded by its file's size.
        """
        path = Path(path)
        if not path.is_dir():
            raise ModelFileError(f"model directory {path} does not exist")
        json_path, weights_path = path / "model.json", path / "model.safetensors"
        meta = read_json(json_path)
        check_format_version(meta, json_path)
        try:
            config = PPOConfig.from_dict(meta["config"])
        except (KeyError, TypeError, PPOXError) as exc:
            raise ModelFileError(f"{json_path} holds no valid config ({exc})") from None
        # the stored run_dir is the old run's: more training must not write into it unasked
        config = config.replace(run_dir=None, **({"device": device} if device is not None else {}))
        global_step = meta.get("global_step", 0)
        if isinstance(global_step, bool) or not isinstance(global_step, int) or not 0 <= global_step < 2**63:
            raise ModelFileError(f"{json_path}: global_step must be a non-negative integer, got {global_step!r}")
        header = read_safetensors_header(weights_path)
        arch = architecture(header, weights_path)
        if (arch["hidden_sizes"] is not None and tuple(config.hidden_sizes) != arch["hidden_sizes"]) or (
            config.shared_trunk != arch["shared_trunk"]
        ):
            raise ModelFileError(
                f"{weights_path} does not match the network in {json_path}: it says hidden_sizes "
                f"{list(config.hidden_sizes)}, shared_trunk {config.shared_trunk}; the weights have hidden_sizes "
                f"{list(arch['hidden_sizes'])}, shared_trunk {arch['shared_trunk']}"
            )
        observation_space, action_space = load_spaces(meta, json_path, arch, config, env_fn)
        model = cls.__new__(cls)
        model._setup_runtime(config, env_fn)
        model._custom_env = meta.get("custom_env") is True
        model._envs = None
        # the exact tensors the network will have, checked against the file before allocating them
        with torch.device("meta"):
            probe = Policy(observation_space, action_spec(action_space), config.hidden_sizes, config.activation,
                           config.shared_trunk, config.init_log_std, encoder=config.encoder, memory=config.memory,
                           memory_size=config.memory_size)
        expected = {f"agent.{k}": tuple(v.shape) for k, v in probe.state_dict().items()}
        if config.norm_obs:
            dim = arch["obs_dim"]
            expected.update({"obs_rms.mean": (dim,), "obs_rms.var": (dim,), "obs_rms.count": ()})
        found = {k: v[1] for k, v in header.items() if k in expected or k.startswith("agent.")}
        if found != expected:
            diff = sorted(set(found.items()) ^ set(expected.items()))[0][0]
            raise ModelFileError(
                f"{weights_path} does not match the network described by {json_path} (first difference: {diff}: "
                f"file {found.get(diff, 'missing')}, network {expected.get(diff, 'none')})"
            )
        if env_fn is not None:  # an env given now is checked now, not at the first evaluate()
            env_obs, env_act = env_spaces(env_fn, None)
            if obs_storage(env_obs) != obs_storage(observation_space) or action_spec(env_act) != action_spec(
                action_space
            ):
                raise ModelFileError(
                    f"the model in {path} was trained on {config.env_id} with observation space {observation_space} "
                    f"and actions {action_space}; this environment has {env_obs} and actions {env_act}"
                )
        model._build(observation_space, action_space, uninitialised=True)
        tensors = load_tensors(weights_path, model.device)
        if not all_finite(tensors.values()):
            raise ModelFileError(
                f"{weights_path} holds non-finite weights (NaN or Inf): the run diverged; load an earlier "
                "checkpoint (RUN_DIR/checkpoints)"
            )
        agent_state = {k.removeprefix("agent."): v for k, v in tensors.items() if k.startswith("agent.")}
        try:
            model.agent.load_state_dict(agent_state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "mismatch"
            raise ModelFileError(f"{weights_path} does not match the network: {first}") from None
        if model.obs_norm is not None:
            model.obs_norm.rms.load_state_dict({k: tensors[f"obs_rms.{k}"] for k in ("mean", "var", "count")})
            if bool((model.obs_norm.rms.var < 0).any()) or not float(model.obs_norm.rms.count) > 0:
                raise ModelFileError(f"{weights_path} holds invalid observation statistics (negative variance)")
        model.global_step = global_step
        return model

    @classmethod
    def resume(cls, run_dir: str | Path, env_fn: EnvFn | None = None, total_timesteps: int | None = None,
               **overrides: Any) -> PPO:
        """Restore a run from its latest checkpoint (RUN_DIR/checkpoints); `.learn()` then continues it.

        Reads env_state.pkl (a pickle) from the run directory: resume only run directories you trust.
        """
        return ckpt.resume(cls, run_dir, env_fn=env_fn, total_timesteps=total_timesteps, **overrides)

    def close(self) -> None:
        """Stop the env workers (idempotent). `with PPO(...) as model:` calls it; a finaliser on the envs
        does it too when the model is garbage-collected or the interpreter exits."""
        envs = getattr(self, "_envs", None)  # None: a loaded model that never needed envs, or a failed __init__
        if envs is not None:
            envs.close()

    def __enter__(self) -> PPO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- helpers
def _check_user_env(env_fn: EnvFn) -> str:
    """Run gymnasium's env checker on a user's env and report problems in plain words; return its name."""
    import warnings

    from gymnasium.utils.env_checker import check_env

    try:
        env = env_fn()
    except Exception as exc:
        raise EnvError(f"the env factory raised {type(exc).__name__}: {exc}") from None
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            check_env(env.unwrapped if hasattr(env, "unwrapped") else env, skip_render_check=True)
    except Exception as exc:
        raise EnvError(f"the custom environment fails gymnasium's env checker: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            env.close()
    return env_name(env)


def _batch_of_one(obs, space):
    from ppox.rl.envs import _batch_of_one as b1

    return b1(obs, space)


def summary_table(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
