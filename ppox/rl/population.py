"""Many independent PPO agents in one process: `ppox train ENV --seeds 1-64`, `ppox.train_seeds(config, seeds)`.

A population of N agents (one per seed) trains like N single runs of `ppox.rl.ppo.PPO` with the same config,
but in one process and with batched tensor ops instead of N Python loops:

* weights: the N agents' parameters stacked (`torch.func.stack_module_state` over N `Policy` modules, each
  initialised from its own seed exactly as `PPO(config, seed=k)` initialises it), held as one flat buffer
  (N, num_params) with Adam's moments beside it;
* envs: one batched torch env (ppox.envs.torch_envs) of N * num_envs envs; agent k's envs are the contiguous
  rows k * num_envs .. (k + 1) * num_envs - 1;
* rollout: the one `Policy` module's `act`, run on each agent's weights through `torch.func.functional_call`
  and `torch.func.vmap` over the agents (one batched call per step for all of them);
* advantages: `ppox.core.gae` on the (num_steps, N * num_envs) rollout (GAE never mixes env columns);
* update: `ppox.core.update.ppo_loss`, its gradient, `ppox.rl.fast.clip_grad_global_norm` and
  `ppox.rl.fast.adam_step`, vmapped over the agents: one call per minibatch updates every agent on its own
  minibatch (each agent shuffles its own rollout), compiled with `config.compile` (eager on failure).

Agents share nothing but the env object's random generator (reset states) and torch's generator (action
noise): no gradient, statistic or normaliser crosses agents (tests/rl/test_population.py checks it). What
the single-agent trainer has and a population does not: checkpoints and resume, periodic evaluation,
callbacks, W&B, the live doctor (run `ppox doctor RUN_DIR/seed_*` afterwards), torchrun, and anything outside
its scope: vector observations, Discrete and Box actions, an env with a batched torch twin, no memory.

Each agent writes RUN_DIR/seed_<k>/ like a single run (config.json, metrics.jsonl, summary.json, the model
file of `PPO.save`, so `PPO.load` and `ppox eval` open it); RUN_DIR/population.json summarises the agents.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from ppox import __version__
from ppox.core import AdaptiveKLController, explained_variance, gae, kl_estimate
from ppox.errors import ConfigError, PPOXError
from ppox.io import LOCK_FILE, RunDirLock, atomic_write_json, check_run_dir, os_error
from ppox.logger import MetricsLogger
from ppox.rl import aot
from ppox.rl.config import PPOConfig, preset_config
from ppox.rl.fast import (
    STAT_KEYS,
    CompileTimer,
    compile_fn,
    compile_torch_env,
    decide_compile,
    made_on_first_call,
    minibatch_step,
    remember_cpu_isa_probe,
)
from ppox.rl.normalize import ObsNormalizer, RewardScaler, RunningMeanStd
from ppox.rl.policy import Policy, PolicyMethod
from ppox.rl.ppo import PPO
from ppox.rl.spaces import action_spec, obs_dim
from ppox.run_context import Progress, rounding_note
from ppox.runs import StopSignals, clean_stale, clear_checkpoints

MAX_SEEDS = 65_536  # a range typo ("1-1000000") must not allocate a million networks
EVAL_SEED_OFFSET = 100_000  # evaluation envs are seeded apart from training ones, as in PPO.evaluate


# ---------------------------------------------------------------------------- seeds
def parse_seeds(text: str) -> list[int]:
    """"1-64" -> [1, ..., 64]; "1,2,5" -> [1, 2, 5]; "1-4,9" -> [1, 2, 3, 4, 9]. Distinct, in the given order."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match is None:
            raise ConfigError(f"--seeds takes seeds and ranges like 1-64 or 1,2,5; got {text!r}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"--seeds range {part} is empty (write it low-high)")
        if last - first + len(seeds) >= MAX_SEEDS:
            raise ConfigError(f"--seeds names more than {MAX_SEEDS} seeds")
        seeds.extend(range(first, last + 1))
    return check_seeds(seeds)


def check_seeds(seeds: Iterable[int]) -> list[int]:
    """The seeds as a list of distinct ints in [0, 2**32 - 1]; ConfigError otherwise."""
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise ConfigError(f"seeds must be integers, got {s!r}")
        out.append(int(s))
    if not out:
        raise ConfigError("give at least one seed")
    if len(set(out)) != len(out):
        raise ConfigError("seeds repeat: every agent needs its own seed")
    if len(out) > MAX_SEEDS:
        raise ConfigError(f"at most {MAX_SEEDS} seeds")
    for s in out:
        if not 0 <= s <= 2**32 - 1:
            raise ConfigError(f"seed must be an integer in [0, 2**32 - 1], got {s}")
    return out


def check_supported(config: PPOConfig) -> None:
    """Refuse, in one line, what a population cannot train (see the module docstring)."""
    from ppox.envs import TORCH_ENV_IDS

    def refuse(what: str) -> None:
        raise ConfigError(f"--seeds trains a population in one process and does not support {what}")

    if config.env_id not in TORCH_ENV_IDS:
        raise ConfigError(f"--seeds needs an env with a batched torch twin ({', '.join(TORCH_ENV_IDS)}); "
                          f"{config.env_id} has none: train its seeds as separate runs")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        refuse("torchrun (it uses one process; run it without torchrun)")
    if config.memory != "none":
        refuse(f"memory {config.memory!r} (policies with memory)")
    if config.encoder == "cnn":
        refuse("image encoders")
    if config.mask_velocity:
        refuse("--mask-velocity")
    if config.env_backend not in ("torch", "auto"):
        refuse(f"env_backend {config.env_backend!r} (it steps the env's batched torch twin: use torch or auto)")
    if config.rollout_backend == "numpy":
        refuse("rollout_backend numpy (the population's rollout is torch)")
    if config.eval_every or config.stop_at_return is not None:
        refuse("periodic evaluation (--eval-every, --stop-at-return)")
    if config.checkpoint_every:
        refuse("checkpoints (--checkpoint-every): a population is not resumable")
    if config.wandb:
        refuse("--wandb")


# ---------------------------------------------------------------------------- the batched policy
def _compiled(fn: Callable, enabled: bool, timer: CompileTimer, cpp_wrapper: bool = False) -> Callable:
    """`fn` compiled (ppox.rl.fast.compile_fn, first call timed), falling back to `fn` itself, once and with a
    warning, when compiling fails (no C++ compiler, an unsupported op): `fn` is pure, so nothing was changed."""
    if not enabled:
        return fn
    current = [timer.wrap(compile_fn(fn, True, cpp_wrapper=cpp_wrapper))]

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return current[0](*args, **kwargs)
        except RuntimeError as exc:
            if current[0] is fn or not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"warning: --compile failed ({type(exc).__name__}: {first_line[:200]}); running eagerly "
                  "(pass --no-compile to skip compiling)", file=sys.stderr)
            current[0] = fn
            return fn(*args, **kwargs)

    return call


class Population:
    """N independent PPO agents of one config, one per seed, trained together (see the module docstring).

    >>> pop = Population("CartPole-v1", seeds=range(1, 65), total_timesteps=100_000)
    >>> pop.learn(run_dir="runs/cartpole_seeds")
    >>> pop.summary["eval_return_mean"]          # the agents' mean; per seed in pop.summary["per_seed"]

    `learning_rates`: one per agent (a sweep over the learning rate); default the config's for all.
    """

    def __init__(self, config: PPOConfig | str = "CartPole-v1", seeds: Iterable[int] = (1,),
                 learning_rates: Iterable[float] | None = None, **overrides: Any) -> None:
        if isinstance(config, str):
            config = preset_config(config, **overrides)
        elif isinstance(config, PPOConfig):
            config = config.replace(**overrides) if overrides else config
        else:
            raise ConfigError(f"Population() takes a PPOConfig or an env id, got {type(config).__name__}")
        self.seeds = check_seeds(seeds)
        check_supported(config)
        # the env each agent really steps: its torch twin (recorded so that config.json and model.json say so)
        self.config = config = config.replace(env_backend="torch", rollout_backend="auto", seed=self.seeds[0])
        # a single-agent trainer whose `save` writes each agent's model file, so that PPO.load reads it as any
        # run's; built first (it seeds torch, as every single run does) and with a run's checks of the config
        self._writer = PPO(config.replace(compile=False, progress=False, num_envs=1))
        self._writer.close()
        from ppox.distributed import init_device

        self.device, _ = init_device(config.device)
        if config.torch_threads > 0:
            torch.set_num_threads(min(config.torch_threads, os.cpu_count() or 1))
        n, e = len(self.seeds), config.num_envs
        self.num_agents = n

        from ppox.envs import make_torch_vec_env

        self.envs = make_torch_vec_env(config.env_id, n * e, device=self.device, seed=self.seeds[0])
        self.observation_space = self.envs.single_observation_space
        self.action_space = self.envs.single_action_space
        if len(getattr(self.observation_space, "shape", ())) != 1:
            raise ConfigError("--seeds supports vector observations only")
        self.spec = action_spec(self.action_space)
        self.obs_dim = obs_dim(self.observation_space)

        # every agent's initial weights are those of a single run with its seed (PPO seeds torch, then builds)
        policies = []
        for seed in self.seeds:
            torch.manual_seed(seed)
            policies.append(self._new_policy().to(self.device))
        params, _ = stack_module_state(policies)  # {name: (N, *shape)}
        self.policy = policies[0]  # the module whose code runs; its own tensors are never read in training
        self.names = [name for name, _ in self.policy.named_parameters()]
        self.shapes = [tuple(params[k].shape[1:]) for k in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        # (N, num_params): all of an agent's weights in one row; the views below follow its updates
        self.flat_params = torch.cat([params[k].detach().reshape(n, -1) for k in self.names], dim=1).contiguous()
        self.exp_avg = torch.zeros_like(self.flat_params)  # Adam's moments, per agent and weight
        self.exp_avg_sq = torch.zeros_like(self.flat_params)
        self.adam_steps = torch.zeros(n, device=self.device)  # (N,) Adam's step count per agent
        base_lrs = [config.learning_rate] * n if learning_rates is None else [float(x) for x in learning_rates]
        if len(base_lrs) != n or not all(x > 0 and math.isfinite(x) for x in base_lrs):
            raise ConfigError(f"learning_rates needs {n} positive numbers (one per seed), got {base_lrs}")
        self.base_lrs = torch.tensor(base_lrs, device=self.device)  # (N,)
        self._base_lrs = base_lrs  # the same, as Python floats for the logs
        self.kl_controllers = [AdaptiveKLController(config.kl_coef, config.kl_target) for _ in range(n)]
        self.objective = config.update_objective()
        torch.manual_seed(self.seeds[0])  # the action noise of the whole population
        self._shuffle = torch.Generator(device="cpu").manual_seed(self.seeds[0])

        # normalisers with one row of statistics per agent: RunningMeanStd reduces over the first dimension,
        # so observations go in as (num_envs, N, obs_dim), rewards as (num_envs, N)
        self.obs_norm = None
        if config.norm_obs:
            self.obs_norm = ObsNormalizer(self.obs_dim, config.clip_obs, self.device)
            self.obs_norm.rms = RunningMeanStd((n, self.obs_dim), self.device)
        self.reward_scaler = None
        if config.norm_reward:
            self.reward_scaler = RewardScaler(e, config.gamma, config.clip_reward, self.device)
            self.reward_scaler.rms = RunningMeanStd((n,), self.device)
            self.reward_scaler.returns = torch.zeros(e, n, dtype=torch.float64, device=self.device)

        self._head_and_value = self._batched("head_and_value")
        self._log_prob = vmap(self.policy.distribution.log_prob_entropy, in_dims=(0, 0 if self.spec.kind == "continuous"
                                                                                  else None, 0))
        self._value = self._batched("value")
        self._policy_action = self._batched("policy_action", randomness="different")
        self._decide_compile()
        self.iteration = 0
        self.global_step = 0  # env steps of one agent
        self.skipped_updates = torch.zeros(n, dtype=torch.long)
        self.recent_returns: list[list[float]] = [[] for _ in range(n)]  # the last 100 per agent
        self._next_obs: torch.Tensor | None = None
        self._ep_return = torch.zeros(n * e, device=self.device)
        self._ep_length = torch.zeros(n * e, dtype=torch.long, device=self.device)
        self.run_dir: Path | None = None
        self.summary: dict[str, Any] | None = None
        self.interrupted = False
        self.wall_seconds = 0.0

    def _decide_compile(self) -> None:
        """Resolve config.compile with a single run's rule (ppox.rl.fast.decide_compile: "auto" compiles where it pays
        off) and make the minibatch step and the rollout's policy step, compiled or not; pure functions, so a
        failed compile falls back to the eager function (with a warning). One call of the step is every agent's
        minibatch update, so the run has N times a single run's updates: compiling repays itself N times sooner
        (64 CartPole agents: compiled 35k agent-env-steps/s against 22k eager over 97 iterations,
        benchmarks/results/seeds_CartPole-v1_64x50000.md)."""
        cfg = self.config
        iterations = max(1, cfg.total_timesteps // cfg.batch_size)
        self.compile_decision = decide_compile(
            cfg.compile, device=self.device, optimizer=self._writer.optimizer, recurrent=False, distributed=False,
            minibatch_updates=iterations * cfg.update_epochs * cfg.num_minibatches * self.num_agents)
        enabled = self.compile_decision.enabled
        self.compile_timer = CompileTimer()
        step = self._make_update_step()
        signature = aot.module_signature(self.policy)
        if enabled and aot.enabled(self.device, self.policy):
            # built ahead of time into cached libraries, as the single-agent update (ppox.rl.aot); torch.compile
            # (made only if needed) where that fails. The rollout's step gets its noise as an input: the draw
            # stays torch's own (the eager path's numbers), and the library holds no random state.
            label = "|".join(("population minibatch step", signature, repr(self.objective),
                              repr(self.config.max_grad_norm)))
            self._compiled_update = aot.LazyAot(
                step, label, fallback=made_on_first_call(lambda: _compiled(step, True, self.compile_timer,
                                                                           cpp_wrapper=True)),
                prepare=remember_cpu_isa_probe, timed=self.compile_timer.add)
            self._act_step = aot.LazyAot(
                self._act, f"population act step|{signature}|{self.spec!r}",
                fallback=made_on_first_call(lambda: _compiled(self._act, True, self.compile_timer)),
                prepare=remember_cpu_isa_probe, timed=self.compile_timer.add)
        else:
            self._compiled_update = _compiled(step, enabled, self.compile_timer,
                                              cpp_wrapper=self.device.type == "cpu")
            self._act_step = _compiled(self._act, enabled, self.compile_timer)
        if enabled and not getattr(self.envs, "_compiled_dynamics", False):
            compile_torch_env(self.envs, self.compile_timer)
            self.envs._compiled_dynamics = True

    def _new_policy(self) -> Policy:
        c = self.config
        return Policy(self.observation_space, self.spec, c.hidden_sizes, c.activation, c.shared_trunk,
                      c.init_log_std, encoder=c.encoder, memory=c.memory, memory_size=c.memory_size)

    # ------------------------------------------------------------------ weights
    def params(self, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{name: (N, *shape)} views of the stacked weights (or of another (N, num_params) buffer)."""
        flat = self.flat_params if flat is None else flat
        parts = flat.split(self.sizes, dim=1)
        return {k: p.view(p.shape[0], *s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def agent_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Agent `index`'s weights as a `Policy.state_dict()` (copies)."""
        return {k: v[index].detach().clone() for k, v in self.params().items()}

    def _batched(self, method: str, randomness: str = "error") -> Callable:
        """`fn(params, *args, **kwargs)`: `Policy.<method>` on every agent's weights at once; params
        {name: (N, ...)}, args (N, ...) each, kwargs the same for all agents; outputs (N, ...)."""
        module = PolicyMethod(self.policy, method)

        def one(params: dict[str, torch.Tensor], *args: torch.Tensor, **kwargs: Any):
            return functional_call(module, {f"policy.{k}": v for k, v in params.items()}, args, kwargs)

        return vmap(one, randomness=randomness)

    # ------------------------------------------------------------------ update
    def _make_update_step(self) -> Callable:
        """One minibatch step of every agent, vmapped: the single-agent update's pure step (ppox.rl.fast.minibatch_step:
        ppo_loss, gradient clipping, Adam), each agent on its own minibatch and weights."""
        # PPO's torch.optim.Adam(lr, eps=1e-5)
        return vmap(minibatch_step(self.policy, self.objective, self.config.max_grad_norm, 0.9, 0.999, 1e-5))

    def _prebuild_update(self) -> None:
        """Where the update's library is not cached yet (a machine's first run of this configuration): build it in a
        child process while this one builds the rollout's (ppox.rl.aot.LazyAot.prebuild), with `_update`'s layouts."""
        prebuild = getattr(self._compiled_update, "prebuild", None)
        if prebuild is None:
            return
        buf = self._allocate_rollout()
        zeros = torch.zeros_like(buf["values"])  # advantages and returns: only their layout matters here
        n, minibatch_size = self.num_agents, self.config.batch_size // self.config.num_minibatches
        prebuild(self.flat_params, self.exp_avg, self.exp_avg_sq, self.adam_steps, self._batch(buf, zeros, zeros),
                 torch.zeros(n, minibatch_size, dtype=torch.long, device=self.device), self.base_lrs,
                 torch.zeros(n, device=self.device), torch.ones(n, dtype=torch.bool, device=self.device))

    def _update(self, batch: dict[str, torch.Tensor], lr: torch.Tensor, kl_coef: torch.Tensor) -> torch.Tensor:
        """The PPO epochs of every agent on its rollout (batch: (N, batch_size, ...) each); returns the summed
        statistics (N, len(STAT_KEYS) + 2). `target_kl` stops an agent's epochs alone (its later steps are no-ops)."""
        cfg, n = self.config, self.num_agents
        batch_size = cfg.batch_size
        mb_size = batch_size // cfg.num_minibatches
        totals = torch.zeros(n, len(STAT_KEYS) + 2, device=self.device)
        active = torch.ones(n, dtype=torch.bool, device=self.device)
        state = (self.flat_params, self.exp_avg, self.exp_avg_sq, self.adam_steps)
        kl_col, count_col = STAT_KEYS.index("approx_kl"), len(STAT_KEYS)
        for _epoch in range(cfg.update_epochs):
            # each agent's own permutation of its rollout: (N, batch_size)
            perm = torch.rand(n, batch_size, generator=self._shuffle).argsort(dim=1).to(self.device)
            epoch_start = totals.clone()
            for start in range(0, batch_size, mb_size):
                idx = perm[:, start:start + mb_size]
                *state, row = self._compiled_update(*state, batch, idx, lr, kl_coef, active)
                totals += row
            if cfg.target_kl is not None:
                epoch = totals - epoch_start
                mean_kl = epoch[:, kl_col] / epoch[:, count_col].clamp_min(1.0)
                active = active & ~((epoch[:, count_col] > 0) & (mean_kl > cfg.target_kl))
                if not bool(active.any()):
                    break
        self.flat_params, self.exp_avg, self.exp_avg_sq, self.adam_steps = state
        return totals

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def _act(self, flat_params: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`Policy.act` of every agent: weights (N, num_params), obs (N, E, obs_dim), the draw's noise (`_noise`)
        -> actions (N, E, *action_shape), log pi(a|s) (N, E), V(s) (N, E). The network runs vmapped over the
        agents; the draw runs outside vmap on the whole batch (the policy's own distribution: rows are
        independent, and a continuous policy's std is per agent)."""
        params = self.params(flat_params)
        head, value = self._head_and_value(params, obs)
        log_std = params.get("log_std")  # (N, dim) for continuous actions, else None
        dist = self.policy.distribution
        if log_std is None:
            actions = dist.sample(head.flatten(0, 1), None, False, noise=noise).view(head.shape[:2])
        else:
            actions = dist.sample(head, log_std.unsqueeze(1), False, noise=noise)
        logprobs, _ = self._log_prob(head, log_std, actions)
        return actions, logprobs, value

    def _noise(self) -> torch.Tensor:
        """One rollout step's draw from torch's generator, what the distribution's `sample` would draw itself:
        uniform (N * E, head_size) for categorical heads, standard normal (N, E, dim) for Gaussian ones."""
        n, e = self.num_agents, self.config.num_envs
        if self.spec.kind == "continuous":
            return torch.randn(n, e, self.spec.dim, device=self.device)
        return torch.rand(n * e, self.spec.head_size, device=self.device)

    def _normalize(self, obs: torch.Tensor, update: bool) -> torch.Tensor:
        """obs (N, E, obs_dim), each agent by its own statistics."""
        if self.obs_norm is None:
            return obs
        return self.obs_norm(obs.transpose(0, 1), update).transpose(0, 1)

    def _allocate_rollout(self) -> dict[str, torch.Tensor]:
        """A rollout's buffers, {key: (T, N, E, ...)} (the ended episodes' returns and lengths (T, N * E))."""
        n, e, t_max = self.num_agents, self.config.num_envs, self.config.num_steps
        dev = self.device
        action_dtype = torch.float32 if self.spec.kind == "continuous" else torch.long
        return {
            "obs": torch.empty(t_max, n, e, self.obs_dim, device=dev),
            "actions": torch.empty(t_max, n, e, *self.spec.action_shape, dtype=action_dtype, device=dev),
            "logprobs": torch.empty(t_max, n, e, device=dev),
            "values": torch.empty(t_max, n, e, device=dev),
            "rewards": torch.empty(t_max, n, e, device=dev),
            "terminated": torch.empty(t_max, n, e, dtype=torch.bool, device=dev),
            "episode_end": torch.empty(t_max, n, e, dtype=torch.bool, device=dev),
            "final_values": torch.zeros(t_max, n, e, device=dev),
            "ep_return": torch.empty(t_max, n * e, device=dev),  # an ended episode's return, at its last step
            "ep_length": torch.empty(t_max, n * e, dtype=torch.long, device=dev),
        }

    def _collect(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[list[tuple[float, int]]]]:
        """num_steps steps of every agent's envs. Returns the rollout {key: (T, N, E, ...)}, V(s_T) (N, E), and the
        episodes each agent finished [(return, length)]."""
        n, e, t_max = self.num_agents, self.config.num_envs, self.config.num_steps
        buf = self._allocate_rollout()
        action_shape, dev = self.spec.action_shape, self.device
        params = self.params()
        flat_params = self.flat_params.detach()
        obs = self._next_obs
        always_bootstrap = dev.type != "cpu"  # no host sync per step on an accelerator: compute and mask
        for step in range(t_max):
            buf["obs"][step] = obs
            actions, logprobs, values = self._act_step(flat_params, obs, self._noise())
            buf["actions"][step] = actions
            buf["logprobs"][step] = logprobs
            buf["values"][step] = values
            raw_obs, reward, terminated, truncated, info = self.envs.step(actions.reshape(n * e, *action_shape))
            done = terminated | truncated
            self._ep_return += reward
            self._ep_length += 1
            buf["ep_return"][step] = self._ep_return
            buf["ep_length"][step] = self._ep_length
            self._ep_return.masked_fill_(done, 0.0)
            self._ep_length.masked_fill_(done, 0)
            reward, done_ne = reward.view(n, e), done.view(n, e)
            if self.reward_scaler is not None:
                reward = self.reward_scaler(reward.T, done_ne.T).T
            buf["rewards"][step] = reward
            buf["terminated"][step] = terminated.view(n, e)
            buf["episode_end"][step] = done_ne
            if always_bootstrap or bool(truncated.any()):
                # bootstrap from the true last state of a truncated episode, not the reset state
                final = self._normalize(info["final_obs"].view(n, e, -1), update=False)
                buf["final_values"][step] = torch.where(truncated.view(n, e), self._value(params, final), 0.0)
            obs = self._normalize(raw_obs.view(n, e, -1), update=True)
        self._next_obs = obs
        last_value = self._value(params, obs)
        # the episodes that ended, per agent (one host sync per rollout)
        ends = buf["episode_end"].reshape(t_max, n * e)
        steps, envs = torch.nonzero(ends, as_tuple=True)
        returns = buf["ep_return"][steps, envs].tolist()
        lengths = buf["ep_length"][steps, envs].tolist()
        finished: list[list[tuple[float, int]]] = [[] for _ in range(n)]
        for env, ret, length in zip((envs // e).tolist(), returns, lengths, strict=True):
            finished[env].append((ret, length))
        return buf, last_value, finished

    def _advantages(self, buf: dict[str, torch.Tensor], last_value: torch.Tensor):
        """GAE of every env at once: (T, N, E) in, (T, N, E) advantages and returns out."""
        t_max = buf["values"].shape[0]

        def cols(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(t_max, -1)

        next_values = torch.cat([buf["values"][1:], last_value.unsqueeze(0)], dim=0)
        truncated = buf["episode_end"] & ~buf["terminated"]
        next_values = torch.where(truncated, buf["final_values"], next_values)
        advantages, returns = gae(cols(buf["rewards"]), cols(buf["values"]), cols(next_values),
                                  cols(buf["terminated"]), cols(buf["episode_end"]), self.config.gamma,
                                  self.config.gae_lambda)
        return advantages.view_as(buf["values"]), returns.view_as(buf["values"])

    @staticmethod
    def _batch(buf: dict[str, torch.Tensor], advantages: torch.Tensor, returns: torch.Tensor):
        """(T, N, E, ...) -> (N, T * E, ...): each agent's rollout flattened as a single run flattens its own."""
        steps = {"obs": buf["obs"], "actions": buf["actions"], "logprobs": buf["logprobs"],
                 "advantages": advantages, "returns": returns, "values": buf["values"]}
        return {k: v.transpose(0, 1).flatten(1, 2).contiguous() for k, v in steps.items()}

    # ------------------------------------------------------------------ training
    def learn(self, total_timesteps: int | None = None, run_dir: str | Path | None = None) -> Population:
        """Train every agent for `total_timesteps` env steps of its own (default: the config's), each writing
        RUN_DIR/seed_<k>/; RUN_DIR/population.json at the end. Ctrl-C / SIGTERM: stops after the iteration and
        saves every agent's model and summary (interrupted)."""
        cfg, n = self.config, self.num_agents
        if total_timesteps is not None:
            if total_timesteps <= 0:
                raise ConfigError(f"total_timesteps must be > 0, got {total_timesteps}")
            self.config = cfg = cfg.replace(total_timesteps=int(total_timesteps))
            self._decide_compile()  # "auto" depends on the run's length
        num_iterations = max(1, cfg.total_timesteps // cfg.batch_size)
        continuing = self.iteration > 0 and (run_dir is None or Path(run_dir) == self.run_dir)  # a second learn()
        if not continuing:
            self.run_dir = Path(run_dir or cfg.run_dir or self._default_run_dir())
        if cfg.compile == "auto" and self.compile_decision.said:
            print(f"compile: {self.compile_decision.reason}", file=sys.stderr, flush=True)
        if cfg.live_doctor:
            print(f"note: --seeds: the live doctor does not run; `ppox doctor {self.run_dir}/seed_*` reads each "
                  "agent's metrics afterwards", file=sys.stderr)
        with contextlib.ExitStack() as stack:
            self._open_run_dirs(stack, fresh=not continuing)
            loggers = [stack.enter_context(contextlib.closing(
                MetricsLogger(d, cfg.tensorboard, append=continuing))) for d in self.agent_dirs]
            progress = Progress(cfg.progress, num_iterations * cfg.batch_size * n, f"{cfg.env_id} x {n} seeds",
                                note=rounding_note(cfg.total_timesteps, cfg.batch_size))
            stop = stack.enter_context(StopSignals())
            start = time.perf_counter() - self.wall_seconds
            with progress:
                if self._next_obs is None:
                    raw, _ = self.envs.reset()
                    self._next_obs = self._normalize(raw.view(n, cfg.num_envs, -1), update=True)
                self._prebuild_update()
                while self.iteration < num_iterations:
                    self.iteration += 1
                    iter_start = time.perf_counter()
                    frac = 1.0 - (self.iteration - 1.0) / num_iterations if cfg.anneal_lr else 1.0
                    lr = self.base_lrs * frac
                    buf, last_value, finished = self._collect()
                    self.global_step += cfg.batch_size
                    batch = self._batch(buf, *self._advantages(buf, last_value))
                    kl_coefs = [c.coef for c in self.kl_controllers]
                    totals = self._update(batch, lr, torch.tensor(kl_coefs, device=self.device))
                    if cfg.kl_penalty == "loss":
                        for c, kl in zip(self.kl_controllers, self._measure_kl(batch), strict=True):
                            c.update(kl)
                    records = self._records(totals, finished, batch, kl_coefs, [x * frac for x in self._base_lrs],
                                            iter_start, start)
                    for logger, record in zip(loggers, records, strict=True):
                        logger.log(record)
                    recent = [r for agent in self.recent_returns for r in agent[-10:]]
                    progress.update(self.global_step * n, {"sps": records[0]["sps"] * n}, recent)
                    if stop.requested is not None:
                        self.interrupted = True
                        break
            self.wall_seconds = time.perf_counter() - start
            self.summary = self._finish()
        return self

    def _default_run_dir(self) -> Path:
        safe_env = (self.config.env_id or "env").replace("/", "_")
        return Path("runs") / f"{safe_env}__seeds{self.seeds[0]}-{self.seeds[-1]}__{int(time.time())}"

    @property
    def agent_dirs(self) -> list[Path]:
        return [self.run_dir / f"seed_{s}" for s in self.seeds]

    def _open_run_dirs(self, stack: contextlib.ExitStack, fresh: bool) -> None:
        """Lock RUN_DIR and every agent's directory (one writer each), refuse a used RUN_DIR without --overwrite
        (unless `fresh` is False: a second learn() goes on in its own run), write each agent's config.json."""
        lock = RunDirLock(self.run_dir).acquire()
        stack.callback(lock.release)
        check_run_dir(self.run_dir)
        try:
            used = [p for p in self.run_dir.iterdir() if p.name != LOCK_FILE]
        except OSError as exc:
            raise os_error(exc, self.run_dir, "read") from None
        if fresh and used and not self.config.overwrite:
            raise PPOXError(f"run directory {self.run_dir} already exists; pass --overwrite or choose another "
                            "--run-dir")
        for seed, agent_dir in zip(self.seeds, self.agent_dirs, strict=True):
            agent_lock = RunDirLock(agent_dir).acquire()
            stack.callback(agent_lock.release)
            if fresh:
                clear_checkpoints(agent_dir)  # an --overwrite: an earlier run's checkpoints would shadow this run
            clean_stale(agent_dir)
            atomic_write_json(agent_dir / "config.json", self.agent_config(seed).to_dict())

    def agent_config(self, seed: int) -> PPOConfig:
        """The config of the agent with `seed`: what a single run of it would record."""
        return self.config.replace(seed=seed, run_dir=str(self.run_dir / f"seed_{seed}") if self.run_dir else None)

    @torch.no_grad()
    def _measure_kl(self, batch: dict[str, torch.Tensor]) -> list[float]:
        """KL(pi_old || pi_new) of every agent over its whole rollout, for the adaptive penalty rule."""
        forward = vmap(lambda p, o, a: functional_call(self.policy, p, (o, a)))
        logprobs = forward(self.params(), batch["obs"], batch["actions"])[0]
        return kl_estimate(logprobs - batch["logprobs"], self.config.kl_estimator).mean(dim=1).tolist()

    def _records(self, totals, finished, batch, kl_coefs, lr, iter_start, start) -> list[dict[str, Any]]:
        """One metrics.jsonl record per agent, with the single run's keys."""
        cfg, n = self.config, self.num_agents
        sums = totals.tolist()
        counted, applied = len(STAT_KEYS), len(STAT_KEYS) + 1
        skipped = (totals[:, counted] - totals[:, applied]).round().long().cpu()
        self.skipped_updates += skipped
        elapsed = time.perf_counter() - iter_start
        values, returns = batch["values"], batch["returns"]
        lrs, kls = lr, kl_coefs
        records = []
        for k in range(n):
            ends = finished[k]
            rets = [r for r, _ in ends]
            lens = [length for _, length in ends]
            self.recent_returns[k] = (self.recent_returns[k] + rets)[-100:]
            count = max(sums[k][counted], 1.0)
            stats = {key: sums[k][i] / count if sums[k][counted] else float("nan")
                     for i, key in enumerate(STAT_KEYS)}
            records.append({
                "iteration": self.iteration,
                "global_step": self.global_step,
                "wall_time": round(time.perf_counter() - start, 4),
                "episodes": len(rets),
                "episodic_return_mean": float(np.mean(rets)) if rets else None,
                "episodic_return_min": float(np.min(rets)) if rets else None,
                "episodic_return_max": float(np.max(rets)) if rets else None,
                "episodic_length_mean": float(np.mean(lens)) if lens else None,
                **{key: stats[key] for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl",
                                               "clipfrac")},
                "explained_variance": explained_variance(values[k], returns[k]),
                "kl_coef": kls[k] if cfg.kl_penalty == "loss" else 0.0,
                "learning_rate": lrs[k],
                "skipped_updates": int(self.skipped_updates[k]),
                "env_restarts": 0,
                "sps": round(cfg.batch_size / max(elapsed, 1e-9), 1),  # this agent's env steps per second
            })
        return records

    # ------------------------------------------------------------------ end of a run
    def _finish(self) -> dict[str, Any]:
        """Evaluate, then write every agent's model file and summary.json, and RUN_DIR/population.json."""
        cfg, n = self.config, self.num_agents
        evaluation = (self.evaluate(cfg.eval_episodes) if cfg.eval_episodes > 0 and not self.interrupted
                      else [None] * n)
        agents = []
        for k, (seed, agent_dir) in enumerate(zip(self.seeds, self.agent_dirs, strict=True)):
            self._save_agent(k, agent_dir)
            ev = evaluation[k]
            summary = {
                "env_id": cfg.env_id,
                "seed": seed,
                "total_timesteps": self.global_step,
                "iterations": self.iteration,
                "wall_seconds": round(self.wall_seconds, 3),
                "sps": round(self.global_step / max(self.wall_seconds, 1e-9), 1),  # one agent's env steps/s
                "compile": self.compile_decision.enabled,
                "compile_reason": self.compile_decision.reason,
                "compile_seconds": round(self.compile_timer.seconds, 3),
                "interrupted": self.interrupted,
                "stopped_by": None,
                "eval_return_mean": None if ev is None else ev["mean"],
                "eval_return_std": None if ev is None else ev["std"],
                "eval_episodes": 0 if ev is None else ev["episodes"],
                "eval_env": "torch",  # the registered env's batched torch twin (same dynamics, step for step)
                "final_train_return_mean": (float(np.mean(self.recent_returns[k])) if self.recent_returns[k]
                                            else None),
                "ppox_version": __version__,
                "world_size": 1,
                "weights_identical_across_ranks": True,
                "population": {"run_dir": str(self.run_dir), "seeds": len(self.seeds), "index": k},
            }
            atomic_write_json(agent_dir / "summary.json", summary)
            agents.append(summary)

        def mean_std(key: str) -> tuple[float | None, float | None]:
            values = [a[key] for a in agents if a[key] is not None]
            return (float(np.mean(values)), float(np.std(values))) if values else (None, None)

        eval_mean, eval_std = mean_std("eval_return_mean")
        train_mean, train_std = mean_std("final_train_return_mean")
        agent_steps = self.global_step * n
        population = {
            "env_id": cfg.env_id,
            "seeds": self.seeds,
            "agents": n,
            "total_timesteps_per_agent": self.global_step,
            "iterations": self.iteration,
            "wall_seconds": round(self.wall_seconds, 3),
            "compile": self.compile_decision.enabled,
            "compile_reason": self.compile_decision.reason,
            "compile_seconds": round(self.compile_timer.seconds, 3),
            # every agent's env steps over the training loop's wall time (evaluation excluded), with and without
            # the compile time in it
            "agent_env_steps_per_second": round(agent_steps / max(self.wall_seconds, 1e-9), 1),
            "agent_env_steps_per_second_excl_compile": round(
                agent_steps / max(self.wall_seconds - self.compile_timer.seconds, 1e-9), 1),
            "interrupted": self.interrupted,
            "eval_return_mean": eval_mean,  # mean over agents of each agent's evaluation mean
            "eval_return_std": eval_std,  # std over agents
            "final_train_return_mean": train_mean,
            "final_train_return_std": train_std,
            "per_seed": {str(a["seed"]): {"eval_return_mean": a["eval_return_mean"],
                                          "final_train_return_mean": a["final_train_return_mean"],
                                          "run_dir": str(d)} for a, d in zip(agents, self.agent_dirs, strict=True)},
            "ppox_version": __version__,
        }
        atomic_write_json(self.run_dir / "population.json", population)
        return population

    def _save_agent(self, index: int, agent_dir: Path) -> None:
        """Agent `index`'s model file, written by PPO.save itself."""
        writer = self._writer
        writer.config = self.agent_config(self.seeds[index])
        writer.agent.load_state_dict(self.agent_state_dict(index), strict=True)
        if self.obs_norm is not None:
            rms = self.obs_norm.rms
            writer.obs_norm.rms.load_state_dict({"mean": rms.mean[index], "var": rms.var[index], "count": rms.count})
        writer.global_step = self.global_step
        writer.save(agent_dir)

    @torch.no_grad()
    def evaluate(self, episodes: int = 20, deterministic: bool = True) -> list[dict[str, Any]]:
        """Every agent's mean/std return over `episodes` episodes on its own envs of a batched torch twin (seeded
        apart from training's), normalisation frozen; each env plays a fixed share, as in PPO.evaluate."""
        n = self.num_agents
        m = min(episodes, 8)  # eval envs per agent
        from ppox.envs import make_torch_vec_env

        envs = make_torch_vec_env(self.config.env_id, n * m, device=self.device,
                                  seed=self.seeds[0] + EVAL_SEED_OFFSET)
        quota = torch.tensor([episodes // m + (i < episodes % m) for i in range(m)], device=self.device).repeat(n)
        done_count = torch.zeros(n * m, dtype=torch.long, device=self.device)
        ret_sum = torch.zeros(n * m, dtype=torch.float64, device=self.device)
        ret_sq = torch.zeros_like(ret_sum)
        ep_return = torch.zeros(n * m, dtype=torch.float64, device=self.device)
        params = self.params()
        raw, _ = envs.reset()
        obs = self._normalize(raw.view(n, m, -1), update=False)
        step = 0
        while True:
            actions = self._policy_action(params, obs, deterministic=deterministic)
            raw, reward, terminated, truncated, _ = envs.step(actions.reshape(n * m, *self.spec.action_shape))
            ep_return += reward
            counted = (terminated | truncated) & (done_count < quota)
            ret_sum += torch.where(counted, ep_return, 0.0)
            ret_sq += torch.where(counted, ep_return * ep_return, 0.0)
            done_count += terminated | truncated
            ep_return.masked_fill_(terminated | truncated, 0.0)
            obs = self._normalize(raw.view(n, m, -1), update=False)
            step += 1
            if step % 16 == 0 and bool((done_count >= quota).all()):
                break
        count = float(episodes)
        mean = ret_sum.view(n, m).sum(1) / count
        var = (ret_sq.view(n, m).sum(1) / count - mean * mean).clamp_min(0.0)
        return [{"mean": float(a), "std": float(b), "episodes": episodes}
                for a, b in zip(mean.tolist(), var.sqrt().tolist(), strict=True)]


def train_seeds(config: PPOConfig | str = "CartPole-v1", seeds: Iterable[int] | str = range(1, 9),
                run_dir: str | Path | None = None, **overrides: Any) -> Population:
    """Train one independent PPO agent per seed of `config` in this process (the API of `ppox train ENV --seeds`).

    `seeds`: ints or a string like "1-64" / "1,2,5". Each agent writes RUN_DIR/seed_<k>/ (open it with
    `PPO.load`); RUN_DIR/population.json and the returned population's `.summary` hold every seed's result.

    >>> pop = ppox.train_seeds("CartPole-v1", seeds=range(1, 65), total_timesteps=100_000)
    >>> pop.summary["eval_return_mean"], pop.summary["eval_return_std"]
    """
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else seeds
    return Population(config, seeds, **overrides).learn(run_dir=run_dir)


__all__ = ["Population", "check_seeds", "check_supported", "parse_seeds", "train_seeds"]
