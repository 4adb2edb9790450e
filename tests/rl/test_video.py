import pytest

from ppox import PPO

pytest.importorskip("moviepy")
pytest.importorskip("pygame")


def test_eval_records_mp4_files(tiny, tmp_path, capsys):
    from ppox.cli import main

    model = PPO(tiny()).learn()
    out = tmp_path / "videos"
    assert main(["eval", str(model.run_dir), "--episodes", "2", "--video", str(out)]) == 0
    files = sorted(out.glob("*.mp4"))
    assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)
    assert str(files[0]) in capsys.readouterr().out
