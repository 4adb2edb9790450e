"""The fast paths of ppox.rl.fast give the eager results: same update, same policy distribution."""

import copy

import pytest
import torch

from ppox.core.update import LossSettings, PolicyOutput, ppo_update
from ppox.rl.agent import Agent
from ppox.rl.fast import CompiledUpdate, PackedPolicy
from ppox.rl.spaces import ActionSpec

DISCRETE = ActionSpec("discrete", nvec=(3,), start=(0,))
CONTINUOUS = ActionSpec("continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0))


def make_batch(agent: Agent, n: int = 64, obs_dim: int = 5):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, obs_dim, generator=g)
    with torch.no_grad():
        actions, logprobs, values = agent.act(obs)
    return {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values,
            "advantages": torch.randn(n, generator=g), "returns": torch.randn(n, generator=g)}


def run_both(spec: ActionSpec, compile: bool, settings: LossSettings, iterations: int = 2):
    torch.manual_seed(0)
    eager_agent = Agent(5, spec, hidden_sizes=(16, 16), init_log_std=-0.5)
    fast_agent = copy.deepcopy(eager_agent)
    batch = make_batch(eager_agent)
    eager_opt = torch.optim.Adam(eager_agent.parameters(), lr=1e-2, eps=1e-5)
    fast_opt = torch.optim.Adam(fast_agent.parameters(), lr=1e-2, eps=1e-5)
    fast = CompiledUpdate(fast_agent, fast_opt, spec, settings, max_grad_norm=0.5, compile=compile)

    def forward(mb):
        return PolicyOutput(*eager_agent.evaluate(mb["obs"], mb["actions"]))

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
    assert_same(*run_both(spec, compile=False, settings=LossSettings(ent_coef=0.01, use_kl_penalty=True)))


def test_compiled_update_matches_eager():
    assert_same(*run_both(DISCRETE, compile=True, settings=LossSettings(ent_coef=0.01)))


def test_nonfinite_minibatch_is_skipped_like_eager():
    torch.manual_seed(0)
    agent = Agent(5, DISCRETE, hidden_sizes=(8,))
    batch = make_batch(agent, n=16)
    batch["returns"][:4] = float("nan")  # poisons whichever minibatches draw these rows
    opt = torch.optim.Adam(agent.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in agent.parameters()]
    result = CompiledUpdate(agent, opt, DISCRETE, LossSettings(), 0.5, compile=False).update(
        batch, update_epochs=1, num_minibatches=1, generator=torch.Generator().manual_seed(0))
    assert result.skipped_updates == 1 and result.optimizer_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters(), strict=True))


@pytest.mark.parametrize("spec", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_packed_policy_matches_agent(spec):
    torch.manual_seed(0)
    agent = Agent(5, spec, hidden_sizes=(16, 16), init_log_std=-0.3)
    policy = PackedPolicy(agent, spec)
    obs = torch.randn(4000, 5)
    actions, logprobs, values = policy(obs)
    ref_logprobs, _, ref_values = agent.evaluate(obs, actions)
    assert torch.allclose(logprobs, ref_logprobs, atol=1e-5)
    assert torch.allclose(values, ref_values.detach(), atol=1e-5)
    if spec.kind == "discrete":  # sampled frequencies follow the policy's probabilities
        one = obs[:1].expand(4000, 5)
        freq = torch.bincount(policy(one)[0], minlength=3).float() / 4000
        assert torch.allclose(freq, torch.softmax(agent(obs[:1])[0], -1)[0].detach(), atol=0.03)
    with torch.no_grad():  # refresh() follows weight changes
        for p in agent.parameters():
            p.add_(0.1)
    policy.refresh()
    values2 = policy(obs[:8])[2]
    assert torch.allclose(values2, agent.value(obs[:8]).detach(), atol=1e-5)
