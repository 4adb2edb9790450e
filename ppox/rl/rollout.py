"""The rollout: num_steps steps of every env with the current policy, into a preallocated buffer.

Three backends, one chosen per run by `make_collector` (the only place that decides):

* `TorchCollector`: tensors on the trainer's device; any env backend, any policy. Its policy step is
  `FusedTorchStep` where the policy fuses (ppox.rl.policy.Policy.fused_mlp), else the module's own
  `act` (compiled with `compile`).
* `NumpyCollector`: CPU with envs that step in numpy (ppox's numpy twins, gymnasium vector envs):
  numpy policy step (`NumpyPolicy`; `NumpyRecurrentPolicy` for MLP encoders with an LSTM/GRU core, from
  `Policy.fused_memory`), numpy env steps and normalisation, written into numpy views of the buffer's CPU
  tensors, so no tensor op runs per step (~2x faster at a few envs).
* `CompiledCollector` (ppox.rl.compiled_rollout): a compiled run on ppox's numpy twins with an MLP
  policy: the policy's `act`, the twin's physics and autoreset for several steps per call of one compiled
  library (~3-4x faster than the numpy rollout at CleanRL's 4 envs).
* `GraphedCollector` (ppox.rl.graphed_rollout): a compiled run on a GPU with ppox's batched torch envs and an
  MLP policy: the same step function (`rollout_chunk`), the whole rollout one CUDA graph replay.

All sample the policy's distribution; each draws its own random stream (torch's generator; the
trainer's numpy Generator, saved in checkpoints). None re-implements the network: the fast steps
run the matrices the policy exports or trace the module's own `act`, and a policy they cannot run goes
to the module's `act`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppox.rl.buffer import Carry, Collector, Finished, Rollout
from ppox.rl.compiled_rollout import CompiledCollector
from ppox.rl.fast import CompileTimer, compile_fn
from ppox.rl.graphed_rollout import GraphedCollector
from ppox.rl.normalize import ObsNormalizer, RewardScaler
from ppox.rl.policy import Policy
from ppox.rl.spaces import LOG_SQRT_2PI, MASKED_LOGIT

if TYPE_CHECKING:
    from ppox.rl.config import PPOConfig
    from ppox.rl.envs import VecEnv


def make_collector(
    config: PPOConfig, envs: VecEnv, policy: Policy, obs_norm: ObsNormalizer | None,
    reward_scaler: RewardScaler | None, rng: np.random.Generator, timer: CompileTimer | None = None,
    carry: Carry | None = None,
) -> Collector:
    """The rollout backend of a run: `config.rollout_backend`, where "auto" (and "numpy") mean numpy
    when the policy runs on the CPU, the envs step in numpy and `NumpyPolicy` runs this policy, else
    torch. "auto" with `config.compile` True (resolved, not "auto") means the compiled rollout
    (ppox.rl.compiled_rollout) where it applies: ppox's numpy twins stepped as they are, an MLP policy,
    no normalisation; on a GPU, the CUDA-graph rollout (ppox.rl.graphed_rollout) where it applies: ppox's batched
    torch envs, an MLP policy, no normalisation. The torch path is the fallback for any policy (memory, any
    encoder), never an error; `carry`: a recurrent policy's state (required then)."""
    on_cpu = next(policy.parameters()).device.type == "cpu"
    if config.rollout_backend != "torch" and on_cpu and envs.numpy_backend:
        if NumpyPolicy.supported(policy):
            numpy = NumpyCollector(envs, NumpyPolicy(policy, rng), config.num_steps, obs_norm, reward_scaler)
            if (config.rollout_backend == "auto" and config.compile is True
                    and CompiledCollector.why_not(envs, policy, obs_norm, reward_scaler) is None):
                return CompiledCollector(envs, policy, config.num_steps, rng, numpy, timer)
            return numpy
        if NumpyRecurrentPolicy.supported(policy):
            return NumpyCollector(envs, NumpyRecurrentPolicy(policy, rng), config.num_steps, obs_norm, reward_scaler,
                                  carry)
    if config.rollout_backend == "numpy":
        _note_once(f"rollout_backend numpy cannot run this policy ({_why_not_numpy(policy, on_cpu, envs)}): "
                   "the torch rollout runs it")
    torch_rollout = TorchCollector(envs, policy, config.num_steps, obs_norm, reward_scaler, config.compile, timer,
                                   carry)
    if (config.rollout_backend == "auto" and config.compile is True
            and GraphedCollector.why_not(envs, policy, obs_norm, reward_scaler) is None):
        return GraphedCollector(envs, policy, config.num_steps, torch_rollout, timer)
    return torch_rollout


def _why_not_numpy(policy: Policy, on_cpu: bool, envs: VecEnv) -> str:
    if policy.recurrent:
        return "a memory core behind an encoder other than an MLP"
    if not on_cpu:
        return "not on the CPU"
    return "its envs do not step in numpy" if not envs.numpy_backend else "not a pair of MLPs"


_NOTED: set[str] = set()


def _note_once(text: str) -> None:
    """A fallback is said once per process, never silently taken."""
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- torch
class FusedTorchStep:
    """The rollout's policy step on the policy's fused matrices (`Policy.fused_mlp`).

    At rollout batch sizes (a few envs) a step costs per-op overhead, not FLOPs: the separate actor and
    critic MLPs are ~20 small ops through nn.Module calls. Fused, layer 1 is one `addmm` with the two
    weight matrices stacked, deeper layers one `addmm` with a block-diagonal matrix, the heads one
    `addmm`: 3 matmuls + 2 activations for both networks. `refresh()` re-reads the weights (once per
    rollout: the update changes them in between). Sampling: an exponential race (categorical), mean +
    std * noise (Gaussian); the same distribution as `Policy.act`, a different random stream.

    Measured on 2 shared cores, batch 4, 64x64 tanh: Policy.act 150-210 us, this 48-64 us.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.refresh()

    @staticmethod
    def supported(policy: Policy) -> bool:
        return policy.fusable and policy.spec.kind in ("discrete", "continuous")

    @torch.no_grad()
    def refresh(self) -> None:
        fused = self.policy.fused_mlp()
        self.layers, self.head = fused.layers, fused.head_size
        self.activation = torch.tanh if fused.activation == "tanh" else torch.relu
        log_std = self.policy.log_std
        self.std = log_std.exp() if log_std is not None else None
        self.log_std_sum = float(log_std.sum()) if log_std is not None else 0.0

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = obs
        last = len(self.layers) - 1
        for i, (b, w) in enumerate(self.layers):
            h = torch.addmm(b, h, w)
            if i < last:
                h = self.activation(h)
        head, value = h[:, : self.head], h[:, self.head]
        if self.spec.kind == "discrete":
            logp_all = torch.log_softmax(head, -1)
            # exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) samples i with probability p_i
            # (3 small ops; torch.multinomial costs ~4x more at this size)
            actions = logp_all.exp().div_(torch.empty_like(head).exponential_()).argmax(-1, keepdim=True)
            return actions.squeeze(1), logp_all.gather(1, actions).squeeze(1), value
        noise = torch.randn_like(head)
        actions = torch.addcmul(head, self.std, noise)
        logp = noise.square().sum(-1).mul_(-0.5).sub_(self.log_std_sum + LOG_SQRT_2PI * self.spec.dim)
        return actions, logp, value


def torch_policy_step(policy: Policy, compile: bool = False, timer: CompileTimer | None = None) -> Callable:
    """`step(obs) -> (actions, logprobs, values)`, the torch rollout's sampling step, with `.refresh()`
    to call after the weights change: `FusedTorchStep` where the policy fuses, else `Policy.act`
    (compiled when `compile`; its refresh is a no-op, as it reads the parameters directly)."""
    if FusedTorchStep.supported(policy):
        return FusedTorchStep(policy)

    def step(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return policy.act(obs)

    compiled = compile_fn(step, compile, device=next(policy.parameters()).device)  # no CPU probe for CUDA
    if compile and timer is not None:
        compiled = timer.wrap(compiled)

    def run(obs: torch.Tensor):
        with torch.no_grad():
            return compiled(obs)

    run.refresh = lambda: None
    return run


def _normalize(obs_norm: ObsNormalizer | None, obs: torch.Tensor, update: bool) -> torch.Tensor:
    return obs_norm(obs, update) if obs_norm is not None else obs


class TorchCollector:
    """The rollout in torch, on the trainer's device (see the module docstring)."""

    step_hook: Callable[[int, Any], Any] | None = None  # after each env step (ppox.rl.callbacks' on_step)

    def __init__(self, envs: VecEnv, policy: Policy, num_steps: int, obs_norm: ObsNormalizer | None,
                 reward_scaler: RewardScaler | None, compile: bool = False, timer: CompileTimer | None = None,
                 carry: Carry | None = None) -> None:
        self.envs, self.policy, self.num_steps = envs, policy, num_steps
        self.obs_norm, self.reward_scaler = obs_norm, reward_scaler
        if policy.recurrent and carry is None:
            raise ValueError("a recurrent policy's rollout needs its Carry")
        self.carry = carry  # the recurrent state, carried across rollouts (the trainer's, saved in checkpoints)
        if compile and policy.recurrent:
            _note_once("--compile: the rollout step of a policy with memory runs eagerly")
        # steps without masks; with masks (known once the envs reset) the module's own `act` takes them
        self.step = torch_policy_step(policy, compile and not policy.recurrent, timer)

    def collect(self, buf: Rollout, obs: torch.Tensor, finished: Finished) -> tuple[torch.Tensor, torch.Tensor]:
        envs, policy, obs_norm, carry = self.envs, self.policy, self.obs_norm, self.carry
        self.step.refresh()  # the fused rollout weights follow the last update
        buf.final_values.zero_()
        mask = None if envs.action_mask is None else torch.as_tensor(envs.action_mask, device=buf.obs.device)
        for step in range(self.num_steps):
            buf.obs[step] = obs
            if carry is not None:
                buf.episode_starts[step] = carry.episode_starts
                buf.states[step] = carry.state
                actions, logprobs, values, carry.state = policy.act(
                    obs, action_mask=mask, state=carry.state, episode_starts=carry.episode_starts)
            elif mask is not None:
                actions, logprobs, values = policy.act(obs, action_mask=mask)
            else:
                actions, logprobs, values = self.step(obs)
            if mask is not None:
                buf.action_masks[step] = mask
            buf.actions[step] = actions
            buf.logprobs[step] = logprobs
            buf.values[step] = values

            result = envs.step(actions)
            episode_end = result.terminated | result.truncated
            reward = result.reward
            if self.reward_scaler is not None:
                reward = self.reward_scaler(reward, episode_end)
            buf.rewards[step] = reward
            buf.terminated[step] = result.terminated
            buf.episode_end[step] = episode_end
            if result.truncated.any():
                # bootstrap from the true last state of a truncated episode, not the reset state; a recurrent
                # policy reads it with the state it carried into that last step
                idx = torch.nonzero(result.truncated).squeeze(-1)
                final = _normalize(obs_norm, result.final_obs[idx], update=False)
                with torch.no_grad():
                    buf.final_values[step, idx] = (policy.value(final) if carry is None
                                                   else policy.value(final, carry.state[idx]))
            obs = _normalize(obs_norm, result.obs, update=True)
            if mask is not None:
                mask = result.action_mask
            if carry is not None:
                carry.episode_starts = episode_end
            finished.extend(zip(result.finished_returns, result.finished_lengths, strict=True))
            if self.step_hook is not None:
                self.step_hook(step, result)
        with torch.no_grad():
            if carry is not None:
                return obs, policy.value(obs, carry.state, carry.episode_starts)
            return obs, policy.value(obs)


# ---------------------------------------------------------------------------- numpy
_TINY32 = np.finfo(np.float32).tiny
_MASKED_LOGIT32 = np.float32(MASKED_LOGIT)


class NumpyPolicy:
    """The rollout's policy step in numpy (CPU, float32) on the policy's fused matrices, sampling from a
    numpy Generator.

    At rollout batch sizes a numpy op costs ~1 us against torch's several us of per-op dispatch, so
    the whole step (3 matmuls, 2 activations, sampling, log-probs) costs ~10-15 us. Categorical and multi-categorical
    actions: Gumbel-max (argmax of logits - log E, E ~ Exp(1)); Gaussian: mean + std * N(0, 1). The same
    distributions as `Policy.act` (tests/rl/test_rollout.py pins equal actions, log-probs and values for
    equal noise), a different random stream: the Generator (`rng`) belongs to the trainer, which seeds it
    and saves its state in checkpoints. `refresh()` copies the weights after each update.

    `__call__` is one step. The rollout splits it so that per step only the network and the argmax run:
    `draw_noise` draws a whole rollout's noise in one Generator call, `sample` is the per-step part, and
    `log_prob` runs once on the rollout's stored logits (the same numbers as step by step: the Generator
    fills element by element, and every op is elementwise or reduces each row alone).
    """

    def __init__(self, policy: Policy, rng: np.random.Generator) -> None:
        self.policy = policy
        self.spec = spec = policy.spec
        self.rng = rng
        self.splits = np.cumsum(spec.nvec)[:-1].tolist() if spec.kind == "multidiscrete" else []
        self.categorical = spec.kind != "continuous"
        self._rows: dict[int, np.ndarray] = {}  # batch size -> arange(batch), to pick each row's log-prob
        self.refresh()

    @staticmethod
    def supported(policy: Policy) -> bool:
        """The policies it runs: fusable ones (ppox.rl.policy.Policy.fusable) on the CPU."""
        return policy.fusable and next(policy.parameters()).device.type == "cpu"

    @torch.no_grad()
    def refresh(self) -> None:
        fused = self.policy.fused_mlp()
        self.layers = [(b.numpy().astype(np.float32), w.numpy().astype(np.float32)) for b, w in fused.layers]
        self.tanh, self.head = fused.activation == "tanh", fused.head_size
        self._refresh_log_std()

    def _refresh_log_std(self) -> None:
        log_std = self.policy.log_std
        if log_std is not None:
            self.std = log_std.exp().numpy().astype(np.float32)
            self.logp_const = np.float32(float(log_std.sum()) + LOG_SQRT_2PI * self.spec.dim)

    def _forward(self, obs: np.ndarray) -> np.ndarray:
        """(batch, head_size + 1) float32: the action head's outputs, then V(s); a new array."""
        return _dense(obs, self.layers, self.tanh, activate_last=False)

    def value(self, obs: np.ndarray) -> np.ndarray:
        """V(s) for float32 observations (batch, obs_dim)."""
        return self._forward(obs)[:, self.head].copy()

    def draw_noise(self, *shape: int) -> np.ndarray:
        """The sampling noise of `shape` rows, (*shape, head_size) float32: log E, E ~ Exp(1), for categorical
        heads; N(0, 1) for Gaussian ones."""
        shape = (*shape, self.head)
        if not self.categorical:
            return self.rng.standard_normal(shape, dtype=np.float32)
        noise = self.rng.standard_exponential(shape, dtype=np.float32)
        # float32 draws are exactly 0 about once in 2^24 (numpy warns "divide by zero in log" then):
        # the smallest normal float32 keeps log finite and still wins the argmin, as E = 0 would
        np.maximum(noise, _TINY32, out=noise)
        return np.log(noise, out=noise)

    def sample(self, obs: np.ndarray, mask: np.ndarray | None, noise: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(head, actions, V(s)) for float32 observations (batch, obs_dim) and one step's `noise` (batch,
        head_size): `head` is the logits (categorical; masked ones MASKED_LOGIT, as in the torch
        distributions; `mask` (batch, head_size) bool, True = allowed) or the mean (Gaussian). `V(s)` is a
        view of a new array."""
        return self._pick(self._forward(obs), mask, noise)

    def _pick(self, h: np.ndarray, mask: np.ndarray | None, noise: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`sample` from the network's outputs h (batch, head_size + 1)."""
        head, value = h[:, : self.head], h[:, self.head]
        if mask is not None:
            head = np.where(mask, head, _MASKED_LOGIT32)
        if not self.categorical:
            return head, head + self.std * noise, value
        gumbel = noise - head  # argmax(logits - log E) = argmin(log E - logits)
        if self.spec.kind == "discrete":
            return head, gumbel.argmin(-1), value
        return head, np.stack([g.argmin(-1) for g in np.split(gumbel, self.splits, axis=-1)], axis=-1), value

    def _log_prob_at(self, logits: np.ndarray, index: np.ndarray) -> np.ndarray:
        """log softmax(logits)[row, index[row]] in float32, for logits (rows, n)."""
        rows = self._rows.get(len(index))
        if rows is None:
            rows = self._rows[len(index)] = np.arange(len(index))
        # logaddexp.reduce: one stable call for log-sum-exp (~1.7 us at batch 4, against ~4.7 us for
        # max / subtract / exp / sum / log); fancy indexing is ~5x faster than take_along_axis
        return logits[rows, index] - np.logaddexp.reduce(logits, axis=-1)

    def log_prob(self, head: np.ndarray | None, actions: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """log pi(actions) float32 for `sample`'s head and actions and the noise they came from, with any
        leading shape: one step's (batch,) or a rollout's (num_steps, batch). Gaussian: from the noise
        alone (`head` may be None)."""
        if not self.categorical:
            return np.square(noise).sum(-1, dtype=np.float32) * np.float32(-0.5) - self.logp_const
        lead = noise.shape[:-1]
        head = head.reshape(-1, self.head)
        if self.spec.kind == "discrete":
            return self._log_prob_at(head, actions.reshape(-1)).reshape(lead)
        actions = actions.reshape(len(head), -1)
        logp = sum(self._log_prob_at(part, actions[:, i]) for i, part in enumerate(np.split(head, self.splits, axis=1)))
        return logp.astype(np.float32).reshape(lead)

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actions, log pi(a|s), V(s)) for float32 observations (batch, obs_dim); `mask` (batch, head_size)
        bool, True = allowed."""
        noise = self.draw_noise(len(obs))
        head, actions, value = self.sample(obs, mask, noise)
        return actions, self.log_prob(head, actions, noise), value.copy()


def _dense(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], tanh: bool, activate_last: bool) -> np.ndarray:
    """x @ W + b through `layers` [(bias, weight^T)], tanh or ReLU (in place) after each layer but, unless
    `activate_last`, the last; a new array."""
    last = len(layers) - 1
    for i, (b, w) in enumerate(layers):
        x = x @ w
        x += b
        if i < last or activate_last:
            if tanh:
                np.tanh(x, out=x)
            else:
                np.maximum(x, 0, out=x)
    return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # through tanh: no overflow warning from exp(-x) for very negative x
    return np.tanh(x * np.float32(0.5)) * np.float32(0.5) + np.float32(0.5)


class NumpyRecurrentPolicy(NumpyPolicy):
    """`NumpyPolicy` for a policy with memory (`Policy.fused_memory`): the encoder stack, one step of the LSTM /
    GRU cell(s) (the state zeroed where an episode starts, as `RecurrentCore` does), the heads; sampling and
    log-probs as `NumpyPolicy`'s. `state`: (batch, state_size) float32 in the policy's layout. The same numbers
    as `Policy.act` for equal noise (tests/rl/test_rollout.py)."""

    @staticmethod
    def supported(policy: Policy) -> bool:
        return next(policy.parameters()).device.type == "cpu" and policy.fused_memory() is not None

    @torch.no_grad()
    def refresh(self) -> None:
        fused = self.policy.fused_memory()

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.numpy().astype(np.float32)

        self.encoder = [(arr(b), arr(w)) for b, w in fused.encoder]
        self.tanh, self.head = fused.activation == "tanh", fused.head_size
        self.lstm, self.cores, self.size = fused.kind == "lstm", fused.cores, fused.size
        self.w_ih, self.w_hh = arr(fused.w_ih), arr(fused.w_hh)
        if self.lstm:  # every LSTM gate adds both biases
            self.bias = arr(fused.b_ih + fused.b_hh)
        else:  # the GRU's candidate gate scales the recurrent part, bias included, by the reset gate
            self.b_ih, self.b_hh = arr(fused.b_ih), arr(fused.b_hh)
        self.heads = (arr(fused.heads[0]), arr(fused.heads[1]))
        self._refresh_log_std()

    def _step(self, obs: np.ndarray, state: np.ndarray, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(outputs (batch, head_size + 1): the action head's, then V(s); the new state (batch, state_size))."""
        x = _dense(obs, self.encoder, self.tanh, activate_last=True)
        if starts is not None and np.count_nonzero(starts):
            state = np.where(starts[:, None], np.float32(0.0), state)
        batch, cores, size = len(obs), self.cores, self.size
        if self.lstm:
            s = state.reshape(batch, cores, 2, size)  # per core [h, c]
            gates = x @ self.w_ih
            gates += s[:, :, 0].reshape(batch, cores * size) @ self.w_hh
            gates += self.bias
            g = gates.reshape(batch, cores, 4, size)  # per core the gates i, f, g, o
            c = _sigmoid(g[:, :, 1]) * s[:, :, 1] + _sigmoid(g[:, :, 0]) * np.tanh(g[:, :, 2])
            h = _sigmoid(g[:, :, 3]) * np.tanh(c)
            new_state = np.stack([h, c], axis=2).reshape(batch, cores * 2 * size)
        else:
            s = state.reshape(batch, cores, size)
            gi = (x @ self.w_ih + self.b_ih).reshape(batch, cores, 3, size)  # per core the gates r, z, n
            gh = (state @ self.w_hh + self.b_hh).reshape(batch, cores, 3, size)
            r = _sigmoid(gi[:, :, 0] + gh[:, :, 0])
            z = _sigmoid(gi[:, :, 1] + gh[:, :, 1])
            n = np.tanh(gi[:, :, 2] + r * gh[:, :, 2])
            h = (1 - z) * n + z * s
            new_state = h.reshape(batch, cores * size)
        b, w = self.heads
        out = h.reshape(batch, cores * size) @ w
        out += b
        return out, new_state

    def sample(self, obs: np.ndarray, mask: np.ndarray | None, noise: np.ndarray, state: np.ndarray | None = None,
               starts: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """`NumpyPolicy.sample` from `state` (reset where `starts`), and the new state."""
        out, new_state = self._step(obs, state, starts)
        return (*self._pick(out, mask, noise), new_state)

    def value(self, obs: np.ndarray, state: np.ndarray | None = None, starts: np.ndarray | None = None
              ) -> np.ndarray:
        """V(s) from `state` (reset where `starts`); the state is not moved."""
        return self._step(obs, state, starts)[0][:, self.head].copy()

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None, state: np.ndarray | None = None,
                 starts: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(actions, log pi(a|s), V(s), new state)."""
        noise = self.draw_noise(len(obs))
        head, actions, value, new_state = self.sample(obs, mask, noise, state, starts)
        return actions, self.log_prob(head, actions, noise), value.copy(), new_state


class NumpyCollector:
    """The rollout in numpy (see the module docstring): numpy policy step, numpy env steps, numpy
    normalisation, written into numpy views of the buffer's (CPU) tensors."""

    step_hook: Callable[[int, Any], Any] | None = None  # after each env step (ppox.rl.callbacks' on_step)

    def __init__(self, envs: VecEnv, policy: NumpyPolicy, num_steps: int, obs_norm: ObsNormalizer | None,
                 reward_scaler: RewardScaler | None, carry: Carry | None = None) -> None:
        self.envs, self.policy, self.num_steps = envs, policy, num_steps
        self.obs_norm, self.reward_scaler = obs_norm, reward_scaler
        if isinstance(policy, NumpyRecurrentPolicy) != (carry is not None):
            raise ValueError("a recurrent policy's rollout needs its Carry (and only it has one)")
        self.carry = carry  # the recurrent state, carried across rollouts (the trainer's, saved in checkpoints)
        self._logits_buf: np.ndarray | None = None

    def collect(self, buf: Rollout, obs: torch.Tensor, finished: Finished) -> tuple[torch.Tensor, torch.Tensor]:
        envs, policy, step_hook = self.envs, self.policy, self.step_hook
        obs_norm, reward_scaler = self.obs_norm, self.reward_scaler
        policy.refresh()  # the rollout weights follow the last update
        b_obs, b_actions, b_logprobs, b_values = (buf.obs.numpy(), buf.actions.numpy(), buf.logprobs.numpy(),
                                                  buf.values.numpy())
        b_rewards, b_terminated, b_end, b_final = (buf.rewards.numpy(), buf.terminated.numpy(),
                                                   buf.episode_end.numpy(), buf.final_values.numpy())
        b_masks = buf.action_masks.numpy() if buf.action_masks is not None else None
        carry = self.carry
        if carry is not None:  # (num_envs, state_size) float32 and (num_envs,) bool, new arrays at each step
            state, starts = carry.state.numpy().copy(), carry.episode_starts.numpy().copy()
            b_states, b_starts = buf.states.numpy(), buf.episode_starts.numpy()
        b_final.fill(0.0)
        obs = obs.numpy()
        mask = envs.action_mask  # (num_envs, head_size) bool where the env gives masks, else None
        noise = policy.draw_noise(self.num_steps, len(obs))  # (num_steps, num_envs, head_size): one call
        logits = self._logits(noise.shape) if policy.categorical else None  # log-probs after the loop
        for step in range(self.num_steps):
            b_obs[step] = obs
            if mask is not None:
                b_masks[step] = mask
            if carry is not None:
                b_starts[step] = starts
                b_states[step] = state
                head, actions, b_values[step], state = policy.sample(obs, mask, noise[step], state, starts)
            else:
                head, actions, b_values[step] = policy.sample(obs, mask, noise[step])  # V(s) into the buffer
            b_actions[step] = actions
            if logits is not None:
                logits[step] = head

            result = envs.step(actions)
            truncated = result.truncated
            episode_end = np.logical_or(result.terminated, truncated, out=b_end[step])
            reward = result.reward
            if reward_scaler is not None:
                reward = reward_scaler.scale_np(reward, episode_end)
            b_rewards[step] = reward
            b_terminated[step] = result.terminated
            if np.count_nonzero(truncated):  # count_nonzero: cheaper than .any() on a few flags
                # bootstrap from the true last state of a truncated episode, not the reset state
                idx = np.flatnonzero(truncated)
                final = result.final_obs[idx]
                if obs_norm is not None:
                    final = obs_norm.normalize_np(final, update=False)
                # a recurrent policy reads it with the state it carried into that last step
                b_final[step, idx] = policy.value(final) if carry is None else policy.value(final, state[idx])
            if carry is not None:
                starts = episode_end.copy()
            obs = result.obs if obs_norm is None else obs_norm.normalize_np(result.obs, update=True)
            mask = result.action_mask
            if result.finished_returns:
                finished.extend(zip(result.finished_returns, result.finished_lengths, strict=True))
            if step_hook is not None:
                step_hook(step, result)
        b_logprobs[:] = policy.log_prob(logits, b_actions, noise)
        if carry is not None:
            carry.state, carry.episode_starts = torch.from_numpy(state), torch.from_numpy(starts)
            return torch.from_numpy(obs), torch.from_numpy(policy.value(obs, state, starts))
        return torch.from_numpy(obs), torch.from_numpy(policy.value(obs))

    def _logits(self, shape: tuple[int, ...]) -> np.ndarray:
        """The rollout's logits (num_steps, num_envs, head_size) float32, allocated once."""
        if self._logits_buf is None or self._logits_buf.shape != shape:
            self._logits_buf = np.empty(shape, dtype=np.float32)
        return self._logits_buf


__all__ = ["FusedTorchStep", "NumpyCollector", "NumpyPolicy", "NumpyRecurrentPolicy", "TorchCollector",
           "make_collector", "torch_policy_step"]
