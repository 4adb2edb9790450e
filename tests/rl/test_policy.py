"""The policy module (ppox.rl.policy): its composition, initialisation, saved layout, heads and fused export."""

import math

import pytest
import torch
from gymnasium import spaces
from torch.func import functional_call

from ppox.rl.policy import ENCODERS, MLPEncoder, NoMemory, Policy, make_encoder
from ppox.rl.spaces import ActionSpec, Categorical, DiagGaussian, MultiCategorical, action_distribution

OBS = spaces.Box(-10.0, 10.0, (5,))
DISCRETE = ActionSpec("discrete", nvec=(3,), start=(0,))
CONTINUOUS = ActionSpec("continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0))
MULTI = ActionSpec("multidiscrete", nvec=(3, 2), start=(0, 0))
SPECS = {"discrete": DISCRETE, "continuous": CONTINUOUS, "multidiscrete": MULTI}


@pytest.mark.parametrize("shared_trunk", [False, True])
def test_parameter_names_and_order_are_those_of_saved_models(shared_trunk):
    """Model files, checkpoints (optimizer state by index) and the same-seed record depend on them."""
    policy = Policy(OBS, CONTINUOUS, hidden_sizes=(8, 4), shared_trunk=shared_trunk)
    body = ["0.weight", "0.bias", "2.weight", "2.bias"]
    # the module's own parameter (log_std) first, then the submodules' in the order they were made
    expected = (["log_std"] + [f"actor_body.{k}" for k in body]
                + ([] if shared_trunk else [f"critic_body.{k}" for k in body])
                + ["actor_head.weight", "actor_head.bias", "critic_head.weight", "critic_head.bias"])
    assert [n for n, _ in policy.named_parameters()] == expected
    assert list(policy.state_dict()) == expected
    assert "log_std" not in dict(Policy(OBS, DISCRETE).named_parameters())


def test_initialisation_of_the_37_details():
    torch.manual_seed(0)
    policy = Policy(OBS, CONTINUOUS, hidden_sizes=(16, 8), init_log_std=-0.5)

    def gain(layer):  # orthogonal W: W W^T = gain^2 I (rows <= columns) or W^T W = gain^2 I
        w = layer.weight.detach()
        m = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        return math.sqrt(float(m.diagonal().mean()))

    for body in (policy.actor_body, policy.critic_body):
        assert all(gain(layer) == pytest.approx(math.sqrt(2), rel=1e-4) for layer in body.linears())
    assert gain(policy.actor_head) == pytest.approx(0.01, rel=1e-4)
    assert gain(policy.critic_head) == pytest.approx(1.0, rel=1e-4)
    assert all(float(p.detach().abs().max()) == 0 for n, p in policy.named_parameters() if n.endswith("bias"))
    assert torch.equal(policy.log_std.detach(), torch.full((2,), -0.5))


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = Policy(OBS, DISCRETE)
    torch.manual_seed(3)
    b = Policy(OBS, DISCRETE)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_encoder_registry_and_memory_core():
    encoder = make_encoder(OBS, (8, 4), "relu")
    assert isinstance(encoder, MLPEncoder) and encoder.out_features == 4 and "mlp" in ENCODERS
    assert encoder(torch.randn(3, 5)).shape == (3, 4)
    features = torch.randn(3, 4)
    out, state = NoMemory()(features, None, torch.zeros(3, dtype=torch.bool))
    assert out is features and state is None


@pytest.mark.parametrize("shared_trunk", [False, True])
@pytest.mark.parametrize("kind", list(SPECS))
def test_forward_act_value_and_policy_action_agree(kind, shared_trunk):
    spec = SPECS[kind]
    torch.manual_seed(0)
    policy = Policy(OBS, spec, hidden_sizes=(16, 8), shared_trunk=shared_trunk, init_log_std=-0.3)
    obs = torch.randn(64, 5)
    actions, logprobs, values = policy.act(obs)
    assert actions.shape == (64, *spec.action_shape) and logprobs.shape == values.shape == (64,)
    ref_logprobs, entropy, ref_values = policy(obs, actions)
    assert torch.allclose(logprobs, ref_logprobs) and torch.equal(values, ref_values)
    assert entropy.shape == (64,) and bool((entropy > 0).all())
    assert torch.equal(policy.value(obs), ref_values)
    head, _ = policy.head_and_value(obs)
    expected = head if kind == "continuous" else (
        head.argmax(-1) if kind == "discrete" else torch.stack([p.argmax(-1) for p in head.split([3, 2], -1)], -1))
    assert torch.equal(policy.policy_action(obs, deterministic=True), expected)


@pytest.mark.parametrize("shared_trunk", [False, True])
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_functional_call_is_the_module(kind, shared_trunk):
    """The compiled update runs the module through torch.func.functional_call: bit-identical to calling it."""
    torch.manual_seed(0)
    policy = Policy(OBS, SPECS[kind], hidden_sizes=(16, 8), activation="relu" if shared_trunk else "tanh",
                    shared_trunk=shared_trunk)
    obs = torch.randn(7, 5)
    actions = policy.act(obs)[0]
    got = functional_call(policy, dict(policy.named_parameters()), (obs, actions))
    for x, y in zip(got, policy(obs, actions), strict=True):
        assert torch.equal(x, y)


def test_categorical_mask_excludes_actions():
    torch.manual_seed(0)
    policy = Policy(OBS, ActionSpec("discrete", nvec=(4,), start=(0,)))
    obs = torch.randn(2000, 5)
    mask = torch.tensor([True, False, True, False]).expand(2000, 4)
    actions, logprobs, _ = policy.act(obs, action_mask=mask)
    assert set(actions.tolist()) == {0, 2}
    lp, entropy, _ = policy(obs, actions, action_mask=mask)
    assert torch.allclose(lp, logprobs) and bool(torch.isfinite(entropy).all())
    # two allowed actions: entropy at most log 2, and the masked log-probabilities sum to (almost) nothing
    assert float(entropy.max()) <= math.log(2) + 1e-6
    assert torch.equal(policy.policy_action(obs, True, mask) % 2, torch.zeros(2000, dtype=torch.long))
    other, _, _ = policy(obs, torch.ones(2000, dtype=torch.long), action_mask=mask)
    assert float(other.max()) < -1e6


def test_multicategorical_mask_per_component():
    dist = MultiCategorical((3, 2))
    head = torch.zeros(500, 5)
    mask = torch.tensor([False, True, False, True, False]).expand(500, 5)
    actions = dist.sample(head, None, deterministic=False, mask=mask)
    assert bool((actions[:, 0] == 1).all()) and bool((actions[:, 1] == 0).all())
    logp, entropy = dist.log_prob_entropy(head, None, actions, mask)
    assert torch.allclose(logp, torch.zeros(500)) and torch.allclose(entropy, torch.zeros(500), atol=1e-6)


def test_action_distribution_per_space_and_noise_argument():
    assert type(action_distribution(DISCRETE)) is Categorical
    assert type(action_distribution(MULTI)) is MultiCategorical
    assert type(action_distribution(CONTINUOUS)) is DiagGaussian
    head, log_std = torch.zeros(4, 2), torch.log(torch.tensor([1.0, 2.0]))
    noise = torch.ones(4, 2)
    assert torch.equal(DiagGaussian().sample(head, log_std, False, noise=noise), torch.tensor([[1.0, 2.0]] * 4))
    u = torch.tensor([[0.9, 0.1, 0.5]])  # Gumbel-max with given uniforms: argmax(logits - log(-log u))
    assert int(Categorical((3,)).sample(torch.zeros(1, 3), None, False, noise=u)) == 0


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fused_mlp_is_the_module(activation):
    torch.manual_seed(0)
    policy = Policy(OBS, MULTI, hidden_sizes=(16, 8), activation=activation)
    fused = policy.fused_mlp()
    act = torch.tanh if activation == "tanh" else torch.relu
    obs = torch.randn(9, 5)
    h = obs
    for i, (b, w) in enumerate(fused.layers):
        h = act(torch.addmm(b, h, w)) if i < len(fused.layers) - 1 else torch.addmm(b, h, w)
    head, value = policy.head_and_value(obs)
    assert fused.head_size == 5 and fused.activation == activation
    assert torch.allclose(h[:, :5], head, atol=1e-6) and torch.allclose(h[:, 5], value, atol=1e-6)


def test_fused_mlp_is_none_where_the_architecture_is_not_fusable():
    assert Policy(OBS, DISCRETE, shared_trunk=True).fused_mlp() is None
    policy = Policy(OBS, DISCRETE)
    policy.core = torch.nn.Identity()  # stands for a memory core: not an MLP any more
    assert not policy.fusable and policy.fused_mlp() is None
