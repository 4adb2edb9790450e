"""The whole rollout on a CPU as a few calls of one compiled library (compiled runs on ppox's classic-control twins).

At CleanRL's 4 envs a rollout step is tiny (a 64x64 MLP on 4 rows, a few lines of physics), so the numpy rollout
spends it on ~30 Python-level calls (policy, env, bookkeeping). Here the rollout loop of `chunk_steps` steps is one
pure function of tensors, `rollout_chunk`, compiled ahead of time (ppox.rl.aot, with its small-batch settings) and
called num_steps / chunk_steps times per rollout:

* the policy: the module's own `Policy.act` on the current weights (torch.func.functional_call), with the step's
  sampling noise as an input (drawn per rollout from the trainer's numpy Generator, saved in checkpoints);
* the env: the batched torch twin's `physics` and `observe` (ppox.envs.torch_envs) in float64, gymnasium's maths
  like the numpy twin's, on the numpy twin's own state, which stays the env of record (checkpoints, evaluation);
* TimeLimit and same-step autoreset from initial states drawn beforehand from the numpy twin's per-env generators
  (`peek_resets`; `consume_resets` then moves each generator past the draws its env used), so an env follows the
  episodes the numpy twin would give for the same actions (tests/rl/test_compiled_rollout.py replays them);
* the returns and lengths of the episodes in progress.

The value of the true last observation of a truncated episode (for bootstrapping) is computed after the calls,
eagerly, for the few steps that need it. It applies where `CompiledCollector.why_not` finds nothing (the envs
are a numpy twin stepped as they are, an MLP policy without memory, no observation or reward normalisation, no
per-step callback); the trainer uses it when the update compiles (ppox.rl.rollout.make_collector), and the numpy
rollout otherwise, or for a rollout with a per-step callback, or where the library cannot be built (said once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.func import functional_call

from ppox.envs import TORCH_ENV_IDS, make_torch_vec_env
from ppox.rl import aot
from ppox.rl.buffer import Collector, Finished, Rollout
from ppox.rl.fast import CompileTimer, remember_cpu_isa_probe
from ppox.rl.policy import Policy, PolicyMethod

if TYPE_CHECKING:
    from ppox.rl.envs import VecEnv
    from ppox.rl.normalize import ObsNormalizer, RewardScaler

MAX_CHUNK_STEPS = 8  # steps per library call: build time grows with it, the per-call overhead is small beside 8 steps
# what one call returns per step, stacked (chunk_steps, num_envs, ...); then the carried state and V(last obs)
STEP_KEYS = ("obs", "actions", "logprobs", "values", "rewards", "terminated", "episode_end", "truncated", "final_obs",
             "ended_return", "ended_length")


def chunk_length(num_steps: int) -> int:
    """Steps per compiled call: the largest divisor of num_steps up to MAX_CHUNK_STEPS."""
    return max(k for k in range(1, MAX_CHUNK_STEPS + 1) if num_steps % k == 0)


def rollout_chunk(policy: Policy, torch_twin: Any, max_episode_steps: int, chunk_steps: int,
                  next_value: bool = True) -> Callable:
    """`chunk_steps` rollout steps as a pure function (see the module docstring):

    `chunk(state, elapsed, episode_return, episode_length, obs, resets_used, fresh, noise, action_low, action_high,
    *params)` -> (*STEP_KEYS stacked over the steps, then the carry: state, elapsed, episode_return,
    episode_length, next_obs, resets_used; then V(next_obs)). Shapes (N envs, d state variables,
    T = the rollout's steps): state (d, N) float64; elapsed, episode_length, resets_used (N,) int64; episode_return
    (N,) float64; obs (N, obs_dim) float32; fresh (N, T, d) float64: each env's next T initial states, taken in
    order at its resets (resets_used counts the ones taken); `torch_twin`: the env's batched torch twin (its pure
    `physics` and `observe`); noise (chunk_steps, N, head_size) float32 (uniform draws for
    categorical heads, N(0, 1) for Gaussian ones: `Policy.act`'s `noise`); action_low/high (action_dim,) float32
    clip Gaussian actions for the env (the buffer keeps them unclipped), unused otherwise; params: the policy's
    parameters in `named_parameters` order. `next_value` False: no V(next_obs) at the end (the CUDA graph's rollout,
    ppox.rl.graphed_rollout, calls one step at a time).
    """
    act, value = PolicyMethod(policy, "act"), PolicyMethod(policy, "value")
    names = [f"policy.{n}" for n, _ in policy.named_parameters()]
    continuous = policy.spec.kind == "continuous"

    def chunk(state: torch.Tensor, elapsed: torch.Tensor, episode_return: torch.Tensor, episode_length: torch.Tensor,
              obs: torch.Tensor, resets_used: torch.Tensor, fresh: torch.Tensor, noise: torch.Tensor,
              action_low: torch.Tensor, action_high: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weights = dict(zip(names, params, strict=True))
        rows = torch.arange(obs.shape[0], device=obs.device)
        steps = []
        for k in range(chunk_steps):
            actions, logprobs, values = functional_call(act, weights, (obs,), {"noise": noise[k]})
            env_actions = torch.minimum(torch.maximum(actions, action_low), action_high) if continuous else actions
            next_state, reward, terminated = torch_twin.physics(state, env_actions)
            elapsed = elapsed + 1
            truncated = elapsed >= max_episode_steps
            done = terminated | truncated
            final_obs = torch_twin.observe(next_state)
            episode_return = episode_return + reward
            episode_length = episode_length + 1
            ended_return, ended_length = episode_return, episode_length
            # same-step autoreset: an ended env starts from its next pre-drawn initial state
            state = torch.where(done, fresh[rows, resets_used].T, next_state)
            resets_used = resets_used + done.long()
            elapsed = torch.where(done, 0, elapsed)
            episode_return = torch.where(done, 0.0, episode_return)
            episode_length = torch.where(done, 0, episode_length)
            steps.append((obs, actions, logprobs, values, reward.float(), terminated, done, truncated, final_obs,
                          ended_return, ended_length))
            obs = torch_twin.observe(state)
        stacked = [torch.stack(column) for column in zip(*steps, strict=True)]
        carry = (state, elapsed, episode_return, episode_length, obs, resets_used)
        if not next_value:
            return (*stacked, *carry)
        return (*stacked, *carry, functional_call(value, weights, (obs,)))

    return chunk


class CompiledCollector:
    """The rollout as `rollout_chunk` library calls (see the module docstring); the numpy collector it is given
    serves a rollout with a per-step callback, and every rollout once the library could not be built."""

    def __init__(self, envs: VecEnv, policy: Policy, num_steps: int, rng: np.random.Generator,
                 fallback: Collector, timer: CompileTimer | None = None) -> None:
        self.envs, self.policy, self.num_steps, self.rng = envs, policy, num_steps, rng
        self.fallback = fallback
        # the twin's limit and physics constants; its state is read from `envs.twin` at each rollout (a resumed
        # run's checkpoint replaces the env object)
        self.max_episode_steps = envs.twin.max_episode_steps
        self.chunk_steps = chunk_length(num_steps)
        # the twin's physics as torch functions, in float64 like the numpy twin (its own state and generator unused)
        self.torch_twin = make_torch_vec_env(envs.env_id, envs.num_envs, physics_dtype=torch.float64,
                                          max_episode_steps=self.max_episode_steps)
        spec = policy.spec
        self._continuous = spec.kind == "continuous"
        bounds = (spec.low, spec.high) if self._continuous else ([0.0], [0.0])
        self._action_low, self._action_high = (torch.tensor(b, dtype=torch.float32).reshape(-1) for b in bounds)
        self._timer = timer
        self._library: aot.AotFunction | None = None
        self._failed = False
        self._made_for: Rollout | None = None  # the rollout buffer `_made` was made for
        self._made: tuple = ()

    step_hook: Callable[[int, Any], Any] | None = None  # after each env step (ppox.rl.callbacks' on_step)

    @staticmethod
    def why_not(envs: VecEnv, policy: Policy, obs_norm: ObsNormalizer | None,
                reward_scaler: RewardScaler | None) -> str | None:
        """Why this rollout cannot run these envs and this policy (None: it can)."""
        if envs.twin is None or envs.env_id not in TORCH_ENV_IDS:
            return "the envs are not one of ppox's numpy twins stepped as they are"
        if policy.recurrent or next(policy.parameters()).device.type != "cpu":
            return "a policy with memory, or not on the CPU"
        if policy.spec.kind not in ("discrete", "continuous"):
            return f"{policy.spec.kind} actions"
        if obs_norm is not None or reward_scaler is not None:
            return "observation or reward normalisation"
        if not aot.enabled(torch.device("cpu"), policy):
            return "ahead-of-time compiling is off (PPOX_AOT=0)"
        return None

    def _draw_noise(self, noise: torch.Tensor) -> None:
        """The rollout's sampling noise into `noise` (num_steps, num_envs, head_size) float32, one Generator call."""
        if self._continuous:
            self.rng.standard_normal(dtype=np.float32, out=noise.numpy())
        else:
            self.rng.random(dtype=np.float32, out=noise.numpy())

    def _build(self, args: list[torch.Tensor]) -> aot.AotFunction | None:
        chunk = rollout_chunk(self.policy, self.torch_twin, self.max_episode_steps, self.chunk_steps)
        label = "|".join(("rollout chunk", aot.module_signature(self.policy), repr(self.policy.spec),
                          aot.settings_signature(self.torch_twin), str(self.chunk_steps)))
        timed = self._timer.add if self._timer is not None else None
        return aot.load_or_build_or_none(chunk, label, args, remember_cpu_isa_probe, timed, small_batch=True,
                                         fallback="the numpy rollout")

    def _buffers(self, buf: Rollout, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], list]:
        """(noise, extra, per call: (its noise, where its steps go)), made once for a rollout buffer: the noise
        (num_steps, num_envs, head_size), what the calls return per step besides the buffer's fields (`extra`:
        (num_steps, num_envs, ...) each), and each call's slices of them."""
        if self._made_for is not buf:
            num_envs, k = obs.shape[0], self.chunk_steps
            shape = (self.num_steps, num_envs)
            noise = torch.zeros(*shape, self.policy.spec.dim if self._continuous else self.policy.spec.head_size)
            extra = {"truncated": torch.zeros(shape, dtype=torch.bool), "final_obs": torch.zeros(*shape, obs.shape[1]),
                     "ended_return": torch.zeros(shape, dtype=torch.float64),
                     "ended_length": torch.zeros(shape, dtype=torch.int64)}
            targets = [buf.obs, buf.actions, buf.logprobs, buf.values, buf.rewards, buf.terminated, buf.episode_end,
                       *extra.values()]
            calls = [(noise[s:s + k], [t[s:s + k] for t in targets]) for s in range(0, self.num_steps, k)]
            self._made_for, self._made = buf, (noise, extra, calls)
        return self._made

    @torch.no_grad()
    def collect(self, buf: Rollout, obs: torch.Tensor, finished: Finished) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step_hook is not None or self._failed:
            self.fallback.step_hook = self.step_hook
            return self.fallback.collect(buf, obs, finished)
        twin = self.envs.twin
        noise, extra, calls = self._buffers(buf, obs)
        counters = self.envs.state_dict()  # copies of the in-progress episodes' returns and lengths
        carried = [torch.from_numpy(twin.state.T.copy()), torch.from_numpy(twin.elapsed_steps.copy()),
                   torch.from_numpy(counters["episode_return"]), torch.from_numpy(counters["episode_length"]),
                   obs.clone(memory_format=torch.contiguous_format), torch.zeros(len(obs), dtype=torch.int64)]
        fresh = torch.from_numpy(twin.peek_resets(self.num_steps))  # (num_envs, num_steps, state_dim)
        noise_from = self.rng.bit_generator.state
        self._draw_noise(noise)
        params = [p.detach() for p in self.policy.parameters()]
        if self._library is None:
            example = [*carried, fresh, calls[0][0], self._action_low, self._action_high, *params]
            self._library = self._build(example)
            if self._library is None:  # noted once by aot; the numpy rollout serves from now on
                self._failed = True
                self.rng.bit_generator.state = noise_from
                return self.collect(buf, obs, finished)
            self._library.check(example)  # every later call's inputs keep these layouts (slices of `noise` too)
        # The library keeps its outputs in buffers of its own that its next call overwrites (intermediates on the
        # stack: ppox.rl.aot's small_batch), so each call's results are copied out before the next one: its steps
        # into the rollout buffer (and `extra`), the carry into `carried`, which the next call reads.
        run, n_steps = self._library.call_unchecked, len(STEP_KEYS)
        for call_noise, views in calls:
            out = run([*carried, fresh, call_noise, self._action_low, self._action_high, *params])
            torch._foreach_copy_(views, out[:n_steps])
            torch._foreach_copy_(carried, out[n_steps:-1])
        last_value = out[-1].clone()
        if not (torch.isfinite(extra["final_obs"]).all() and torch.isfinite(buf.rewards).all()):
            # nothing of the envs is written yet (their state, generators and counters): the numpy rollout takes this
            # one from the same start and Generator state, and names the env or restarts the envs (--max-env-restarts)
            self.rng.bit_generator.state = noise_from
            self.fallback.step_hook = None
            return self.fallback.collect(buf, obs, finished)
        buf.final_values.zero_()
        truncated = extra["truncated"]
        if truncated.any():  # bootstrap from the true last state of a truncated episode, not the reset state
            buf.final_values[truncated] = self.policy.value(extra["final_obs"][truncated])
        done = buf.episode_end
        if done.any():
            finished.extend(zip(extra["ended_return"][done].tolist(), extra["ended_length"][done].tolist(),
                                strict=True))
        state, elapsed, episode_return, episode_length, next_obs, resets_used = carried
        twin.state = state.T.numpy()
        twin.elapsed_steps[:] = elapsed.numpy()
        twin.consume_resets(resets_used.numpy())
        self.envs.record_steps(self.num_steps, episode_return.numpy(), episode_length.numpy())
        return next_obs, last_value


__all__ = ["MAX_CHUNK_STEPS", "STEP_KEYS", "CompiledCollector", "chunk_length", "rollout_chunk"]
