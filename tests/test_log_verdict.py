"""fgjax.evaluation.log_verdict: a log's silences and their outcomes, the rows and features the fit reads, first
alarms, the threshold at a precision, and the fit with its held-out report; ``fgjax fit-verdict`` end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax import kernels
from fgjax.analysis import load_verdict, save_verdicts, window_params, window_spec
from fgjax.analysis_job import learned_verdict_note
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
    gone, decided = LV.outcomes(found, user_last, need=10)
    assert gone.tolist() == [True, False, False, True]  # a return after the horizon is still gone for it
    assert decided.tolist() == [True, False, True, True]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), horizon=st.integers(2, 12), surprise=st.sampled_from([0.3, 0.05, 0.01]))
def test_rate_needs_are_the_first_silence_the_posterior_predicts_under_the_surprise(seed, horizon, surprise):
    rng = np.random.default_rng(seed)
    counts = (rng.poisson(0.8, (30, 4, 3)) * (rng.random((30, 4, 3)) < rng.random((1, 4, 3)))).astype(np.float32)
    found = LV.silences(counts, 1.0)
    need = LV.rate_needs(counts, found, horizon, surprise)
    for i in range(len(found.start)):
        active = counts[:, found.user[i], found.interest[i]] > 0
        first, last = int(active.argmax()), int(found.start[i]) - 1
        a = active[first:last + 1].sum() + 1.0  # a uniform prior's posterior Beta(a, b) of the active share
        b = (last - first + 1) - a + 2.0

        def chance(n):  # posterior predictive of n silent windows, B(a, b + n) / B(a, b), by log-gamma
            return math.exp(math.lgamma(b + n) - math.lgamma(b) + math.lgamma(a + b) - math.lgamma(a + b + n))

        life = max(np.flatnonzero((counts[:, found.user[i]] > 0).any(axis=1)).max() - first + 1, 1)
        expected = 2  # the fewest silent windows seen under `surprise` times in the interest's life in the log
        while expected < horizon and life * a / (a + b) * chance(expected) >= surprise:
            expected += 1
        assert need[i] == expected, (i, a, b)
    assert (LV.rate_needs(counts, found, horizon, 0.0) == horizon).all()  # 0: the horizon alone


def test_a_busy_interest_short_silence_is_gone_and_a_slow_one_back_under_the_rate_label():
    counts = np.zeros((30, 2, 2), np.float32)
    counts[:10, 0, 0] = 1  # busy: every window, then silent from window 10 (user 0 seen to the end)
    counts[14:, 0, 1] = 1
    counts[0:12:4, 1, 0] = 1  # slow: every 4th window (0, 4, 8), silent 3, back at 12
    counts[12, 1, 0] = 1
    counts[:, 1, 1] = 1
    found = LV.silences(counts, 1.0)
    need = LV.rate_needs(counts, found, horizon=10, surprise=0.01)
    gone, decided = LV.outcomes(found, LV.user_last_windows(counts), need)
    at = {(int(u), int(k), int(s)): (int(n), bool(g), bool(d))
          for u, k, s, n, g, d in zip(found.user, found.interest, found.start, need, gone, decided)}
    # Active 10 of 10 windows, its user seen to window 29: P(n) = 11! n! / (11 + n)!, and its life of 30 windows
    # gives 30 (11/12) P(5) = 0.0063 < 0.01 <= 30 (11/12) P(4).
    assert at[(0, 0, 10)] == (5, True, True)
    assert at[(1, 0, 9)] == (10, False, True)  # 3 of 9 windows: past 10 windows (the horizon) to be gone; back


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
    config = load_config(None, ["analysis.window_seconds=604800", "log_verdict.min_events=2", "log_verdict.rate_surprise=0", "log_verdict.loyal_budget=0"])
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


def _random_rows(seed: int, n: int, horizon: int, relative: bool = False) -> LV.SilenceRows:
    rng = np.random.default_rng(seed)
    length = rng.integers(1, horizon + 4, n)
    # Relative to each interest's rate, a silence may be gone before the horizon (its need: 2 .. horizon windows).
    gone = length >= (rng.integers(2, horizon + 1, n) if relative else horizon)
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
    threshold = LV.precise_threshold(rows, log_odds, precision, horizon)
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


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 25), horizon=st.integers(2, 6),
       precision=st.sampled_from([0.3, 0.5, 0.8, 0.95]))
def test_under_the_rate_label_the_threshold_is_the_lowest_that_precise(seed, n, horizon, precision):
    rows = _random_rows(seed, n, horizon, relative=True)
    log_odds = np.random.default_rng(seed + 1).integers(-3, 4, len(rows.age)).astype(np.float32)
    threshold = LV.precise_threshold(rows, log_odds, precision, horizon)

    def flagged_at(th):
        return LV.first_alarms(rows, log_odds, th, horizon) > 0

    def precise(flagged):
        return flagged.any() and (flagged & rows.gone).sum() >= precision * flagged.sum() - 1e-9

    chosen = flagged_at(threshold)
    candidates = [th for th in np.unique(log_odds) - 0.5 if th < threshold] + [float(log_odds.min()) - 1.0]
    lower_ok = [th for th in candidates if th < threshold and precise(flagged_at(th))
                and not (flagged_at(th) == chosen).all()]
    # Precise where any threshold is, and no lower threshold that flags other silences is.
    assert precise(chosen) or not any(precise(flagged_at(th)) for th in candidates + [threshold])
    assert not lower_ok


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), budget=st.sampled_from([0.01, 0.1, 0.3, 0.6]))
def test_the_loyal_threshold_flags_at_most_the_budget_of_the_pairs_the_log_shows_loyal(seed, n, budget):
    rows = _random_rows(seed, n, 4, relative=True)
    rng = np.random.default_rng(seed + 2)
    users = rng.integers(0, 6, n)
    rows = rows._replace(found=rows.found._replace(user=users, interest=rng.integers(0, 2, n)))
    log_odds = rng.integers(-3, 4, len(rows.age)).astype(np.float32)
    pairs = sorted({(int(u), int(k)) for u, k in zip(rows.found.user, rows.found.interest)})
    loyal = [pk for pk in pairs if not any(rows.gone[i] for i in range(n)
                                          if (rows.found.user[i], rows.found.interest[i]) == pk)]

    def share(th):  # loyal pairs with a row above the threshold, by brute force
        hit = {(int(rows.found.user[i]), int(rows.found.interest[i])) for i, z in zip(rows.silence, log_odds) if z > th}
        return len(hit & set(loyal)) / len(loyal) if loyal else 0.0

    threshold = LV.loyal_threshold(rows, log_odds, budget)
    if not loyal:
        assert threshold == -np.inf
        return
    assert share(threshold) <= budget + 1e-9
    for lower in np.unique(log_odds) - 0.5:  # any lower threshold that flags more loyal pairs is over budget
        if lower < threshold and share(lower) > share(threshold):
            assert share(lower) > budget
    # loyal_flagged reads first alarms: the same share as the log-odds' own when every alarm is the verdict's.
    first = LV.first_alarms(rows, log_odds, threshold, None)
    assert LV.loyal_flagged(rows, first) == pytest.approx(share(threshold))


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
                                "log_verdict.min_events=2", "log_verdict.rate_surprise=0", "log_verdict.loyal_budget=0"])  # the fixed horizon's label
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


def test_the_fit_on_the_rate_label_holds_its_precision_and_says_what_gone_meant(tmp_path):
    counts = _busy_and_minor_log()
    config = load_config(None, ["analysis.window_seconds=604800", "log_verdict.horizon_days=70",
                                "log_verdict.min_events=2", "log_verdict.rate_surprise=0.05"])
    result = LV.fit_log_verdict(config, counts)
    assert result.report["rate_surprise"] == 0.05 and result.fit.rate_surprise == 0.05
    rows = LV.silence_rows(config, counts, 10)
    assert (rows.gone & (rows.found.length < 10)).any()  # gone before the horizon: the label is not the fixed one
    odds = np.asarray(kernels.verdict_logit(rows.features, result.fit.params))
    first = LV.first_alarms(rows, odds, result.fit.threshold, 10)
    # Both of the threshold's budgets hold on the silences it was fitted on: the precision and (by default) at most
    # 1 % of the pairs the log shows loyal ever flagged.
    assert LV.alarm_scores(first, rows.gone)["precision"] >= 0.8
    assert LV.loyal_flagged(rows, first) <= 0.01
    assert result.fit.threshold >= LV.loyal_threshold(rows, odds, 0.01)
    assert "such a silence under 0.05 times in its life, 2 to 10 windows" in LV.format_report(result)
    assert "| loyal pairs flagged |" in LV.format_report(result)
    save_verdicts([result.fit], tmp_path / "v.json")
    assert load_verdict(tmp_path / "v.json", 7.0, 0.25, 16, 120).rate_surprise == 0.05
    reading = load_config(None, ["analysis.window_seconds=604800", f"analysis.detector.verdict_file={tmp_path}/v.json"])
    assert "gone = silent until improbable at the interest's own rate (rate_surprise 0.05), 2-10 windows" in \
        learned_verdict_note(reading, 120)


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
    assert f"learned verdict: {tmp_path / 'v' / 'verdict.json'}" in out
    assert "gone = silent until improbable at the interest's own rate (rate_surprise 0.01), 2-6 windows" in out
    # Bad input is one line and exit 2: a horizon longer than the log.
    code, out, err = run(["fit-verdict", "--out", tmp_path / "v2", *data, "--set", "log_verdict.horizon_days=700"])
    assert code == 2 and err.strip().count("\n") == 0 and "log_verdict.horizon_days 700" in err
