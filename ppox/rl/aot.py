"""A pure tensor function compiled ahead of time (AOTInductor) into a shared library, built once per machine.

torch.compile traces its function again in every new process: importing dynamo and inductor, tracing, and
loading the cached kernels cost seconds on a small CPU even when inductor's cache is warm, which is a large
part of a short run. The PPO minibatch step (ppox.rl.fast.minibatch_step) is a pure function of tensors of
fixed shapes, so it can be traced once (make_fx: forward, torch.func.grad's backward, clipping and Adam as one
graph of aten ops), exported, and compiled by AOTInductor into a C++ library kept in ppox's cache directory
(~/.cache/ppox/aot, or $PPOX_CACHE_DIR/aot). Every later run with the same key loads that library directly,
without importing the compiler at all, and each call skips torch.compile's Python guards and wrappers.

The key covers everything the compiled code depends on: torch's version, the CPU (architecture and the SIMD
level torch detects), the content of ppox's source files, what the caller says the function is (`label`),
and the shape, stride and dtype of every input. The library reads its inputs as exactly those layouts without
checking them, so `AotFunction` checks a call's inputs against them and refuses anything else (a loop whose
inputs keep their layouts checks once, then uses `call_unchecked`). A library is written atomically (temporary
file, then rename); one that cannot be loaded is rebuilt. It is code built on this machine by ppox from ppox's
own sources, like inductor's own cache; a model file never carries one.

A machine's first run of a configuration builds two or three libraries (the update's, the rollout's), each
mostly a single-threaded C++ compile. `start_build` lets a trainer start one of them in a child process before it
is needed (`BackgroundBuild`: traced here, compiled there into the same cache path), so that two cores build at
once; `PPOX_AOT_BACKGROUND=0` builds everything in the training process instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

_SOURCE_DIGEST: str | None = None
MAX_LIBRARIES = 64  # most recently used libraries kept in the cache (~2 MB each for a small MLP's step)


def cache_dir() -> Path:
    """Where the compiled libraries live: $PPOX_CACHE_DIR/aot, else $XDG_CACHE_HOME/ppox/aot, else ~/.cache/ppox/aot."""
    root = os.environ.get("PPOX_CACHE_DIR")
    if root:
        return Path(root) / "aot"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ppox" / "aot"


def source_digest() -> str:
    """sha256 of ppox's Python sources (read once per process): an edited checkout never loads stale code."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _SOURCE_DIGEST = h.hexdigest()
    return _SOURCE_DIGEST


def module_signature(module: torch.nn.Module) -> str:
    """Everything of `module` that a traced graph can bake in besides its parameters (which are inputs): each
    submodule's type and plain attributes (sizes, activations, keys, scales, ...), and the values of any tensor
    attributes and buffers. Object addresses are left out so that the signature is the same in every process."""
    parts = []
    for name, sub in module.named_modules():
        attrs = []
        for key, value in sorted(vars(sub).items()):
            if key.startswith("_") or key == "training":
                continue
            if isinstance(value, torch.Tensor):
                value = (_layout(value), _digest(value))
            attrs.append(f"{key}={re.sub(r' at 0x[0-9a-fA-F]+', '', repr(value))}")
        for key, buffer in sub.named_buffers(recurse=False):
            attrs.append(f"buffer {key}={_layout(buffer)}:{_digest(buffer)}")
        parts.append(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}({', '.join(attrs)})")
    return "\n".join(parts)


def settings_signature(obj: object) -> str:
    """`obj`'s class and plain scalar attributes (an env's constants, which a traced physics step bakes in), for a
    label."""
    settings = sorted((k, v) for k, v in vars(obj).items() if isinstance(v, bool | int | float | str))
    return f"{type(obj).__module__}.{type(obj).__qualname__}{settings!r}"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), tuple(t.stride()), t.dtype, t.device.type


def aot_key(label: str, example_args: Sequence[torch.Tensor]) -> str:
    """The cache key of `label`'s function compiled for inputs laid out like `example_args` (see the module doc)."""
    parts = [torch.__version__, platform.machine(), torch.backends.cpu.get_cpu_capability(), source_digest(), label]
    parts += [repr(_layout(a)) for a in example_args]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class AotFunction:
    """A compiled library's entry point: call it with tensors laid out as it was built for; returns a list."""

    def __init__(self, path: Path, example_args: Sequence[torch.Tensor]) -> None:
        self.path = path
        self._layouts = [_layout(a) for a in example_args]
        # torch's own runner for an AOTInductor CPU library (what torch._export.aot_load wraps); one model instance
        self._run = torch._C._aoti.AOTIModelContainerRunnerCpu(str(path), 1).run

    def check(self, args: Sequence[torch.Tensor]) -> None:
        """Raise ValueError unless `args` are laid out as the library was built for (it reads them unchecked)."""
        if len(args) != len(self._layouts) or any(_layout(a) != want for a, want in zip(args, self._layouts,
                                                                                          strict=False)):
            got = [_layout(a) for a in args]
            raise ValueError(f"{self.path.name} was compiled for inputs {self._layouts}, got {got}")

    def __call__(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        self.check(args)
        return self._run(args)

    def call_unchecked(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        """The library's call without `check`: for a loop whose inputs are `check`ed once and keep their layouts
        (e.g. the library's own outputs fed back in, slices of one contiguous index tensor)."""
        return self._run(args)


def load_cached(label: str, example_args: Sequence[torch.Tensor]) -> AotFunction | None:
    """The library for this key if it is in the cache and loads; None otherwise (a broken one is removed)."""
    path = cache_dir() / f"{aot_key(label, example_args)}.so"
    if not path.is_file():
        return None
    try:
        loaded = AotFunction(path, example_args)
    except (RuntimeError, OSError):
        path.unlink(missing_ok=True)  # truncated or built by something else: build it again
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # last use, for pruning
    return loaded


def prune(directory: Path, keep: int = MAX_LIBRARIES) -> None:
    """Remove all but the `keep` most recently used libraries (every edit of ppox's sources, torch upgrade or new
    configuration adds one; the cache must not grow without end), and build directories older than a day."""
    libraries = sorted(directory.glob("*.so"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in libraries[keep:]:
        old.unlink(missing_ok=True)
    # what a killed process left of its builds (a live build's directory is younger than a day)
    for stale in [*directory.glob(".build-*"), *directory.glob(".background-*")]:
        if time.time() - stale.stat().st_mtime > 86400:
            _remove_tree(stale)


def _matmul_as_loops() -> dict:
    """make_fx decompositions writing mm/addmm as broadcast-multiply-sum, which inductor turns into C++ loops fused
    with the ops around them: at a rollout's few rows a BLAS call costs more in call overhead than its FLOPs."""
    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.unsqueeze(-1) * b.unsqueeze(0)).sum(1)

    def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float = 1, alpha: float = 1) -> torch.Tensor:
        if beta != 1 or alpha != 1:
            return beta * bias + alpha * mm(a, b)
        return bias + mm(a, b)

    return {torch.ops.aten.mm.default: mm, torch.ops.aten.addmm.default: addmm}


def _tanh_from_exp() -> dict:
    """A make_fx decomposition writing tanh(x) as 1 - 2 / (exp(2x) + 1): inductor's vectorised CPU tanh (SLEEF's
    1-ulp kernel) costs several times its exp and a division, and a tanh MLP's update and rollout spend much of
    their time in it (benchmarks/results/ab_iteration_CartPole-v1_cleanrl_round11.md). The absolute error stays
    below 2e-7 (tests/rl/test_aot.py); it saturates to exactly +-1 and keeps NaN; the backward is still tanh's own,
    (1 - y^2) of the forward's output."""
    def tanh(x: torch.Tensor) -> torch.Tensor:
        return 1 - 2 / (torch.exp(2 * x) + 1)

    return {torch.ops.aten.tanh.default: tanh}


def _label(label: str, small_batch: bool) -> str:
    return f"{label}|small batch" if small_batch else label


def export(fn: Callable[..., Sequence[torch.Tensor]], example_args: Sequence[torch.Tensor],
           small_batch: bool = False) -> torch.export.ExportedProgram:
    """`fn(*example_args)` (a pure function of tensors returning a tuple of tensors) traced into an exported program
    of aten ops, with ppox's decompositions (`_tanh_from_exp`; `_matmul_as_loops` for a small batch)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    class Wrapped(torch.nn.Module):
        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(fn(*args))

    args = tuple(example_args)
    # fake tensors: tracing reads no values and changes nothing; make_fx flattens torch.func.grad into aten ops,
    # which torch.export cannot trace through itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation notes from inside export
        decompositions = {**_tanh_from_exp(), **(_matmul_as_loops() if small_batch else {})}
        graph = make_fx(Wrapped(), tracing_mode="fake", decomposition_table=decompositions)(*args)
        return torch.export.export(graph, args, strict=False)


def compile_exported(exported: torch.export.ExportedProgram, path: Path, small_batch: bool = False) -> None:
    """Compile `exported` with AOTInductor into the shared library `path`, written atomically (a concurrent run
    sees no library or the whole one)."""
    from torch._inductor import aoti_compile_and_package  # the compiler: imported only when something is built

    configs = {"aot_inductor.allow_stack_allocation": True} if small_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp, _cpu_wrapper_codegen(small_batch):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            package = aoti_compile_and_package(exported, package_path=os.path.join(tmp, "fn.pt2"),
                                               inductor_configs=configs)
        with zipfile.ZipFile(package) as archive:
            libraries = [n for n in archive.namelist() if n.endswith(".so")]
            if len(libraries) != 1:
                raise RuntimeError(f"AOTInductor package holds {len(libraries)} libraries, expected 1")
            staged = Path(tmp) / "fn.so"
            staged.write_bytes(archive.read(libraries[0]))
        os.chmod(staged, 0o755)
        os.replace(staged, path)
    with contextlib.suppress(OSError):
        prune(path.parent)


@contextlib.contextmanager
def _cpu_wrapper_codegen(stack_allocation: bool):
    """Pin inductor's CPU wrapper generator to the one this build asks for, and restore it after.

    torch registers that generator once per process, from `aot_inductor.allow_stack_allocation` at that moment, so
    without this a library's wrapper (how it allocates intermediates) would depend on what the process happened to
    build first, and the same key could hold different code depending on the process that built it. Where torch's
    internals differ from what this expects, torch's own choice stands."""
    try:
        import dataclasses

        from torch._inductor.codegen import common
        from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
        from torch._inductor.codegen.cpp_wrapper_cpu_array_ref import CppWrapperCpuArrayRef

        common.init_backend_registration()
        before = common.device_codegens["cpu"]
        pinned = dataclasses.replace(before, cpp_wrapper_codegen=CppWrapperCpuArrayRef if stack_allocation
                                     else CppWrapperCpu)
    except (ImportError, AttributeError, KeyError, TypeError):
        yield
        return
    common.device_codegens["cpu"] = pinned
    try:
        yield
    finally:
        common.device_codegens["cpu"] = before


def library_path(label: str, example_args: Sequence[torch.Tensor], small_batch: bool = False) -> Path:
    """Where the library of `label`'s function for inputs like `example_args` is cached."""
    return cache_dir() / f"{aot_key(_label(label, small_batch), example_args)}.so"


def build(fn: Callable[..., Sequence[torch.Tensor]], label: str, example_args: Sequence[torch.Tensor],
          small_batch: bool = False) -> AotFunction:
    """Trace `fn(*example_args)` (a pure function of tensors returning a tuple of tensors), compile it with
    AOTInductor and store the library under its key. Raises whatever tracing or compiling raises.

    `small_batch`: for graphs of many small ops on a few rows (a whole rollout): matrix products as fused loops
    instead of BLAS calls, and intermediates on the stack instead of one heap allocation each (AOTInductor's
    `allow_stack_allocation`); together ~3x faster per rollout step than the defaults, which suit the update's
    larger matrices instead."""
    path = library_path(label, example_args, small_batch)
    compile_exported(export(fn, example_args, small_batch), path, small_batch)
    return AotFunction(path, example_args)


class BackgroundBuild:
    """A library being compiled by a child Python process while this one goes on (`start_build`).

    A machine's first run of a compiled configuration builds two or three libraries, each mostly a single-threaded
    C++ compile: built one after another they keep one core busy; one built in a child while this process builds
    the other (or collects) uses two. The function is traced here (it is a closure of live objects) and handed to
    the child as an exported program in a private temporary directory; the child writes the library into the cache
    atomically, exactly as `build` would. Nothing depends on which process built a library: the same exported
    program compiles to the same code."""

    def __init__(self, path: Path, process: Any, workdir: Path) -> None:
        self.path, self.process, self.workdir = path, process, workdir

    def wait(self) -> bool:
        """Wait for the child; True when it put the library in place. Its log is kept only where it failed."""
        try:
            code = self.process.wait()
        except BaseException:  # interrupted while waiting: the child must not outlive the wait
            self.cancel()
            raise
        ok = code == 0 and self.path.is_file()
        if not ok:
            log = (self.workdir / "build.log").read_text(errors="replace").strip().splitlines()
            last = log[-1][:200] if log else f"exit status {code}"
            print(f"note: building {self.path.name} in a child process failed ({last}); building it here",
                  file=sys.stderr, flush=True)
        _remove_tree(self.workdir)
        return ok

    def cancel(self) -> None:
        """Stop the child (the process ends before it needed the library) and remove its files."""
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(OSError):
            self.process.wait()
        _remove_tree(self.workdir)


_BACKGROUND: dict[Path, BackgroundBuild] = {}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _cancel_background_builds() -> None:
    while _BACKGROUND:
        _BACKGROUND.popitem()[1].cancel()


def start_build(fn: Callable[..., Sequence[torch.Tensor]], label: str, example_args: Sequence[torch.Tensor],
                prepare: Callable[[], None] | None = None, small_batch: bool = False) -> bool:
    """Start compiling `fn`'s library for inputs like `example_args` in a child process (`BackgroundBuild`), unless
    it is cached, already being built, or ahead-of-time compiling is off; the next `load_or_build` of the same key
    waits for it. True when a child was started. Tracing here or starting the child may raise; then nothing is
    pending and the later `load_or_build` builds as usual."""
    import atexit
    import subprocess

    path = library_path(label, example_args, small_batch)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # a file in place is left to `load_or_build` (which loads it, or rebuilds a broken one): no load here as well
    if path in _BACKGROUND or cores < 2 or os.environ.get("PPOX_AOT_BACKGROUND", "1") == "0" or path.is_file():
        return False  # (one core: a child would only take turns with this process)
    if prepare is not None:
        prepare()
    exported = export(fn, example_args, small_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=".background-"))
    try:
        program = workdir / "program.pt2"
        torch.export.save(exported, program)
        # the child imports this very ppox, wherever it was imported from (a checkout, a path a script added)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        from torch._inductor import config as inductor_config

        if inductor_config.cpp.vec_isa_ok is not None:  # what `prepare` settled here (the SIMD probe): the same there
            env["TORCHINDUCTOR_VEC_ISA_OK"] = "1" if inductor_config.cpp.vec_isa_ok else "0"
        with open(workdir / "build.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from ppox.rl.aot import _child_main; _child_main(sys.argv[1:])",
                 str(program), str(path), "small" if small_batch else "default", str(torch.get_num_threads())],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    except BaseException:
        _remove_tree(workdir)
        raise
    if not _BACKGROUND:  # registered once per process: unregister drops an earlier registration
        atexit.unregister(_cancel_background_builds)
        atexit.register(_cancel_background_builds)
    _BACKGROUND[path] = BackgroundBuild(path, process, workdir)
    return True


def try_start_build(fn: Callable[..., Sequence[torch.Tensor]], label: str, example_args: Sequence[torch.Tensor],
                    prepare: Callable[[], None] | None = None, timed: Callable[[float], None] | None = None) -> bool:
    """`start_build`, or False where tracing or starting the child fails (the later `load_or_build` then builds, and
    says why where it fails too). `timed(seconds)` receives the tracing time here when a child was started."""
    start = time.perf_counter()
    try:
        started = start_build(fn, label, example_args, prepare)
    except Exception:
        return False
    if started and timed is not None:
        timed(time.perf_counter() - start)
    return started


def _child_main(argv: list[str]) -> None:
    """A `BackgroundBuild`'s child: compile the saved exported program into the library path, generating code for
    the parent's thread count as the parent would (inductor's CPU kernels are written for torch's thread count)."""
    program, path, mode, threads = argv
    torch.set_num_threads(int(threads))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        exported = torch.export.load(program)
    compile_exported(exported, Path(path), small_batch=mode == "small")


def load_or_build(fn: Callable[..., Sequence[torch.Tensor]], label: str, example_args: Sequence[torch.Tensor],
                  prepare: Callable[[], None] | None = None, small_batch: bool = False) -> tuple[AotFunction, bool]:
    """(the compiled function, whether it was built now) for `fn` under `label` with inputs like `example_args`;
    `prepare()` runs before a build (not before a load); `small_batch`: see `build`. Where `start_build` started
    this library's build, waits for it."""
    cached = load_cached(_label(label, small_batch), example_args)
    if cached is not None:
        return cached, False
    pending = _BACKGROUND.pop(library_path(label, example_args, small_batch), None)
    if pending is not None and pending.wait():
        cached = load_cached(_label(label, small_batch), example_args)
        if cached is not None:
            return cached, True
    if prepare is not None:
        prepare()
    return build(fn, label, example_args, small_batch), True


def enabled(device: torch.device, module: torch.nn.Module | None = None) -> bool:
    """Whether a compiled step (of `module`) on `device` is built ahead of time: on a CPU unless PPOX_AOT=0, and
    not for a module with buffers (a traced graph would freeze their values; torch.compile reads them)."""
    return (device.type == "cpu" and os.environ.get("PPOX_AOT", "1") != "0"
            and (module is None or next(module.buffers(), None) is None))


def load_or_build_or_none(fn: Callable[..., Sequence[torch.Tensor]], label: str,
                          example_args: Sequence[torch.Tensor], prepare: Callable[[], None] | None = None,
                          timed: Callable[[float], None] | None = None, small_batch: bool = False,
                          fallback: str = "torch.compile") -> AotFunction | None:
    """`load_or_build`, or None after one note line where tracing or compiling fails (`fallback`, the caller's
    torch.compile by default, then serves). `timed(seconds)` receives the load or build time."""
    start = time.perf_counter()
    try:
        return load_or_build(fn, label, example_args, prepare, small_batch)[0]
    except Exception as exc:  # any tracing or compiler failure: torch.compile still applies
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"note: ahead-of-time compile failed ({type(exc).__name__}: {first_line}); using {fallback}",
              file=sys.stderr, flush=True)
        return None
    finally:
        if timed is not None:
            timed(time.perf_counter() - start)


# torch.optim.Optimizer methods that torch wraps with `torch._disable_dynamo`, whose first call imports dynamo
_DYNAMO_WRAPPED_OPTIMIZER_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def defer_dynamo_import() -> None:
    """Keep torch.optim from importing dynamo (~0.8 s) in a process that never compiles anything.

    torch wraps some Optimizer methods (constructing one calls `add_param_group`) so that torch.compile skips them:
    the wrapper's first call imports torch._dynamo just to build that "skip me" marker, and caches the result on
    the function as `__dynamo_disable`. With the update loaded from an ahead-of-time library nothing else imports
    dynamo, so that import would be a large part of a short run's start. This pre-fills the cache with a shim that
    calls the method directly while dynamo is not imported (then nothing can be tracing it, so skipping is moot)
    and, once dynamo is imported by anything, installs and uses torch's own marker, as the wrapper would have."""
    if "torch._dynamo" in sys.modules:
        return
    for name in _DYNAMO_WRAPPED_OPTIMIZER_METHODS:
        fn = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = _until_dynamo_imported(fn)


def _until_dynamo_imported(fn: Callable) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        import torch._dynamo

        disabled = torch._dynamo.disable(fn, recursive=True)
        fn.__dynamo_disable = disabled
        return disabled(*args, **kwargs)

    return call


class LazyAot:
    """`fn(*args)` (args: tensors, or dicts/tuples of tensors; returns a flat tuple of tensors) compiled ahead of
    time at its first call, for that call's input layouts (`load_or_build_or_none`), then called through the
    library. Every call flattens its arguments, makes them contiguous and checks their layouts. Where building
    fails, `fallback` (e.g. the torch.compile'd `fn`) serves this and every later call."""

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], label: str, fallback: Callable,
                 prepare: Callable[[], None] | None = None, timed: Callable[[float], None] | None = None) -> None:
        self.fn, self.label, self.fallback, self.prepare, self.timed = fn, label, fallback, prepare, timed
        self.compiled: AotFunction | None = None
        self.failed = False
        self._spec = None

    def __call__(self, *args: Any) -> tuple[torch.Tensor, ...]:
        if self.failed:
            return self.fallback(*args)
        leaves, spec = tree_flatten(args)
        leaves = [leaf.contiguous() for leaf in leaves]
        if self.compiled is None:
            self._spec = spec
            self.compiled = load_or_build_or_none(self._flat_fn(spec), f"{self.label}|{spec}", leaves, self.prepare,
                                                  self.timed)
            if self.compiled is None:
                self.failed = True
                return self.fallback(*args)
        elif spec != self._spec:
            raise ValueError(f"{self.label.split('|')[0]}: called with {spec}, compiled for {self._spec}")
        return tuple(self.compiled(leaves))


    def _flat_fn(self, spec: Any) -> Callable[..., tuple[torch.Tensor, ...]]:
        fn = self.fn

        def flat_fn(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(fn(*tree_unflatten(list(flat), spec)))

        return flat_fn

    def prebuild(self, *args: Any) -> bool:
        """Start building the library for calls laid out like `fn(*args)` (values unused) in a child process, where it
        is not cached (`start_build`); the first call then waits for it. True when a build was started; never raises
        (the first call builds as usual)."""
        if self.failed or self.compiled is not None:
            return False
        leaves, spec = tree_flatten(args)
        return try_start_build(self._flat_fn(spec), f"{self.label}|{spec}", [leaf.contiguous() for leaf in leaves],
                               self.prepare, self.timed)


__all__ = ["AotFunction", "BackgroundBuild", "LazyAot", "aot_key", "build", "cache_dir", "compile_exported",
           "defer_dynamo_import", "enabled", "export", "library_path", "load_cached", "load_or_build",
           "load_or_build_or_none", "module_signature", "prune", "settings_signature", "source_digest", "start_build",
           "try_start_build"]
