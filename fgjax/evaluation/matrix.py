"""Forgetting detection on data it was never tuned to: the story x window matrix.

``evaluate_matrix`` draws every story of ``evaluate.detection_stories``
(``fgjax.data.synthetic`` / ``fgjax.data.stories``: classic, seasonal,
hawkes, engaged) at the same size, cuts each into windows of every length
of ``evaluate.detection_window_days`` (daily, weekly), and scores, per
(story, window) cell, against the story's ground truth:

- **detector**: ``kernels.detector_update`` (the analysis' own step, through
  ``detection.detect_series``) at its defaults (``analysis.detector``), and
  with its knob ``false_alarm`` chosen *leave-one-story-out*: the value of
  ``evaluate.false_alarm_sweep`` with the best mean F1 on the other stories
  at the same window length, scored on this one;
- **BOCPD** (Poisson-Gamma, truncated run length) and **CUSUM** (quasi-Poisson,
  for a drop to ``evaluate.cusum_ratio`` of the rate), the anchors of
  ``kernels/_changepoint.py``, their thresholds chosen leave-one-story-out too;
- **silence rule**: "forgotten after N silent windows" at its best N *per
  cell*, chosen on the very answers it is scored on (which favors it);
- **at one operating point** (``MATCHED``): the silence rule at its best N
  among those flagging at most the detector's share of loyal interests, and
  the detector at its best knob on the cell among those flagging at most the
  rule's (best N) share: a rule that waits longer flags fewer loyal
  interests, so each method's own best F1 alone compares two trade-offs;
- **oracle** (the ceiling): ``fgjax.evaluation.oracle``, the Bayes
  posterior of "forgotten" from the story's true rates, alarming past a
  threshold chosen on the cell itself: about the best F1 the cell allows.

Per cell and method: F1, precision, recall and median delay of the first
alarm (``detection.score``: an alarm counts from one window before the
interest is forgotten until a paused one comes back), **loyal ever
flagged** (the share of judged loyal pairs, stable / periodic / bursty,
late-starting ones included, with any alarm in their life) and
**reactivated flagged again** (of pauses caught in time that came back, the
share called forgotten again after the return was seen), and **where the
errors are** (``error_counts``: forgotten interests missed, flagged early or
after their return, and interests never forgotten flagged, by kind). A fade is
forgotten once its rate is below ``evaluate.fade_forgotten_share`` of the
former rate (``detection.fade_forgotten_days``); the matrix is scored at
every share of ``evaluate.fade_shares`` (5 % and 25 %), and the detector's
``analysis.detector.fade_share`` follows the share being scored.

Pairs sit in ``(users, slots)`` arrays (a user's interests in its first
``max_interests`` slots), every story at the same shape, so each window
length compiles once per method. Series are made from the stories' daily
counts directly (no Parquet round trip); ``fgjax evaluate --detection``
also runs the full path (generate, read, analyze, ``states.parquet``) on
``synthetic.story``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fgjax import kernels
from fgjax.analysis import window_params, window_spec
from fgjax.analysis.verdict import VerdictFit, save_verdicts
from fgjax.config import Config, to_dict
from fgjax.errors import ConfigError
from fgjax.data import synthetic
from fgjax.evaluation import oracle, verdict
from fgjax.evaluation.detection import (Truth, best_index, detect_series, fade_forgotten_days, first_alarm, score,
                                        silence_alarms)

LOYAL = tuple(synthetic.KINDS.index(k) for k in ("stable", "periodic", "bursty"))
METHODS = ("detector", "detector_default", "bocpd", "cusum", "silence", "oracle", "learned")
# Methods whose knob is chosen on the scored cell itself (a favor to a baseline; the ceiling's definition).
ON_THE_CELL = ("silence", "oracle")
# Each method at the other's false-alarm rate: (entry, method scored, method whose loyal share caps it). The
# knob is the best F1 on the cell among those flagging at most that share of loyal interests (absent when none
# does), so the two are compared at one operating point as well as each at its own best.
MATCHED = (("silence_at_detector_loyal", "silence", "detector"), ("detector_at_silence_loyal", "detector", "silence"))


@dataclasses.dataclass(frozen=True)
class StoryDays:
    """One story's daily counts in slot layout and its ground truth in days (pairs ``(n,)``)."""

    story: str
    counts: np.ndarray  # (days, users, slots) float32
    user: np.ndarray
    slot: np.ndarray
    kind: np.ndarray
    start: np.ndarray
    change: np.ndarray
    resume: np.ndarray
    fade_floor: np.ndarray
    fade_half_life: np.ndarray
    rates: synthetic.TrueRates | None = None  # what generated each pair's counts, ``(pairs, days)`` (the oracle's)


def story_days(config: Config, story: str) -> StoryDays:
    """Draw ``story`` with ``config.synthetic`` and the matrix's size (``evaluate.matrix_users`` x ``matrix_days``)."""
    e = config.evaluate
    syn = dataclasses.replace(config.synthetic, story=story, num_users=e.matrix_users, num_days=e.matrix_days)
    synthetic.check_config(syn)
    catalog = synthetic.build_catalog(syn)
    slots = syn.max_interests
    counts = np.zeros((syn.num_days, syn.num_users, slots), np.float32)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "slot", "kind", "start", "change", "resume",
                                                          "fade_floor", "fade_half_life")}
    rates: dict[str, list[np.ndarray]] = {f.name: [] for f in dataclasses.fields(synthetic.TrueRates)}
    for shard in range(-(-syn.num_users // syn.users_per_shard)):
        rng = np.random.default_rng([syn.seed, shard])
        first = shard * syn.users_per_shard
        num = min(syn.users_per_shard, syn.num_users - first)
        draw = synthetic.draw_story(rng, syn, catalog, num, with_rates=True)
        # A user's pairs are grouped: its k-th pair goes to slot k.
        starts = np.searchsorted(draw.user, draw.user, side="left")
        slot = np.arange(len(draw.user)) - starts
        user = first + draw.user
        counts[:, user, slot] = draw.counts.T
        for name, value in (("user", user), ("slot", slot), ("kind", draw.kind), ("start", draw.start_day),
                            ("change", draw.change_day), ("resume", draw.resume_day),
                            ("fade_floor", draw.fade_floor), ("fade_half_life", draw.fade_half_life)):
            parts[name].append(np.asarray(value))
        for name in rates:
            rates[name].append(getattr(draw.rates, name))
    return StoryDays(story, counts, **{k: np.concatenate(v) for k, v in parts.items()},
                     rates=synthetic.TrueRates(**{k: np.concatenate(v) for k, v in rates.items()}))


FAMILY_SEED_STRIDE = 10_000  # the verdict's family draw d uses synthetic.seed + stride * (d + 1): other users


def family_config(config: Config, draw: int, own_ranges: bool = False) -> Config:
    """The config of the learned verdict's family draw ``draw`` (0-based): the same stories, other users (another
    seed), a periodic interest's period and a pause drawn from ``evaluate.verdict_period_days`` /
    ``verdict_pause_days``, or with ``own_ranges`` from ``synthetic``'s own (``evaluate.verdict_own_draws``), over
    ``evaluate.verdict_own_days`` days where set."""
    e = config.evaluate
    syn = dataclasses.replace(config.synthetic, seed=config.synthetic.seed + FAMILY_SEED_STRIDE * (draw + 1))
    if not own_ranges:
        syn = dataclasses.replace(syn, period_days_min=e.verdict_period_days[0],
                                  period_days_max=e.verdict_period_days[1],
                                  pause_days_min=e.verdict_pause_days[0], pause_days_max=e.verdict_pause_days[1])
    elif e.verdict_own_days:
        return dataclasses.replace(config, synthetic=syn, evaluate=dataclasses.replace(e, matrix_days=e.verdict_own_days))
    return dataclasses.replace(config, synthetic=syn)


SHORT_DRAW_OFFSET = 100  # the shorter spans' draws are family_config draws from here on: other users again
# A span of D days draws family_config draws SHORT_DRAW_OFFSET + SPAN_DRAW_STRIDE * D + d: keyed by its days, not
# its place in the list, so adding or removing a span leaves every other span's users, and so its fits, as they
# were (more family draws would collide with the next day's span).
SPAN_DRAW_STRIDE = 10


def short_span_days(config: Config) -> tuple[int, ...]:
    """Days of the shorter-span verdicts' logs (``evaluate.verdict_short_days``, ascending): those below
    ``matrix_days``; none when the verdict is off."""
    e = config.evaluate
    spans = tuple(sorted(d for d in e.verdict_short_days if d < e.matrix_days)) if e.verdict else ()
    if len(spans) > 1 and 1 + e.verdict_family_draws > SPAN_DRAW_STRIDE:  # the spans' draws would share users
        raise ConfigError(f"evaluate.verdict_family_draws: at most {SPAN_DRAW_STRIDE - 1} with several "
                          f"evaluate.verdict_short_days spans, got {e.verdict_family_draws}")
    return spans


def short_span_windows(config: Config, days: int) -> tuple[int, ...]:
    """Window lengths (days, of ``evaluate.detection_window_days``) at which the ``days``-day span is drawn, scored
    and fitted: those whose logs begin at least ``evaluate.verdict_min_windows`` windows. A shorter log (a 30-day
    one in weekly windows: 5) judges almost no change, and a fit on it only learns to flag loyal interests; a run
    on such a log reads the next longer span's fit (``fgjax.analysis.verdict.load_verdict``)."""
    e = config.evaluate
    return tuple(int(wd) for wd in e.detection_window_days if windows_begun(days, int(wd)) >= e.verdict_min_windows)


def short_config(config: Config, draw: int, days: int) -> Config:
    """The config of the ``days``-day span's verdict draw ``draw`` (0-based): draw 0 at synthetic's own periods and
    pauses (the one scored), the next ones at the family's wide ranges, like the long fit's family; each with its
    own users, chosen by ``days`` and ``draw`` alone."""
    drawn = family_config(config, SHORT_DRAW_OFFSET + SPAN_DRAW_STRIDE * days + draw, own_ranges=draw == 0)
    return dataclasses.replace(drawn, evaluate=dataclasses.replace(drawn.evaluate, matrix_days=days))


def windows_begun(days: int, window_days: int) -> int:
    """Windows of ``window_days`` days a log of ``days`` days begins (its last one partial), as ``fgjax analyze``
    counts a log's windows: the span a verdict fitted on such logs records (``VerdictFit.log_windows``; the fit
    itself saw the whole windows only)."""
    return -(-days // window_days)


def oracle_posteriors(config: Config, days: StoryDays) -> dict[float, np.ndarray]:
    """``oracle.forgotten_posterior`` of the story's pairs at every share of ``evaluate.fade_shares``."""
    if days.rates is None:
        raise ValueError(f"story {days.story!r} was drawn without its rates (story_days draws them)")
    syn = config.synthetic
    return oracle.forgotten_posterior(days.rates, days.start, days.fade_floor, days.fade_half_life,
                                      [float(s) for s in config.evaluate.fade_shares],
                                      stop_prior=syn.stop_fraction + syn.reactivate_fraction,
                                      fade_prior=syn.fade_fraction)


def windowed(days: StoryDays, window_days: int) -> np.ndarray:
    """``(windows, users, slots)`` counts of whole windows of ``window_days`` days."""
    w = days.counts.shape[0] // window_days
    c = days.counts[: w * window_days]
    return c.reshape(w, window_days, *c.shape[1:]).sum(axis=1)


def story_truth(days: StoryDays, counts: np.ndarray, window_days: int, share: float, margin_days: int,
                min_expected: float = 0.0) -> Truth:
    """The ground truth on windows of ``window_days`` days, fades forgotten below ``share`` of their former rate.

    A change is judged when the interest is forgotten at least ``margin_days`` before the end (the
    same time for every window length, so daily and weekly cells judge the same pairs) and its
    former rate (its events per day from its first event to the change) predicts at least
    ``min_expected`` events from then to the end (for a pause: to its return): a silence the log cannot tell from the
    interest's usual gaps is no evidence anyone could act on. Loyal pairs are always judged.
    """
    num_windows = counts.shape[0]
    kind = days.kind
    fading = kind == synthetic.FADING
    change = days.change.astype(np.float64)
    forgotten_day = np.where(fading, change + fade_forgotten_days(days.fade_floor, days.fade_half_life, share),
                             change)
    positive = np.isin(kind, (synthetic.STOPPED, synthetic.REACTIVATED)) | (fading & np.isfinite(forgotten_day))
    # Forgotten from the first window that starts at or after the forget time.
    forgotten = np.where(positive, np.ceil(np.where(positive, forgotten_day, 0.0) / window_days), -1).astype(np.int64)
    resume = np.where(kind == synthetic.REACTIVATED, days.resume // window_days, -1)
    onset = np.where(positive, days.change // window_days, -1)
    end_day = num_windows * window_days
    judged = ~positive | (forgotten * window_days <= end_day - margin_days)
    # A pair with no event before its change (or none at all) has nothing to detect.
    series = counts[:, days.user, days.slot] > 0
    first = np.where(series.any(axis=0), series.argmax(axis=0), num_windows)
    daily = days.counts[:, days.user, days.slot]  # (days, pairs)
    day = np.arange(daily.shape[0])[:, None]
    first_day = np.where((daily > 0).any(axis=0), (daily > 0).argmax(axis=0), daily.shape[0])
    before = (day >= first_day[None, :]) & (day < days.change[None, :])
    former_rate = (daily * before).sum(axis=0) / np.maximum(before.sum(axis=0), 1)
    # Until the end of the log, or for a pause until the return (an alarm after it is too late).
    until = np.where(kind == synthetic.REACTIVATED, np.minimum(days.resume, end_day), end_day)
    left = np.maximum(until - np.where(positive, forgotten_day, until), 0.0)
    judged &= ~positive | (former_rate * left >= min_expected)
    judged &= first < np.where(onset >= 0, onset, num_windows)
    return Truth(user=days.user, interest=days.slot, kind=kind, start=days.start // window_days, onset=onset,
                 forgotten=forgotten, resume=resume, judged=judged)


def cell_metrics(forgotten: np.ndarray, truth: Truth, early: int) -> dict[str, Any]:
    """F1, precision, recall, delays, loyal ever flagged and reactivated flagged again for ``(W, users, slots)`` bool."""
    alarm = first_alarm(forgotten, truth)
    overall = score(alarm, truth, early)["overall"]
    loyal = truth.judged & ~truth.positive & np.isin(truth.kind, LOYAL)
    series = forgotten[:, truth.user, truth.interest]  # (windows, pairs)
    num_windows = series.shape[0]
    t = np.arange(num_windows)[:, None]
    in_time = (alarm >= 0) & (alarm >= truth.forgotten - early) & (alarm <= truth.resume)
    back = truth.judged & (truth.kind == synthetic.REACTIVATED) & in_time & (truth.resume < num_windows)
    # After the return: the first window not forgotten (the return seen), then any forgotten again.
    after = t >= truth.resume[None, :]
    seen_back = after & ~series
    first_back = np.where(seen_back.any(axis=0), seen_back.argmax(axis=0), num_windows)
    again = (series & (t > first_back[None, :])).any(axis=0)
    spells = (series[1:] & ~series[:-1]).sum(axis=0) + series[0]
    fades = truth.judged & (truth.kind == synthetic.FADING) & truth.positive
    return {
        **{k: overall[k] for k in ("f1", "precision", "recall", "median_delay", "p90_delay", "positives",
                                   "true_positives", "false_positives")},
        "loyal_pairs": int(loyal.sum()),
        "loyal_ever_flagged": float(np.mean(alarm[loyal] >= 0)) if loyal.any() else None,
        "returns": int(back.sum()),
        "reactivated_flagged_again": float(np.mean(again[back])) if back.any() else None,
        "fades_with_two_spells": float(np.mean(spells[fades] >= 2)) if fades.any() else None,
        "errors": error_counts(alarm, truth, early),
    }


def error_counts(alarm: np.ndarray, truth: Truth, early: int) -> dict[str, dict[str, int]]:
    """Where a method's errors are: judged pairs per error and kind of interest (``synthetic.KINDS``).

    - ``missed``: a forgotten interest never flagged;
    - ``early``: one first flagged more than ``early`` windows before it was forgotten (a false alarm and a miss
      at once, as ``detection.score`` counts it), e.g. a fade flagged before its rate fell below the share;
    - ``late``: a pause first flagged only after it came back;
    - ``false_alarm``: an interest that was never forgotten, flagged (loyal kinds, and fades whose floor stays
      at or above the share).

    Args:
      alarm: ``(pairs,)`` each pair's first alarm (``detection.first_alarm``; -1 = none).
    """
    judged, positive, flagged = truth.judged, truth.positive, alarm >= 0
    kinds = {
        "missed": judged & positive & ~flagged,
        "early": judged & positive & flagged & (alarm < truth.forgotten - early),
        "late": judged & positive & flagged & (truth.resume >= 0) & (alarm > truth.resume),
        "false_alarm": judged & ~positive & flagged,
    }
    present = np.unique(truth.kind[judged])
    return {error: {synthetic.KINDS[k]: int(np.sum(sel & (truth.kind == k))) for k in present}
            for error, sel in kinds.items()}


@functools.partial(jax.jit, static_argnames=("run_lengths",))
def _bocpd_scores(counts: jax.Array, params: kernels.ChangepointParams, run_lengths: int) -> jax.Array:
    """``(windows, ...)`` posterior mass of a change inside each current silence."""
    def step(state, x):
        return kernels.bocpd_update(state, x, params)

    _, out = jax.lax.scan(step, kernels.bocpd_init(counts.shape[1:], run_lengths), counts)
    return out


@jax.jit
def _cusum_scores(counts: jax.Array, params: kernels.ChangepointParams) -> jax.Array:
    """``(windows, ...)`` CUSUM statistic of a drop, 0 in active windows."""
    def step(state, x):
        return kernels.cusum_update(state, x, params)

    _, out = jax.lax.scan(step, kernels.cusum_init(counts.shape[1:]), counts)
    return out


_sticky = jax.jit(kernels.sticky_alarms)


def _changepoint_params(config: Config) -> kernels.ChangepointParams:
    e = config.evaluate
    knobs = dict(hazard=e.bocpd_hazard, prior_events=e.bocpd_prior_events, prior_windows=e.bocpd_prior_windows,
                 ratio=e.cusum_ratio)
    return kernels.ChangepointParams(**{k: jnp.asarray(v, jnp.float32) for k, v in knobs.items()})


def sweeps(config: Config) -> dict[str, list[float]]:
    """Each method's knob values (the detector's ``false_alarm``, the anchors' thresholds, N, the learned
    verdict's log-odds threshold)."""
    e = config.evaluate
    return {
        "detector": list(e.false_alarm_sweep),
        "detector_default": [config.analysis.detector.false_alarm],
        "bocpd": list(e.bocpd_threshold_sweep),
        "cusum": list(e.cusum_threshold_sweep),
        "silence": [float(n) for n in e.silence_sweep],
        "oracle": list(e.oracle_sweep),
        **({"learned": list(e.verdict_threshold_sweep)} if e.verdict else {}),
    }


def method_alarms(config: Config, counts: np.ndarray, share: float, window_days: int = 1,
                  days: StoryDays | None = None,
                  posterior: np.ndarray | None = None) -> dict[str, Callable[[float], np.ndarray]]:
    """``knob -> (W, users, slots) bool forgotten`` per method, on one cell's counts (windows of ``window_days``).

    The anchors' scores are computed once; each threshold only replays the sticky rule. The oracle
    needs the story (``days``) and its daily posterior at this share (``oracle_posteriors``): a window
    is flagged when the posterior at its last day passes the knob.
    """
    acfg = dataclasses.replace(config.analysis, window_seconds=window_days * 86400.0,
                               detector=dataclasses.replace(config.analysis.detector, fade_share=share,
                                                            verdict_file=""))  # the detector's own verdict
    device = jnp.asarray(counts)
    params, spec = window_params(acfg, counts.shape[0]), window_spec(acfg, counts.shape[-1])

    def detector(q: float) -> np.ndarray:
        knobs = params._replace(detector=params.detector._replace(false_alarm=jnp.asarray(q, jnp.float32)))
        return np.asarray(detect_series(device, knobs, spec)) == kernels.FORGOTTEN

    scores = {
        "bocpd": functools.cache(lambda: _bocpd_scores(device, _changepoint_params(config),
                                                       config.evaluate.bocpd_run_lengths)),
        "cusum": functools.cache(lambda: _cusum_scores(device, _changepoint_params(config))),
    }
    methods = {
        "detector": detector,
        "detector_default": detector,
        "bocpd": lambda th: np.asarray(_sticky(scores["bocpd"](), jnp.float32(th))),
        "cusum": lambda th: np.asarray(_sticky(scores["cusum"](), jnp.float32(th))),
        "silence": lambda n: silence_alarms(counts, int(n)),
    }
    if posterior is not None and days is not None:
        at_window_end = posterior[:, window_days - 1: counts.shape[0] * window_days: window_days]  # (pairs, W)

        def ceiling(q: float) -> np.ndarray:
            flags = np.zeros(counts.shape, bool)
            flags[:, days.user, days.slot] = (at_window_end > q).T
            return flags

        methods["oracle"] = ceiling
    return methods


@dataclasses.dataclass(frozen=True)
class MatrixReport:
    """``cells[share][story][window][method]``: the chosen knob and its metrics; ``grid`` every knob's."""

    cells: dict[str, Any]
    grid: dict[str, Any]
    setup: dict[str, Any]
    # The learned verdict fitted on every story, per (window length, share): verdict.json (``write_matrix``).
    verdicts: tuple[VerdictFit, ...] = ()
    # The shorter logs (``evaluate.verdict_short_days``): ``short[days][share][story][window]``, on the story's draw
    # over ``days``, the silence rule at its best N, the detector at its defaults, the span's verdict (``learned``)
    # and the long one (``learned_long``), both fitted leave-one-story-out; and ``short_fit_on_long``, the span's
    # verdict on the matrix's own (long) cell.
    short: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"cells": self.cells, "grid": self.grid, "setup": self.setup, "short": self.short}


def _label(window_days: int) -> str:
    return {1: "daily", 7: "weekly"}.get(window_days, f"{window_days}d")


def evaluate_matrix(config: Config, report: Callable[[str], None] = lambda _: None) -> MatrixReport:
    """Score every method on every (story, window) cell at every fade share; choose knobs leave-one-story-out."""
    e = config.evaluate
    started = time.perf_counter()
    knobs = sweeps(config)
    grid: dict[str, Any] = {}  # share -> story -> window -> method -> [metrics per knob]
    shares = [str(s) for s in e.fade_shares]
    evidence: dict[tuple[str, str], dict[str, verdict.VerdictRows]] = {}  # (share, window) -> story -> rows
    family: dict[tuple[str, str], dict[str, list[verdict.VerdictRows]]] = {}  # the same, the fit's extra draws
    spans = short_span_days(config)
    # The same on the shorter spans' logs, keyed (days, share, window).
    short_evidence: dict[tuple[int, str, str], dict[str, verdict.VerdictRows]] = {}
    short_family: dict[tuple[int, str, str], dict[str, list[verdict.VerdictRows]]] = {}
    short_cells: dict[str, Any] = {}  # days -> share -> story -> window -> method -> the chosen knob's metrics
    for story in e.detection_stories:
        days = story_days(config, story)
        posteriors = oracle_posteriors(config, days)
        for wd in e.detection_window_days:
            counts = windowed(days, int(wd))
            window = _label(int(wd))
            truths = {s: story_truth(days, counts, int(wd), float(s), e.matrix_margin_days,
                                  e.min_expected_events) for s in shares}
            rows = {s: grid.setdefault(s, {}).setdefault(story, {}).setdefault(window, {}) for s in shares}
            alarms = {s: method_alarms(config, counts, float(s), int(wd), days, posteriors[float(s)]) for s in shares}
            for method, values in knobs.items():
                if method == "learned":  # fitted across stories, after them all
                    continue
                for s in shares:
                    rows[s][method] = []
                # Only the detector and the oracle read the fade definition; the others' alarms serve every share.
                per_share = method.startswith("detector") or method == "oracle"
                for v in values:
                    shared = None if per_share else alarms[shares[0]][method](v)
                    for s in shares:
                        flags = alarms[s][method](v) if per_share else shared
                        rows[s][method].append(cell_metrics(flags, truths[s], e.detection_early_windows))
            if e.verdict:
                for s in shares:
                    evidence.setdefault((s, window), {})[story] = verdict.verdict_rows(config, counts, truths[s],
                                                                                       float(s), int(wd))
            report(f"  {story} {window}: {time.perf_counter() - started:.0f}s")
        # The wide draws first, then those at synthetic's own ranges; each its own seed.
        draws = [False] * e.verdict_family_draws + [True] * e.verdict_own_draws if e.verdict else []
        for draw, own_ranges in enumerate(draws):
            drawn = story_days(family_config(config, draw, own_ranges), story)
            for wd in e.detection_window_days:
                counts = windowed(drawn, int(wd))
                for s in shares:
                    truth = story_truth(drawn, counts, int(wd), float(s), e.matrix_margin_days, e.min_expected_events)
                    family.setdefault((s, _label(int(wd))), {}).setdefault(story, []).append(
                        verdict.verdict_rows(config, counts, truth, float(s), int(wd)))
            report(f"  {story}, the verdict's family draw {draw + 1}: {time.perf_counter() - started:.0f}s")
        # The shorter spans' logs: draw 0 scored (beside the rule and the detector on it), the others its family.
        for short_days in spans:
            windows_here = short_span_windows(config, short_days)
            for draw in range(1 + e.verdict_family_draws if windows_here else 0):  # none: no draw to make
                drawn = story_days(short_config(config, draw, short_days), story)
                for wd in windows_here:
                    counts, window = windowed(drawn, int(wd)), _label(int(wd))
                    rule_flags = [silence_alarms(counts, int(n)) for n in knobs["silence"]] if not draw else []
                    for s in shares:
                        truth = story_truth(drawn, counts, int(wd), float(s), e.matrix_margin_days,
                                            e.min_expected_events)
                        rows = verdict.verdict_rows(config, counts, truth, float(s), int(wd))
                        if draw:
                            short_family.setdefault((short_days, s, window), {}).setdefault(story, []).append(rows)
                            continue
                        short_evidence.setdefault((short_days, s, window), {})[story] = rows
                        alarms = method_alarms(config, counts, float(s), int(wd))
                        # The rule reads no fade definition: its flags serve every share, each on its own truth.
                        rule = [cell_metrics(flags, truth, e.detection_early_windows) for flags in rule_flags]
                        best = int(np.argmax([m["f1"] or 0.0 for m in rule]))
                        q = knobs["detector_default"][0]
                        cells_here = short_cells.setdefault(str(short_days), {}).setdefault(s, {})
                        cells_here.setdefault(story, {})[window] = {
                            "silence": {"knob": knobs["silence"][best], **rule[best]},
                            "detector_default": {"knob": q, **cell_metrics(alarms["detector_default"](q), truth,
                                                                            e.detection_early_windows)}}
                report(f"  {story}, the {short_days}-day verdict's draw {draw + 1}: "
                       f"{time.perf_counter() - started:.0f}s")
    # The learned verdict: fitted and thresholded on the other stories of each cell, so its whole model is
    # chosen leave-one-story-out (its grid is each story's under the model that did not see it).
    learned_index: dict[tuple[str, str, str], int] = {}
    fits: list[VerdictFit] = []
    if e.verdict:
        def metrics(flags: np.ndarray, truth: Truth) -> dict[str, Any]:
            return cell_metrics(flags, truth, e.detection_early_windows)

        sweep = e.verdict_threshold_sweep

        def at(rows: verdict.VerdictRows, params: kernels.VerdictParams, i: int) -> dict[str, Any]:
            return {"knob": sweep[i], **verdict.threshold_points(rows, params, [sweep[i]], metrics)[0]}

        for (s, window), by_story in evidence.items():
            extra = family.get((s, window), {})
            window_days = next(float(wd) for wd in e.detection_window_days if _label(int(wd)) == window)
            held_long = verdict.held_out_verdicts(config, by_story, metrics, extra)
            for story, (chosen, points, _) in held_long.items():
                grid[s][story][window]["learned"] = points
                learned_index[(s, story, window)] = chosen
            fits.append(verdict.verdict_for_analysis(config, by_story, window_days, float(s), extra,
                                                     log_windows=windows_begun(e.matrix_days, int(window_days))))
            # Each span's fit on the long logs too, and the long fit on each span's: what choosing by span is worth.
            for short_days in spans:
                if (short_days, s, window) not in short_evidence:  # too few windows (short_span_windows)
                    continue
                short_rows = short_evidence[(short_days, s, window)]
                short_extra = short_family.get((short_days, s, window), {})
                for story, (chosen, _, params) in verdict.held_out_verdicts(config, short_rows, metrics,
                                                                           short_extra).items():
                    cell = short_cells[str(short_days)][s][story][window]
                    cell["learned"] = at(short_rows[story], params, chosen)
                    cell["learned_long"] = at(short_rows[story], held_long[story][2], held_long[story][0])
                    cell["short_fit_on_long"] = at(by_story[story], params, chosen)
                fits.append(verdict.verdict_for_analysis(config, short_rows, window_days, float(s), short_extra,
                                                         log_windows=windows_begun(short_days, int(window_days))))
        report(f"  learned verdict: {time.perf_counter() - started:.0f}s")
    cells: dict[str, Any] = {}
    for share_text, by_story in grid.items():
        for story, by_window in by_story.items():
            for window, by_method in by_window.items():
                out = cells.setdefault(share_text, {}).setdefault(story, {}).setdefault(window, {})
                for method, points in by_method.items():
                    if method == "learned":
                        i = learned_index[(share_text, story, window)]
                    elif method in ON_THE_CELL:
                        i = int(np.argmax([p["f1"] or 0.0 for p in points]))  # best knob on this very cell
                    elif len(points) == 1:
                        i = 0
                    else:  # leave one story out: the best mean F1 on the other stories
                        others = [s for s in by_story if s != story] or [story]
                        mean_f1 = [np.mean([by_story[s][window][method][j]["f1"] or 0.0 for s in others])
                                   for j in range(len(points))]
                        i = int(np.argmax(mean_f1))
                    out[method] = {"knob": knobs[method][i], **points[i]}
                for entry, method, capped_by in MATCHED:
                    cap = out[capped_by]["loyal_ever_flagged"]
                    i = None if cap is None else best_index(by_method[method], cap, "loyal_ever_flagged")
                    if i is not None:
                        out[entry] = {"knob": knobs[method][i], **by_method[method][i]}
    setup = {
        "stories": list(e.detection_stories), "window_days": list(e.detection_window_days),
        "users": e.matrix_users, "days": e.matrix_days, "fade_shares": list(e.fade_shares),
        "interests_per_user": [config.synthetic.min_interests, config.synthetic.max_interests],
        "categories": config.synthetic.num_categories, "seed": config.synthetic.seed, "sweeps": knobs,
        "verdict_family": ({"draws": e.verdict_family_draws, "period_days": list(e.verdict_period_days),
                            "pause_days": list(e.verdict_pause_days), "own_draws": e.verdict_own_draws}
                           if e.verdict else None),
        "short_days": list(spans),
        "seconds": time.perf_counter() - started,
    }
    return MatrixReport(cells=cells, grid=grid, setup=setup, verdicts=tuple(fits), short=short_cells)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


METHOD_NAMES = {
    "detector": "detector (knob leave-one-story-out)",
    "detector_default": "detector (defaults)",
    "bocpd": "BOCPD Poisson-Gamma (LOSO)",
    "cusum": "CUSUM quasi-Poisson (LOSO)",
    "silence": "silence rule, best N per cell",
    "oracle": "oracle: Bayes posterior with the true rates, best q per cell (the ceiling)",
    "learned": "learned verdict over the detector's evidence (fitted and thresholded leave-one-story-out)",
    "silence_at_detector_loyal": "silence rule, best N flagging at most the detector's (LOSO) share of loyal",
    "detector_at_silence_loyal": "detector, best knob on the cell flagging at most the silence rule's share of loyal",
}


def format_matrix(matrix: MatrixReport) -> str:
    """Markdown: one table per fade share, a row per (story, window, method)."""
    lines = []
    for share, by_story in matrix.cells.items():
        lines += [f"Fades forgotten below {float(share):.0%} of their former rate.", "",
                  "| story | windows | method | knob | F1 | precision | recall | median delay | loyal ever flagged "
                  "| reactivated flagged again | fades with 2+ spells |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for story, by_window in by_story.items():
            for window, by_method in by_window.items():
                for method, m in by_method.items():
                    lines.append(
                        f"| {story} | {window} | {METHOD_NAMES[method]} | {m['knob']:g} | {_fmt(m['f1'])} "
                        f"| {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['median_delay'], '.1f')} "
                        f"| {_fmt(m['loyal_ever_flagged'])} | {_fmt(m['reactivated_flagged_again'])} "
                        f"| {_fmt(m['fades_with_two_spells'])} |")
        lines.append("")
    return "\n".join(lines)


def format_summary(matrix: MatrixReport) -> str:
    """Markdown: the matrix story x window, the detector (knob leave-one-story-out) beside the silence rule
    at its best N per cell and the anchors, one table per fade share."""
    lines = []
    for share, by_story in matrix.cells.items():
        lines += [f"Fades forgotten below {float(share):.0%} of their former rate; detector knob (false_alarm) "
                  "chosen on the other stories, silence rule's N and the oracle's threshold on the cell itself.", "",
                  "| story | windows | detector F1 (P / R) | delay | loyal ever flagged | flagged again "
                  "| silence rule: N, F1, delay, loyal | BOCPD F1 | CUSUM F1 | detector at defaults: F1, loyal "
                  "| ceiling: oracle F1, delay, loyal | rule at the detector's loyal share: N, F1 "
                  "| detector at the rule's: F1 | learned verdict: F1, delay, loyal |",
                  "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- | --- | ---: | --- |"]
        for story, by_window in by_story.items():
            for window, m in by_window.items():
                d, sil, dd, top = m["detector"], m["silence"], m["detector_default"], m["oracle"]
                rule_at, detector_at = m.get("silence_at_detector_loyal"), m.get("detector_at_silence_loyal")
                rule_text = f"N={rule_at['knob']:g}: {_fmt(rule_at['f1'])}" if rule_at else "none flags so few"
                learned = m.get("learned")
                learned_text = (f"{_fmt(learned['f1'])}, {_fmt(learned['median_delay'], '.0f')}, "
                                f"{_fmt(learned['loyal_ever_flagged'])}") if learned else "-"
                lines.append(
                    f"| {story} | {window} | {_fmt(d['f1'])} ({_fmt(d['precision'], '.2f')} / "
                    f"{_fmt(d['recall'], '.2f')}) | {_fmt(d['median_delay'], '.0f')} "
                    f"| {_fmt(d['loyal_ever_flagged'])} | {_fmt(d['reactivated_flagged_again'])} "
                    f"| N={sil['knob']:g}: {_fmt(sil['f1'])}, {_fmt(sil['median_delay'], '.0f')}, "
                    f"{_fmt(sil['loyal_ever_flagged'])} | {_fmt(m['bocpd']['f1'])} | {_fmt(m['cusum']['f1'])} "
                    f"| {_fmt(dd['f1'])}, {_fmt(dd['loyal_ever_flagged'])} "
                    f"| {_fmt(top['f1'])}, {_fmt(top['median_delay'], '.0f')}, {_fmt(top['loyal_ever_flagged'])} "
                    f"| {rule_text} "
                    f"| {_fmt(detector_at['f1']) if detector_at else '-'} | {learned_text} |")
        lines.append("")
    return "\n".join(lines)


def format_short(matrix: MatrixReport) -> str:
    """Markdown: each span's verdict on that span's logs and on the long ones (``MatrixReport.short``), per span
    and fade share; "" when the matrix fitted no shorter-span verdict."""
    lines = []
    for days, by_share in matrix.short.items():
        for share, by_story in by_share.items():
            lines += [f"Logs of {days} days (each story's draw over {days} days) against the matrix's "
                      f"{matrix.setup['days']} days, fades forgotten below {float(share):.0%}: F1 (loyal ever "
                      "flagged) of the verdict fitted on each span's logs, both leave-one-story-out; the rule at its "
                      "best N and the detector at its defaults on the shorter log.", "",
                      f"| story | windows | {days}-day log: rule, best N | detector | long-span fit | {days}-day fit "
                      f"| long log: long-span fit | {days}-day fit |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for story, by_window in by_story.items():
                for window, m in by_window.items():
                    shown = lambda r: f"{_fmt(r['f1'])} ({_fmt(r['loyal_ever_flagged'])})"  # noqa: E731
                    long_fit = matrix.cells[share][story][window].get("learned")
                    lines.append(f"| {story} | {window} | N={m['silence']['knob']:g}: {shown(m['silence'])} "
                                 f"| {shown(m['detector_default'])} | {shown(m['learned_long'])} "
                                 f"| {shown(m['learned'])} | {shown(long_fit) if long_fit else '-'} "
                                 f"| {shown(m['short_fit_on_long'])} |")
            lines.append("")
    return "\n".join(lines)


def format_errors(matrix: MatrixReport, method: str = "detector") -> str:
    """Markdown: where ``method``'s errors are per cell (``error_counts`` at its chosen knob), one table per
    fade share: forgotten interests missed, flagged early or late (by kind), interests never forgotten flagged."""
    lines = []
    for share, by_story in matrix.cells.items():
        lines += [f"Where the errors of the {METHOD_NAMES[method]} are, fades forgotten below {float(share):.0%} "
                  "(judged pairs): forgotten interests missed, flagged early or flagged after their return, and "
                  "interests never forgotten that were flagged.", "",
                  "| story | windows | missed: stopped, paused, fading | early: stopped, paused, fading "
                  "| late: paused | false alarms: stable, periodic, bursty, fading (floor at or above the share) |",
                  "| --- | --- | --- | --- | ---: | --- |"]
        for story, by_window in by_story.items():
            for window, m in by_window.items():
                errors = m[method]["errors"]
                count = lambda error, kinds: ", ".join(str(errors[error].get(k, 0)) for k in kinds)  # noqa: E731
                changed = ("stopped", "reactivated", "fading")
                lines.append(f"| {story} | {window} | {count('missed', changed)} | {count('early', changed)} "
                             f"| {count('late', ('reactivated',))} "
                             f"| {count('false_alarm', ('stable', 'periodic', 'bursty', 'fading'))} |")
        lines.append("")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Targets:
    """What a cell of the matrix asks of the detector (issue 10's targets; ``target_checks``)."""

    f1: float = 0.95  # F1 at least this
    loyal_ever_flagged: float = 0.01  # loyal interests ever flagged at most this share
    flagged_again: float = 0.02  # returned interests flagged again at most this share


def target_checks(matrix: MatrixReport, targets: Targets = Targets(), method: str = "detector") -> dict[str, Any]:
    """Per cell, whether ``method`` (the detector, knob leave-one-story-out, unless named: ``learned`` for the
    learned verdict) meets each target, and the count over cells.

    ``cells[share][story][window]``: ``f1`` (F1 >= ``targets.f1``) with ``ceiling_allows`` (the oracle's F1
    reaches it: otherwise no detector of the counts can), ``beats_rule`` (F1 at least the silence rule's at its
    best N), ``earlier_than_rule`` (median delay below the rule's), ``loyal`` and ``flagged_again``. ``met``:
    cells meeting each target, out of ``cells``.
    """
    cells: dict[str, Any] = {}
    for share, by_story in matrix.cells.items():
        for story, by_window in by_story.items():
            for window, m in by_window.items():
                d, rule, top = m[method], m["silence"], m["oracle"]
                delay, rule_delay = d["median_delay"], rule["median_delay"]
                again = d["reactivated_flagged_again"]
                cells.setdefault(share, {}).setdefault(story, {})[window] = {
                    "f1": (d["f1"] or 0.0) >= targets.f1,
                    "ceiling_allows": (top["f1"] or 0.0) >= targets.f1,
                    "beats_rule": (d["f1"] or 0.0) >= (rule["f1"] or 0.0),
                    "earlier_than_rule": delay is not None and (rule_delay is None or delay < rule_delay),
                    "loyal": d["loyal_ever_flagged"] is not None and d["loyal_ever_flagged"] <= targets.loyal_ever_flagged,
                    "flagged_again": again is None or again <= targets.flagged_again,
                }
    flat = [c for by_story in cells.values() for by_window in by_story.values() for c in by_window.values()]
    met = {key: sum(c[key] for c in flat) for key in (flat[0] if flat else {})}
    return {"targets": dataclasses.asdict(targets), "method": method, "cells": cells, "met": met, "of": len(flat)}


def learned_target_checks(matrix: MatrixReport, targets: Targets = Targets()) -> dict[str, Any] | None:
    """``target_checks`` of the learned verdict; None when the matrix did not score it."""
    scored = all("learned" in m for by_story in matrix.cells.values() for by_window in by_story.values()
                 for m in by_window.values())
    return target_checks(matrix, targets, "learned") if matrix.cells and scored else None


def format_targets(checks: dict[str, Any]) -> str:
    """Markdown: which cells meet which target, and the counts."""
    t, n = checks["targets"], checks["of"]
    mark = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    who = {"detector": "the detector, knob leave-one-story-out",
           "learned": "the learned verdict, fitted leave-one-story-out"}.get(checks.get("method"), checks.get("method"))
    lines = [f"Targets ({who}): F1 >= {t['f1']:g} (and whether the ceiling allows "
             f"it), at least the silence rule's best F1, an earlier median delay, loyal ever flagged <= "
             f"{t['loyal_ever_flagged']:.0%}, flagged again <= {t['flagged_again']:.0%}.", "",
             "| share | story | windows | F1 | ceiling allows F1 | >= rule | earlier | loyal | flagged again |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = ("f1", "ceiling_allows", "beats_rule", "earlier_than_rule", "loyal", "flagged_again")
    for share, by_story in checks["cells"].items():
        for story, by_window in by_story.items():
            for window, c in by_window.items():
                lines.append(f"| {float(share):.0%} | {story} | {window} | "
                             + " | ".join(mark(c[k]) for k in keys) + " |")
    met = checks["met"]
    lines.append("| met | | | " + " | ".join(f"{met.get(k, 0)} / {n}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_matrix(matrix: MatrixReport, config: Config, out: Path) -> Path:
    """``out/matrix.json`` (every cell, every knob, the targets met, the config), ``out/matrix.md`` (summary,
    targets, where the detector's errors are, and details) and, when the learned verdict ran, ``out/verdict.json``
    (its fit on every story per window length and share, for ``analysis.detector.verdict_file``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "matrix.json"
    checks = target_checks(matrix)
    learned = learned_target_checks(matrix)
    path.write_text(json.dumps({"matrix": matrix.to_json(), "targets": checks, "config": to_dict(config),
                                **({"learned_targets": learned} if learned else {})}, indent=2) + "\n")
    if matrix.verdicts:
        save_verdicts(list(matrix.verdicts), out / "verdict.json")
    (out / "matrix.md").write_text(format_summary(matrix) + "\n" + format_targets(checks) + "\n"
                                   + (format_targets(learned) + "\n" if learned else "")
                                   + (format_short(matrix) + "\n" if matrix.short else "")
                                   + format_errors(matrix) + "\n" + format_matrix(matrix) + "\n")
    return path
