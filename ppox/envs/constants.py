"""The parameters of gymnasium's classic-control envs, shared by ppox's numpy and torch twins.

One class per env holds what both twins take from gymnasium unchanged: the id, the state size,
the registered time limit, the physical constants (gymnasium's names and values), the spaces and
the default range of the initial state. The twins inherit it first
(``class CartPoleNumpyVecEnv(CartPole, NumpyClassicControlVecEnv)``) and add only their own maths.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.utils import maybe_parse_reset_bounds, verify_number_and_cast
from gymnasium.vector.utils import batch_space

__all__ = ["Acrobot", "CartPole", "ClassicControl", "ContinuousMountainCar", "MountainCar", "Pendulum"]

ResetRange = tuple[float, float] | tuple[tuple[float, ...], tuple[float, ...]]


class ClassicControl:
    """What every env defines: id, state size, time limit, spaces and initial-state range."""

    env_id: str
    state_dim: int
    default_max_episode_steps: int
    # gymnasium's defaults of `maybe_parse_reset_bounds` (options "low" / "high")
    reset_low: float
    reset_high: float

    def _init_vector(self, num_envs: int, max_episode_steps: int | None) -> None:
        """The ``VectorEnv`` attributes both twins set first: counts, time limit and spaces."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        self.max_episode_steps = max_episode_steps or self.default_max_episode_steps
        self.render_mode = None
        self.single_observation_space, self.single_action_space = self._make_spaces()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        """(single observation space, single action space), equal to gymnasium's."""
        raise NotImplementedError

    # name -> default of the physical parameters domain randomisation may vary (ppox.envs.randomization)
    randomizable: dict[str, float] = {}  # noqa: RUF012

    def _set_physics(self, params: dict[str, Any]) -> None:
        """Set the physics attributes from `params` (every name of `randomizable`; floats or per-env
        arrays/tensors), derived constants included. The dynamics read only these attributes."""
        raise NotImplementedError(f"{self.env_id} has no randomisable parameters")

    def _reset_range(self, options: dict[str, Any] | None) -> ResetRange:
        """(low, high) of the uniform initial state: floats for every variable, or one per variable."""
        return maybe_parse_reset_bounds(options, self.reset_low, self.reset_high)


class CartPole(ClassicControl):
    """CartPole-v1. State ``[x, x_dot, theta, theta_dot]``; actions {0, 1}."""

    env_id = "CartPole-v1"
    state_dim = 4
    default_max_episode_steps = 500
    reset_low, reset_high = -0.05, 0.05

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    randomizable = {"gravity": gravity, "masscart": masscart, "masspole": masspole, "length": length,  # noqa: RUF012
                    "actuator_gain": 1.0, "actuator_sign": 1.0}

    def _set_physics(self, params: dict[str, Any]) -> None:
        self.gravity, self.masscart, self.masspole = params["gravity"], params["masscart"], params["masspole"]
        self.length = params["length"]
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length
        # the force the push command produces: gymnasium's 10 N times the actuator's gain and sign
        self.force_mag = 10.0 * params["actuator_gain"] * params["actuator_sign"]

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        high = np.array([self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf], dtype=np.float32)
        return spaces.Box(-high, high, dtype=np.float32), spaces.Discrete(2)


class Acrobot(ClassicControl):
    """Acrobot-v1 ("book" dynamics, no torque noise). State ``[th1, th2, dth1, dth2]``; torque -1, 0, +1."""

    env_id = "Acrobot-v1"
    state_dim = 4
    default_max_episode_steps = 500
    reset_low, reset_high = -0.1, 0.1

    dt = 0.2
    gravity = 9.8
    LINK_LENGTH_1 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        high = np.array([1.0, 1.0, 1.0, 1.0, self.MAX_VEL_1, self.MAX_VEL_2], dtype=np.float32)
        return spaces.Box(-high, high, dtype=np.float32), spaces.Discrete(3)


class MountainCar(ClassicControl):
    """MountainCar-v0. State ``[position, velocity]``; actions {0, 1, 2}. The initial position is
    uniform in the reset range, the velocity 0."""

    env_id = "MountainCar-v0"
    state_dim = 2
    default_max_episode_steps = 200
    reset_low, reset_high = -0.6, -0.4

    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.5
    goal_velocity = 0.0
    force = 0.001
    gravity = 0.0025

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        return spaces.Box(low, high, dtype=np.float32), spaces.Discrete(3)


class ContinuousMountainCar(MountainCar):
    """MountainCarContinuous-v0. State ``[position, velocity]``; force in [-1, 1]."""

    env_id = "MountainCarContinuous-v0"
    default_max_episode_steps = 999

    min_action = -1.0
    max_action = 1.0
    goal_position = 0.45
    power = 0.0015

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        obs_space, _ = super()._make_spaces()
        return obs_space, spaces.Box(self.min_action, self.max_action, shape=(1,), dtype=np.float32)


class Pendulum(ClassicControl):
    """Pendulum-v1 (g=10). State ``[theta, theta_dot]``; torque in [-2, 2]."""

    env_id = "Pendulum-v1"
    state_dim = 2
    default_max_episode_steps = 200

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    pole_length = 1.0
    # angular acceleration per unit of torque command, 3 / (m l^2) (times the actuator gain when randomised)
    torque_coef = 3.0 / (m * pole_length**2)
    randomizable = {"g": g, "m": m, "pole_length": pole_length, "actuator_gain": 1.0}  # noqa: RUF012

    def _set_physics(self, params: dict[str, Any]) -> None:
        self.g, self.m, self.pole_length = params["g"], params["m"], params["pole_length"]
        self.torque_coef = 3.0 * params["actuator_gain"] / (self.m * self.pole_length**2)
    # gymnasium's default reset limits (options "x_init" / "y_init"): theta in [-pi, pi], theta_dot in [-1, 1]
    x_init = math.pi
    y_init = 1.0

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        action_space = spaces.Box(-self.max_torque, self.max_torque, shape=(1,), dtype=np.float32)
        return spaces.Box(-high, high, dtype=np.float32), action_space

    def _reset_range(self, options: dict[str, Any] | None) -> ResetRange:
        options = options or {}
        x = verify_number_and_cast(options.get("x_init", self.x_init))
        y = verify_number_and_cast(options.get("y_init", self.y_init))
        return (-x, -y), (x, y)  # symmetric limits, as gymnasium enforces
