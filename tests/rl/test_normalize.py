"""The running statistics of ppox.rl.normalize: hand-computed values, and the numpy path (the CPU rollout's, once per
env step) giving the torch path's statistics to the bit."""

import numpy as np
import pytest
import torch

from ppox.errors import PPOXError
from ppox.rl.normalize import ObsNormalizer, RewardScaler, RunningMeanStd
from ppox.rl.ppo import PPO


@pytest.mark.parametrize("path", ["torch", "numpy"])
def test_running_mean_std_by_hand(path):
    rms = RunningMeanStd((1,), epsilon=1e-4)
    update = rms.update if path == "torch" else rms.update_np
    as_batch = torch.tensor if path == "torch" else np.array
    update(as_batch([[1.0], [3.0]]))  # batch mean 2, batch variance 1, two rows; prior: mean 0, var 1, count 1e-4
    total = 1e-4 + 2
    assert rms.mean.item() == pytest.approx(2 * 2 / total, rel=1e-12)
    assert rms.var.item() == pytest.approx((1e-4 + 2 + 4 * 1e-4 * 2 / total) / total, rel=1e-12)
    assert rms.count.item() == pytest.approx(total, rel=1e-15)
    mean, var = rms.mean.item(), rms.var.item()
    update(as_batch([[5.0]]))  # one row: delta = 5 - mean, variance of the batch 0
    delta, count = 5.0 - mean, total
    total += 1
    assert rms.mean.item() == pytest.approx(mean + delta / total, rel=1e-12)
    assert rms.var.item() == pytest.approx((var * count + delta**2 * count / total) / total, rel=1e-12)
    assert rms.count.item() == pytest.approx(total, rel=1e-15)
    assert rms.mean.dtype == rms.var.dtype == rms.count.dtype == torch.float64


@pytest.mark.parametrize("num_envs", [1, 3])
def test_numpy_path_gives_the_torch_paths_statistics(num_envs):
    rng = np.random.default_rng(0)
    by_torch, by_numpy = ObsNormalizer(5), ObsNormalizer(5)
    scale_torch, scale_numpy = RewardScaler(num_envs, 0.99), RewardScaler(num_envs, 0.99)
    for _ in range(300):
        obs = (rng.normal(size=(num_envs, 5)) * [1, 10, 100, 0.1, 1e3]).astype(np.float32)
        a = by_torch(torch.from_numpy(obs), update=True).numpy()
        b = by_numpy.normalize_np(obs, update=True)
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        reward = rng.normal(size=num_envs).astype(np.float32) * 5
        end = rng.random(num_envs) < 0.1
        a = scale_torch(torch.from_numpy(reward), torch.from_numpy(end)).numpy()
        b = scale_numpy.scale_np(reward, end)
        assert a.dtype == b.dtype == np.float32
        # torch divides the float32 rewards in float32 (a 0-dim float64 tensor does not promote them), numpy in
        # float64: the scaled rewards agree to float32 rounding, the statistics below to the bit
        np.testing.assert_allclose(a, b, rtol=2e-7)
    for one, other in ((by_torch.state_dict(), by_numpy.state_dict()),
                       (scale_torch.state_dict(), scale_numpy.state_dict())):
        assert one.keys() == other.keys()
        for k in one:  # one env: the same bits; more: torch and numpy sum a batch's rows in their own orders
            torch.testing.assert_close(one[k], other[k], rtol=0 if num_envs == 1 else 1e-12, atol=0)
    final = (rng.normal(size=(2, 5)) * 50).astype(np.float32)  # without an update: clipped at ±10
    np.testing.assert_allclose(by_torch(torch.from_numpy(final), update=False).numpy(),
                               by_numpy.normalize_np(final, update=False), rtol=0 if num_envs == 1 else 1e-6)


def test_an_update_never_writes_into_tensors_handed_out():
    rms = RunningMeanStd((2,))
    rms.update_np(np.ones((1, 2)))
    mean, var, count = rms.mean, rms.var, rms.count
    before = [mean.clone(), var.clone(), count.clone()]
    assert rms.mean is mean  # the same tensor until the next update
    rms.update_np(np.full((1, 2), 7.0))
    assert rms.mean is not mean and not torch.equal(rms.mean, mean)
    assert all(torch.equal(t, b) for t, b in zip((mean, var, count), before, strict=True))
    var = rms.var.clone()
    rms.mean = torch.zeros(2, dtype=torch.float64)  # setting one statistic keeps the others (ranks' pooling does)
    assert torch.equal(rms.var, var) and rms.count.item() == pytest.approx(1e-4 + 2)
    rms.update_np(np.full((1, 2), 2.0))
    assert rms.mean.tolist() == pytest.approx([2 / (1e-4 + 3)] * 2)


def test_a_numpy_update_to_non_finite_statistics_is_seen_by_predict():
    """predict checks the weights and statistics again only when one changed: a numpy update replaces them."""
    model = PPO("Pendulum-v1", num_envs=1, norm_obs=True, progress=False, total_timesteps=64, num_steps=64)
    obs = np.zeros(3, np.float32)
    model.predict(obs)
    model.obs_norm.rms.update_np(np.full((1, 3), np.inf))
    with pytest.raises(PPOXError, match="not finite"):
        model.predict(obs)
    model.close()
