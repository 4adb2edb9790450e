"""The whole rollout on a GPU as one CUDA graph replay (compiled runs on ppox's batched torch envs).

On a GPU, a rollout step of thousands of envs is a few microseconds of arithmetic spread over ~60 small kernels
(policy, physics, TimeLimit, autoreset, bookkeeping), each launched from Python, plus the host reads that the
torch rollout needs to count finished episodes. Here the rollout's `num_steps` steps are captured once into a
CUDA graph and replayed per rollout, with no host sync inside it:

* each step is `ppox.rl.compiled_rollout.rollout_chunk` (one step; `torch.compile`d where the run compiles): the
  module's own `Policy.act` on the current weights with the step's sampling noise as an input, the env's batched
  torch physics (`physics`/`observe` of a twin of the same class and settings), TimeLimit, same-step autoreset
  from initial states drawn beforehand, the returns and lengths of the episodes in progress; after the steps,
  V(final obs) at truncations (the critic over every step's final observations, kept where truncated: no
  data-dependent shapes);
* before each replay (outside the graph, a few launches): the sampling noise from torch's CUDA generator, and every
  env's next `num_steps` initial states from the env's own generator (`low + (high - low) * U`, the env's reset
  distribution; an env takes them in order at its resets);
* after it: one read of the ended episodes' returns and lengths, the env's state, step counters and episode
  counters written back (the env stays the env of record: checkpoints, evaluation, the torch rollout).

The weights are read in place (the graph holds their addresses; updates write into them); the graph is captured
again for a new rollout buffer or moved parameters. The random streams differ from the torch rollout's (one draw
per rollout instead of per step); the distributions are the same. Where the capture or compile fails, the torch
rollout serves from then on (said once); a rollout with a non-finite value is taken again by the torch rollout from
the same start (which names the env or restarts the envs), as is one with a per-step callback.

It applies where `GraphedCollector.why_not` finds nothing: a CUDA device, ppox's batched torch classic-control envs
stepped as they are (not randomised, no hidden velocities), an MLP policy without memory, discrete or continuous
actions, no observation or reward normalisation, and PPOX_CUDA_GRAPHS not 0. Elsewhere (tests on a CPU) the same
loop runs without a graph when asked for (`capture=False`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppox.envs import TORCH_ENV_IDS, make_torch_vec_env
from ppox.envs.torch_envs import TorchClassicControlVecEnv
from ppox.rl.buffer import Collector, Finished, Rollout
from ppox.rl.compiled_rollout import STEP_KEYS, rollout_chunk
from ppox.rl.fast import CompileTimer, capture_cuda_graph, compile_fn, cuda_graphs_enabled, fallback_note
from ppox.rl.policy import Policy

if TYPE_CHECKING:
    from ppox.rl.envs import VecEnv
    from ppox.rl.normalize import ObsNormalizer, RewardScaler

N_CARRY = 6  # state, elapsed, episode_return, episode_length, obs, resets_used (rollout_chunk's carry)


class GraphedCollector:
    """The rollout as one CUDA graph replay per rollout (see the module docstring); `fallback` (the torch rollout)
    serves a rollout with a per-step callback or a non-finite value, and every rollout after a failed capture."""

    step_hook: Callable[[int, Any], Any] | None = None  # after each env step (ppox.rl.callbacks' on_step)

    def __init__(self, envs: VecEnv, policy: Policy, num_steps: int, fallback: Collector,
                 timer: CompileTimer | None = None, compile: bool = True, capture: bool = True) -> None:
        self.envs, self.policy, self.num_steps, self.fallback = envs, policy, num_steps, fallback
        env = envs.envs
        self.device = env.device
        self.max_episode_steps = env.max_episode_steps
        # the env's physics as pure functions: a twin of the same class and settings (its state and generator unused;
        # the env's own `_dynamics` may be compiled separately for its eager steps)
        self.torch_twin = make_torch_vec_env(envs.env_id, envs.num_envs, device=env.device,
                                             physics_dtype=env.physics_dtype, max_episode_steps=self.max_episode_steps)
        spec = policy.spec
        self._continuous = spec.kind == "continuous"
        bounds = (spec.low, spec.high) if self._continuous else ([0.0], [0.0])
        self._action_low, self._action_high = (torch.tensor(b, dtype=torch.float32, device=self.device).reshape(-1)
                                               for b in bounds)
        step = rollout_chunk(policy, self.torch_twin, self.max_episode_steps, 1, next_value=False)
        self._step = compile_fn(step, compile, device=self.device)
        self._timer = timer
        self._capture = capture
        self._failed = False
        self._graph: torch.cuda.CUDAGraph | None = None
        self._made_for: tuple | None = None  # (buffer, parameter addresses) the graph was captured for
        self._static: dict[str, Any] = {}  # the fixed tensors the graph reads and writes (`_make_static`)
        self._buf: Rollout | None = None  # the rollout buffer the graph writes
        self._last_value: torch.Tensor | None = None  # the graph's V(obs after the last step), rewritten per replay

    @staticmethod
    def why_not(envs: VecEnv, policy: Policy, obs_norm: ObsNormalizer | None,
                reward_scaler: RewardScaler | None) -> str | None:
        """Why this rollout cannot run these envs and this policy (None: it can)."""
        device = next(policy.parameters()).device
        if device.type != "cuda":
            return f"not on a GPU ({device.type})"
        if not cuda_graphs_enabled():
            return "PPOX_CUDA_GRAPHS=0"
        if not isinstance(envs.torch_env, TorchClassicControlVecEnv) or envs.env_id not in TORCH_ENV_IDS:
            return "the envs are not one of ppox's batched torch envs stepped as they are"
        if policy.recurrent:
            return "a policy with memory"
        if policy.spec.kind not in ("discrete", "continuous"):
            return f"{policy.spec.kind} actions"
        if obs_norm is not None or reward_scaler is not None:
            return "observation or reward normalisation"
        return None

    # ------------------------------------------------------------------ the captured loop
    def _make_static(self, buf: Rollout, obs: torch.Tensor) -> None:
        """The fixed tensors the graph reads and writes (made once per rollout buffer)."""
        env, n, t = self.envs.envs, obs.shape[0], self.num_steps
        head = self.policy.spec.dim if self._continuous else self.policy.spec.head_size
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=self.device)  # noqa: E731
        self._static = {
            # rollout_chunk's carry: state (d, N) physics dtype; elapsed, episode_length, resets_used (N,) int64;
            # episode_return (N,) float64; obs (N, obs_dim)
            "carry": [zeros(*env._state.shape, dtype=env.physics_dtype), zeros(n, dtype=torch.int64),
                      zeros(n, dtype=torch.float64), zeros(n, dtype=torch.int64), zeros(*obs.shape),
                      zeros(n, dtype=torch.int64)],
            "fresh": zeros(n, t, env.state_dim, dtype=env.physics_dtype),  # each env's next t initial states
            "noise": zeros(t, n, head),  # each step's sampling noise (Policy.act's `noise`)
            "step_noise": zeros(1, n, head),  # the step's noise, copied in: the compiled step's inputs never move
            # per step, besides the buffer's own fields: (t, N, ...) each
            "truncated": zeros(t, n, dtype=torch.bool), "final_obs": zeros(t, *obs.shape),
            "ended_return": zeros(t, n, dtype=torch.float64), "ended_length": zeros(t, n, dtype=torch.int64),
        }
        s = self._static
        self._buf = buf
        s["targets"] = [buf.obs, buf.actions, buf.logprobs, buf.values, buf.rewards, buf.terminated, buf.episode_end,
                        s["truncated"], s["final_obs"], s["ended_return"], s["ended_length"]]

    def _body(self) -> torch.Tensor:
        """num_steps steps from the static carry into the rollout buffer; returns V(obs after the last step)."""
        s = self._static
        params = [p.detach() for p in self.policy.parameters()]
        carry = list(s["carry"])
        n_out = len(STEP_KEYS)
        for k in range(self.num_steps):
            s["step_noise"].copy_(s["noise"][k:k + 1])
            out = self._step(*carry, s["fresh"], s["step_noise"], self._action_low, self._action_high, *params)
            torch._foreach_copy_([t[k] for t in s["targets"]], [x[0] for x in out[:n_out]])
            carry = list(out[n_out:n_out + N_CARRY])
        torch._foreach_copy_(s["carry"], carry)
        # V(final obs) where an episode was truncated: the critic once over all num_steps x num_envs final
        # observations (fewer, larger launches than per step; kept where truncated, no data-dependent shapes)
        final_values = self.policy.value(s["final_obs"].flatten(0, 1)).view_as(s["truncated"])
        self._buf.final_values.copy_(torch.where(s["truncated"], final_values, 0.0))
        return self.policy.value(s["carry"][4])

    def _load_start(self, obs: torch.Tensor) -> None:
        """The env's current state, counters and observation into the static carry; fresh noise and reset states."""
        env, s = self.envs.envs, self._static
        counters = self.envs.state_dict()
        state, elapsed, episode_return, episode_length, obs_in, resets_used = s["carry"]
        state.copy_(env._state)
        elapsed.copy_(env.elapsed_steps)
        episode_return.copy_(torch.from_numpy(counters["episode_return"]))
        episode_length.copy_(torch.from_numpy(counters["episode_length"]))
        obs_in.copy_(obs)
        resets_used.zero_()
        s["fresh"].copy_(env._sample_initial_states(self.num_steps).permute(2, 0, 1))  # (T, d, N) -> (N, T, d)
        if self._continuous:
            s["noise"].normal_()
        else:
            s["noise"].uniform_()

    @torch.no_grad()
    def collect(self, buf: Rollout, obs: torch.Tensor, finished: Finished) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step_hook is not None or self._failed:
            self.fallback.step_hook = self.step_hook
            return self.fallback.collect(buf, obs, finished)
        env = self.envs.envs
        generator_from = env._generator.get_state()
        try:
            last_value = self._run(buf, obs, generator_from)
        except Exception as exc:
            if not self._capture:  # no graph (a CPU's tests): an error is a bug, not a fallback
                raise
            fallback_note("the CUDA-graph rollout", exc, "the torch rollout serves from now on")
            self._failed, self._graph = True, None
            env._generator.set_state(generator_from)
            return self.collect(buf, obs, finished)
        s, done = self._static, buf.episode_end
        finite = torch.isfinite(s["final_obs"]).all() & torch.isfinite(buf.rewards).all()
        finite, ended = torch.stack([finite.long(), done.sum()]).tolist()  # one read
        if not finite:
            # nothing of the env is written yet: the torch rollout takes this one from the same start and generator
            env._generator.set_state(generator_from)
            self.fallback.step_hook = None
            return self.fallback.collect(buf, obs, finished)
        state, elapsed, episode_return, episode_length, next_obs, _ = s["carry"]
        # what the host needs, in one read: the ended episodes' returns and lengths, the episodes in progress
        n = len(elapsed)
        read = torch.cat([s["ended_return"][done], s["ended_length"][done].double(), episode_return,
                          episode_length.double()]).cpu().numpy()
        finished.extend(zip(read[:ended].tolist(), read[ended:2 * ended].astype(np.int64).tolist(), strict=True))
        env._state = state.clone()
        env.elapsed_steps.copy_(elapsed)
        self.envs.record_steps(self.num_steps, read[2 * ended:2 * ended + n], read[2 * ended + n:].astype(np.int64))
        return next_obs.clone(), last_value

    def _run(self, buf: Rollout, obs: torch.Tensor, generator_from: torch.Tensor) -> torch.Tensor:
        """Fill `buf` (replaying the graph, captured first where missing or stale); V(obs after the last step)."""
        made_for = (buf, tuple(p.data_ptr() for p in self.policy.parameters()))
        if self._made_for is None or self._made_for[0] is not buf or self._made_for[1] != made_for[1]:
            self._graph, self._made_for = None, made_for
            self._make_static(buf, obs)
        self._load_start(obs)
        if not self._capture:
            return self._body()
        if self._graph is None:
            start = time.perf_counter()
            # the warm-up run (it compiles the step) consumes the loaded start: load it again from the same env
            # generator state before the real rollout
            self._graph, self._last_value = capture_cuda_graph(self._body)
            self.envs.envs._generator.set_state(generator_from)
            self._load_start(obs)
            if self._timer is not None:
                self._timer.add(time.perf_counter() - start, "rollout graph (compile + capture)")
        self._graph.replay()
        return self._last_value.clone()


__all__ = ["GraphedCollector"]
