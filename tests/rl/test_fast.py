"""The compiled update of ppox.rl.fast gives the eager update's results (same weights, Adam state, statistics)."""

import copy

import pytest
import torch
from gymnasium import spaces

from ppox.core.objective import ObjectiveConfig
from ppox.core.update import PolicyOutput, ppo_update
from ppox.rl.fast import CompiledUpdate
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
