"""Recurrent PPO (config memory "lstm"/"gru"): the cores' maths, state resets, the sequence update, predict,
evaluation, saving, exact resume and torchrun (docs/memory.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppox.core.update import PolicyOutput, ppo_update
from ppox.errors import ConfigError
from ppox.rl.buffer import Rollout
from ppox.rl.config import PPOConfig
from ppox.rl.policy import Policy, RecurrentCore
from ppox.rl.ppo import PPO
from ppox.rl.spaces import ActionSpec

from .test_checkpoint import Killed, assert_same_run, kill_at_env_step

OBS = spaces.Box(-10.0, 10.0, (5,))
DISCRETE = ActionSpec("discrete", nvec=(3,), start=(0,))
QUIET = dict(tensorboard=False, progress=False, live_doctor=False)
TINY = dict(QUIET, memory="lstm", memory_size=16, hidden_sizes=(16,), num_envs=4, num_steps=16,
            num_minibatches=2, update_epochs=2, total_timesteps=4 * 16 * 6, eval_episodes=0)


# ---------------------------------------------------------------------------- the cores
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_core_is_torchs_lstm_and_gru(kind):
    """Without resets the core is nn.LSTM / nn.GRU on the same weights, as a sequence and step by step."""
    torch.manual_seed(0)
    core = RecurrentCore(kind, 6, 5)
    ref = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(6, 5)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(core.cell, name))
    x = torch.randn(7, 3, 6)
    h0 = torch.randn(3, 5)
    c0 = torch.randn(3, 5)
    state = torch.cat([h0, c0], -1) if kind == "lstm" else h0
    out, final = core(x, state, torch.zeros(7, 3, dtype=torch.bool))
    ref_out, ref_final = ref(x, (h0[None], c0[None]) if kind == "lstm" else h0[None])
    assert torch.allclose(out, ref_out, atol=1e-6)
    ref_state = torch.cat([ref_final[0][0], ref_final[1][0]], -1) if kind == "lstm" else ref_final[0]
    assert torch.allclose(final, ref_state, atol=1e-6)
    # one step at a time gives the same as the sequence
    s = state
    for t in range(7):
        step_out, s = core(x[t], s, torch.zeros(3, dtype=torch.bool))
        assert torch.allclose(step_out, out[t], atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_state_resets_exactly_at_episode_starts(kind):
    """Env 0 starts an episode at t=3: from there its outputs are those of a fresh zero state; env 1 (no
    start) is untouched by env 0's reset."""
    torch.manual_seed(1)
    core = RecurrentCore(kind, 4, 6)
    x = torch.randn(6, 2, 4)
    state = torch.randn(2, core.state_size)
    starts = torch.zeros(6, 2, dtype=torch.bool)
    starts[3, 0] = True
    out, _ = core(x, state, starts)
    fresh, _ = core(x[3:, :1], torch.zeros(1, core.state_size), torch.zeros(3, 1, dtype=torch.bool))
    assert torch.allclose(out[3:, 0], fresh[:, 0], atol=1e-6)
    kept, _ = core(x[:3, :1], state[:1], torch.zeros(3, 1, dtype=torch.bool))
    assert torch.allclose(out[:3, 0], kept[:, 0], atol=1e-6)  # before the start, the carried state
    no_reset, _ = core(x[:, 1:], state[1:], torch.zeros(6, 1, dtype=torch.bool))
    assert torch.allclose(out[:, 1], no_reset[:, 0], atol=1e-6)


def _step_by_step(core: RecurrentCore, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor):
    """The rollout's path: one core step per time step. x (T, batch, n) -> (T, batch, size), final state."""
    outputs = []
    for t in range(x.shape[0]):
        out, state = core(x[t], state, starts[t])
        outputs.append(out)
    return torch.stack(outputs), state


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sequence_kernel_equals_the_step_by_step_path(kind):
    """The update's sequence path (torch's fused kernel over segments cut at episode starts, padded) gives the
    rollout's step-by-step outputs, final states and parameter gradients: starts at t=0, mid-sequence, two in
    a row, at the last step; one env without any start; one that starts at every step."""
    torch.manual_seed(2)
    core = RecurrentCore(kind, 5, 6)
    steps, batch = 9, 5
    x = torch.randn(steps, batch, 5)
    state = torch.randn(batch, core.state_size)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0, 0] = starts[4, 0] = True  # env 0: reset at 0 and mid-sequence
    starts[2, 1] = starts[3, 1] = starts[8, 1] = True  # env 1: two in a row, one at the last step
    starts[:, 3] = True  # env 3: every step; env 2 and env 4: none
    starts[6, 4] = False

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, list(core.parameters())))

    ref_out, ref_state = _step_by_step(core, x, state, starts)
    ref_grads = grads((ref_out ** 2).sum())
    out, final = core(x, state, starts)
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(final, ref_state, atol=1e-5)
    padded_out, none = core(x, state, starts, final_state=False)  # the update's call: padded, no final state
    assert none is None and torch.allclose(padded_out, ref_out, atol=1e-5)
    for g, ref in zip(grads((padded_out ** 2).sum()), ref_grads, strict=True):
        assert torch.allclose(g, ref, atol=1e-5)
    # the compiled update's trace (RecurrentCore.unrolled): the one-step path itself, step by step
    core.unrolled = True
    unrolled_out, unrolled_state = core(x, state, starts)
    core.unrolled = False
    assert torch.equal(unrolled_out, ref_out) and torch.equal(unrolled_state, ref_state)
    # no start inside the sequence: one kernel run on the sequences themselves
    calm = torch.zeros_like(starts)
    calm[0, 1] = True
    ref_out, ref_state = _step_by_step(core, x, state, calm)
    out, final = core(x, state, calm)
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(final, ref_state, atol=1e-5)


@pytest.mark.parametrize("shared_trunk", [False, True])
def test_policy_state_layout_and_parameters(shared_trunk):
    policy = Policy(OBS, DISCRETE, (8,), memory="gru", memory_size=4, shared_trunk=shared_trunk)
    assert policy.recurrent and not policy.fusable and policy.fused_mlp() is None
    assert policy.state_size == (4 if shared_trunk else 8)  # the critic's own core with separate trunks
    names = [n for n, _ in policy.named_parameters()]
    assert "core.cell.weight_hh" in names and ("critic_core.cell.weight_hh" in names) != shared_trunk
    assert policy.actor_head.in_features == 4
    obs = torch.randn(5, 5)
    actions, logprobs, values, state = policy.act(obs, state=policy.initial_state(5),
                                                  episode_starts=torch.ones(5, dtype=torch.bool))
    assert actions.shape == logprobs.shape == values.shape == (5,) and state.shape == (5, policy.state_size)
    assert Policy(OBS, DISCRETE).initial_state(3) is None


def test_config_validates_sequences():
    with pytest.raises(ConfigError, match="bptt_length must divide"):
        PPOConfig(memory="lstm", num_steps=128, bptt_length=30)
    with pytest.raises(ConfigError, match="sequences are not divisible"):
        PPOConfig(memory="lstm", num_envs=3, num_steps=128, num_minibatches=4)
    with pytest.raises(ConfigError, match="memory_size"):
        PPOConfig(memory="gru", memory_size=0)
    PPOConfig(memory="gru", num_envs=4, num_steps=128, bptt_length=32, num_minibatches=16)


# ---------------------------------------------------------------------------- rollout and update
def _collect(model: PPO) -> tuple[Rollout, dict[str, torch.Tensor]]:
    cfg = model.config
    if model._next_obs is None:
        model._next_obs = model.envs.reset()
    buf = Rollout.allocate(cfg.num_steps, cfg.num_envs, (model.obs_dim,), model.spec, model.device,
                           state_size=model.agent.state_size)
    last_value = model._collect(buf, [])
    return buf, model._batch(buf, *model._advantages(buf, last_value))


@pytest.mark.parametrize("rollout_backend", ["auto", "torch"])  # auto: numpy (NumpyRecurrentPolicy)
@pytest.mark.parametrize("bptt_length", [None, 4])
@pytest.mark.parametrize("memory", ["lstm", "gru"])
def test_update_replays_the_rollout_exactly(memory, bptt_length, rollout_backend):
    """The update's sequence forward, from the stored states, reproduces the rollout's log-probs and values:
    the states, episode starts and the sequence layout are stored right (CartPole: many episode starts)."""
    model = PPO("CartPole-v1", **dict(TINY, memory=memory, bptt_length=bptt_length, num_steps=32,
                                      rollout_backend=rollout_backend))
    for _ in range(2):  # the second rollout starts from the state the first one carried
        start_state = model._carry.state.clone()
        buf, batch = _collect(model)
        assert torch.equal(buf.states[0], start_state)
        assert bool(buf.episode_end.any())
        length = bptt_length or 32
        assert batch["obs"].shape == (4 * 32 // length, length, 4) and batch["state"].shape[0] == 4 * 32 // length
        with torch.no_grad():
            out = model._forward(batch)
        assert torch.allclose(out.logprobs, batch["logprobs"], atol=1e-5)
        assert torch.allclose(out.values, batch["values"], atol=1e-5)
        assert torch.equal(buf.episode_starts[1:], buf.episode_end[:-1])  # an episode starts after each end


def test_sequence_minibatches_cover_each_envs_steps_once_per_epoch():
    model = PPO("CartPole-v1", **dict(TINY, bptt_length=4, num_minibatches=4))
    buf, batch = _collect(model)
    steps, envs = buf.rewards.shape
    ids = torch.arange(steps * envs).reshape(steps, envs)  # step t of env e
    batch["ids"] = model._batch(buf, ids.float(), ids.float())["advantages"].long()
    seen: list[torch.Tensor] = []

    def forward(mb):
        seen.append(mb["ids"])
        zeros = torch.zeros_like(mb["logprobs"], requires_grad=True)
        return PolicyOutput(zeros, zeros, zeros)

    ppo_update(batch, forward, torch.optim.SGD(model.agent.parameters(), lr=0.0), model.agent.parameters(),
               model.objective, update_epochs=3, num_minibatches=4, max_grad_norm=None)
    assert len(seen) == 12
    for epoch in range(3):
        ids_epoch = torch.cat([mb.reshape(-1) for mb in seen[epoch * 4:(epoch + 1) * 4]])
        assert torch.equal(ids_epoch.sort().values, torch.arange(steps * envs))  # every step once
    for mb in seen:  # each row: 4 consecutive steps of one env
        t, e = mb // envs, mb % envs
        assert bool((e == e[:, :1]).all()) and bool((t.diff(dim=1) == 1).all())


def test_compiled_update_of_memory_is_ahead_of_time_only(monkeypatch):
    from ppox.rl.fast import CompiledUpdate

    policy = Policy(OBS, DISCRETE, (8,), memory="lstm", memory_size=4)
    make = lambda: CompiledUpdate(policy, torch.optim.Adam(policy.parameters()),  # noqa: E731
                                  PPOConfig().update_objective(), 0.5, compile=False)
    assert make().supported  # on a CPU: the ahead-of-time library replays sequences step by step
    monkeypatch.setenv("PPOX_AOT", "0")  # torch.compile (as on a GPU) cannot hold the kernel's padded segments
    assert not make().supported


def test_a_recurrent_step_that_cannot_be_built_leaves_the_update_to_the_eager_loop(tmp_path, monkeypatch):
    """A failed ahead-of-time build (noted by ppox.rl.aot) hands the update to the trainer's eager loop: the run
    trains on, and later updates do not try to build again."""
    from ppox.rl import aot

    calls = []
    monkeypatch.setattr(aot, "load_or_build_or_none", lambda *args, **kwargs: calls.append(1))
    model = PPO("CartPole-v1", run_dir=tmp_path / "run", **dict(TINY, compile=True))
    before = [p.detach().clone() for p in model.agent.parameters()]
    model.learn()
    assert calls == [1] and not model._compiled_update.supported
    assert model.summary["compile"] is True and model.iteration == 6
    assert any(not torch.equal(a, b) for a, b in zip(before, model.agent.parameters(), strict=True))


@pytest.mark.parametrize("memory", ["lstm", "gru"])
def test_compiled_recurrent_update_matches_the_eager_one(tmp_path, monkeypatch, memory):
    """The ahead-of-time update (sequences unrolled step by step, resets included) takes the weights and Adam's
    state where the eager update (torch's kernel over padded segments) takes them, statistics included."""
    from ppox.rl.fast import CompiledUpdate

    monkeypatch.setenv("PPOX_CACHE_DIR", str(tmp_path / "cache"))
    kw = dict(TINY, memory=memory, memory_size=8, hidden_sizes=(8,), num_steps=8, update_epochs=2)
    eager = PPO("CartPole-v1", **kw, compile=False)
    _collect(eager)  # one rollout so that the second has episode starts inside sequences
    _, batch = _collect(eager)
    assert bool(batch["episode_starts"][:, 1:].any())
    compiled = PPO("CartPole-v1", **kw, compile=False)
    compiled.agent.load_state_dict(eager.agent.state_dict())
    update = CompiledUpdate(compiled.agent, compiled.optimizer, compiled.objective, compiled.config.max_grad_norm,
                            compile=True)
    assert update.supported
    results = [eager._update(batch, torch.Generator().manual_seed(0)),
               update.update(batch, update_epochs=2, num_minibatches=2, generator=torch.Generator().manual_seed(0))]
    assert update._aot_steps, "the ahead-of-time step was not used"
    for p, q in zip(eager.agent.parameters(), compiled.agent.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), (p - q).abs().max()
    for key, value in results[0].stats.items():
        assert results[1].stats[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert results[0].optimizer_steps == results[1].optimizer_steps == 4


# ---------------------------------------------------------------------------- predict, evaluate, save, resume
def test_predict_carries_state_and_save_load_round_trips(tmp_path):
    model = PPO("CartPole-v1", run_dir=tmp_path / "run", **TINY).learn()
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    actions, state = model.predict(obs)
    assert actions.shape == (3,) and state.shape == (3, model.agent.state_size)
    again, state2 = model.predict(obs, state=state, episode_start=np.zeros(3, bool))
    restarted, _ = model.predict(obs, state=state, episode_start=np.ones(3, bool))
    assert np.array_equal(restarted, actions)  # an episode start forgets the state
    assert not np.allclose(state2, state)
    one, one_state = model.predict(obs[0])
    assert one == actions[0] and one_state.shape == (1, model.agent.state_size)
    loaded = PPO.load(tmp_path / "run")
    assert loaded.agent.recurrent
    a2, s2 = loaded.predict(obs, state=state, episode_start=np.zeros(3, bool))
    assert np.array_equal(a2, again) and np.allclose(s2, state2)
    result = loaded.evaluate(episodes=3)
    assert result["episodes"] == 3
    with pytest.raises(TypeError, match="deterministic= by keyword"):
        model.predict(obs, False)


@pytest.mark.parametrize("memory,shared_trunk", [("lstm", False), ("lstm", True), ("gru", True), ("gru", False)])
def test_resume_after_kill_is_exact_for_a_recurrent_run(tmp_path, monkeypatch, memory, shared_trunk):
    """The carried state is part of the checkpoint: killed mid-run and resumed = the uninterrupted run."""
    kw = dict(TINY, total_timesteps=4 * 16 * 6, checkpoint_every=2, memory=memory, shared_trunk=shared_trunk)
    ref, run = tmp_path / "ref", tmp_path / "run"
    PPO("CartPole-v1", run_dir=ref, **kw).learn()
    kill_at_env_step(monkeypatch, 16 * 3 + 5)
    with pytest.raises(Killed):
        PPO("CartPole-v1", run_dir=run, **kw).learn()
    PPO.resume(run).learn()
    assert_same_run(ref, run)


# ---------------------------------------------------------------------------- torchrun and learning (slow)
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_torchrun_recurrent_run_has_identical_weights(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ppox",
           "train", "CartPole-v1", "--memory", "lstm", "--memory-size", "16", "--mask-velocity",
           "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--total-timesteps", str(2 * 4 * 16 * 4),
           "--run-dir", str(run), "--no-progress", "--no-tensorboard", "--eval-episodes", "2"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_identical_across_ranks"]


# the shipped preset the README shows (100k steps, velocities hidden, LSTM); the MLP run only drops the memory
LEARN = dict(QUIET, preset="cartpole-no-velocity", eval_episodes=20, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lstm_learns_cartpole_without_velocities_where_an_mlp_cannot(tmp_path):
    """CartPole-v1 with its two velocities zeroed (a POMDP): LSTM PPO with the shipped preset
    cartpole-no-velocity (99,328 steps) balances for hundreds of steps; the same budget and hyperparameters
    without memory stay near 42. Measured on the default path (numpy rollout, the update compiled ahead of time),
    seeds 1-8: LSTM eval 328.2, 500.0, 375.3, 269.7, 421.9, 293.6, 358.3, 429.1 (before the ahead-of-time
    libraries' exp-based tanh: 498.4, 372.2, 382.0, 328.3, 419.2, 244.8, 472.4, 255.3; eager with the torch
    rollout, seeds 1-5: 447.4, 312.9, 477.7, 269.6, 364.8); MLP, seeds 1-4: 40.8, 42.2, 42.3, 43.6. Whether a
    seed reaches 475 in 100k steps moves with the last bits of the arithmetic, so the thresholds are what every
    measured seed meets."""
    lstm = PPO("CartPole-v1", run_dir=tmp_path / "lstm", **LEARN).learn()
    mlp = PPO("CartPole-v1", memory="none", run_dir=tmp_path / "mlp", **LEARN).learn()
    assert lstm.summary["eval_return_mean"] >= 240, lstm.summary
    assert mlp.summary["eval_return_mean"] < 100, mlp.summary

