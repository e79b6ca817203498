"""fgjax.evaluation.log_verdict: a log's silences and their outcomes, the rows and features the fit reads, first
alarms, the threshold at a precision, and the fit with its held-out report; ``fgjax fit-verdict`` end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax import kernels
from fgjax.analysis import load_verdict, window_params, window_spec
from fgjax.cli import main
from fgjax.config import load_config
from fgjax.errors import DataError
from fgjax.evaluation import log_verdict as LV
from fgjax.evaluation.verdict import _evidence_series


def reference_silences(counts: np.ndarray, min_events: float, age: int) -> set[tuple[int, int, int, int, bool]]:
    """Window by window, per pair: (user, interest, start, length, returned)."""
    windows, users, interests = counts.shape
    out = set()
    for u in range(users):
        for k in range(interests):
            total = 0.0
            for t in range(windows):
                total += counts[t, u, k]
                if counts[t, u, k] > 0 and total >= min_events:
                    nxt = t + 1
                    while nxt < windows and counts[nxt, u, k] == 0:
                        nxt += 1
                    if nxt - t - 1 >= age:
                        out.add((u, k, t + 1, nxt - t - 1, nxt < windows))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), age=st.integers(1, 6), min_events=st.sampled_from([1.0, 3.0, 5.0]))
def test_silences_match_a_window_by_window_reference(seed, age, min_events):
    rng = np.random.default_rng(seed)
    counts = (rng.poisson(0.6, (30, 3, 2)) * (rng.random((30, 3, 2)) < 0.5)).astype(np.float32)
    found = LV.silences(counts, min_events, age)
    got = set(zip(found.user.tolist(), found.interest.tolist(), found.start.tolist(), found.length.tolist(),
                  found.returned.tolist()))
    assert len(got) == len(found.user) and got == reference_silences(counts, min_events, age)


def test_no_silence_is_empty_arrays():
    found = LV.silences(np.ones((5, 2, 2), np.float32), 1.0, 1)
    assert all(len(c) == 0 for c in found)


def test_outcomes_need_the_user_seen_after_the_horizon_or_a_return_within_it():
    found = LV.Silences(user=np.array([0, 1, 2, 3]), interest=np.zeros(4, int), start=np.array([5, 5, 5, 5]),
                       length=np.array([20, 20, 4, 20]), returned=np.array([False, False, True, True]))
    user_last = np.array([30, 12, 30, 30])  # user 1 left before the horizon ended
    gone, decided = LV.outcomes(found, user_last, horizon=10)
    assert gone.tolist() == [True, False, False, True]  # a return after the horizon is still gone for it
    assert decided.tolist() == [True, False, True, True]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 40))
def test_roc_auc_is_the_share_of_ordered_pairs_with_ties_half(seed, n):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 5, n).astype(np.float64)  # many ties
    label = rng.random(n) < 0.4
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        assert LV.roc_auc(score, label) is None
        return
    pairs = [(p > q) + 0.5 * (p == q) for p in pos for q in neg]
    assert LV.roc_auc(score, label) == pytest.approx(np.mean(pairs), abs=1e-12)


def _counts(seed: int, windows: int = 40, users: int = 6, interests: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    busy = rng.random((1, users, interests)) < 0.7
    return (rng.poisson(1.5, (windows, users, interests)) * (rng.random((windows, users, interests)) < 0.45)
            * busy).astype(np.float32)


@pytest.mark.parametrize("chunk_bytes", [1, 10_000, 1 << 30])  # one window a chunk, ragged chunks, one chunk
def test_rows_are_each_decided_silence_at_every_age_with_the_analysis_evidence(monkeypatch, chunk_bytes):
    monkeypatch.setattr(LV, "_CHUNK_BYTES", chunk_bytes)
    counts = _counts(3)
    horizon = 5
    config = load_config(None, ["analysis.window_seconds=604800", "log_verdict.min_events=2"])
    rows = LV.silence_rows(config, counts, horizon)
    windows = counts.shape[0]
    # Every decided silence with room to be gone before the end, each at ages 1 .. min(length, horizon).
    found = LV.silences(counts, 2.0)
    gone, decided = LV.outcomes(found, LV.user_last_windows(counts), horizon)
    keep = decided & (found.start + horizon <= windows - 1)
    assert len(rows.gone) == keep.sum() and rows.gone.tolist() == gone[keep].tolist()
    expected = [(i, a) for i, length in enumerate(found.length[keep]) for a in range(1, min(length, horizon) + 1)]
    assert list(zip(rows.silence.tolist(), rows.age.tolist())) == expected
    # The features are the detector's evidence at the row's window, as a whole-series scan computes them.
    acfg = config.analysis
    acfg = dataclasses.replace(acfg, detector=dataclasses.replace(acfg.detector, verdict_file=""))
    full, silent = _evidence_series(np.asarray(counts), window_params(acfg, windows), window_spec(acfg, 3), 16)
    t = rows.found.start[rows.silence] + rows.age - 1
    u, k = rows.found.user[rows.silence], rows.found.interest[rows.silence]
    np.testing.assert_allclose(rows.features, np.asarray(full)[t, u, k], rtol=1e-5, atol=1e-6)  # other fusions
    assert np.asarray(silent)[t, u, k].all()


def _reference_first(rows, log_odds, threshold, horizon):
    first = []
    for i in range(len(rows.gone)):
        ages = [a for s, a, z in zip(rows.silence, rows.age, log_odds) if s == i and z > threshold]
        if ages:
            first.append(min(ages))
        elif horizon is not None and rows.found.length[i] >= horizon:
            first.append(horizon)
        else:
            first.append(-1)
    return first


def _random_rows(seed: int, n: int, horizon: int) -> LV.SilenceRows:
    rng = np.random.default_rng(seed)
    length = rng.integers(1, horizon + 4, n)
    gone = length >= horizon
    reach = np.minimum(length, horizon)
    silence = np.repeat(np.arange(n), reach)
    age = np.concatenate([np.arange(1, r + 1) for r in reach]) if n else np.zeros(0, int)
    found = LV.Silences(np.zeros(n, int), np.zeros(n, int), np.ones(n, int), length, np.ones(n, bool))
    return LV.SilenceRows(found, gone, silence, age, np.zeros((len(silence), 1), np.float32))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 25), horizon=st.integers(2, 6),
       precision=st.sampled_from([0.3, 0.5, 0.8, 0.95]))
def test_the_threshold_is_the_lowest_whose_first_alarms_are_that_precise(seed, n, horizon, precision):
    rows = _random_rows(seed, n, horizon)
    rng = np.random.default_rng(seed + 1)
    log_odds = rng.integers(-3, 4, len(rows.age)).astype(np.float32)  # many ties
    threshold = LV.precise_threshold(rows, log_odds, precision)
    first = LV.first_alarms(rows, log_odds, threshold, horizon)
    assert first.tolist() == _reference_first(rows, log_odds, threshold, horizon)
    assert LV.first_alarms(rows, log_odds, threshold, None).tolist() == _reference_first(rows, log_odds, threshold,
                                                                                          None)

    def share(th):
        flagged = LV.first_alarms(rows, log_odds, th, horizon) > 0
        return (flagged & rows.gone).sum() / max(flagged.sum(), 1), flagged.sum()

    got, flagged = share(threshold)
    # Every gone silence is flagged (by the log-odds or at the horizon), so the share is only short of the target
    # where even the horizon alarms alone are (none back flagged then).
    assert got >= precision - 1e-9 or flagged == rows.gone.sum()
    # Any lower threshold that flags more is less precise than asked.
    for lower in np.unique(log_odds) - 0.5:
        if lower < threshold:
            more, count = share(lower)
            assert count == flagged or more < precision - 1e-9


def test_the_rule_and_the_scores_of_first_alarms():
    found = LV.Silences(np.zeros(4, int), np.zeros(4, int), np.ones(4, int), np.array([2, 6, 9, 4]),
                        np.array([True, True, False, True]))
    gone = np.array([False, True, True, False])
    assert LV.rule_alarms(found, 4).tolist() == [-1, 4, 4, 4]
    scored = LV.alarm_scores(LV.rule_alarms(found, 4), gone)
    assert (scored["flagged"], scored["precision"], scored["recall"], scored["median_delay"]) == (3, 2 / 3, 1.0, 4.0)
    assert scored["f1"] == pytest.approx(0.8)
    assert LV.least_precise_rule(found, gone, 0.9, horizon=6) == 5  # at 5 only the two gone silences remain
    assert LV.alarm_scores(np.full(4, -1), gone)["precision"] is None


def _busy_and_minor_log():
    """Counts where a minor interest's silence lasts and a busy one's ends: what MovieLens shows (bench/RESULTS.md)."""
    rng = np.random.default_rng(0)
    windows, users = 120, 60
    counts = np.zeros((windows, users, 2), np.float32)
    counts[:, :, 0] = rng.poisson(3.0, (windows, users)) * (rng.random((windows, users)) < 0.85)  # main
    for u in range(users):  # the busy interest: bursts with gaps of 3-8 windows, back every time
        t = int(rng.integers(0, 4))
        while t < windows:
            counts[t, u, 1] = 6
            t += int(rng.integers(4, 10))
    return np.concatenate([counts, _minor_interest(rng, windows, users)], axis=2)


def _minor_interest(rng, windows, users):
    out = np.zeros((windows, users, 1), np.float32)
    for u in range(users):
        t = int(rng.integers(0, 10))
        while t < windows:
            for w in range(t, min(t + 3, windows)):
                out[w, u, 0] = 1
            t += 3 + int(rng.integers(12, 30))  # silent 12-29 windows: mostly gone at a 10-window horizon
    return out


def test_the_fit_learns_which_silences_last_and_reports_it_held_out():
    counts = _busy_and_minor_log()
    config = load_config(None, ["analysis.window_seconds=604800", "log_verdict.horizon_days=70",
                                "log_verdict.min_events=2"])
    result = LV.fit_log_verdict(config, counts)
    fit, report = result.fit, result.report
    assert (fit.window_days, fit.horizon_windows, fit.precision, fit.log_windows) == (7.0, 10, 0.8, 120)
    held = report["held_out"]
    assert held["fitted_on"] > 0 and held["scored_on"] > 0 and held["rule_windows"] <= 10
    # The minor interest's silences are gone, the busy one's back: the fit ranks them apart at the first silent
    # window already, where the rule (silence only) has no information at all.
    assert held["auc_at_age"]["1"] > 0.9
    assert held["verdict"]["recall"] == 1.0 and held["verdict"]["precision"] >= 0.8
    assert held["verdict"]["median_delay"] < held["rule"]["median_delay"]
    # The written fit's threshold holds its precision on every silence it was fitted on.
    rows = LV.silence_rows(config, counts, 10)
    odds = np.asarray(kernels.verdict_logit(rows.features, fit.params))
    assert LV.alarm_scores(LV.first_alarms(rows, odds, fit.threshold, 10), rows.gone)["precision"] >= 0.8
    text = LV.format_report(result)
    assert "| verdict fitted on the log" in text and "forgotten after" in text


@pytest.mark.parametrize("overrides, message", [
    (["log_verdict.horizon_days=10"], "is under two windows"),
    (["log_verdict.horizon_days=7000"], "no silence can be decided gone"),
    (["log_verdict.min_silences=100000"], "fitting a verdict needs 100000 of each"),
])
def test_a_log_that_cannot_teach_a_verdict_is_one_clear_error(overrides, message):
    config = load_config(None, ["analysis.window_seconds=604800", *overrides])
    with pytest.raises(DataError, match=message) as info:
        LV.fit_log_verdict(config, _busy_and_minor_log())
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_fit_verdict_then_analyze_reads_it(tmp_path, capsys):
    def run(args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    small = ["--set", "synthetic.num_users=120", "--set", "synthetic.users_per_shard=60",
             "--set", "synthetic.num_days=200"]
    assert run(["generate", "--out", tmp_path / "gen", *small])[0] == 0
    data = ["--events", tmp_path / "gen" / "events", "--items", tmp_path / "gen" / "items.parquet", "--window", "7d"]
    code, out, err = run(["fit-verdict", "--out", tmp_path / "v", *data, "--set", "log_verdict.horizon_days=42",
                          "--set", "log_verdict.min_silences=5"])
    assert code == 0, err
    assert "| verdict fitted on the log" in out and "rejected" in out
    assert (tmp_path / "v" / "rejects.parquet").is_file()  # the generator's bad rows, counted and kept
    report = json.loads((tmp_path / "v" / "verdict_report.json").read_text())["report"]
    assert report["horizon_windows"] == 6 and report["windows"] == 29
    fit = load_verdict(tmp_path / "v" / "verdict.json", 7.0, 0.25, 16, 29)
    assert fit.horizon_windows == 6 and fit.stories == ("the log's own silences",)
    code, out, err = run(["analyze", "--out", tmp_path / "a", *data,
                          "--set", f"analysis.detector.verdict_file={tmp_path / 'v' / 'verdict.json'}"])
    assert code == 0, err
    assert f"learned verdict: {tmp_path / 'v' / 'verdict.json'}" in out and "gone = silent 6 windows" in out
    # Bad input is one line and exit 2: a horizon longer than the log.
    code, out, err = run(["fit-verdict", "--out", tmp_path / "v2", *data, "--set", "log_verdict.horizon_days=700"])
    assert code == 2 and err.strip().count("\n") == 0 and "log_verdict.horizon_days 700" in err
