"""A checkpoint is checked against its run before resume changes anything; damaged files are one line;
non-finite weights never reach a checkpoint or model file (issue 12, items 13, 15 and 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ppox import runs
from ppox.cli import main
from ppox.diagnostics.metrics_io import read_metrics
from ppox.errors import ModelFileError, TrainingHalted
from ppox.rl import checkpoint as ckpt
from ppox.rl.ppo import PPO

CLI_TINY = ["--num-steps", "16", "--num-envs", "2", "--update-epochs", "2", "--num-minibatches", "2",
            "--no-tensorboard", "--no-progress", "--eval-episodes", "0", "--no-live-doctor"]
TINY = dict(num_steps=16, num_envs=2, update_epochs=2, num_minibatches=2, tensorboard=False, progress=False,
            eval_episodes=0, live_doctor=False)


def one_line(capsys, prefix: str = "error:") -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def train(run: Path, env_id: str = "CartPole-v1", total: int = 128) -> Path:
    assert main(["train", env_id, *CLI_TINY, "--total-timesteps", str(total), "--checkpoint-every", "1",
                 "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory) -> Path:
    """A 4-iteration CartPole run: ckpt_3 and ckpt_4 kept, metrics of iterations 1-4."""
    return train(tmp_path_factory.mktemp("cartpole") / "run")


@pytest.fixture
def run(cartpole, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(cartpole, copy)
    return copy


def edit_state(ckpt_dir: Path, **changes) -> None:
    path = ckpt_dir / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def drop_older(run: Path) -> None:
    """Leave only the newest checkpoint, so nothing can be fallen back on."""
    shutil.rmtree(run / "checkpoints" / "ckpt_3")


# ---------------------------------------------------------------------------- item 13: checks against the run
def test_checkpoint_of_another_env_is_refused_and_nothing_changes(run, tmp_path, capsys):
    pendulum = train(tmp_path / "pendulum", "Pendulum-v1")
    drop_older(run)
    shutil.rmtree(run / "checkpoints" / "ckpt_4")
    shutil.copytree(pendulum / "checkpoints" / "ckpt_4", run / "checkpoints" / "ckpt_4")
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = one_line(capsys)
    assert "Pendulum-v1" in err and "CartPole-v1" in err and "ckpt_4" in err
    assert snapshot(run) == before  # no metrics line, no checkpoint deleted


def test_foreign_newest_checkpoint_falls_back_to_the_previous_good_one_with_a_line(run, tmp_path, capsys):
    pendulum = train(tmp_path / "pendulum", "Pendulum-v1")
    shutil.rmtree(run / "checkpoints" / "ckpt_4")
    shutil.copytree(pendulum / "checkpoints" / "ckpt_4", run / "checkpoints" / "ckpt_4")
    assert main(["train", "--resume", str(run)]) == 0
    warning = one_line(capsys, "warning: ckpt_4")
    assert "Pendulum-v1" in warning and "rejected_ckpt_4" in warning and "ckpt_3" in warning
    root = run / "checkpoints"
    assert (root / "rejected_ckpt_4" / "state.json").exists()  # kept for the user, not deleted
    assert json.loads((root / "rejected_ckpt_4" / "state.json").read_text())["config"]["env_id"] == "Pendulum-v1"
    assert runs.latest_checkpoint(run).name == "ckpt_4"  # re-trained from ckpt_3
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3, 4]


@pytest.mark.parametrize(("changes", "words"), [
    ({"iteration": -5}, "'iteration' must be an integer >= 0"),
    ({"iteration": 3}, "not its directory's"),
    ({"global_step": 10_000}, "global step 10000"),
    ({"config": "ppo"}, "'config' must be a JSON object"),
])
def test_checkpoint_that_parses_but_is_wrong_is_refused_untouched(run, capsys, changes, words):
    drop_older(run)
    edit_state(run / "checkpoints" / "ckpt_4", **changes)
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    assert words in one_line(capsys)
    assert snapshot(run) == before


def test_checkpoint_past_the_metrics_is_refused(run, capsys):
    drop_older(run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2]))
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    assert "metrics.jsonl does not hold" in one_line(capsys)
    assert snapshot(run) == before


def test_checkpoint_with_another_config_is_refused(run, capsys):
    drop_older(run)
    state = json.loads((run / "checkpoints" / "ckpt_4" / "state.json").read_text())
    edit_state(run / "checkpoints" / "ckpt_4", config={**state["config"], "gamma": 0.5})
    assert main(["train", "--resume", str(run)]) == 2
    assert "another config" in one_line(capsys)


def test_corrupt_newest_checkpoint_falls_back_with_a_line(run, capsys):
    (run / "checkpoints" / "ckpt_4" / "state.json").write_text('{"format_version": 1, "kind": "ppox.rl.chec')
    resumed = PPO.resume(run)
    warning = one_line(capsys, "warning:")
    assert "ckpt_4 is unusable" in warning and "not valid JSON" in warning and "ckpt_3" in warning
    assert resumed.iteration == 3
    assert (run / "checkpoints" / "latest").read_text().strip() == "ckpt_3"
    resumed.learn()
    assert runs.latest_checkpoint(run).name == "ckpt_4"


@pytest.mark.parametrize(("key", "value"), [
    ("global_step", "lots"), ("recent_returns", "x"), ("recent_returns", [1, "a"]), ("python_rng", 3),
    ("numpy_rng", {"name": "MT19937", "key": "x"}), ("optimizer", {"param_groups": 5}),
    ("kl_controller", []), ("env_state", None), ("skipped_updates", True), ("wall_seconds", "1s"),
    ("policy_rng", [1]),
])
def test_state_fields_of_the_wrong_type_are_one_line(run, capsys, key, value):
    drop_older(run)
    edit_state(run / "checkpoints" / "ckpt_4", **{key: value})
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = one_line(capsys)
    assert repr(key) in err or "wrong type" in err
    assert snapshot(run) == before


def test_wrong_typed_optimizer_group_is_one_line(run, capsys):
    drop_older(run)
    state = json.loads((run / "checkpoints" / "ckpt_4" / "state.json").read_text())
    state["optimizer"]["param_groups"][0]["lr"] = "fast"
    state["kl_controller"] = {"coef": "x"}
    (run / "checkpoints" / "ckpt_4" / "state.json").write_text(json.dumps(state))
    assert main(["train", "--resume", str(run)]) == 2
    one_line(capsys)


def test_json_nested_100k_deep_is_one_line(run, capsys):
    drop_older(run)
    deep = "[" * 100_000 + "]" * 100_000
    (run / "checkpoints" / "ckpt_4" / "state.json").write_text(deep)
    assert main(["train", "--resume", str(run)]) == 2
    assert "nested too deeply" in one_line(capsys)
    with open(run / "metrics.jsonl", "a") as f:  # the readers of the diagnostics skip such a line
        f.write(deep + "\n")
    with pytest.warns(UserWarning):
        assert len(read_metrics(run)) == 4


@pytest.mark.parametrize("pointer", [b"", b"ckpt_", b"ck", b"\xff\xfe\x00", b"ckpt_4/../../x"])
def test_truncated_or_garbage_latest_pointer_is_one_warning_line(run, capsys, pointer):
    (run / "checkpoints" / "latest").write_bytes(pointer)
    assert main(["train", "--resume", str(run)]) == 0
    warning = one_line(capsys, "warning:")
    assert "latest" in warning and "ckpt_4" in warning


def test_binary_metrics_is_one_line_and_untouched(run, capsys):
    (run / "metrics.jsonl").write_bytes(b"\x00\xff\xfe binary \x89PNG\r\n\x1a\n" * 50)
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    assert "binary" in one_line(capsys)
    assert snapshot(run) == before


def test_leftover_tmp_files_of_killed_writers_are_cleaned(run):
    leftovers = [run / ".metrics.jsonl.k2j3.tmp", run / ".model.safetensors.abc.tmp",
                 run / "checkpoints" / ".latest.x1.tmp"]
    for path in leftovers:
        path.write_bytes(b"torn")
    tmp_dir = run / "checkpoints" / ".ckpt_5.tmp-4242"
    tmp_dir.mkdir()
    (tmp_dir / "model.safetensors").write_bytes(b"torn")
    foreign = run / "notes.tmp"  # not a ppox temporary name: kept
    foreign.write_text("mine")
    PPO.resume(run).close()
    assert not any(p.exists() for p in [*leftovers, tmp_dir])
    assert foreign.read_text() == "mine"


def test_newer_checkpoint_past_latest_of_another_run_is_moved_aside_not_deleted(run, tmp_path, capsys):
    pendulum = train(tmp_path / "pendulum", "Pendulum-v1", total=32 * 5)
    shutil.copytree(pendulum / "checkpoints" / "ckpt_5", run / "checkpoints" / "ckpt_5")
    assert PPO.resume(run).iteration == 4
    assert "rejected_ckpt_5" in one_line(capsys, "warning:")
    assert (run / "checkpoints" / "rejected_ckpt_5" / "model.safetensors").exists()


# ---------------------------------------------------------------------------- item 15: non-finite weights
def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_update_making_weights_nonfinite_halts_with_the_last_finite_weights(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model = PPO("CartPole-v1", run_dir=run, total_timesteps=32 * 4, anneal_lr=False, checkpoint_every=1, **TINY)
    original = model._update
    seen = {"calls": 0}

    def update(batch, generator):
        seen["calls"] += 1
        if seen["calls"] == 2:  # what --learning-rate inf does (config validation bypassed)
            seen["before"] = {k: v.clone() for k, v in model.agent.state_dict().items()}
            model.optimizer.param_groups[0]["lr"] = float("inf")
        return original(batch, generator)

    monkeypatch.setattr(model, "_update", update)
    with pytest.raises(TrainingHalted, match="non-finite") as info:
        model.learn()
    assert "checkpoint of iteration 1" in str(info.value) and "last finite weights" in str(info.value)
    halt = runs.latest_checkpoint(run)
    assert halt.name == "ckpt_1"
    for saved in (_weights(halt), _weights(run)):
        for key, value in seen["before"].items():
            assert torch.isfinite(saved[f"agent.{key}"]).all()
            assert torch.equal(saved[f"agent.{key}"], value), key
    assert json.loads((run / "model.json").read_text())["global_step"] == 32
    resumed = PPO.resume(run)  # the halt checkpoint resumes
    assert resumed.iteration == 1
    resumed.close()


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    model = PPO("CartPole-v1", run_dir=tmp_path / "run", total_timesteps=32, **TINY).learn()
    with torch.no_grad():
        next(model.agent.parameters()).fill_(float("nan"))
    with pytest.raises(ModelFileError, match="non-finite"):
        ckpt.save_checkpoint(model)
    assert runs.latest_checkpoint(model.run_dir).name == "ckpt_1"
    assert sorted(p.name for p in (model.run_dir / "checkpoints").iterdir()) == ["ckpt_1", "latest"]
