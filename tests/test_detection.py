"""Scoring forgetting detection against ground truth, and the two baselines."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax import kernels
from fgjax.config import load_config
from fgjax.data.synthetic import KINDS
from fgjax.evaluation.detection import (
    Truth,
    detect_series,
    first_alarm,
    loyal_false_positive_rate,
    matched_rows,
    score,
    seed_threshold_alarms,
    silence_alarms,
)
from fgjax.analysis import window_params, window_spec

K = {name: i for i, name in enumerate(KINDS)}


def truth(kinds, start, onset, forgotten, resume, judged=None) -> Truth:
    n = len(kinds)
    return Truth(
        user=np.arange(n), interest=np.zeros(n, int), kind=np.array([K[k] for k in kinds]), start=np.array(start),
        onset=np.array(onset), forgotten=np.array(forgotten), resume=np.array(resume),
        judged=np.ones(n, bool) if judged is None else np.array(judged),
    )


def test_score_counts_hits_misses_early_and_false_alarms():
    t = truth(
        kinds=["stopped", "stopped", "stopped", "fading", "reactivated", "reactivated", "stable", "periodic", "stable"],
        start=[0, 0, 0, 0, 0, 0, 0, 0, 3],
        onset=[5, 5, 5, 4, 6, 6, -1, -1, -1],
        forgotten=[6, 6, 6, 8, 7, 7, -1, -1, -1],
        resume=[-1, -1, -1, -1, 10, 10, -1, -1, -1],
    )
    alarm = np.array([8, 3, -1, 7, 9, 12, -1, 4, -1])
    # pair 0: hit, delay 2; pair 1: before the change (false positive); pair 2: missed;
    # pair 3: a fade caught one window before its forgotten window (hit, delay -1, within the tolerance);
    # pair 4: hit during the pause, delay 2; pair 5: after the return (false positive);
    # pair 7: an alarm on a periodic interest (false positive).
    s = score(alarm, t)
    o = s["overall"]
    assert (o["true_positives"], o["false_positives"], o["positives"]) == (3, 3, 6)
    assert o["precision"] == pytest.approx(0.5) and o["recall"] == pytest.approx(0.5)
    assert o["f1"] == pytest.approx(0.5)
    assert o["median_delay"] == 2.0
    assert s["cases"]["periodic"]["false_positive_rate"] == 1.0
    assert s["cases"]["stable"]["false_positive_rate"] == 0.0
    assert s["cases"]["fading"]["median_delay"] == -1.0
    assert s["cases"]["new"]["pairs"] == 1  # the one that starts after window 0
    # A fade called forgotten while its rate is still high is a false positive.
    early = score(np.array([8, 3, -1, 5, 9, 12, -1, 4, -1]), t)["cases"]["fading"]
    assert early["true_positives"] == 0 and early["false_positives"] == 1
    assert score(alarm, t, early_windows=0)["cases"]["fading"]["true_positives"] == 0


def test_unjudged_pairs_do_not_count():
    t = truth(["stopped", "stable"], [0, 0], [5, -1], [6, -1], [-1, -1], judged=[False, True])
    s = score(np.array([-1, -1]), t)
    assert s["overall"]["positives"] == 0 and s["overall"]["pairs"] == 1


def test_first_alarm_ignores_alarms_before_the_interest_starts():
    alarms = np.zeros((6, 2, 1), bool)
    alarms[1, 0, 0] = alarms[4, 0, 0] = True
    alarms[2, 1, 0] = True
    t = truth(["stable", "stable"], start=[2, 3], onset=[-1, -1], forgotten=[-1, -1], resume=[-1, -1])
    assert first_alarm(alarms, t).tolist() == [4, -1]


def test_seed_threshold_baseline_is_the_seed_F_on_window_counts():
    counts = np.array([[[2, 0]], [[1, 1]], [[0, 0]], [[0, 3]]], np.float32)  # (windows, users=1, K=2)
    got = seed_threshold_alarms(counts, 1.0)
    # F per window by hand: t0 vs zeros: |(2,0)|/|(2,0)| = 1; t1: |(-1,1)|/|(1,1)| = 1; t2: everything gone: inf;
    # t3: |(0,3)|/|(0,3)| = 1. The alarm goes to the interests whose count fell.
    expected = np.zeros_like(got)
    expected[1, 0, 0] = True  # 2 -> 1
    expected[2, 0, :] = True  # 1 -> 0 for both
    np.testing.assert_array_equal(got, expected)
    assert not seed_threshold_alarms(counts, 1.5)[1].any()  # F = 1 < 1.5


def test_silence_baseline_counts_windows_since_activity():
    counts = np.array([0, 2, 0, 0, 0, 1, 0], np.float32)[:, None, None]
    np.testing.assert_array_equal(silence_alarms(counts, 2)[:, 0, 0], [0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(silence_alarms(counts, 1)[:, 0, 0], [0, 0, 1, 1, 1, 0, 1])


def test_detect_series_equals_the_streaming_update():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(20, 5, 3)).astype(np.float32)
    counts[10:, 0] = 0  # a stop
    config = load_config(None, ["analysis.detector.buffer_windows=8", "analysis.detector.user_block=2"])
    params = window_params(config.analysis)
    spec = window_spec(config.analysis, 3)
    codes = np.asarray(detect_series(counts, params, spec))
    state = kernels.detector_init(5, 3, 8)
    # As the analysis runs it: each user's periodogram (and its part of the population's dispersion) in turn.
    update = jax.jit(functools.partial(kernels.detector_update, period_every=spec.period_every))
    for t in range(20):
        state, out = update(state, counts[t], None, params.detector)
        np.testing.assert_array_equal(codes[t], np.asarray(out.state))
    assert (codes[-1, 0] == kernels.FORGOTTEN).all()
    # The precision-recall sweep: other false_alarm values reuse the compilation, and they act.
    compiled = detect_series._cache_size()
    sweep = [np.asarray(detect_series(counts, params._replace(detector=params.detector._replace(
        false_alarm=jnp.asarray(q, jnp.float32))), window_spec(config.analysis, 3))) for q in (1e-6, 0.2)]
    assert detect_series._cache_size() == compiled
    low, mid, high = ((c == kernels.FORGOTTEN).sum() for c in (sweep[0], codes, sweep[1]))
    assert low <= mid <= high and low < high


def test_the_life_budget_covers_at_most_the_log_analyzed():
    """``life_days`` in windows, capped at the log's windows where a run knows them: ``fgjax analyze`` of a 40-day
    log judges with a 40-window life (an earlier call than the 200-day budget makes), as ``detect_series`` does
    with the same cap."""
    import dataclasses

    from conftest import make_log
    from fgjax.analysis import analyze, state_series

    d = load_config().analysis.detector
    assert d.kernel_params(86400.0, 60).life_windows == 60 and d.kernel_params(86400.0, 1000).life_windows == 200
    assert d.kernel_params(7 * 86400.0, 10).life_windows == 10 and d.kernel_params(86400.0, 0).life_windows == 1.0
    assert d.kernel_params(7 * 86400.0).life_windows == pytest.approx(200 / 7)
    config = load_config(None, ["analysis.detector.verdict_file="])
    assert float(window_params(config.analysis, 30).detector.life_windows) == 30
    # One interest: an event a day for 20 days, then silent to day 40 (a weightless event marks the log's end).
    day, t0 = 86400.0, 1.7e9
    base = make_log(num_users=1, num_items=4, events_per_user=1)
    ts = np.concatenate([t0 + np.arange(20) * day + 100, [t0 + 39 * day + 100]])
    log = dataclasses.replace(base, user=np.zeros(21, np.int32), item=np.zeros(21, np.int32), timestamp=ts,
                              weight=np.concatenate([np.ones(20), [0.0]]).astype(np.float32))
    result = analyze(config, log, progress=False)
    assert result.num_windows == 40
    codes = state_series(result.changes, 40, 1, len(log.categories))[:, 0, 0]
    counts = np.zeros((40, 1, len(log.categories)), np.float32)
    counts[:20, 0, 0] = 1.0
    spec = window_spec(config.analysis, len(log.categories))
    capped = np.asarray(detect_series(counts, window_params(config.analysis, 40), spec))[:, 0, 0]
    uncapped = np.asarray(detect_series(counts, window_params(config.analysis), spec))[:, 0, 0]
    np.testing.assert_array_equal(codes[:39], capped[:39])  # the analysis sees the end marker on day 39

    def first_forgotten(c):
        return int(np.argmax(c == kernels.FORGOTTEN)) if (c == kernels.FORGOTTEN).any() else 40

    assert first_forgotten(capped) < first_forgotten(uncapped)


@pytest.mark.slow
def test_detector_beats_both_baselines_on_weekly_ground_truth(tmp_path):
    from fgjax.pipeline import evaluate_detection

    config = load_config(None, [
        "synthetic.num_users=400", "synthetic.users_per_shard=200", "synthetic.num_days=210",
        "synthetic.period_days_min=14", "synthetic.period_days_max=35", "synthetic.pause_days_min=21",
        "synthetic.pause_days_max=56", "analysis.window_seconds=604800", "evaluate.false_alarm_sweep=[0.002]",
        "evaluate.detection_stories=[]",  # the matrix has its own tests
    ])
    report = evaluate_detection(config, tmp_path, progress=False)
    ours = report["detector"]["overall"]
    # At the default budget (1 % of loyal interests ever flagged in 200 days, 29 weekly windows). 0.982 here
    # (2026-12-05); kappa calibrated by the silences come back from instead of windows of history scored 0.970
    # (0.887 at configs/detection.yaml's 2,000 users): busy interests that never had a silent week were judged
    # with the first lulls of periodic ones, and their stops called weeks late (bench/RESULTS.md).
    assert ours["f1"] >= 0.975 and ours["median_delay"] <= 3
    assert report["detector"]["cases"]["periodic"]["false_positive_rate"] <= 0.05
    for baseline in report["baselines"].values():
        assert ours["f1"] > baseline["overall"]["f1"]
    assert report["new_interests"]["first_state_new"] == 1.0
    assert report["reactivation"]["recall"] > 0.9
    # Weekly windows: the shipped verdict decided the states (verdict_file: auto), and the report says so.
    from fgjax.evaluation.detection import DetectionReport, format_report

    assert report["setup"]["verdict"] == "auto"
    text = format_report(DetectionReport(**report))
    assert "| fgjax adaptive + learned verdict (auto) |" in text
    assert "| case (fgjax adaptive + learned verdict (auto)) |" in text


def test_each_method_is_also_scored_at_the_others_loyal_false_positive_rate():
    """Two stable, one periodic and one stopped pair; a rule that flags by silence length N, a detector by knob."""
    t = truth(kinds=["stable", "stable", "periodic", "stopped"], start=[0, 0, 0, 0], onset=[-1, -1, -1, 5],
              forgotten=[-1, -1, -1, 6], resume=[-1, -1, -1, -1])
    # First alarms per knob: the stop is caught at window 6 by every knob; loyal pairs are flagged by loose knobs.
    rule_alarms = {1: [3, 4, 2, 6], 2: [-1, 4, -1, 6], 3: [-1, -1, -1, 6]}
    detector_alarms = {0.1: [3, -1, 2, 6], 0.01: [-1, -1, -1, 6], 0.001: [-1, -1, -1, -1]}

    def scorer(alarms):
        return lambda knob: score(np.array(alarms[knob]), t)

    def curve(alarms):
        return [{"knob": k, "f1": scorer(alarms)(k)["overall"]["f1"],
                 "loyal_false_positive_rate": loyal_false_positive_rate(scorer(alarms)(k))} for k in alarms]

    assert loyal_false_positive_rate(score(np.array(rule_alarms[1]), t)) == 1.0
    assert loyal_false_positive_rate(score(np.array(rule_alarms[2]), t)) == pytest.approx(1 / 3)
    # The detector at its default 0.1 flags 2 of 3 loyal pairs; the rule's best N (1: all) flags all three.
    detector, rule = scorer(detector_alarms)(0.1), scorer(rule_alarms)(1)
    out = matched_rows(detector, rule, curve(detector_alarms), curve(rule_alarms), scorer(detector_alarms),
                       scorer(rule_alarms))
    # The rule under the detector's 2/3: N=2 (1/3 flagged) and N=3 (none) qualify; N=3 has the better F1.
    assert out["no_activity_windows_at_fgjax_rate"]["knob"] == 3
    assert out["no_activity_windows_at_fgjax_rate"]["overall"]["f1"] == 1.0
    assert out["no_activity_windows_at_fgjax_rate"]["loyal_cap"] == pytest.approx(2 / 3)
    # The detector under the rule's share (all): every knob qualifies; 0.01 is its best.
    assert out["fgjax_at_no_activity_rate"]["knob"] == 0.01
    # A cap no knob meets leaves the entry out.
    strict = {1: [3, 4, 2, 6], 2: [3, 4, -1, 6]}
    out = matched_rows(scorer(detector_alarms)(0.01), rule, curve(detector_alarms), curve(strict),
                       scorer(detector_alarms), scorer(strict))
    assert "no_activity_windows_at_fgjax_rate" not in out and "fgjax_at_no_activity_rate" in out


def test_changes_the_log_cannot_reveal_are_not_judged():
    from fgjax.evaluation.detection import Truth, revealed

    W = 40
    counts = np.zeros((W, 4, 1), np.float32)
    counts[:30, 0, 0] = 2.0  # 2 a window, stops at 30: 20 expected events in the 10 windows left
    counts[:30:10, 1, 0] = 1.0  # 0.1 a window, stops at 30: 1 expected event left
    counts[:20, 2, 0] = 1.0  # 1 a window, paused 20 .. 25: 5 expected events before the return
    counts[5:, 3, 0] = 1.0  # loyal, late start
    truth = Truth(user=np.arange(4), interest=np.zeros(4, int), kind=np.zeros(4, int), start=np.array([0, 0, 0, 5]),
                  onset=np.array([30, 30, 20, -1]), forgotten=np.array([30, 30, 20, -1]),
                  resume=np.array([-1, -1, 25, -1]), judged=np.ones(4, bool))
    assert revealed(counts, truth, 10.0).tolist() == [True, False, False, True]
    assert revealed(counts, truth, 0.0).tolist() == [True, True, True, True]
