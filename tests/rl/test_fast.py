"""The compiled update of ppox.rl.fast gives the eager update's results (same weights, Adam state, statistics)."""

import copy
import importlib.util
import json

import pytest
import torch
from gymnasium import spaces

from ppox.core.objective import ObjectiveConfig
from ppox.core.update import PolicyOutput, ppo_update
from ppox.rl.fast import CompiledUpdate, adam_step, clip_grad_global_norm
from ppox.rl.policy import Policy
from ppox.rl.spaces import ActionSpec

DISCRETE = ActionSpec("discrete", nvec=(3,), start=(0,))
CONTINUOUS = ActionSpec("continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0))
OBS = spaces.Box(-10.0, 10.0, (5,))


def make_batch(agent: Policy, n: int = 64, obs_dim: int = 5):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, obs_dim, generator=g)
    with torch.no_grad():
        actions, logprobs, values = agent.act(obs)
    return {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values,
            "advantages": torch.randn(n, generator=g), "returns": torch.randn(n, generator=g)}


def run_both(spec: ActionSpec, compile: bool, settings: ObjectiveConfig, iterations: int = 2):
    torch.manual_seed(0)
    eager_agent = Policy(OBS, spec, hidden_sizes=(16, 16), init_log_std=-0.5)
    fast_agent = copy.deepcopy(eager_agent)
    batch = make_batch(eager_agent)
    eager_opt = torch.optim.Adam(eager_agent.parameters(), lr=1e-2, eps=1e-5)
    fast_opt = torch.optim.Adam(fast_agent.parameters(), lr=1e-2, eps=1e-5)
    fast = CompiledUpdate(fast_agent, fast_opt, settings, max_grad_norm=0.5, compile=compile)

    def forward(mb):
        return PolicyOutput(*eager_agent(mb["obs"], mb["actions"]))

    for it in range(iterations):
        for opt in (eager_opt, fast_opt):
            opt.param_groups[0]["lr"] = 1e-2 * (1 - it / iterations)  # annealing, as the trainer does
        r_eager = ppo_update(batch, forward, eager_opt, eager_agent.parameters(), settings, update_epochs=2,
                             num_minibatches=4, max_grad_norm=0.5, kl_coef=0.1,
                             generator=torch.Generator().manual_seed(it))
        r_fast = fast.update(batch, update_epochs=2, num_minibatches=4, kl_coef=0.1,
                             generator=torch.Generator().manual_seed(it))
    return eager_agent, fast_agent, eager_opt, fast_opt, r_eager, r_fast


def assert_same(eager_agent, fast_agent, eager_opt, fast_opt, r_eager, r_fast):
    for (name, p), q in zip(eager_agent.named_parameters(), fast_agent.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name
    for k, v in r_eager.stats.items():
        assert r_fast.stats[k] == pytest.approx(v, rel=1e-3, abs=1e-5), k
    assert (r_fast.optimizer_steps, r_fast.skipped_updates) == (r_eager.optimizer_steps, r_eager.skipped_updates)
    e, f = eager_opt.state_dict()["state"], fast_opt.state_dict()["state"]
    for i in e:  # the Adam state is the optimizer's own, so checkpoints hold it
        assert float(e[i]["step"]) == float(f[i]["step"])
        assert torch.allclose(e[i]["exp_avg_sq"], f[i]["exp_avg_sq"], atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("spec", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_functional_update_matches_eager(spec):
    assert_same(*run_both(spec, compile=False, settings=ObjectiveConfig(ent_coef=0.01, kl_penalty="loss")))


def test_compiled_update_matches_eager():
    assert_same(*run_both(DISCRETE, compile=True, settings=ObjectiveConfig(ent_coef=0.01)))


@pytest.mark.parametrize("target_kl", [None, 0.002], ids=["no_target_kl", "target_kl_stops"])
def test_every_unrolling_matches_the_eager_loop(target_kl):
    """One call per iteration (target_kl's stop masked inside), per epoch or per minibatch: the same epochs run as
    the eager loop, its weights and statistics (functorch's gradients differ from autograd's in the last bits, which
    48 Adam steps at lr 3e-2 grow to ~1e-5), the unrollings within 1e-6 of each other, and the shuffling generator
    left where the eager loop leaves it (so later iterations draw the same permutations)."""
    torch.manual_seed(0)
    eager_agent = Policy(OBS, DISCRETE, hidden_sizes=(16, 16))
    batch = make_batch(eager_agent)
    settings = ObjectiveConfig(ent_coef=0.01)
    agents = {u: copy.deepcopy(eager_agent) for u in ("iteration", "epoch", "minibatch")}
    eager_opt = torch.optim.Adam(eager_agent.parameters(), lr=3e-2, eps=1e-5)
    updates = {}
    for unroll, agent in agents.items():
        updates[unroll] = CompiledUpdate(agent, torch.optim.Adam(agent.parameters(), lr=3e-2, eps=1e-5), settings,
                                         max_grad_norm=0.5, compile=False)
        updates[unroll].unroll = unroll
    g_eager = torch.Generator().manual_seed(3)
    generators = {u: torch.Generator().manual_seed(3) for u in agents}
    epochs = []
    for _ in range(3):
        r_eager = ppo_update(batch, lambda mb: PolicyOutput(*eager_agent(mb["obs"], mb["actions"])), eager_opt,
                             eager_agent.parameters(), settings, update_epochs=4, num_minibatches=4, max_grad_norm=0.5,
                             target_kl=target_kl, generator=g_eager)
        epochs.append(r_eager.epochs_run)
        for unroll, fast in updates.items():
            r_fast = fast.update(batch, update_epochs=4, num_minibatches=4, target_kl=target_kl,
                                 generator=generators[unroll])
            assert r_fast.epochs_run == r_eager.epochs_run, unroll
            assert (r_fast.minibatch_updates, r_fast.optimizer_steps) == (r_eager.minibatch_updates,
                                                                          r_eager.optimizer_steps)
            for k, v in r_eager.stats.items():
                assert r_fast.stats[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    for unroll, agent in agents.items():
        for p, q, r in zip(eager_agent.parameters(), agent.parameters(), agents["minibatch"].parameters(), strict=True):
            assert (p - q).abs().max() <= 3e-5 and (q - r).abs().max() <= 1e-6, unroll
        assert torch.equal(g_eager.get_state(), generators[unroll].get_state()), unroll
    if target_kl is not None:
        assert min(epochs) < 4  # the early stop did happen (lr 3e-2 moves the policy past target_kl)


def test_adam_step_is_torch_adam():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.Adam([p], lr=1e-2, betas=(0.8, 0.95), eps=1e-5)
    q, m, v, step = p.detach().clone(), torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(())
    for _ in range(5):
        grad = torch.randn(3, 4)
        p.grad = grad.clone()
        opt.step()
        q_before = q.clone()
        q, m, v, step = adam_step(q, m, v, step, grad, 1e-2, 0.8, 0.95, 1e-5)
        assert not torch.equal(q, q_before)  # pure: a new tensor each step
    state = opt.state[p]
    assert torch.allclose(q, p.detach(), atol=1e-7, rtol=0) and float(step) == float(state["step"]) == 5
    assert torch.allclose(m, state["exp_avg"], atol=1e-8) and torch.allclose(v, state["exp_avg_sq"], atol=1e-9)
    stacked = torch.func.vmap(adam_step, in_dims=(0, 0, 0, 0, 0, None, None, None, None))(
        torch.ones(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), 0.1, 0.9, 0.999, 1e-8)
    assert torch.allclose(stacked[0], torch.full((2, 3), 0.9))  # the first Adam step moves by lr (sign of grad)


def test_clip_grad_global_norm_is_clip_grad_norm():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # global norm 5
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, 0.5)
    clipped, total = clip_grad_global_norm(torch.cat([g.reshape(-1) for g in grads]), 0.5)
    assert float(total) == float(norm) == 5.0
    assert torch.equal(clipped, torch.cat([p.grad.reshape(-1) for p in params]))
    assert torch.allclose(clipped.norm(), torch.tensor(0.5), atol=1e-6)
    unclipped, _ = clip_grad_global_norm(torch.tensor([0.3, 0.4]), 0.5)  # norm 0.5 + 1e-6 > 0.5: scale 1 - 2e-6
    assert torch.allclose(unclipped, torch.tensor([0.3, 0.4]), atol=1e-6)
    assert torch.equal(clip_grad_global_norm(torch.tensor([30.0, 40.0]), None)[0], torch.tensor([30.0, 40.0]))


def test_nonfinite_minibatch_is_skipped_like_eager():
    torch.manual_seed(0)
    agent = Policy(OBS, DISCRETE, hidden_sizes=(8,))
    batch = make_batch(agent, n=16)
    batch["returns"][:4] = float("nan")  # poisons whichever minibatches draw these rows
    opt = torch.optim.Adam(agent.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in agent.parameters()]
    result = CompiledUpdate(agent, opt, ObjectiveConfig(), 0.5, compile=False).update(
        batch, update_epochs=1, num_minibatches=1, generator=torch.Generator().manual_seed(0))
    assert result.skipped_updates == 1 and result.optimizer_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters(), strict=True))


def test_gae_numpy_scan_equals_torch_scan():
    import numpy as np

    from ppox.core import gae
    from ppox.core.advantages import _reverse_scan

    g = torch.Generator().manual_seed(0)
    r, v, fv = (torch.randn(64, 3, generator=g) for _ in range(3))
    last = torch.randn(3, generator=g)
    term = torch.rand(64, 3, generator=g) < 0.05
    end = term | (torch.rand(64, 3, generator=g) < 0.05)
    next_values = torch.where(end & ~term, fv, torch.cat([v[1:], last[None]]))
    adv, ret = gae(r, v, next_values, term, end, 0.99, 0.95)  # CPU: the numpy scan
    deltas = r + 0.99 * (1.0 - term.float()) * next_values - v
    adv2 = torch.empty_like(v)
    _reverse_scan(deltas, 0.99 * 0.95 * (1.0 - end.float()), adv2)  # on tensors
    adv2, ret2 = adv2.numpy(), (adv2 + v).numpy()
    assert np.allclose(adv.numpy(), adv2, atol=1e-6) and np.allclose(ret.numpy(), ret2, atol=1e-6)


def test_numpy_and_torch_rollouts_step_envs_alike(monkeypatch):
    """Both rollouts drive the same env adapter: with equal actions the envs give equal results, and
    those of gymnasium's SyncVectorEnv (same-step autoreset), which the adapter steps around."""
    import gymnasium as gym
    import numpy as np

    from ppox.rl.envs import VecEnv

    a = VecEnv("CartPole-v1", 3, 5, torch.device("cpu"))
    b = VecEnv("CartPole-v1", 3, 5, torch.device("cpu"))
    ref = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3,
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    assert torch.equal(a.reset(), b.reset())
    assert np.array_equal(ref.reset(seed=5)[0], a._last_obs.numpy())
    rng = np.random.default_rng(0)
    for _ in range(300):
        actions = rng.integers(0, 2, 3)
        ra, rb = a.step(actions), b.step(torch.from_numpy(actions))
        assert isinstance(ra.obs, np.ndarray) and isinstance(rb.obs, torch.Tensor)
        assert np.array_equal(ra.obs, rb.obs.numpy()) and np.array_equal(ra.final_obs, rb.final_obs.numpy())
        assert np.array_equal(ra.reward, rb.reward.numpy()) and np.array_equal(ra.truncated, rb.truncated.numpy())
        assert ra.finished_returns == rb.finished_returns
        obs, reward, terminated, truncated, info = ref.step(actions)
        assert np.array_equal(obs, ra.obs) and np.array_equal(reward.astype(np.float32), ra.reward)
        assert np.array_equal(terminated, ra.terminated) and np.array_equal(truncated, ra.truncated)
        for i in np.flatnonzero(terminated | truncated):
            assert np.array_equal(info["final_obs"][i], ra.final_obs[i])


@pytest.fixture
def isa_cache(tmp_path, monkeypatch):
    """A fresh ppox cache dir, inductor's vec_isa_ok switch unset (restored afterwards)."""
    from torch._inductor import config as inductor_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK", raising=False)
    with inductor_config.patch({"cpp.vec_isa_ok": None}):
        yield tmp_path / "ppox" / "inductor_vec_isa.json"


def test_cpu_isa_probe_runs_once_then_is_trusted(isa_cache, monkeypatch):
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    from ppox.rl import fast

    probes = []

    def fake_pick():  # the probe's answer depends on whether inductor was told to trust the CPU flags
        probes.append(inductor_config.cpp.vec_isa_ok)
        return "avx2"

    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", fake_pick)
    fast.remember_cpu_isa_probe()  # first process: inductor probes, the answer is recorded
    assert probes == [None] and inductor_config.cpp.vec_isa_ok is None
    assert "avx2" in isa_cache.read_text()
    fast.remember_cpu_isa_probe()  # later: trusted, and kept because inductor picks the same ISA
    assert probes == [None, True] and inductor_config.cpp.vec_isa_ok is True

    inductor_config.cpp.vec_isa_ok = None
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: "avx512" if inductor_config.cpp.vec_isa_ok else "avx2")
    fast.remember_cpu_isa_probe()  # trusting would pick another ISA than the probe did: probe instead
    assert inductor_config.cpp.vec_isa_ok is None


def test_compiling_for_cuda_skips_the_cpu_isa_probe(monkeypatch):
    """The CPU ISA probe (C++ builds) runs only when compiling for the CPU: a CUDA run never pays for it."""
    from ppox.rl import fast

    probes = []
    monkeypatch.setattr(fast, "remember_cpu_isa_probe", lambda: probes.append(1))
    fast.compile_fn(lambda x: x, True, device=torch.device("cuda"))
    assert probes == []
    fast.compile_fn(lambda x: x, True, device=torch.device("cpu"))
    assert probes == [1]
    agent = Policy(OBS, DISCRETE, hidden_sizes=(8,))
    update = CompiledUpdate(agent, torch.optim.Adam(agent.parameters()), ObjectiveConfig(), 0.5, compile=True)
    update._chunk(1, 1, False)
    assert probes == [1, 1]  # the update of a CPU policy: probed (its parameters are on the CPU)


def test_auto_compile_decision():
    from ppox.rl.fast import AUTO_COMPILE_MIN_RECURRENT_UPDATES, AUTO_COMPILE_MIN_UPDATES, decide_compile

    agent = Policy(OBS, DISCRETE, hidden_sizes=(8,))
    adam = torch.optim.Adam(agent.parameters())
    cpu = torch.device("cpu")

    def decide(setting="auto", **kw):
        args = {"device": cpu, "optimizer": adam, "recurrent": False, "distributed": False,
                "minibatch_updates": AUTO_COMPILE_MIN_UPDATES} | kw
        return decide_compile(setting, **args)

    assert decide(True, minibatch_updates=1).enabled and not decide(False).enabled  # explicit settings win
    assert decide().enabled == (fast_cpp_compiler() is not None)
    short = decide(minibatch_updates=AUTO_COMPILE_MIN_UPDATES - 1)
    assert not short.enabled and "do not repay" in short.reason and not short.said  # not news
    assert not decide(distributed=True).enabled and decide(distributed=True).said  # a slow path: said
    # a policy with memory: compiled ahead of time only (a CPU), from fewer (bigger) minibatch updates
    assert decide(recurrent=True, minibatch_updates=AUTO_COMPILE_MIN_RECURRENT_UPDATES).enabled == (
        fast_cpp_compiler() is not None)
    assert not decide(recurrent=True, minibatch_updates=AUTO_COMPILE_MIN_RECURRENT_UPDATES - 1).enabled
    elsewhere = decide(recurrent=True, ahead_of_time=False)
    assert not elsewhere.enabled and elsewhere.said and "CPU only" in elsewhere.reason
    assert not decide(optimizer=torch.optim.SGD(agent.parameters(), lr=0.1)).enabled
    assert not decide(device=torch.device("mps")).enabled
    # a GPU: compiled (CUDA graphs) from fewer minibatch updates, where triton is there
    from ppox.rl.fast import AUTO_COMPILE_MIN_CUDA_UPDATES

    cuda, has_triton = torch.device("cuda"), importlib.util.find_spec("triton") is not None
    assert AUTO_COMPILE_MIN_CUDA_UPDATES < AUTO_COMPILE_MIN_UPDATES
    assert decide(device=cuda, minibatch_updates=AUTO_COMPILE_MIN_CUDA_UPDATES).enabled == has_triton
    assert not decide(device=cuda, minibatch_updates=AUTO_COMPILE_MIN_CUDA_UPDATES - 1).enabled


def fast_cpp_compiler():
    from ppox.rl.fast import cpp_compiler

    return cpp_compiler()


def test_a_short_default_run_trains_eagerly_quietly_and_records_why(tmp_path, capsys):
    from ppox.rl.ppo import PPO

    model = PPO("CartPole-v1", run_dir=tmp_path / "run", num_envs=2, num_steps=16, total_timesteps=64,
                progress=False, tensorboard=False, eval_episodes=0)
    assert model.config.compile == "auto" and model._compiled_update is None
    model.learn()
    assert "compile:" not in capsys.readouterr().err  # a short run staying eager is not news: summary only
    assert model.summary["compile"] is False and "do not repay" in model.summary["compile_reason"]


def test_corrupt_isa_cache_means_probing_again(isa_cache, monkeypatch):
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    from ppox.rl import fast

    isa_cache.parent.mkdir()
    isa_cache.write_text("{not json")
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: "avx2")
    fast.remember_cpu_isa_probe()
    assert inductor_config.cpp.vec_isa_ok is None
    assert "avx2" in isa_cache.read_text()


def test_a_failing_compile_falls_back_to_the_eager_update(tmp_path, monkeypatch, capsys):
    from torch._inductor.exc import CppCompileError

    from ppox.rl.ppo import PPO

    def no_compiler(*args, **kwargs):
        raise CppCompileError(["g++"], "g++: command not found")

    model = PPO("CartPole-v1", run_dir=tmp_path / "run", num_envs=2, num_steps=16, total_timesteps=64,
                compile=True, progress=False, tensorboard=False, eval_episodes=0)
    monkeypatch.setattr(model._compiled_update, "update", no_compiler)
    before = [p.detach().clone() for p in model.agent.parameters()]
    model.learn()
    assert "--compile failed (CppCompileError" in capsys.readouterr().err
    assert model._compiled_update is None and model.global_step == 64  # trained on, eagerly
    assert any(not torch.equal(a, b) for a, b in zip(before, model.agent.parameters(), strict=True))


def test_the_first_compile_of_an_update_is_noted_and_remembered(tmp_path, monkeypatch):
    """The "first compile here" note is keyed by what the graph is built for and kept in inductor's cache dir."""
    from ppox.rl import fast

    monkeypatch.setattr(fast, "_compiled_marker", lambda: tmp_path / "cache" / "ppox_compiled_updates.json")
    agent = Policy(OBS, DISCRETE, hidden_sizes=(8,))
    objective = ObjectiveConfig()
    key = fast.update_cache_key(agent, objective, 64, torch.device("cpu"))
    assert key != fast.update_cache_key(agent, objective, 128, torch.device("cpu"))
    assert key != fast.update_cache_key(Policy(OBS, DISCRETE, hidden_sizes=(16,)), objective, 64, torch.device("cpu"))
    assert not fast.compiled_before(key)
    fast.remember_compiled(key)
    fast.remember_compiled(key)
    marker = tmp_path / "cache" / "ppox_compiled_updates.json"
    assert fast.compiled_before(key) and json.loads(marker.read_text()) == [key]
    marker.write_text("{corrupt")
    assert not fast.compiled_before(key)  # a corrupt list means cold, never an error


def test_torch_env_physics_built_ahead_of_time_matches_eager(tmp_path, monkeypatch):
    """compile_torch_env on a CPU: the physics is an ahead-of-time library (keyed by the env's settings) giving
    the eager env's states, rewards and flags; a randomised env (tensor parameters) keeps torch.compile."""
    from ppox.envs.torch_envs import make_torch_vec_env
    from ppox.rl import aot
    from ppox.rl.fast import compile_torch_env

    monkeypatch.setenv("PPOX_CACHE_DIR", str(tmp_path))
    eager, compiled = (make_torch_vec_env("CartPole-v1", 8, seed=3) for _ in range(2))
    compile_torch_env(compiled)
    assert isinstance(compiled._dynamics, aot.LazyAot)
    eager.reset(seed=3)
    compiled.reset(seed=3)
    actions = torch.randint(0, 2, (50, 8), generator=torch.Generator().manual_seed(0))
    for a in actions:
        for got, want in zip(compiled.step(a)[:4], eager.step(a)[:4], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert compiled._dynamics.compiled is not None and not compiled._dynamics.failed


def run_as_if_graphed(monkeypatch):
    """The graphed update's loop on a CPU: its body run where a GPU would capture and replay it, uncompiled."""
    from ppox.rl import fast

    def capture(body):
        body()  # the warm-up run
        outputs = body()  # a GPU records this run instead of running it

        class Graph:
            def replay(self):
                torch._foreach_copy_(list(outputs), list(body()))

        return Graph(), outputs

    monkeypatch.setattr(fast, "capture_cuda_graph", capture)
    monkeypatch.setattr(fast, "compile_fn", lambda fn, enabled, **kwargs: fn)
    monkeypatch.setattr(CompiledUpdate, "_graphs_apply", lambda self, device: True)


@pytest.mark.parametrize("target_kl", [None, 0.004])
def test_the_graphed_update_is_the_eager_update_for_its_minibatches(monkeypatch, target_kl):
    """Weights, Adam's state and step count, statistics and epochs run (target_kl's stop masked in the graph) equal
    `ppo_update`'s for the permutations the graphed update draws (one per epoch, from a generator seeded by the
    run's shuffling generator); three updates in a row, so each starts from the state the last one wrote back."""
    run_as_if_graphed(monkeypatch)
    torch.manual_seed(0)
    spec = ActionSpec("discrete", (3,), 3)
    eager_agent = Policy(OBS, spec, hidden_sizes=(16, 16))
    graphed_agent = copy.deepcopy(eager_agent)
    settings = ObjectiveConfig()
    eager_opt = torch.optim.Adam(eager_agent.parameters(), lr=3e-2, eps=1e-5)
    graphed_opt = torch.optim.Adam(graphed_agent.parameters(), lr=3e-2, eps=1e-5)
    update = CompiledUpdate(graphed_agent, graphed_opt, settings, max_grad_norm=0.5, compile=True)
    batch = make_batch(eager_agent)
    shuffle = torch.Generator().manual_seed(5)
    randperm = torch.randperm
    epochs = []
    for _ in range(3):
        # the graphed update's minibatches: argsort of uniform keys from a generator seeded off `shuffle`
        ahead = torch.Generator().manual_seed(0)
        ahead.set_state(shuffle.get_state())
        seeded = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=ahead)))
        perms = list(torch.rand((4, 64), generator=seeded).argsort(dim=1))
        monkeypatch.setattr(torch, "randperm", lambda n, generator=None, perms=perms: perms.pop(0))
        r_eager = ppo_update(batch, lambda mb: PolicyOutput(*eager_agent(mb["obs"], mb["actions"])), eager_opt,
                             eager_agent.parameters(), settings, update_epochs=4, num_minibatches=4, max_grad_norm=0.5,
                             target_kl=target_kl, kl_coef=0.1)
        monkeypatch.setattr(torch, "randperm", randperm)
        r_graphed = update.update(batch, update_epochs=4, num_minibatches=4, target_kl=target_kl, kl_coef=0.1,
                                  generator=shuffle)
        assert update._graph is not None  # the graphed path ran
        assert_same(eager_agent, graphed_agent, eager_opt, graphed_opt, r_eager, r_graphed)
        epochs.append(r_eager.epochs_run)
    if target_kl is not None:
        assert min(epochs) < 4  # the early stop happened (and was masked alike)


def test_a_failed_capture_falls_back_to_the_compiled_update_and_says_so(monkeypatch, capsys):
    from ppox.rl import fast

    run_as_if_graphed(monkeypatch)

    def broken(body):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(fast, "capture_cuda_graph", broken)
    agent = Policy(OBS, ActionSpec("discrete", (3,), 3), hidden_sizes=(8,))
    update = CompiledUpdate(agent, torch.optim.Adam(agent.parameters()), ObjectiveConfig(), 0.5, compile=False)
    update._compiled = True  # as compiled, the graph is tried; compile=False keeps the fallback's chunk eager
    monkeypatch.setattr(update, "_aot_step", lambda *args: None)
    result = update.update(make_batch(agent), update_epochs=1, num_minibatches=2, generator=torch.Generator())
    assert result.optimizer_steps == 2 and update._graph_failed
    assert "the CUDA-graph update failed (RuntimeError: operation not permitted" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("target_kl", [None, 0.004])
def test_the_graph_replays_the_update_on_a_gpu(monkeypatch, target_kl):
    """The captured update (compiled step, CUDA graph) equals its loop run eagerly on the same GPU inputs (TF32 off;
    with it on, the products differ at ~1e-3, by design)."""
    torch.manual_seed(0)
    agent = Policy(OBS, ActionSpec("discrete", (3,), 3), hidden_sizes=(64, 64))
    batch = {k: v.cuda() for k, v in make_batch(agent, n=4096).items()}
    agents = [agent.cuda(), copy.deepcopy(agent).cuda()]
    opts = [torch.optim.Adam(a.parameters(), lr=3e-3, eps=1e-5) for a in agents]
    graphed, reference = (CompiledUpdate(a, o, ObjectiveConfig(), max_grad_norm=0.5, compile=True)
                          for a, o in zip(agents, opts, strict=True))
    shuffles = [torch.Generator().manual_seed(5) for _ in agents]
    monkeypatch.setenv("PPOX_TF32", "0")  # full float32 in the graph too: the same arithmetic as the reference
    for _ in range(3):
        results = []
        for update, shuffle in zip((graphed, reference), shuffles, strict=True):
            with monkeypatch.context() as patch:
                if update is reference:  # the same loop without the graph or the compiler
                    run_as_if_graphed(patch)
                results.append(update.update(batch, update_epochs=4, num_minibatches=4, target_kl=target_kl,
                                             kl_coef=0.1, generator=shuffle))
        assert graphed._graph is not None and not graphed._graph_failed
        assert results[0].epochs_run == results[1].epochs_run
        for a, b in zip(agents[0].parameters(), agents[1].parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for key in results[0].stats:
            assert results[0].stats[key] == pytest.approx(results[1].stats[key], rel=1e-3, abs=1e-6)


class _StopAtUpdate(Exception):
    pass


def test_the_update_built_ahead_is_the_one_the_first_update_loads(tmp_path, monkeypatch):
    """PPO starts the compiled update's library in a child process before the first rollout (ppox.rl.aot.start_build);
    it must be the library (the key: label and input layouts) that the first update then asks for."""
    from ppox.rl import aot
    from ppox.rl.ppo import PPO

    started, asked = [], []

    def start_build(fn, label, example_args, prepare=None, small_batch=False):
        started.append(aot.library_path(label, example_args, small_batch))
        return False

    def load_or_build_or_none(fn, label, example_args, prepare=None, timed=None, small_batch=False, fallback=""):
        if label.startswith("rollout chunk"):
            return None  # the numpy rollout: this test builds nothing
        asked.append(aot.library_path(label, example_args, small_batch))
        raise _StopAtUpdate

    monkeypatch.setattr(aot, "start_build", start_build)
    monkeypatch.setattr(aot, "load_or_build_or_none", load_or_build_or_none)
    for target_kl in (None, 0.02):
        model = PPO("CartPole-v1", run_dir=tmp_path / f"run{target_kl}", num_envs=4, num_steps=16, num_minibatches=4,
                    total_timesteps=128, compile=True, target_kl=target_kl, progress=False, tensorboard=False,
                    eval_episodes=0)
        with pytest.raises(_StopAtUpdate):
            model.learn()
        model.close()
    assert len(started) == len(asked) == 2 and started == asked
