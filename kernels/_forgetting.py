"""Forgetting degree, per-interest forgetting and interest probabilities.

Pure ``jax.numpy``; every function takes any leading batch shape ``(...)``
followed by the interest axis ``K`` and is jit- and vmap-friendly.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

NORMALIZE_CHOICES = ("current", "max")
MODE_CHOICES = ("decline", "change")


def _norm(x: Array) -> Array:
    # sqrt(sum x^2) rather than jnp.linalg.norm: one fused reduction, and its
    # gradient at 0 is not needed here.
    return jnp.sqrt(jnp.sum(x * x, axis=-1))


def forgetting_degree(
    cur: ArrayLike,
    prev: ArrayLike,
    *,
    normalize: str = "current",
    eps: float = 1e-8,
    cap: float | None = None,
) -> Array:
    """The seed's forgetting degree ``F = ||I_t - I_{t-1}|| / ||I_t||``.

    Args:
      cur: ``(..., K)`` interest vectors at window t.
      prev: ``(..., K)`` interest vectors at window t-1.
      normalize: ``"current"`` divides by ``||I_t||`` (the seed's formula, in
        ``[0, inf]``); ``"max"`` divides by ``max(||I_t||, ||I_{t-1}||)``,
        bounded in ``[0, 2]``.
      eps: norms at or below ``eps`` count as zero.
      cap: if given, F is clipped to ``[0, cap]`` (a finite stand-in for inf).

    Returns:
      ``(...)`` F. Both vectors zero -> 0. ``I_t = 0`` but ``I_{t-1} != 0``
      (everything forgotten) -> ``+inf`` under ``"current"`` (or ``cap``);
      never NaN for finite inputs below ~1e18 in magnitude (float32 squares
      overflow past that; interest states, sums of decayed event weights,
      stay many orders of magnitude below, so no per-row rescaling pass is
      spent on it).
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
    cur = jnp.asarray(cur)
    prev = jnp.asarray(prev)
    diff = _norm(cur - prev)
    denom = _norm(cur)
    if normalize == "max":
        denom = jnp.maximum(denom, _norm(prev))
    safe = jnp.where(denom > eps, denom, 1.0)
    degree = jnp.where(denom > eps, diff / safe, jnp.where(diff > eps, jnp.inf, 0.0))
    if normalize == "max":
        # ||a - b|| <= 2 max(||a||, ||b||) exactly, but float rounding can
        # land one ulp above 2 (nearly opposite vectors); keep the contract.
        degree = jnp.minimum(degree, 2.0)
    if cap is not None:
        degree = jnp.minimum(degree, cap)
    return degree


def interest_forgetting(
    cur: ArrayLike,
    prev: ArrayLike,
    *,
    mode: str = "decline",
    eps: float = 1e-8,
) -> Array:
    """Per-interest forgetting ``f_k``, normalized by ``||I_t||``.

    ``mode="decline"``: ``f_k = relu(I_{t-1,k} - I_{t,k}) / ||I_t||`` (only
    losses count). ``mode="change"``: ``f_k = |I_{t-1,k} - I_{t,k}| / ||I_t||``.

    Args:
      cur, prev: ``(..., K)``.

    Returns:
      ``(..., K)`` f >= 0. Where ``||I_t|| <= eps``, an interest that changed
      gets ``+inf`` and one that did not gets 0; never NaN.
    """
    if mode not in MODE_CHOICES:
        raise ValueError(f"mode must be one of {MODE_CHOICES}, got {mode!r}")
    cur = jnp.asarray(cur)
    prev = jnp.asarray(prev)
    delta = prev - cur
    change = jnp.maximum(delta, 0.0) if mode == "decline" else jnp.abs(delta)
    denom = _norm(cur)[..., None]
    safe = jnp.where(denom > eps, denom, 1.0)
    return jnp.where(denom > eps, change / safe, jnp.where(change > 0, jnp.inf, 0.0))


def interest_probs(
    f: ArrayLike,
    alpha: ArrayLike,
    *,
    mask: ArrayLike | None = None,
) -> Array:
    """``p(k) = exp(-alpha f_k) / sum_j exp(-alpha f_j)``, a stable softmax.

    Args:
      f: ``(..., K)`` per-interest forgetting, ``>= 0``, may be ``+inf``.
      alpha: scalar or ``(...)``-broadcastable, ``>= 0``; any size (1e6 is fine).
      mask: optional ``(..., K)`` bool, True for interests the user ever had;
        masked-out interests get p = 0.

    Returns:
      ``(..., K)`` probabilities. Rows sum to 1, except rows whose mask is all
      False (empty history), which are all 0. ``f_k = inf`` gets p = 0 when
      alpha > 0; if every allowed f is inf the row is uniform over the mask
      (nothing distinguishes the interests).
    """
    f = jnp.asarray(f)
    alpha = jnp.asarray(alpha, dtype=f.dtype if jnp.issubdtype(f.dtype, jnp.floating) else jnp.float32)
    if alpha.ndim:
        alpha = alpha[..., None]
    allowed = jnp.ones(f.shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), f.shape)
    # alpha * inf would be NaN at alpha = 0; an infinite f is simply the most
    # forgotten, so it gets the most negative logit when alpha > 0.
    logits = jnp.where(jnp.isinf(f), jnp.where(alpha > 0, -jnp.inf, 0.0), -alpha * jnp.where(jnp.isinf(f), 0.0, f))
    logits = jnp.where(allowed, logits, -jnp.inf)
    top = jnp.max(logits, axis=-1, keepdims=True)
    all_inf = jnp.isneginf(top)
    # All allowed logits -inf: fall back to uniform over the allowed set.
    logits = jnp.where(all_inf, jnp.where(allowed, 0.0, -jnp.inf), logits)
    top = jnp.where(all_inf, 0.0, top)
    weights = jnp.where(allowed, jnp.exp(logits - top), 0.0)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)


def recommendation_score(item_weights: ArrayLike, probs: ArrayLike) -> Array:
    """The seed's aggregate ``R(u, t) = sum_i w_i p(i | u, t)``.

    Args:
      item_weights: ``(..., K)`` or ``(K,)`` weights.
      probs: ``(..., K)`` interest probabilities.

    Returns:
      ``(...)`` R.
    """
    return jnp.sum(jnp.asarray(item_weights) * jnp.asarray(probs), axis=-1)
