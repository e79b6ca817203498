"""Evaluation under the temporal leave-last-out protocol, full ranking.

Every method ranks the whole catalog for each test user with the items seen
before the test item masked, and is scored with the same metric kernels.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from fgjax import kernels
from fgjax.config import Config
from fgjax.data.sequences import Sequences
from fgjax.data.split import ItemSets, TemporalSplit
from fgjax.ranking.strategy import ForgettingWeights
from fgjax.ranking.topk import query_inputs, rank_items


def metrics_at(top_items: np.ndarray, targets: np.ndarray, ks: list[int]) -> dict[str, float]:
    """``{"ndcg@10": ..., ...}``: per-user metrics averaged over users with targets.

    Args:
      top_items: ``(users, >= max(ks))`` ranked item indices.
      targets: ``(users, T)`` relevant items, -1 padded.
    """
    out: dict[str, float] = {}
    for k in ks:
        means = kernels.mean_metrics(kernels.ranking_metrics(top_items, targets, k), targets)
        out.update({f"{name}@{k}": float(value) for name, value in means.items()})
    return out


def per_user_ndcg(top_items: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """``(users,)`` float64 NDCG@k of each user (the values ``metrics_at`` averages)."""
    return np.asarray(kernels.ranking_metrics(top_items, targets, k)["ndcg"], np.float64)


def paired_comparison(treatment: np.ndarray, baseline: np.ndarray, *, seed: int = 0, resamples: int = 2000,
                      confidence: float = 0.95) -> dict[str, float | int]:
    """Paired comparison of two methods scored on the same users (``(users,)`` each).

    Returns the mean difference ``treatment - baseline``, a percentile bootstrap
    interval of it (users resampled with replacement, ``resamples`` times, from
    ``numpy.random.default_rng(seed)``), the two-sided Wilcoxon signed-rank p-value
    (``scipy.stats.wilcoxon``, zero differences dropped; 1.0 when every user ties)
    and how many users each method wins. Most users tie on sparse test targets
    (both miss), which is why the counts are reported beside the p-value.
    """
    from scipy import stats

    diff = np.asarray(treatment, np.float64) - np.asarray(baseline, np.float64)
    n = len(diff)
    if n == 0:
        raise ValueError("paired_comparison: no users")
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = diff[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    nonzero = diff[diff != 0]
    p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    return {"mean_difference": float(diff.mean()), "ci_low": float(low), "ci_high": float(high),
            "confidence": confidence, "wilcoxon_p": p, "users": n, "better": int((diff > 0).sum()),
            "worse": int((diff < 0).sum()), "tied": int((diff == 0).sum()), "resamples": resamples, "seed": seed}


def popularity_top_k(popularity: np.ndarray, users: np.ndarray, seen: ItemSets, k: int, *, chunk: int = 1024) -> np.ndarray:
    """``(users, k)`` most popular items per user, the user's seen items excluded."""
    num_items = len(popularity)
    out = np.empty((len(users), k), np.int32)
    scores = jnp.asarray(popularity, jnp.float32)
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        exclude = np.zeros((len(part), num_items + 1), bool)
        rows = seen.padded(part, pad_value=num_items)
        exclude[np.arange(len(part))[:, None], rows] = True
        _, top = kernels.masked_top_k(jnp.broadcast_to(scores, (len(part), num_items)), k, exclude=exclude[:, :num_items])
        out[start : start + len(part)] = np.asarray(top)
    return out


def item_popularity(split: TemporalSplit, num_items: int) -> np.ndarray:
    """``(items,)`` number of distinct training users per item."""
    return np.bincount(split.train_items.items, minlength=num_items).astype(np.float32)


def evaluate(
    config: Config,
    graphdef,
    params,
    split: TemporalSplit,
    num_items: int,
    forgetting: ForgettingWeights | None,
    *,
    history: Sequences | None = None,
) -> dict[str, Any]:
    """Metrics of popularity, the model, and the model with forgetting re-ranking on the test targets.

    Args:
      history: for sequence models, each user's items before its test item
        (their queries); None for models that query by user index.
    """
    ks = sorted(config.evaluate.ks)
    k = min(max(ks), num_items)
    users = np.flatnonzero(split.test_target >= 0).astype(np.int32)
    targets = split.test_target[users][:, None]
    seen = split.history_items
    results: dict[str, dict[str, float]] = {}
    tops: dict[str, np.ndarray] = {"popularity": popularity_top_k(item_popularity(split, num_items), users, seen, k)}
    inputs = query_inputs(graphdef, params, users, history, num_items=num_items)
    rank = functools.partial(rank_items, graphdef, params, users, k=k, num_items=num_items, inputs=inputs, seen=seen,
                             chunk=config.recommend.user_chunk, memory_budget_mb=config.recommend.score_memory_mb)
    model = config.model.name
    tops[model] = rank()[1]
    if forgetting is not None:
        tops[f"{model}+forgetting"] = rank(forgetting=forgetting)[1]
    results = {name: metrics_at(top, targets, ks) for name, top in tops.items()}
    # Is a difference more than noise? Paired over the same test users, at the first cut-off.
    ndcg = {name: per_user_ndcg(top, targets, ks[0]) for name, top in tops.items()}
    pairs = [(model, "popularity")] + ([(f"{model}+forgetting", model)] if forgetting is not None else [])
    comparisons = {f"{a} vs {b}": {"metric": f"ndcg@{ks[0]}",
                                   **paired_comparison(ndcg[a], ndcg[b], seed=config.evaluate.bootstrap_seed,
                                                       resamples=config.evaluate.bootstrap_resamples)}
                   for a, b in pairs}
    return {"protocol": config.evaluate.protocol, "num_test_users": int(len(users)), "ks": ks, "results": results,
            "comparisons": comparisons}
