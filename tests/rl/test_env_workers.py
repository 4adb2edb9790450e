"""Env worker processes and hostile envs: workers that can be terminated after restarts, no hang at
interpreter exit, a per-step timeout for envs stuck in step(), a second signal that always ends the
process, and one warning for observations that do not match the declared space (docs/reliability.md)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppox.rl.envs as envs_module
from ppox.cli import main
from ppox.errors import ConfigError, TrainingHalted
from ppox.rl.envs import EnvStepTimeout, VecEnv
from ppox.rl.ppo import PPO
from ppox.runs import StopSignals

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]
TINY = dict(num_steps=16, num_envs=2, total_timesteps=64, tensorboard=False, progress=False, eval_episodes=0,
            update_epochs=1, num_minibatches=2, live_doctor=False)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(envs_module, "_WARNED", set())  # each observation warning once per process


class _Env(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def _obs(self):
        return np.zeros(2, np.float32)

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, False, self.t >= 30, {}


def _in_worker() -> bool:
    return multiprocessing.parent_process() is not None


class RaisingEnv(_Env):
    """Raises at step 3 of every episode, in worker processes only (gymnasium's checker runs in the trainer)."""

    def step(self, action):
        if self.t == 2 and _in_worker():
            raise RuntimeError("simulator blew up")
        return super().step(action)


class HangingEnv(_Env):
    """Hangs in step 5 in a worker process: once per existing token file, or always without one."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.token = token

    def step(self, action):
        if self.t == 4 and _in_worker() and self._take_token():
            time.sleep(3600)
        return super().step(action)

    def _take_token(self) -> bool:
        if self.token is None:
            return True
        try:
            os.unlink(self.token)
        except FileNotFoundError:
            return False
        return True


class OutOfBoundsEnv(_Env):
    def _obs(self):
        return np.array([0.5, 3.0], np.float32)  # declared [-1, 1]


class Float64Env(_Env):
    def _obs(self):
        return np.zeros(2, np.float64)  # declared float32

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float64), {}


class LateOutOfBoundsEnv(_Env):
    def _obs(self):
        return np.array([0.0, 5.0 if self.t > 20 else 0.0], np.float32)


def _hanging(tmp_path: Path, once: bool):
    import functools

    token = None
    if once:
        token = tmp_path / "hang-token"
        token.write_text("")
    return functools.partial(HangingEnv, token=None if token is None else str(token))


def _step(envs: VecEnv, n: int):
    result = None
    for _ in range(n):
        result = envs.step(np.zeros(envs.num_envs, dtype=np.int64))
    return result


# ---------------------------------------------------------------------------- worker signals
def test_restarted_async_workers_die_on_sigterm_and_ignore_sigint():
    # during learn() the trainer has StopSignals' handlers; workers forked then must not inherit them
    with StopSignals():
        envs = VecEnv(None, 2, 0, CPU, vectorization="async", env_fn=RaisingEnv, max_restarts=5)
        try:
            envs.reset()
            start = time.perf_counter()
            _step(envs, 9)  # a fault every 3 steps: 3 restarts, each terminating and recreating the workers
            assert envs.restarts == 3
            assert time.perf_counter() - start < 15  # was 5 s per restart: terminate() waited on the join
            processes = list(envs.envs.processes)
            for process in processes:
                os.kill(process.pid, signal.SIGINT)
            time.sleep(0.2)
            assert all(p.is_alive() for p in processes)  # Ctrl-C reaches only the trainer
            for process in processes:
                os.kill(process.pid, signal.SIGTERM)
            for process in processes:
                process.join(timeout=5)
            assert [p.exitcode for p in processes] == [-signal.SIGTERM] * 2
        finally:
            envs.close()


EXIT_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_env_workers import RaisingEnv
from ppox.runs import StopSignals
from ppox.rl.envs import VecEnv
import torch

with StopSignals():  # as in learn(): restarts fork workers while the trainer's handlers are installed
    envs = VecEnv(None, 2, 0, torch.device("cpu"), vectorization="async", env_fn=RaisingEnv, max_restarts=5)
    envs.reset()
    for _ in range(7):
        envs.step(np.zeros(2, dtype=np.int64))
    assert envs.restarts == 2
print("done", flush=True)  # and no envs.close()
"""


def test_process_with_restarted_workers_exits_without_close():
    script = EXIT_SCRIPT.format(tests=str(Path(__file__).parent))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "done"
    assert time.perf_counter() - start < 30  # was: a hang at exit, multiprocessing joining unkillable workers


def test_ppo_context_manager_and_finaliser_stop_the_workers(tiny):
    cfg = tiny(None, vectorization="async")
    with PPO(cfg, env_fn=_Env) as model:
        processes = list(model.envs.envs.processes)
        assert all(p.is_alive() for p in processes)
    assert not any(p.is_alive() for p in processes)
    model.close()  # idempotent

    model = PPO(cfg, env_fn=_Env)
    processes = list(model.envs.envs.processes)
    del model
    gc.collect()
    for process in processes:
        process.join(timeout=5)
    assert not any(p.is_alive() for p in processes)


# ---------------------------------------------------------------------------- --env-step-timeout
def test_step_timeout_restarts_a_hung_env(tmp_path):
    envs = VecEnv(None, 2, 0, CPU, vectorization="sync", env_fn=_hanging(tmp_path, once=True), max_restarts=2,
                  step_timeout=0.5)
    try:
        assert isinstance(envs.envs, gym.vector.AsyncVectorEnv)  # a timeout needs worker processes
        envs.reset()
        start = time.perf_counter()
        result = _step(envs, 5)
        assert time.perf_counter() - start < 10
        assert envs.restarts == 1 and result.truncated.all() and not result.reward.any()
        _step(envs, 10)  # the recreated workers step on
        assert envs.restarts == 1
    finally:
        envs.close()


def test_step_timeout_without_restarts_raises_and_close_does_not_hang(tmp_path):
    envs = VecEnv(None, 2, 0, CPU, vectorization="async", env_fn=_hanging(tmp_path, once=False), step_timeout=0.3)
    envs.reset()
    with pytest.raises(EnvStepTimeout) as info:
        _step(envs, 5)
    assert str(info.value) in [f"environment {i}: HangingEnv did not return from step() within 0.3 s "
                               "(--env-step-timeout 0.3)" for i in (0, 1)]
    start = time.perf_counter()
    envs.close()
    assert time.perf_counter() - start < 5


def test_step_timeout_past_the_limit_stops_training_naming_env_and_timeout(tmp_path, tiny):
    cfg = tiny(None, env_step_timeout=0.3, max_env_restarts=1)
    model = PPO(cfg, env_fn=_hanging(tmp_path, once=False))
    with pytest.raises(TrainingHalted) as info:
        model.learn()
    model.close()
    message = str(info.value)
    assert "failed: HangingEnv did not return from step() within 0.3 s (--env-step-timeout 0.3); giving up " \
           "after 1 restart(s) (--max-env-restarts 1)" in message
    assert "checkpoint of iteration" in message and "\n" not in message


def test_step_timeout_is_validated(capsys, tmp_path):
    with pytest.raises(ConfigError, match="env_step_timeout must be a number of seconds > 0"):
        VecEnv(None, 1, 0, CPU, env_fn=_Env, step_timeout=0)
    with pytest.raises(ConfigError, match="--env-step-timeout needs gymnasium envs"):
        VecEnv("CartPole-v1", 1, 0, CPU, backend="numpy", step_timeout=1.0)
    # auto picks gymnasium's env (in workers) instead of the in-process numpy twin
    envs = VecEnv("CartPole-v1", 1, 0, CPU, backend="auto", step_timeout=1.0)
    assert envs.backend == "gymnasium" and isinstance(envs.envs, gym.vector.AsyncVectorEnv)
    envs.close()
    args = ["train", "CartPole-v1", "--env-step-timeout", "-1", "--no-tensorboard", "--no-progress",
            "--run-dir", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "env_step_timeout" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- second signal
SIGNAL_SCRIPT = """
import sys, time
from pathlib import Path
import gymnasium as gym
import numpy as np
from ppox.cli import main

MARKER = Path({marker!r})

class StuckEnv(gym.Env):
    # a hostile env: stuck in step(), and swallowing the KeyboardInterrupt meant to get it out
    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {{}}
    def step(self, action):
        self.t += 1
        if self.t == 5 and MARKER.parent.exists() and not MARKER.exists():
            MARKER.write_text("stuck")
            while True:
                try:
                    time.sleep(3600)
                except KeyboardInterrupt:
                    pass
        return np.zeros(2, np.float32), 1.0, False, self.t >= 30, {{}}

gym.register("Stuck-v0", entry_point=StuckEnv)
sys.exit(main(["train", "Stuck-v0", "--num-envs", "1", "--num-steps", "16", "--num-minibatches", "2",
               "--total-timesteps", "64", "--no-tensorboard", "--no-progress", "--eval-episodes", "0",
               "--run-dir", {run!r}]))
"""


@pytest.mark.parametrize(("sig", "count"), [(signal.SIGTERM, 2), (signal.SIGINT, 3)])
def test_second_signal_ends_a_process_stuck_in_env_code(tmp_path, sig, count):
    marker = tmp_path / "stuck"
    script = SIGNAL_SCRIPT.format(marker=str(marker), run=str(tmp_path / "run"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the env never got stuck"
            time.sleep(0.05)
        for _ in range(count - 1):
            proc.send_signal(sig)
            time.sleep(0.5)
            assert proc.poll() is None  # the first signal asks for a stop at the end of the iteration
        proc.send_signal(sig)
        proc.wait(timeout=10)  # was: a stuck process (KeyboardInterrupt swallowed by the env)
        assert proc.returncode == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_second_signal_in_process_raises_keyboard_interrupt_and_restores_handlers():
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    with pytest.raises(KeyboardInterrupt), StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested == "SIGINT"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second SIGTERM needs no Python code
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before


# ---------------------------------------------------------------------------- observation checks
def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_out_of_bounds_observations_warn_once(capfd, vectorization):
    envs = VecEnv(None, 2, 0, CPU, vectorization=vectorization, env_fn=OutOfBoundsEnv)
    try:
        envs.reset()
        _step(envs, 100)
    finally:
        envs.close()
    lines = _warnings(capfd.readouterr().err)
    assert lines == ["warning: OutOfBoundsEnv returned observation outside the declared bounds "
                     "(environment 0, element [1]: 3.0 not in [-1.0, 1.0])"]


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_wrong_observation_dtype_warns_once(capfd, vectorization):
    for _ in range(2):  # a second VecEnv (e.g. the evaluation's) does not repeat it
        envs = VecEnv(None, 3, 0, CPU, vectorization=vectorization, env_fn=Float64Env)
        try:
            envs.reset()
            _step(envs, 50)
        finally:
            envs.close()
    lines = _warnings(capfd.readouterr().err)
    assert lines == ["warning: Float64Env returned observation of dtype float64, declared float32"]


def test_observation_check_is_off_the_hot_path(capfd, monkeypatch):
    calls = []
    original = VecEnv._check_obs
    monkeypatch.setattr(VecEnv, "_check_obs", lambda self, *a, **k: (calls.append(1), original(self, *a, **k)))
    envs = VecEnv(None, 2, 0, CPU, vectorization="sync", env_fn=LateOutOfBoundsEnv)
    envs.reset()
    _step(envs, 100)
    envs.close()
    assert len(calls) == envs_module.OBS_CHECKS + 1  # the first reset and OBS_CHECKS steps only
    assert _warnings(capfd.readouterr().err) == []  # sampled: a late violation goes unseen, by design


def test_ppo_trains_on_env_with_bad_observations_with_one_warning(capfd, tiny):
    with PPO(tiny(None), env_fn=OutOfBoundsEnv) as model:
        model.learn()
    lines = _warnings(capfd.readouterr().err)
    assert len([line for line in lines if "outside the declared bounds" in line]) == 1

