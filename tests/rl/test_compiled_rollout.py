"""The compiled rollout (ppox.rl.compiled_rollout): for the actions it takes, the same episodes as the numpy twin
stepped one step at a time (states, rewards, ends, resets, episode statistics, generators); the policy's own `act`
and `value`; the ahead-of-time library equal to the function it was built from; the trainer's choice of rollout."""

import copy

import numpy as np
import pytest
import torch

from ppox.rl.buffer import Rollout
from ppox.rl.compiled_rollout import CompiledCollector, chunk_length, rollout_chunk
from ppox.rl.envs import NonFiniteEnvValue, VecEnv
from ppox.rl.policy import Policy
from ppox.rl.ppo import PPO
from ppox.rl.rollout import NumpyCollector, NumpyPolicy


class EagerLibrary:
    """The chunk function run eagerly in place of its compiled library (the semantics tests need no build)."""

    def __init__(self, fn):
        self.fn = fn

    def check(self, args):
        pass

    def call_unchecked(self, args):
        with torch.no_grad():
            return list(self.fn(*args))


def make(env_id, num_envs=3, num_steps=16, max_episode_steps=None, eager=True, hidden=(16,), seed=0,
         max_restarts=None):
    envs = VecEnv(env_id, num_envs, seed, torch.device("cpu"), backend="numpy", max_restarts=max_restarts)
    if max_episode_steps is not None:
        envs.envs.max_episode_steps = max_episode_steps
    torch.manual_seed(seed)
    policy = Policy(envs.single_observation_space, envs.spec, hidden)
    rng = np.random.default_rng(seed)
    fallback = NumpyCollector(envs, NumpyPolicy(policy, rng), num_steps, None, None)
    collector = CompiledCollector(envs, policy, num_steps, rng, fallback)
    if eager:
        chunk = rollout_chunk(policy, collector.torch_twin, collector.max_episode_steps, collector.chunk_steps)
        collector._build = lambda args: EagerLibrary(chunk)
    return envs, policy, collector


def buffer(envs, policy, num_steps):
    return Rollout.allocate(num_steps, envs.num_envs, envs.obs_dim, policy.spec, "cpu")


def test_chunk_length_divides_the_rollout():
    assert chunk_length(128) == 8
    assert chunk_length(12) == 6
    assert chunk_length(7) == 7
    assert chunk_length(11) == 1


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1",
                                    "MountainCarContinuous-v0"])
def test_the_same_episodes_as_the_numpy_twin_for_the_same_actions(env_id):
    num_steps = 16
    envs, policy, collector = make(env_id, num_steps=num_steps, max_episode_steps=7)
    obs = envs.reset()
    reference = copy.deepcopy(envs)
    buf = buffer(envs, policy, num_steps)
    for _rollout in range(3):  # the carry (states, counters, generators) crosses rollouts
        finished = []
        next_obs, last_value = collector.collect(buf, obs, finished)
        noise = collector._made[0]
        replayed, final_values = [], torch.zeros(num_steps, envs.num_envs)
        expected_obs = obs.numpy()
        for t in range(num_steps):
            np.testing.assert_allclose(buf.obs[t].numpy(), expected_obs, atol=1e-5)
            # the policy's own act on this observation and noise
            actions, logprobs, values = policy.act(buf.obs[t], noise=noise[t])
            torch.testing.assert_close(buf.actions[t], actions)
            torch.testing.assert_close(buf.logprobs[t], logprobs, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(buf.values[t], values, atol=1e-5, rtol=1e-5)
            result = reference.step(buf.actions[t].numpy())
            np.testing.assert_allclose(buf.rewards[t].numpy(), result.reward, atol=1e-5)
            np.testing.assert_array_equal(buf.terminated[t].numpy(), result.terminated)
            np.testing.assert_array_equal(buf.episode_end[t].numpy(), result.terminated | result.truncated)
            if result.truncated.any():
                idx = np.flatnonzero(result.truncated)
                final_values[t, idx] = policy.value(torch.from_numpy(result.final_obs[idx]))
            replayed.extend(zip(result.finished_returns, result.finished_lengths, strict=True))
            expected_obs = result.obs
        torch.testing.assert_close(buf.final_values, final_values, atol=1e-5, rtol=1e-5)
        assert len(finished) == len(replayed) > 0
        np.testing.assert_allclose([r for r, _ in finished], [r for r, _ in replayed], atol=1e-6)
        assert [n for _, n in finished] == [n for _, n in replayed]
        np.testing.assert_allclose(next_obs.numpy(), expected_obs, atol=1e-5)
        torch.testing.assert_close(last_value, policy.value(next_obs))
        # the envs of record end where stepping them would leave them: states, steps, generators, counters
        twin, ref_twin = envs.envs, reference.envs
        np.testing.assert_allclose(twin.state, ref_twin.state, atol=1e-9)
        np.testing.assert_array_equal(twin.elapsed_steps, ref_twin.elapsed_steps)
        assert [r.bit_generator.state for r in twin._rngs] == [r.bit_generator.state for r in ref_twin._rngs]
        ours, theirs = envs.state_dict(), reference.state_dict()
        np.testing.assert_allclose(ours["episode_return"], theirs["episode_return"], atol=1e-9)
        np.testing.assert_array_equal(ours["episode_length"], theirs["episode_length"])
        obs = next_obs


def test_gaussian_actions_are_clipped_for_the_env_only():
    envs, policy, collector = make("Pendulum-v1", num_steps=8)
    with torch.no_grad():
        policy.log_std.fill_(2.0)  # std e^2: many draws beyond the torque bounds of +-2
    buf = buffer(envs, policy, 8)
    collector.collect(buf, envs.reset(), [])
    assert buf.actions.abs().max() > 2.0  # the update sees the action that was sampled


def test_a_non_finite_state_goes_to_the_numpy_rollout_which_names_the_env():
    envs, policy, collector = make("CartPole-v1", num_steps=8)
    obs = envs.reset()
    state = envs.envs.state.copy()
    state[1, 2] = np.nan
    envs.envs.state = state
    with pytest.raises(NonFiniteEnvValue, match="environment 1"):
        collector.collect(buffer(envs, policy, 8), obs, [])


def test_a_non_finite_state_restarts_the_envs_with_max_env_restarts():
    envs, policy, collector = make("CartPole-v1", num_steps=8, max_restarts=1)
    obs = envs.reset()
    state = envs.envs.state.copy()
    state[0, 1] = np.nan
    envs.envs.state = state
    buf = buffer(envs, policy, 8)
    collector.collect(buf, obs, [])
    assert envs.restarts == 1
    assert torch.isfinite(buf.obs[1:]).all()


def test_a_per_step_callback_gets_the_numpy_rollout():
    envs, policy, collector = make("CartPole-v1", num_steps=8)
    seen = []
    collector.step_hook = lambda step, result: seen.append(step)
    collector.collect(buffer(envs, policy, 8), envs.reset(), [])
    assert seen == list(range(8))


def test_the_compiled_library_gives_what_the_function_gives():
    """The one ahead-of-time build of this file (a small policy, 2 envs, 8 steps per call): two rollouts equal to
    the eager function's, step for step."""
    results = []
    for eager in (True, False):
        envs, policy, collector = make("CartPole-v1", num_envs=2, num_steps=16, eager=eager, hidden=(8,))
        obs, buf, runs = envs.reset(), buffer(envs, policy, 16), []
        for _ in range(2):
            finished = []
            obs, last_value = collector.collect(buf, obs, finished)
            runs.append({k: getattr(buf, k).clone() for k in ("obs", "actions", "logprobs", "values", "rewards",
                                                               "episode_end", "final_values")}
                        | {"finished": finished, "next_obs": obs.clone(), "last_value": last_value.clone()})
        assert not collector._failed
        results.append(runs)
    for eager_run, compiled_run in zip(*results, strict=True):
        assert eager_run["finished"] == compiled_run["finished"]
        for key in eager_run:
            if key != "finished":
                torch.testing.assert_close(compiled_run[key], eager_run[key], atol=1e-5, rtol=1e-5)


def test_the_trainer_rolls_out_compiled_when_its_update_compiles(tiny):
    def collector(**kw):
        return type(PPO(tiny(**{"env_backend": "numpy", **kw})).collector).__name__

    assert collector(compile=True) == "CompiledCollector"
    assert collector(compile=False) == "NumpyCollector"
    assert collector(compile=True, rollout_backend="numpy") == "NumpyCollector"
    assert collector(compile=True, norm_obs=True) == "NumpyCollector"
    assert collector(compile=True, env_backend="gymnasium") == "NumpyCollector"
    assert collector(compile=True, memory="lstm") != "CompiledCollector"


def test_compile_auto_rolls_out_compiled_on_long_runs_only(tiny):
    model = PPO(tiny(env_backend="numpy", compile="auto"))
    assert type(model.collector).__name__ == "NumpyCollector"  # a short run stays eager, rollout too
    model._set_total_timesteps(10_000_000)  # learn(total_timesteps=...) decides again before a run starts
    assert type(model.collector).__name__ == "CompiledCollector"


def test_resume_after_a_kill_in_a_compiled_rollout_is_exact(tmp_path, monkeypatch):
    from tests.rl.test_checkpoint import TINY, Killed, assert_same_run

    kw = dict(TINY, env_backend="numpy", compile=True, checkpoint_every=2)
    ref, run = tmp_path / "ref", tmp_path / "run"
    model = PPO("CartPole-v1", run_dir=ref, **kw)
    assert type(model.collector) is CompiledCollector
    model.learn()
    calls, original = {"n": 0}, CompiledCollector.collect

    def collect(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:  # iteration 6: the checkpoint of iteration 4 is the latest
            raise Killed
        return original(self, *args)

    monkeypatch.setattr(CompiledCollector, "collect", collect)
    with pytest.raises(Killed):
        PPO("CartPole-v1", run_dir=run, **kw).learn()
    monkeypatch.setattr(CompiledCollector, "collect", original)
    resumed = PPO.resume(run)
    assert type(resumed.collector) is CompiledCollector
    resumed.learn()
    assert_same_run(ref, run)


def test_a_library_that_cannot_be_built_leaves_the_numpy_rollout(tmp_path, monkeypatch, capsys):
    from ppox.rl import aot

    monkeypatch.setenv("PPOX_CACHE_DIR", str(tmp_path))  # nothing cached: the first rollout builds

    def fail(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(aot, "build", fail)
    envs, policy, collector = make("CartPole-v1", num_steps=8, eager=False)
    buf, finished = buffer(envs, policy, 8), []
    obs, _ = collector.collect(buf, envs.reset(), finished)
    assert collector._failed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no C++ compiler here" in err and "the numpy rollout" in err
    collector.collect(buf, obs, finished)
    assert capsys.readouterr().err == ""  # said once
