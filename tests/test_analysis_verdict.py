"""The learned verdict in the analysis: its file (save, load, clear errors) and the states it decides."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fgjax import kernels
from fgjax.analysis import analyze, state_series, states_table, window_params
from fgjax.analysis.verdict import VERDICT_FORMAT, VerdictFit, load_verdict, save_verdicts
from fgjax.config import load_config
from fgjax.errors import ConfigError
from fgjax.evaluation.matrix import short_span_windows

from conftest import make_log

F = len(kernels.VERDICT_FEATURES)


def _constant(bias: float) -> kernels.VerdictParams:
    """A verdict whose log-odds are ``bias`` for every row."""
    return kernels.VerdictParams(np.zeros(F, np.float32), np.ones(F, np.float32), np.zeros(F, np.float32),
                                 np.float32(bias))


def test_a_saved_fit_loads_back_for_its_window_and_share(tmp_path):
    rng = np.random.default_rng(0)
    params = kernels.VerdictParams(*(rng.normal(size=F).astype(np.float32) for _ in range(2)),
                                   rng.normal(size=F).astype(np.float32), np.float32(0.7))
    params = params._replace(scale=np.abs(params.scale) + 0.1)
    fits = [VerdictFit(7.0, 0.25, 16, _constant(1.0), 2.0, ("a",), 0.01), VerdictFit(1.0, 0.05, 16, params, 1.5)]
    path = save_verdicts(fits, tmp_path / "verdict.json")
    got = load_verdict(path, 1.0, 0.05, 16)
    assert got.threshold == 1.5 and (got.window_days, got.fade_share) == (1.0, 0.05)
    for name in ("mean", "scale", "weights", "bias"):
        np.testing.assert_array_equal(np.asarray(getattr(got.params, name)), np.asarray(getattr(params, name)))
    assert load_verdict(path, 7.0, 0.25, 16).stories == ("a",)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other/1"), "expected format 'fgjax-verdict/1'"),
    (lambda d: d.update(features=d["features"][:-1]), "are not this version's"),
    (lambda d: d["fits"][0].update(weights=[1.0] * (F - 1)), f"fits[0].weights must hold {F} finite numbers"),
    (lambda d: d["fits"][0].update(scale=[0.0] * F), "needs a positive scale"),
    (lambda d: d["fits"][0].update(recent_windows=8), "was computed with recent_windows=8"),
    (lambda d: d["fits"][0].update(recent_windows="many"), "was computed with recent_windows=many"),
    (lambda d: d["fits"][0].update(window_days=7.0), "no fit for windows of 1 days and fade_share 0.25 (it has: 7 d"),
    (lambda d: d["fits"][0].pop("bias"), "lacks a numeric 'bias'"),
    (lambda d: d["fits"][0].update(log_windows=0), "fits[0].log_windows must be at least 1, got 0"),
    (lambda d: d["fits"][0].update(log_windows="long"), "fits[0] has no numeric window_days and fade_share (or a "
                                                         "non-integer log_windows)"),
])
def test_a_bad_verdict_file_is_one_clear_config_error(tmp_path, edit, message):
    path = save_verdicts([VerdictFit(1.0, 0.25, 16, _constant(0.0), 0.0)], tmp_path / "v.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == VERDICT_FORMAT
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="v.json") as info:
        load_verdict(path, 1.0, 0.25, 16)
    assert message in str(info.value) and "\n" not in str(info.value)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON verdict file"):
        load_verdict(path, 1.0, 0.25, 16)


def test_a_file_with_fits_for_two_spans_lends_each_log_the_nearest(tmp_path):
    """``log_windows``: the shortest fit whose span covers the log's, else the longest; the longest for a log with
    no known end; a fit with no span serves any log, after those that name one."""
    def fit(name, span):
        return VerdictFit(1.0, 0.25, 16, _constant(0.0), 0.0, (name,), 0.01, log_windows=span)

    path = save_verdicts([fit("long", 168), fit("short", 60), VerdictFit(7.0, 0.25, 16, _constant(0.0), 0.0)],
                         tmp_path / "v.json")
    for windows, want in ((8, "short"), (60, "short"), (61, "long"), (105, "long"), (168, "long"), (900, "long"),
                          (None, "long")):
        assert load_verdict(path, 1.0, 0.25, 16, windows).stories == (want,), windows
    assert load_verdict(path, 1.0, 0.25, 16, 60).log_windows == 60
    assert load_verdict(path, 7.0, 0.25, 16, 9).log_windows is None  # the only weekly fit, whatever the span
    path = save_verdicts([fit("any", None), fit("short", 60), fit("mid", 90)], tmp_path / "w.json")
    assert load_verdict(path, 1.0, 0.25, 16, 600).stories == ("mid",)  # none covers it: the longest
    assert load_verdict(path, 1.0, 0.25, 16, 70).stories == ("mid",)
    assert load_verdict(path, 1.0, 0.25, 16, 50).stories == ("short",)
    assert load_verdict(path, 1.0, 0.25, 16, None).stories == ("mid",)


def _busy_then_silent():
    """One interest: 4 events a day for 10 days, silent 40 days, one event on day 50, the log to day 52."""
    base = make_log(num_users=1, num_items=4, events_per_user=1)
    day, t0 = 86400.0, 1.7e9
    ts = np.concatenate([t0 + np.arange(10) * day + 100, [t0 + 50 * day + 100], [t0 + 52 * day + 100]])
    weight = np.concatenate([np.full(10, 4.0), [0.5], [0.0]]).astype(np.float32)
    return dataclasses.replace(base, user=np.zeros(12, np.int32), item=np.zeros(12, np.int32), timestamp=ts,
                               weight=weight)


def _history(config, log):
    result = analyze(config, log, progress=False)
    return [kernels.STATE_NAMES[s] for s in
            state_series(result.changes, result.num_windows, log.num_users, len(log.categories))[:, 0, 0]]


def test_the_verdict_decides_which_silent_interests_are_forgotten(tmp_path):
    log = _busy_then_silent()
    own = _history(load_config(), log)
    assert own[49] == "forgotten" and own[10] != "forgotten"
    # A verdict that calls every silence forgotten: from the first silent window, until the event on day 50.
    always = save_verdicts([VerdictFit(1.0, 0.25, 16, _constant(5.0), 0.0)], tmp_path / "always.json")
    learned = _history(load_config(None, [f"analysis.detector.verdict_file={always}"]), log)
    assert learned[10:50] == ["forgotten"] * 40
    assert learned[50] == own[50] and learned[:10] == own[:10]  # activity: the detector's codes
    # One that never does: the detector's forgotten windows read as declining, the rest are the detector's.
    never = save_verdicts([VerdictFit(1.0, 0.25, 16, _constant(-5.0), 0.0)], tmp_path / "never.json")
    quiet = _history(load_config(None, [f"analysis.detector.verdict_file={never}"]), log)
    assert "forgotten" not in quiet
    assert [q for q, o in zip(quiet, own) if o == "forgotten"] == ["declining"] * own.count("forgotten")
    assert [q for q, o in zip(quiet, own) if o != "forgotten"] == [o for o in own if o != "forgotten"]


def test_the_run_reads_the_fit_for_its_logs_span(tmp_path):
    """``analyze`` hands the log's windows (53 daily here) to the verdict file: the shortest fit whose span covers
    them decides."""
    log = _busy_then_silent()

    def history(always_span, never_span):  # the log has 53 daily windows: the shortest span covering it decides
        fits = [VerdictFit(1.0, 0.25, 16, _constant(5.0), 0.0, log_windows=always_span),
                VerdictFit(1.0, 0.25, 16, _constant(-5.0), 0.0, log_windows=never_span)]
        path = save_verdicts(fits, tmp_path / f"{always_span}-{never_span}.json")
        return _history(load_config(None, [f"analysis.detector.verdict_file={path}"]), log)

    assert history(always_span=53, never_span=200)[10:50] == ["forgotten"] * 40
    assert "forgotten" not in history(always_span=52, never_span=200)  # 52 windows do not cover the log
    assert "forgotten" not in history(always_span=40, never_span=60)


def test_the_verdict_needs_the_adaptive_detector(tmp_path):
    path = save_verdicts([VerdictFit(1.0, 0.25, 16, _constant(0.0), 0.0)], tmp_path / "v.json")
    config = load_config(None, [f"analysis.detector.verdict_file={path}", "analysis.detector.kind=level"])
    with pytest.raises(ConfigError, match="reads the adaptive detector's state; analysis.detector.kind is 'level'"):
        analyze(config, _busy_then_silent(), progress=False)


def test_states_parquet_holds_the_verdicts_log_odds_where_it_judged(tmp_path):
    """``verdict``: log(1 + silence) - 2 under a verdict that reads only the silence, on the silent rows; null on
    an active interest's rows and everywhere without a verdict file; forgotten exactly where it is above 0."""
    log = _busy_then_silent()
    weights = np.zeros(F, np.float32)
    weights[kernels.VERDICT_FEATURES.index("log_silence")] = 1.0
    params = kernels.VerdictParams(np.zeros(F, np.float32), np.ones(F, np.float32), weights, np.float32(-2.0))
    path = save_verdicts([VerdictFit(1.0, 0.25, 16, params, 0.0)], tmp_path / "silence.json")
    config = load_config(None, [f"analysis.detector.verdict_file={path}"])
    table = states_table(analyze(config, log, progress=False), log).to_pydict()
    silent = [s > 0 for s in table["silence"]]
    assert any(silent) and not all(silent)
    for is_silent, silence, verdict, state in zip(silent, table["silence"], table["verdict"], table["state"]):
        if not is_silent:
            assert verdict is None
            continue
        assert verdict == pytest.approx(np.log1p(silence) - 2.0, abs=1e-5)
        assert (state == "forgotten") == (verdict > 0.0)
    assert "forgotten" in table["state"] and table["silence"][table["state"].index("forgotten")] == 7
    own = states_table(analyze(load_config(None, ["analysis.detector.verdict_file="]), log, progress=False), log)
    assert own.num_rows > 0 and own["verdict"].null_count == own.num_rows


def test_auto_lends_the_shipped_fit_to_daily_and_weekly_windows():
    """``verdict_file``: ``auto`` (the default) is the shipped file in daily and weekly windows where it has a fit
    for the share and feature span, the detector's own verdict ("") elsewhere; ``builtin`` is the shipped file
    anywhere; "" is none; a path is itself."""
    from fgjax.analysis import BUILTIN_PATH, verdict_file, verdict_path

    shipped = str(BUILTIN_PATH)
    assert verdict_path("auto", 7.0, 0.25, 16) == shipped and verdict_path("auto", 7.0, 0.05, 16) == shipped
    assert verdict_path("auto", 1.0, 0.25, 16) == shipped and verdict_path("auto", 1.0, 0.05, 16) == shipped
    assert verdict_path("auto", 3.0, 0.25, 16) == ""  # a window length the matrix never measured: the detector
    assert verdict_path("auto", 7.0, 0.3, 16) == ""  # no shipped fit for this fade definition
    assert verdict_path("auto", 7.0, 0.25, 8) == ""  # ... nor for this feature span
    assert verdict_path("builtin", 1.0, 0.25, 16) == shipped
    assert verdict_path("", 7.0, 0.25, 16) == "" and verdict_path("my/v.json", 7.0, 0.25, 16) == "my/v.json"
    weekly = load_config(None, ["analysis.window_seconds=604800"])
    assert weekly.analysis.detector.verdict_file == "auto" and verdict_file(weekly.analysis) == shipped
    assert verdict_file(load_config(None, []).analysis) == shipped
    assert verdict_file(load_config(None, ["analysis.window_seconds=259200"]).analysis) == ""
    # The level rule keeps no state for a verdict: auto leaves it alone, an explicit file is an error.
    level = load_config(None, ["analysis.window_seconds=604800", "analysis.detector.kind=level"])
    assert verdict_file(level.analysis) == "" and window_params(level.analysis).verdict is None
    named = load_config(None, ["analysis.detector.verdict_file=builtin", "analysis.detector.kind=level"])
    with pytest.raises(ConfigError, match="reads the adaptive detector's state"):
        window_params(named.analysis)


def test_the_shipped_fit_covers_both_windows_and_shares_and_names_its_stories():
    """The shipped file is this version's format and features, with a fit per window length and fade share of the
    detection matrix, each fitted on the four stories and their family draws (``fgjax evaluate --detection``)."""
    from fgjax.analysis import BUILTIN_PATH

    config = load_config(None, [])
    e, d = config.evaluate, config.analysis.detector
    for days in e.detection_window_days:
        for share in e.fade_shares:
            # One fit for the matrix's logs and one for the short ones, each read by a log of its span.
            # The shipped spans: the matrix's, and those of the default evaluate.verdict_short_days fitted at this
            # window length (weekly: not the 30-day span, whose logs begin fewer than verdict_min_windows windows).
            spans = [span for span in e.verdict_short_days if days in short_span_windows(config, span)]
            assert spans == ([30, 60, 90, 112, 140] if days == 1 else [60, 90, 112, 140])
            begun = {span: -(-span // days) for span in (e.matrix_days, *spans)}  # partial ones count
            fits = {span: load_verdict(BUILTIN_PATH, float(days), float(share), d.verdict_recent_windows, windows)
                    for span, windows in begun.items()}
            for span, fit in fits.items():
                assert fit.log_windows == begun[span]
                assert fit.stories == (*e.detection_stories,
                                       *(f"{s} (family draw 1)" for s in e.detection_stories))
                assert np.isfinite(fit.threshold) and float(np.abs(np.asarray(fit.params.weights)).sum()) > 0
            weights = [np.asarray(f.params.weights) for f in fits.values()]
            assert all(not np.array_equal(a, b) for i, a in enumerate(weights) for b in weights[i + 1:])
    weekly_config = load_config(None, ["analysis.window_seconds=604800"]).analysis
    # A 60-day log begins 9 weekly windows: the 60-day fit's; one of 10-13, the 90-day fit's; of 14-16, the
    # 112-day fit's; of 17-20, the 140-day fit's; longer, the long fit's.
    for log_windows, span in ((None, e.matrix_days), (30, e.matrix_days), (21, e.matrix_days), (20, 140), (17, 140),
                              (16, 112), (14, 112), (13, 90), (10, 90), (9, 60),
                              (3, 60)):  # no 30-day weekly fit: 3 windows read the 60-day
        weekly = window_params(weekly_config, log_windows)
        fit = load_verdict(BUILTIN_PATH, 7.0, d.fade_share, d.verdict_recent_windows, -(-span // 7))
        np.testing.assert_array_equal(np.asarray(weekly.verdict.weights), np.asarray(fit.params.weights))
        assert float(weekly.verdict_threshold) == fit.threshold
    daily_config = load_config(None, ["analysis.window_seconds=86400"]).analysis
    # Daily: a log of up to 30 windows reads the 30-day fit; 31-60, the 60-day one; 61-90, the 90-day one; ...
    for log_windows, span in ((20, 30), (30, 30), (31, 60), (60, 60), (61, 90), (90, 90), (91, 112), (112, 112),
                              (113, 140), (140, 140)):
        daily = window_params(daily_config, log_windows)
        fit = load_verdict(BUILTIN_PATH, 1.0, d.fade_share, d.verdict_recent_windows, span)
        assert fit.log_windows == span
        np.testing.assert_array_equal(np.asarray(daily.verdict.weights), np.asarray(fit.params.weights))


def test_a_fit_on_a_logs_own_silences_also_forgets_every_silence_of_its_horizon(tmp_path):
    """``fgjax fit-verdict``'s fits carry ``horizon_windows``: what they were taught "gone" means is forgotten too."""
    log = _busy_then_silent()
    fit = VerdictFit(1.0, 0.25, 16, _constant(-5.0), 0.0, stories=("the log's own silences",), log_windows=53,
                     horizon_windows=15, precision=0.8)
    path = save_verdicts([fit], tmp_path / "own.json")
    loaded = load_verdict(path, 1.0, 0.25, 16, 53)
    assert (loaded.horizon_windows, loaded.precision) == (15, 0.8)
    assert "horizon_windows" not in json.loads(save_verdicts([dataclasses.replace(fit, horizon_windows=None)],
                                                             tmp_path / "plain.json").read_text())["fits"][0]
    history = _history(load_config(None, [f"analysis.detector.verdict_file={path}"]), log)
    # Last event on day 9: silent 1 window on day 10, 15 windows on day 24; the log-odds never exceed the threshold.
    assert "forgotten" not in history[:24] and history[24:50] == ["forgotten"] * 26
    assert history[50] != "forgotten"  # activity ends it
