"""Compiled fast paths of the classic-RL trainer (`compile="auto"` decides; `--compile` / `--no-compile` force).

Compiled (ahead of time into a cached library on a CPU, ppox.rl.aot; `torch.compile(fullgraph=True)` on a GPU,
or where that fails): the whole minibatch update, i.e. forward (the policy
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
tests/rl/test_fast.py checks that both paths give the same weights and statistics. On a GPU every minibatch step
of an update is captured into one CUDA graph (`_graphed_update`, `capture_cuda_graph`; TF32 inside, PPOX_TF32=0 for
float32, PPOX_CUDA_GRAPHS=0 without graphs): one replay per update.

Where this is not applicable (grad accumulation, distributed all-reduce, an optimizer other than
plain Adam, a policy with memory anywhere but in the CPU's ahead-of-time library) `CompiledUpdate.supported` is
False and the trainer uses the eager loop. A policy with memory: the eager update runs torch's LSTM/GRU kernel
over segments cut at episode starts (data-dependent shapes); the ahead-of-time step replays each sequence step by
step through the rollout's own one-step path instead (`unrolled_memory`), one fixed-shape graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, grad

from ppox.core.objective import ObjectiveConfig
from ppox.core.update import PolicyOutput, UpdateResult, ppo_loss
from ppox.io import atomic_write_json
from ppox.rl import aot
from ppox.rl.policy import RecurrentCore, forward_inputs

STAT_KEYS = ("policy_loss", "value_loss", "entropy", "kl_penalty", "approx_kl", "old_approx_kl", "clipfrac")


def compile_fn(fn: Callable, enabled: bool, cpp_wrapper: bool = False, device: torch.device | None = None) -> Callable:
    """torch.compile(fullgraph) of `fn`, or `fn` itself when not `enabled`.

    `device`: where `fn` runs; None = the CPU. Only a CPU graph needs inductor's CPU ISA probe (C++ builds), so
    a CUDA run never pays for it. `cpp_wrapper` (CPU only): inductor's C++ wrapper instead of its Python one for
    calling the graph's kernels. The Python wrapper spends ~1-2 us per intermediate buffer and per input view
    (~80 per update call); in C++ the CPU update is ~20% faster, and compiles as fast with a warm cache.
    """
    if not enabled:
        return fn
    on_cpu = device is None or device.type == "cpu"
    if on_cpu:
        remember_cpu_isa_probe()
    options = {"cpp_wrapper": True} if cpp_wrapper and on_cpu else None
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


def cuda_graphs_enabled() -> bool:
    """CUDA graphs for the compiled update and rollout (PPOX_CUDA_GRAPHS=0 turns them off, for comparisons)."""
    return os.environ.get("PPOX_CUDA_GRAPHS", "1") != "0"


def tf32_enabled() -> bool:
    """TF32 matrix products inside ppox's CUDA graphs (PPOX_TF32=0 keeps them in full float32)."""
    return os.environ.get("PPOX_TF32", "1") != "0"


@contextlib.contextmanager
def _graph_matmul_precision():
    """TF32 for the float32 matrix products captured into a graph (cuBLAS's math mode is fixed at capture), and
    torch's setting as it was everywhere else. TF32 keeps float32's range with a 10-bit mantissa: relative errors
    ~1e-3 in a 64-wide layer's products, well under PPO's clipping range (0.2) and the noise of sampled actions."""
    before = torch.get_float32_matmul_precision()
    if tf32_enabled():
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def capture_cuda_graph(body: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """(graph, outputs): `body` (no arguments; it reads and writes fixed tensors) run once on a side stream, which
    compiles what it calls and lets the CUDA libraries make their handles, then captured into a CUDA graph. Each
    `graph.replay()` then reruns the captured kernels on the same tensors and rewrites `outputs` in place. The
    warm-up run really writes the tensors: the caller loads its inputs again before the first replay."""
    with _graph_matmul_precision():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            body()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = body()
    return graph, outputs


def fallback_note(what: str, exc: BaseException, then: str) -> None:
    """One line on stderr where a fast path gives way: what failed (the exception's type and first line) and what
    serves instead."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    print(f"note: {what} failed ({type(exc).__name__}: {first_line[:200]}); {then}", file=sys.stderr, flush=True)


class GraphedFunction:
    """`fn(*tensors) -> tensors` as one CUDA graph: a call copies its arguments into the graph's fixed inputs and
    replays it; the outputs are the graph's own tensors, which the next call rewrites (copy what must outlive it)."""

    def __init__(self, fn: Callable[..., Any], example_args: tuple[torch.Tensor, ...]) -> None:
        self.inputs = [a.detach().clone() for a in example_args]
        self.graph, self.outputs = capture_cuda_graph(lambda: fn(*self.inputs))

    def __call__(self, *args: torch.Tensor) -> Any:
        torch._foreach_copy_(self.inputs, list(args))
        self.graph.replay()
        return self.outputs


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


def _generator_state(generator: torch.Generator | None) -> torch.Tensor:
    return (generator if generator is not None else torch.default_generator).get_state()


def _set_generator_state(generator: torch.Generator | None, state: torch.Tensor) -> None:
    (generator if generator is not None else torch.default_generator).set_state(state)


class CompileTimer:
    """Wall seconds spent in the first call(s) of compiled functions (tracing + code generation)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.parts: dict[str, float] = {}  # seconds by what was compiled, where the caller says

    def add(self, seconds: float, what: str = "other") -> None:
        self.seconds += seconds
        self.parts[what] = self.parts.get(what, 0.0) + seconds

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
    TimeLimit stay eager, so the env's random stream and results are unchanged. On a CPU, without domain
    randomisation (whose parameters the physics reads as tensors that change), it is built ahead of time
    (ppox.rl.aot: the env's scalar settings are part of the library's key), with torch.compile as the fallback.
    """
    dynamics = getattr(env, "_dynamics", None)
    if dynamics is None:
        return
    if aot.enabled(torch.device(getattr(env, "device", "cpu"))) and getattr(env, "randomization", None) is None:
        label = f"torch env dynamics|{aot.settings_signature(env)}"
        env._dynamics = aot.LazyAot(dynamics, label, fallback=made_on_first_call(lambda: _compiled_dynamics(
            dynamics, timer)), prepare=remember_cpu_isa_probe, timed=timer.add if timer is not None else None)
        return
    env._dynamics = _compiled_dynamics(dynamics, timer)


def _compiled_dynamics(dynamics: Callable, timer: CompileTimer | None) -> Callable:
    compiled = torch.compile(dynamics, fullgraph=True, dynamic=False)
    return timer.wrap(compiled) if timer is not None else compiled


def made_on_first_call(make: Callable[[], Callable]) -> Callable:
    """A function that calls `make()`'s result, made at the first call (an ahead-of-time library's torch.compile
    fallback: a run that never needs it never imports the compiler)."""
    made: list[Callable] = []

    def call(*args: Any) -> Any:
        if not made:
            made.append(make())
        return made[0](*args)

    return call


# ---------------------------------------------------------------------------- compile="auto"
# Minibatch updates over a run from which compile="auto" compiles. On a CPU the compiled step is built once per
# machine and configuration (ppox.rl.aot: seconds, said when it happens) and then loads in milliseconds; it saves
# ~1 ms per minibatch update of a small MLP (benchmarks/bench_compiled_update.py, docs/performance.md). Short runs
# (and the tests) stay eager, so that trying a new setting never starts with a build longer than the run.
AUTO_COMPILE_MIN_UPDATES = 2500
# On a GPU the compiled update and rollout are CUDA graph replays, many times the eager iteration's speed at 4096
# envs x 32 steps, but after seconds of compiling: eager wins short runs there (where the two cross, measured:
# benchmarks/results/gpu_h200_CartPole-v1_4096x32_graphs.md); 1,000 updates are 8M CartPole steps at 16 per 131k.
AUTO_COMPILE_MIN_CUDA_UPDATES = 1000
# A recurrent policy's minibatch update replays whole sequences through both memory cores (~10x the eager time of
# an MLP's at the cartpole-no-velocity preset's 32 x 32 steps), so fewer of them repay its (larger) build.
AUTO_COMPILE_MIN_RECURRENT_UPDATES = 500


@dataclass(frozen=True)
class CompileDecision:
    """Whether a run compiles, and why (said once when it starts, recorded in summary.json)."""

    enabled: bool
    reason: str
    # whether to say it when the run starts: compiling (the first iterations pause), or eager for a reason other
    # than the run's length (a slow path the user should know about); a short run staying eager goes unsaid
    said: bool = True


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU (its own rule: $CXX, else g++ / c++ / clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def decide_compile(
    setting: bool | str,
    *,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    recurrent: bool,
    distributed: bool,
    minibatch_updates: int,
    ahead_of_time: bool = True,
) -> CompileDecision:
    """Resolve a config's `compile` (True, False or "auto") for a run of `minibatch_updates` minibatch updates.

    "auto" compiles only where the compiled update applies (plain Adam, one process; with a memory core, only where
    it is built ahead of time: `ahead_of_time`, ppox.rl.aot.enabled) and can be built (a CPU with a C++ compiler, or
    CUDA with triton), and only when the run is long enough to repay it.
    """
    if setting is True or setting is False:
        return CompileDecision(setting, "--compile" if setting else "--no-compile")
    least = (AUTO_COMPILE_MIN_RECURRENT_UPDATES if recurrent
             else AUTO_COMPILE_MIN_CUDA_UPDATES if device.type == "cuda" else AUTO_COMPILE_MIN_UPDATES)
    why_not = (
        f"the update of a policy with memory compiles on a CPU only (ahead of time), not on {device.type}"
        if recurrent and not ahead_of_time
        else "the optimizer is not plain Adam" if not adam_supported(optimizer)
        else "torchrun's update runs eagerly" if distributed
        else "no C++ compiler found (set CXX)" if device.type == "cpu" and cpp_compiler() is None
        else "triton is not installed" if device.type == "cuda" and importlib.util.find_spec("triton") is None
        else f"torch.compile is not used on {device.type}" if device.type not in ("cpu", "cuda")
        else f"{minibatch_updates} minibatch updates do not repay compiling (from {least})"
        if minibatch_updates < least
        else None
    )
    if why_not is not None:
        return CompileDecision(False, f"auto: eager, {why_not}", said=minibatch_updates >= least)
    return CompileDecision(True, f"auto: compiled, {minibatch_updates} minibatch updates on {device.type}")


def _compiled_marker() -> Path:
    """ppox's list of update graphs compiled here, kept next to its ahead-of-time compiled libraries (ppox.rl.aot,
    the CPU's compiled update), so that "warm" means that the compiled code is really there to be loaded."""
    return aot.cache_dir().parent / "compiled_updates.json"


def update_cache_key(policy: torch.nn.Module, objective: ObjectiveConfig, minibatch_size: int,
                     device: torch.device) -> str:
    """What an update graph is compiled for: torch's version, the device, the policy's layers, the loss, the
    minibatch size, what ppox's sources say (ppox.rl.aot's libraries are rebuilt for edited sources) and, off the
    CPU, where they lie (inductor's cache does not carry over to another checkout). A key that is off only costs a
    wrong warm/cold note, never a wrong result."""
    # a CPU's compiled update is ppox.rl.aot's library, keyed by the sources' content, so another checkout of the
    # same sources loads it; inductor's cache (torch.compile, a GPU) does not carry over to another checkout
    where = "" if device.type == "cpu" else str(Path(__file__).resolve().parent)
    text = "|".join((torch.__version__, device.type, repr(policy), repr(objective), str(minibatch_size), where,
                     aot.source_digest()))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def compiled_before(key: str) -> bool:
    """Whether an update with this key was compiled on this machine (and ppox's cache is still there)."""
    try:
        return key in json.loads(_compiled_marker().read_text())
    except (OSError, ValueError, TypeError):
        return False


def remember_compiled(key: str) -> None:
    """Record a compiled update (best effort: a read-only cache only costs a "first compile" note next time)."""
    path = _compiled_marker()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = []
    known = known if isinstance(known, list) else []
    if key not in known:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, [*known[-999:], key])


# ---------------------------------------------------------------------------- pure optimizer maths
def adam_step(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    grad: torch.Tensor,
    lr: torch.Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of torch.optim.Adam (no weight decay, amsgrad or maximize) as a pure function.

    Any shape (`step` broadcasts against the others, e.g. () or one count per stacked agent); nothing is
    modified in place, so it composes with torch.func.vmap and torch.compile. Returns the new
    (param, exp_avg, exp_avg_sq, step), with torch's own ordering of the operations.
    """
    step = step + 1
    exp_avg = exp_avg.lerp(grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    bias1 = 1 - beta1**step
    bias2_sqrt = torch.sqrt(1 - beta2**step)
    denom = exp_avg_sq.sqrt() / bias2_sqrt + eps
    return param - (lr / bias1) * exp_avg / denom, exp_avg, exp_avg_sq, step


def clip_grad_global_norm(grad: torch.Tensor, max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """clip_grad_norm_'s rule on one flat gradient: scale by min(1, max_norm / (norm + 1e-6)).

    Pure (vmappable). `max_norm` None returns the gradient as it is. Returns (grad, total_norm before clipping).
    """
    total_norm = torch.linalg.vector_norm(grad)
    if max_norm is not None:
        grad = grad * torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    return grad, total_norm


# ---------------------------------------------------------------------------- minibatch update
def adam_supported(optimizer: torch.optim.Optimizer) -> bool:
    """True for a plain torch.optim.Adam (no weight decay, amsgrad, maximize, differentiable)."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    g = optimizer.param_groups[0]
    return not (g.get("weight_decay") or g.get("amsgrad") or g.get("maximize") or g.get("differentiable")
                or g.get("capturable"))


@contextlib.contextmanager
def unrolled_memory(policy: torch.nn.Module):
    """Within: the policy's memory cores replay sequences step by step (RecurrentCore.unrolled), for tracing."""
    cores = [m for m in policy.modules() if isinstance(m, RecurrentCore)]
    for core in cores:
        core.unrolled = True
    try:
        yield
    finally:
        for core in cores:
            core.unrolled = False


def minibatch_step(policy: torch.nn.Module, objective: ObjectiveConfig, max_grad_norm: float | None, beta1: float,
                   beta2: float, eps: float) -> Callable:
    """One PPO minibatch step as a pure function (compilable, vmappable over agents: ppox.rl.population):

    `step(flat_params, exp_avg, exp_avg_sq, adam_step_count, batch, idx, lr, kl_coef, active=None)` ->
    `(flat_params, exp_avg, exp_avg_sq, adam_step_count, row)`: the policy module itself through functional_call
    on minibatch `batch[idx]`, `ppo_loss`, clip_grad_norm_'s rule, torch.optim.Adam's step; a non-finite loss or
    gradient norm (or `active` False) leaves weights and Adam's state as they were. Shapes: flat_params, exp_avg,
    exp_avg_sq (num_params,); adam_step_count, lr, kl_coef, active (); row (len(STAT_KEYS) + 2,) = the minibatch's
    statistics (0 where not counted), counted (finite loss, active), applied.
    """
    params0 = dict(policy.named_parameters())
    names = [n for n, p in params0.items() if p.requires_grad]
    shapes, sizes = [tuple(params0[n].shape) for n in names], [params0[n].numel() for n in names]

    def loss_fn(params: dict[str, torch.Tensor], mb: dict[str, torch.Tensor], kl_coef: torch.Tensor):
        # the policy module itself, run on `params` (the eager update's forward, not a mirror of it)
        logprobs, entropy, values = functional_call(policy, params, (mb["obs"], mb["actions"]), forward_inputs(mb))
        loss, stats = ppo_loss(PolicyOutput(logprobs, entropy, values), mb, objective, kl_coef)
        return loss, (loss.detach(), stats)

    grad_fn = grad(loss_fn, has_aux=True)

    def step(flat_params: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, adam_step_count: torch.Tensor,
             batch: dict[str, torch.Tensor], idx: torch.Tensor, lr: torch.Tensor, kl_coef: torch.Tensor,
             active: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        mb = {k: v[idx] for k, v in batch.items()}
        params = {n: t.view(shape) for n, t, shape in zip(names, flat_params.split(sizes), shapes, strict=True)}
        grads, (loss, stats) = grad_fn(params, mb, kl_coef)
        g, total_norm = clip_grad_global_norm(torch.cat([grads[n].reshape(-1) for n in names]), max_grad_norm)
        finite = torch.isfinite(loss) if active is None else torch.isfinite(loss) & active
        ok = finite & torch.isfinite(total_norm)
        state = (flat_params, exp_avg, exp_avg_sq, adam_step_count)
        new = adam_step(*state, g, lr, beta1, beta2, eps)
        kept = tuple(torch.where(ok, a, b) for a, b in zip(new, state, strict=True))
        # [*STAT_KEYS, counted, applied] in one tensor: one accumulation per minibatch outside the graph
        row = torch.stack([torch.where(finite, stats[k], 0.0) for k in STAT_KEYS]
                          + [finite.to(loss.dtype), ok.to(loss.dtype)])
        return (*kept, row)

    return step


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
        cache_key: str | None = None,
    ) -> None:
        self.policy = policy
        self.cache_key = cache_key  # update_cache_key(...): recorded once the graph has compiled
        self.optimizer = optimizer
        self.objective = objective
        self.max_grad_norm = max_grad_norm
        self.names = [n for n, p in policy.named_parameters() if p.requires_grad]
        self._params = dict(policy.named_parameters())
        self._sizes = [self._params[n].numel() for n in self.names]  # the parameters' slices of a flat buffer
        self._device = next(iter(self._params.values())).device
        self._on_cpu = all(p.device.type == "cpu" for p in self._params.values())
        self._timer = timer
        self._compiled = compile
        self._chunks: dict[tuple, Callable] = {}  # (epochs, minibatches, masked) -> the (compiled) chunk function
        self._signature: tuple | None = None  # inputs the compiled graph was built for
        # On a CPU the one-minibatch step is compiled ahead of time into a cached library (ppox.rl.aot): a warm run
        # then loads it in milliseconds instead of tracing again, and each call is cheaper. False: torch.compile.
        self.ahead_of_time = aot.enabled(torch.device("cpu") if self._on_cpu else self._device, policy)
        self._aot_steps: dict[tuple, aot.AotFunction] = {}  # input signature -> the compiled library's entry point
        self._aot_failed = False
        # A recurrent policy's eager update cuts its sequences at episode starts (one kernel run over padded
        # segments: data-dependent shapes, ppox.rl.policy.RecurrentCore); its compiled step replays each sequence
        # step by step instead (`unrolled_memory`), which only the ahead-of-time build traces (make_fx runs the
        # Python loop once). Elsewhere (a GPU, PPOX_AOT=0) a recurrent update runs eagerly (said when a run starts).
        self.recurrent = bool(getattr(policy, "recurrent", False))
        self.supported = adam_supported(optimizer) and (not self.recurrent or self.ahead_of_time)
        if compile and self.recurrent and not self.ahead_of_time:
            print("note: --compile: the update of a policy with memory compiles on a CPU only; it runs eagerly here",
                  file=sys.stderr, flush=True)
        # How many minibatch steps one compiled call runs: "minibatch" (1), "epoch" (num_minibatches) or "iteration"
        # (all, target_kl's stop masked inside the graph). Unrolled steps cost their trace and compile time on every
        # run (the warm cache saves only code generation): with the update ~1/3 of an iteration on a CPU, the
        # fewer calls of "epoch"/"iteration" did not repay their longer compile over CleanRL-length runs
        # (docs/performance.md), so one call per minibatch is the default.
        self.unroll = "minibatch"
        # On a GPU all minibatch steps of an update are one CUDA graph replay (`_graphed_update`): the compiled step
        # captured epochs x minibatches times, on fixed buffers.
        self._graph: dict[str, Any] | None = None
        self._graph_failed = False
        self._graph_generator: torch.Generator | None = None

    # the pure function ----------------------------------------------------------------------
    def _make_step(self) -> Callable:
        """minibatch_step (below) for this policy and optimizer, writing its result into the flat buffers in place."""
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        pure = minibatch_step(self.policy, self.objective, self.max_grad_norm, beta1, beta2, group["eps"])

        def step(flat_params: torch.Tensor, flat_exp_avg: torch.Tensor, flat_exp_avg_sq: torch.Tensor,
                 adam_step_count: torch.Tensor, batch: dict[str, torch.Tensor], idx: torch.Tensor, lr: torch.Tensor,
                 kl_coef: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
            state = (flat_params, flat_exp_avg, flat_exp_avg_sq, adam_step_count)
            *new, row = pure(*state, batch, idx, lr, kl_coef, active)
            for buffer, value in zip(state, new, strict=True):
                buffer.copy_(value)
            return row

        return step

    def _make_chunk(self, epochs: int, minibatches: int, masked: bool, step: Callable | None = None,
                    idx_buffer: torch.Tensor | None = None) -> Callable:
        """`epochs` x `minibatches` minibatch steps unrolled into one function (one compiled graph).

        `masked` (several epochs per call with target_kl): target_kl's early stop without leaving the graph.
        Every epoch is computed, but after the first epoch whose mean approx_kl exceeds target_kl, the
        steps leave the weights, Adam's state and the statistics untouched. `step`: the minibatch step to call
        (default `_make_step()`); `idx_buffer`: each minibatch's rows are copied into it and the step reads them
        there (a compiled step whose inputs never move, inside a CUDA graph).
        """
        step = step or self._make_step()
        n_stats = len(STAT_KEYS)
        kl_index = STAT_KEYS.index("approx_kl")

        def chunk(
            flat_params: torch.Tensor,  # (num_params,) updated in place, like Adam's state below
            flat_exp_avg: torch.Tensor,
            flat_exp_avg_sq: torch.Tensor,
            adam_step_count: torch.Tensor,
            batch: dict[str, torch.Tensor],
            idx: torch.Tensor,  # (epochs, minibatches, minibatch_size) rows of `batch`
            lr: torch.Tensor,
            kl_coef: torch.Tensor,
            totals: torch.Tensor,  # (len(STAT_KEYS) + 2,) running sums: STAT_KEYS, finite count, applied count
            target_kl: torch.Tensor,  # () float64; read only when masked
        ) -> tuple[torch.Tensor, torch.Tensor]:
            stopped = torch.zeros((), dtype=torch.bool, device=totals.device)
            epochs_run = torch.zeros((), dtype=torch.int64, device=totals.device)
            for e in range(epochs):
                epoch_start = totals
                for j in range(minibatches):
                    rows = idx[e, j] if idx_buffer is None else idx_buffer.copy_(idx[e, j])
                    stats = step(flat_params, flat_exp_avg, flat_exp_avg_sq, adam_step_count, batch, rows, lr,
                                 kl_coef, ~stopped if masked else None)
                    totals = totals + (torch.where(stopped, 0.0, stats) if masked else stats)
                if masked:
                    epochs_run = epochs_run + (~stopped).long()
                    epoch = totals - epoch_start
                    # the eager loop's test, in float64 as Python computes it there
                    exceeded = (epoch[n_stats] > 0) & (epoch[kl_index].double() / epoch[n_stats].double() > target_kl)
                    stopped = stopped | exceeded
            return totals, epochs_run if masked else epochs_run + epochs

        return chunk

    def _chunk(self, epochs: int, minibatches: int, masked: bool) -> Callable:
        key = (epochs, minibatches, masked)
        if key not in self._chunks:
            fn = compile_fn(self._make_chunk(*key), self._compiled, cpp_wrapper=self._on_cpu,
                            device=torch.device("cpu") if self._on_cpu else self._device)
            if self._compiled and self._timer is not None:
                fn = self._timer.wrap(fn)
            self._chunks[key] = fn
        return self._chunks[key]

    def _aot_applies(self) -> bool:
        return self._compiled and self.ahead_of_time and self.unroll == "minibatch" and not self._aot_failed

    def _aot_step_fn(self, keys: list[str]) -> tuple[Callable, str]:
        """(the pure minibatch step over flat inputs, its library's label) for batches with `keys` (sorted)."""
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        pure = minibatch_step(self.policy, self.objective, self.max_grad_norm, beta1, beta2, group["eps"])

        def step(flat_params: torch.Tensor, flat_exp_avg: torch.Tensor, flat_exp_avg_sq: torch.Tensor,
                 adam_step_count: torch.Tensor, idx: torch.Tensor, lr: torch.Tensor, kl_coef: torch.Tensor,
                 *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with unrolled_memory(self.policy):  # while tracing: sequences replayed step by step
                return pure(flat_params, flat_exp_avg, flat_exp_avg_sq, adam_step_count,
                            dict(zip(keys, values, strict=True)), idx, lr, kl_coef)

        label = "|".join(("ppo minibatch step", aot.module_signature(self.policy), repr(self.objective),
                          repr(self.max_grad_norm), repr((beta1, beta2, group["eps"])), repr(keys)))
        return step, label

    @staticmethod
    def _aot_example(flat_params: torch.Tensor, flat_exp_avg: torch.Tensor, flat_exp_avg_sq: torch.Tensor,
                     step_count: torch.Tensor, minibatch_size: int, lr: torch.Tensor, kl: torch.Tensor,
                     values: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ahead-of-time step's inputs in its order (the minibatch's rows: zeros of their layout)."""
        idx = torch.zeros(minibatch_size, dtype=torch.int64, device=flat_params.device)
        return [flat_params, flat_exp_avg, flat_exp_avg_sq, step_count, idx, lr, kl, *values]

    def _aot_step(self, signature: tuple, keys: list[str], example_args: list[torch.Tensor]) -> aot.AotFunction | None:
        """The ahead-of-time compiled minibatch step for inputs like `example_args` (loaded, or built and cached on
        first use: ppox.rl.aot), or None where it does not apply or could not be built (then torch.compile)."""
        if not self._aot_applies():
            return None
        if signature in self._aot_steps:
            return self._aot_steps[signature]
        step, label = self._aot_step_fn(keys)
        timed = self._timer.add if self._timer is not None else None
        compiled = aot.load_or_build_or_none(step, label, example_args, remember_cpu_isa_probe, timed)
        if compiled is None:
            self._aot_failed = True
        else:
            self._aot_steps[signature] = compiled
        return compiled

    def prebuild(self, batch: dict[str, torch.Tensor], *, update_epochs: int, num_minibatches: int) -> bool:
        """Start building the ahead-of-time step that `update` will need for batches laid out like `batch` (values
        unused) in a child process, where it is not cached yet (ppox.rl.aot.start_build): on a machine's first run
        of a configuration the trainer then builds its compiled rollout while the child builds this, and the first
        `update` waits for the child instead of building. True when a build was started; never raises (the first
        `update` builds as usual)."""
        if not self._aot_applies() or self._plan(update_epochs, num_minibatches) != (1, 1):
            return False
        batch_size = next(iter(batch.values())).shape[0]
        if batch_size % num_minibatches or next(iter(batch.values())).device.type != "cpu":
            return False
        params = [self._params[n].detach() for n in self.names]
        states = [self.optimizer.state.get(self._params[n], {}) for n in self.names]
        # the layouts `update` will pass: flat float buffers, Adam's step count as Adam creates it (or as it is)
        step_count = states[0]["step"].detach().clone() if "step" in states[0] else torch.tensor(0.0)
        flat_params = torch.cat([p.reshape(-1) for p in params])
        scalar = torch.tensor(0.0)  # lr and the KL coefficient, as `update` makes them
        keys = sorted(batch)
        example = self._aot_example(flat_params, torch.zeros_like(flat_params), torch.zeros_like(flat_params),
                                    step_count, batch_size // num_minibatches, scalar, scalar.clone(),
                                    [batch[k].contiguous() for k in keys])
        step, label = self._aot_step_fn(keys)
        return aot.try_start_build(step, label, example, remember_cpu_isa_probe,
                                   self._timer.add if self._timer is not None else None)

    def _plan(self, update_epochs: int, num_minibatches: int) -> tuple[int, int]:
        """(epochs, minibatches) per compiled call, by `self.unroll`."""
        if self.unroll == "iteration":
            return update_epochs, num_minibatches
        if self.unroll == "epoch":
            return 1, num_minibatches
        return 1, 1

    # the CUDA graph ----------------------------------------------------------------------------
    def _capture_update(self, key: tuple, batch: dict[str, torch.Tensor], update_epochs: int, num_minibatches: int,
                        masked: bool) -> dict[str, Any]:
        """The fixed buffers of a graphed update and its CUDA graph (the compiled step captured for every
        minibatch of every epoch, `_make_chunk`'s loop), for batches shaped like `batch`."""
        device, params = self._device, [self._params[n].detach() for n in self.names]
        batch_size = next(iter(batch.values())).shape[0]
        minibatch_size = batch_size // num_minibatches
        total = sum(self._sizes)

        def flat() -> tuple[torch.Tensor, list[torch.Tensor]]:
            buffer = torch.zeros(total, device=device)
            return buffer, [v.view_as(p) for v, p in zip(buffer.split(self._sizes), params, strict=True)]

        g: dict[str, Any] = {"key": key}
        (g["params"], g["param_views"]), (g["exp_avg"], g["exp_avg_views"]), (g["exp_avg_sq"], g["exp_avg_sq_views"]) \
            = flat(), flat(), flat()
        g["step"] = torch.zeros((), device=device)
        g["batch"] = {k: torch.zeros_like(v, memory_format=torch.contiguous_format) for k, v in batch.items()}
        for k, v in batch.items():  # real data for the warm-up run (zeros would give a degenerate loss)
            g["batch"][k].copy_(v)
        g["idx"] = torch.arange(batch_size, device=device).repeat(update_epochs).view(
            update_epochs, num_minibatches, minibatch_size)
        g["idx_mb"] = torch.zeros(minibatch_size, dtype=torch.int64, device=device)
        g["lr"], g["kl"] = torch.zeros((), device=device), torch.zeros((), device=device)
        g["target"] = torch.zeros((), dtype=torch.float64, device=device)
        step = compile_fn(self._make_step(), True, device=device)
        chunk = self._make_chunk(update_epochs, num_minibatches, masked, step=step, idx_buffer=g["idx_mb"])
        n_stats = len(STAT_KEYS)

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            totals = torch.zeros(n_stats + 2, device=device)
            return chunk(g["params"], g["exp_avg"], g["exp_avg_sq"], g["step"], g["batch"], g["idx"], g["lr"], g["kl"],
                         totals, g["target"])

        start = time.perf_counter()
        g["graph"], g["out"] = capture_cuda_graph(body)
        if self._timer is not None:
            self._timer.add(time.perf_counter() - start, "update graph (compile + capture)")
        return g

    def _graphs_apply(self, device: torch.device) -> bool:
        """Whether this update is one CUDA graph replay: compiled, on a GPU, no memory core, graphs on and working."""
        return (self._compiled and device.type == "cuda" and not self.recurrent and not self._graph_failed
                and cuda_graphs_enabled())

    def _graphed_update(self, batch: dict[str, torch.Tensor], update_epochs: int, num_minibatches: int,
                        target_kl: float | None, kl_coef: float,
                        generator: torch.Generator | None) -> UpdateResult | None:
        """`update` as one CUDA graph replay; None where the capture failed (said once; the caller's path serves).

        The minibatches are drawn on the GPU (a CUDA generator seeded from `generator` at each update: the run's
        shuffling stays one seeded stream, saved in checkpoints); target_kl's early stop is masked in the graph."""
        batch_size = next(iter(batch.values())).shape[0]
        masked = target_kl is not None and update_epochs > 1
        key = (update_epochs, num_minibatches, masked, tuple((k, v.shape, v.dtype) for k, v in sorted(batch.items())))
        if self._graph is None or self._graph["key"] != key:
            self._graph = None
            try:
                self._graph = self._capture_update(key, batch, update_epochs, num_minibatches, masked)
            except Exception as exc:  # any compile or capture failure: the update runs without the graph, said once
                self._graph_failed = True
                fallback_note("the CUDA-graph update", exc, "the compiled update runs without it")
                return None
        g, device = self._graph, self._device
        params = [self._params[n].detach() for n in self.names]
        exp_avgs, exp_avg_sqs, steps = self._adam_state()
        torch._foreach_copy_(g["param_views"], params)
        torch._foreach_copy_(g["exp_avg_views"], exp_avgs)
        torch._foreach_copy_(g["exp_avg_sq_views"], exp_avg_sqs)
        g["step"].fill_(float(steps[0]))
        for k, v in batch.items():
            g["batch"][k].copy_(v)
        if self._graph_generator is None:
            self._graph_generator = torch.Generator(device=device)
        self._graph_generator.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
        keys = torch.rand((update_epochs, batch_size), device=device, generator=self._graph_generator)
        g["idx"].copy_(keys.argsort(dim=1).view_as(g["idx"]))  # one permutation per epoch
        g["lr"].fill_(float(self.optimizer.param_groups[0]["lr"]))
        g["kl"].fill_(float(kl_coef))
        g["target"].fill_(float(target_kl) if target_kl is not None else 0.0)
        g["graph"].replay()
        torch._foreach_copy_(params, g["param_views"])
        torch._foreach_copy_(exp_avgs, g["exp_avg_views"])
        torch._foreach_copy_(exp_avg_sqs, g["exp_avg_sq_views"])
        totals, ran = g["out"]
        sums, epochs_run = totals.tolist(), int(ran)  # the update's one read
        step_count = float(g["step"])
        for s in steps:
            s.fill_(step_count)
        self._compiled_for(key)
        return _result(sums, epochs_run, epochs_run * num_minibatches)

    # the loop -----------------------------------------------------------------------------------
    def _adam_state(self) -> tuple[list, list, list]:
        """The optimizer's own state tensors (created like Adam does on its first step); every parameter must be at
        the same step count (one count for the flat buffers)."""
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
        if any(float(s) != float(steps[0]) for s in steps[1:]):
            raise RuntimeError("CompiledUpdate needs every parameter at the same Adam step count")
        return exp_avgs, exp_avg_sqs, steps

    def _compiled_for(self, signature: tuple) -> None:
        """After a compiled update: remember it on this machine the first time (the warm/cold note), and the inputs
        it was compiled for."""
        if self._signature is None and self.cache_key is not None:
            remember_compiled(self.cache_key)
        self._signature = signature

    def update(
        self,
        batch: dict[str, torch.Tensor],
        *,
        update_epochs: int,
        num_minibatches: int,
        target_kl: float | None = None,
        kl_coef: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> UpdateResult | None:
        """`ppo_update`'s result; None (nothing changed, `supported` now False) where a recurrent policy's step could
        not be built ahead of time, for the caller's eager loop to run instead."""
        batch_size = next(iter(batch.values())).shape[0]
        if batch_size % num_minibatches:
            raise ValueError(f"batch size {batch_size} is not divisible by num_minibatches {num_minibatches}")
        minibatch_size = batch_size // num_minibatches
        device = next(iter(batch.values())).device
        if self._graphs_apply(device):
            result = self._graphed_update(batch, update_epochs, num_minibatches, target_kl, kl_coef, generator)
            if result is not None:
                return result
        params = [self._params[n].detach() for n in self.names]
        exp_avgs, exp_avg_sqs, steps = self._adam_state()
        # One flat buffer each for the weights and Adam's moments for the length of this update: the
        # compiled graph then has ~12 inputs instead of ~47 (its wrapper's per-input checks cost ~0.1 ms
        # per call here) and works on whole buffers. Copied back into the Parameters and the optimizer's
        # own state at the end, so checkpoints, resume and the eager path see the usual layout.
        flat_params = torch.cat([p.reshape(-1) for p in params])
        flat_exp_avg = torch.cat([m.reshape(-1) for m in exp_avgs])
        flat_exp_avg_sq = torch.cat([v.reshape(-1) for v in exp_avg_sqs])
        # on the device: a CPU scalar in a GPU graph would make inductor build CPU kernels (C++) for it
        step_count = steps[0].detach().to(device, copy=True)
        lr = torch.tensor(float(self.optimizer.param_groups[0]["lr"]), device=device)
        kl = torch.tensor(float(kl_coef), device=device)

        n_stats = len(STAT_KEYS)
        totals = torch.zeros(n_stats + 2, device=device)  # STAT_KEYS sums, finite count, applied count
        epochs_per_call, minibatches_per_call = self._plan(update_epochs, num_minibatches)
        masked = epochs_per_call > 1 and target_kl is not None
        target = torch.tensor(float(target_kl) if target_kl is not None else 0.0, dtype=torch.float64, device=device)
        # After the first call has compiled the graph, further calls with the same input signature skip
        # dynamo's guard evaluation (~75 us per call on a 2-core CPU): the graph has a single cache entry,
        # built for exactly these shapes/dtypes, so the guards could only pass.
        signature = (minibatch_size, update_epochs, num_minibatches, masked,
                     tuple((k, v.shape, v.dtype) for k, v in batch.items()), device, torch.is_grad_enabled())
        keys = sorted(batch)
        values = [batch[k].contiguous() for k in keys]
        aot_step = None
        if epochs_per_call == 1 and minibatches_per_call == 1:
            example = self._aot_example(flat_params, flat_exp_avg, flat_exp_avg_sq, step_count, minibatch_size, lr,
                                        kl, values)
            aot_step = self._aot_step(signature, keys, example)
            if aot_step is not None:
                aot_step.check(example)
        if aot_step is None and self.recurrent:  # the build failed (noted): the caller's eager loop serves from now on
            self.supported = False
            return None
        chunk = self._chunk(epochs_per_call, minibatches_per_call, masked) if aot_step is None else None
        skip_guards = self._compiled and self._signature == signature and aot_step is None
        stance = (torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if skip_guards
                  else contextlib.nullcontext())
        epochs_run = 0
        with stance:
            if epochs_per_call > 1:
                # every epoch's permutation up front (the generator's stream is today's); where target_kl stops
                # early, the generator is set back to where the eager loop would have left it
                states = [] if masked else None
                perms = []
                for _ in range(update_epochs):
                    if states is not None:
                        states.append(_generator_state(generator))
                    perms.append(torch.randperm(batch_size, generator=generator))
                idx = torch.stack(perms).to(device).view(update_epochs, num_minibatches, minibatch_size)
                totals, ran = chunk(flat_params, flat_exp_avg, flat_exp_avg_sq, step_count, batch, idx, lr, kl,
                                    totals, target)
                epochs_run = int(ran)
                if states is not None and epochs_run < update_epochs:
                    _set_generator_state(generator, states[epochs_run])
            else:
                for _epoch in range(update_epochs):
                    epochs_run += 1
                    perm = torch.randperm(batch_size, generator=generator).to(device)
                    idx = perm.view(num_minibatches // minibatches_per_call, 1, minibatches_per_call, minibatch_size)
                    epoch_start = totals.clone() if target_kl is not None else None
                    for part in idx:
                        if aot_step is not None:
                            # checked once per update (aot_step.check above): the state tensors are the library's
                            # own outputs and every `part` a contiguous slice of one permutation, so layouts hold
                            flat_params, flat_exp_avg, flat_exp_avg_sq, step_count, row = aot_step.call_unchecked(
                                [flat_params, flat_exp_avg, flat_exp_avg_sq, step_count, part[0, 0], lr, kl, *values])
                            totals = totals + row
                            continue
                        totals, _ = chunk(flat_params, flat_exp_avg, flat_exp_avg_sq, step_count, batch, part, lr, kl,
                                          totals, target)
                    if epoch_start is not None:
                        epoch = totals - epoch_start
                        epoch_count = float(epoch[n_stats])
                        if epoch_count and float(epoch[STAT_KEYS.index("approx_kl")]) / epoch_count > target_kl:
                            break
        minibatches = epochs_run * num_minibatches
        if self._compiled:
            self._compiled_for(signature)
        with torch.no_grad():
            for flat, tensors in ((flat_params, params), (flat_exp_avg, exp_avgs), (flat_exp_avg_sq, exp_avg_sqs)):
                parts = flat.split(self._sizes)
                torch._foreach_copy_(tensors, [t.view_as(x) for t, x in zip(parts, tensors, strict=True)])
            for s in steps:
                s.copy_(step_count)
        return _result(totals.tolist(), epochs_run, minibatches)


def _result(sums: list[float], epochs_run: int, minibatches: int) -> UpdateResult:
    """The UpdateResult of summed statistics: [*STAT_KEYS, finite count, applied count]."""
    n_stats = len(STAT_KEYS)
    count = sums[n_stats]
    n = max(count, 1.0)
    result = {k: sums[i] / n for i, k in enumerate(STAT_KEYS)}
    optimizer_steps = int(sums[n_stats + 1])
    return UpdateResult(result, epochs_run, int(count), optimizer_steps, minibatches - optimizer_steps)


__all__ = [
    "AUTO_COMPILE_MIN_CUDA_UPDATES",
    "AUTO_COMPILE_MIN_RECURRENT_UPDATES",
    "AUTO_COMPILE_MIN_UPDATES",
    "CompileDecision",
    "CompileTimer",
    "CompiledUpdate",
    "GraphedFunction",
    "adam_step",
    "adam_supported",
    "capture_cuda_graph",
    "clip_grad_global_norm",
    "compile_fn",
    "compile_torch_env",
    "compiled_before",
    "cuda_graphs_enabled",
    "decide_compile",
    "fallback_note",
    "made_on_first_call",
    "minibatch_step",
    "remember_compiled",
    "tf32_enabled",
    "unrolled_memory",
    "update_cache_key",
]
