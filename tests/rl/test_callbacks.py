"""Callbacks (ppox.rl.callbacks): the hooks' order, stopping, best-model saving, config-driven evaluation."""

import json

import pytest

from ppox.cli import main
from ppox.errors import ConfigError
from ppox.rl.callbacks import (
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from ppox.rl.ppo import PPO


class Recorder(BaseCallback):
    """Records every event; stops after `stop_after` updates (None: never)."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.events = []
        self.stop_after = stop_after

    def _on_training_start(self):
        self.events.append("start")

    def _on_step(self):
        self.events.append(("step", self.locals["step"], len(self.locals["result"].reward)))
        return True

    def _on_rollout_end(self):
        self.events.append("rollout_end")

    def _on_update(self):
        self.events.append(("update", self.num_timesteps))
        updates = sum(1 for e in self.events if isinstance(e, tuple) and e[0] == "update")
        return self.stop_after is None or updates < self.stop_after

    def _on_training_end(self):
        self.events.append("end")


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rollout_backend", ["numpy", "torch"])
def test_hooks_run_in_order_once_per_env_step(tiny, rollout_backend):
    cb = Recorder()
    config = tiny(total_timesteps=128, num_envs=2, num_steps=4, env_backend="numpy", rollout_backend=rollout_backend)
    model = PPO(config).learn(callback=cb)
    steps = [("step", i, 2) for i in range(4)]  # one call per rollout step, batched over the 2 envs
    iteration = [*steps, "rollout_end"]
    expected = ["start"] + [e for i in range(16) for e in [*iteration, ("update", 8 * (i + 1))]] + ["end"]
    assert cb.events == expected
    assert model.summary["stopped_by"] is None


def test_false_stops_training_with_model_checkpoint_and_summary(tiny):
    cb = Recorder(stop_after=3)
    config = tiny(total_timesteps=1024, num_envs=2, num_steps=16, eval_episodes=2)
    model = PPO(config).learn(callback=[cb])
    run_dir = model.run_dir
    assert model.iteration == 3 and model.global_step == 96
    assert cb.events[-1] == "end"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "Recorder" and summary["iterations"] == 3 and not summary["interrupted"]
    assert summary["eval_episodes"] == 2  # a callback stop still evaluates the final policy
    assert (run_dir / "model.safetensors").is_file()
    assert (run_dir / "checkpoints" / "ckpt_3").is_dir()  # resumable at the stop
    assert len(metrics(run_dir)) == 3


class UpdatesOnly(BaseCallback):
    def _on_update(self):
        return True


def test_no_step_hook_without_a_callback_that_overrides_it(tiny):
    model = PPO(tiny())
    model.learn(callback=Recorder())
    assert model.collector.step_hook is not None
    model.learn(callback=UpdatesOnly(), run_dir=model.run_dir)  # continues the run
    assert model.collector.step_hook is None


def test_eval_callback_keeps_the_best_model_and_logs_evaluations(tiny, monkeypatch):
    means = iter([10.0, 30.0, 20.0, 25.0])

    def fake_evaluate(self, episodes=20, deterministic=True, seed=None, num_envs=None):
        return {"mean": next(means), "std": 1.0, "episodes": episodes, "returns": [], "lengths": []}

    saved = []
    original_save = PPO.save

    def recording_save(self, path):
        saved.append((str(path), self.global_step))
        return original_save(self, path)

    monkeypatch.setattr(PPO, "evaluate", fake_evaluate)
    monkeypatch.setattr(PPO, "save", recording_save)
    eval_cb = EvalCallback(eval_freq=64, n_eval_episodes=3, verbose=0)
    model = PPO(tiny(total_timesteps=256, num_envs=2, num_steps=32))  # 4 iterations of 64 steps
    model.learn(callback=eval_cb)
    best = model.run_dir / "best"
    assert json.loads((best / "eval.json").read_text()) == {
        "global_step": 128, "eval_return_mean": 30.0, "eval_return_std": 1.0, "eval_episodes": 3}
    assert [s for s in saved if s[0] == str(best)] == [(str(best), 64), (str(best), 128)]
    assert PPO.load(best).global_step == 128
    assert [m.get("eval_return_mean") for m in metrics(model.run_dir)] == [10.0, 30.0, 20.0, 25.0]
    assert eval_cb.best_mean_reward == 30.0


def test_stop_on_reward_threshold_and_on_no_improvement(tiny, monkeypatch):
    returns = iter([5.0, 50.0, 60.0, 70.0])
    monkeypatch.setattr(PPO, "evaluate", lambda self, episodes=20, **kw: {
        "mean": next(returns), "std": 0.0, "episodes": episodes, "returns": [], "lengths": []})
    model = PPO(tiny(total_timesteps=512, num_envs=2, num_steps=32))
    model.learn(callback=EvalCallback(64, 1, callback_on_new_best=StopTrainingOnRewardThreshold(40.0), verbose=0))
    assert model.iteration == 2 and model.summary["stopped_by"] == "EvalCallback"

    flat = iter([5.0, 9.0, 8.0, 7.0, 9.0, 100.0])
    monkeypatch.setattr(PPO, "evaluate", lambda self, episodes=20, **kw: {
        "mean": next(flat), "std": 0.0, "episodes": episodes, "returns": [], "lengths": []})
    model = PPO(tiny(total_timesteps=512, num_envs=2, num_steps=32, run_dir=str(model.run_dir) + "2"))
    stop = StopTrainingOnNoModelImprovement(max_no_improvement_evals=2, min_evals=1, verbose=0)
    model.learn(callback=EvalCallback(64, 1, callback_after_eval=stop, verbose=0))
    # evaluations 5 (min_evals), 9 (best), 8, 7, 9: three in a row without a new best > 2 -> stop at the 5th
    assert model.iteration == 5 and stop.no_improvement_evals == 3


def test_checkpoint_callback_writes_loadable_snapshots(tiny):
    cb = CheckpointCallback(save_freq=128)
    model = PPO(tiny(total_timesteps=256, num_envs=2, num_steps=32)).learn(callback=cb)
    names = sorted(p.name for p in (model.run_dir / "snapshots").iterdir())
    assert names == ["model_128_steps", "model_256_steps"]
    assert PPO.load(model.run_dir / "snapshots" / "model_128_steps").global_step == 128


def test_bad_callback_is_refused_before_the_run_directory_is_touched(tiny):
    model = PPO(tiny())
    with pytest.raises(ConfigError, match="BaseCallback"):
        model.learn(callback=[object()])
    assert not (model.config.run_dir and __import__("pathlib").Path(model.config.run_dir).exists())


def test_cli_eval_every_and_stop_at_return(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(PPO, "evaluate", lambda self, episodes=20, **kw: {
        "mean": 500.0, "std": 0.0, "episodes": episodes, "returns": [500.0] * episodes, "lengths": []})
    run_dir = tmp_path / "run"
    code = main(["train", "CartPole-v1", "--total-timesteps", "2048", "--num-envs", "2", "--num-steps", "32",
                 "--num-minibatches", "2", "--update-epochs", "1", "--eval-every", "128", "--eval-episodes", "2",
                 "--stop-at-return", "400", "--no-compile", "--no-progress", "--no-tensorboard",
                 "--run-dir", str(run_dir)])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "EvalCallback" and summary["total_timesteps"] == 128
    assert (run_dir / "best" / "model.safetensors").is_file()


def test_stop_at_return_needs_eval_every(capsys):
    assert main(["train", "CartPole-v1", "--stop-at-return", "100"]) == 2
    assert "eval_every" in capsys.readouterr().err
