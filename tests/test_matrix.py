"""The story x window matrix: ground truth on windows, the cell metrics, leave-one-story-out, the anchors."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from fgjax import kernels
from fgjax.config import Config, load_config
from fgjax.errors import ConfigError
from fgjax.data import synthetic
from fgjax.evaluation import matrix as M
from fgjax.evaluation.detection import Truth

TINY = [
    "evaluate.matrix_users=80", "evaluate.matrix_days=84", "evaluate.detection_stories=[classic,hawkes,engaged]",
    "evaluate.false_alarm_sweep=[0.003,0.03,0.3]", "evaluate.bocpd_threshold_sweep=[0.5,0.99]",
    "evaluate.cusum_threshold_sweep=[4,12]", "evaluate.silence_sweep=[2,5,10]", "evaluate.fade_shares=[0.25,0.05]",
    "synthetic.users_per_shard=80", "evaluate.verdict_short_days=[14, 28]",
    # A span is fitted where its logs begin 15 windows: the 28-day one in daily windows only (4 weekly), the
    # 14-day one nowhere (14 daily).
    "evaluate.verdict_min_windows=15",
]


@pytest.fixture(scope="module")
def tiny() -> tuple[Config, M.MatrixReport]:
    config = load_config(None, TINY)
    return config, M.evaluate_matrix(config)


def test_every_cell_has_every_method_and_the_knobs_are_chosen_as_stated(tiny):
    config, report = tiny
    knobs = M.sweeps(config)
    assert set(report.cells) == {"0.25", "0.05"}
    for share, by_story in report.cells.items():
        assert set(by_story) == {"classic", "hawkes", "engaged"}
        for story, by_window in by_story.items():
            assert set(by_window) == {"daily", "weekly"}
            for window, by_method in by_window.items():
                grid = report.grid[share]
                assert set(M.METHODS) <= set(by_method) <= set(M.METHODS) | {e for e, _, _ in M.MATCHED}
                # The silence rule and the ceiling: their best knob on this very cell.
                for method in M.ON_THE_CELL:
                    points = grid[story][window][method]
                    best = max(range(len(points)), key=lambda i: points[i]["f1"] or 0.0)
                    assert by_method[method]["knob"] == knobs[method][best]
                # The detector and the anchors: the knob with the best mean F1 on the *other* stories.
                for method in ("detector", "bocpd", "cusum"):
                    others = [s for s in by_story if s != story]
                    means = [np.mean([grid[s][window][method][j]["f1"] or 0.0 for s in others])
                             for j in range(len(knobs[method]))]
                    assert by_method[method]["knob"] == knobs[method][int(np.argmax(means))]
                    assert by_method[method]["f1"] == grid[story][window][method][int(np.argmax(means))]["f1"]
                assert by_method["detector_default"]["knob"] == config.analysis.detector.false_alarm
                # The learned verdict: its knob (a log-odds threshold) is the held-out model's grid point.
                chosen = knobs["learned"].index(by_method["learned"]["knob"])
                assert by_method["learned"]["f1"] == grid[story][window]["learned"][chosen]["f1"]
    text = M.format_summary(report)
    assert text.count("| classic | daily |") == 2 and "silence rule: N, F1, delay, loyal" in text
    errors = M.format_errors(report)
    assert errors.count("| hawkes | weekly |") == 2 and "late: paused" in errors
    d = report.cells["0.25"]["classic"]["daily"]["detector"]
    for share, by_story in report.grid.items():  # every knob of every method: the errors are the score's
        for by_window in by_story.values():
            for by_method in by_window.values():
                for points in by_method.values():
                    for m in points:
                        total = {error: sum(by_kind.values()) for error, by_kind in m["errors"].items()}
                        assert total["early"] + total["late"] + total["false_alarm"] == m["false_positives"]
                        assert total["missed"] + total["early"] + total["late"] == (m["positives"]
                                                                                   - m["true_positives"])
    row = next(line for line in errors.splitlines() if line.startswith("| classic | daily |"))
    assert row.split(" | ")[2] == ", ".join(str(d["errors"]["missed"].get(k, 0))
                                           for k in ("stopped", "reactivated", "fading"))
    assert "rule at the detector's loyal share: N, F1" in text
    assert "ceiling: oracle F1, delay, loyal" in text
    assert "learned verdict: F1, delay, loyal" in text


def test_each_method_at_the_others_loyal_share_is_its_best_knob_under_that_cap(tiny):
    """The matched entries: the best F1 among knobs flagging at most the other method's share of loyal pairs."""
    config, report = tiny
    knobs = M.sweeps(config)
    seen = 0
    for share, by_story in report.cells.items():
        for story, by_window in by_story.items():
            for window, by_method in by_window.items():
                for entry, method, capped_by in M.MATCHED:
                    points = report.grid[share][story][window][method]
                    cap = by_method[capped_by]["loyal_ever_flagged"]
                    allowed = [i for i, p in enumerate(points) if p["loyal_ever_flagged"] <= cap]
                    if not allowed:
                        assert entry not in by_method
                        continue
                    seen += 1
                    got = by_method[entry]
                    assert got["loyal_ever_flagged"] <= cap
                    assert got["f1"] == max(points[i]["f1"] or 0.0 for i in allowed) or got["f1"] is None
                    assert got["knob"] in [knobs[method][i] for i in allowed]
    assert seen  # some cell has a knob under its cap: the check above is not vacuous


def _cell(f1, delay, loyal, again, rule_f1, rule_delay, ceiling_f1):
    metrics = lambda f, d, loy, ag: {"f1": f, "median_delay": d, "loyal_ever_flagged": loy,  # noqa: E731
                                     "reactivated_flagged_again": ag}
    return {"detector": metrics(f1, delay, loyal, again), "silence": metrics(rule_f1, rule_delay, 0.05, 0.3),
            "oracle": metrics(ceiling_f1, 1.0, 0.0, 0.0)}


def test_target_checks_say_which_cell_meets_which_target():
    cells = {"0.25": {"a": {"daily": _cell(0.96, 10.0, 0.005, 0.0, 0.90, 12.0, 0.99),
                            "weekly": _cell(0.94, 2.0, 0.02, 0.03, 0.94, 2.0, 0.93)}},
             "0.05": {"a": {"daily": _cell(None, None, None, None, 0.5, 20.0, None)}}}
    checks = M.target_checks(M.MatrixReport(cells=cells, grid={}, setup={}))
    assert checks["cells"]["0.25"]["a"]["daily"] == {"f1": True, "ceiling_allows": True, "beats_rule": True,
                                                     "earlier_than_rule": True, "loyal": True, "flagged_again": True}
    # Equal F1 is at least the rule's; an equal delay is not earlier; 2 % loyal and 3 % flagged again miss.
    assert checks["cells"]["0.25"]["a"]["weekly"] == {"f1": False, "ceiling_allows": False, "beats_rule": True,
                                                      "earlier_than_rule": False, "loyal": False,
                                                      "flagged_again": False}
    # No alarm at all: no F1, no delay, nothing to flag again.
    assert checks["cells"]["0.05"]["a"]["daily"] == {"f1": False, "ceiling_allows": False, "beats_rule": False,
                                                     "earlier_than_rule": False, "loyal": False, "flagged_again": True}
    assert checks["of"] == 3 and checks["met"] == {"f1": 1, "ceiling_allows": 1, "beats_rule": 2,
                                                   "earlier_than_rule": 1, "loyal": 1, "flagged_again": 2}
    text = M.format_targets(checks)
    assert "| 25% | a | weekly | **no** | **no** | yes | **no** | **no** | **no** |" in text
    assert "| met | | | 1 / 3 | 1 / 3 | 2 / 3 | 1 / 3 | 1 / 3 | 2 / 3 |" in text


def test_the_matrix_files_hold_the_targets(tiny, tmp_path):
    import json

    config, report = tiny
    M.write_matrix(report, config, tmp_path)
    written = json.loads((tmp_path / "matrix.json").read_text())
    assert written["targets"] == json.loads(json.dumps(M.target_checks(report)))
    assert written["targets"]["of"] == 12  # 2 shares x 3 stories x 2 windows
    assert "| met | | |" in (tmp_path / "matrix.md").read_text()
    # The learned verdict's targets beside the detector's, each from its own cells.
    learned = written["learned_targets"]
    assert learned["method"] == "learned" and learned["of"] == 12
    assert learned == json.loads(json.dumps(M.learned_target_checks(report)))
    for share, by_story in report.cells.items():
        for story, by_window in by_story.items():
            for window, m in by_window.items():
                got = learned["cells"][share][story][window]["beats_rule"]
                assert got == ((m["learned"]["f1"] or 0.0) >= (m["silence"]["f1"] or 0.0))
    text = (tmp_path / "matrix.md").read_text()
    assert "Targets (the learned verdict, fitted leave-one-story-out)" in text
    assert "Targets (the detector, knob leave-one-story-out)" in text
    # verdict.json's fits saw every story and each story's family draw; the setup says what the family was.
    fits = json.loads((tmp_path / "verdict.json").read_text())["fits"]
    # Per share: the matrix's 84-day logs in both window lengths and the 28-day short ones in daily windows (the
    # only span and window length with 15 windows), each naming its span.
    assert len(fits) == 6 and all(f["stories"] == ["classic", "hawkes", "engaged", "classic (family draw 1)",
                                                   "hawkes (family draw 1)", "engaged (family draw 1)"] for f in fits)
    spans = sorted((f["window_days"], f["fade_share"], f["log_windows"]) for f in fits)
    assert spans == sorted((d, s, n // int(d)) for d, n in ((1.0, 84), (1.0, 28), (7.0, 84)) for s in (0.25, 0.05))
    assert M.windows_begun(60, 7) == 9 and M.windows_begun(168, 7) == 24 and M.windows_begun(60, 1) == 60
    assert "Logs of 28 days (each story's draw over 28 days) against the matrix's 84 days" in text
    assert written["matrix"]["setup"]["verdict_family"] == {"draws": 1, "period_days": [2, 42], "pause_days": [14, 63],
                                                         "own_draws": 0}
    # Without the learned verdict: no learned targets and no verdict.json.
    bare = M.MatrixReport(cells={s: {k: {w: {n: v for n, v in m.items() if n != "learned"} for w, m in bw.items()}
                                     for k, bw in bs.items()} for s, bs in report.cells.items()},
                          grid={}, setup={})
    assert M.learned_target_checks(bare) is None
    M.write_matrix(bare, config, tmp_path / "bare")
    assert "learned_targets" not in json.loads((tmp_path / "bare" / "matrix.json").read_text())
    assert not (tmp_path / "bare" / "verdict.json").exists()


def test_the_short_span_verdict_is_scored_on_each_storys_short_draw(tiny):
    """``evaluate.verdict_short_days``: every cell's draw over the span holds the rule at its best N there, the
    detector at its defaults and both spans' verdicts, and the span's verdict on the long cell; their F1 is each
    method's own on that draw."""
    config, report = tiny
    e = config.evaluate
    assert M.short_span_windows(config, 28) == (1,) and M.short_span_windows(config, 14) == ()
    assert report.setup["short_days"] == [14, 28] and set(report.short) == {"28"}  # 14: no window length, no draw
    assert set(report.short["28"]) == {"0.25", "0.05"}
    days = M.story_days(M.short_config(config, 0, 28), "hawkes")
    assert days.counts.shape[0] == 28
    for share, by_story in report.short["28"].items():
        assert set(by_story) == {"classic", "hawkes", "engaged"}
        for story, by_window in by_story.items():
            assert set(by_window) == {"daily"}
            for window, m in by_window.items():
                assert set(m) == {"silence", "detector_default", "learned", "learned_long", "short_fit_on_long"}
                assert m["learned"]["knob"] in e.verdict_threshold_sweep
    counts = M.windowed(days, 1)
    truth = M.story_truth(days, counts, 1, 0.25, e.matrix_margin_days, e.min_expected_events)
    alarms = M.method_alarms(config, counts, 0.25, 1)
    rule = [M.cell_metrics(alarms["silence"](n), truth, e.detection_early_windows)["f1"] or 0.0
            for n in e.silence_sweep]
    cell = report.short["28"]["0.25"]["hawkes"]["daily"]
    assert cell["silence"]["f1"] == pytest.approx(max(rule))
    detector = M.cell_metrics(alarms["detector_default"](config.analysis.detector.false_alarm), truth,
                              e.detection_early_windows)
    assert cell["detector_default"]["f1"] == detector["f1"]
    assert "28-day fit" in M.format_short(report)
    assert M.format_short(dataclasses.replace(report, short={})) == ""


def test_the_short_span_draws_are_other_users_over_each_span():
    config = load_config(None, ["evaluate.matrix_days=70", "evaluate.verdict_short_days=[50, 30, 70]",
                                "evaluate.verdict_period_days=[20, 30]"])
    assert M.short_span_days(config) == (30, 50)  # ascending; 70 is not below matrix_days
    own, wide = M.short_config(config, 0, 30), M.short_config(config, 1, 30)
    assert own.evaluate.matrix_days == wide.evaluate.matrix_days == 30
    assert own.synthetic.period_days_min == config.synthetic.period_days_min  # the scored draw: the story's own
    assert wide.synthetic.period_days_min == 20  # its family: the wide ranges
    other_span = M.short_config(config, 0, 50)
    assert other_span.evaluate.matrix_days == 50
    seeds = {config.synthetic.seed, own.synthetic.seed, wide.synthetic.seed, other_span.synthetic.seed,
             M.short_config(config, 1, 50).synthetic.seed,
             *(M.family_config(config, d).synthetic.seed for d in range(3))}
    assert len(seeds) == 8  # other users than the matrix's, the long fit's family and the other span's
    # A span's users follow its days alone: adding or removing another span leaves its draws (and fits) as they were.
    alone = load_config(None, ["evaluate.matrix_days=70", "evaluate.verdict_short_days=[50]",
                               "evaluate.verdict_period_days=[20, 30]"])
    for draw in (0, 1):
        assert M.short_config(alone, draw, 50).synthetic == M.short_config(config, draw, 50).synthetic
    assert M.short_span_days(load_config(None, ["evaluate.matrix_days=30", "evaluate.verdict_short_days=[30]"])) == ()
    assert M.short_span_days(load_config(None, ["evaluate.verdict=false"])) == ()
    assert M.short_span_days(load_config(None, ["evaluate.verdict_short_days=[]"])) == ()
    with pytest.raises(ConfigError, match=r"evaluate\.verdict_short_days"):
        load_config(None, ["evaluate.verdict_short_days=[7]"])
    many = load_config(None, ["evaluate.verdict_family_draws=10", "evaluate.verdict_short_days=[30, 50]"])
    with pytest.raises(ConfigError, match=r"evaluate\.verdict_family_draws: at most 9 with several"):
        M.short_span_days(many)  # span 1's draws would reuse span 0's users
    assert M.short_span_days(dataclasses.replace(many, evaluate=dataclasses.replace(
        many.evaluate, verdict_short_days=[30]))) == (30,)
    with pytest.raises(ConfigError, match=r"evaluate\.verdict_short_days: expected distinct spans"):
        load_config(None, ["evaluate.verdict_short_days=[60, 60]"])


def test_a_span_is_fitted_only_at_window_lengths_where_its_logs_hold_enough_windows():
    """``evaluate.verdict_min_windows``: the default fits the 30-day span in daily windows only (a 30-day log
    begins 5 weekly windows), the 60-day span in both (60 and 9)."""
    config = load_config(None, [])
    assert config.evaluate.verdict_min_windows == 8
    assert M.short_span_windows(config, 30) == (1,)
    assert M.short_span_windows(config, 56) == (1, 7)  # 8 weekly windows exactly
    assert M.short_span_windows(config, 49) == (1,)  # 7
    assert M.short_span_windows(config, 60) == (1, 7)
    strict = load_config(None, ["evaluate.verdict_min_windows=40"])
    assert M.short_span_windows(strict, 30) == () and M.short_span_windows(strict, 60) == (1,)
    with pytest.raises(ConfigError, match=r"evaluate\.verdict_min_windows"):
        load_config(None, ["evaluate.verdict_min_windows=1"])


def test_best_index_picks_the_best_f1_within_the_cap_and_none_without_one():
    from fgjax.evaluation.detection import best_index

    points = [{"f1": 0.9, "loyal_ever_flagged": 0.2}, {"f1": 0.7, "loyal_ever_flagged": 0.01},
              {"f1": 0.8, "loyal_ever_flagged": 0.05}, {"f1": None, "loyal_ever_flagged": None}]
    assert best_index(points, 0.05, "loyal_ever_flagged") == 2
    assert best_index(points, 0.01, "loyal_ever_flagged") == 1
    assert best_index(points, 1.0, "loyal_ever_flagged") == 0
    assert best_index(points, 0.001, "loyal_ever_flagged") is None
    assert best_index(points) == 0  # no cap: the best F1 of all


def test_the_ceiling_reads_the_fade_definition_and_is_above_the_methods_on_classic(tiny):
    """The oracle knows the rates: on the classic story's cells it is at least as good as every method."""
    config, report = tiny
    days = M.story_days(config, "classic")
    posteriors = M.oracle_posteriors(config, days)
    assert not np.array_equal(posteriors[0.25], posteriors[0.05])
    counts = M.windowed(days, 7)
    flags = M.method_alarms(config, counts, 0.25, 7, days, posteriors[0.25])["oracle"](0.9)
    assert flags.shape == counts.shape and flags.any()
    for share in ("0.25", "0.05"):
        for window, by_method in report.cells[share]["classic"].items():
            best_other = max(by_method[m]["f1"] or 0.0 for m in M.METHODS if m != "oracle")
            assert by_method["oracle"]["f1"] >= best_other - 0.05, (share, window)


def test_the_detector_reads_the_fade_definition_and_the_others_do_not(tiny):
    config, report = tiny
    days = M.story_days(config, "classic")
    counts = M.windowed(days, 1)
    at = {share: M.method_alarms(config, counts, share, 1) for share in (0.25, 0.05)}
    np.testing.assert_array_equal(at[0.25]["silence"](5), at[0.05]["silence"](5))
    np.testing.assert_array_equal(at[0.25]["cusum"](4), at[0.05]["cusum"](4))
    # (How the detector reads it, on busy fades: tests/test_kernels_detector.py::test_a_fade_is_judged_by_...)
    assert report.setup["fade_shares"] == [0.25, 0.05]


def _truth(**columns) -> Truth:
    n = len(columns["kind"])
    base = dict(user=np.arange(n), interest=np.zeros(n, int), start=np.zeros(n, int), onset=np.full(n, -1),
                forgotten=np.full(n, -1), resume=np.full(n, -1), judged=np.ones(n, bool))
    return Truth(**{**base, **columns})


def test_cell_metrics_count_loyal_flags_flips_after_a_return_and_fade_spells():
    W = 12
    STABLE, PAUSE, FADE = synthetic.STABLE, synthetic.REACTIVATED, synthetic.FADING
    truth = _truth(kind=np.array([STABLE, STABLE, PAUSE, PAUSE, FADE]),
                   forgotten=np.array([-1, -1, 3, 3, 4]), resume=np.array([-1, -1, 6, 6, -1]),
                   onset=np.array([-1, -1, 3, 3, 2]))
    f = np.zeros((W, 5, 1), bool)
    f[5, 1] = True  # a loyal interest flagged once
    f[4:6, 2] = True  # a pause caught, then reactivated for good
    f[4:6, 3] = True  # a pause caught ...
    f[9, 3] = True  # ... and flagged again after its return
    f[5:7, 4] = True  # a fade: two forgotten spells
    f[8:10, 4] = True
    m = M.cell_metrics(f, truth, early=1)
    assert m["loyal_pairs"] == 2 and m["loyal_ever_flagged"] == 0.5
    assert m["returns"] == 2 and m["reactivated_flagged_again"] == 0.5
    assert m["fades_with_two_spells"] == 1.0
    assert m["true_positives"] == 3 and m["false_positives"] == 1 and m["recall"] == 1.0
    assert m["errors"]["false_alarm"] == {"stable": 1, "fading": 0, "reactivated": 0}
    assert all(not any(by_kind.values()) for error, by_kind in m["errors"].items() if error != "false_alarm")


def test_error_counts_say_which_interests_were_missed_early_late_or_flagged_though_loyal():
    """Each error where it happened, by kind, from hand-placed first alarms; unjudged pairs count nowhere."""
    STOP, PAUSE, FADE, STABLE = synthetic.STOPPED, synthetic.REACTIVATED, synthetic.FADING, synthetic.STABLE
    #                    stop: caught, missed, early | pause: late, in time | fade: early, loyal-floor flagged | stable x2
    kind = np.array([STOP, STOP, STOP, PAUSE, PAUSE, FADE, FADE, STABLE, STABLE, STOP])
    forgotten = np.array([5, 5, 5, 5, 5, 8, -1, -1, -1, 5])
    resume = np.array([-1, -1, -1, 9, 9, -1, -1, -1, -1, -1])
    judged = np.array([True] * 9 + [False])  # the last stop is too near the end: not judged
    alarm = np.array([5, -1, 3, 10, 9, 6, 4, 7, -1, -1])
    errors = M.error_counts(alarm, _truth(kind=kind, forgotten=forgotten, resume=resume, judged=judged), early=1)
    assert errors == {
        "missed": {"stable": 0, "fading": 0, "stopped": 1, "reactivated": 0},
        "early": {"stable": 0, "fading": 1, "stopped": 1, "reactivated": 0},  # 3 < 5 - 1 and 6 < 8 - 1
        "late": {"stable": 0, "fading": 0, "stopped": 0, "reactivated": 1},  # flagged at 10, back at 9
        "false_alarm": {"stable": 1, "fading": 1, "stopped": 0, "reactivated": 0},
    }
    # One window early is within the tolerance (detection.score's in-time alarm): no error.
    assert M.error_counts(np.array([4]), _truth(kind=np.array([STOP]), forgotten=np.array([5])), 1)["early"] == {
        "stopped": 0}


def test_story_truth_judges_what_the_log_can_reveal():
    days = 70
    counts = np.zeros((days, 3, 1), np.float32)
    counts[:40, 0, 0] = 2.0  # busy, stops at day 40: judged
    counts[:40:10, 1, 0] = 1.0  # 0.1 a day, stops at day 40: 3 expected events after, not judged
    counts[:, 2, 0] = 1.0  # a fade to a 30 % floor: a loyal interest at a 25 % definition
    d = M.StoryDays("t", counts, user=np.arange(3), slot=np.zeros(3, int),
                    kind=np.array([synthetic.STOPPED, synthetic.STOPPED, synthetic.FADING]),
                    start=np.zeros(3, int), change=np.array([40, 40, 30]), resume=np.array([50, 50, 80]),
                    fade_floor=np.array([0.0, 0.0, 0.3]), fade_half_life=np.array([7.0, 7.0, 7.0]))
    truth = M.story_truth(d, counts, 1, 0.25, margin_days=14, min_expected=10)
    assert truth.judged.tolist() == [True, False, True]
    assert truth.forgotten.tolist() == [40, 40, -1] and not truth.positive[2]
    at_half = M.story_truth(d, counts, 1, 0.5, margin_days=14, min_expected=10)
    assert at_half.positive[2] and at_half.forgotten[2] == 30 + int(np.ceil(7 * np.log2(0.7 / 0.2)))
    weekly = M.story_truth(d, M.windowed(d, 7), 7, 0.25, margin_days=14, min_expected=10)
    assert weekly.forgotten[0] == 6 and weekly.judged[0]  # day 40 falls in week 5; forgotten from week 6


def test_anchors_flag_a_stop_and_hold_it_until_activity():
    rng = np.random.default_rng(0)
    W = 60
    counts = np.zeros((W, 2, 1), np.float32)
    counts[:, 0, 0] = rng.poisson(3.0, W)  # loyal
    counts[:, 1, 0] = np.where(np.arange(W) < 30, rng.poisson(3.0, W), 0)  # stops at 30
    counts[50, 1, 0] = 4  # and comes back once
    config = Config()
    params = M._changepoint_params(config)
    for scores, threshold in ((M._bocpd_scores(jnp.asarray(counts), params, 32), 0.9),
                              (M._cusum_scores(jnp.asarray(counts), params), 8.0)):
        flags = np.asarray(kernels.sticky_alarms(scores, threshold))[:, :, 0]
        assert not flags[:, 0].any()
        first = int(np.argmax(flags[:, 1]))
        assert 30 < first < 40 and flags[first:50, 1].all() and not flags[50, 1]


def test_the_silence_rule_and_a_cell_fit_in_the_default_budget():
    """The defaults the README and bench/RESULTS.md quote."""
    e = Config().evaluate
    assert e.detection_stories == ["classic", "seasonal", "hawkes", "engaged"] and e.detection_window_days == [1, 7]
    assert e.fade_shares == [0.25, 0.05] and e.matrix_users == 2000
    assert dataclasses.asdict(e)["matrix_margin_days"] == 14
