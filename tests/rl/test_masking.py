"""Invalid-action masking: the masked distributions' maths, where masks come from, the rollout and update that
store and use them, predict and evaluation (docs/memory.md)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppox.errors import EnvError
from ppox.rl.config import PPOConfig
from ppox.rl.envs import VecEnv
from ppox.rl.ppo import PPO
from ppox.rl.rollout import NumpyCollector, TorchCollector
from ppox.rl.spaces import Categorical, MultiCategorical

QUIET = dict(tensorboard=False, progress=False, live_doctor=False, eval_episodes=0)


# ---------------------------------------------------------------------------- the distributions
def test_masked_logits_get_no_probability_and_no_gradient():
    head = torch.zeros(2, 5, requires_grad=True)
    mask = torch.tensor([[True, False, True, False, True], [False, True, True, True, True]])
    dist = Categorical((5,))
    logp, entropy = dist.log_prob_entropy(head, None, torch.tensor([2, 1]), mask)
    assert torch.allclose(logp, torch.tensor([-math.log(3), -math.log(4)]))
    assert torch.allclose(entropy, torch.tensor([math.log(3), math.log(4)]))  # over the valid actions only
    (logp.sum() + entropy.sum()).backward()
    assert bool((head.grad[~mask] == 0).all()) and bool((head.grad[mask] != 0).any())
    draws = torch.stack([dist.sample(torch.randn(2, 5), None, False, mask) for _ in range(300)])
    assert bool(mask.gather(1, draws.T).all())  # never a masked action
    assert dist.sample(torch.full((2, 5), -1.0).index_fill(1, torch.tensor([3]), 9.0), None, True, mask).tolist() \
        == [0, 3]  # the argmax among the valid ones


def test_multidiscrete_masks_are_per_sub_space():
    dist = MultiCategorical((3, 2))
    head = torch.zeros(1, 5, requires_grad=True)
    mask = torch.tensor([[False, True, True, True, False]])  # sub-space 0: {1, 2}; sub-space 1: {0}
    logp, entropy = dist.log_prob_entropy(head, None, torch.tensor([[2, 0]]), mask)
    assert torch.allclose(logp, torch.tensor([-math.log(2)])) and torch.allclose(entropy, torch.tensor([math.log(2)]))
    logp.sum().backward()
    assert bool((head.grad[~mask] == 0).all())
    for _ in range(50):
        a = dist.sample(torch.randn(1, 5), None, False, mask)[0].tolist()
        assert a[0] in (1, 2) and a[1] == 0


# ---------------------------------------------------------------------------- envs with masks
class Trap(gym.Env):
    """Discrete(4): each step a random half of the actions is invalid; an invalid action ends the episode with
    reward -100 (catastrophic), a valid one pays +1. The mask comes from `action_masks()`, info or the obs."""

    invalid_taken = 0

    def __init__(self, source: str = "method", multi: bool = False) -> None:
        self.source, self.multi = source, multi
        obs = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.observation_space = spaces.Dict({"x": obs, "action_mask": spaces.MultiBinary(4)}) \
            if source == "obs" else obs
        self.action_space = spaces.MultiDiscrete([2, 2]) if multi else spaces.Discrete(4)
        self.rng = np.random.default_rng(0)

    def _new(self):
        self.mask = np.ones(4, bool)
        self.mask[self.rng.choice(4, 2, replace=False) if not self.multi else [0, 3]] = False
        x = self.mask.astype(np.float32) * 2 - 1  # the observation shows the mask
        obs = {"x": x, "action_mask": self.mask.astype(np.int8)} if self.source == "obs" else x
        return obs, ({"action_mask": self.mask.copy()} if self.source == "info" else {})

    def action_masks(self):
        if self.source != "method":
            raise AttributeError("action_masks")
        return self.mask.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self._new()

    def step(self, action):
        valid = bool(self.mask[int(action[0]) * 0 + 1] and self.mask[2 + int(action[1])]) if self.multi \
            else bool(self.mask[int(action)])
        if not valid:
            Trap.invalid_taken += 1
        self.t += 1
        obs, info = self._new()
        return obs, (1.0 if valid else -100.0), not valid, self.t >= 20, info


@pytest.mark.parametrize("source", ["method", "info", "obs"])
def test_mask_sources(source):
    envs = VecEnv(None, 3, 0, torch.device("cpu"), env_fn=lambda: Trap(source))
    envs.reset()
    assert envs._mask_source == source and envs.action_mask.shape == (3, 4) and envs.action_mask.sum(1).tolist() \
        == [2, 2, 2]
    if source == "obs":  # the mask is not an input of the policy
        assert "action_mask" not in envs.single_observation_space.spaces and envs.obs_dim == 4
    result = envs.step(torch.zeros(3, dtype=torch.long))
    assert result.action_mask.shape == (3, 4) and np.array_equal(result.action_mask.numpy(), envs.action_mask)
    envs.close()
    off = VecEnv(None, 2, 0, torch.device("cpu"), env_fn=lambda: Trap(source), action_masks=False)
    off.reset()
    assert off.action_mask is None
    off.close()


class Shaped(Trap):
    """action_masks() in another form: a python list, a (1, 4) array (reshaped, as before), or one entry."""

    form = "list"

    def action_masks(self):
        mask = super().action_masks()
        return {"list": mask.tolist(), "row": mask[None], "short": mask[:1]}[Shaped.form]


@pytest.mark.parametrize("form", ["list", "row", "short"])
def test_masks_read_through_the_bound_methods_are_the_calls_results(form):
    """The sync read calls each sub-env's bound action_masks() (no lookup through the wrappers per call): the
    same masks as SyncVectorEnv.call; a mask of another length is the one-line error, never broadcast."""
    Shaped.form = form
    envs = VecEnv(None, 3, 0, torch.device("cpu"), env_fn=Shaped)
    if form == "short":
        with pytest.raises(EnvError, match=r"action mask has 1 entries per env; .* needs 4"):
            envs.reset()
        envs.close()
        return
    envs.reset()
    for _ in range(5):
        expected = np.stack([np.asarray(m).reshape(-1) for m in envs.envs.call("action_masks")])
        assert envs.action_mask.dtype == bool and np.array_equal(envs.action_mask, expected)
        envs.step(np.argmax(envs.action_mask, axis=1))
    first = envs._mask_fns[1]
    envs.envs = envs._make_gym_vector_env(False)  # what a restart does: the new envs' own methods are read
    envs.reset()
    assert envs._mask_fns[1] is not first and envs._mask_fns[0] is envs.envs
    assert np.array_equal(envs.action_mask, np.stack([np.asarray(m).reshape(-1)
                                                      for m in envs.envs.call("action_masks")]))
    envs.close()


def test_the_compiled_update_takes_the_masks():
    """The compiled update's step (ppox.rl.fast.minibatch_step, here run uncompiled: the function that is
    compiled) reads a masked batch's `action_mask` as the eager update does: same weights and statistics."""
    import copy

    from ppox.core.objective import ObjectiveConfig
    from ppox.core.update import PolicyOutput, ppo_update
    from ppox.rl.fast import CompiledUpdate
    from ppox.rl.policy import Policy
    from ppox.rl.spaces import ActionSpec

    torch.manual_seed(0)
    eager = Policy(spaces.Box(-1.0, 1.0, (5,)), ActionSpec("discrete", nvec=(6,), start=(0,)), hidden_sizes=(16,))
    fast = copy.deepcopy(eager)
    obs = torch.randn(64, 5)
    mask = torch.rand(64, 6) < 0.5
    mask[torch.arange(64), torch.randint(0, 6, (64,))] = True
    with torch.no_grad():
        actions, logprobs, values = eager.act(obs, action_mask=mask)
    batch = {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values, "action_mask": mask,
             "advantages": torch.randn(64), "returns": torch.randn(64)}
    settings = ObjectiveConfig(ent_coef=0.01)
    eager_opt = torch.optim.Adam(eager.parameters(), lr=1e-2, eps=1e-5)
    update = CompiledUpdate(fast, torch.optim.Adam(fast.parameters(), lr=1e-2, eps=1e-5), settings, 0.5,
                            compile=False)
    def forward(mb):
        return PolicyOutput(*eager(mb["obs"], mb["actions"], action_mask=mb["action_mask"]))

    r_eager = ppo_update(batch, forward, eager_opt, eager.parameters(), settings, update_epochs=2, num_minibatches=4,
                         max_grad_norm=0.5, generator=torch.Generator().manual_seed(1))
    r_fast = update.update(batch, update_epochs=2, num_minibatches=4, generator=torch.Generator().manual_seed(1))
    for p, q in zip(eager.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4)
    for k, v in r_eager.stats.items():
        assert r_fast.stats[k] == pytest.approx(v, rel=1e-3, abs=1e-5), k
    # about half the actions masked: the entropy is that of the valid ones, far below the unmasked log(6)
    assert r_fast.stats["entropy"] < math.log(6) - 0.2


class NoValid(Trap):
    def _new(self):
        obs, info = super()._new()
        if self.t == 3:
            self.mask[:] = False
        return obs, info


def test_a_state_without_valid_actions_is_one_error_naming_the_step():
    envs = VecEnv(None, 2, 0, torch.device("cpu"), env_fn=NoValid)
    envs.reset()
    with pytest.raises(EnvError, match=r"environment 0 of .* offers no valid action.* at step 3 of its episode"):
        for _ in range(5):
            envs.step(np.argmax(envs.action_mask, axis=1))
    envs.close()


@pytest.mark.parametrize("rollout_backend", ["numpy", "torch"])
@pytest.mark.parametrize("source", ["method", "info", "obs"])
def test_a_masked_agent_never_takes_an_invalid_action(tmp_path, rollout_backend, source):
    Trap.invalid_taken = 0
    model = PPO(PPOConfig(**QUIET), env_fn=lambda: Trap(source), run_dir=tmp_path, rollout_backend=rollout_backend,
                num_envs=4, num_steps=32, total_timesteps=4 * 32 * 4)
    expected = NumpyCollector if rollout_backend == "numpy" else TorchCollector
    assert isinstance(model.collector, expected)
    Trap.invalid_taken = 0  # gymnasium's env checker (PPO checks a user's env) steps random actions
    model.learn()
    assert Trap.invalid_taken == 0
    model.evaluate(episodes=4)
    assert Trap.invalid_taken == 0
    env = Trap(source)
    obs, _ = env.reset(seed=3)
    for _ in range(30):  # predict honours the env's mask (given, or the Dict observation's own entry)
        action = model.predict(obs, action_masks=None if source == "obs" else env.mask, deterministic=False)
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            obs, _ = env.reset()
    assert Trap.invalid_taken == 0


def test_the_update_uses_the_stored_masks():
    """The update's log-probs of the rollout's actions equal the rollout's own (masked) ones: ratio 1 at the
    first minibatch. Without the stored masks they would differ by log(2) (2 of 4 actions valid)."""
    model = PPO(PPOConfig(**QUIET), env_fn=lambda: Trap("method"), num_envs=4, num_steps=16)
    model._next_obs = model.envs.reset()
    from ppox.rl.buffer import Rollout

    buf = Rollout.allocate(16, 4, 4, model.spec, model.device, mask=True)
    last = model._collect(buf, [])
    batch = model._batch(buf, *model._advantages(buf, last))
    assert batch["action_mask"].shape == (64, 4)
    with torch.no_grad():
        out = model._forward(batch)
        unmasked = model.agent(batch["obs"], batch["actions"])[0]
    assert torch.allclose(out.logprobs, batch["logprobs"], atol=1e-5)
    assert not torch.allclose(unmasked, batch["logprobs"], atol=1e-2)


def test_multidiscrete_masked_agent(tmp_path):
    Trap.invalid_taken = 0
    model = PPO(PPOConfig(**QUIET), env_fn=lambda: Trap("method", multi=True), run_dir=tmp_path, num_envs=2,
                num_steps=16, total_timesteps=2 * 16 * 3)
    Trap.invalid_taken = 0  # gymnasium's env checker steps random actions
    model.learn()
    assert Trap.invalid_taken == 0


def test_lstm_with_masks_in_one_run(tmp_path):
    """Memory and masks together (sb3-contrib cannot combine RecurrentPPO and MaskablePPO)."""
    Trap.invalid_taken = 0
    model = PPO(PPOConfig(**QUIET), env_fn=lambda: Trap("info"), run_dir=tmp_path, memory="lstm", memory_size=8,
                hidden_sizes=(8,), num_envs=2, num_steps=16, num_minibatches=2, total_timesteps=2 * 16 * 3)
    Trap.invalid_taken = 0  # gymnasium's env checker steps random actions
    model.learn()
    assert Trap.invalid_taken == 0 and model.agent.recurrent


def test_lstm_mask_and_cnn_in_one_run(tmp_path):
    """LSTM + action mask + CNN encoder in one run: image observations, a third action that is always masked."""
    from tests.rl.pixel_envs import PixelPick

    class MaskedPick(PixelPick):
        taken = 0

        def __init__(self) -> None:
            super().__init__()
            self.action_space = spaces.Discrete(3)

        def action_masks(self):
            return np.array([True, True, False])

        def step(self, action):
            MaskedPick.taken += int(action) == 2
            return super().step(min(int(action), 1))

    def make():
        return gym.wrappers.TimeLimit(MaskedPick(), 16)

    model = PPO(PPOConfig(**QUIET), env_fn=make, run_dir=tmp_path, memory="lstm", memory_size=8, encoder="cnn",
                num_envs=2, num_steps=16, num_minibatches=2, total_timesteps=2 * 16 * 3)
    assert model.agent.recurrent and type(model.agent.actor_body).__name__ != "MLPEncoder"
    MaskedPick.taken = 0  # gymnasium's env checker steps random actions
    model.learn()
    assert MaskedPick.taken == 0
    model.evaluate(episodes=2)
    assert MaskedPick.taken == 0
