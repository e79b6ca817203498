"""Forgetting detection scored against synthetic ground truth.

``evaluate_detection`` generates the synthetic log (with its hard cases:
periodic users with long silences, slow fades, abrupt stops, pauses that
come back, noisy bursts, late-starting interests), runs the analysis, reads
back the states it wrote to ``states.parquet`` and scores, per (user,
interest) pair:

- **positives** (``stopped``, ``fading``, ``reactivated``): the interest is
  forgotten from a known window: the first window that starts at or after
  the stop or pause (stopped, reactivated) or after the time its rate falls
  below ``evaluate.fade_forgotten_share`` of the old one (fading). The first alarm
  (``forgotten``) is a true positive when it comes no more than
  ``evaluate.detection_early_windows`` before that window (and, for
  reactivated, no later than the return); its delay is the alarm window
  minus the forgotten window.
- **false positives**: any alarm on a negative (``stable``, ``periodic``,
  ``bursty``), and a first alarm on a positive that is too early (a fade
  called forgotten while its rate is still high) or after a paused interest
  came back.
- Not judged: changes within ``evaluate.detection_margin_windows`` of the
  end, pairs with no event before their change (nothing to detect), and
  changes the log cannot reveal: the interest's former rate predicts fewer
  than ``evaluate.min_expected_events`` events between the forgotten window
  and the end of the log (for a pause, its return) (``revealed``).

Two baselines run beside it on the same windows: a fixed threshold on the
seed's F (per-window indicator, F(u, t) >= theta, charged to the interests
that declined in that window) and "no activity for N windows"; each is
reported at its best F1 over its sweep (tuned on the very data it is scored
on, which favors the baselines). The detector and "no activity" are also
compared at one operating point (``matched_rows``): each at its best knob
among those flagging at most the other's share of loyal pairs. The detector's own precision-recall curve
comes from sweeping ``analysis.detector.false_alarm`` through
``detect_series``, the same kernel in one ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fgjax import kernels
from fgjax.analysis import (
    ForgettingResult,
    WindowParams,
    WindowSpec,
    analyze,
    detector_step,
    state_series,
    verdict_file,
    window_params,
    window_spec,
    write_states,
)
from fgjax.config import Config, to_dict
from fgjax.data.reader import EventLog
from fgjax.data.synthetic import KINDS
from fgjax.errors import DataError

POSITIVE_KINDS = ("stopped", "fading", "reactivated")
NEGATIVE_KINDS = ("stable", "periodic", "bursty")
_DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class Truth:
    """Ground truth per (user, interest) pair, in windows; all ``(pairs,)``.

    Attributes:
      user, interest: dense indices.
      kind: index into ``synthetic.KINDS``.
      start: window the interest starts in.
      onset: window of the change (stop, pause, fade start); -1 if none.
      forgotten: window from which the interest counts as forgotten; -1 if never.
      resume: window a paused interest comes back in; -1 if none.
      judged: the pair is scored (its change, if any, is not too near the end).
    """

    user: np.ndarray
    interest: np.ndarray
    kind: np.ndarray
    start: np.ndarray
    onset: np.ndarray
    forgotten: np.ndarray
    resume: np.ndarray
    judged: np.ndarray

    @property
    def positive(self) -> np.ndarray:
        return self.forgotten >= 0


def fade_forgotten_days(floor: np.ndarray, half_life: np.ndarray, share: float) -> np.ndarray:
    """Days after a fade starts until its rate is below ``share`` of the former rate; inf if never.

    The rate is ``floor + (1 - floor) * 0.5 ** (days / half_life)`` of the former rate
    (``fgjax.data.synthetic.truth_table``), so the fade is *forgotten* (by the definition
    ``evaluate.fade_forgotten_share``) after ``half_life * log2((1 - floor) / (share - floor))``
    days, and never when ``floor >= share``: a fade to a floor above the definition is a reduced
    interest, judged like a loyal one.
    """
    floor, half_life = np.asarray(floor, np.float64), np.asarray(half_life, np.float64)
    below = floor < share
    ratio = (1.0 - floor) / np.where(below, share - floor, 1.0)
    return np.where(below, half_life * np.log2(np.maximum(ratio, 1.0)), np.inf)


def load_truth(path: str | Path, log: EventLog, config: Config, origin: float, num_windows: int) -> Truth:
    """Read ``ground_truth.parquet`` and put it on the analysis windows.

    Pairs whose user has no event left after validation, or whose interest
    never occurs in the log, are dropped (they cannot be detected).
    """
    try:
        table = pq.read_table(str(path))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"ground truth '{path}': {str(exc).splitlines()[0]}") from None
    need = {"user_id", "interest", "kind", "start_time", "change_time", "resume_time"}
    if not need <= set(table.column_names):
        missing = sorted(need - set(table.column_names))
        raise DataError(f"ground truth '{path}': missing column '{missing[0]}' (is it a synthetic ground_truth.parquet?)")
    user = log.users.encode(table["user_id"].combine_chunks())
    interest = log.categories.encode(table["interest"].combine_chunks())
    keep = (user >= 0) & (interest >= 0)
    seconds = lambda name: table[name].cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6  # noqa: E731
    ws = config.analysis.window_seconds

    def window(t: np.ndarray, rounding=np.floor) -> np.ndarray:
        w = rounding((t - origin) / ws)
        return np.where(np.isfinite(w), w, -1).astype(np.int64)

    kind = np.array([KINDS.index(k) for k in table["kind"].to_pylist()])
    change = np.where(table["change_time"].is_valid().to_numpy(zero_copy_only=False), seconds("change_time"), np.nan)
    resume = np.where(table["resume_time"].is_valid().to_numpy(zero_copy_only=False), seconds("resume_time"), np.nan)
    fading = kind == KINDS.index("fading")
    # Older truth files have no fade columns: their fades go to nothing at the configured half-life.
    column = lambda name, default: (  # noqa: E731
        pc.fill_null(table[name], default).to_numpy(zero_copy_only=False).astype(np.float64)
        if name in table.column_names else np.full(table.num_rows, default, np.float64))
    fade_days = fade_forgotten_days(column("fade_floor", 0.0), column("fade_half_life_days",
                                    config.synthetic.fade_half_life_days), config.evaluate.fade_forgotten_share)
    forgotten_time = np.where(fading, change + fade_days * _DAY, change)
    positive = np.isin(kind, [KINDS.index(k) for k in POSITIVE_KINDS]) & np.isfinite(forgotten_time)
    # Forgotten from the first window that starts at or after the forget time:
    # a window that still holds the interest's last events is not forgotten.
    forgotten = np.where(positive, window(forgotten_time, np.ceil), -1)
    last_judged = num_windows - 1 - config.evaluate.detection_margin_windows
    judged = keep & (~positive | ((forgotten >= 0) & (forgotten <= last_judged)))
    sel = keep
    return Truth(
        user=user[sel],
        interest=interest[sel],
        kind=kind[sel],
        start=window(seconds("start_time"))[sel],
        onset=np.where(positive, window(change), -1)[sel],
        forgotten=forgotten[sel],
        resume=np.where(np.isfinite(resume), window(resume), -1)[sel],
        judged=judged[sel],
    )


def revealed(counts: np.ndarray, truth: Truth, min_expected: float) -> np.ndarray:
    """``(pairs,)`` bool: the log can reveal the pair's change (loyal pairs: always).

    A pair with no event before its change has nothing to detect; and a change
    is only judged when the interest's former rate (its events per window from
    its first event to the change) predicts at least ``min_expected`` events
    from the forgotten window to the end of the log (for a pause: to its
    return). A silence shorter than that cannot be told from the interest's
    usual gaps by anyone, the silence rule included.
    """
    num_windows = counts.shape[0]
    series = counts[:, truth.user, truth.interest]  # (windows, pairs)
    active = series > 0
    first = np.where(active.any(axis=0), active.argmax(axis=0), num_windows)
    onset = np.where(truth.onset >= 0, truth.onset, num_windows)
    t = np.arange(num_windows)[:, None]
    before = (t >= first[None, :]) & (t < onset[None, :])
    rate = (series * before).sum(axis=0) / np.maximum(before.sum(axis=0), 1)
    until = np.where(truth.resume >= 0, np.minimum(truth.resume, num_windows), num_windows)
    left = np.maximum(until - np.where(truth.positive, truth.forgotten, until), 0)
    return (first < onset) & (~truth.positive | (rate * left >= min_expected))


def window_counts(log: EventLog, origin: float, window_seconds: float, num_windows: int) -> np.ndarray:
    """``(windows, users, K)`` float32 events per (window, user, interest); events without a category skipped."""
    interest = log.item_category[log.item]
    has = interest >= 0
    win = np.floor((log.timestamp[has] - origin) / window_seconds).astype(np.int64)
    counts = np.zeros((num_windows, log.num_users, len(log.categories)), np.float32)
    np.add.at(counts, (win, log.user[has], interest[has]), 1.0)
    return counts


@functools.partial(jax.jit, static_argnames=("spec",))
def detect_series(counts: jax.Array, params: WindowParams, spec: WindowSpec) -> jax.Array:
    """``(windows, users, K)`` int8 detector states over a whole ``(windows, users, K)`` count series, in one scan.

    The analysis' own detector step (``fgjax.analysis.detector_step``) with its
    ``window_params`` / ``window_spec``; knobs are traced, so a sweep compiles once.
    """
    _, num_users, num_interests = counts.shape

    def step(state, window_counts):
        state, out = detector_step(state, window_counts, None, params, spec)
        return state, out.state

    _, codes = jax.lax.scan(step, kernels.detector_init(num_users, num_interests, spec.buffer_windows), counts)
    return codes


def seed_threshold_alarms(counts: np.ndarray, threshold: float) -> np.ndarray:
    """``(windows, users, K)`` bool: the seed's F on the per-window indicator >= ``threshold``.

    ``I(u, t)`` is the window's counts (no decay, reset each window); the
    alarm goes to the interests whose count fell from the previous window.
    """
    prev = np.concatenate([np.zeros_like(counts[:1]), counts[:-1]])
    degree = np.asarray(kernels.forgetting_degree(jnp.asarray(counts), jnp.asarray(prev)))
    return (degree[..., None] >= threshold) & (counts < prev)


def silence_alarms(counts: np.ndarray, windows: int) -> np.ndarray:
    """``(windows, users, K)`` bool: no activity for ``windows`` windows after some activity."""
    active = counts > 0
    seen = np.cumsum(active, axis=0) > 0
    run = np.zeros(counts.shape[1:], np.int64)
    out = np.zeros(counts.shape, bool)
    for t in range(counts.shape[0]):
        run = np.where(active[t], 0, run + 1)
        out[t] = seen[t] & (run >= windows)
    return out


def first_alarm(alarms: np.ndarray, truth: Truth) -> np.ndarray:
    """``(pairs,)`` first window at or after the pair's start with an alarm; -1 if none."""
    series = alarms[:, truth.user, truth.interest]  # (windows, pairs)
    windows = np.arange(series.shape[0])[:, None]
    series = series & (windows >= truth.start[None, :])
    hit = series.any(axis=0)
    return np.where(hit, series.argmax(axis=0), -1)


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def score(alarm: np.ndarray, truth: Truth, early_windows: int = 1) -> dict[str, Any]:
    """Precision, recall, F1, false-positive rate and delays of first alarms ``(pairs,)``.

    Returns ``{"overall": {...}, "cases": {case: {...}}}``; the cases are the
    kinds plus ``new`` (pairs that start after the first window, any kind).
    """
    judged = truth.judged
    positive = truth.positive
    alarmed = alarm >= 0
    in_time = alarmed & (alarm >= truth.forgotten - early_windows) & ((truth.resume < 0) | (alarm <= truth.resume))
    tp = judged & positive & in_time
    fp = judged & alarmed & (~positive | ~in_time)
    delay = np.where(tp, alarm - truth.forgotten, 0)

    def summary(sel: np.ndarray) -> dict[str, Any]:
        n_tp, n_fp = int(np.sum(tp & sel)), int(np.sum(fp & sel))
        n_pos, n_neg = int(np.sum(judged & positive & sel)), int(np.sum(judged & ~positive & sel))
        precision = _ratio(n_tp, n_tp + n_fp)
        recall = _ratio(n_tp, n_pos)
        f1 = (2 * precision * recall / (precision + recall)) if precision and recall else (0.0 if n_pos else None)
        delays = delay[tp & sel]
        return {
            "pairs": int(np.sum(judged & sel)),
            "positives": n_pos,
            "true_positives": n_tp,
            "false_positives": n_fp,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "false_positive_rate": _ratio(int(np.sum(fp & sel & ~positive)), n_neg),
            "median_delay": float(np.median(delays)) if len(delays) else None,
            "p90_delay": float(np.percentile(delays, 90)) if len(delays) else None,
        }

    cases = {KINDS[k]: summary(truth.kind == k) for k in range(len(KINDS)) if np.any(truth.kind == k)}
    cases["new"] = summary(truth.start > 0)
    return {"overall": summary(np.ones_like(judged)), "cases": cases}


def reactivation_summary(codes: np.ndarray, truth: Truth, alarm: np.ndarray) -> dict[str, Any]:
    """For paused interests that were flagged and came back: windows until ``reactivated``."""
    sel = np.nonzero((truth.kind == KINDS.index("reactivated")) & (alarm >= 0) & (truth.resume >= 0)
                     & (truth.resume < codes.shape[0]))[0]
    delays = []
    for pair in sel:
        series = codes[truth.resume[pair]:, truth.user[pair], truth.interest[pair]]
        hit = np.nonzero(series == kernels.REACTIVATED)[0]
        delays.append(int(hit[0]) if len(hit) else None)
    found = [d for d in delays if d is not None]
    return {
        "pairs": len(sel),
        "reactivated": len(found),
        "recall": _ratio(len(found), len(sel)),
        "median_delay": float(np.median(found)) if found else None,
    }


def new_interest_summary(codes: np.ndarray, truth: Truth) -> dict[str, Any]:
    """For late-starting interests: is the first state they get ``new``?"""
    sel = np.nonzero(truth.start > 0)[0]
    first = []
    for pair in sel:
        series = codes[truth.start[pair]:, truth.user[pair], truth.interest[pair]]
        seen = np.nonzero(series != kernels.NONE)[0]
        if len(seen):
            first.append(series[seen[0]])
    first = np.asarray(first)
    return {"pairs": len(sel), "appeared": len(first), "first_state_new": _ratio(int(np.sum(first == kernels.NEW)), len(first))}


def loyal_false_positive_rate(scored: dict[str, Any]) -> float | None:
    """The share of judged loyal pairs (``NEGATIVE_KINDS``, pooled) with an alarm, from ``score``'s cases."""
    loyal = [scored["cases"][kind] for kind in NEGATIVE_KINDS if kind in scored["cases"]]
    return _ratio(sum(c["false_positives"] for c in loyal), sum(c["pairs"] - c["positives"] for c in loyal))


def _curve(knobs: list[float], alarms_for: Callable[[float], np.ndarray], truth: Truth,
           early_windows: int) -> list[dict[str, Any]]:
    points = []
    for knob in knobs:
        scored = score(first_alarm(alarms_for(knob), truth), truth, early_windows)
        overall, periodic = scored["overall"], scored["cases"].get("periodic", {})
        points.append({"knob": knob, **{k: overall[k] for k in ("precision", "recall", "f1", "median_delay")},
                       "periodic_false_positive_rate": periodic.get("false_positive_rate"),
                       "loyal_false_positive_rate": loyal_false_positive_rate(scored)})
    return points


def best_index(points: list[dict[str, Any]], cap: float | None = None,
               loyal: str = "loyal_false_positive_rate") -> int | None:
    """Index of the best-F1 point; with ``cap``, among those whose share of loyal pairs flagged (``loyal``)
    is at most ``cap`` (None when none is)."""
    allowed = [i for i, p in enumerate(points) if cap is None or (p[loyal] is not None and p[loyal] <= cap)]
    return max(allowed, key=lambda i: points[i]["f1"] or 0.0) if allowed else None


def _best(points: list[dict[str, Any]]) -> dict[str, Any]:
    return points[best_index(points)]


@dataclasses.dataclass(frozen=True)
class DetectionReport:
    """What ``evaluate_detection`` measured (also written as ``detection.json``)."""

    detector: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]]
    reactivation: dict[str, Any]
    new_interests: dict[str, Any]
    setup: dict[str, Any]
    # Each of the detector and the silence rule at the other's loyal false-positive rate (``matched_rows``).
    matched: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate_detection_on(
    config: Config, log: EventLog, truth_path: str | Path, out: Path, *, progress: bool = True
) -> tuple[DetectionReport, ForgettingResult, np.ndarray, Truth]:
    """Score detection on a log whose ground truth is at ``truth_path``; writes ``out/states.parquet``."""
    acfg, ecfg = config.analysis, config.evaluate
    result = analyze(config, log, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_states(result, log, out / "states.parquet")
    # Score what the user audits: the states as states.parquet records them.
    table = pq.read_table(str(out / "states.parquet"), columns=["user_id", "interest", "window", "state"])
    codes = _codes_from_table(table, log, result.num_windows)
    origin = float(result.window_start[0])
    truth = load_truth(truth_path, log, config, origin, result.num_windows)
    counts = window_counts(log, origin, acfg.window_seconds, result.num_windows)
    truth = dataclasses.replace(truth, judged=truth.judged & revealed(counts, truth, ecfg.min_expected_events))
    early = ecfg.detection_early_windows

    detector_alarm = first_alarm(codes == kernels.FORGOTTEN, truth)
    detector = score(detector_alarm, truth, early)
    seed_curve = _curve(ecfg.seed_threshold_sweep, lambda th: seed_threshold_alarms(counts, th), truth, early)
    silence_curve = _curve([float(n) for n in ecfg.silence_sweep], lambda n: silence_alarms(counts, int(n)), truth,
                           early)
    device_counts = jnp.asarray(counts)
    params, spec = window_params(acfg, counts.shape[0]), window_spec(acfg, len(log.categories))

    @functools.cache  # the matched row scores a knob of the sweep again: one scan per knob
    def sweep_alarms(q: float) -> np.ndarray:
        knobs = params._replace(detector=params.detector._replace(false_alarm=jnp.asarray(q, jnp.float32)))
        return np.asarray(detect_series(device_counts, knobs, spec)) == kernels.FORGOTTEN

    detector_curve = _curve(ecfg.false_alarm_sweep, sweep_alarms, truth, early)
    best_seed = _best(seed_curve)
    best_silence = _best(silence_curve)
    baselines = {
        "seed_F_threshold": {"knob": best_seed["knob"], **score(
            first_alarm(seed_threshold_alarms(counts, best_seed["knob"]), truth), truth, early)},
    }
    silence_alarm = first_alarm(silence_alarms(counts, int(best_silence["knob"])), truth)
    baselines["no_activity_windows"] = {"knob": best_silence["knob"], **score(silence_alarm, truth, early)}
    matched = matched_rows(detector, baselines["no_activity_windows"], detector_curve, silence_curve,
                           lambda q: score(first_alarm(sweep_alarms(q), truth), truth, early),
                           lambda n: score(first_alarm(silence_alarms(counts, int(n)), truth), truth, early))
    setup = {
        "windows": result.num_windows,
        "window_seconds": acfg.window_seconds,
        "users": log.num_users,
        "interests": len(log.categories),
        "events": int(len(log.user)),
        "pairs_judged": int(truth.judged.sum()),
        "pairs_not_judged": int((~truth.judged).sum()),
        "fade_forgotten_share": ecfg.fade_forgotten_share,
        "early_windows": early,
        # The learned verdict that decided the states ("" = the detector's own): the sweeps and the matched row
        # are the detector's alone.
        "verdict": acfg.detector.verdict_file if verdict_file(acfg) else "",
    }
    report = DetectionReport(
        detector={"knob": acfg.detector.false_alarm, **detector},
        baselines=baselines,
        curves={"detector": detector_curve, "seed_F_threshold": seed_curve, "no_activity_windows": silence_curve},
        reactivation=reactivation_summary(codes, truth, detector_alarm),
        new_interests=new_interest_summary(codes, truth),
        setup=setup,
        matched=matched,
    )
    return report, result, codes, truth


def matched_rows(detector: dict[str, Any], rule: dict[str, Any], detector_curve: list[dict[str, Any]],
                 rule_curve: list[dict[str, Any]], score_detector: Callable[[float], dict[str, Any]],
                 score_rule: Callable[[float], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The silence rule at the detector's loyal false-positive rate, and the detector at the rule's.

    ``detector`` / ``rule``: ``score`` of each at its own knob (the detector's default, the rule's best N);
    each curve holds its method's sweep. Each entry is the other method's best-F1 knob among those flagging
    at most the same share of judged loyal pairs, scored; absent when no knob of the sweep flags so few.
    """
    out = {}
    for name, curve, cap, scorer in (
        ("no_activity_windows_at_fgjax_rate", rule_curve, loyal_false_positive_rate(detector), score_rule),
        ("fgjax_at_no_activity_rate", detector_curve, loyal_false_positive_rate(rule), score_detector),
    ):
        best = best_index(curve, cap) if cap is not None else None
        if best is not None:
            out[name] = {"knob": curve[best]["knob"], "loyal_cap": cap, **scorer(curve[best]["knob"])}
    return out


def _codes_from_table(table: pa.Table, log: EventLog, num_windows: int) -> np.ndarray:
    """``(windows, users, K)`` int8 codes from the rows of ``states.parquet``."""
    user = log.users.encode(table["user_id"].combine_chunks())
    interest = log.categories.encode(table["interest"].combine_chunks())
    names = table["state"].to_pylist()
    state = np.array([kernels.STATE_NAMES.index(n) for n in names], np.int8)
    changes = {"user": user, "interest": interest, "window": table["window"].to_numpy(), "state": state}
    return state_series(changes, num_windows, log.num_users, len(log.categories))


def format_report(report: DetectionReport) -> str:
    """A Markdown table of the detector and both baselines, overall and per case."""
    verdict = report.setup.get("verdict")
    headline = f"fgjax adaptive + learned verdict ({verdict})" if verdict else "fgjax adaptive"
    rows = [(headline, report.detector)] + [
        (f"{name} (best knob {b['knob']:g})", b) for name, b in report.baselines.items()
    ]
    alone = "fgjax adaptive, the detector alone," if verdict else "fgjax adaptive"
    matched_names = {"no_activity_windows_at_fgjax_rate": "no_activity_windows at fgjax's loyal FPR (N={:g})",
                     "fgjax_at_no_activity_rate": alone + " at no_activity's loyal FPR (false_alarm {:g})"}
    rows += [(matched_names[name].format(m["knob"]), m) for name, m in report.matched.items()]
    fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "| detector | precision | recall | F1 | median delay | FPR periodic | FPR stable | FPR bursty |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows:
        o, c = r["overall"], r["cases"]
        fpr = lambda kind: fmt(c.get(kind, {}).get("false_positive_rate"))  # noqa: E731
        lines.append(
            f"| {name} | {fmt(o['precision'])} | {fmt(o['recall'])} | {fmt(o['f1'])} | {fmt(o['median_delay'], '.1f')} "
            f"| {fpr('periodic')} | {fpr('stable')} | {fpr('bursty')} |"
        )
    lines += ["", f"| case ({headline}) | pairs | recall | precision | F1 | median delay | p90 delay | FPR |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case, c in report.detector["cases"].items():
        lines.append(
            f"| {case} | {c['pairs']} | {fmt(c['recall'])} | {fmt(c['precision'])} | {fmt(c['f1'])} "
            f"| {fmt(c['median_delay'], '.1f')} | {fmt(c['p90_delay'], '.1f')} | {fmt(c['false_positive_rate'])} |"
        )
    return "\n".join(lines)


def write_report(report: DetectionReport, config: Config, out: Path) -> Path:
    path = out / "detection.json"
    path.write_text(json.dumps({"report": report.to_json(), "config": to_dict(config)}, indent=2) + "\n")
    (out / "detection.md").write_text(format_report(report) + "\n")
    return path
