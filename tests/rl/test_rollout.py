"""The rollout backends (ppox.rl.rollout): the fast policy steps are the policy module, the backend choice
is made in one place from the config, and both collectors store the torch network's log-probs."""

import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppox.rl.buffer import Rollout
from ppox.rl.compiled_rollout import CompiledCollector
from ppox.rl.policy import Policy
from ppox.rl.rollout import (
    FusedTorchStep,
    NumpyCollector,
    NumpyPolicy,
    NumpyRecurrentPolicy,
    TorchCollector,
    torch_policy_step,
)
from ppox.rl.spaces import ActionSpec

OBS = spaces.Box(-10.0, 10.0, (5,))
DISCRETE = ActionSpec("discrete", nvec=(3,), start=(0,))
CONTINUOUS = ActionSpec("continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0))
MULTI = ActionSpec("multidiscrete", nvec=(3, 2), start=(0, 0))
SPECS = {"discrete": DISCRETE, "continuous": CONTINUOUS, "multidiscrete": MULTI}


class RecordingRng:
    """A numpy Generator that remembers the noise it hands out."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.draws: list[np.ndarray] = []

    def standard_exponential(self, shape, dtype):
        self.draws.append(self.rng.standard_exponential(shape, dtype=dtype))
        return self.draws[-1].copy()

    def standard_normal(self, shape, dtype):
        self.draws.append(self.rng.standard_normal(shape, dtype=dtype))
        return self.draws[-1].copy()


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("kind", list(SPECS))
def test_numpy_policy_equals_the_module_given_the_same_noise(kind, activation):
    """NumpyPolicy is derived from the module: with the module's sampler fed the same noise, the same
    actions, and the same log-probs and values up to float32 rounding."""
    spec = SPECS[kind]
    torch.manual_seed(0)
    policy = Policy(OBS, spec, hidden_sizes=(16, 16), activation=activation, init_log_std=-0.3)
    assert NumpyPolicy.supported(policy)
    rng = RecordingRng()
    numpy_policy = NumpyPolicy(policy, rng)
    obs = torch.randn(4000, 5)
    actions, logprobs, values = numpy_policy(obs.numpy())
    assert logprobs.dtype == np.float32 and values.dtype == np.float32
    assert actions.shape == (4000, *spec.action_shape)
    noise = torch.from_numpy(rng.draws[-1])
    # the numpy step draws E ~ Exp(1) (Gumbel-max as argmax(logits - log E)); the module draws u ~ U(0, 1]
    # (argmax(logits - log(-log u))): E = -log u
    ref_actions, ref_logprobs, ref_values = policy.act(
        obs, noise=noise if kind == "continuous" else torch.exp(-noise.double()).float())
    if kind == "continuous":
        assert np.allclose(actions, ref_actions.numpy(), atol=1e-6)
    else:
        assert (actions == ref_actions.numpy()).mean() > 0.999  # exp/log rounding may flip a near-tie
    same = torch.from_numpy(actions)
    ref_logprobs, _, ref_values = policy(obs, same)
    assert np.allclose(logprobs, ref_logprobs.detach().numpy(), atol=1e-5)
    assert np.allclose(values, ref_values.detach().numpy(), atol=1e-5)
    assert np.allclose(numpy_policy.value(obs.numpy()[:8]), policy.value(obs[:8]).detach().numpy(), atol=1e-5)
    with torch.no_grad():  # refresh() follows weight changes
        for p in policy.parameters():
            p.add_(0.1)
    numpy_policy.refresh()
    assert np.allclose(numpy_policy(obs.numpy()[:8])[2], policy.value(obs[:8]).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", list(SPECS))
def test_numpy_policy_samples_the_policy_distribution(kind):
    spec = SPECS[kind]
    torch.manual_seed(0)
    policy = Policy(OBS, spec, hidden_sizes=(16, 16), init_log_std=-0.3)
    numpy_policy = NumpyPolicy(policy, np.random.default_rng(0))
    obs = torch.randn(1, 5)
    sampled = numpy_policy(np.repeat(obs.numpy(), 20000, axis=0))[0]
    head = policy.head_and_value(obs)[0].detach()[0]
    if kind == "continuous":
        assert np.allclose(sampled.mean(0), head.numpy(), atol=0.02)
        assert np.allclose(sampled.std(0), policy.log_std.exp().detach().numpy(), rtol=0.03)
    else:
        for i, part in enumerate(torch.split(head, list(spec.nvec))):
            column = sampled if kind == "discrete" else sampled[:, i]
            freq = np.bincount(column, minlength=len(part)) / len(column)
            assert np.allclose(freq, torch.softmax(part, -1).numpy(), atol=0.015)


def test_numpy_policy_zero_exponential_draw_warns_nothing():
    """A float32 Exp(1) draw of exactly 0 (about 1 in 2^24) made numpy warn "divide by zero in log"."""

    class ZeroDraws:
        def __init__(self, rng):
            self.rng = rng

        def standard_exponential(self, shape, dtype):
            out = self.rng.standard_exponential(shape, dtype=dtype)
            out[:, 0] = 0.0  # E = 0 for action 0 of every row: action 0 must win
            return out

    torch.manual_seed(0)
    policy = NumpyPolicy(Policy(OBS, DISCRETE, hidden_sizes=(16, 16)), ZeroDraws(np.random.default_rng(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actions, logprobs, _ = policy(np.random.default_rng(1).standard_normal((64, 5), dtype=np.float32))
    assert (actions == 0).all() and np.isfinite(logprobs).all()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind", list(SPECS))
def test_numpy_rollout_noise_and_log_probs_at_once_equal_step_by_step(kind, masked):
    """The rollout draws all its steps' noise in one Generator call and computes the log-probs once after
    its loop: bit for bit what `__call__` gives step by step, and the Generator ends in the same state."""
    if masked and kind == "continuous":
        pytest.skip("masks are for categorical heads")
    spec = SPECS[kind]
    torch.manual_seed(0)
    policy = Policy(OBS, spec, hidden_sizes=(16, 16), init_log_std=-0.3)
    stepwise, split = NumpyPolicy(policy, np.random.default_rng(3)), NumpyPolicy(policy, np.random.default_rng(3))
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((32, 4, 5), dtype=np.float32)
    masks = [None] * 32
    if masked:  # random masks with a valid action in every part
        masks = rng.random((32, 4, spec.head_size)) < 0.6
        masks[:, :, np.cumsum((0, *spec.nvec[:-1]))] = True
    expected = [stepwise(o, m) for o, m in zip(obs, masks, strict=True)]
    noise = split.draw_noise(32, 4)
    steps = [split.sample(o, m, n) for o, m, n in zip(obs, masks, noise, strict=True)]
    heads, actions, values = ([step[i] for step in steps] for i in range(3))
    logp = split.log_prob(np.stack(heads) if split.categorical else None, np.stack(actions), noise)
    for t, (a, lp, v) in enumerate(expected):
        assert np.array_equal(a, actions[t]) and np.array_equal(lp, logp[t]) and np.array_equal(v, values[t])
        assert lp.dtype == logp.dtype == np.float32
    assert stepwise.rng.bit_generator.state == split.rng.bit_generator.state


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_fused_torch_step_matches_the_module(kind):
    spec = SPECS[kind]
    torch.manual_seed(0)
    policy = Policy(OBS, spec, hidden_sizes=(16, 16), init_log_std=-0.3)
    step = FusedTorchStep(policy)
    obs = torch.randn(4000, 5)
    actions, logprobs, values = step(obs)
    ref_logprobs, _, ref_values = policy(obs, actions)
    assert torch.allclose(logprobs, ref_logprobs, atol=1e-5)
    assert torch.allclose(values, ref_values.detach(), atol=1e-5)
    if kind == "discrete":  # sampled frequencies follow the policy's probabilities
        freq = torch.bincount(step(obs[:1].expand(4000, 5))[0], minlength=3).float() / 4000
        assert torch.allclose(freq, torch.softmax(policy.head_and_value(obs[:1])[0], -1)[0].detach(), atol=0.03)
    with torch.no_grad():  # refresh() follows weight changes
        for p in policy.parameters():
            p.add_(0.1)
    step.refresh()
    assert torch.allclose(step(obs[:8])[2], policy.value(obs[:8]).detach(), atol=1e-5)


@pytest.mark.parametrize("shared_trunk", [False, True])
@pytest.mark.parametrize("memory", ["lstm", "gru"])
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_numpy_recurrent_policy_equals_the_module_given_the_same_noise(kind, memory, shared_trunk):
    """NumpyRecurrentPolicy is derived from the module (Policy.fused_memory): for the same state, episode starts
    and noise, the same actions, log-probs, values and new states as Policy.act, up to float32 rounding."""
    spec = SPECS[kind]
    torch.manual_seed(0)
    policy = Policy(OBS, spec, hidden_sizes=(16, 8), memory=memory, memory_size=6, shared_trunk=shared_trunk,
                    init_log_std=-0.3)
    assert NumpyRecurrentPolicy.supported(policy) and not NumpyPolicy.supported(policy)
    with torch.no_grad():  # non-zero biases everywhere, so that a misplaced bias shows
        for name, p in policy.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    rng = RecordingRng()
    numpy_policy = NumpyRecurrentPolicy(policy, rng)
    obs, state = torch.randn(500, 5), torch.randn(500, policy.state_size)
    starts = torch.rand(500) < 0.3
    actions, logprobs, values, new_state = numpy_policy(obs.numpy(), None, state.numpy(), starts.numpy())
    assert logprobs.dtype == values.dtype == new_state.dtype == np.float32 and new_state.shape == state.shape
    noise = torch.from_numpy(rng.draws[-1])
    ref_actions, ref_logprobs, ref_values, ref_state = policy.act(
        obs, noise=noise if kind == "continuous" else torch.exp(-noise.double()).float(), state=state,
        episode_starts=starts)
    if kind == "continuous":
        assert np.allclose(actions, ref_actions.numpy(), atol=1e-5)
    else:
        assert (actions == ref_actions.numpy()).mean() > 0.99  # exp/log rounding may flip a near-tie
        same = actions == ref_actions.numpy()
        assert np.allclose(logprobs[same], ref_logprobs.numpy()[same], atol=1e-5)
    assert np.allclose(values, ref_values.numpy(), atol=1e-5)
    assert np.allclose(new_state, ref_state.numpy(), atol=1e-5)
    assert np.allclose(new_state[starts.numpy()], policy.act(obs[starts], state=torch.zeros_like(state[starts]))[3],
                       atol=1e-5)  # an episode start: from a zero state
    assert np.allclose(numpy_policy.value(obs.numpy()[:8], state.numpy()[:8]),
                       policy.value(obs[:8], state[:8]).detach().numpy(), atol=1e-5)


def test_numpy_rollout_of_a_recurrent_policy_is_replayed_by_the_update(tmp_path):
    """A recurrent run on the CPU rolls out in numpy; the update's sequence forward from the stored states
    reproduces the stored log-probs and values (states and episode starts stored right), and the carried state
    continues into the next rollout."""
    model = _model(tmp_path, memory="lstm", memory_size=8, hidden_sizes=(8,), num_minibatches=2)
    assert type(model.collector) is NumpyCollector and isinstance(model.collector.policy, NumpyRecurrentPolicy)
    buf = Rollout.allocate(32, 4, model.envs.obs_dim, model.spec, model.device, state_size=model.agent.state_size)
    obs = model.envs.reset()
    for _ in range(2):
        start = model._carry.state.clone()
        obs, last_value = model.collector.collect(buf, obs, [])
        assert torch.equal(buf.states[0], start) and bool(buf.episode_end.any())
        assert torch.equal(buf.episode_starts[1:], buf.episode_end[:-1])
        batch = model._batch(buf, *model._advantages(buf, last_value))
        with torch.no_grad():
            out = model._forward(batch)
        assert torch.allclose(out.logprobs, batch["logprobs"], atol=1e-5)
        assert torch.allclose(out.values, batch["values"], atol=1e-5)
        with torch.no_grad():
            expected = model.agent.value(obs, model._carry.state, model._carry.episode_starts)
        assert torch.allclose(last_value, expected, atol=1e-5)
    model.close()


def test_unfusable_policies_run_the_module():
    """A shared trunk (or, later, a CNN encoder or a memory core) falls back to Policy.act, not to an error."""
    for policy in (Policy(OBS, DISCRETE, shared_trunk=True), Policy(OBS, MULTI)):
        step = torch_policy_step(policy)
        assert not isinstance(step, FusedTorchStep)
        step.refresh()
        _, logprobs, values = step(torch.randn(4, 5))
        assert logprobs.shape == values.shape == (4,)
    assert not NumpyPolicy.supported(Policy(OBS, DISCRETE, shared_trunk=True))


def _model(tmp_path, **overrides):
    from ppox.rl.ppo import PPO

    return PPO("CartPole-v1", run_dir=tmp_path, num_envs=4, num_steps=32, progress=False, tensorboard=False,
               eval_episodes=0, **overrides)


@pytest.mark.parametrize(("overrides", "collector", "fused"), [
    ({}, CompiledCollector, None),  # the preset's twin and compiled update: the compiled rollout
    ({"compile": False}, NumpyCollector, None),  # CPU, twin or gymnasium envs: numpy
    ({"env_backend": "gymnasium"}, NumpyCollector, None),
    ({"rollout_backend": "torch"}, TorchCollector, True),  # asked for
    ({"env_backend": "torch"}, TorchCollector, True),  # torch envs step tensors
    ({"shared_trunk": True}, TorchCollector, False),  # numpy cannot run it: torch, the module's act
    ({"shared_trunk": True, "rollout_backend": "numpy"}, TorchCollector, False),  # the same, never an error
], ids=["auto", "eager", "gymnasium-envs", "torch-asked", "torch-envs", "shared-trunk", "numpy-asked-unsupported"])
def test_the_rollout_backend_is_chosen_from_the_config(tmp_path, overrides, collector, fused):
    model = _model(tmp_path, **overrides)
    assert type(model.collector) is collector
    if fused is not None:
        assert isinstance(model.collector.step, FusedTorchStep) is fused
    model.close()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_rollout_logprobs_give_ratio_one(env_id, backend, tmp_path):
    """The stored rollout log-probs are the torch network's: at the first minibatch ratio = 1, KL = 0."""
    from ppox.rl.ppo import PPO

    model = PPO(env_id, run_dir=tmp_path, num_envs=4, num_steps=32, progress=False, tensorboard=False,
                eval_episodes=0, norm_obs=True, norm_reward=True, rollout_backend=backend)
    assert type(model.collector) is {"numpy": NumpyCollector, "torch": TorchCollector}[backend]
    buf = Rollout.allocate(32, 4, model.envs.obs_dim, model.spec, model.device)
    obs = model._normalize(model.envs.reset(), update=True)
    next_obs, last_value = model.collector.collect(buf, obs, finished := [])
    flat_obs = buf.obs.reshape(-1, model.envs.obs_dim)
    with torch.no_grad():
        logprobs, _, values = model.agent(flat_obs, buf.actions.reshape(-1, *model.spec.action_shape))
    ratio = (logprobs - buf.logprobs.reshape(-1)).exp()
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    assert float((ratio - 1 - ratio.log()).mean()) < 1e-9  # approx_kl
    assert torch.allclose(values, buf.values.reshape(-1), atol=1e-5)
    assert torch.allclose(last_value, model.agent.value(next_obs).detach(), atol=1e-5)
    assert np.isfinite(buf.rewards.numpy()).all() and isinstance(finished, list)
    model.close()
