"""Tests for the trust-region doctor on synthetic metrics files."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ppox.diagnostics.doctor import (
    LiveDoctor,
    diagnose,
    diagnose_run,
    doctor_main,
    format_findings,
)
from ppox.diagnostics.metrics_io import MetricsReadWarning, read_metrics

N = 40
CONFIG = {
    "env_id": "Synthetic-v0",  # not registered with gymnasium: no reward threshold
    "seed": 1,
    "learning_rate": 3e-4,
    "clip_coef": 0.2,
    "num_envs": 4,
    "num_steps": 512,
    "update_epochs": 10,
    "num_minibatches": 32,
    "ent_coef": 0.0,
    "target_kl": None,
    "total_timesteps": N * 4 * 512,
    "norm_obs": False,
    "norm_reward": False,
}


def healthy_records(n: int = N, seed: int = 0) -> list[dict[str, Any]]:
    """A run that learns smoothly: returns rise and saturate, KL/clipfrac moderate."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(1, n + 1):
        ret = 20 + 430 * (1 - math.exp(-i / 12)) + rng.normal(0, 5)
        first = i == 1  # no episode finished in the first iteration
        records.append(
            {
                "iteration": i,
                "global_step": i * 2048,
                "wall_time": i * 1.5,
                "episodic_return_mean": None if first else ret,
                "episodic_return_min": None if first else ret - 20,
                "episodic_return_max": None if first else ret + 20,
                "episodic_length_mean": None if first else ret,
                "episodes": 0 if first else 5,
                "policy_loss": -0.01 + rng.normal(0, 0.003),
                "value_loss": 10 + 20 * i / n + rng.normal(0, 1),
                "entropy": 0.69 - 0.24 * i / n,
                "approx_kl": 0.01 + rng.normal(0, 0.002),
                "old_approx_kl": 0.01 + rng.normal(0, 0.002),
                "clipfrac": 0.1 + rng.normal(0, 0.02),
                "explained_variance": 0.2 + 0.7 * i / n,
                "kl_coef": 0.0,
                "learning_rate": 3e-4 * (1 - (i - 1) / n),
                "sps": 1000.0,
            }
        )
    return records


def _set(records: list[dict[str, Any]], key: str, fn: Callable[[int], float | None], iters) -> None:
    for r in records:
        if r["iteration"] in iters:
            r[key] = fn(r["iteration"])


def kl_high(records):
    _set(records, "approx_kl", lambda i: 0.34 if i == 12 else 0.2, range(10, 16))


def kl_rising(records):
    # stays below KL_HIGH but grows ~6x
    _set(records, "approx_kl", lambda i: 0.004 + 0.002 * (i - 1), range(1, N + 1))


def clipfrac_high(records):
    _set(records, "clipfrac", lambda i: 0.55 if i == 33 else 0.4, range(25, N + 1))


def entropy_collapse(records):
    _set(records, "entropy", lambda i: 0.03, range(5, N + 1))


def explained_variance_low(records):
    _set(records, "explained_variance", lambda i: -0.1, range(25, N + 1))


def value_loss_exploding(records):
    _set(records, "value_loss", lambda i: 5000.0 if i == 36 else 2000.0, range(33, N + 1))


def return_collapse(records):
    _set(records, "episodic_return_mean", lambda i: 20.0 + 15 * i, range(2, 26))
    _set(records, "episodic_return_mean", lambda i: 50.0 + (i % 3), range(26, N + 1))


def non_finite(records):
    _set(records, "policy_loss", lambda i: math.nan, (20, 21))
    _set(records, "sps", lambda i: math.inf, (22,))


# (pathology, code, expected finding iterations, substrings the message must cite)
CASES = [
    (kl_high, "kl_high", list(range(10, 16)), ["6 of 40 iterations", "max 0.34 at iteration 12", "10-15"]),
    (kl_rising, "kl_rising", list(range(31, 41)), ["iterations 1-10", "iterations 31-40"]),
    (clipfrac_high, "clipfrac_high", list(range(31, 41)), ["10 of the last 10", "31-40", "iteration 33"]),
    (entropy_collapse, "entropy_collapse", [5], ["at iteration 5", "0.03"]),
    (explained_variance_low, "explained_variance_low", list(range(31, 41)), ["10 of the last 10", "31-40"]),
    (value_loss_exploding, "value_loss_exploding", list(range(33, 41)), ["5e+03 at iteration 36", "33-40"]),
    (return_collapse, "return_collapse", [22, 23, 24, 25, 37, 38, 39, 40], ["22-25", "37-40"]),
    (non_finite, "non_finite", [20, 21, 22], ["policy_loss is NaN at iterations 20-21", "sps is inf"]),
]


def write_run(run_dir: Path, records: list[dict[str, Any]], config: dict | None = CONFIG) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))
    # json.dumps writes NaN/Infinity tokens, exactly like the trainer does
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_healthy_run_has_no_findings(tmp_path):
    run = write_run(tmp_path / "run", healthy_records())
    findings = diagnose_run(run)
    assert findings == []
    assert "healthy" in format_findings(findings)
    assert doctor_main(str(run)) == 0


@pytest.mark.parametrize(("pathology", "code", "iterations", "cites"), CASES, ids=[c[1] for c in CASES])
def test_each_pathology_gives_exactly_its_finding(tmp_path, pathology, code, iterations, cites):
    records = healthy_records()
    pathology(records)
    findings = diagnose_run(write_run(tmp_path / code, records))
    assert [f.code for f in findings] == [code], format_findings(findings)
    finding = findings[0]
    assert finding.iterations == iterations
    for text in cites:
        assert text in finding.message, finding.message
    assert finding.advice
    assert "\n" not in finding.message
    assert finding.severity == ("error" if code == "non_finite" else "warning")


def test_kl_advice_mentions_doc_remedies():
    records = healthy_records()
    kl_high(records)
    advice = diagnose(records, CONFIG)[0].advice
    for word in ("learning_rate", "update_epochs", "clip_coef", "target_kl", "normalised"):
        assert word in advice


def test_findings_are_reported_in_check_order():
    records = healthy_records()
    for pathology in (return_collapse, clipfrac_high, non_finite, kl_high):
        pathology(records)
    codes = [f.code for f in diagnose(records, CONFIG)]
    assert codes == ["non_finite", "kl_high", "clipfrac_high", "return_collapse"]
    report = format_findings(diagnose(records, CONFIG))
    assert report.startswith("4 problems found")
    assert "[ERROR] non_finite" in report


def test_nan_value_loss_is_an_error_in_both_checks():
    records = healthy_records()
    _set(records, "value_loss", lambda i: math.nan, range(35, N + 1))
    findings = diagnose(records, CONFIG)
    assert [f.code for f in findings] == ["non_finite", "value_loss_exploding"]
    assert all(f.severity == "error" for f in findings)


def test_entropy_collapse_judged_against_solved_threshold():
    # CartPole-v1 is solved at 475: a deterministic policy there is fine
    config = dict(CONFIG, env_id="CartPole-v1")
    records = healthy_records()
    entropy_collapse(records)
    _set(records, "episodic_return_mean", lambda i: 500.0, range(2, N + 1))
    assert [f.code for f in diagnose(records, config)] == ["solved"]
    _set(records, "episodic_return_mean", lambda i: 100.0, range(2, N + 1))
    findings = diagnose(records, config)
    assert [f.code for f in findings] == ["entropy_collapse", "not_learned"]
    assert "threshold 475" in findings[0].message


def test_entropy_collapse_ignored_once_returns_peaked():
    records = healthy_records()
    entropy_collapse(records)
    _set(records, "episodic_return_mean", lambda i: 30.0 * i if i < 5 else 150 + i % 2, range(2, N + 1))
    assert diagnose(records, CONFIG) == []


def test_short_run_is_only_a_note():
    findings = diagnose(healthy_records(5), CONFIG)
    assert [(f.code, f.severity) for f in findings] == [("short_run", "info")]
    assert format_findings(findings).startswith("Training looks healthy")


def test_live_doctor_warns_once_per_code():
    records = healthy_records()
    kl_high(records)
    clipfrac_high(records)
    doctor = LiveDoctor(CONFIG)
    by_iteration = {r["iteration"]: doctor.update(r) for r in records}
    warnings = [w for ws in by_iteration.values() for w in ws]
    assert len(warnings) == 2
    # KL is judged as soon as two iterations exceed the threshold
    assert len(by_iteration[11]) == 1 and "kl_high" in by_iteration[11][0]
    assert sum("clipfrac_high" in w for w in warnings) == 1
    assert all("\n" not in w for w in warnings)
    assert doctor.reported == {"kl_high", "clipfrac_high"}


def test_live_doctor_is_quiet_on_healthy_run():
    doctor = LiveDoctor(CONFIG)
    assert [w for r in healthy_records() for w in doctor.update(r)] == []


def test_truncated_last_line_is_skipped_with_warning(tmp_path):
    run = write_run(tmp_path / "run", healthy_records())
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 41, "global_step": 839')
    with pytest.warns(MetricsReadWarning, match="truncated last line"):
        records = read_metrics(run)
    assert len(records) == N
    with pytest.warns(MetricsReadWarning):
        assert diagnose_run(run) == []
    assert doctor_main(str(run)) == 0


def test_resumed_run_keeps_last_copy_of_each_iteration(tmp_path):
    records = healthy_records()
    redo = [dict(r, policy_loss=1.0) for r in records[30:35]]
    run = write_run(tmp_path / "run", records[:35] + redo + records[35:])
    read = read_metrics(run)
    assert [r["iteration"] for r in read] == list(range(1, N + 1))
    assert read[32]["policy_loss"] == 1.0


def test_doctor_main_exit_codes(tmp_path, capsys):
    assert doctor_main(str(tmp_path / "missing")) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert doctor_main(str(tmp_path / "empty")) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert doctor_main(str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert "no metric records" in err and len(err.strip().splitlines()) == 1
    records = healthy_records()
    kl_high(records)
    assert doctor_main(str(write_run(tmp_path / "bad", records, config=None))) == 1
    assert "kl_high" in capsys.readouterr().out


# --- one rule set for live and post-hoc; the outcome -------------------------------------------


def transient_collapse(records):
    """Returns peak, dip for a while, then recover (what `make run` on CartPole-v1 showed)."""
    _set(records, "episodic_return_mean", lambda i: 20.0 + 20 * i, range(2, 21))
    _set(records, "episodic_return_mean", lambda i: 60.0 + (i % 3), range(21, 31))
    _set(records, "episodic_return_mean", lambda i: 420.0 + (i % 3), range(31, N + 1))


def live_codes(records, config) -> dict[str, int]:
    """What the live doctor warned about, and at which iteration, on PPO.learn's check schedule."""
    from ppox.diagnostics.doctor import live_check_every

    doctor = LiveDoctor(config)
    every = live_check_every(len(records))
    warned: dict[str, int] = {}
    for r in records:
        check = r["iteration"] % every == 0 or r["iteration"] == len(records)
        for line in doctor.update(r, check=check):
            it, severity, code = line.removeprefix("[doctor] iteration ").split(": ")[:3]
            if severity != "resolved" and " " not in code:  # not "resolved" / "holds again" lines
                warned.setdefault(code, int(it))
    return warned


@pytest.mark.parametrize("pathology", [transient_collapse, kl_high, clipfrac_high, return_collapse])
def test_live_and_post_hoc_doctor_agree(pathology):
    records = healthy_records()
    pathology(records)
    warned = live_codes(records, CONFIG)
    assert warned, "the synthetic run should trigger the live doctor"
    findings = diagnose(records, CONFIG)
    # every live warning is in the post-hoc report: as a problem if it still holds, else as a note
    assert set(warned) == {f.code for f in findings if f.code in warned}
    for f in findings:
        if f.code in warned and f.severity == "info":
            assert f"held at iteration {warned[f.code]}" in f.message and "no longer" in f.message


def test_transient_live_warning_is_a_note_after_recovery():
    records = healthy_records()
    transient_collapse(records)
    doctor = LiveDoctor(CONFIG)
    lines = [line for r in records for line in doctor.update(r)]
    assert any(": warning: return_collapse:" in line for line in lines)
    assert any(": resolved: return_collapse no longer holds" in line for line in lines)
    findings = diagnose(records, CONFIG)
    assert [(f.code, f.severity) for f in findings] == [("return_collapse", "info")]
    assert "Training looks healthy" in format_findings(findings)
    assert "Note: return_collapse held at iteration" in format_findings(findings)


def test_unlearned_run_is_never_healthy(tmp_path, capsys):
    # Pendulum-v1 has no gymnasium threshold: ppox's -300 target; the quickstart run ended at -659
    config = dict(CONFIG, env_id="Pendulum-v1")
    records = healthy_records()
    _set(records, "episodic_return_mean", lambda i: -1200.0 + 15 * i, range(2, N + 1))
    run = write_run(tmp_path / "pendulum", records, config)
    (run / "summary.json").write_text(json.dumps({"eval_return_mean": -659.0, "eval_episodes": 20}))
    findings = diagnose_run(run)
    assert [f.code for f in findings] == ["not_solved"]
    assert "eval return -659 over 20 episodes is below -300" in findings[0].message
    assert "it is learning" in findings[0].message
    assert doctor_main(str(run)) == 1
    assert "healthy" not in capsys.readouterr().out
    # flat returns, no threshold: the run did not learn
    flat = healthy_records()
    noise = np.random.default_rng(3).normal(0, 5, N + 1)
    _set(flat, "episodic_return_mean", lambda i: -200.0 + noise[i], range(2, N + 1))
    findings = diagnose(flat, CONFIG)
    assert [f.code for f in findings if f.severity != "info"] == ["not_learned"]
    assert "did not learn" in findings[0].message
    assert "healthy" not in format_findings(findings)


def test_warning_on_solved_run_says_solved(tmp_path, capsys):
    config = dict(CONFIG, env_id="CartPole-v1")
    records = healthy_records()
    explained_variance_low(records)
    run = write_run(tmp_path / "cartpole", records, config)
    # training returns (430) are below 475, the end-of-run evaluation is the outcome
    (run / "summary.json").write_text(json.dumps({"eval_return_mean": 500.0, "eval_episodes": 20}))
    findings = diagnose_run(run)
    assert [f.code for f in findings] == ["explained_variance_low", "solved"]
    assert "the run is solved nonetheless: eval return 500 over 20 episodes >= 475" in findings[0].message
    assert doctor_main(str(run)) == 0
    assert "solved" in capsys.readouterr().out
    assert format_findings(findings).startswith("The run is solved; 1 warning worth a look")
    # an error stays an error on a solved run
    non_finite(records)
    assert doctor_main(str(write_run(tmp_path / "nan", records, config))) == 1


def test_post_hoc_replay_is_fast_on_long_runs():
    import time

    records = healthy_records(3000)
    config = dict(CONFIG, total_timesteps=3000 * 4 * 512)
    start = time.perf_counter()
    diagnose(records, config)
    assert time.perf_counter() - start < 5.0


def test_live_doctor_last_line_about_a_problem_says_whether_it_holds():
    records = healthy_records()
    transient_collapse(records)
    _set(records, "episodic_return_mean", lambda i: 50.0 + (i % 3), range(36, N + 1))  # and collapses again
    doctor = LiveDoctor(CONFIG)
    lines = [line for r in records for line in doctor.update(r) if "return_collapse" in line]
    assert "resolved" in " ".join(lines) and lines[-1].endswith("return_collapse holds again")
    assert [f.code for f in diagnose(records, CONFIG) if f.severity == "warning"] == ["return_collapse"]


def test_live_table_grown_record_by_record_equals_one_built_at_once():
    """The live doctor's table grows with the run (append) instead of being rebuilt at every check: the
    columns, iterations and non-finite entries it holds are those of a table built from all records at once,
    also for columns first read before later records arrived, missing keys, None, NaN and inf."""
    from ppox.diagnostics.doctor import _Table

    records = [{"iteration": i + 1, "approx_kl": 0.01 * i, "value_loss": float("nan") if i == 5 else 1.0,
                "entropy": None if i == 7 else 0.5, **({"clipfrac": float("inf")} if i in (3, 30) else {})}
               for i in range(40)]
    grown = _Table([])
    for k, record in enumerate(records, 1):
        grown.append(record)
        if k == 10:  # a column read early keeps growing with the records after it
            assert np.array_equal(grown.column("approx_kl"), _Table(records[:10]).column("approx_kl"))
    whole = _Table(records)
    for key in ("approx_kl", "value_loss", "entropy", "clipfrac", "missing"):
        np.testing.assert_array_equal(grown.column(key), whole.column(key))
    assert np.array_equal(grown.iterations, whole.iterations) and grown.non_finite == whole.non_finite
    assert len(grown.records) == 40 and grown.column("approx_kl").shape == (40,)


def test_fast_median_is_numpys_median():
    """The checks' `_median` returns np.median's value bit for bit: odd and even counts, ties, NaN anywhere."""
    from ppox.diagnostics.doctor import _median

    rng = np.random.default_rng(0)
    for n in range(1, 40):
        for values in (rng.standard_normal(n), rng.integers(-3, 3, n).astype(float), np.exp(rng.normal(0, 30, n))):
            assert _median(values) == float(np.median(values)), (n, values)
            values[rng.integers(n)] = np.nan
            assert math.isnan(_median(values)) and math.isnan(float(np.median(values)))
