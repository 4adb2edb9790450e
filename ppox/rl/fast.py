"""Compiled fast paths of the classic-RL trainer (opt-in with `compile=True` / `--compile`).

Compiled with `torch.compile(fullgraph=True)`: the whole minibatch update, i.e. forward (the policy
module itself through `torch.func.functional_call`), loss, backward (`torch.func.grad`), global-norm
gradient clipping and the Adam step, written against the tensors of the trainer's own
`torch.optim.Adam` (its `exp_avg`, `exp_avg_sq` and `step` state), so checkpoints, resume and
`optimizer.state_dict()` keep working unchanged and one can switch between the compiled and the
eager path at any iteration. The torch rollout's policy step, where it is not the fused step
(ppox.rl.rollout), is compiled with `compile_fn` too; `compile_torch_env` compiles batched torch envs.

The update keeps `ppox.core.update.ppo_update`'s semantics: the same shuffling (one `randperm`
per epoch from the same generator), the same loss (`ppo_loss`), the same clipping rule as
`clip_grad_norm_`, Adam as torch implements it, non-finite minibatches skipped (weights and Adam
state untouched, counted), `target_kl` early stopping. Unlike the eager loop it never syncs with
the host inside an epoch: statistics are summed as tensors and read once at the end.
tests/rl/test_fast.py checks that both paths give the same weights and statistics.

Where this is not applicable (grad accumulation, distributed all-reduce, an optimizer other than
plain Adam, a policy with memory) `CompiledUpdate.supported` is False and the trainer uses the eager loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, grad

from ppox.core.objective import ObjectiveConfig
from ppox.core.update import PolicyOutput, UpdateResult, ppo_loss
from ppox.io import atomic_write_json
from ppox.rl.policy import forward_inputs

STAT_KEYS = ("policy_loss", "value_loss", "entropy", "kl_penalty", "approx_kl", "old_approx_kl", "clipfrac")


def compile_fn(fn: Callable, enabled: bool, cpp_wrapper: bool = False) -> Callable:
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
def adam_supported(optimizer: torch.optim.Optimizer) -> bool:
    """True for a plain torch.optim.Adam (no weight decay, amsgrad, maximize, differentiable)."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    g = optimizer.param_groups[0]
    return not (g.get("weight_decay") or g.get("amsgrad") or g.get("maximize") or g.get("differentiable")
                or g.get("capturable"))


class CompiledUpdate:
    """`ppo_update` for a policy (ppox.rl.policy.Policy) and its Adam optimizer, one compiled graph per minibatch.

    `update(batch, ...)` takes the same batch dict and returns the same `UpdateResult` as
    `ppo_update` with the policy's forward.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: ObjectiveConfig,
        max_grad_norm: float | None,
        compile: bool = True,
        timer: CompileTimer | None = None,
    ) -> None:
        self.policy = policy
        self.optimizer = optimizer
        self.objective = objective
        self.max_grad_norm = max_grad_norm
        # a recurrent policy's update replays sequences step by step: unrolled into one graph it would compile
        # for minutes, so it runs the eager loop (said once when the run starts)
        self.supported = adam_supported(optimizer) and not getattr(policy, "recurrent", False)
        if compile and getattr(policy, "recurrent", False):
            print("note: --compile: the update of a policy with memory runs eagerly", file=sys.stderr, flush=True)
        self.names = [n for n, p in policy.named_parameters() if p.requires_grad]
        self._params = dict(policy.named_parameters())
        self._sizes = [self._params[n].numel() for n in self.names]  # the parameters' slices of a flat buffer
        step = self._make_step()
        on_cpu = all(p.device.type == "cpu" for p in self._params.values())
        self._step = compile_fn(step, compile, cpp_wrapper=on_cpu)
        if compile and timer is not None:
            self._step = timer.wrap(self._step)
        self._compiled = compile
        self._signature: tuple | None = None  # inputs the compiled graph was built for

    # the pure function ----------------------------------------------------------------------
    def _make_step(self) -> Callable:
        policy, objective, names = self.policy, self.objective, self.names
        max_norm = self.max_grad_norm
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        eps = group["eps"]

        def loss_fn(params: dict[str, torch.Tensor], mb: dict[str, torch.Tensor], kl_coef: torch.Tensor):
            # the policy module itself, run on `params` (the eager update's forward, not a mirror of it)
            logprobs, entropy, values = functional_call(policy, params, (mb["obs"], mb["actions"]), forward_inputs(mb))
            loss, stats = ppo_loss(PolicyOutput(logprobs, entropy, values), mb, objective, kl_coef)
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


__all__ = ["CompileTimer", "CompiledUpdate", "adam_supported", "compile_fn", "compile_torch_env"]
