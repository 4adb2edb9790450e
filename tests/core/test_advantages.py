"""GAE against a plain reference: a forward sum of discounted TD errors within each episode."""

import torch

from ppox.core.advantages import gae, normalize


def reference_gae(rewards, values, next_values, terminated, episode_end, gamma, lam):
    T, N = rewards.shape
    adv = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            total, weight = 0.0, 1.0
            for u in range(t, T):
                bootstrap = 0.0 if terminated[u, n] else float(next_values[u, n])
                delta = float(rewards[u, n]) + gamma * bootstrap - float(values[u, n])
                total += weight * delta
                if episode_end[u, n]:
                    break
                weight *= gamma * lam
            adv[t, n] = total
    return adv


def test_gae_matches_reference_with_terminations_and_truncations():
    g = torch.Generator().manual_seed(0)
    T, N = 12, 3
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    terminated = torch.zeros(T, N, dtype=torch.bool)
    truncated = torch.zeros(T, N, dtype=torch.bool)
    terminated[3, 0] = terminated[9, 1] = True
    truncated[5, 0] = truncated[2, 2] = truncated[7, 2] = True
    episode_end = terminated | truncated
    last_value = torch.randn(N, generator=g, dtype=torch.float64)
    next_values = torch.cat([values[1:], last_value[None]])
    final_values = torch.randn(T, N, generator=g, dtype=torch.float64)  # V(final obs) at truncations
    next_values = torch.where(truncated, final_values, next_values)

    adv, ret = gae(rewards, values, next_values, terminated, episode_end, 0.99, 0.95)
    expected = reference_gae(rewards, values, next_values, terminated, episode_end, 0.99, 0.95)
    assert torch.allclose(adv, expected, atol=1e-10)
    assert torch.allclose(ret, adv + values)


def test_truncation_bootstraps_from_final_value_termination_does_not():
    rewards = torch.ones(1, 2)
    values = torch.zeros(1, 2)
    next_values = torch.full((1, 2), 10.0)
    terminated = torch.tensor([[True, False]])
    adv, _ = gae(rewards, values, next_values, terminated, torch.tensor([[True, True]]), 0.5, 1.0)
    assert adv.tolist() == [[1.0, 6.0]]


def test_lambda_one_gives_discounted_return_minus_value():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.25], [0.0]])
    next_values = torch.tensor([[0.25], [0.0], [4.0]])
    zeros = torch.zeros(3, 1, dtype=torch.bool)
    _, ret = gae(rewards, values, next_values, zeros, zeros, 0.9, 1.0)
    expected_return = 1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 4
    assert abs(float(ret[0, 0]) - expected_return) < 1e-5


def test_masked_normalize_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    out = normalize(x, m)
    assert out[0, 3] == 0.0
    assert torch.allclose(out[0, :3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
