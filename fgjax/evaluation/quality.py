"""Model quality under a temporal protocol, with and without forgetting-aware re-ranking.

Each model gives a dense ``(users, items)`` relevance matrix for a stage
(popularity counts, EmbeddingMLP click probabilities, the sequence model's
next-item probabilities); the re-ranking multiplies it by the user's
forgetting weight of each item's interest raised to a ``strength``:

    score(u, i) = relevance(u, i) * m(u, k(i)) ** strength

with ``m`` from ``fgjax.ranking.strategy.forgetting_weights`` (p(k|u,t) at the
analysis's alpha and half-life, times the interest state's weight, floored).
Strength 1 is SPEC.md's score; strength 0 is the model alone. Alpha,
half-life and strength are chosen on the validation stage only; the test
stage is then scored once with the chosen values.

Dense matrices suit catalogs like MovieLens (thousands of items); serving at
scale ranks in chunks (``fgjax.ranking.topk.rank_items``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fgjax import kernels
from fgjax.analysis import ForgettingResult, analyze
from fgjax.ranking.strategy import forgetting_weights
from fgjax.config import Config
from fgjax.data.reader import EventLog
from fgjax.data.sequences import Sequences
from fgjax.evaluation.metrics import metrics_at
from fgjax.data.protocol import Stage
from fgjax.data.sequences import relative_times


def exclusion_matrix(stage: Stage, num_items: int) -> np.ndarray:
    """``(n, items)`` bool: the stage's seen items of each judged user."""
    seen = stage.seen
    out = np.zeros((len(stage.users), num_items), bool)
    counts = seen.counts()[stage.users]
    rows = np.repeat(np.arange(len(stage.users)), counts)
    cols = np.concatenate([seen.items[seen.indptr[u] : seen.indptr[u + 1]] for u in stage.users]) if len(rows) else []
    out[rows, cols] = True
    return out


def popularity_scores(train_items, users: np.ndarray, num_items: int) -> np.ndarray:
    """``(n, items)`` distinct training users per item, the same row for everybody."""
    counts = np.bincount(train_items.items, minlength=num_items).astype(np.float32)
    return np.broadcast_to(counts, (len(users), num_items))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _mlp_probs(graphdef, params, users):
    return jax.nn.sigmoid(nnx.merge(graphdef, params).score_all_items(users))


def mlp_scores(graphdef, params, users: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """``(n, items)`` EmbeddingMLP click probabilities."""
    parts = []
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        padded = np.concatenate([part, np.full(chunk - len(part), part[0], part.dtype)])
        parts.append(np.asarray(_mlp_probs(graphdef, params, jnp.asarray(padded, jnp.int32)))[: len(part)])
    return np.concatenate(parts)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sequence_probs(graphdef, params, items, times):
    return jax.nn.softmax(nnx.merge(graphdef, params).score_all_items(items, times), axis=-1)


def sequence_scores(graphdef, params, sequences: Sequences, users: np.ndarray, num_items: int, *,
                    chunk: int = 256) -> np.ndarray:
    """``(n, items)`` next-item probabilities from each user's last ``max_len`` items."""
    max_len = nnx.merge(graphdef, params).max_len
    parts = []
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        padded = np.concatenate([part, np.full(chunk - len(part), part[0], part.dtype)])
        items, times = sequences.last(padded, max_len, pad_item=num_items)
        probs = _sequence_probs(graphdef, params, jnp.asarray(items), jnp.asarray(relative_times(times, items, num_items)))
        parts.append(np.asarray(probs)[: len(part)])
    return np.concatenate(parts)


def stage_forgetting(config: Config, log: EventLog, stage: Stage, half_life_windows: float) -> ForgettingResult:
    """The forgetting analysis of what the stage knows, each user read at its own judging time."""
    analysis = dataclasses.replace(config.analysis, half_life_windows=half_life_windows)
    return analyze(dataclasses.replace(config, analysis=analysis), log, events=stage.known_events,
                   snapshot_before=stage.at_time, progress=False)


def interest_weights(result: ForgettingResult, config: Config, log: EventLog, alpha: float, *,
                     state_weights: bool = True) -> np.ndarray:
    """``(users, K + 1)`` m(u, k) at ``alpha`` (p recomputed from the result's f).

    ``state_weights=False`` is the ablation without the interest states (every state weighs 1).
    """
    p = np.asarray(kernels.interest_probs(result.f, alpha, mask=result.ever))
    recommend = config.recommend
    if not state_weights:
        recommend = dataclasses.replace(recommend, state_weights={name: 1.0 for name in recommend.state_weights})
    weights = forgetting_weights(dataclasses.replace(result, p=p), dataclasses.replace(config, recommend=recommend), log)
    return weights.user_interest


@functools.partial(jax.jit, static_argnames=("k",))
def _rerank(scores, exclude, user_interest, item_column, strength, *, k):
    if user_interest is not None:
        scores = scores * jnp.take(user_interest, item_column, axis=1) ** strength
    return kernels.masked_top_k(scores, k, exclude=exclude)[1]


def item_columns(log: EventLog, num_interests: int) -> np.ndarray:
    """``(items,)`` column of each item in ``m``: its interest, or K (neutral) without one."""
    category = log.item_category if log.item_category is not None else np.full(log.num_items, -1)
    return np.where(category >= 0, category, num_interests).astype(np.int32)


def top_k(scores: np.ndarray, exclude: np.ndarray, k: int, user_interest: np.ndarray | None = None,
          item_column: np.ndarray | None = None, strength: float = 1.0) -> np.ndarray:
    """``(n, k)`` best items per row of ``scores`` (re-ranked when ``user_interest`` ``(n, K + 1)`` is given)."""
    ui = None if user_interest is None else jnp.asarray(user_interest, jnp.float32)
    col = None if item_column is None else jnp.asarray(item_column)
    return np.asarray(_rerank(jnp.asarray(scores, jnp.float32), jnp.asarray(exclude), ui, col,
                              jnp.float32(strength), k=min(k, scores.shape[1])))


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The validation sweep of one model: every grid point and the best."""

    rows: list[dict[str, float]]  # half_life, alpha, strength, val ndcg@10
    best: dict[str, float]


def sweep_forgetting(config: Config, log: EventLog, scores: np.ndarray, exclude: np.ndarray, stage: Stage,
                     analyses: dict[float, ForgettingResult], *, metric: str = "ndcg@10") -> SweepResult:
    """Grid over ``config.quality`` (alpha x half-life x strength) on a validation stage; the best by ``metric``.

    Ties keep the earlier grid point; strength 0 (forgetting off) is tried first.
    """
    q = config.quality
    k = int(metric.split("@")[1])
    columns = item_columns(log, analyses[next(iter(analyses))].f.shape[1])
    base = metrics_at(top_k(scores, exclude, k), stage.targets, [k])[metric]
    rows = [{"half_life_windows": math.nan, "alpha": math.nan, "strength": 0.0, metric: base}]
    for hl, alpha in itertools.product(q.sweep_half_life_windows, q.sweep_alpha):
        weights = interest_weights(analyses[hl], config, log, alpha)[stage.users]
        for strength in q.sweep_strength:
            if strength == 0.0:
                continue
            top = top_k(scores, exclude, k, weights, columns, strength)
            rows.append({"half_life_windows": hl, "alpha": alpha, "strength": strength,
                         metric: metrics_at(top, stage.targets, [k])[metric]})
    best = max(rows, key=lambda r: r[metric])  # first maximum: off wins ties
    return SweepResult(rows, best)


def evaluate_stage(scores: np.ndarray, exclude: np.ndarray, stage: Stage, ks: list[int], *,
                   user_interest: np.ndarray | None = None, item_column: np.ndarray | None = None,
                   strength: float = 1.0) -> dict[str, float]:
    """Every metric at every ``ks`` of one stage."""
    ui = None if user_interest is None else user_interest[stage.users]
    return metrics_at(top_k(scores, exclude, max(ks), ui, item_column, strength), stage.targets, sorted(ks))


def target_interest_states(result: ForgettingResult, log: EventLog, stage: Stage) -> dict[str, Any]:
    """Why re-ranking helps or not: the state of each target's interest, and its rank by p, when judged.

    Returns shares of targets by the interest state of the target's item
    (``none`` = an interest the user never had, ``no_category``), and the
    share whose interest is the user's most probable one.
    """
    rows = np.repeat(stage.users, (stage.targets >= 0).sum(axis=1))
    items = stage.targets[stage.targets >= 0]
    category = log.item_category[items] if log.item_category is not None else np.full(len(items), -1)
    has = category >= 0
    states = np.full(len(items), "no_category", object)
    states[has] = np.asarray(kernels.STATE_NAMES)[result.state[rows[has], category[has]]]
    names, counts = np.unique(states, return_counts=True)
    top_interest = np.argmax(np.where(result.ever, result.p, -1.0), axis=1)
    return {
        "targets": int(len(items)),
        "share_by_state": {str(n): round(float(c) / len(items), 4) for n, c in zip(names, counts)},
        "share_in_top_interest": round(float(np.mean(has & (category == top_interest[rows]))), 4),
    }
