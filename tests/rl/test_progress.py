"""What training prints about its numbers: which SPS is which, and the step budget it really runs."""

from ppox import PPO
from ppox.run_context import Progress, rounding_note


def test_rounding_note_says_what_runs():
    assert rounding_note(50_000, 2048) == (
        "note: total_timesteps 50,000 is rounded down to 49,152 = 24 iterations × 2,048 steps per iteration"
    )
    assert rounding_note(100, 256) == (
        "note: total_timesteps 100 is rounded up to 256 = 1 iteration × 256 steps per iteration"
    )
    assert rounding_note(49_152, 2048) is None


def test_learn_prints_the_rounding_note_once(tiny, capsys):
    model = PPO(tiny(total_timesteps=100)).learn()  # 2 envs x 32 steps per iteration
    err = capsys.readouterr().err
    assert err.count("note: total_timesteps") == 1
    assert "rounded down to 64 = 1 iteration × 64 steps" in err
    assert model.global_step == 64
    PPO(tiny(total_timesteps=128, run_dir=str(model.run_dir) + "2")).learn()
    assert "note:" not in capsys.readouterr().err


def test_bar_sps_is_labelled_last_iteration_and_summary_sps_mean(tmp_path, capsys):
    progress = Progress(True, 100, "CartPole-v1")
    assert any("SPS (last iter)" in getattr(c, "text_format", "") for c in progress._progress.columns)
    from ppox.cli import main

    run = str(tmp_path / "run")
    assert main(["train", "CartPole-v1", "--num-steps", "16", "--num-envs", "2", "--total-timesteps", "64",
                 "--no-tensorboard", "--no-progress", "--eval-episodes", "0", "--run-dir", run]) == 0
    assert "sps (mean)" in capsys.readouterr().out


def test_bar_keeps_its_numbers_whole_on_an_80_column_terminal():
    """rich cut the step count first ("6144/184…" for 18,432 steps, "333333…" for 1M): the bar gives way instead."""
    from rich.console import Console

    console = Console(width=80, force_terminal=True, color_system=None, record=True)
    for env_id, total in (("Hopper-v5", 18_432), ("HalfCheetah-v5", 1_000_000)):
        progress = Progress(True, total, env_id)
        progress._progress.update(progress._task, completed=total // 3, sps="5000", ret="177.3")
        console.print(progress._progress.make_tasks_table(progress._progress.tasks))
    text = console.export_text()
    assert "6144/18432 steps 5000 SPS (last iter) return 177.3" in text
    assert "333333/1000000 steps 5000 SPS (last iter) return 177.3" in text
    assert "…" not in text
