"""The CUDA-graph rollout (ppox.rl.graphed_rollout), run without the graph on a CPU: for the actions it takes, the
same episodes as the batched torch env stepped one step at a time (states, rewards, ends, resets from the pre-drawn
initial states, episode statistics, V(final obs) at truncations, the env written back); the policy's own `act` and
`value`; dynamo traces its step whole; a training run learns with it; and, where a GPU is present, the graph's
replay equals the loop run without it."""

import copy

import pytest
import torch

from ppox.rl.buffer import Rollout
from ppox.rl.envs import NonFiniteEnvValue, VecEnv
from ppox.rl.graphed_rollout import GraphedCollector
from ppox.rl.policy import Policy
from ppox.rl.ppo import PPO
from ppox.rl.rollout import TorchCollector


def make(env_id, num_envs=5, num_steps=16, max_episode_steps=None, device="cpu", capture=False, compile=False,
         seed=0):
    envs = VecEnv(env_id, num_envs, seed, torch.device(device), backend="torch")
    if max_episode_steps is not None:
        envs.envs.max_episode_steps = max_episode_steps
    torch.manual_seed(seed)
    policy = Policy(envs.single_observation_space, envs.spec, (16,)).to(device)
    fallback = TorchCollector(envs, policy, num_steps, None, None)
    collector = GraphedCollector(envs, policy, num_steps, fallback, compile=compile, capture=capture)
    return envs, policy, collector


def buffer(envs, policy, num_steps, device="cpu"):
    return Rollout.allocate(num_steps, envs.num_envs, envs.obs_dim, policy.spec, device)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1",
                                    "MountainCarContinuous-v0"])
def test_the_same_episodes_as_the_torch_env_for_the_same_actions(env_id):
    num_steps = 16
    envs, policy, collector = make(env_id, num_steps=num_steps, max_episode_steps=7)
    obs = envs.reset()
    env = envs.envs
    twin = collector.torch_twin
    buf = buffer(envs, policy, num_steps)
    for _rollout in range(3):  # the carry (state, counters) crosses rollouts
        state, elapsed = env._state.clone(), env.elapsed_steps.long().clone()
        counters = envs.state_dict()
        episode_return = torch.from_numpy(counters["episode_return"]).clone()
        episode_length = torch.from_numpy(counters["episode_length"]).clone()
        finished = []
        next_obs, last_value = collector.collect(buf, obs, finished)
        fresh, noise = collector._static["fresh"], collector._static["noise"]
        used = torch.zeros(envs.num_envs, dtype=torch.long)
        expected_finished = []
        expected_obs = obs
        for t in range(num_steps):
            torch.testing.assert_close(buf.obs[t], expected_obs)
            actions, logprobs, values = policy.act(buf.obs[t], noise=noise[t])  # the policy's own act and noise
            torch.testing.assert_close(buf.actions[t], actions)
            torch.testing.assert_close(buf.logprobs[t], logprobs)
            torch.testing.assert_close(buf.values[t], values)
            if policy.spec.kind == "continuous":  # the env gets clipped actions, the buffer keeps the sample
                actions = actions.clamp(torch.as_tensor(policy.spec.low), torch.as_tensor(policy.spec.high))
            next_state, reward, terminated = twin.physics(state, actions)
            elapsed = elapsed + 1
            truncated = elapsed >= 7
            done = terminated | truncated
            episode_return, episode_length = episode_return + reward.double(), episode_length + 1
            torch.testing.assert_close(buf.rewards[t], reward.float())
            assert torch.equal(buf.terminated[t], terminated) and torch.equal(buf.episode_end[t], done)
            final_obs = twin.observe(next_state)
            expected_final = torch.where(truncated, policy.value(final_obs), 0.0)
            torch.testing.assert_close(buf.final_values[t], expected_final)
            for i in torch.nonzero(done).flatten().tolist():
                expected_finished.append((episode_return[i].item(), int(episode_length[i])))
            reset = fresh[torch.arange(envs.num_envs), used].T
            state = torch.where(done, reset, next_state)
            used = used + done.long()
            elapsed = torch.where(done, 0, elapsed)
            episode_return = torch.where(done, 0.0, episode_return)
            episode_length = torch.where(done, 0, episode_length)
            expected_obs = twin.observe(state)
        assert len(finished) == len(expected_finished) > 0
        for (r, n), (er, en) in zip(sorted(finished), sorted(expected_finished), strict=True):
            assert r == pytest.approx(er, rel=1e-6) and n == en
        # the env of record carries on from the rollout's end
        torch.testing.assert_close(env._state, state)
        assert torch.equal(env.elapsed_steps.long(), elapsed)
        counters = envs.state_dict()
        torch.testing.assert_close(torch.from_numpy(counters["episode_return"]), episode_return)
        assert torch.equal(torch.from_numpy(counters["episode_length"]), episode_length)
        torch.testing.assert_close(next_obs, expected_obs)
        torch.testing.assert_close(last_value, policy.value(expected_obs))
        obs = next_obs


def test_initial_states_come_from_the_envs_reset_range_and_generator():
    envs, policy, collector = make("CartPole-v1", num_envs=64, num_steps=8)
    obs = envs.reset()
    env = envs.envs
    before = env._generator.get_state()
    collector.collect(buffer(envs, policy, 8), obs, [])
    fresh = collector._static["fresh"]
    assert fresh.shape == (64, 8, env.state_dim)
    assert (fresh >= -0.05).all() and (fresh <= 0.05).all() and fresh.std() > 0.01  # CartPole's U(-0.05, 0.05)
    assert not torch.equal(env._generator.get_state(), before)  # the env's own generator drew them


def test_a_rollout_with_a_step_callback_or_a_non_finite_value_goes_to_the_torch_rollout():
    envs, policy, collector = make("CartPole-v1", num_steps=8)
    obs = envs.reset()
    buf = buffer(envs, policy, 8)
    seen = []
    collector.step_hook = lambda step, result: seen.append(step)
    collector.collect(buf, obs, [])
    assert seen == list(range(8))
    collector.step_hook = None
    envs.envs._state[1, 2] = float("nan")  # a non-finite state: the torch rollout names the env
    before = envs.envs._generator.get_state()
    calls = []
    fallback = collector.fallback.collect

    def counted(*args):
        calls.append(torch.equal(envs.envs._generator.get_state(), before))  # from the same generator state
        return fallback(*args)

    collector.fallback.collect = counted
    with pytest.raises(NonFiniteEnvValue, match="environment 2"):
        collector.collect(buf, obs, [])
    assert calls == [True]


def test_the_step_traces_whole_with_dynamo(monkeypatch):
    """fullgraph: the step a GPU compiles has no graph break (checked with the eager backend: no code generation)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, fullgraph=True, backend="aot_eager"))
    envs, policy, collector = make("CartPole-v1", num_steps=4, compile=True)
    obs = envs.reset()
    reference = copy.deepcopy(collector)
    reference._step = collector._step._torchdynamo_orig_callable  # the same function, not compiled
    buf, ref_buf = buffer(envs, policy, 4), buffer(envs, policy, 4)
    generator = envs.envs._generator.get_state()
    torch.manual_seed(3)
    collector.collect(buf, obs, [])
    reference.envs.envs._generator.set_state(generator)
    torch.manual_seed(3)
    reference.collect(ref_buf, obs, [])
    for name in ("obs", "actions", "logprobs", "values", "rewards", "episode_end", "final_values"):
        torch.testing.assert_close(getattr(buf, name), getattr(ref_buf, name))


def test_only_a_gpu_run_with_torch_envs_gets_it():
    envs = VecEnv("CartPole-v1", 2, 0, torch.device("cpu"), backend="torch")
    policy = Policy(envs.single_observation_space, envs.spec, (8,))
    assert "not on a GPU" in GraphedCollector.why_not(envs, policy, None, None)
    model = PPO("CartPole-v1", env_backend="torch", num_envs=2, num_steps=8, compile=False, progress=False)
    assert isinstance(model.collector, TorchCollector)


def test_it_runs_ppox_torch_envs_stepped_as_they_are():
    cpu = torch.device("cpu")
    envs = VecEnv("CartPole-v1", 2, 0, cpu, backend="torch")
    assert envs.torch_env is envs.envs
    assert VecEnv("CartPole-v1", 2, 0, cpu, backend="torch", mask_velocity=True).torch_env is None  # hidden velocities
    assert VecEnv("CartPole-v1", 2, 0, cpu, backend="numpy").torch_env is None
    assert VecEnv("CartPole-v1", 2, 0, cpu, backend="torch").twin is None  # and the reverse


@pytest.mark.slow
def test_a_run_with_it_learns_cartpole(tmp_path):
    """The rollout loop the graph captures, in a training run (no graph on a CPU): CartPole's training return
    rises from ~22 (random) past 120 in 59k steps (measured: 170, 290, 281 at seeds 1-3)."""
    model = PPO("CartPole-v1", env_backend="torch", num_envs=16, num_steps=128, num_minibatches=4, update_epochs=4,
                learning_rate=2.5e-3, total_timesteps=29 * 2048, seed=1, compile=False, progress=False,
                run_dir=tmp_path / "run")
    model.collector = GraphedCollector(model.envs, model.agent, 128, model.collector, capture=False, compile=False)
    model.learn()
    assert sum(model.recent_returns) / len(model.recent_returns) > 120


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_graph_replays_the_loop_on_a_gpu(monkeypatch):
    """The captured rollout (compiled step, CUDA graph) equals the same loop run eagerly on the GPU, given the same
    noise: three rollouts, so each starts where the last one wrote the env back (TF32 off, as in the reference)."""
    monkeypatch.setenv("PPOX_TF32", "0")
    kw = {"num_envs": 256, "num_steps": 16, "device": "cuda", "max_episode_steps": 9}
    envs, policy, collector = make("CartPole-v1", capture=True, compile=True, **kw)
    ref_envs, _, reference = make("CartPole-v1", **kw)
    load = reference._load_start

    def load_with_the_same_noise(obs):
        load(obs)
        reference._static["noise"].copy_(collector._static["noise"])

    reference._load_start = load_with_the_same_noise
    obs, ref_obs = envs.reset(), ref_envs.reset()
    buf, ref_buf = buffer(envs, policy, 16, "cuda"), buffer(envs, policy, 16, "cuda")
    for _ in range(3):
        finished, ref_finished = [], []
        obs, value = collector.collect(buf, obs, finished)
        assert collector._graph is not None and not collector._failed
        ref_obs, ref_value = reference.collect(ref_buf, ref_obs, ref_finished)
        torch.testing.assert_close(collector._static["fresh"], reference._static["fresh"])
        for name in ("obs", "actions", "logprobs", "values", "rewards", "episode_end", "final_values"):
            torch.testing.assert_close(getattr(buf, name), getattr(ref_buf, name), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(obs, ref_obs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value, ref_value, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(envs.envs._state, ref_envs.envs._state, atol=1e-5, rtol=1e-5)
        assert len(finished) == len(ref_finished) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_compiled_gpu_run_is_graphed_end_to_end_and_learns(tmp_path, capsys):
    """Rollout, GAE and update each one CUDA graph replay per iteration (no fallback said), and CartPole learns:
    training return from ~22 (random) past 100 in 2M steps at 1024 envs (measured on an H200: 171.7)."""
    from ppox.rl.fast import GraphedFunction

    model = PPO("CartPole-v1", env_backend="torch", device="cuda", num_envs=1024, num_steps=32, learning_rate=2.5e-3,
                total_timesteps=2_000_000, seed=1, compile=True, progress=False, run_dir=tmp_path / "run")
    assert isinstance(model.collector, GraphedCollector)
    model.learn()
    assert "failed" not in capsys.readouterr().err
    assert model.collector._graph is not None and model._compiled_update._graph is not None
    assert isinstance(model._gae_graph[1], GraphedFunction)
    train = sum(model.recent_returns) / len(model.recent_returns)
    print(f"training return {train:.1f}, eval {model.summary['eval_return_mean']}")
    assert train > 100
