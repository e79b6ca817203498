"""A learned verdict fitted on a log's own silences: ``fgjax fit-verdict``.

The shipped verdict (``fgjax/analysis/verdict_builtin.json``) was fitted on synthetic stories whose ground truth
says which interests were forgotten. A real log has no such truth, and its silences need not mean what the
stories' do: on MovieLens a busy genre's silence is *less* often long than a minor genre's, and the shipped fit
ranks its silences worse than chance (``python -m bench.silences``, bench/RESULTS.md). But a log can answer by
itself what "forgotten" means operationally: of the silences of an interest, which lasted long enough while the
user was still seen afterwards ("gone"), and which ended sooner ("back")? Long enough is ``horizon`` windows, or, by
default (``log_verdict.rate_surprise``; ``rate_needs``), as long as the interest at its own rate would show fewer
than that many times in its life, at most the horizon. Silences neither back in time nor followed by the user are
undecided and left out, and so are those that start too near the log's end to be gone (they could only be back).

This module fits the verdict (the same ``kernels.verdict_features`` and logistic model, so ``fgjax analyze`` reads
it like the shipped one) on those outcomes. Each silence lends a row per window of its life up to the horizon
(ages 1 .. min(length, horizon)), labelled with its outcome; each silence weighs 1 in all. The log-odds threshold is
the lowest at which the silences' first alarms (the first age whose log-odds exceed it) are gone at least
``log_verdict.precision`` of the time and at most ``log_verdict.loyal_budget`` of the pairs the log shows loyal
(every silence back) are ever flagged.

It reports on itself beside the rule a user would write: fitted and thresholded on the silences that start before
the last ``holdout`` share of the windows where a silence can start and still be decided, scored on those that start
in it, against "forgotten after N silent windows" at the least N as precise on the same earlier silences, and the
shipped fit. The fit it writes for use is fitted on every decided silence.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fgjax import kernels
from fgjax.analysis import WindowParams, WindowSpec, detector_step, window_params, window_spec
from fgjax.analysis.verdict import AUTO, VerdictFit, load_verdict, verdict_path
from fgjax.config import Config
from fgjax.data.reader import EventLog
from fgjax.errors import DataError
from fgjax.evaluation.verdict import fit_verdict

# Features of at most this many bytes are written per chunk of windows (the scan's output, gathered on the host).
_CHUNK_BYTES = 256 << 20


class Silences(NamedTuple):
    """Silences of (user, interest) pairs, ``(n,)`` arrays, in (pair, start) order."""

    user: np.ndarray
    interest: np.ndarray
    start: np.ndarray  # first silent window
    length: np.ndarray  # silent windows until the interest's next event (or the log's end)
    returned: np.ndarray  # bool: the interest had an event after it


def silences(counts: np.ndarray, min_events: float, age: int = 1) -> Silences:
    """Every silence of ``(windows, users, interests)`` counts that lasted ``age`` windows or more.

    A silence starts in the window after an active one, once the interest has ``min_events`` events in all
    (counted to that active window), and runs to its next active window (or the end).
    """
    windows = counts.shape[0]
    flat = counts.reshape(windows, -1).T  # (pairs, windows)
    pair, t = np.nonzero(flat > 0)  # active windows, by pair then time
    following = np.append(t[1:], windows)
    following[np.append(pair[1:] != pair[:-1], True)] = windows  # a pair's last active window: to the end
    length = following - t - 1
    seen = np.cumsum(flat, axis=1)[pair, t]
    keep = (length >= age) & (seen >= min_events)
    pair, num_interests = pair[keep], counts.shape[2]
    return Silences(pair // num_interests, pair % num_interests, t[keep] + 1, length[keep], following[keep] < windows)


def user_last_windows(counts: np.ndarray) -> np.ndarray:
    """``(users,)`` each user's last window with an event in any interest (-1 for none)."""
    active = (counts > 0).any(axis=2)
    return np.where(active.any(axis=0), counts.shape[0] - 1 - active[::-1].argmax(axis=0), -1)


def outcomes(found: Silences, user_last_window: np.ndarray, need: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gone, decided)``: gone = silent for ``need`` windows from its start (an int, or ``(n,)`` per silence) and
    the user seen after that; decided = gone, or back within ``need``."""
    gone = (found.length >= need) & (user_last_window[found.user] >= found.start + need)
    back = found.returned & (found.length < need)
    return gone, gone | back


def rate_needs(counts: np.ndarray, found: Silences, horizon: int, surprise: float,
               user_last_window: np.ndarray | None = None) -> np.ndarray:
    """``(n,)`` the silent windows each silence needs to count as gone: the fewest that the interest, still as
    active as its history says, would show less than ``surprise`` times in its life in the log, the ``L`` windows
    from its first active window to its user's last (``user_last_window``, ``(users,)``; ``user_last_windows``).

    Its share of active windows is uncertain after a short history, so the chance of ``n`` silent windows is the
    posterior predictive under a uniform prior: with ``a - 1`` active and ``b - 1`` silent windows from its first
    active window to the silence, ``P(n) = B(a, b + n) / B(a, b)``, and the need is the least ``n`` with
    ``L a / (a + b) P(n) < surprise`` (each of its ``L q`` active windows begins such a silence). A budget over the
    interest's life, not per silence: a busy interest's many short gaps do not teach that it is gone, nor does a new
    one's first. At least 2 and at most ``horizon`` windows; ``surprise`` 0: the horizon for every silence."""
    if surprise <= 0 or not len(found.start):
        return np.full(len(found.start), horizon, np.int64)
    windows, _, interests = counts.shape
    pair, t = np.nonzero(counts.reshape(windows, -1).T > 0)  # active windows, by pair then time (as in silences)
    opens = np.flatnonzero(np.append(True, pair[1:] != pair[:-1]))  # each pair's first active entry
    head = np.repeat(opens, np.diff(np.append(opens, len(pair))))
    # Each silence's active window before it, found by its (pair, window) key among the sorted active entries.
    entry = np.searchsorted(pair * windows + t, (found.user * interests + found.interest) * windows + found.start - 1)
    active = (entry - head[entry] + 1).astype(np.float64)
    silent = found.start - t[head[entry]] - active
    a, b = active + 1.0, silent + 1.0
    if user_last_window is None:
        user_last_window = user_last_windows(counts)
    life = np.maximum(user_last_window[found.user] - t[head[entry]] + 1, 1)
    budget = np.log(surprise) - np.log(life * a / (a + b))
    need = np.full(len(a), horizon, np.int64)
    log_p = np.zeros(len(a))  # log P(n) for n = 0, 1, ...: each step multiplies by (b + n) / (a + b + n)
    for n in range(1, horizon):
        log_p += np.log((b + n - 1) / (a + b + n - 1))
        need = np.where((need == horizon) & (n >= 2) & (log_p < budget), n, need)
    return need


class SilenceRows(NamedTuple):
    """The decided silences of a log and their rows (one per window of a silence's life up to the horizon).

    Attributes:
      found: the decided silences, ``(n,)`` each.
      gone: ``(n,)`` bool outcome.
      silence: ``(rows,)`` index into ``found`` of each row, grouped by silence, ages increasing.
      age: ``(rows,)`` windows of silence at the row (1 = the first silent window).
      features: ``(rows, len(kernels.VERDICT_FEATURES))`` float32 evidence at the row.
    """

    found: Silences
    gone: np.ndarray
    silence: np.ndarray
    age: np.ndarray
    features: np.ndarray


@functools.partial(jax.jit, static_argnames=("spec", "recent_windows"), donate_argnums=(0,))
def _evidence_chunk(state: kernels.DetectorState, counts: jax.Array, params: WindowParams, spec: WindowSpec,
                    recent_windows: int) -> tuple[kernels.DetectorState, jax.Array]:
    """The detector over ``(chunk, users, K)`` counts from ``state``: the state after them and each window's
    ``(chunk, users, K, F)`` verdict features."""
    def step(state, window_counts):
        state, out = detector_step(state, window_counts, None, params, spec)
        return state, kernels.verdict_features(state, out, recent_windows)

    return jax.lax.scan(step, state, counts)


def silence_rows(config: Config, counts: np.ndarray, horizon: int) -> SilenceRows:
    """The decided silences of ``(windows, users, K)`` counts and their rows' evidence under ``config.analysis``'s
    detector (its own verdict: the features are the detector's evidence, whatever verdict file it names)."""
    c = config.log_verdict
    found = silences(counts, c.min_events)
    last = user_last_windows(counts)
    need = rate_needs(counts, found, horizon, c.rate_surprise, last)
    gone, decided = outcomes(found, last, need)
    # Only silences that had room to be gone before the log's end: one starting later can only be back, and would
    # teach the fit that the log's last windows (long histories) mean a return.
    decided &= found.start + need <= counts.shape[0] - 1
    found = Silences(*(a[decided] for a in found))
    gone = gone[decided]
    reach = np.minimum(found.length, horizon)
    silence = np.repeat(np.arange(len(reach)), reach)
    age = np.arange(len(silence)) - np.repeat(np.cumsum(reach) - reach, reach) + 1
    row_window = found.start[silence] + age - 1

    acfg = dataclasses.replace(config.analysis, detector=dataclasses.replace(config.analysis.detector,
                                                                               verdict_file=""))
    windows, users, interests = counts.shape
    params, spec = window_params(acfg, windows), window_spec(acfg, interests)
    recent = config.analysis.detector.verdict_recent_windows
    per_window = users * interests * len(kernels.VERDICT_FEATURES) * 4
    chunk = int(np.clip(_CHUNK_BYTES // max(per_window, 1), 1, windows))
    features = np.zeros((len(silence), len(kernels.VERDICT_FEATURES)), np.float32)
    order = np.argsort(row_window, kind="stable")
    bounds = np.searchsorted(row_window[order], np.arange(0, windows + chunk, chunk))
    state = kernels.detector_init(users, interests, spec.buffer_windows)
    for i, begin in enumerate(range(0, windows, chunk)):
        block = np.zeros((chunk, users, interests), np.float32)  # the last chunk padded: one compile
        block[:min(chunk, windows - begin)] = counts[begin:begin + chunk]
        state, evidence = _evidence_chunk(state, jnp.asarray(block), params, spec, recent)
        rows = order[bounds[i]:bounds[i + 1]]
        if len(rows):
            at = (row_window[rows] - begin, found.user[silence[rows]], found.interest[silence[rows]])
            features[rows] = np.asarray(evidence[at])  # gathered where it lies: only the rows cross to the host
    return SilenceRows(found, gone, silence, age, features)


def first_alarms(rows: SilenceRows, log_odds: np.ndarray, threshold: float, horizon: int | None) -> np.ndarray:
    """``(n,)`` each silence's first alarm under the verdict as ``fgjax analyze`` applies it: the first age whose
    log-odds exceed ``threshold``, else ``horizon`` where the silence lasted that long (-1: no alarm by then; a
    ``horizon`` of None: no alarm but the log-odds', as for a fit on synthetic stories)."""
    above = np.nonzero(log_odds > threshold)[0]
    first = np.full(len(rows.gone), -1, np.int64)
    if horizon is not None:
        first[rows.found.length >= horizon] = horizon
    hit, at = np.unique(rows.silence[above], return_index=True)  # rows are grouped by silence, ages increasing
    first[hit] = rows.age[above[at]]
    return first


def rule_alarms(found: Silences, windows: int) -> np.ndarray:
    """``(n,)`` "forgotten after ``windows`` silent windows": the age of the alarm, -1 where the silence ended first."""
    return np.where(found.length >= windows, windows, -1)


def alarm_scores(first: np.ndarray, gone: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of first alarms (-1 = none) against the outcomes, and the alarms' median age on the
    gone silences (their delay from the silence's start; None without one)."""
    flagged = first > 0
    hits = int(np.count_nonzero(flagged & gone))
    precision = hits / max(int(flagged.sum()), 1) if flagged.any() else None
    recall = hits / int(gone.sum()) if gone.any() else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
    return {"silences": int(len(gone)), "gone": int(gone.sum()), "flagged": int(flagged.sum()),
            "precision": precision, "recall": recall, "f1": f1,
            "median_delay": float(np.median(first[flagged & gone])) if hits else None}


def _silence_peaks(rows: SilenceRows, log_odds: np.ndarray) -> np.ndarray:
    """``(n,)`` each silence's highest log-odds over its rows: it is flagged iff a threshold is below it."""
    peak = np.full(len(rows.gone), -np.inf)
    np.maximum.at(peak, rows.silence, log_odds)
    return peak


def precise_threshold(rows: SilenceRows, log_odds: np.ndarray, precision: float, horizon: int) -> float:
    """The lowest log-odds threshold at which ``first_alarms`` on ``rows``' silences (to ``horizon``) are gone at
    least ``precision`` of the time; above every silence the threshold decides (only the horizon alarms) when none is.

    A silence is flagged at the horizon when it lasted that long (gone, then), and otherwise iff its highest
    log-odds exceed the threshold: the candidates are cuts between those silences' distinct highest log-odds, one
    sort. (Under the fixed horizon every gone silence is flagged there, and only back silences are decided by it.)
    """
    peak = _silence_peaks(rows, log_odds)
    at_horizon = rows.gone & (rows.found.length >= horizon)
    free = ~at_horizon & np.isfinite(peak)
    values = np.unique(peak[free])[::-1]  # distinct, highest first
    top = float(np.max(peak, initial=0.0))
    if not len(values):
        return float(np.nextafter(np.float32(top), np.float32(np.inf)))
    # (k,) silences flagged when the cut flags every free one whose peak is at least values[k]: gone and in all.
    gone_peaks, back_peaks = np.sort(peak[free & rows.gone]), np.sort(peak[free & ~rows.gone])
    gone = int(at_horizon.sum()) + len(gone_peaks) - np.searchsorted(gone_peaks, values)
    flagged = gone + len(back_peaks) - np.searchsorted(back_peaks, values)
    ok = np.flatnonzero(gone >= precision * flagged - 1e-9)
    if not len(ok):
        return float(np.nextafter(np.float32(values[0]), np.float32(np.inf)))
    k = int(ok[-1])
    if k == len(values) - 1:  # every free silence flagged: just below the lowest
        return float(np.float32(values[-1] - 1.0))
    # A float32 value, as the analysis compares it with float32 log-odds: the same silences flagged here and there.
    return float(np.float32((float(values[k]) + float(values[k + 1])) / 2))


def _pairs(found: Silences) -> np.ndarray:
    """``(n,)`` each silence's (user, interest) pair, numbered 0 .. pairs - 1."""
    key = found.user.astype(np.int64) * (int(found.interest.max(initial=0)) + 1) + found.interest
    return np.unique(key, return_inverse=True)[1].reshape(-1)


def _loyal_pair_peaks(rows: SilenceRows, silence_score: np.ndarray) -> np.ndarray:
    """The highest ``silence_score`` (``(n,)``) of each pair the log shows loyal (every decided silence back)."""
    pair = _pairs(rows.found)
    pairs = int(pair.max(initial=-1)) + 1
    any_gone = np.zeros(pairs, bool)
    np.logical_or.at(any_gone, pair, rows.gone)
    best = np.full(pairs, -np.inf)
    np.maximum.at(best, pair, silence_score)
    return best[~any_gone]


def loyal_threshold(rows: SilenceRows, log_odds: np.ndarray, budget: float) -> float:
    """The lowest log-odds threshold at which at most ``budget`` of the pairs the log shows loyal (every decided
    silence back) are ever flagged: a false-alarm budget over an interest's life, not per silence."""
    ranked = np.sort(_loyal_pair_peaks(rows, _silence_peaks(rows, log_odds)))[::-1]  # highest first
    ranked = ranked[np.isfinite(ranked)]
    allowed = int(np.floor(budget * len(ranked) + 1e-9))
    if not len(ranked):
        return -np.inf
    if allowed >= len(ranked):
        return float(np.float32(ranked[-1] - 1.0))
    k = allowed  # flag the `allowed` highest pairs, none tied with the next
    while k > 0 and ranked[k - 1] == ranked[k]:
        k -= 1
    if k == 0:
        return float(np.nextafter(np.float32(ranked[0]), np.float32(np.inf)))
    return float(np.float32((float(ranked[k - 1]) + float(ranked[k])) / 2))


def loyal_flagged(rows: SilenceRows, first: np.ndarray) -> float | None:
    """The share of the pairs the log shows loyal (every decided silence back) with a first alarm (``(n,)``, -1 for
    none) on any of their silences; None without such a pair."""
    flagged = _loyal_pair_peaks(rows, (first > 0).astype(np.float64))
    return float(flagged.mean()) if len(flagged) else None


def least_precise_rule(found: Silences, gone: np.ndarray, precision: float, horizon: int) -> int:
    """The least N whose "N silent windows" alarms are gone at least ``precision`` of the time (``horizon`` at most:
    there every alarm is on a gone silence)."""
    for windows in range(1, horizon):
        scored = alarm_scores(rule_alarms(found, windows), gone)
        if scored["precision"] is not None and scored["precision"] >= precision:
            return windows
    return horizon


def _subset(rows: SilenceRows, keep: np.ndarray) -> SilenceRows:
    """The silences where ``keep`` (``(n,)`` bool) and their rows, renumbered."""
    index = np.cumsum(keep) - 1
    take = keep[rows.silence]
    return SilenceRows(Silences(*(a[keep] for a in rows.found)), rows.gone[keep], index[rows.silence[take]],
                       rows.age[take], rows.features[take])


def _fit(config: Config, rows: SilenceRows, horizon: int) -> tuple[kernels.VerdictParams, float]:
    e = config.evaluate
    reach = np.bincount(rows.silence, minlength=len(rows.gone))
    weights = (1.0 / reach[rows.silence]).astype(np.float32)  # each silence weighs 1
    params = fit_verdict(rows.features, rows.gone[rows.silence].astype(np.float32), weights,
                         e.verdict_newton_steps, e.verdict_ridge)
    log_odds = np.asarray(kernels.verdict_logit(rows.features, params))
    threshold = precise_threshold(rows, log_odds, config.log_verdict.precision, horizon)
    if config.log_verdict.loyal_budget > 0:
        threshold = max(threshold, loyal_threshold(rows, log_odds, config.log_verdict.loyal_budget))
    return params, threshold


def _shipped_fit(config: Config, log_windows: int) -> VerdictFit | None:
    """The shipped verdict's fit that ``fgjax analyze`` reads for this window length and span by default
    (``verdict_file: auto``), or None where it reads none."""
    d = config.analysis.detector
    path = verdict_path(AUTO, config.analysis.window_seconds / 86400.0, d.fade_share, d.verdict_recent_windows)
    if not path or d.kind != "adaptive":
        return None
    return load_verdict(path, config.analysis.window_seconds / 86400.0, d.fade_share, d.verdict_recent_windows,
                        log_windows)


def roc_auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative) + half the ties (Mann-Whitney U over both counts); None
    without both."""
    from scipy import stats  # a dependency of jax

    score, label = np.asarray(score, np.float64), np.asarray(label, bool)
    if label.all() or not label.any():
        return None
    u = stats.mannwhitneyu(score[label], score[~label], alternative="two-sided").statistic
    return float(u / (label.sum() * (~label).sum()))


def _row_auc(rows: SilenceRows, log_odds: np.ndarray, age: int) -> float | None:
    """ROC AUC of the log-odds for gone against back, over the silences that reached ``age``."""
    at = rows.age == age
    return roc_auc(log_odds[at], rows.gone[rows.silence[at]])


@dataclasses.dataclass(frozen=True)
class LogVerdict:
    """``fit_log_verdict``'s result: the fit on every decided silence, and its held-out report."""

    fit: VerdictFit
    report: dict[str, Any]


def log_counts(config: Config, log: EventLog) -> np.ndarray:
    """``(windows, users, K)`` event counts of ``log`` in ``analysis.window_seconds`` windows from the analysis'
    origin (the log's first window; events without a category skipped), for ``log_verdict.max_users`` users at most
    (drawn with ``log_verdict.seed``; the others' events are not read, and the detector's population calibration
    reads the users drawn). 4 bytes per (window, user, interest)."""
    if log.categories is None or len(log.categories) == 0:
        raise DataError("fgjax fit-verdict needs item categories (the interests): set data.items_path to an items "
                        "table")
    ws = config.analysis.window_seconds
    origin = float(np.floor(log.timestamp.min() / ws) * ws)
    windows = int(np.floor((log.timestamp.max() - origin) / ws)) + 1
    c = config.log_verdict
    row = np.arange(log.num_users)
    if log.num_users > c.max_users:
        drawn = np.sort(np.random.default_rng(c.seed).choice(log.num_users, c.max_users, replace=False))
        row = np.full(log.num_users, -1)
        row[drawn] = np.arange(c.max_users)
    interest = log.item_category[log.item]
    keep = (interest >= 0) & (row[log.user] >= 0)
    window = np.floor((log.timestamp[keep] - origin) / ws).astype(np.int64)
    counts = np.zeros((windows, min(log.num_users, c.max_users), len(log.categories)), np.float32)
    np.add.at(counts, (window, row[log.user[keep]], interest[keep]), 1.0)
    return counts


def fit_log_verdict(config: Config, counts: np.ndarray) -> LogVerdict:
    """Fit the verdict on the decided silences of ``(windows, users, K)`` counts (``log_counts``) and score it
    held out (the module docstring).

    Raises ``DataError`` (one line) when the horizon does not fit in the log or too few silences are decided.
    """
    c = config.log_verdict
    window_days = config.analysis.window_seconds / 86400.0
    horizon = int(round(c.horizon_days / window_days))
    windows = counts.shape[0]
    if horizon < 2:
        raise DataError(f"log_verdict.horizon_days {c.horizon_days:g} is under two windows of {window_days:g} days: "
                        "a silence must be able to end before it")
    if horizon >= windows:
        raise DataError(f"log_verdict.horizon_days {c.horizon_days:g} is {horizon} windows of {window_days:g} days, "
                        f"and the log spans {windows}: no silence can be decided gone")
    rows = silence_rows(config, counts, horizon)
    gone = rows.gone
    if gone.sum() < c.min_silences or (~gone).sum() < c.min_silences:
        means = _gone_means(horizon, c.rate_surprise)
        raise DataError(f"the log has {int(gone.sum()):,} silences gone (silent {means}) and "
                        f"{int((~gone).sum()):,} back sooner; fitting a verdict needs {c.min_silences} of each "
                        "(log_verdict.min_silences): a longer log, a shorter log_verdict.horizon_days or a lower "
                        "log_verdict.min_events")
    report: dict[str, Any] = {"windows": windows, "window_days": window_days, "horizon_windows": horizon,
                              "rate_surprise": c.rate_surprise, "loyal_budget": c.loyal_budget,
                              "precision_target": c.precision, "users": int(counts.shape[1]),
                              "interests": int(counts.shape[2]), "silences": int(len(gone)), "gone": int(gone.sum()),
                              "held_out": None}
    # Split the silences by their start (every one had room to be gone): fitted on the earlier, scored on the later.
    shortest = 2 if c.rate_surprise > 0 else horizon  # the least silence that can be gone
    cut = int(round((windows - shortest) * (1.0 - c.holdout)))
    earlier, later = rows.found.start < cut, rows.found.start >= cut
    enough = min(gone[earlier].sum(), (~gone[earlier]).sum()) >= c.min_silences and gone[later].any()
    if c.holdout > 0 and enough:
        train, test = _subset(rows, earlier), _subset(rows, later)
        params, threshold = _fit(config, train, horizon)
        log_odds = np.asarray(kernels.verdict_logit(test.features, params))
        windows_n = least_precise_rule(train.found, train.gone, c.precision, horizon)
        ages = sorted({1, max(horizon // 4, 1), max(horizon // 2, 1)})
        report["held_out"] = {
            "cut_window": cut, "fitted_on": int(len(train.gone)), "scored_on": int(len(test.gone)),
            "scored_gone": int(test.gone.sum()), "threshold": threshold,
            "verdict": alarm_scores(first_alarms(test, log_odds, threshold, horizon), test.gone),
            "verdict_loyal_flagged": loyal_flagged(test, first_alarms(test, log_odds, threshold, horizon)),
            "rule_windows": windows_n, "rule": alarm_scores(rule_alarms(test.found, windows_n), test.gone),
            "rule_loyal_flagged": loyal_flagged(test, rule_alarms(test.found, windows_n)),
            "auc_at_age": {str(a): _row_auc(test, log_odds, a) for a in ages},
            "shipped": None,
        }
        shipped = _shipped_fit(config, windows)
        if shipped is not None:  # what fgjax analyze decides without this fit (verdict_file: auto), to the horizon
            shipped_odds = np.asarray(kernels.verdict_logit(test.features, shipped.params))
            report["held_out"]["shipped"] = {
                "threshold": shipped.threshold,
                "scores": alarm_scores(first_alarms(test, shipped_odds, shipped.threshold, None), test.gone),
                "loyal_flagged": loyal_flagged(test, first_alarms(test, shipped_odds, shipped.threshold, None)),
                "auc_at_age": {str(a): _row_auc(test, shipped_odds, a) for a in ages},
            }
    params, threshold = _fit(config, rows, horizon)
    report["threshold"] = threshold
    fit = VerdictFit(window_days=window_days, fade_share=config.analysis.detector.fade_share,
                     recent_windows=config.analysis.detector.verdict_recent_windows, params=params,
                     threshold=threshold, stories=("the log's own silences",), log_windows=windows,
                     horizon_windows=horizon, precision=c.precision,
                     rate_surprise=c.rate_surprise if c.rate_surprise > 0 else None)
    return LogVerdict(fit, report)


def _gone_means(horizon: int, surprise: float) -> str:
    """What "gone" means under the fit's label, in words."""
    if surprise <= 0:
        return f"{horizon} windows"
    return (f"until the interest, as active as its history says, would show such a silence under {surprise:g} times "
            f"in its life, 2 to {horizon} windows")


def format_report(result: LogVerdict) -> str:
    """``fit_log_verdict``'s report as Markdown."""
    r = result.report
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"Silences of interests in {r['window_days']:g}-day windows ({r['windows']} windows, {r['users']:,} users, "
             f"{r['interests']} interests): {r['silences']:,} decided, {r['gone']:,} gone (silent "
             f"{_gone_means(r['horizon_windows'], r.get('rate_surprise', 0.0))} while the user was seen after). "
             f"Threshold: first alarms gone {r['precision_target']:.0%} of the time"
             + (f", and at most {r['loyal_budget']:.0%} of the pairs the log shows loyal ever flagged."
                if r.get("loyal_budget") else "."), ""]
    held = r["held_out"]
    if held is None:
        lines.append("Not scored held out: too few silences decided before the log's last "
                     "log_verdict.holdout share of windows, or none gone after it.")
        return "\n".join(lines)
    lines += [f"Held out: fitted on the {held['fitted_on']:,} silences that start before window {held['cut_window']}, "
              f"scored on the {held['scored_on']:,} that start there or later ({held['scored_gone']:,} gone).", "",
              "| method | flagged | precision | recall | F1 | median delay (windows) | loyal pairs flagged |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    methods = [(f"verdict fitted on the log (log-odds > {held['threshold']:.2f})", held["verdict"],
                held.get("verdict_loyal_flagged")),
               (f"forgotten after {held['rule_windows']} silent windows (the least N as precise)", held["rule"],
                held.get("rule_loyal_flagged"))]
    shipped = held["shipped"]
    if shipped is not None:
        methods.append((f"the shipped verdict, fitted on synthetic stories (`verdict_file: auto`; log-odds > "
                        f"{shipped['threshold']:.2f})", shipped["scores"], shipped.get("loyal_flagged")))
    for name, s, loyal in methods:
        lines.append(f"| {name} | {s['flagged']:,} | {fmt(s['precision'])} | {fmt(s['recall'])} | {fmt(s['f1'])} "
                     f"| {fmt(s['median_delay'])} | {fmt(loyal)} |")
    lines += ["", "Loyal pairs: the (user, interest) pairs whose held-out silences all came back; flagged: any of "
              "them alarmed."]
    aucs = ", ".join(f"age {a}: {fmt(v)}" for a, v in held["auc_at_age"].items())
    lines += ["", f"ROC AUC of the verdict's log-odds, gone against back, held out ({aucs}; 0.5 = no information)."]
    if shipped is not None:
        aucs = ", ".join(f"age {a}: {fmt(v)}" for a, v in shipped["auc_at_age"].items())
        lines.append(f"The shipped verdict's, on the same silences: {aucs}.")
    return "\n".join(lines)
