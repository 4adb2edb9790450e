"""Callbacks for `PPO.learn(callback=...)`, in Stable-Baselines3's shape.

A callback sees five events of a run (rank 0 only under torchrun; a stop is agreed by all ranks):

    on_training_start()                    once, before the first rollout
    on_step() -> bool                      each rollout step, vectorised: self.locals = {"step", "result"}
                                           (the env step of all envs: numpy arrays in the numpy rollout,
                                           tensors in the torch rollout). Only callbacks that override
                                           `_on_step` are called: the others cost the rollout nothing
    on_rollout_end()                       after each rollout
    on_update() -> bool                    after each update; self.locals = {"record": the iteration's
                                           metrics record}; keys a callback adds are logged with it
    on_training_end()                      once, after the model and summary.json are written

Returning False from on_step or on_update stops training at the end of the current iteration: its update
completes, a checkpoint and the model are written, the final evaluation runs and summary.json says which
callback stopped the run (`stopped_by`). This is SB3's contract, except that SB3 drops a rollout cut
short mid-way; here every iteration is whole, so a stopped run can be resumed exactly.

Built-ins: EvalCallback (periodic deterministic evaluation on separate envs, keeps RUN_DIR/best/, logs
eval_return_mean/std), StopTrainingOnRewardThreshold and StopTrainingOnNoModelImprovement (children of
EvalCallback, as in SB3), CheckpointCallback (a model snapshot every N steps).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ppox.errors import ConfigError
from ppox.io import atomic_write_json, read_json

PPO = Any  # ppox.rl.ppo.PPO, which imports this module: named here only for the reader


class BaseCallback:
    """Override the `_on_*` methods you need; `self.model` is the PPO being trained, `self.num_timesteps`
    its global step, `self.n_calls` the number of on_step calls so far."""

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose
        self.model: PPO | None = None
        self.parent: BaseCallback | None = None
        self.locals: dict[str, Any] = {}
        self.n_calls = 0
        self.num_timesteps = 0

    # the events (called by the trainer through CallbackList)
    def init_callback(self, model: PPO) -> None:
        self.model = model
        self.num_timesteps = model.global_step

    def on_training_start(self) -> None:
        self._on_training_start()

    def on_step(self, locals_: dict[str, Any] | None = None) -> bool:
        self.n_calls += 1
        if locals_ is not None:
            self.locals = locals_
        return bool(self._on_step())

    def on_rollout_end(self) -> None:
        self.num_timesteps = self.model.global_step
        self._on_rollout_end()

    def on_update(self, locals_: dict[str, Any] | None = None) -> bool:
        self.num_timesteps = self.model.global_step
        if locals_ is not None:
            self.locals = locals_
        return bool(self._on_update())

    def on_training_end(self) -> None:
        self._on_training_end()

    # what subclasses override
    def _on_training_start(self) -> None:
        pass

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        pass

    def _on_update(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        pass

    @property
    def wants_steps(self) -> bool:
        """Whether this callback needs the per-step event (it overrides `_on_step`)."""
        return type(self)._on_step is not BaseCallback._on_step

    @property
    def name(self) -> str:
        return type(self).__name__


class CallbackList(BaseCallback):
    """Several callbacks as one, called in order; a stop from any of them stops training (the others still
    see the event, as in SB3). `stopped_by` names the first callback that returned False."""

    def __init__(self, callbacks: Iterable[BaseCallback]) -> None:
        super().__init__()
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, BaseCallback):
                raise ConfigError(f"a callback must be a ppox.rl.callbacks.BaseCallback, got {type(cb).__name__}")
        self.stopped_by: str | None = None

    def init_callback(self, model: PPO) -> None:
        super().init_callback(model)
        for cb in self.callbacks:
            cb.init_callback(model)

    @property
    def wants_steps(self) -> bool:
        return any(cb.wants_steps for cb in self.callbacks)

    def _all(self, event: str, *args: Any) -> bool:
        go_on = True
        for cb in self.callbacks:
            if getattr(cb, event)(*args) is False:
                go_on = False
                self.stopped_by = self.stopped_by or cb.name
        return go_on

    def on_training_start(self) -> None:
        self._all("on_training_start")

    def on_step(self, locals_: dict[str, Any] | None = None) -> bool:
        return self._all("on_step", locals_)

    def on_rollout_end(self) -> None:
        self._all("on_rollout_end")

    def on_update(self, locals_: dict[str, Any] | None = None) -> bool:
        return self._all("on_update", locals_)

    def on_training_end(self) -> None:
        self._all("on_training_end")


CallbackLike = BaseCallback | list[BaseCallback] | tuple[BaseCallback, ...] | None


def make_callbacks(callback: CallbackLike, model: PPO) -> CallbackList:
    """The run's callbacks: those its config asks for (--eval-every, --stop-at-return) then the user's."""
    cfg = model.config
    from_config: list[BaseCallback] = []
    if cfg.eval_every > 0:
        on_best = StopTrainingOnRewardThreshold(cfg.stop_at_return) if cfg.stop_at_return is not None else None
        from_config.append(EvalCallback(eval_freq=cfg.eval_every, n_eval_episodes=cfg.eval_episodes or 5,
                                        callback_on_new_best=on_best))
    given = [] if callback is None else list(callback) if isinstance(callback, list | tuple) else [callback]
    callbacks = CallbackList([*from_config, *given])
    callbacks.init_callback(model)
    return callbacks


def start_callbacks(callbacks: CallbackList, collector: Any) -> None:
    """Training starts: the rollout calls on_step after each env step only when a callback overrides it
    (else its hook stays None: one attribute test per step), then on_training_start."""

    def step_hook(step: int, result: Any) -> None:
        callbacks.on_step({"step": step, "result": result})

    collector.step_hook = step_hook if callbacks.wants_steps else None
    callbacks.on_training_start()


# ---------------------------------------------------------------------------- built-ins
class EventCallback(BaseCallback):
    """A callback that triggers a child callback on its event (SB3's EventCallback)."""

    def __init__(self, callback: BaseCallback | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.callback = callback
        if callback is not None:
            callback.parent = self

    def init_callback(self, model: PPO) -> None:
        super().init_callback(model)
        if self.callback is not None:
            self.callback.init_callback(model)

    def _on_event(self) -> bool:
        if self.callback is None:
            return True
        self.callback.num_timesteps = self.num_timesteps
        return self.callback.on_update(self.locals)


class EvalCallback(EventCallback):
    """Evaluate the deterministic policy every `eval_freq` env steps on separate envs (PPO.evaluate: the
    registered gymnasium env, normalisation frozen, seeded apart from the training envs).

    Each evaluation adds eval_return_mean / eval_return_std / eval_episodes to the iteration's record
    (metrics.jsonl, TensorBoard, W&B). A new best mean saves the model to `best_model_save_path` (default
    RUN_DIR/best) with best/eval.json, then calls `callback_on_new_best`; `callback_after_eval` runs after
    every evaluation. Both children may stop training. A resumed run reads best/eval.json, so `best/` only
    ever holds the best model of the whole run.
    """

    def __init__(self, eval_freq: int = 10_000, n_eval_episodes: int = 5,
                 callback_on_new_best: BaseCallback | None = None, callback_after_eval: BaseCallback | None = None,
                 best_model_save_path: str | Path | None = None, seed: int | None = None, verbose: int = 1) -> None:
        super().__init__(callback_after_eval, verbose)
        if eval_freq <= 0 or n_eval_episodes <= 0:
            raise ConfigError(f"EvalCallback needs eval_freq > 0 and n_eval_episodes > 0, got {eval_freq}, "
                              f"{n_eval_episodes}")
        self.eval_freq = eval_freq
        self.n_eval_episodes = n_eval_episodes
        self.callback_on_new_best = callback_on_new_best
        if callback_on_new_best is not None:
            callback_on_new_best.parent = self
        self.best_model_save_path = best_model_save_path
        self.seed = seed
        self.best_mean_reward = -float("inf")
        self.last_mean_reward = -float("inf")
        self.evaluations: list[dict[str, Any]] = []
        self._next_eval = eval_freq

    def init_callback(self, model: PPO) -> None:
        super().init_callback(model)
        if self.callback_on_new_best is not None:
            self.callback_on_new_best.init_callback(model)

    def _best_dir(self) -> Path:
        return Path(self.best_model_save_path or Path(self.model.run_dir) / "best")

    def _on_training_start(self) -> None:
        # the next multiple of eval_freq after the current step (a resumed run keeps its cadence)
        self._next_eval = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq
        best = self._best_dir() / "eval.json"
        if self.model.iteration > 0 and best.is_file():  # a continued run: beat the run's best, not -inf
            self.best_mean_reward = float(read_json(best)["eval_return_mean"])

    def _on_update(self) -> bool:
        if self.num_timesteps < self._next_eval:
            return True
        self._next_eval = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq
        result = self.model.evaluate(self.n_eval_episodes, seed=self.seed)
        self.last_mean_reward = result["mean"]
        entry = {"global_step": self.num_timesteps, "eval_return_mean": result["mean"],
                 "eval_return_std": result["std"], "eval_episodes": result["episodes"]}
        self.evaluations.append(entry)
        record = self.locals.get("record")
        if record is not None:
            record.update({k: v for k, v in entry.items() if k != "global_step"})
        go_on = True
        if result["mean"] > self.best_mean_reward:
            self.best_mean_reward = result["mean"]
            best = self._best_dir()
            self.model.save(best)
            atomic_write_json(best / "eval.json", entry)
            if self.verbose:
                print(f"eval at step {self.num_timesteps:,}: mean return {result['mean']:.2f} (new best, saved "
                      f"in {best})", file=sys.stderr)
            if self.callback_on_new_best is not None:
                self.callback_on_new_best.num_timesteps = self.num_timesteps
                go_on = self.callback_on_new_best.on_update(self.locals)
        elif self.verbose:
            print(f"eval at step {self.num_timesteps:,}: mean return {result['mean']:.2f} "
                  f"(best {self.best_mean_reward:.2f})", file=sys.stderr)
        return self._on_event() and go_on


class StopTrainingOnRewardThreshold(BaseCallback):
    """Child of EvalCallback (callback_on_new_best): stop once the best evaluation mean reaches the threshold."""

    def __init__(self, reward_threshold: float, verbose: int = 1) -> None:
        super().__init__(verbose)
        self.reward_threshold = reward_threshold

    def _on_update(self) -> bool:
        if not isinstance(self.parent, EvalCallback):
            raise ConfigError("StopTrainingOnRewardThreshold must be given to EvalCallback(callback_on_new_best=...)")
        if self.parent.best_mean_reward >= self.reward_threshold:
            if self.verbose:
                print(f"stopping: evaluation mean return {self.parent.best_mean_reward:.2f} reached the threshold "
                      f"{self.reward_threshold}", file=sys.stderr)
            return False
        return True


class StopTrainingOnNoModelImprovement(BaseCallback):
    """Child of EvalCallback (callback_after_eval): stop after `max_no_improvement_evals` evaluations in a row
    without a new best, counting only after `min_evals` evaluations."""

    def __init__(self, max_no_improvement_evals: int, min_evals: int = 0, verbose: int = 1) -> None:
        super().__init__(verbose)
        self.max_no_improvement_evals = max_no_improvement_evals
        self.min_evals = min_evals
        self.last_best = -float("inf")
        self.no_improvement_evals = 0
        self.n_evals = 0

    def _on_update(self) -> bool:
        if not isinstance(self.parent, EvalCallback):
            raise ConfigError("StopTrainingOnNoModelImprovement must be given to EvalCallback(callback_after_eval=...)")
        self.n_evals += 1
        if self.n_evals > self.min_evals:
            improved = self.parent.best_mean_reward > self.last_best
            self.no_improvement_evals = 0 if improved else self.no_improvement_evals + 1
        self.last_best = self.parent.best_mean_reward
        if self.no_improvement_evals > self.max_no_improvement_evals:
            if self.verbose:
                print(f"stopping: no new best in {self.no_improvement_evals} evaluations", file=sys.stderr)
            return False
        return True


class CheckpointCallback(BaseCallback):
    """Save a model snapshot (model.safetensors + model.json, loadable with PPO.load) every `save_freq` env
    steps to `save_path`/`name_prefix`_<steps>_steps (default RUN_DIR/snapshots). Snapshots are all kept;
    the resumable, pruned checkpoints are --checkpoint-every's."""

    def __init__(self, save_freq: int, save_path: str | Path | None = None, name_prefix: str = "model",
                 verbose: int = 0) -> None:
        super().__init__(verbose)
        if save_freq <= 0:
            raise ConfigError(f"CheckpointCallback needs save_freq > 0, got {save_freq}")
        self.save_freq = save_freq
        self.save_path = save_path
        self.name_prefix = name_prefix
        self.saved: list[Path] = []
        self._next = save_freq

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_update(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq
            root = Path(self.save_path or Path(self.model.run_dir) / "snapshots")
            path = self.model.save(root / f"{self.name_prefix}_{self.num_timesteps}_steps")
            self.saved.append(path)
            if self.verbose:
                print(f"saved model snapshot {path}", file=sys.stderr)
        return True


__all__ = ["BaseCallback", "CallbackList", "CheckpointCallback", "EvalCallback", "EventCallback",
           "StopTrainingOnNoModelImprovement", "StopTrainingOnRewardThreshold", "make_callbacks", "start_callbacks"]
