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
