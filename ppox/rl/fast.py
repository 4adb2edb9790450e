"""Compiled fast paths of the classic-RL trainer (opt-in with `compile=True` / `--compile`).

Two pure functions are compiled with `torch.compile(fullgraph=True)`:

* the rollout's policy step: observations -> (actions, log pi(a|s), V(s)) in one fused graph;
* the whole minibatch update: forward, loss, backward (`torch.func.grad`), global-norm gradient
  clipping and the Adam step, written against the tensors of the trainer's own
  `torch.optim.Adam` (its `exp_avg`, `exp_avg_sq` and `step` state), so checkpoints, resume and
  `optimizer.state_dict()` keep working unchanged and one can switch between the compiled and
  the eager path at any iteration.

The update keeps `ppox.core.update.ppo_update`'s semantics: the same shuffling (one `randperm`
per epoch from the same generator), the same loss (`ppo_loss`), the same clipping rule as
`clip_grad_norm_`, Adam as torch implements it, non-finite minibatches skipped (weights and Adam
state untouched, counted), `target_kl` early stopping. Unlike the eager loop it never syncs with
the host inside an epoch: statistics are summed as tensors and read once at the end.
tests/rl/test_fast.py checks that both paths give the same weights and statistics.

Where this is not applicable (grad accumulation, distributed all-reduce, an optimizer other than
plain Adam) `CompiledUpdate.supported` is False and the trainer uses the eager loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.func import grad

from ppox.core.update import LossSettings, PolicyOutput, UpdateResult, ppo_loss
from ppox.io import atomic_write_json
from ppox.rl.spaces import LOG_SQRT_2PI, ActionSpec, log_prob_entropy

STAT_KEYS = ("policy_loss", "value_loss", "entropy", "kl_penalty", "approx_kl", "old_approx_kl", "clipfrac")


def _compile(fn: Callable, enabled: bool, cpp_wrapper: bool = False) -> Callable:
    """torch.compile(fullgraph) of `fn`, or `fn` itself when not `enabled`.

    `cpp_wrapper`: inductor's C++ wrapper instead of its Python one for calling the graph's kernels.
    The Python wrapper spends ~1-2 us per intermediate buffer and per input view (~80 per update
    call); in C++ the CPU update is ~20% faster, and compiles as fast with a warm cache.
    """
    if not enabled:
        return fn
    remember_cpu_isa_probe()
    options = {"cpp_wrapper": True} if cpp_wrapper else None
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


def _isa_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ppox" / "inductor_vec_isa.json"


def remember_cpu_isa_probe() -> None:
    """Skip inductor's per-process probe of the CPU's SIMD support once it has succeeded here.

    Before its first CPU kernel, every process builds a test library per candidate ISA (AMX, AVX-512,
    AVX2, ...) and dlopens each in a child Python: 1-3 s of a ~4 s warm-cache compile on this 2-core
    machine. The answer depends only on the machine and the torch build, so the first process records
    the ISA the probe picked (in ~/.cache/ppox/inductor_vec_isa.json, keyed by host, torch version and
    CPU capability) and later processes set inductor's own switch `cpp.vec_isa_ok` (env
    TORCHINDUCTOR_VEC_ISA_OK), keeping it only if inductor then picks the same ISA. A user's own
    setting of that switch is left alone.
    """
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    if os.environ.get("TORCHINDUCTOR_VEC_ISA_OK") is not None or inductor_config.cpp.vec_isa_ok is not None:
        return
    key = "|".join((platform.node(), platform.machine(), torch.__version__, torch.backends.cpu.get_cpu_capability()))
    path = _isa_cache_path()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    if known.get(key):
        inductor_config.cpp.vec_isa_ok = True
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
        if str(cpu_vec_isa.pick_vec_isa()) == known[key]:
            return
        inductor_config.cpp.vec_isa_ok = None  # not what the probe found: probe again
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
    isa = cpu_vec_isa.pick_vec_isa()  # inductor's probe, once
    if isa:
        known[key] = str(isa)
        with contextlib.suppress(OSError):  # a read-only home only costs the probe next time
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, known)


class CompileTimer:
    """Wall seconds spent in the first call(s) of compiled functions (tracing + code generation)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable, calls: int = 1) -> Callable:
        """Time the first `calls` calls of `fn` (the ones that compile) and add them to `seconds`."""
        remaining = [calls]

        def timed(*args, **kwargs):
            if remaining[0] <= 0:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                remaining[0] -= 1
                self.seconds += time.perf_counter() - start

        return timed


# ---------------------------------------------------------------------------- rollout policy step
@torch.no_grad()
def packed_layers(agent: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(bias, weight^T)] of actor and critic packed into one MLP: layer 1 stacked, deeper layers
    block-diagonal, the last layer's columns = [actor head..., value]."""
    actor = [m for m in agent.actor_body if isinstance(m, torch.nn.Linear)] + [agent.actor_head]
    critic = [m for m in agent.critic_body if isinstance(m, torch.nn.Linear)] + [agent.critic_head]
    layers = []
    for i, (a, c) in enumerate(zip(actor, critic, strict=True)):
        w = torch.cat([a.weight, c.weight]) if i == 0 else torch.block_diag(a.weight, c.weight)
        layers.append((torch.cat([a.bias, c.bias]), w.T.contiguous()))
    return layers


class PackedPolicy:
    """The rollout's policy step with actor and critic packed into one MLP of block matrices.

    At rollout batch sizes (a few envs) a step costs per-op overhead, not FLOPs: the separate
    actor and critic MLPs are ~20 small ops through nn.Module calls. Packed, layer 1 is one
    `addmm` with the two weight matrices stacked, deeper layers one `addmm` with a block-diagonal
    matrix, the heads one `addmm`: 3 matmuls + 2 activations for both networks. The packed
    weights are rebuilt from the agent by `refresh()` (once per rollout: the update changes the
    agent in between). Sampling: an exponential race (discrete), mean + std * noise (Gaussian).
    Same distribution as `Agent.act`, a different random stream.

    Measured on 2 shared cores, batch 4, 64x64 tanh: Agent.act 150-210 us, this 60-90 us,
    torch.compile of either 90-140 us (the compiled call's own overhead dominates at this size).
    """

    def __init__(self, agent: torch.nn.Module, spec: ActionSpec) -> None:
        self.agent = agent
        self.spec = spec
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.activation = type(agent.actor_body[1])
        self.refresh()

    @staticmethod
    def supported(agent: torch.nn.Module, spec: ActionSpec) -> bool:
        return agent.critic_body is not None and spec.kind in ("discrete", "continuous")

    @torch.no_grad()
    def refresh(self) -> None:
        ag = self.agent
        self.layers = packed_layers(ag)
        self.head = ag.actor_head.out_features
        self.std = ag.log_std.exp() if ag.log_std is not None else None
        self.log_std_sum = float(ag.log_std.sum()) if ag.log_std is not None else 0.0

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = obs
        act = torch.tanh if self.activation is torch.nn.Tanh else torch.relu
        last = len(self.layers) - 1
        for i, (b, w) in enumerate(self.layers):
            h = torch.addmm(b, h, w)
            if i < last:
                h = act(h)
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


class NumpyPolicy:
    """The rollout's policy step in numpy (CPU, float32): the packed MLP of `PackedPolicy` as
    numpy matmuls, sampling from a numpy Generator.

    At rollout batch sizes a numpy op costs ~1 us against torch's several us of per-op dispatch,
    so the whole step (3 matmuls, 2 tanh, sampling, log-probs) costs ~10-15 us. Discrete and
    multi-discrete actions: Gumbel-max (argmax of logits - log E, E ~ Exp(1)); Gaussian: mean +
    std * N(0, 1). Same distributions as `Agent.act`, a different random stream: the Generator
    (`rng`) belongs to the trainer, which seeds it and saves its state in checkpoints.
    `refresh()` copies the weights after each update.
    """

    def __init__(self, agent: torch.nn.Module, spec: ActionSpec, rng: np.random.Generator) -> None:
        self.agent = agent
        self.spec = spec
        self.rng = rng
        self.tanh = isinstance(agent.actor_body[1], torch.nn.Tanh)
        self.head = agent.actor_head.out_features
        self.splits = np.cumsum(spec.nvec)[:-1].tolist() if spec.kind == "multidiscrete" else []
        self.refresh()

    @staticmethod
    def supported(agent: torch.nn.Module, spec: ActionSpec) -> bool:
        return (agent.critic_body is not None and spec.kind in ("discrete", "continuous", "multidiscrete")
                and next(agent.parameters()).device.type == "cpu")

    @torch.no_grad()
    def refresh(self) -> None:
        self.layers = [(b.numpy().astype(np.float32), w.numpy().astype(np.float32))
                       for b, w in packed_layers(self.agent)]
        log_std = self.agent.log_std
        if log_std is not None:
            self.std = log_std.exp().numpy().astype(np.float32)
            self.logp_const = np.float32(float(log_std.sum()) + LOG_SQRT_2PI * self.spec.dim)

    def _forward(self, obs: np.ndarray) -> np.ndarray:
        h = obs
        last = len(self.layers) - 1
        for i, (b, w) in enumerate(self.layers):
            h = h @ w
            h += b
            if i < last:
                if self.tanh:
                    np.tanh(h, out=h)
                else:
                    np.maximum(h, 0, out=h)
        return h

    def value(self, obs: np.ndarray) -> np.ndarray:
        """V(s) for float32 observations (batch, obs_dim)."""
        return self._forward(obs)[:, self.head].copy()

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actions, log pi(a|s), V(s)) for float32 observations (batch, obs_dim)."""
        h = self._forward(obs)
        head, value = h[:, : self.head], h[:, self.head].copy()
        if self.spec.kind == "continuous":
            noise = self.rng.standard_normal(head.shape, dtype=np.float32)
            actions = head + self.std * noise
            logp = np.square(noise).sum(-1, dtype=np.float32) * np.float32(-0.5) - self.logp_const
            return actions, logp, value
        gumbel = self.rng.standard_exponential(head.shape, dtype=np.float32)
        # float32 draws are exactly 0 about once in 2^24 (numpy warns "divide by zero in log" then):
        # the smallest normal float32 keeps log finite and still wins the argmin, as E = 0 would
        np.maximum(gumbel, _TINY32, out=gumbel)
        np.log(gumbel, out=gumbel)
        gumbel -= head  # argmax(logits - log E) = argmin(log E - logits)
        if self.spec.kind == "discrete":
            actions = gumbel.argmin(-1)
            return actions, _log_softmax_at(head, actions), value
        parts = np.split(head, self.splits, axis=1)
        actions = np.stack([g.argmin(-1) for g in np.split(gumbel, self.splits, axis=1)], axis=1)
        logp = sum(_log_softmax_at(part, actions[:, i]) for i, part in enumerate(parts))
        return actions, logp.astype(np.float32), value


_TINY32 = np.finfo(np.float32).tiny


def _log_softmax_at(logits: np.ndarray, index: np.ndarray) -> np.ndarray:
    """log softmax(logits)[row, index[row]] in float32."""
    # logaddexp.reduce: one stable call for log-sum-exp (~1.7 us at batch 4, against ~4.7 us for
    # max / subtract / exp / sum / log); fancy indexing is ~5x faster than take_along_axis
    return logits[np.arange(len(index)), index] - np.logaddexp.reduce(logits, axis=-1)


def make_policy_step(
    agent: torch.nn.Module, spec: ActionSpec, compile: bool = False, timer: CompileTimer | None = None
) -> Callable:
    """`step(obs) -> (actions, logprobs, values)`, the rollout's sampling step.

    The packed eager step where the agent allows it (separate actor/critic, discrete or Gaussian
    actions); else `Agent.act`, compiled when `compile`. Call `.refresh()` after the weights
    change (a no-op for the unpacked step, which reads the agent's parameters directly).
    """
    if PackedPolicy.supported(agent, spec):
        return PackedPolicy(agent, spec)

    def step(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return agent.act(obs)

    compiled = _compile(step, compile)
    if compile and timer is not None:
        compiled = timer.wrap(compiled)

    def run(obs: torch.Tensor):
        with torch.no_grad():
            return compiled(obs)

    run.refresh = lambda: None
    return run


def compile_torch_env(env, timer: CompileTimer | None = None) -> None:
    """Compile the physics of a ppox.envs batched torch env (one fused kernel instead of ~20-150 ops).

    Only the pure `_dynamics(state, actions)` function is compiled; seeding, resets and the
    TimeLimit stay eager, so the env's random stream and results are unchanged.
    """
    dynamics = getattr(env, "_dynamics", None)
    if dynamics is None:
        return
    compiled = torch.compile(dynamics, fullgraph=True, dynamic=False)
    env._dynamics = timer.wrap(compiled) if timer is not None else compiled


# ---------------------------------------------------------------------------- minibatch update
def functional_forward(agent: torch.nn.Module) -> Callable:
    """`agent.forward` as a function of a parameter dict, for an `Agent` of Linear/Tanh/ReLU layers.

    What `torch.func.functional_call(agent, params, (obs,))` computes, minus the module machinery
    (parameter swapping, hooks, `__call__`) that dynamo would otherwise trace through: ~20% less
    tracing time for the compiled update (tests/rl/test_fast.py checks it against the module).
    """
    def body(prefix: str, seq: torch.nn.Sequential) -> list[tuple[str, str | None]]:
        ops: list[tuple[str, str | None]] = []
        for i, layer in enumerate(seq):
            if isinstance(layer, torch.nn.Linear):
                ops.append(("linear", f"{prefix}.{i}"))
            elif isinstance(layer, torch.nn.Tanh | torch.nn.ReLU):
                ops.append((type(layer).__name__.lower(), None))
            else:
                raise TypeError(f"functional_forward: unsupported layer {layer!r}")
        return ops

    actor = body("actor_body", agent.actor_body)
    critic = None if agent.critic_body is None else body("critic_body", agent.critic_body)

    def run(ops, params, h):
        for op, name in ops:
            if op == "linear":
                h = torch.nn.functional.linear(h, params[f"{name}.weight"], params[f"{name}.bias"])
            else:
                h = torch.tanh(h) if op == "tanh" else torch.relu(h)
        return h

    def forward(params: dict[str, torch.Tensor], obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = run(actor, params, obs)
        head = torch.nn.functional.linear(hidden, params["actor_head.weight"], params["actor_head.bias"])
        if critic is not None:
            hidden = run(critic, params, obs)
        value = torch.nn.functional.linear(hidden, params["critic_head.weight"], params["critic_head.bias"])
        return head, value.squeeze(-1)

    return forward


def adam_supported(optimizer: torch.optim.Optimizer) -> bool:
    """True for a plain torch.optim.Adam (no weight decay, amsgrad, maximize, differentiable)."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    g = optimizer.param_groups[0]
    return not (g.get("weight_decay") or g.get("amsgrad") or g.get("maximize") or g.get("differentiable")
                or g.get("capturable"))


class CompiledUpdate:
    """`ppo_update` for an `Agent` and its Adam optimizer, with one compiled graph per minibatch.

    `update(batch, ...)` takes the same batch dict and returns the same `UpdateResult` as
    `ppo_update` with `forward = agent.evaluate`.
    """

    def __init__(
        self,
        agent: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        spec: ActionSpec,
        settings: LossSettings,
        max_grad_norm: float | None,
        compile: bool = True,
        timer: CompileTimer | None = None,
    ) -> None:
        self.agent = agent
        self.optimizer = optimizer
        self.spec = spec
        self.settings = settings
        self.max_grad_norm = max_grad_norm
        self.supported = adam_supported(optimizer)
        self.names = [n for n, p in agent.named_parameters() if p.requires_grad]
        self._params = dict(agent.named_parameters())
        self._sizes = [self._params[n].numel() for n in self.names]  # the parameters' slices of a flat buffer
        step = self._make_step()
        on_cpu = all(p.device.type == "cpu" for p in self._params.values())
        self._step = _compile(step, compile, cpp_wrapper=on_cpu)
        if compile and timer is not None:
            self._step = timer.wrap(self._step)
        self._compiled = compile
        self._signature: tuple | None = None  # inputs the compiled graph was built for

    # the pure function ----------------------------------------------------------------------
    def _make_step(self) -> Callable:
        agent, spec, settings, names = self.agent, self.spec, self.settings, self.names
        max_norm = self.max_grad_norm
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        eps = group["eps"]

        forward = functional_forward(agent)

        def loss_fn(params: dict[str, torch.Tensor], mb: dict[str, torch.Tensor], kl_coef: torch.Tensor):
            head, values = forward(params, mb["obs"])
            logprobs, entropy = log_prob_entropy(head, params.get("log_std"), mb["actions"], spec)
            loss, stats = ppo_loss(PolicyOutput(logprobs, entropy, values), mb, settings, kl_coef)
            return loss, (loss.detach(), stats)

        grad_fn = grad(loss_fn, has_aux=True)

        shapes, sizes = [tuple(self._params[n].shape) for n in names], self._sizes

        def step(
            flat_params: torch.Tensor,  # (num_params,) all weights, one buffer; updated in place
            flat_exp_avg: torch.Tensor,  # (num_params,) Adam's first moment
            flat_exp_avg_sq: torch.Tensor,  # (num_params,) Adam's second moment
            adam_step: torch.Tensor,  # () Adam's step count, shared: every parameter steps together
            batch: dict[str, torch.Tensor],
            idx: torch.Tensor,
            lr: torch.Tensor,
            kl_coef: torch.Tensor,
        ) -> torch.Tensor:
            mb = {k: v[idx] for k, v in batch.items()}
            params = {n: t.view(shape) for n, t, shape in
                      zip(names, flat_params.split(sizes), shapes, strict=True)}
            grads, (loss, stats) = grad_fn(params, mb, kl_coef)
            g = torch.cat([grads[n].reshape(-1) for n in names])
            total_norm = torch.linalg.vector_norm(g)
            if max_norm is not None:  # exactly clip_grad_norm_'s rule
                g = g * torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
            ok = torch.isfinite(loss) & torch.isfinite(total_norm)
            # Adam as torch.optim.Adam computes it, on the one flat buffer
            s_new = adam_step + 1
            m_new = flat_exp_avg.lerp(g, 1 - beta1)
            v_new = flat_exp_avg_sq * beta2 + (1 - beta2) * g * g
            bias1 = 1 - beta1**s_new
            bias2_sqrt = torch.sqrt(1 - beta2**s_new)
            denom = v_new.sqrt() / bias2_sqrt + eps
            p_new = flat_params - (lr / bias1) * m_new / denom
            flat_params.copy_(torch.where(ok, p_new, flat_params))
            flat_exp_avg.copy_(torch.where(ok, m_new, flat_exp_avg))
            flat_exp_avg_sq.copy_(torch.where(ok, v_new, flat_exp_avg_sq))
            adam_step.copy_(torch.where(ok, s_new, adam_step))
            finite = torch.isfinite(loss)
            # [*STAT_KEYS, finite, applied] in one tensor: one accumulation per minibatch outside the graph
            return torch.stack([torch.where(finite, stats[k], 0.0) for k in STAT_KEYS]
                               + [finite.to(loss.dtype), ok.to(loss.dtype)])

        return step

    # the loop -----------------------------------------------------------------------------------
    def _adam_state(self) -> tuple[list, list, list]:
        """The optimizer's own state tensors (created like Adam does on its first step)."""
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for n in self.names:
            p = self._params[n]
            state = self.optimizer.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return exp_avgs, exp_avg_sqs, steps

    def update(
        self,
        batch: dict[str, torch.Tensor],
        *,
        update_epochs: int,
        num_minibatches: int,
        target_kl: float | None = None,
        kl_coef: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> UpdateResult:
        batch_size = next(iter(batch.values())).shape[0]
        if batch_size % num_minibatches:
            raise ValueError(f"batch size {batch_size} is not divisible by num_minibatches {num_minibatches}")
        minibatch_size = batch_size // num_minibatches
        device = next(iter(batch.values())).device
        params = [self._params[n].detach() for n in self.names]
        exp_avgs, exp_avg_sqs, steps = self._adam_state()
        # One flat buffer each for the weights and Adam's moments for the length of this update: the
        # compiled graph then has ~12 inputs instead of ~47 (its wrapper's per-input checks cost ~0.1 ms
        # per call here) and works on whole buffers. Copied back into the Parameters and the optimizer's
        # own state at the end, so checkpoints, resume and the eager path see the usual layout.
        flat_params = torch.cat([p.reshape(-1) for p in params])
        flat_exp_avg = torch.cat([m.reshape(-1) for m in exp_avgs])
        flat_exp_avg_sq = torch.cat([v.reshape(-1) for v in exp_avg_sqs])
        adam_step = steps[0].detach().clone()
        if any(float(s) != float(adam_step) for s in steps[1:]):
            raise RuntimeError("CompiledUpdate needs every parameter at the same Adam step count")
        lr = torch.tensor(float(self.optimizer.param_groups[0]["lr"]), device=device)
        kl = torch.tensor(float(kl_coef), device=device)

        n_stats = len(STAT_KEYS)
        totals = torch.zeros(n_stats + 2, device=device)  # STAT_KEYS sums, finite count, applied count
        epochs_run = 0
        minibatches = 0
        # After the first call has compiled the graph, further calls with the same input signature skip
        # dynamo's guard evaluation (~75 us per call on a 2-core CPU): the graph has a single cache entry,
        # built for exactly these shapes/dtypes, so the guards could only pass.
        signature = (minibatch_size, update_epochs, tuple((k, v.shape, v.dtype) for k, v in batch.items()),
                     device, torch.is_grad_enabled())
        skip_guards = self._compiled and self._signature == signature
        stance = (torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if skip_guards
                  else contextlib.nullcontext())
        with stance:
            for _epoch in range(update_epochs):
                epochs_run += 1
                perm = torch.randperm(batch_size, generator=generator).to(device)
                epoch_start = totals.clone() if target_kl is not None else None
                for start in range(0, batch_size, minibatch_size):
                    totals += self._step(flat_params, flat_exp_avg, flat_exp_avg_sq, adam_step, batch,
                                         perm[start : start + minibatch_size], lr, kl)
                    minibatches += 1
                if epoch_start is not None:
                    epoch = totals - epoch_start
                    epoch_count = float(epoch[n_stats])
                    if epoch_count and float(epoch[STAT_KEYS.index("approx_kl")]) / epoch_count > target_kl:
                        break
        if self._compiled:
            self._signature = signature
        with torch.no_grad():
            for flat, tensors in ((flat_params, params), (flat_exp_avg, exp_avgs), (flat_exp_avg_sq, exp_avg_sqs)):
                parts = flat.split(self._sizes)
                torch._foreach_copy_(tensors, [t.view_as(x) for t, x in zip(parts, tensors, strict=True)])
            for s in steps:
                s.copy_(adam_step)
        sums = totals.tolist()
        count = sums[n_stats]
        n = max(count, 1.0)
        result = {k: sums[i] / n for i, k in enumerate(STAT_KEYS)}
        optimizer_steps = int(sums[n_stats + 1])
        return UpdateResult(result, epochs_run, int(count), optimizer_steps, minibatches - optimizer_steps)


__all__ = ["CompileTimer", "CompiledUpdate", "NumpyPolicy", "PackedPolicy", "adam_supported", "compile_torch_env",
           "make_policy_step", "packed_layers"]
