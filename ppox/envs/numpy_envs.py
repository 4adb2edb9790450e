"""Batched NumPy twins of gymnasium's classic-control environments.

Each class steps all ``num_envs`` copies with a few numpy ops on ``(state_dim, num_envs)`` float64
arrays (gymnasium's own maths, float64 like gymnasium, no Python loop over envs), behind
gymnasium's ``VectorEnv`` API: numpy observations ``(num_envs, obs_dim)`` float32, float64
rewards, bool flags, the registered ``TimeLimit`` and ``SAME_STEP`` autoreset with
``info["final_obs"]`` / ``info["_final_obs"]``.

At a few envs these are several times faster than gymnasium's ``SyncVectorEnv`` of the registered
envs (whose per-env Python, wrappers and checks dominate; Acrobot's RK4 builds arrays per call),
and unlike the torch envs (``ppox.envs.torch_envs``) they cost no tensor-op overhead.

Reset states come from one ``numpy.random.Generator`` per env, seeded like gymnasium's
``SyncVectorEnv`` (``reset(seed=s)`` seeds env ``i`` with ``s + i``) and drawn with the same call
as gymnasium's ``reset``, so with the same actions a run follows the same episodes as
``gym.make_vec(env_id, n, vectorization_mode="sync")`` (tests/envs/test_numpy_envs.py checks whole
trajectories). Only envs that end draw a new state (a loop over the ended envs, not all envs).
The envs pickle (checkpoints capture them for exact resume). Actions are not validated against the
action space (gymnasium asserts it per env); out-of-range discrete actions are undefined here.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from gymnasium.utils import seeding
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
    "NUMPY_ENV_IDS",
    "AcrobotNumpyVecEnv",
    "CartPoleNumpyVecEnv",
    "ContinuousMountainCarNumpyVecEnv",
    "MountainCarNumpyVecEnv",
    "NumpyClassicControlVecEnv",
    "PendulumNumpyVecEnv",
    "make_numpy_vec_env",
]


class NumpyClassicControlVecEnv(ClassicControl, VectorEnv):
    """Base class: state, TimeLimit, SAME_STEP autoreset, per-env seeding.

    Subclasses inherit an env's parameters, spaces and reset range from ``ppox.envs.constants``
    first, and implement ``_dynamics`` (whole batch), ``_observe`` and where needed ``_draws``.
    ``state`` is ``(num_envs, state_dim)`` float64 like gymnasium's ``env.unwrapped.state``
    (a view of the row-major ``(state_dim, num_envs)`` array; settable).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    reset_dtype: type = np.float64  # Acrobot stores its reset state as float32
    # Up to this many envs, `_dynamics_scalar` (plain Python floats, a loop over envs) is used where a
    # class has one: a numpy call on a few elements costs ~0.5-1 us whatever its size, so at 4 envs
    # the loop is 3-7x faster (CartPole 5.6 vs 25.6 us, Acrobot 21 vs 142 us per step, docs/performance.md;
    # the crossover is at ~30-40 envs). It also repeats gymnasium's scalar maths operation for operation.
    scalar_max_envs: int = 0

    def __init__(self, num_envs: int, seed: int | None = None, *, max_episode_steps: int | None = None,
                 randomization: Randomization | None = None, privileged: bool = True) -> None:
        """``randomization``: per-env parameter ranges sampled at each reset of an env, from that env's
        generator after its initial state (``ppox.envs.randomization``); observations are then a Dict of
        "obs" and "privileged" arrays, ``info["final_obs"]`` an object array of such dicts (gymnasium's form);
        ``privileged`` False: the "obs" array alone (the task as a deployed policy sees it)."""
        self._init_vector(num_envs, max_episode_steps)
        self.randomization = randomization
        self.privileged = privileged
        if randomization is not None:
            randomization.check(self.env_id, self.randomizable)
            self.single_observation_space = observation_space(self.single_observation_space, randomization, privileged)
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
            self._params = np.zeros((len(randomization.names()), self.num_envs))  # in names() order
            self._actions: np.ndarray | None = None  # past actions, newest first (max_delay + 1, num_envs, ...)
        self._rngs = [seeding.np_random(None if seed is None else seed + i)[0] for i in range(self.num_envs)]
        self._low, self._high = self._reset_range(None)
        self._s = np.zeros((self.state_dim, self.num_envs))
        for i in range(self.num_envs):
            self._s[:, i] = self._draw(i)
            self._draw_params(i)
        self._apply_params()
        self.elapsed_steps = np.zeros(self.num_envs, dtype=np.int64)

    # ------------------------------------------------------------------ API
    @property
    def state(self) -> np.ndarray:
        return self._s.T

    @state.setter
    def state(self, value) -> None:
        value = np.asarray(value, dtype=np.float64)
        if value.shape != (self.num_envs, self.state_dim):
            raise ValueError(f"state must have shape {(self.num_envs, self.state_dim)}, got {value.shape}")
        self._s = np.ascontiguousarray(value.T)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """Reset all envs. ``seed=s`` seeds env ``i`` with ``s + i`` (a list: one seed per env)."""
        if seed is not None:
            seeds = list(seed) if isinstance(seed, list | tuple) else [seed + i for i in range(self.num_envs)]
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        self._low, self._high = self._reset_range(options)
        for i in range(self.num_envs):
            self._s[:, i] = self._draw(i)
            self._draw_params(i)
        self._apply_params()
        self.elapsed_steps[:] = 0
        return self._observation(self._s), {}

    def step(self, actions):
        """Step all envs; ended envs are reset in the same call (their last obs in ``info["final_obs"]``)."""
        actions = np.asarray(actions)
        if self.randomization is not None and self.randomization.max_delay():
            actions = self._delayed(actions)
        # the scalar loop reads every parameter as one float: randomised envs take the batched maths
        if self.num_envs <= self.scalar_max_envs and self.randomization is None:
            next_state, reward, terminated = self._dynamics_scalar(self._s, actions)
        else:
            next_state, reward, terminated = self._dynamics(self._s, actions)
        self.elapsed_steps += 1
        truncated = self.elapsed_steps >= self.max_episode_steps
        done = terminated | truncated
        obs = self._observation(next_state)
        self._s = next_state
        info: dict[str, Any] = {}  # non-empty exactly when an episode ended (ppox.rl.envs.VecEnv relies on it)
        if np.count_nonzero(done):  # cheaper than done.any() on a few flags
            final_obs = obs  # `_observe` returns a new array, so re-observing below leaves it intact
            for i in np.flatnonzero(done):
                next_state[:, i] = self._draw(i)
                self._draw_params(i)
            self._apply_params()
            self.elapsed_steps[done] = 0
            obs = self._observation(next_state)
            if isinstance(final_obs, dict):  # gymnasium's form for a Dict space: one dict per env
                final_obs = _per_env(final_obs, self.num_envs)
            info = {"final_obs": final_obs, "_final_obs": done}
        return obs, reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id}, num_envs={self.num_envs})"

    # ------------------------------------------------------------ internals
    def _observation(self, s: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """`_observe`, or with randomisation the Dict of noisy "obs" and normalised "privileged" parameters."""
        obs = self._observe(s)
        if self.randomization is None:
            return obs
        names = self.randomization.names()
        if "obs_noise" in names:
            std = self._params[names.index("obs_noise")]
            noise = np.stack([rng.standard_normal(obs.shape[1]) for rng in self._rngs])
            obs = (obs + std[:, None] * noise).astype(np.float32)
        privileged = np.ascontiguousarray(self.randomization.normalized(self._params).T, dtype=np.float32)
        if not self.privileged:
            return obs
        return {DEPLOYABLE_KEY: obs, PRIVILEGED_KEY: privileged}

    def _draw_params(self, i: int) -> None:
        """Env i's parameters for its next episode, from its own generator (after its initial state)."""
        if self.randomization is not None:
            u = self._rngs[i].random(len(self.randomization.names()))
            self._params[:, i] = [float(v[0]) for v in self.randomization.values(u[:, None])]

    def _apply_params(self) -> None:
        """Point the physics attributes at the sampled parameters (defaults for the others)."""
        if self.randomization is not None:
            names = self.randomization.names()
            self._set_physics({n: self._params[names.index(n)].copy() if n in names else v
                               for n, v in self.randomizable.items()})

    def _delayed(self, actions: np.ndarray) -> np.ndarray:
        """The actions that take effect now: each env's own `action_delay` steps old."""
        names = self.randomization.names()
        depth = self.randomization.max_delay() + 1
        if self._actions is None:
            self._actions = np.repeat(actions[None], depth, axis=0)
        queue = np.concatenate([actions[None], self._actions[:-1]])
        first = self.elapsed_steps == 0  # an episode's first step: its first action fills the queue
        queue[:, first] = actions[first]
        self._actions = queue
        delay = self._params[names.index("action_delay")].astype(np.int64)
        return queue[delay, np.arange(self.num_envs)]

    def _draw(self, i: int) -> np.ndarray:
        """Env i's initial state: the same generator call as gymnasium's reset."""
        return self._draws(i, 1)[0]

    def _draws(self, i: int, count: int) -> np.ndarray:
        """Env i's next `count` initial states, ``(count, state_dim)``, in one generator call that leaves the
        generator where `count` calls of gymnasium's reset draw would (numpy fills element by element)."""
        shape = (count, self.state_dim)
        return self._rngs[i].uniform(low=self._low, high=self._high, size=shape).astype(self.reset_dtype)

    def peek_resets(self, count: int) -> np.ndarray:
        """The initial states of every env's next `count` resets, ``(num_envs, count, state_dim)`` float64, without
        moving any generator: a rollout that steps the physics elsewhere (ppox.rl.compiled_rollout) takes its
        resets from here in order and then calls `consume_resets`, so the episodes are the ones `step` would give."""
        if self.randomization is not None:
            raise ValueError("peek_resets: a randomised env also draws its parameters at each reset")
        out = np.empty((self.num_envs, count, self.state_dim))
        for i, rng in enumerate(self._rngs):
            saved = rng.bit_generator.state
            out[i] = self._draws(i, count)
            rng.bit_generator.state = saved
        return out

    def consume_resets(self, used: np.ndarray) -> None:
        """Move env i's generator past `used[i]` reset draws (the ones a `peek_resets` caller used)."""
        for i, n in enumerate(np.asarray(used).tolist()):
            if n:
                self._draws(i, int(n))

    def _dynamics(self, s: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(state_dim, n)`` state -> (new ``(state_dim, n)`` state, float64 reward, bool terminated)."""
        raise NotImplementedError

    def _dynamics_scalar(self, s: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_dynamics`` env by env in Python floats (for few envs); same results."""
        return self._dynamics(s, actions)

    def _observe(self, s: np.ndarray) -> np.ndarray:
        """New ``(num_envs, obs_dim)`` float32 array."""
        return np.ascontiguousarray(s.T, dtype=np.float32)  # C order: the layout every other backend gives


class CartPoleNumpyVecEnv(CartPole, NumpyClassicControlVecEnv):
    """CartPole-v1 (Euler integrator). State ``[x, x_dot, theta, theta_dot]``; actions {0, 1}."""

    def _dynamics(self, s, actions):
        _, x_dot, theta, theta_dot = s
        force = np.where(actions == 1, self.force_mag, -self.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        # s + tau * ds/dt for all four variables in one op
        ns = s + self.tau * np.stack((x_dot, xacc, theta_dot, thetaacc))
        terminated = (np.abs(ns[0]) > self.x_threshold) | (np.abs(ns[2]) > self.theta_threshold_radians)
        return ns, np.ones(self.num_envs), terminated

    scalar_max_envs = 32

    def _dynamics_scalar(self, s, actions):
        fm, pml, tm, g, ln, mp, tau = (self.force_mag, self.polemass_length, self.total_mass, self.gravity,
                                       self.length, self.masspole, self.tau)
        xt, tt = self.x_threshold, self.theta_threshold_radians
        xs, xds, ths, thds, term = [], [], [], [], []
        for x, x_dot, theta, theta_dot, a in zip(*s.tolist(), actions.tolist(), strict=True):
            force = fm if a == 1 else -fm
            costheta = math.cos(theta)
            sintheta = math.sin(theta)
            temp = (force + pml * (theta_dot * theta_dot) * sintheta) / tm
            thetaacc = (g * sintheta - costheta * temp) / (ln * (4.0 / 3.0 - mp * (costheta * costheta) / tm))
            xacc = temp - pml * thetaacc * costheta / tm
            x = x + tau * x_dot
            theta = theta + tau * theta_dot
            xs.append(x)
            xds.append(x_dot + tau * xacc)
            ths.append(theta)
            thds.append(theta_dot + tau * thetaacc)
            term.append(x < -xt or x > xt or theta < -tt or theta > tt)
        return np.array((xs, xds, ths, thds)), np.ones(self.num_envs), np.array(term)


class AcrobotNumpyVecEnv(Acrobot, NumpyClassicControlVecEnv):
    """Acrobot-v1 ("book" dynamics, no torque noise), RK4 with dt 0.2 in float64, vectorised."""

    reset_dtype = np.float32

    # gymnasium's constants: m1 = m2 = l1 = 1, lc1 = lc2 = 0.5, I1 = I2 = 1, g = 9.8. Folded below:
    # d1 = m1 lc1^2 + m2 (l1^2 + lc2^2 + 2 l1 lc2 cos th2) + I1 + I2 = 3.5 + cos th2
    # d2 = m2 (lc2^2 + l1 lc2 cos th2) + I2 = 1.25 + 0.5 cos th2
    # phi2 = m2 lc2 g cos(th1 + th2 - pi/2) = 4.9 sin(th1 + th2)
    # phi1 = -m2 l1 lc2 dth2^2 sin th2 - 2 m2 l1 lc2 dth2 dth1 sin th2 + (m1 lc1 + m2 l1) g cos(th1 - pi/2) + phi2
    #      = -sin th2 dth2 (0.5 dth2 + dth1) + 14.7 sin th1 + phi2
    # ddth2 = (a + d2/d1 phi1 - m2 l1 lc2 dth1^2 sin th2 - phi2) / (m2 lc2^2 + I2 - d2^2/d1)
    # ddth1 = -(d2 ddth2 + phi1) / d1
    # All four trig values of a derivative come from one np.sin of [th2 + pi/2, th2, th1 + th2, th1].
    _TRIG = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    _TRIG_SHIFT = np.array([[math.pi / 2], [0.0], [0.0], [0.0]])

    def _dsdt(self, s: np.ndarray, torque: np.ndarray) -> np.ndarray:
        trig = np.sin(self._TRIG @ s[:2] + self._TRIG_SHIFT)
        c2, s2, s12, s1 = trig
        dth1, dth2 = s[2], s[3]
        d1 = c2 + 3.5
        d2 = 0.5 * c2 + 1.25
        phi2 = 4.9 * s12
        phi1 = 14.7 * s1 + phi2 - s2 * dth2 * (0.5 * dth2 + dth1)
        r = d2 / d1
        ddth2 = (torque + r * phi1 - 0.5 * dth1 * dth1 * s2 - phi2) / (1.25 - d2 * r)
        ddth1 = -(d2 * ddth2 + phi1) / d1
        return np.stack((dth1, dth2, ddth1, ddth2))

    def _dynamics(self, s, actions):
        torque = actions - 1.0  # AVAIL_TORQUE = [-1, 0, +1]
        dt, dt2 = self.dt, self.dt / 2.0
        k1 = self._dsdt(s, torque)
        k2 = self._dsdt(s + dt2 * k1, torque)
        k3 = self._dsdt(s + dt2 * k2, torque)
        k4 = self._dsdt(s + dt * k3, torque)
        ns = s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        # wrap the angles into [-pi, pi] (gymnasium subtracts 2 pi while above, adds while below)
        ang = ns[:2]
        if (np.abs(ang) > math.pi).any():
            ang -= (2 * math.pi) * np.ceil((ang - math.pi) / (2 * math.pi)) * (ang > math.pi)
            ang += (2 * math.pi) * np.ceil((-math.pi - ang) / (2 * math.pi)) * (ang < -math.pi)
        np.clip(ns[2], -self.MAX_VEL_1, self.MAX_VEL_1, out=ns[2])
        np.clip(ns[3], -self.MAX_VEL_2, self.MAX_VEL_2, out=ns[3])
        c = np.cos(np.stack((ns[0], ns[0] + ns[1])))
        terminated = -c[0] - c[1] > 1.0
        return ns, terminated - 1.0, terminated

    scalar_max_envs = 32

    def _dynamics_scalar(self, s, actions):
        # gymnasium's _dsdt, rk4, wrap and bound written out on Python floats, with its constants
        # (m1 = m2 = l1 = 1, lc1 = lc2 = 0.5, I1 = I2 = 1, g = 9.8) and its order of operations
        cos, pi = math.cos, math.pi
        hpi = pi / 2.0
        g145 = (1.0 * 0.5 + 1.0 * 1.0) * 9.8  # (m1 lc1 + m2 l1) g
        dt = self.dt
        h = dt / 2.0
        c6 = dt / 6.0
        two_pi = 2 * pi
        mv1, mv2 = self.MAX_VEL_1, self.MAX_VEL_2

        def dsdt(t1, t2, w1, w2, a):
            c2 = cos(t2)
            s2 = math.sin(t2)
            d1 = 0.25 + (1.25 + c2) + 1.0 + 1.0
            d2 = (0.25 + 0.5 * c2) + 1.0
            phi2 = 4.9 * cos(t1 + t2 - hpi)
            phi1 = -0.5 * (w2 * w2) * s2 - w2 * w1 * s2 + g145 * cos(t1 - hpi) + phi2
            dd2 = (a + d2 / d1 * phi1 - 0.5 * (w1 * w1) * s2 - phi2) / (1.25 - (d2 * d2) / d1)
            return -(d2 * dd2 + phi1) / d1, dd2

        n1s, n2s, n3s, n4s, term = [], [], [], [], []
        for t1, t2, w1, w2, a in zip(*s.tolist(), actions.tolist(), strict=True):
            a = a - 1.0  # AVAIL_TORQUE[a]
            k1a, k1b = dsdt(t1, t2, w1, w2, a)
            v1, v2 = w1 + h * k1a, w2 + h * k1b
            k2a, k2b = dsdt(t1 + h * w1, t2 + h * w2, v1, v2, a)
            u1, u2 = w1 + h * k2a, w2 + h * k2b
            k3a, k3b = dsdt(t1 + h * v1, t2 + h * v2, u1, u2, a)
            q1, q2 = w1 + dt * k3a, w2 + dt * k3b
            k4a, k4b = dsdt(t1 + dt * u1, t2 + dt * u2, q1, q2, a)
            n1 = t1 + c6 * (w1 + 2 * v1 + 2 * u1 + q1)
            n2 = t2 + c6 * (w2 + 2 * v2 + 2 * u2 + q2)
            n3 = w1 + c6 * (k1a + 2 * k2a + 2 * k3a + k4a)
            n4 = w2 + c6 * (k1b + 2 * k2b + 2 * k3b + k4b)
            while n1 > pi:
                n1 = n1 - two_pi
            while n1 < -pi:
                n1 = n1 + two_pi
            while n2 > pi:
                n2 = n2 - two_pi
            while n2 < -pi:
                n2 = n2 + two_pi
            n1s.append(n1)
            n2s.append(n2)
            n3s.append(min(max(n3, -mv1), mv1))
            n4s.append(min(max(n4, -mv2), mv2))
            term.append(-cos(n1) - cos(n2 + n1) > 1.0)
        terminated = np.array(term)
        return np.array((n1s, n2s, n3s, n4s)), terminated - 1.0, terminated

    def _observe(self, s):
        obs = np.empty((6, self.num_envs), dtype=np.float32)
        obs[0:4:2] = np.cos(s[:2])
        obs[1:4:2] = np.sin(s[:2])
        obs[4:] = s[2:]
        return obs.T.copy()


class MountainCarNumpyVecEnv(MountainCar, NumpyClassicControlVecEnv):
    """MountainCar-v0. State ``[position, velocity]``; actions {0, 1, 2}."""

    def _draws(self, i: int, count: int) -> np.ndarray:
        # gymnasium: state = [uniform(low, high), 0]
        position = self._rngs[i].uniform(low=self._low, high=self._high, size=count)
        return np.stack((position, np.zeros(count)), axis=1)

    def _push(self, actions: np.ndarray) -> np.ndarray:
        return (actions - 1) * self.force

    def _dynamics(self, s, actions):
        position, velocity = s
        velocity = velocity + (self._push(actions) + np.cos(3 * position) * (-self.gravity))
        velocity = np.clip(velocity, -self.max_speed, self.max_speed)
        position = np.clip(position + velocity, self.min_position, self.max_position)
        velocity = np.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        return self._finish(np.stack((position, velocity))), self._reward(actions, terminated), terminated

    def _finish(self, ns: np.ndarray) -> np.ndarray:
        return ns

    def _reward(self, actions: np.ndarray, terminated: np.ndarray) -> np.ndarray:
        return np.full(self.num_envs, -1.0)


class ContinuousMountainCarNumpyVecEnv(ContinuousMountainCar, MountainCarNumpyVecEnv):
    """MountainCarContinuous-v0. State ``[position, velocity]``; force in [-1, 1]."""

    def _push(self, actions):
        return np.clip(actions.reshape(self.num_envs), self.min_action, self.max_action) * self.power

    def _finish(self, ns):
        return ns.astype(np.float32).astype(np.float64)  # gymnasium keeps this state in float32

    def _reward(self, actions, terminated):
        a = actions.reshape(self.num_envs).astype(np.float64)
        return 100.0 * terminated - a * a * 0.1  # the penalty uses the unclipped action


class PendulumNumpyVecEnv(Pendulum, NumpyClassicControlVecEnv):
    """Pendulum-v1 (g=10). State ``[theta, theta_dot]``; torque in [-2, 2]."""

    def _dynamics(self, s, actions):
        th, thdot = s
        g, length, dt = self.g, self.pole_length, self.dt
        # float32 torque, as gymnasium's (its cost and torque terms are float32 maths)
        u = np.clip(actions.reshape(self.num_envs).astype(np.float32), -self.max_torque, self.max_torque)
        th_n = ((th + np.pi) % (2 * np.pi)) - np.pi
        costs = th_n**2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * g / (2 * length) * np.sin(th) + self.torque_coef * u) * dt
        newthdot = np.clip(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        return np.stack((newth, newthdot)), -costs, np.zeros(self.num_envs, dtype=bool)

    def _observe(self, s):
        th, thdot = s
        return np.stack((np.cos(th), np.sin(th), thdot), axis=1).astype(np.float32)


_ENV_CLASSES: dict[str, type[NumpyClassicControlVecEnv]] = {
    cls.env_id: cls
    for cls in (
        CartPoleNumpyVecEnv,
        AcrobotNumpyVecEnv,
        MountainCarNumpyVecEnv,
        ContinuousMountainCarNumpyVecEnv,
        PendulumNumpyVecEnv,
    )
}

#: Gymnasium ids that have a batched numpy twin here (the randomised ids, RANDOMIZED_ENV_IDS, too).
NUMPY_ENV_IDS: tuple[str, ...] = tuple(_ENV_CLASSES)


def _per_env(obs: dict[str, np.ndarray], n: int) -> np.ndarray:
    """A batched Dict observation as an object array of n per-env dicts."""
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = {k: v[i] for k, v in obs.items()}
    return out


def make_numpy_vec_env(env_id: str, num_envs: int, seed: int | None = None, **kwargs: Any) -> NumpyClassicControlVecEnv:
    """Build the batched numpy twin of a gymnasium classic-control env (``NUMPY_ENV_IDS``).

    ``kwargs``: ``max_episode_steps``, ``randomization`` (a ``Randomization``; a randomised id,
    ``RANDOMIZED_ENV_IDS``, brings its own). Raises ValueError for other ids.
    """
    base, randomization, privileged = randomized_base(env_id, kwargs.pop("randomization", None),
                                                      kwargs.pop("privileged", None))
    try:
        cls = _ENV_CLASSES[base]
    except KeyError:
        raise ValueError(
            f"No numpy implementation of {env_id!r}; supported ids: {', '.join(NUMPY_ENV_IDS + RANDOMIZED_ENV_IDS)}"
        ) from None
    return cls(num_envs, seed=seed, randomization=randomization, privileged=privileged,
               **kwargs)
