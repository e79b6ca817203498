"""Top-K selection of item scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike


def masked_top_k(scores: ArrayLike, k: int, *, exclude: ArrayLike | None = None) -> tuple[Array, Array]:
    """The ``k`` best items per row, skipping excluded ones.

    Args:
      scores: ``(..., items)`` float scores.
      k: items to keep, ``1 <= k <= items``.
      exclude: optional ``(..., items)`` bool, True for items that must not be
        returned (e.g. already seen); they score ``-inf``.

    Returns:
      ``(values, indices)``, each ``(..., k)``, best first; ties go to the
      lower index. Rows with fewer than ``k`` allowed items end with ``-inf``.
    """
    scores = jnp.asarray(scores)
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in [1, {scores.shape[-1]}], got {k}")
    if exclude is not None:
        scores = jnp.where(jnp.asarray(exclude, bool), -jnp.inf, scores)
    return jax.lax.top_k(scores, k)
