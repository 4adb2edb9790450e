"""The ahead-of-time compiled step (ppox.rl.aot): built once, loaded after, equal to eager, refuses wrong inputs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from gymnasium import spaces

from ppox.core.objective import ObjectiveConfig
from ppox.core.update import PolicyOutput, ppo_update
from ppox.rl import aot
from ppox.rl.fast import CompiledUpdate
from ppox.rl.policy import Policy
from ppox.rl.spaces import ActionSpec


def affine(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tanh(x @ w), (x * 2).sum(0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppox-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPOX_CACHE_DIR", str(root))
        yield root / "aot"


def test_built_once_then_loaded_and_equal_to_eager(cache):
    x, w = torch.randn(5, 3), torch.randn(3, 2)
    fn, built = aot.load_or_build(affine, "affine", [x, w])
    assert built and len(list(cache.glob("*.so"))) == 1
    again, built = aot.load_or_build(affine, "affine", [x, w])
    assert not built  # the second time it is only loaded
    x2, w2 = torch.randn(5, 3), torch.randn(3, 2)
    for f in (fn, again):
        out = f([x2, w2])
        for got, want in zip(out, affine(x2, w2), strict=True):
            assert torch.allclose(got, want, atol=1e-6)
    assert not list(cache.glob(".build-*"))  # no build leftovers


def test_inputs_of_another_layout_are_refused(cache):
    x, w = torch.randn(5, 3), torch.randn(3, 2)
    fn, _ = aot.load_or_build(affine, "affine", [x, w])
    with pytest.raises(ValueError, match="compiled for inputs"):
        fn([torch.randn(6, 3), w])  # another shape: the library would read out of bounds
    with pytest.raises(ValueError, match="compiled for inputs"):
        fn([torch.randn(3, 5).T, w])  # same shape, other strides
    with pytest.raises(ValueError, match="compiled for inputs"):
        fn([x.double(), w])


def test_the_key_covers_label_layout_and_sources(cache, monkeypatch):
    x, w = torch.randn(5, 3), torch.randn(3, 2)
    key = aot.aot_key("affine", [x, w])
    assert key == aot.aot_key("affine", [torch.zeros(5, 3), torch.zeros(3, 2)])  # values do not matter
    assert key != aot.aot_key("affine2", [x, w])
    assert key != aot.aot_key("affine", [torch.randn(6, 3), w])
    assert key != aot.aot_key("affine", [x.double(), w])
    monkeypatch.setattr(aot, "_SOURCE_DIGEST", "edited")
    assert key != aot.aot_key("affine", [x, w])  # an edited checkout never loads a stale library


def test_a_broken_library_is_removed_and_rebuilt(cache):
    x, w = torch.randn(4, 3), torch.randn(3, 2)
    path = cache / f"{aot.aot_key('affine', [x, w])}.so"
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF truncated")
    assert aot.load_cached("affine", [x, w]) is None and not path.exists()


def test_module_signature_sees_what_a_trace_would_freeze():
    obs = spaces.Box(-1.0, 1.0, (5,))
    a = Policy(obs, ActionSpec("discrete", nvec=(3,), start=(0,)), hidden_sizes=(8,))
    b = Policy(obs, ActionSpec("discrete", nvec=(3,), start=(0,)), hidden_sizes=(8,), activation="relu")
    c = Policy(obs, ActionSpec("discrete", nvec=(3,), start=(1,)), hidden_sizes=(8,))
    assert aot.module_signature(a) == aot.module_signature(copy.deepcopy(a))  # weights are inputs, not baked in
    assert len({aot.module_signature(p) for p in (a, b, c)}) == 3
    assert "0x" not in aot.module_signature(a)  # the same in every process


def test_compiled_update_uses_the_library_and_matches_eager(cache):
    torch.manual_seed(0)
    obs = spaces.Box(-1.0, 1.0, (5,))
    eager_agent = Policy(obs, ActionSpec("continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0)), (16,),
                         init_log_std=-0.5)
    fast_agent = copy.deepcopy(eager_agent)
    n = 64
    x = torch.randn(n, 5)
    with torch.no_grad():
        actions, logprobs, values = eager_agent.act(x)
    batch = {"obs": x, "actions": actions, "logprobs": logprobs, "values": values,
             "advantages": torch.randn(n), "returns": torch.randn(n)}
    settings = ObjectiveConfig(ent_coef=0.01)
    eager_opt = torch.optim.Adam(eager_agent.parameters(), lr=1e-2, eps=1e-5)
    fast_opt = torch.optim.Adam(fast_agent.parameters(), lr=1e-2, eps=1e-5)
    fast = CompiledUpdate(fast_agent, fast_opt, settings, 0.5, compile=True)
    for it in range(2):
        r_eager = ppo_update(batch, lambda mb: PolicyOutput(*eager_agent(mb["obs"], mb["actions"])), eager_opt,
                             eager_agent.parameters(), settings, update_epochs=2, num_minibatches=4, max_grad_norm=0.5,
                             target_kl=0.5, generator=torch.Generator().manual_seed(it))
        r_fast = fast.update(batch, update_epochs=2, num_minibatches=4, target_kl=0.5,
                             generator=torch.Generator().manual_seed(it))
    assert fast._aot_steps and not fast._aot_failed  # the ahead-of-time library ran, not torch.compile
    for p, q in zip(eager_agent.parameters(), fast_agent.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4)
    for k, v in r_eager.stats.items():
        assert r_fast.stats[k] == pytest.approx(v, rel=1e-3, abs=1e-5), k
    assert float(fast_opt.state_dict()["state"][0]["step"]) == float(eager_opt.state_dict()["state"][0]["step"])


def test_tanh_from_exp_matches_tanh_saturates_and_keeps_tanhs_backward():
    from torch.func import grad
    from torch.fx.experimental.proxy_tensor import make_fx

    tanh = aot._tanh_from_exp()[torch.ops.aten.tanh.default]
    x = torch.cat([torch.linspace(-30.0, 30.0, 200_001), torch.logspace(-30, 1, 2_000), -torch.logspace(-30, 1, 2_000)])
    error = (tanh(x).double() - torch.tanh(x.double())).abs().max()
    assert error < 2e-7  # the bound aot.py states (measured ~1.8e-7)
    specials = tanh(torch.tensor([100.0, -100.0, float("inf"), float("-inf"), float("nan")]))
    assert specials[:4].tolist() == [1.0, -1.0, 1.0, -1.0] and specials[4].isnan()
    # traced under torch.func.grad (as the update's step is): the forward is rewritten, the backward is still
    # tanh's own (1 - y^2) of that forward's output
    graph = make_fx(grad(lambda v: torch.tanh(v).sum()), decomposition_table=aot._tanh_from_exp())(torch.randn(3))
    ops = {node.target for node in graph.graph.nodes if node.op == "call_function"}
    assert torch.ops.aten.tanh.default not in ops and torch.ops.aten.tanh_backward.default in ops
    v = torch.randn(3)  # the traced shape
    assert torch.allclose(graph(v), 1 - torch.tanh(v) ** 2, atol=1e-6)


def test_the_cache_keeps_only_the_most_recently_used_libraries(tmp_path):
    for i in range(5):
        lib = tmp_path / f"{i}.so"
        lib.write_bytes(b"x")
        os.utime(lib, (1000 + i, 1000 + i))
    stale, live = tmp_path / ".background-old", tmp_path / ".build-now"  # a killed process's, a running one's
    for d in (stale, live):
        d.mkdir()
        (d / "program.pt2").write_bytes(b"x")
    os.utime(stale, (1000, 1000))
    aot.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.so")) == ["3.so", "4.so"]
    assert not stale.exists() and live.exists()


def test_a_failing_build_says_so_once_and_the_fallback_serves(cache, monkeypatch, capsys):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("g++: command not found")

    monkeypatch.setattr(aot, "build", no_compiler)
    calls = []

    def fallback(x, w):
        calls.append(1)
        return affine(x, w)

    lazy = aot.LazyAot(affine, "affine-never-built", fallback=fallback)
    x, w = torch.randn(7, 3), torch.randn(3, 2)
    for _ in range(2):
        out = lazy(x, w)
        assert torch.equal(out[0], affine(x, w)[0])
    assert lazy.failed and len(calls) == 2
    assert capsys.readouterr().err.count("ahead-of-time compile failed (RuntimeError: g++") == 1


def test_optimizers_do_not_import_dynamo_until_something_else_does():
    # the compiled update's run constructs, saves and loads Adam but never steps it (ppox.rl.fast does the maths);
    # a fresh interpreter: in this one dynamo is imported already, which makes defer_dynamo_import a no-op
    code = """
import sys, torch
from ppox.rl import aot
aot.defer_dynamo_import()
p = torch.nn.Parameter(torch.zeros(3))
opt = torch.optim.Adam([p], lr=0.1)
p.grad = torch.ones(3)
opt.zero_grad()
opt.load_state_dict(opt.state_dict())
assert "torch._dynamo" not in sys.modules, "an optimizer method imported dynamo"
assert p.grad is None and opt.param_groups[0]["lr"] == 0.1
import torch._dynamo
p.grad = torch.ones(3)
opt.step()  # an eager step imports dynamo itself (torch's graph-break markers); the compiled update takes none
opt.zero_grad()  # from now on, torch's own marker: compiled code skips the method as torch intends
marker = torch.optim.Optimizer.zero_grad.__wrapped__.__dynamo_disable
assert getattr(marker, "_torchdynamo_disable", False), marker
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_library_started_in_a_child_is_waited_for_and_equal_to_one_built_here(tmp_path, monkeypatch):
    # its own cache and inductor directory: the same code then compiles to the same bytes in either process
    monkeypatch.setenv("PPOX_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    x, w = torch.randn(6, 3), torch.randn(3, 2)
    assert aot.start_build(affine, "affine", [x, w])
    assert not aot.start_build(affine, "affine", [x, w])  # already under way: one child per library
    fn, built = aot.load_or_build(affine, "affine", [x, w])  # waits for the child
    assert built and not aot._BACKGROUND
    for got, want in zip(fn([x, w]), affine(x, w), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    child_built = aot.library_path("affine", [x, w]).read_bytes()
    assert not [p for p in (tmp_path / "a" / "aot").iterdir() if p.name.startswith(".")]  # no leftovers
    assert not aot.start_build(affine, "affine", [x, w])  # cached now
    # built here after a small-batch build (which once switched torch's CPU wrapper generator for the whole
    # process): the same library as the child's
    monkeypatch.setenv("PPOX_CACHE_DIR", str(tmp_path / "b"))
    aot.build(lambda a: (a * 2,), "double", [torch.randn(4)], small_batch=True)
    aot.build(affine, "affine", [x, w])
    assert aot.library_path("affine", [x, w]).read_bytes() == child_built


def test_a_failed_child_is_said_and_the_library_built_here(cache, capsys):
    x, w = torch.randn(9, 3), torch.randn(3, 2)
    assert aot.start_build(affine, "affine", [x, w])
    aot._BACKGROUND[aot.library_path("affine", [x, w])].process.kill()  # as a crashed child
    fn, built = aot.load_or_build(affine, "affine", [x, w])
    assert built and torch.allclose(fn([x, w])[0], affine(x, w)[0], atol=1e-6)
    assert capsys.readouterr().err.count("in a child process failed") == 1
    assert not list(cache.glob(".background-*"))


def test_no_child_where_it_cannot_help(cache, monkeypatch):
    x, w = torch.randn(10, 3), torch.randn(3, 2)
    monkeypatch.setenv("PPOX_AOT_BACKGROUND", "0")
    assert not aot.start_build(affine, "affine", [x, w])
    monkeypatch.delenv("PPOX_AOT_BACKGROUND")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one core: it would take turns
    assert not aot.start_build(affine, "affine", [x, w])
    assert not aot._BACKGROUND


def test_lazy_prebuild_builds_what_the_first_call_loads(cache):
    x, w = torch.randn(11, 3), torch.randn(3, 2)
    lazy = aot.LazyAot(affine, "affine-lazy", fallback=affine)
    assert lazy.prebuild(x, w)
    out = lazy(x, w)  # waits for the child's library, builds nothing here
    assert not aot._BACKGROUND and lazy.compiled is not None and not lazy.failed
    assert torch.allclose(out[0], affine(x, w)[0], atol=1e-6)
    assert not lazy.prebuild(x, w)  # built
