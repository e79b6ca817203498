"""Model quality under a temporal protocol, with and without forgetting-aware re-ranking.

Each model gives a dense ``(users, items)`` relevance matrix for a stage
(popularity counts, EmbeddingMLP and BPR click probabilities, the sequence
models' next-item probabilities, ItemKNN's summed similarities); the re-ranking multiplies it by the user's
forgetting weight of each item's interest raised to a ``strength``:

    score(u, i) = relevance(u, i) * m(u, k(i)) ** strength

with ``m`` from ``fgjax.ranking.strategy.forgetting_weights`` (p(k|u,t) at the
analysis's alpha and half-life, times the interest state's weight, floored),
applied by ``fgjax.ranking.strategy.interest_weighted`` with the items'
columns from ``item_columns`` (items without an interest read column K).
Relevance comes from the model interface (``dense_scores``), so every model
ranks the same way.
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
from fgjax.config import Config
from fgjax.data.protocol import Stage
from fgjax.data.reader import EventLog
from fgjax.data.sequences import Sequences
from fgjax.evaluation.metrics import metrics_at
from fgjax.ranking.strategy import forgetting_weights, interest_weighted, item_columns
from fgjax.ranking.topk import query_inputs


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
def _relevance(graphdef, params, inputs):
    """``(n, items)`` relevance through the model interface: logits normalized as the model says."""
    model = nnx.merge(graphdef, params)
    logits = model.score(model.query(inputs), model.item_rows()[None])
    if model.normalization == "none":
        return logits
    return jax.nn.sigmoid(logits) if model.normalization == "sigmoid" else jax.nn.softmax(logits, axis=-1)


def dense_scores(graphdef, params, inputs: dict[str, np.ndarray], *, chunk: int = 256) -> np.ndarray:
    """``(n, items)`` relevance of every item for ``n`` queries (``inputs``: the model's query arrays, ``(n, ...)``).

    Click probabilities (sigmoid models) or next-item probabilities (softmax
    models); computed in fixed chunks (the last one padded) so one compilation serves all.
    """
    n = len(next(iter(inputs.values())))
    parts = []
    for start in range(0, n, chunk):
        part = {name: np.asarray(v[start : start + chunk]) for name, v in inputs.items()}
        m = len(next(iter(part.values())))
        padded = {name: np.concatenate([v, np.repeat(v[:1], chunk - m, axis=0)]) for name, v in part.items()}
        parts.append(np.asarray(_relevance(graphdef, params, padded))[:m])
    return np.concatenate(parts)


def mlp_scores(graphdef, params, users: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """``(n, items)`` EmbeddingMLP click probabilities."""
    return dense_scores(graphdef, params, {"user": np.asarray(users, np.int32)}, chunk=chunk)


def sequence_scores(graphdef, params, sequences: Sequences, users: np.ndarray, num_items: int, *,
                    chunk: int = 256) -> np.ndarray:
    """``(n, items)`` next-item probabilities from each user's last ``max_len`` items (forgetting_sasrec: and
    their interest ages: ``sequences`` built with the item categories, else ``DataError``)."""
    return dense_scores(graphdef, params, query_inputs(graphdef, params, users, sequences, num_items=num_items),
                        chunk=chunk)


def stage_forgetting(config: Config, log: EventLog, stage: Stage, half_life_windows: float) -> ForgettingResult:
    """The forgetting analysis of what the stage knows, each user read at its own judging time."""
    analysis = dataclasses.replace(config.analysis, half_life_windows=half_life_windows)
    return analyze(dataclasses.replace(config, analysis=analysis), log, events=stage.known_events,
                   snapshot_before=stage.at_time, record_changes=False, progress=False)


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
        scores = interest_weighted(scores, user_interest, item_column, strength)
    return kernels.masked_top_k(scores, k, exclude=exclude)[1]


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
    columns = jnp.asarray(item_columns(log.item_category, len(log.categories)))
    # Copied to the device once: every grid point re-ranks the same (users, items) scores and mask.
    scores, exclude = jnp.asarray(scores, jnp.float32), jnp.asarray(exclude)
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
