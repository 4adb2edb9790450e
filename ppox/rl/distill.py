"""Teacher-student distillation (RMA / "hora" phase 2): a deployable student from a privileged PPO teacher.

The teacher is an ordinary PPO run on a Dict observation with a "privileged" key (e.g. a randomised env of
ppox.envs.randomization): its encoder (ppox.rl.policy.PrivilegedEncoder) embeds the privileged part into a
latent z that its trunk reads with the deployable keys. The student is that same Policy, frozen, with z
replaced by an estimate from an adaptation module:

    z_hat = adaptation([window of the last H (deployable obs, action) pairs, current deployable obs])
    action ~ teacher's trunk and heads (deployable obs, z_hat)

Only the adaptation module learns, on the student's OWN rollouts (DAgger): the student acts, the teacher
labels every visited state with its z (and its action distribution), and the loss is

    latent_coef * ||z_hat - z||^2  +  action_coef * KL(teacher's action distribution || student's)

The privileged key never reaches the student: `Student` takes deployable observations only (it runs on
the env's "Blind" variant, which has no privileged key), and the distiller slices the key off before
calling it. A run directory looks like a training run's: config.json, metrics.jsonl, TensorBoard,
checkpoints/ (ppox.runs protocol: exact resume after SIGKILL), summary.json, plus student.safetensors /
student.json (the model) and teacher/ (a copy of the teacher, so the student file is self-contained).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ppox import __version__
from ppox.distributed import Collective
from ppox.errors import ConfigError, ModelFileError
from ppox.io import (
    FORMAT_VERSION,
    RunDirError,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    read_json,
    save_tensors,
)
from ppox.rl.checkpoint import capture_envs, restore_envs
from ppox.rl.envs import VecEnv
from ppox.rl.policy import LATENT_DIM, MLPEncoder, Policy, PrivilegedEncoder, layer_init
from ppox.rl.spaces import ActionSpec, to_env_action
from ppox.run_context import Progress, RunContext, hold_run_dir
from ppox.runs import (
    ENV_STATE_FILE,
    begin_checkpoint,
    discard_after,
    find_checkpoint,
    flatten_optimizer,
    list_checkpoints,
    publish_checkpoint,
    read_state,
    unflatten_optimizer,
)

KIND = "ppox.rl.distill"
STUDENT_FILE = "student.safetensors"
STUDENT_META = "student.json"
TEACHER_DIR = "teacher"


@dataclass
class DistillConfig:
    """Distil a privileged PPO teacher into a deployable student (`ppox distill TEACHER_RUN --run-dir DIR`)."""

    teacher: str = ""
    """The teacher's run directory (or any directory holding its model.safetensors and model.json)."""
    run_dir: str | None = None
    """Where the student's run goes (default runs/distill_<env>_<seed>)."""
    env_id: str | None = None
    """The env to distil on (default: the teacher's); it must have the teacher's Dict observation."""
    env_backend: str = "auto"
    """numpy, torch or gymnasium envs ("auto": ppox's numpy twin on a CPU where there is one)."""
    total_timesteps: int = 40_000
    """Env steps of the student's own rollouts."""
    num_envs: int = 8
    """Parallel envs."""
    num_steps: int = 64
    """Steps per env per iteration (an iteration: rollout, then the adaptation module's update)."""
    history: int = 8
    """H: the student sees its last H (deployable observation, action) pairs and the current observation."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden widths of the adaptation module (an MLP over the flattened window)."""
    learning_rate: float = 1e-3
    """Adam step size of the adaptation module."""
    update_epochs: int = 4
    """Passes over each iteration's data."""
    num_minibatches: int = 4
    """Minibatches per pass."""
    latent_coef: float = 1.0
    """Weight of the latent regression ||z_hat - z||^2."""
    action_coef: float = 1.0
    """Weight of the action imitation KL(teacher || student) on the student's own states (0: latent only)."""
    seed: int = 1
    """Seed of the envs, the student's weights and its action sampling."""
    device: str = "cpu"
    """Torch device."""
    checkpoint_every: int = 10
    """Checkpoint every N iterations (and after the last one, and on Ctrl-C / SIGTERM); 0: only those."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept."""
    eval_episodes: int = 50
    """Episodes of the final evaluation in summary.json (held-out env seeds; 0: none)."""
    tensorboard: bool = True
    """Write TensorBoard event files next to metrics.jsonl."""
    progress: bool = True
    """Draw a progress bar."""

    def validate(self) -> None:
        for name in ("total_timesteps", "num_envs", "num_steps", "history", "update_epochs", "num_minibatches",
                     "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.checkpoint_every < 0 or self.eval_episodes < 0:
            raise ConfigError("checkpoint_every and eval_episodes must be >= 0")
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes must be widths >= 1, got {self.hidden_sizes!r}")
        for name in ("learning_rate", "latent_coef", "action_coef"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.learning_rate <= 0 or self.latent_coef + self.action_coef <= 0:
            raise ConfigError("learning_rate and latent_coef + action_coef must be > 0")
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ConfigError(f"num_envs * num_steps ({self.num_envs * self.num_steps}) must divide into "
                              f"num_minibatches ({self.num_minibatches})")
        if self.env_backend not in ("auto", "numpy", "torch", "gymnasium"):
            raise ConfigError(f"env_backend must be auto, numpy, torch or gymnasium, got {self.env_backend!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown distill setting(s): {', '.join(unknown)}")
        d = dict(d)
        if "hidden_sizes" in d:
            d["hidden_sizes"] = tuple(d["hidden_sizes"])
        return cls(**d)


# ---------------------------------------------------------------------------- the student
def action_width(spec: ActionSpec) -> int:
    """Width of an action's features in the history: one-hot per categorical, the value per continuous dim."""
    return spec.head_size


def action_features(actions: torch.Tensor, spec: ActionSpec) -> torch.Tensor:
    """Policy actions (batch, *action_shape) -> (batch, action_width) float features."""
    if spec.kind == "continuous":
        return actions.float().reshape(actions.shape[0], -1)
    columns = actions.long().reshape(actions.shape[0], -1)
    return torch.cat([nn.functional.one_hot(columns[:, i], n).float() for i, n in enumerate(spec.nvec)], dim=1)


class Student(nn.Module):
    """The deployable policy: the teacher's frozen Policy with its privileged latent replaced by the
    adaptation module's estimate from history. Inputs are deployable observations only.

    `policy`: the teacher's (its actor_body a PrivilegedEncoder). `obs_mean`/`obs_var`: the teacher's
    observation statistics restricted to the deployable keys (None: the teacher did not normalise)."""

    def __init__(self, policy: Policy, history: int, hidden_sizes: tuple[int, ...],
                 obs_stats: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> None:
        super().__init__()
        body = policy.actor_body
        if not isinstance(body, PrivilegedEncoder) or policy.recurrent:
            raise ConfigError("the teacher must be a memoryless policy on a Dict observation with a "
                              "'privileged' key (e.g. ppox/CartPoleRandomized-v0)")
        self.policy = policy.requires_grad_(False)
        self.history = history
        self.deployable_dim = body.deployable_dim
        self.step_width = body.deployable_dim + action_width(policy.spec)
        in_dim = history * self.step_width + body.deployable_dim
        self.adaptation = nn.Sequential(MLPEncoder(in_dim, hidden_sizes, "tanh"),
                                        layer_init(nn.Linear(hidden_sizes[-1], LATENT_DIM), gain=1.0), nn.Tanh())
        if obs_stats is None:
            self.obs_mean = self.obs_var = None
            self.clip = 0.0
        else:
            mean, var, self.clip = obs_stats
            self.register_buffer("obs_mean", mean.float().clone())
            self.register_buffer("obs_var", var.float().clone())

    @property
    def spec(self) -> ActionSpec:
        return self.policy.spec

    def observe(self, deployable: torch.Tensor) -> torch.Tensor:
        """Raw deployable observations (batch, deployable_dim) -> the network's input (teacher's normalisation)."""
        if self.obs_mean is None:
            return deployable
        normed = (deployable - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)
        return normed.clamp(-self.clip, self.clip)

    def latent(self, obs: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """z_hat (batch, LATENT_DIM) from observed obs (batch, deployable_dim) and window (batch, H * step_width)."""
        return self.adaptation(torch.cat([window, obs], dim=1))

    def head(self, obs: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """The action head's output (batch, head_size): the teacher's trunk and head on (obs, z_hat)."""
        return self.policy.head_from_latent(obs, self.latent(obs, window))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, window: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        head = self.head(obs, window)
        return self.policy.distribution.sample(head, self.policy.log_std, deterministic, None, None)


class History:
    """The student's window: the last H (observed deployable obs, action features) pairs of each env,
    newest last, zeros before an episode's start. buffer: (num_envs, H, step_width)."""

    def __init__(self, num_envs: int, student: Student, device: torch.device | str) -> None:
        self.buffer = torch.zeros(num_envs, student.history, student.step_width, device=device)
        self.spec = student.spec

    def window(self) -> torch.Tensor:
        return self.buffer.flatten(1)

    def push(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        step = torch.cat([obs, action_features(actions, self.spec)], dim=1)
        self.buffer = torch.cat([self.buffer[:, 1:], step.unsqueeze(1)], dim=1)

    def clear(self, done: torch.Tensor) -> None:
        """Forget the windows of envs whose episode just ended (their next observation starts a new one)."""
        self.buffer = self.buffer * (~done).to(self.buffer.dtype).view(-1, 1, 1)


class DeployedStudent:
    """A student loaded for use (`load_student`): `predict` keeps the history window itself."""

    def __init__(self, student: Student, meta: dict[str, Any], device: torch.device) -> None:
        self.student = student.eval()
        self.meta = meta
        self.device = device
        self._history: History | None = None

    def reset(self, num_envs: int = 1) -> None:
        """Start new episodes: an empty window for each of `num_envs` envs."""
        self._history = History(num_envs, self.student, self.device)

    def predict(self, obs, episode_start=None, deterministic: bool = True) -> np.ndarray:
        """Actions for deployable observations (deployable_dim,) or (batch, deployable_dim), in the env's
        format. The window advances with every call; `episode_start` (bool per row) clears it first."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        single = x.dim() == 1
        x = x.reshape(-1, self.student.deployable_dim)
        if self._history is None or self._history.buffer.shape[0] != x.shape[0]:
            self.reset(x.shape[0])
        if episode_start is not None:
            starts = torch.as_tensor(np.asarray(episode_start, dtype=bool), device=self.device).reshape(-1)
            self._history.clear(starts)
        env_actions = to_env_action(self.act(x), self.student.spec)
        return env_actions[0] if single else env_actions

    def act(self, deployable: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Policy actions for raw deployable observations (batch, deployable_dim); advances the window."""
        obs = self.student.observe(deployable)
        actions = self.student.act(obs, self._history.window(), deterministic)
        self._history.push(obs, actions)
        return actions


# ---------------------------------------------------------------------------- evaluation
def evaluate_on_params(env_id: str, episodes: int, seed: int, act, device: torch.device | str = "cpu",
                       backend: str = "auto") -> dict[str, Any]:
    """One episode in each of `episodes` envs seeded `seed` (env i: seed + i): every policy evaluated with the
    same `seed` meets the same randomised parameters and initial states. `act(obs, done)` maps observations
    (episodes, obs_dim) and the previous step's done flags to policy actions. Returns mean, std, returns."""
    envs = VecEnv(env_id, episodes, seed, torch.device(device), backend=backend)
    returns: list[float | None] = [None] * episodes
    try:
        obs = envs.reset()
        done = torch.ones(episodes, dtype=torch.bool, device=device)
        while any(r is None for r in returns):
            result = envs.step(act(obs, done))
            for i, ret in zip(result.finished_envs, result.finished_returns, strict=True):
                if returns[i] is None:
                    returns[i] = float(ret)
            done = torch.as_tensor(result.terminated | result.truncated, device=device)
            obs = result.obs
    finally:
        envs.close()
    values = np.asarray(returns, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "episodes": episodes,
            "returns": values.tolist()}


def ppo_actor(model) -> Any:
    """`act` for evaluate_on_params from a PPO model (deterministic, its normalisation frozen)."""
    def act(obs: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        return model.agent.policy_action(model._normalize(obs, update=False), True)
    return act


def student_actor(student: DeployedStudent, num_envs: int) -> Any:
    """`act` for evaluate_on_params from a student on the env's deployable (Blind) observations."""
    student.reset(num_envs)

    def act(obs: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        student._history.clear(done.to(obs.device))
        return student.act(obs)
    return act


# ---------------------------------------------------------------------------- the distiller
class Distiller:
    """Trains a Student's adaptation module on its own rollouts, labelled by the teacher (module docstring)."""

    def __init__(self, config: DistillConfig, teacher=None) -> None:
        from ppox.rl.ppo import PPO, seed_everything

        config.validate()
        self.config = config
        self.device = torch.device(config.device)
        seed_everything(config.seed)
        self.teacher = teacher if teacher is not None else PPO.load(config.teacher, device=config.device)
        if self.teacher.agent.recurrent or not isinstance(self.teacher.agent.actor_body, PrivilegedEncoder):
            raise ConfigError(f"the teacher {config.teacher} was not trained on a Dict observation with a "
                              "'privileged' key (e.g. ppox train ppox/CartPoleRandomized-v0); nothing to distil")
        self.env_id = config.env_id or self.teacher.config.env_id
        self.body: PrivilegedEncoder = self.teacher.agent.actor_body
        self.student = Student(self.teacher.agent, config.history, config.hidden_sizes, self._deployable_stats())
        self.student.to(self.device)
        self.optimizer = torch.optim.Adam(self.student.adaptation.parameters(), lr=config.learning_rate, eps=1e-5)
        self.envs = VecEnv(self.env_id, config.num_envs, config.seed, self.device, backend=config.env_backend)
        if self.envs.obs_dim != self.teacher.obs_dim:
            raise ConfigError(f"{self.env_id}'s observations ({self.envs.single_observation_space}) are not the "
                              f"teacher's ({self.teacher.observation_space})")
        self.history = History(config.num_envs, self.student, self.device)
        self.obs: torch.Tensor | None = None
        self.global_step = 0
        self.iteration = 0
        self.recent_returns: deque[float] = deque(maxlen=100)
        self._shuffle = torch.Generator().manual_seed(config.seed)
        self.run_dir: Path | None = None
        self.lock = None
        self.interrupted = False
        self.summary: dict[str, Any] = {}

    def _deployable_stats(self) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        norm = self.teacher.obs_norm
        if norm is None:
            return None
        index = torch.cat([torch.arange(a, b) for a, b in self.body.deployable_parts])
        return norm.rms.mean[index].float(), norm.rms.var[index].float(), float(norm.clip)

    # ------------------------------------------------------------------ one iteration
    def _collect(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """num_steps steps of every env, the student acting; the teacher labels each state."""
        cfg, student, teacher = self.config, self.student, self.teacher
        keys = ("obs", "window", "z", "teacher_head")
        data: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        finished = 0
        with torch.no_grad():
            for _ in range(cfg.num_steps):
                full = teacher._normalize(self.obs, update=False)  # (num_envs, obs_dim), privileged included
                z = teacher.agent.latent(full)
                obs = student.observe(self.body.deployable(self.obs))  # the student's input: deployable only
                window = self.history.window()
                actions = student.act(obs, window, deterministic=False)
                data["obs"].append(obs)
                data["window"].append(window)
                data["z"].append(z)
                data["teacher_head"].append(teacher.agent.head_from_latent(self.body.deployable(full), z))
                self.history.push(obs, actions)
                result = self.envs.step(actions)
                self.history.clear(torch.as_tensor(result.terminated | result.truncated, device=self.device))
                self.recent_returns.extend(result.finished_returns)
                finished += len(result.finished_returns)
                self.obs = result.obs
        self.global_step += cfg.num_steps * cfg.num_envs
        return {k: torch.cat(v) for k, v in data.items()}, {"episodes": finished}

    def _losses(self, batch: dict[str, torch.Tensor], idx: torch.Tensor | slice) -> tuple[torch.Tensor, ...]:
        obs, window = batch["obs"][idx], batch["window"][idx]
        z_hat = self.student.latent(obs, window)
        latent_mse = (z_hat - batch["z"][idx]).square().sum(dim=1).mean()
        head = self.student.policy.head_from_latent(obs, z_hat)
        action_kl = self._kl(batch["teacher_head"][idx], head).mean()
        return latent_mse, action_kl, head

    def _kl(self, teacher_head: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) per row: per categorical of the action space, or the Gaussians' (same std)."""
        spec = self.student.spec
        if spec.kind == "continuous":
            var = torch.exp(2 * self.student.policy.log_std)
            return 0.5 * ((head - teacher_head).square() / var).sum(dim=1)
        kl = head.new_zeros(head.shape[0])
        for t, s in zip(teacher_head.split(list(spec.nvec), dim=1), head.split(list(spec.nvec), dim=1), strict=True):
            log_p, log_q = torch.log_softmax(t, dim=1), torch.log_softmax(s, dim=1)
            kl = kl + (log_p.exp() * (log_p - log_q)).sum(dim=1)
        return kl

    def _agreement(self, teacher_head: torch.Tensor, head: torch.Tensor) -> float:
        dist = self.student.policy.distribution
        log_std = self.student.policy.log_std
        same = dist.sample(teacher_head, log_std, True, None, None) == dist.sample(head, log_std, True, None, None)
        if self.student.spec.kind == "continuous":  # within a tenth of the action range counts as agreeing
            width = torch.tensor(self.student.spec.high) - torch.tensor(self.student.spec.low)
            t = dist.sample(teacher_head, log_std, True, None, None)
            s = dist.sample(head, log_std, True, None, None)
            same = ((t - s).abs() <= 0.1 * width.to(t.device)).all(dim=1)
        elif same.dim() > 1:
            same = same.all(dim=1)
        return float(same.float().mean())

    def _update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():  # the error on the states the student itself visited, before learning from them
            latent_mse, action_kl, head = self._losses(batch, slice(None))
            record = {"latent_mse": float(latent_mse), "action_kl": float(action_kl),
                      "action_agreement": self._agreement(batch["teacher_head"], head)}
        n = batch["obs"].shape[0]
        size = n // cfg.num_minibatches
        for _ in range(cfg.update_epochs):
            order = torch.randperm(n, generator=self._shuffle).to(self.device)
            for start in range(0, n, size):
                latent_mse, action_kl, _ = self._losses(batch, order[start:start + size])
                loss = cfg.latent_coef * latent_mse + cfg.action_coef * action_kl
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.student.adaptation.parameters(), 1.0)
                self.optimizer.step()
        with torch.no_grad():
            record["latent_mse_after_update"] = float(self._losses(batch, slice(None))[0])
        return record

    # ------------------------------------------------------------------ the loop
    def learn(self, total_timesteps: int | None = None) -> dict[str, Any]:
        """Distil until total_timesteps env steps; returns the summary (also in RUN_DIR/summary.json)."""
        cfg = self.config
        if total_timesteps is not None:
            cfg.total_timesteps = total_timesteps
        per_iteration = cfg.num_envs * cfg.num_steps
        last = max(1, cfg.total_timesteps // per_iteration)
        run_dir = self._open()
        fresh = self.iteration == 0
        if fresh:
            (run_dir / TEACHER_DIR).mkdir(exist_ok=True)
            self.teacher.save(run_dir / TEACHER_DIR)
            self.obs = self.envs.reset()
        progress = Progress(cfg.progress, last * per_iteration, f"distill {self.env_id}")
        run = RunContext(run_dir, Collective(), self.lock, fresh=fresh, config=cfg.to_dict(),
                         tensorboard=cfg.tensorboard, checkpoint_every=cfg.checkpoint_every,
                         resume_command="ppox distill --resume", progress=progress, on_exit=self._save_model)
        self.lock = None  # the RunContext holds it now
        start_wall = time.perf_counter()
        with run:
            while self.iteration < last:
                t0 = time.perf_counter()
                self.iteration += 1
                batch, info = self._collect()
                record = {"iteration": self.iteration, "global_step": self.global_step, **self._update(batch),
                          "episodes": info["episodes"],
                          "episodic_return_mean": float(np.mean(self.recent_returns)) if self.recent_returns else None,
                          "sps": per_iteration / max(time.perf_counter() - t0, 1e-9),
                          "wall_time": time.perf_counter() - start_wall}
                run.log(record, final=self.iteration == last, recent_returns=self.recent_returns)
                stop = run.stop_requested()
                if stop is not None or run.checkpoint_due(self.iteration, last):
                    self._checkpoint(run_dir)
                if stop is not None:
                    self.interrupted = True
                    break
        summary = {"kind": KIND, "env_id": self.env_id, "teacher": cfg.teacher, "global_step": self.global_step,
                   "iterations": self.iteration, "interrupted": self.interrupted,
                   "final_train_return_mean": float(np.mean(self.recent_returns)) if self.recent_returns else None}
        if not self.interrupted and cfg.eval_episodes:
            summary["eval_return_mean"] = self.evaluate(cfg.eval_episodes)["mean"]
        run.write_summary(summary)
        run.release()
        self.summary = summary
        return summary

    def _open(self) -> Path:
        cfg = self.config
        if self.run_dir is None:
            name = self.env_id.replace("/", "_")
            self.run_dir = Path(cfg.run_dir or f"runs/distill_{name}_{cfg.seed}")
        self.lock = hold_run_dir(self.lock, self.run_dir)
        if self.iteration == 0 and ((self.run_dir / STUDENT_META).exists() or list_checkpoints(self.run_dir)):
            self.lock.release()
            raise RunDirError(f"{self.run_dir} holds a distillation already: continue it with "
                              f"`ppox distill --resume {self.run_dir}` or choose another --run-dir")
        return self.run_dir

    def evaluate(self, episodes: int = 50, seed: int | None = None) -> dict[str, Any]:
        """The student's deterministic return over `episodes` held-out episodes (see evaluate_on_params) on
        the env's Blind variant where there is one (no privileged key at all), else with the key sliced off."""
        from ppox.envs.randomization import blind_id

        seed = self.config.seed + 100_000 if seed is None else seed
        deployed = DeployedStudent(self.student, {}, self.device)
        blind = blind_id(self.env_id)
        if blind is not None:
            return evaluate_on_params(blind, episodes, seed, student_actor(deployed, episodes), self.device)
        actor = student_actor(deployed, episodes)
        return evaluate_on_params(self.env_id, episodes, seed,
                                  lambda obs, done: actor(self.body.deployable(obs), done), self.device)

    # ------------------------------------------------------------------ files
    def _save_model(self) -> None:
        """student.safetensors + student.json in the run directory (the adaptation module; the teacher is
        in RUN_DIR/teacher)."""
        if self.run_dir is None:
            return
        save_student(self.student, self.run_dir, self.env_id, self.config, self.global_step)

    def _checkpoint(self, run_dir: Path) -> None:
        name = f"ckpt_{self.iteration}"
        tmp = begin_checkpoint(run_dir, name)
        tensors = {f"adaptation.{k}": v for k, v in self.student.adaptation.state_dict().items()}
        optim_json = flatten_optimizer(self.optimizer.state_dict(), tensors)
        tensors.update({"history": self.history.buffer, "obs": self.obs, "torch_rng": torch.get_rng_state(),
                        "shuffle_rng": self._shuffle.get_state()})
        save_tensors(tmp / "trainer.safetensors", {k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        blob, why = capture_envs(self.envs)
        env_record: dict[str, Any] = {"captured": False, "reason": why}
        if blob is not None:
            atomic_write_bytes(tmp / ENV_STATE_FILE, blob)
            env_record = {"captured": True, "file": ENV_STATE_FILE, "sha256": hashlib.sha256(blob).hexdigest()}
        counters = self.envs.state_dict()
        state = {"format_version": FORMAT_VERSION, "kind": KIND, "iteration": self.iteration,
                 "global_step": self.global_step, "optimizer": optim_json, "envs": env_record,
                 "env_counters": {"restarts": counters["restarts"],
                                  "episode_return": counters["episode_return"].tolist(),
                                  "episode_length": counters["episode_length"].tolist()},
                 "recent_returns": list(self.recent_returns), "config": self.config.to_dict()}
        atomic_write_json(tmp / "state.json", state)
        publish_checkpoint(tmp, name, self.config.keep_checkpoints)

    @classmethod
    def resume(cls, run_dir: str | Path, total_timesteps: int | None = None, progress: bool | None = None) -> Distiller:
        """The distillation in RUN_DIR restored from its latest checkpoint; `.learn()` continues it exactly.
        Reads env_state.pkl (a pickle, checksum verified): resume only run directories you trust."""
        from ppox.rl.ppo import PPO

        run_dir = Path(run_dir)
        lock = hold_run_dir(None, run_dir)
        try:
            ckpt = find_checkpoint(run_dir)
            state = read_state(ckpt, KIND, "distillation checkpoint", ("iteration", "global_step", "config"))
            config = DistillConfig.from_dict(state["config"])
            config.run_dir = str(run_dir)
            if total_timesteps is not None:
                config.total_timesteps = total_timesteps
            if progress is not None:
                config.progress = progress
            teacher = PPO.load(run_dir / TEACHER_DIR, device=config.device)
            self = cls(config, teacher=teacher)
            tensors = load_tensors(ckpt / "trainer.safetensors", self.device)
            self.student.adaptation.load_state_dict(
                {k.removeprefix("adaptation."): v for k, v in tensors.items() if k.startswith("adaptation.")})
            self.optimizer.load_state_dict(unflatten_optimizer(state["optimizer"], tensors))
            self.history.buffer = tensors["history"].to(self.device)
            self.obs = tensors["obs"].to(self.device)
            torch.set_rng_state(tensors["torch_rng"].cpu())
            self._shuffle.set_state(tensors["shuffle_rng"].cpu())
            env = state.get("envs", {})
            if env.get("captured"):
                why = restore_envs(self.envs, ckpt / env.get("file", ENV_STATE_FILE), env.get("sha256"))
                if why is not None:
                    raise ModelFileError(f"cannot restore the envs of {ckpt}: {why}")
            counters = state["env_counters"]
            self.envs.load_state_dict({"restarts": counters["restarts"],
                                       "episode_return": np.asarray(counters["episode_return"]),
                                       "episode_length": np.asarray(counters["episode_length"])})
            self.iteration, self.global_step = int(state["iteration"]), int(state["global_step"])
            self.recent_returns.extend(float(r) for r in state.get("recent_returns", []))
            discard_after(run_dir, self.iteration)
        except BaseException:
            lock.release()
            raise
        self.run_dir, self.lock = run_dir, lock
        return self

    def close(self) -> None:
        self.envs.close()


def save_student(student: Student, run_dir: Path, env_id: str, config: DistillConfig, global_step: int) -> None:
    tensors = {f"adaptation.{k}": v.detach().cpu().contiguous() for k, v in student.adaptation.state_dict().items()}
    if student.obs_mean is not None:
        tensors.update({"obs_mean": student.obs_mean.cpu(), "obs_var": student.obs_var.cpu()})
    meta = {"format_version": FORMAT_VERSION, "ppox_version": __version__, "kind": KIND + ".Student",
            "env_id": env_id, "teacher_dir": TEACHER_DIR, "history": student.history,
            "hidden_sizes": list(config.hidden_sizes), "clip": student.clip, "global_step": global_step,
            "deployable_dim": student.deployable_dim}
    save_tensors(run_dir / STUDENT_FILE, tensors)
    atomic_write_json(run_dir / STUDENT_META, meta)


def load_student(run_dir: str | Path, device: str = "cpu") -> DeployedStudent:
    """A distilled student from its run directory (student.safetensors, student.json, teacher/): safetensors
    and JSON only. `.predict(obs)` takes deployable observations and keeps the history window itself."""
    from ppox.rl.ppo import PPO

    run_dir = Path(run_dir)
    meta = read_json(run_dir / STUDENT_META, "student metadata")
    if meta.get("kind") != KIND + ".Student":
        raise ModelFileError(f"{run_dir / STUDENT_META} is not a ppox student (kind {meta.get('kind')!r})")
    try:
        history, hidden = int(meta["history"]), tuple(int(h) for h in meta["hidden_sizes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{run_dir / STUDENT_META} is damaged ({exc})") from None
    teacher = PPO.load(run_dir / meta.get("teacher_dir", TEACHER_DIR), device=device)
    tensors = load_tensors(run_dir / STUDENT_FILE, device)
    stats = None
    if "obs_mean" in tensors:
        stats = (tensors["obs_mean"], tensors["obs_var"], float(meta.get("clip", 10.0)))
    student = Student(teacher.agent, history, hidden, stats).to(device)
    try:
        student.adaptation.load_state_dict(
            {k.removeprefix("adaptation."): v for k, v in tensors.items() if k.startswith("adaptation.")})
    except RuntimeError as exc:
        raise ModelFileError(f"{run_dir / STUDENT_FILE} does not match {STUDENT_META}: "
                             f"{str(exc).splitlines()[0]}") from None
    return DeployedStudent(student, meta, torch.device(device))


def distill(teacher: str | Path, run_dir: str | Path | None = None, **settings: Any) -> Distiller:
    """Distil the teacher run at `teacher` into a student (DistillConfig's fields as keywords); returns the
    Distiller (its `summary`, `student`, `evaluate()`), the run written to `run_dir`.

    >>> d = ppox.distill("runs/teacher", run_dir="runs/student", total_timesteps=40_000)
    >>> d.summary["eval_return_mean"]
    """
    config = DistillConfig(teacher=str(teacher), run_dir=None if run_dir is None else str(run_dir), **settings)
    distiller = Distiller(config)
    try:
        distiller.learn()
    finally:
        distiller.close()
    return distiller


# ---------------------------------------------------------------------------- the demo
DEMO_ENV = "ppox/CartPoleRandomized-v0"


def demo(run_dir: str | Path = "runs/distill_demo", teacher_steps: int = 100_000, student_steps: int = 40_960,
         episodes: int = 50, seed: int = 1, progress: bool = True, echo=print) -> dict[str, Any]:
    """Teacher (PPO on the privileged Dict observation), student (distilled from it), blind PPO baseline (the
    deployable observation only, the teacher's budget), all three evaluated deterministically on the same
    `episodes` held-out randomised parameter sets (env seeds seed + 100000 + i; training used seed + i).
    Writes RUN_DIR/{teacher,student,blind}/ and RUN_DIR/summary.json; returns the summary."""
    from ppox.envs.randomization import blind_id
    from ppox.rl.config import preset_config
    from ppox.rl.ppo import PPO

    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists() or (run_dir / "teacher").exists():
        raise RunDirError(f"{run_dir} holds a demo already: choose another --run-dir")
    start = time.perf_counter()
    common = {"seed": seed, "progress": progress, "eval_episodes": 0, "compile": False, "tensorboard": False,
              "live_doctor": False}
    stages: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        result = fn()
        stages[f"{name}_seconds"] = round(time.perf_counter() - t0, 2)
        return result

    echo(f"1/4 teacher: PPO on {DEMO_ENV} (privileged key), {teacher_steps:,} steps")
    teacher = PPO(preset_config(DEMO_ENV, "CartPole-v1", total_timesteps=teacher_steps,
                                run_dir=str(run_dir / "teacher"), **common))
    timed("teacher", teacher.learn)
    echo(f"2/4 student: distilled from the teacher on its own rollouts, {student_steps:,} steps")
    config = DistillConfig(teacher=str(run_dir / "teacher"), run_dir=str(run_dir / "student"),
                           total_timesteps=student_steps, seed=seed, progress=progress, eval_episodes=0,
                           tensorboard=False, action_coef=10.0)
    distiller = Distiller(config, teacher=teacher)
    timed("student", distiller.learn)
    blind_env = blind_id(DEMO_ENV)
    echo(f"3/4 blind baseline: PPO on {blind_env} (deployable observation only), {teacher_steps:,} steps")
    blind = PPO(preset_config(blind_env, "CartPole-v1", total_timesteps=teacher_steps,
                              run_dir=str(run_dir / "blind"), **common))
    timed("blind", blind.learn)
    echo(f"4/4 evaluation: {episodes} held-out randomised episodes each")
    eval_seed = seed + 100_000

    def evaluate_all():
        return {"teacher": evaluate_on_params(DEMO_ENV, episodes, eval_seed, ppo_actor(teacher)),
                "student": distiller.evaluate(episodes, eval_seed),
                "blind": evaluate_on_params(blind_env, episodes, eval_seed, ppo_actor(blind))}

    results = timed("eval", evaluate_all)
    for model in (teacher, blind, distiller):
        model.close()
    summary = {"env_id": DEMO_ENV, "blind_env_id": blind_env, "seed": seed, "episodes": episodes,
               "teacher_steps": teacher_steps, "student_steps": student_steps, "eval_seed": eval_seed,
               **{f"{k}_return": v["mean"] for k, v in results.items()},
               **{f"{k}_return_std": v["std"] for k, v in results.items()},
               **stages, "wall_seconds": round(time.perf_counter() - start, 2)}
    summary["student_over_teacher"] = summary["student_return"] / max(summary["teacher_return"], 1e-9)
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def demo_table(summary: dict[str, Any]) -> str:
    """The demo's result as a small text table."""
    rows = [("teacher (privileged obs)", "teacher"), ("student (obs + history)", "student"),
            ("blind PPO (obs only)", "blind")]
    lines = [f"{'policy':26s} {'return (mean ± std)':>22s}"]
    for label, key in rows:
        lines.append(f"{label:26s} {summary[key + '_return']:>12.1f} ± {summary[key + '_return_std']:<7.1f}")
    lines.append(f"{summary['episodes']} held-out randomised episodes each; wall time {summary['wall_seconds']:.0f} s")
    return "\n".join(lines)


__all__ = ["DeployedStudent", "DistillConfig", "Distiller", "History", "Student", "demo", "distill",
           "evaluate_on_params", "load_student"]
