"""Tests for learning-curve plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppox.diagnostics.plot import (
    Run,
    bootstrap_ci,
    group_labels,
    group_runs,
    load_runs,
    plot_main,
    plot_runs,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, env_id: str, seed: int, lr: float = 3e-4, n: int = 30) -> Path:
    run_dir = root / f"{env_id}__lr{lr}__s{seed}"
    run_dir.mkdir(parents=True)
    config = {
        "env_id": env_id,
        "seed": seed,
        "learning_rate": lr,
        "clip_coef": 0.2,
        "run_dir": str(run_dir),
        "progress": True,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(1, n + 1):
        ret = None if i == 1 else float(100 * (1 - np.exp(-i / 10)) + rng.normal(0, 5))
        record = {
            "iteration": i,
            # seeds log at slightly different steps, so the grid interpolation matters
            "global_step": i * 1000 + seed * 7,
            "wall_time": i * (1.0 + 0.1 * seed),
            "episodic_return_mean": ret,
            "approx_kl": 0.01 + rng.normal(0, 0.002),
            "clipfrac": 0.1,
            "entropy": 0.7 - 0.01 * i,
            "explained_variance": float("nan") if i == 1 else 0.5,
        }
        lines.append(json.dumps(record))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    for env in ("EnvA-v0", "EnvB-v0"):
        for seed in (1, 2, 3):
            make_run(tmp_path, env, seed)
    return tmp_path


def test_plot_writes_png_for_two_envs(runs_root, tmp_path):
    out = plot_runs([str(runs_root / "*")], str(tmp_path / "out" / "curves.png"))
    assert Path(out).is_file()
    assert Path(out).read_bytes()[:8] == PNG_MAGIC


def test_plot_diagnostics_over_time_as_svg(runs_root, tmp_path, capsys):
    out = tmp_path / "diag.svg"
    code = plot_main(
        [str(runs_root / "EnvA*"), str(runs_root / "EnvB-v0__lr0.0003__s1")], str(out), "time", None, True
    )
    assert code == 0
    assert str(out) in capsys.readouterr().out
    assert out.read_text().lstrip().startswith("<?xml")


def test_plot_main_no_runs(tmp_path, capsys):
    assert plot_main([str(tmp_path / "nothing*")], str(tmp_path / "x.png"), "steps", None, False) == 2
    err = capsys.readouterr().err.strip()
    assert "no runs" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_bootstrap_band_contains_mean():
    values = np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [3.0, 6.0, 0.0], [10.0, 0.0, 0.0]])
    mean, lower, upper = bootstrap_ci(values)
    np.testing.assert_allclose(mean, [4.0, 3.0, 0.0])
    assert np.all(lower <= mean) and np.all(mean <= upper)
    # a resampled mean can't leave the range of the data
    assert np.all(lower >= values.min(axis=0)) and np.all(upper <= values.max(axis=0))
    assert np.all(upper[:2] > lower[:2])  # seeds disagree: a real band
    assert lower[2] == upper[2] == 0.0  # seeds agree: no band
    again = bootstrap_ci(values)
    np.testing.assert_array_equal(again[1], lower)  # fixed seed: reproducible


def test_bootstrap_single_seed_and_missing_values():
    mean, lower, upper = bootstrap_ci(np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_array_equal(lower, mean)
    np.testing.assert_array_equal(upper, mean)
    mean, lower, upper = bootstrap_ci(np.array([[1.0, np.nan], [3.0, 5.0]]))
    assert mean[1] == 5.0 and lower[1] <= 5.0 <= upper[1]


def test_grouping_same_config_together_different_apart(tmp_path):
    for seed in (1, 2, 3):
        make_run(tmp_path, "EnvA-v0", seed)
    for seed in (1, 2):
        make_run(tmp_path, "EnvA-v0", seed, lr=1e-3)
    make_run(tmp_path, "EnvB-v0", 1)
    runs = load_runs([str(tmp_path / "*")])
    assert len(runs) == 6
    groups = group_runs(runs)
    sizes = sorted((g.env_id, g.config["learning_rate"], len(g.runs)) for g in groups)
    assert sizes == [("EnvA-v0", 3e-4, 3), ("EnvA-v0", 1e-3, 2), ("EnvB-v0", 3e-4, 1)]
    env_a = [g for g in groups if g.env_id == "EnvA-v0"]
    labels = group_labels(env_a)
    assert sorted(labels) == ["lr=0.0003 (3 seeds)", "lr=0.001 (2 seeds)"]


def test_runs_without_config_are_never_merged(tmp_path):
    runs = [Run(path=tmp_path / name, config={}, records=[{"iteration": 1}]) for name in ("a", "b")]
    assert len(group_runs(runs)) == 2


# --- publication-clean figures -------------------------------------------------------------------


def _texts(fig_path_runs, tmp_path, **kw):
    """Plot with warnings as errors; return the figure's visible texts and x tick labels."""
    import warnings

    from matplotlib.figure import Figure

    captured = {}

    real_savefig = Figure.savefig

    def savefig(self, *args, **kwargs):
        captured["fig"] = self
        return real_savefig(self, *args, **kwargs)

    Figure.savefig = savefig
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # constrained_layout's "axes sizes collapsed" among them
            plot_runs(fig_path_runs, str(tmp_path / "fig.png"), **kw)
    finally:
        Figure.savefig = real_savefig
    fig = captured["fig"]
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    return fig, texts, ticks


def test_plot_is_warning_free_with_k_ticks_labels_and_short_legend(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path, "EnvA-v0", seed, n=150)
        make_run(tmp_path, "EnvA-v0", seed, lr=1e-3, n=150)
    fig, texts, ticks = _texts([str(tmp_path / "*")], tmp_path, diagnostics=True)
    assert "120k" in ticks and all(t == "0" or t.endswith("k") for t in ticks), ticks  # not "120000"
    for label in ("episodic return", "approx. KL per update", "clip fraction", "explained variance"):
        assert label in texts
    assert "lr=0.0003 (2 seeds)" in texts and "lr=0.001 (2 seeds)" in texts
    assert fig.legends and not any(ax.get_legend() for ax in fig.axes)  # below the panels, not on the curves
    assert "mean over seeds, 95% bootstrap CI" in texts


def test_single_seed_plot_does_not_claim_a_bootstrap_band(tmp_path):
    make_run(tmp_path, "EnvA-v0", 1)
    _, texts, _ = _texts([str(tmp_path / "*")], tmp_path)
    assert not any("bootstrap" in t for t in texts)
    assert "one seed per curve (no confidence band)" in texts
    assert "EnvA-v0 (1 seed)" in texts


def test_preset_runs_are_labelled_by_preset(tmp_path):
    from ppox.diagnostics.plot import RunGroup, group_labels
    from ppox.rl.config import preset_config

    groups = []
    for preset in (None, "cleanrl"):
        config = preset_config("CartPole-v1", preset, learning_rate=5e-4).to_dict()
        groups.append(RunGroup(key=str(preset), env_id="CartPole-v1", config=config, runs=[None]))
    labels = group_labels(groups, lambda env, p: preset_config(env, p).to_dict())
    assert labels == ["preset CartPole-v1 (1 seed)", "preset cleanrl (1 seed)"]
