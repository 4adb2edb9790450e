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


def test_video_into_new_folder_is_quiet(tiny, tmp_path, capfd, monkeypatch):
    """No "Overwriting existing videos" for a folder that did not exist, no SDL display chatter."""
    import warnings

    from ppox.rl.video import record_video

    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    model = PPO(tiny()).learn()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = record_video(model, tmp_path / "new" / "videos", episodes=1)
    assert len(paths) == 1
    assert [str(w.message) for w in caught] == []
    err = capfd.readouterr().err
    assert "XDG_RUNTIME_DIR" not in err and "Overwriting" not in err, err
