"""Batched PyTorch versions of gymnasium's classic-control environments.

Every environment keeps the state of all ``num_envs`` copies in one tensor and
steps them with a handful of tensor ops, so thousands of copies run at once on
CPU or GPU (Isaac-Gym style). The physics is a line-by-line port of
``gymnasium.envs.classic_control`` (same state + action gives the same next
state, reward and termination), wrapped in gymnasium's ``VectorEnv`` API with
the registered ``TimeLimit`` and ``SAME_STEP`` autoreset built in.

Returned observations, rewards and flags are torch tensors on the env's device;
the ``*_space`` attributes are ordinary (numpy) gymnasium spaces describing
their shapes and bounds, so ``env.action_space.sample()`` can be passed to
``step`` directly.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ppox.envs.constants import Acrobot, CartPole, ClassicControl, ContinuousMountainCar, MountainCar, Pendulum
from ppox.envs.randomization import (
    DEPLOYABLE_KEY,
    PRIVILEGED_KEY,
    RANDOMIZED_ENV_IDS,
    Randomization,
    observation_space,
    randomized_base,
)

__all__ = [
    "TORCH_ENV_IDS",
    "AcrobotTorchVecEnv",
    "CartPoleTorchVecEnv",
    "ContinuousMountainCarTorchVecEnv",
    "MountainCarTorchVecEnv",
    "PendulumTorchVecEnv",
    "TorchClassicControlVecEnv",
    "make_torch_vec_env",
]


class TorchClassicControlVecEnv(ClassicControl, VectorEnv[torch.Tensor, torch.Tensor, torch.Tensor]):
    """Base class: state bookkeeping, TimeLimit, SAME_STEP autoreset, seeding.

    Subclasses inherit one environment's parameters, spaces and reset range
    from ``ppox.envs.constants`` first and describe its maths through
    ``_dynamics`` and ``_observe``; those work on whole batches and never
    loop over envs.

    The state is stored transposed, ``(state_dim, num_envs)``, so each state
    variable is a contiguous row: the physics is written per variable, and
    elementwise ops on contiguous rows are cheaper than on strided columns.

    Attributes:
        state: ``(num_envs, state_dim)`` view in ``physics_dtype``, laid out
            like gymnasium's ``env.unwrapped.state``. Writable (tests use it).
        elapsed_steps: ``(num_envs,)`` int32 steps taken in the current episode.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": [],
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    # float32 unless float32 cannot reproduce gymnasium's float64 maths to 1e-5.
    default_physics_dtype: torch.dtype = torch.float32

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        max_episode_steps: int | None = None,
        physics_dtype: torch.dtype | None = None,
        randomization: Randomization | None = None,
        privileged: bool = True,
    ) -> None:
        """Create ``num_envs`` copies on ``device``.

        Args:
            num_envs: number of parallel environments.
            device: torch device for state and all returned tensors.
            seed: seeds the env's ``torch.Generator``; ``None`` for a random one.
            dtype: floating dtype of returned observations and rewards.
            max_episode_steps: TimeLimit; defaults to the registered spec's.
            physics_dtype: dtype of the internal state and maths; defaults to
                the class's ``default_physics_dtype``.
            randomization: per-env parameter ranges sampled at each reset of an
                env (``ppox.envs.randomization``); observations are then a Dict
                of "obs" and "privileged" tensors.
            privileged: False: with randomisation, the "obs" tensor alone (the
                task as a deployed policy sees it).
        """
        self._init_vector(num_envs, max_episode_steps)
        self.randomization = randomization
        self.privileged = privileged
        if randomization is not None:
            randomization.check(self.env_id, self.randomizable)
            self.single_observation_space = observation_space(self.single_observation_space, randomization, privileged)
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.device = torch.device(device)
        self.dtype = dtype
        self.physics_dtype = physics_dtype or self.default_physics_dtype

        # One generator for all envs: each draw covers the whole batch (one
        # value per env and variable), so no Python loop over envs is needed.
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

        self._reset_low, self._reset_high = self._reset_bounds(None)
        self._state = self._sample_initial_state()
        self.elapsed_steps = torch.zeros(self.num_envs, dtype=torch.int32, device=self.device)
        if randomization is not None:
            self._params = self._sample_params()  # (k, num_envs) sampled values, in randomization.names() order
            self._apply_params()
            # past actions, newest first: (max_delay + 1, num_envs, *action_shape)
            self._actions = None

    # ------------------------------------------------------------------ API

    @property
    def state(self) -> torch.Tensor:
        """Physical state, ``(num_envs, state_dim)``, gymnasium's layout."""
        return self._state.T

    @state.setter
    def state(self, value: torch.Tensor | np.ndarray) -> None:
        value = torch.as_tensor(value, dtype=self.physics_dtype, device=self.device)
        if value.shape != (self.num_envs, self.state_dim):
            raise ValueError(
                f"state must have shape {(self.num_envs, self.state_dim)}, got {tuple(value.shape)}"
            )
        # Copy so later writes by the caller cannot alias the env's state.
        self._state = value.T.clone(memory_format=torch.contiguous_format)

    @torch.no_grad()
    def reset(
        self,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset all envs; ``options`` takes gymnasium's reset-bound keys.

        Bounds given in ``options`` also apply to later autoresets (as in
        gymnasium's ``CartPoleVectorEnv``) until the next ``reset``.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._generator.manual_seed(seed)
        self._reset_low, self._reset_high = self._reset_bounds(options)
        self._state = self._sample_initial_state()
        self.elapsed_steps.zero_()
        if self.randomization is not None:
            self._params = self._sample_params()
            self._apply_params()
        return self._observation(self._state), {}

    @torch.no_grad()
    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step all envs, autoresetting finished ones in the same call.

        Returns ``(obs, reward, terminated, truncated, info)``. For envs that
        just ended, ``obs`` is already the first observation of the next
        episode, and ``info["final_obs"]`` (masked by ``info["_final_obs"]``)
        holds their last observation; for the others it equals ``obs``.
        """
        actions = self._prepare_actions(actions)
        if self.randomization is not None and self.randomization.max_delay():
            actions = self._delayed(actions)
        next_state, reward, terminated = self._dynamics(self._state, actions)

        self.elapsed_steps += 1
        # Like gymnasium's TimeLimit: may be set together with terminated.
        truncated = self.elapsed_steps >= self.max_episode_steps
        done = terminated | truncated
        final_obs = self._observation(next_state)

        # Draw fresh states for every row and keep only the finished ones: a
        # fixed-shape select avoids boolean indexing, which would need a
        # device->host sync to learn how many envs ended.
        fresh = self._sample_initial_state()
        self._state = torch.where(done, fresh, next_state)
        self.elapsed_steps.masked_fill_(done, 0)
        if self.randomization is not None:  # the ended envs' next episodes get new parameters too
            self._params = torch.where(done, self._sample_params(), self._params)
            self._apply_params()
        obs = self._observation(self._state)

        info = {"final_obs": final_obs, "_final_obs": done}
        return obs, reward.to(self.dtype), terminated, truncated, info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id}, num_envs={self.num_envs}, device={self.device})"

    def physics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One physics step as a pure function, no TimeLimit or reset: ``(state_dim, num_envs)`` states in
        ``physics_dtype`` and the actions as `step` takes them -> (next state, reward in ``physics_dtype``,
        terminated). Traceable: ppox.rl.compiled_rollout compiles it together with the policy."""
        return self._dynamics(state, self._prepare_actions(actions))

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """The ``(num_envs, obs_dim)`` observation of ``(state_dim, num_envs)`` states (not randomised envs)."""
        return self._observe(state)

    # ------------------------------------------------------------ internals

    def _observation(self, state: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """`_observe`, or with randomisation the Dict of noisy "obs" and normalised "privileged" parameters."""
        obs = self._observe(state)
        if self.randomization is None:
            return obs
        names = self.randomization.names()
        if "obs_noise" in names:
            std = self._params[names.index("obs_noise")].to(self.dtype)
            noise = torch.randn(obs.shape, generator=self._generator, device=self.device, dtype=self.dtype)
            obs = torch.addcmul(obs, noise, std[:, None])
        privileged = self._transpose_rows(self.randomization.normalized(self._params))
        if not self.privileged:
            return obs
        return {DEPLOYABLE_KEY: obs, PRIVILEGED_KEY: privileged}

    def _sample_params(self) -> torch.Tensor:
        """Fresh parameters for every env, ``(k, num_envs)`` (the caller keeps those of the envs that reset)."""
        names = self.randomization.names()
        u = torch.rand((len(names), self.num_envs), generator=self._generator, device=self.device,
                       dtype=self.physics_dtype)
        return torch.stack(self.randomization.values(u))

    def _apply_params(self) -> None:
        """Point the physics attributes at the sampled parameters (defaults for the others)."""
        names = self.randomization.names()
        params = {n: self._params[names.index(n)] if n in names else v for n, v in self.randomizable.items()}
        self._set_physics(params)

    def _delayed(self, actions: torch.Tensor) -> torch.Tensor:
        """The actions that take effect now: each env's own `action_delay` steps old."""
        names = self.randomization.names()
        depth = self.randomization.max_delay() + 1
        if self._actions is None:
            self._actions = actions.unsqueeze(0).repeat(depth, *[1] * actions.dim())
        # an episode's first step: no older action yet, so its first one fills the queue
        first = (self.elapsed_steps == 0).view(1, -1, *[1] * (actions.dim() - 1))
        queue = torch.cat([actions.unsqueeze(0), self._actions[:-1]])
        self._actions = torch.where(first, actions.unsqueeze(0), queue)
        delay = self._params[names.index("action_delay")].long().view(1, -1, *[1] * (actions.dim() - 1))
        return self._actions.gather(0, delay.expand(1, *actions.shape)).squeeze(0)

    def _sample_initial_state(self) -> torch.Tensor:
        """Uniform sample in ``[low, high]`` per state variable, ``(state_dim, num_envs)``."""
        return self._sample_initial_states(1)[0]

    def _sample_initial_states(self, count: int) -> torch.Tensor:
        """``count`` initial states of every env, ``(count, state_dim, num_envs)``, in one generator call (the
        CUDA-graph rollout draws a rollout's worth ahead: ppox.rl.graphed_rollout)."""
        u = torch.rand(
            (count, self.state_dim, self.num_envs),
            generator=self._generator,
            device=self.device,
            dtype=self.physics_dtype,
        )
        return torch.addcmul(self._reset_low, self._reset_high - self._reset_low, u)

    def _bounds_tensor(self, values: list[float]) -> torch.Tensor:
        """``(state_dim, 1)`` column of per-variable bounds, broadcast over envs."""
        return torch.tensor(values, dtype=self.physics_dtype, device=self.device).unsqueeze(1)

    def _prepare_actions(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Move actions to the device, shaped ``(num_envs,)`` or ``(num_envs, d)``."""
        if isinstance(actions, torch.Tensor):
            # Actions may come from a policy with grad; never track the env.
            actions = actions.detach()
        actions = torch.as_tensor(actions, device=self.device)
        if isinstance(self.single_action_space, spaces.Discrete):
            return actions.reshape(self.num_envs).long()
        shape = (self.num_envs, *self.single_action_space.shape)
        return actions.reshape(shape).to(self.physics_dtype)

    def _reset_bounds(self, options: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension ``(low, high)`` columns of the initial-state distribution."""
        low, high = self._reset_range(options)
        if isinstance(low, tuple):
            return self._bounds_tensor(list(low)), self._bounds_tensor(list(high))
        return self._bounds_tensor([low] * self.state_dim), self._bounds_tensor([high] * self.state_dim)

    def _dynamics(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One physics step of ``(state_dim, num_envs)`` states: ``(next_state, reward, terminated)``."""
        raise NotImplementedError

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        """``(num_envs, obs_dim)`` observation in ``self.dtype``, never aliasing the state."""
        return self._transpose_rows(state)

    def _transpose_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``(d, num_envs)`` rows -> new contiguous ``(num_envs, d)`` tensor in ``self.dtype``."""
        out = torch.empty(rows.shape[::-1], dtype=self.dtype, device=self.device)
        # Copying into the transposed view reads ``rows`` contiguously: about
        # twice as fast on CPU as ``rows.T.contiguous()``.
        out.T.copy_(rows)
        return out


def _addcmul(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    """x + value * a * b; `value` a float (one fused op) or a per-env tensor (a randomised parameter)."""
    if isinstance(value, torch.Tensor):
        return torch.addcmul(x, a * value, b)
    return torch.addcmul(x, a, b, value=value)


class CartPoleTorchVecEnv(CartPole, TorchClassicControlVecEnv):
    """CartPole-v1. State ``[x, x_dot, theta, theta_dot]``; actions {0, 1}."""

    def _dynamics(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # CPU step time is mostly per-op overhead, so the formulas below are
        # gymnasium's with constants folded and multiply-adds fused (addcmul).
        _, x_dot, theta, theta_dot = state
        # force_mag if action == 1 else -force_mag (actions are 0 or 1)
        force = actions.to(state.dtype) * (2 * self.force_mag) - self.force_mag
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        # temp = (force + polemass_length * theta_dot**2 * sintheta) / total_mass
        temp = _addcmul(force, theta_dot.square(), sintheta, self.polemass_length)
        temp /= self.total_mass
        # thetaacc = (g sin - cos temp) / (length (4/3 - masspole cos**2 / total_mass))
        numerator = torch.addcmul(self.gravity * sintheta, costheta, temp, value=-1.0)
        denominator = costheta.square() * (-self.length * self.masspole / self.total_mass)
        thetaacc = numerator / (denominator + self.length * 4.0 / 3.0)
        # xacc = temp - polemass_length * thetaacc * costheta / total_mass
        xacc = _addcmul(temp, thetaacc, costheta, -self.polemass_length / self.total_mass)
        # Explicit Euler (gymnasium's default integrator): s + tau * ds/dt.
        derivative = torch.stack((x_dot, xacc, theta_dot, thetaacc))
        next_state = torch.add(state, derivative, alpha=self.tau)

        # |x| > t is exactly gymnasium's x < -t or x > t, in fewer ops.
        terminated = (next_state[0].abs() > self.x_threshold) | (
            next_state[2].abs() > self.theta_threshold_radians
        )
        # +1 on every step, the terminating one included.
        return next_state, torch.ones_like(theta), terminated


class AcrobotTorchVecEnv(Acrobot, TorchClassicControlVecEnv):
    """Acrobot-v1 ("book" dynamics, no torque noise). State ``[th1, th2, dth1, dth2]``."""

    # RK4 with dt=0.2 amplifies float32 rounding beyond 1e-5; gymnasium uses float64.
    default_physics_dtype = torch.float64

    def _dsdt(self, s: torch.Tensor, torque: torch.Tensor) -> torch.Tensor:
        """Time derivative of ``s``; same expression order as gymnasium."""
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1, lc2 = self.LINK_COM_POS_1, self.LINK_COM_POS_2
        I1 = I2 = self.LINK_MOI
        g = self.gravity
        theta1, theta2, dtheta1, dtheta2 = s
        cos_theta2 = torch.cos(theta2)
        sin_theta2 = torch.sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_theta2) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos_theta2) + I2
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin_theta2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_theta2
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin_theta2 - phi2) / (
            m2 * lc2**2 + I2 - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2))

    @staticmethod
    def _wrap(x: torch.Tensor, m: float, big_m: float) -> torch.Tensor:
        """Vectorised gymnasium ``wrap``: shift by whole periods into [m, M]."""
        diff = big_m - m
        x = torch.where(x > big_m, x - diff * torch.ceil((x - big_m) / diff), x)
        return torch.where(x < m, x + diff * torch.ceil((m - x) / diff), x)

    def _dynamics(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # AVAIL_TORQUE = [-1, 0, +1] indexed by the action.
        torque = actions.to(state.dtype) - 1.0
        # One classic RK4 step over [0, dt], as gymnasium's rk4(..., [0, dt]).
        dt = self.dt
        dt2 = dt / 2.0
        k1 = self._dsdt(state, torque)
        k2 = self._dsdt(state + dt2 * k1, torque)
        k3 = self._dsdt(state + dt2 * k2, torque)
        k4 = self._dsdt(state + dt * k3, torque)
        ns = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

        th1, th2, dth1, dth2 = ns
        th1 = self._wrap(th1, -math.pi, math.pi)
        th2 = self._wrap(th2, -math.pi, math.pi)
        dth1 = dth1.clamp(-self.MAX_VEL_1, self.MAX_VEL_1)
        dth2 = dth2.clamp(-self.MAX_VEL_2, self.MAX_VEL_2)

        terminated = -torch.cos(th1) - torch.cos(th2 + th1) > 1.0
        reward = (~terminated).to(state.dtype).neg()  # -1, or 0 on reaching the goal
        return torch.stack((th1, th2, dth1, dth2)), reward, terminated

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        th1, th2, dth1, dth2 = state
        rows = torch.stack((torch.cos(th1), torch.sin(th1), torch.cos(th2), torch.sin(th2), dth1, dth2))
        return self._transpose_rows(rows)


class MountainCarTorchVecEnv(MountainCar, TorchClassicControlVecEnv):
    """MountainCar-v0. State ``[position, velocity]``; actions {0, 1, 2}."""

    def _reset_bounds(self, options: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
        # Position uniform in [low, high], velocity exactly 0.
        low, high = self._reset_range(options)
        return self._bounds_tensor([low, 0.0]), self._bounds_tensor([high, 0.0])

    def _push(self, velocity: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Acceleration from the action (the part that differs from v0 to continuous)."""
        return (actions.to(velocity.dtype) - 1) * self.force

    def _dynamics(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position, velocity = state
        velocity = velocity + self._push(velocity, actions) + torch.cos(3 * position) * (-self.gravity)
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        # Inelastic left wall; after the clamp "<=" is gymnasium's "==".
        velocity = torch.where(
            (position <= self.min_position) & (velocity < 0),
            torch.zeros_like(velocity),
            velocity,
        )
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = self._reward(actions, terminated, position.dtype)
        return torch.stack((position, velocity)), reward, terminated

    def _reward(self, actions: torch.Tensor, terminated: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.full(terminated.shape, -1.0, dtype=dtype, device=self.device)


class ContinuousMountainCarTorchVecEnv(ContinuousMountainCar, MountainCarTorchVecEnv):
    """MountainCarContinuous-v0. State ``[position, velocity]``; force in [-1, 1]."""

    def _push(self, velocity: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        force = actions[:, 0].clamp(self.min_action, self.max_action)
        return force * self.power

    def _dynamics(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        next_state, reward, terminated = super()._dynamics(state, actions)
        # gymnasium stores this env's state as float32 after every step.
        next_state = next_state.to(torch.float32).to(state.dtype)
        return next_state, reward, terminated

    def _reward(self, actions: torch.Tensor, terminated: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # The action penalty uses the unclipped action, as in gymnasium.
        return 100.0 * terminated.to(dtype) - actions[:, 0].square() * 0.1


class PendulumTorchVecEnv(Pendulum, TorchClassicControlVecEnv):
    """Pendulum-v1 (g=10). State ``[theta, theta_dot]``; torque in [-2, 2]."""

    # theta is never wrapped and grows over an episode; float32 loses 1e-5 on it.
    default_physics_dtype = torch.float64

    def _dynamics(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        th, thdot = state
        g, length, dt = self.g, self.pole_length, self.dt
        u = actions[:, 0].clamp(-self.max_torque, self.max_torque)
        # angle_normalize: numpy's % and torch.remainder both follow the divisor's sign.
        th_normalized = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        costs = th_normalized**2 + 0.1 * thdot**2 + 0.001 * (u**2)

        newthdot = thdot + (3 * g / (2 * length) * torch.sin(th) + self.torque_coef * u) * dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        terminated = torch.zeros_like(th, dtype=torch.bool)
        return torch.stack((newth, newthdot)), -costs, terminated

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        th, thdot = state
        return self._transpose_rows(torch.stack((torch.cos(th), torch.sin(th), thdot)))


_ENV_CLASSES: dict[str, type[TorchClassicControlVecEnv]] = {
    cls.env_id: cls
    for cls in (
        CartPoleTorchVecEnv,
        AcrobotTorchVecEnv,
        MountainCarTorchVecEnv,
        ContinuousMountainCarTorchVecEnv,
        PendulumTorchVecEnv,
    )
}

#: Gymnasium ids that have a batched torch implementation here (the randomised ids, RANDOMIZED_ENV_IDS, too).
TORCH_ENV_IDS: tuple[str, ...] = tuple(_ENV_CLASSES)


def make_torch_vec_env(
    env_id: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> TorchClassicControlVecEnv:
    """Build the batched torch version of a gymnasium classic-control env.

    Args:
        env_id: one of ``TORCH_ENV_IDS``, e.g. ``"CartPole-v1"``.
        num_envs: number of parallel copies.
        device: torch device to simulate on.
        seed: seed of the env's random generator (reset states).
        dtype: dtype of returned observations and rewards.
        **kwargs: ``max_episode_steps``, ``physics_dtype`` or ``randomization``
            (a ``Randomization``; a randomised id, ``RANDOMIZED_ENV_IDS``, brings its own) overrides.

    Raises:
        ValueError: if ``env_id`` is not supported.
    """
    base, randomization, privileged = randomized_base(env_id, kwargs.pop("randomization", None),
                                                      kwargs.pop("privileged", None))
    try:
        cls = _ENV_CLASSES[base]
    except KeyError:
        raise ValueError(
            f"No torch implementation of {env_id!r}; supported ids: {', '.join(TORCH_ENV_IDS + RANDOMIZED_ENV_IDS)}"
        ) from None
    return cls(num_envs, device=device, seed=seed, dtype=dtype, randomization=randomization, privileged=privileged,
               **kwargs)
