"""Every supported space trains for an iteration; unsupported ones get a clear error."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppox import PPO
from ppox.errors import EnvError
from ppox.rl.spaces import action_distribution, action_spec, encode_obs, obs_dim


class ToyEnv(gym.Env):
    """Reward 1 when the first action component equals the first obs feature's parity."""

    def __init__(self, observation_space, action_space, horizon: int = 10):
        self.observation_space = observation_space
        self.action_space = action_space
        self.horizon = horizon

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # observations drawn from the env's own seeded RNG (the env checker asks)
            self.observation_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 1.0, False, self.t >= self.horizon, {}


BOX = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
OBS_SPACES = {
    "box": BOX,
    "box2d": spaces.Box(0, 255, (2, 3), dtype=np.uint8),
    "discrete": spaces.Discrete(5, start=2),
    "dict": spaces.Dict({"a": BOX, "b": spaces.Discrete(3)}),
    "tuple": spaces.Tuple((spaces.Discrete(2), BOX)),
}
ACTION_SPACES = {
    "discrete": spaces.Discrete(3, start=1),
    "box": spaces.Box(-2.0, 2.0, (2,), dtype=np.float32),
    "multidiscrete": spaces.MultiDiscrete([2, 3]),
}


@pytest.mark.parametrize("obs_name", list(OBS_SPACES))
@pytest.mark.parametrize("act_name", list(ACTION_SPACES))
def test_each_space_trains_and_predicts(tiny, obs_name, act_name):
    obs_space, act_space = OBS_SPACES[obs_name], ACTION_SPACES[act_name]
    model = PPO(tiny(env_id="toy", total_timesteps=64), env_fn=lambda: ToyEnv(obs_space, act_space))
    model.learn()
    action = model.predict(obs_space.sample())
    assert act_space.contains(np.asarray(action, dtype=act_space.dtype))
    model.close()


def test_encoding():
    assert obs_dim(OBS_SPACES["dict"]) == 6
    x = encode_obs(np.array([2, 6]), OBS_SPACES["discrete"])
    assert x.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    d = encode_obs({"a": np.ones((2, 3), np.float32), "b": np.array([0, 2])}, OBS_SPACES["dict"])
    assert d.shape == (2, 6) and d[1].tolist() == [1, 1, 1, 0, 0, 1]


@pytest.mark.parametrize(
    "space",
    [spaces.MultiBinary(3), spaces.Text(5), spaces.Box(-1, 1, (2, 2))],
)
def test_unsupported_action_spaces(space):
    with pytest.raises(EnvError, match="not supported"):
        action_spec(space)


def test_unsupported_observation_space_names_it(tiny):
    bad = spaces.Dict({"t": spaces.Text(4)})
    with pytest.raises(EnvError, match=r"Text.*not supported; ppox supports Box, Discrete"):
        PPO(tiny(env_id="toy"), env_fn=lambda: ToyEnv(bad, spaces.Discrete(2)))


def test_distributions_match_torch_distributions():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    spec = action_spec(spaces.Discrete(4))
    a = action_distribution(spec).sample(logits, None, deterministic=False)
    logp, ent = action_distribution(spec).log_prob_entropy(logits, None, a)
    ref = torch.distributions.Categorical(logits=logits)
    assert torch.allclose(logp, ref.log_prob(a)) and torch.allclose(ent, ref.entropy())

    mean, log_std = torch.randn(5, 2), torch.tensor([0.3, -0.5])
    spec = action_spec(ACTION_SPACES["box"])
    a = action_distribution(spec).sample(mean, log_std, deterministic=False)
    logp, ent = action_distribution(spec).log_prob_entropy(mean, log_std, a)
    ref = torch.distributions.Normal(mean, log_std.exp())
    assert torch.allclose(logp, ref.log_prob(a).sum(-1), atol=1e-5)
    assert torch.allclose(ent, ref.entropy().sum(-1), atol=1e-5)

    spec = action_spec(ACTION_SPACES["multidiscrete"])
    logits = torch.randn(5, 5)
    a = action_distribution(spec).sample(logits, None, deterministic=False)
    logp, _ = action_distribution(spec).log_prob_entropy(logits, None, a)
    ref = (torch.distributions.Categorical(logits=logits[:, :2]).log_prob(a[:, 0])
           + torch.distributions.Categorical(logits=logits[:, 2:]).log_prob(a[:, 1]))
    assert torch.allclose(logp, ref)


def test_gumbel_sampling_has_the_right_frequencies():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(200_000, 3)
    a = action_distribution(action_spec(spaces.Discrete(3))).sample(logits, None, deterministic=False)
    freq = torch.bincount(a, minlength=3).float() / a.numel()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.005)
