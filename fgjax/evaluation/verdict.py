"""The learned verdict's fit and its leave-one-story-out score in the detection matrix.

``kernels.verdict_features`` reads the detector's state after each window as a row of evidence per
(user, interest); a logistic model over those rows (``kernels.verdict_logit``) calls a silent interest
forgotten. Here the model is fitted by weighted logistic regression (Newton's method) on the rows of
the stories a cell does not score, its threshold chosen on them as well, and scored on the held-out
story: the same leave-one-story-out rule as every other method's knob, applied to the weights too.

A row is a silent window of a judged (user, interest) pair. Its label is 1 from the window the pair
counts as forgotten (less ``detection_early_windows``, the early alarms ``detection.score`` still
counts) until its return, else 0. Each pair's rows weigh 1 / its rows in all, so a loyal interest's
hundred quiet days weigh what one stopped interest's do.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fgjax import kernels
from fgjax.analysis import WindowParams, WindowSpec, detector_step, window_params, window_spec
from fgjax.analysis.verdict import VerdictFit
from fgjax.config import Config
from fgjax.evaluation.detection import Truth, loyal_false_positive_rate, score


@dataclasses.dataclass(frozen=True)
class VerdictRows:
    """One (story, window length, fade share)'s evidence on its pairs.

    Attributes:
      features: ``(windows, pairs, len(kernels.VERDICT_FEATURES))`` float32.
      silent: ``(windows, pairs)`` bool, the rows a verdict may flag (silent after activity).
      truth: the pairs' ground truth (``pairs`` in ``truth.user`` / ``truth.interest`` order).
      shape: ``(windows, users, slots)`` of the counts, to write flags back.
    """

    features: np.ndarray
    silent: np.ndarray
    truth: Truth
    shape: tuple[int, int, int]


@functools.partial(jax.jit, static_argnames=("spec", "recent_windows"))
def _evidence_series(counts: jax.Array, params: WindowParams, spec: WindowSpec,
                     recent_windows: int) -> tuple[jax.Array, jax.Array]:
    """``(windows, users, K, F)`` verdict features and ``(windows, users, K)`` silent rows over a count series.

    Module-level and of every user (not gathered to a story's pairs) so that one compile serves every story and
    fade share of a window length: the matrix calls it 16 times and more, and each compile costs seconds.
    """
    def step(state, window_counts):
        state, out = detector_step(state, window_counts, None, params, spec)
        return state, (kernels.verdict_features(state, out, recent_windows), kernels.verdict_silent(state))

    init = kernels.detector_init(counts.shape[1], counts.shape[2], spec.buffer_windows)
    return jax.lax.scan(step, init, counts)[1]


def verdict_rows(config: Config, counts: np.ndarray, truth: Truth, share: float, window_days: int) -> VerdictRows:
    """Run the detector (its default knobs, fades at ``share``) over ``(windows, users, slots)`` counts and keep
    each window's ``kernels.verdict_features`` on ``truth``'s pairs."""
    acfg = dataclasses.replace(config.analysis, window_seconds=window_days * 86400.0,
                               detector=dataclasses.replace(config.analysis.detector, fade_share=share,
                                                            verdict_file=""))  # the detector's own verdict
    params, spec = window_params(acfg, counts.shape[0]), window_spec(acfg, counts.shape[-1])
    features, silent = _evidence_series(jnp.asarray(counts, jnp.float32), params, spec,
                                        config.analysis.detector.verdict_recent_windows)
    pairs = (slice(None), truth.user, truth.interest)
    return VerdictRows(np.asarray(features)[pairs], np.asarray(silent)[pairs], truth, tuple(counts.shape))


def verdict_labels(rows: VerdictRows, early: int) -> np.ndarray:
    """``(windows, pairs)`` bool: the pair counts as forgotten at the window (less ``early``) and has not returned."""
    truth = rows.truth
    t = np.arange(rows.features.shape[0])[:, None]
    return (truth.positive[None, :] & (t >= truth.forgotten[None, :] - early)
            & ((truth.resume[None, :] < 0) | (t <= truth.resume[None, :])))


def training_set(stories: list[VerdictRows], early: int, rows_per_story: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features ``(n, F)``, labels ``(n,)`` and weights ``(n,)`` of the judged pairs' silent rows, each story's
    drawn down to ``rows_per_story`` (uniformly, the weights rescaled so a story keeps its total)."""
    xs, ys, ws = [], [], []
    for rows in stories:
        keep = rows.silent & rows.truth.judged[None, :]
        per_pair = np.broadcast_to(1.0 / np.maximum(keep.sum(axis=0), 1), keep.shape)
        x, y, w = rows.features[keep], verdict_labels(rows, early)[keep], per_pair[keep]
        if len(y) > rows_per_story:
            pick = rng.choice(len(y), rows_per_story, replace=False)
            x, y, w = x[pick], y[pick], w[pick] * (len(y) / rows_per_story)
        xs.append(x)
        ys.append(y)
        ws.append(w)
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32), np.concatenate(ws).astype(np.float32)


ROW_BUCKET = 1 << 16  # fit rows are padded (weight 0) to a multiple of this: one compile serves many fits


@functools.partial(jax.jit, static_argnames=("steps",))
def _newton_fit(x: jax.Array, y: jax.Array, w: jax.Array, ridge: jax.Array, steps: int) -> jax.Array:
    """The ``(F + 1,)`` coefficients (weights, then the bias) minimizing the weighted log-loss plus
    ``ridge / 2 * |weights|^2`` by Newton's method, for ``(n, F + 1)`` rows ``x`` whose last column is 1.

    ``w`` sums to 1. A step that raises the loss is retreated from and halved (the loss only falls), so the
    result is the best of the ``steps`` points evaluated. Arguments, not closed-over constants: a fit's rows
    would otherwise be baked into its compiled program (seconds to compile and to write to the compile cache).
    """
    penalty = ridge * jnp.ones(x.shape[1], x.dtype).at[-1].set(0.0)  # the bias is not penalized

    def step(carry, _):
        b, best, best_loss, direction, scale = carry
        z = x @ b
        p = jax.nn.sigmoid(z)
        loss = jnp.sum(w * optax.sigmoid_binary_cross_entropy(z, y)) + 0.5 * jnp.sum(penalty * b * b)
        grad = x.T @ (w * (p - y)) + penalty * b
        hessian = (x * (w * p * (1.0 - p))[:, None]).T @ x + jnp.diag(penalty)
        better = loss <= best_loss
        best, best_loss = jnp.where(better, b, best), jnp.where(better, loss, best_loss)
        direction = jnp.where(better, jnp.linalg.solve(hessian, grad), direction)
        scale = jnp.where(better, 1.0, 0.5 * scale)
        return (best - scale * direction, best, best_loss, direction, scale), None

    start = jnp.zeros(x.shape[1], x.dtype)
    carry = (start, start, jnp.asarray(jnp.inf, x.dtype), start, jnp.ones((), x.dtype))
    return jax.lax.scan(step, carry, None, length=steps)[0][1]


def fit_verdict(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, steps: int = 10,
                ridge: float = 1e-4) -> kernels.VerdictParams:
    """Weighted logistic regression of ``labels`` ``(n,)`` on standardized ``features`` ``(n, F)``: the maximum
    of the weighted likelihood (weights normalized to sum 1) less ``ridge / 2 * |w|^2``, by ``steps`` Newton steps.

    The ridge keeps the fit defined where features are collinear or a feature separates the labels; a feature
    constant over the rows gets scale 1 (it standardizes to 0 and its weight stays 0).
    """
    if len(labels) == 0:
        raise ValueError("the learned verdict has no rows to fit: no judged interest had a silent window")
    if not ridge > 0:  # a constant (standardized to 0) feature would leave the Hessian singular
        raise ValueError(f"the learned verdict's ridge must be > 0, got {ridge}")
    mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
    scale = features.std(axis=0, dtype=np.float64).astype(np.float32)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    n, f = features.shape
    padded = -(-n // ROW_BUCKET) * ROW_BUCKET
    x = np.zeros((padded, f + 1), np.float32)
    x[:n, :f] = (features - mean) / scale
    x[:n, f] = 1.0
    y, w = np.zeros(padded, np.float32), np.zeros(padded, np.float32)
    y[:n] = labels
    w[:n] = weights / np.sum(weights, dtype=np.float64)
    coef = _newton_fit(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w), jnp.float32(ridge), steps)
    return kernels.VerdictParams(mean=jnp.asarray(mean), scale=jnp.asarray(scale), weights=coef[:f], bias=coef[f])


def verdict_flags(rows: VerdictRows, params: kernels.VerdictParams, threshold: float) -> np.ndarray:
    """``(windows, users, slots)`` bool forgotten: silent rows whose log-odds exceed ``threshold``."""
    return log_odds_flags(rows, np.asarray(kernels.verdict_logit(rows.features, params)), threshold)


def threshold_points(rows: VerdictRows, params: kernels.VerdictParams, thresholds: list[float],
                     metrics: Any) -> list[dict[str, Any]]:
    """``metrics(flags, truth)`` at each threshold; the log-odds are computed once for the whole sweep."""
    logit = np.asarray(kernels.verdict_logit(rows.features, params))
    return [metrics(log_odds_flags(rows, logit, th), rows.truth) for th in thresholds]


def log_odds_flags(rows: VerdictRows, logit: np.ndarray, threshold: float) -> np.ndarray:
    """``(windows, users, slots)`` bool forgotten: silent rows whose ``(windows, pairs)`` log-odds ``logit`` (of any
    model) exceed ``threshold``."""
    flags = np.zeros(rows.shape, bool)
    flags[:, rows.truth.user, rows.truth.interest] = rows.silent & (logit > threshold)
    return flags


def threshold_scores(rows: VerdictRows, params: kernels.VerdictParams, thresholds: list[float],
                     early: int) -> list[tuple[float, float | None]]:
    """At each threshold, the verdict's F1 (``detection.score``'s, 0 for none) and its share of loyal pairs ever
    flagged (``detection.loyal_false_positive_rate``; None without loyal pairs), from first alarms per pair.

    What ``threshold_points`` gives under ``matrix.cell_metrics`` for ``"f1"`` and ``"loyal_ever_flagged"``,
    without writing a ``(windows, users, slots)`` array and scoring every error class per threshold: the fit's
    threshold choice reads nothing else, on every story it is fitted on (most of the matrix's time for the verdict
    otherwise).
    """
    logit = np.asarray(kernels.verdict_logit(rows.features, params))
    truth = rows.truth
    live = rows.silent & (np.arange(logit.shape[0])[:, None] >= truth.start[None, :])  # as first_alarm reads
    # A pair's first alarm at threshold th is the first window whose running peak of live log-odds exceeds th:
    # the count of windows whose peak does not (peaks never fall), one pass for the whole sweep.
    peak = np.maximum.accumulate(np.where(live & ~np.isnan(logit), logit, -np.inf), axis=0)  # NaN never alarms
    windows = peak.shape[0]
    out = []
    for th in thresholds:
        quiet = np.count_nonzero(peak <= th, axis=0)
        alarm = np.where(quiet < windows, quiet, -1)
        scored = score(alarm, truth, early)
        out.append((scored["overall"]["f1"] or 0.0, loyal_false_positive_rate(scored)))
    return out


def choose_threshold(scores: list[list[tuple[float, float | None]]], loyal_cap: float) -> int:
    """The index of the threshold with the best mean F1 over the stories' ``threshold_scores``; with a
    ``loyal_cap`` (> 0), among those whose mean share of loyal pairs ever flagged is at most the cap (the one
    flagging the fewest when none is)."""
    f1 = np.mean([[f for f, _ in story] for story in scores], axis=0)
    if not loyal_cap:
        return int(np.argmax(f1))
    loyal = np.mean([[0.0 if q is None else q for _, q in story] for story in scores], axis=0)
    within = loyal <= loyal_cap
    return int(np.argmax(np.where(within, f1, -np.inf))) if within.any() else int(np.argmin(loyal))


def fit_and_threshold(config: Config, stories: list[VerdictRows], seed: int) -> tuple[kernels.VerdictParams, int]:
    """The verdict fitted on ``stories`` and the index in ``evaluate.verdict_threshold_sweep`` of the threshold
    ``choose_threshold`` takes on them (the best mean F1, under ``evaluate.verdict_loyal_cap`` where set);
    ``seed`` draws rows."""
    e = config.evaluate
    rng = np.random.default_rng([e.verdict_seed, seed])
    x, y, w = training_set(stories, e.detection_early_windows, e.verdict_rows_per_story, rng)
    params = fit_verdict(x, y, w, e.verdict_newton_steps, e.verdict_ridge)
    scores = [threshold_scores(rows, params, e.verdict_threshold_sweep, e.detection_early_windows) for rows in stories]
    return params, choose_threshold(scores, e.verdict_loyal_cap)


def held_out_verdicts(config: Config, by_story: dict[str, VerdictRows], metrics: Any,
                      family: dict[str, list[VerdictRows]] | None = None,
                      ) -> dict[str, tuple[int, list[dict[str, Any]], kernels.VerdictParams]]:
    """Per held-out story: the model fitted on the others, every threshold's metrics on the held-out story, and
    the threshold ``choose_threshold`` takes on the others.

    Args:
      by_story: one cell row's (same window length and share) ``VerdictRows`` per story.
      metrics: ``(flags, truth) -> dict`` with an ``"f1"`` entry (``matrix.cell_metrics`` at the cell's ``early``).
      family: more draws of each story (``evaluate.verdict_family_draws``): they join the fit and the threshold's
        choice of every held-out story but their own, and are never scored.

    Returns:
      ``story -> (chosen threshold index, [metrics per threshold on the story], params)``.
    """
    family = family or {}
    out = {}
    for held in by_story:
        others = [s for s in by_story if s != held] or [held]
        training = [by_story[s] for s in others] + [r for s in others for r in family.get(s, [])]
        params, chosen = fit_and_threshold(config, training, sorted(by_story).index(held))
        points = threshold_points(by_story[held], params, config.evaluate.verdict_threshold_sweep, metrics)
        out[held] = (chosen, points, params)
    return out


def verdict_for_analysis(config: Config, by_story: dict[str, VerdictRows], window_days: float, share: float,
                         family: dict[str, list[VerdictRows]] | None = None,
                         log_windows: int | None = None) -> VerdictFit:
    """The verdict fitted on every story of ``by_story`` (and every draw of ``family``) and thresholded on them
    all: what ``verdict.json`` holds for ``fgjax analyze`` at this window length and share (no story is held out:
    it scores none), for logs of ``log_windows`` windows, the span of those it was fitted on."""
    family = family or {}
    extra = [(f"{story} (family draw {i + 1})", rows) for story in by_story for i, rows in enumerate(family.get(story, []))]
    params, chosen = fit_and_threshold(config, list(by_story.values()) + [rows for _, rows in extra], len(by_story))
    return VerdictFit(window_days=float(window_days), fade_share=float(share),
                      recent_windows=config.analysis.detector.verdict_recent_windows, params=params,
                      threshold=float(config.evaluate.verdict_threshold_sweep[chosen]),
                      stories=tuple(by_story) + tuple(name for name, _ in extra),
                      false_alarm=float(config.analysis.detector.false_alarm), log_windows=log_windows)
