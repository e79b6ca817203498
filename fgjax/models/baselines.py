"""The baselines every paper reports, on the one model interface: BPR matrix factorization and ItemKNN.

- ``BPRMF``: ``score(u, i) = e_u . e_i``, trained in the one loop on the
  training (user, item) pairs with the BPR loss ``-log sigmoid(x_ui - x_uj)``
  against uniform negatives ``j`` (Rendle et al. 2009), plus an optional L2
  term on the batch's embeddings.
- ``ItemKNN``: cosine similarity of items over the training users (binary
  user x item matrix ``R``): ``s(i, j) = |U_i & U_j| / (sqrt|U_i| sqrt|U_j| + shrink)``,
  ``s(i, i) = 0``; each candidate ``i`` keeps its ``K`` most similar items
  (ties to the lower index; zeros dropped) and scores
  ``score(u, i) = sum_{j in H(u)} s(i, j) [j among i's K]`` over the user's
  history ``H(u)``: the whole history (``history=0``, RecBole's ItemKNN) or
  its last n items (session-scale recency). Closed form: ``fit`` computes
  the neighbours in one pass; the one loop calls it instead of gradient steps
  (``closed_form``), then validates and checkpoints the model like any other.

ItemKNN's fit builds a dense ``(users, items)`` matrix and its queries are
``(n, items)`` history indicators: it is sized for evaluation catalogs
(MovieLens: thousands of items), not for millions of items. Scoring gathers
each candidate's K neighbours (``(n, C, K)``), never an ``(items, items)`` matrix.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array


def _dot_scores(query: Array, rows: Array) -> Array:
    """``(n, h)`` queries and ``(1 | n, C, h)`` rows -> ``(n, C)`` dot products (no ``(n, C, h)`` temporary)."""
    if rows.shape[0] == 1:
        return query @ rows[0].T
    return jnp.einsum("nh,nch->nc", query, rows)


class BPRMF(nnx.Module):
    """BPR matrix factorization: ``logit(u, i) = e_u . e_i``.

    Args:
      num_users, num_items: table sizes.
      dim: embedding width.
      negatives: uniform negative items per positive in ``loss``.
      l2: weight of the batch's mean squared embedding norms (users, positives, negatives).
      rngs: ``nnx.Rngs`` for initialization (Xavier normal, as RecBole).
    """

    batch_fields = ("user", "item")
    query_fields = ("user",)
    normalization = "sigmoid"

    def __init__(self, num_users: int, num_items: int, *, dim: int = 64, negatives: int = 1, l2: float = 0.0,
                 rngs: nnx.Rngs):
        self.num_items = num_items
        self.negatives = negatives
        self.l2 = l2
        init = nnx.initializers.xavier_normal()
        self.user_embed = nnx.Embed(num_users, dim, embedding_init=init, rngs=rngs)
        self.item_embed = nnx.Embed(num_items, dim, embedding_init=init, rngs=rngs)

    def loss(self, batch: Mapping[str, Array], key: Array) -> Array:
        """Mean ``-log sigmoid(x_ui - x_uj)`` over ``batch`` ``{"user", "item"}`` ``(B,)`` positives and
        ``negatives`` uniform items ``j`` per positive drawn from ``key`` (``(B, negatives)``), plus L2 -> ``()``."""
        users, items = batch["user"], batch["item"]
        negs = jax.random.randint(key, (users.shape[0], self.negatives), 0, self.num_items, dtype=jnp.int32)
        u, pos, neg = self.user_embed(users), self.item_embed(items), self.item_embed(negs)
        margin = jnp.sum(u * pos, axis=-1)[:, None] - jnp.einsum("bd,bnd->bn", u, neg)
        loss = -jnp.mean(jax.nn.log_sigmoid(margin))
        if self.l2:
            loss = loss + self.l2 * (jnp.mean(jnp.sum(u * u, -1)) + jnp.mean(jnp.sum(pos * pos, -1))
                                     + jnp.mean(jnp.sum(neg * neg, -1)))
        return loss

    def item_rows(self) -> Array:
        """``(items, dim)`` item embeddings."""
        return self.item_embed.embedding[...]

    def query(self, inputs) -> Array:
        """``{"user": (n,)}`` -> ``(n, dim)`` user embeddings."""
        return self.user_embed(inputs["user"])

    def score(self, query: Array, rows: Array) -> Array:
        """``(n, dim)`` queries and ``(1 | n, C, dim)`` item rows -> ``(n, C)`` logits."""
        return _dot_scores(query, rows)


def cosine_neighbors(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, k: int, *,
                     shrink: float = 0.0, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``k`` most similar items by cosine over the users who had them.

    Args:
      users, items: ``(pairs,)`` training (user, item) pairs (repeats count once).
      k: neighbours kept per item (at most ``num_items``).
      shrink: added to the cosine's denominator.
      block: items per device call (bounds the ``(block, items)`` temporary).

    Returns:
      ``(neighbors, weights)``: ``(items, k)`` int32 item indices (``num_items``
      where an item has fewer than k items of positive similarity) and float32
      similarities (0 there), most similar first, ties to the lower index.
    """
    R = np.zeros((num_users, num_items), np.float32)
    R[np.asarray(users), np.asarray(items)] = 1.0
    norms = jnp.sqrt(jnp.asarray(R.sum(axis=0)))
    R = jnp.asarray(R)
    block = min(block, num_items)

    @jax.jit
    def one_block(start):
        ids = start + jnp.arange(block)
        safe = jnp.minimum(ids, num_items - 1)
        co = R[:, safe].T @ R  # (block, items) users in common
        denominator = norms[safe][:, None] * norms[None, :] + shrink
        sim = jnp.where(denominator > 0, co / jnp.where(denominator > 0, denominator, 1.0), 0.0)
        sim = jnp.where(jnp.arange(num_items)[None, :] == safe[:, None], 0.0, sim)  # not its own neighbour
        values, index = jax.lax.top_k(sim, k)
        keep = values > 0
        return jnp.where(keep, index, num_items).astype(jnp.int32), jnp.where(keep, values, 0.0)

    parts = [jax.device_get(one_block(jnp.int32(start))) for start in range(0, num_items, block)]
    neighbors = np.concatenate([p[0] for p in parts])[:num_items]
    weights = np.concatenate([p[1] for p in parts])[:num_items]
    return neighbors, weights.astype(np.float32)


class ItemKNN(nnx.Module):
    """Cosine item-item neighbours scored from the user's history (module docstring).

    Args:
      num_items: catalog size; index ``num_items`` pads histories and neighbour lists.
      neighbors: K, most similar items kept per candidate (capped at the catalog).
      shrink: added to the cosine's denominator.
      history: score from the user's last n items (0: the whole history).

    Params: ``neighbors`` ``(items, K)`` int32 and ``weights`` ``(items, K)`` float32 (``fit``).
    """

    batch_fields = ("user", "item")
    query_fields = ("items",)
    normalization = "none"
    #: Fitted in one pass (``fit``), not by gradient steps: the one loop calls ``fit`` instead.
    closed_form = True

    def __init__(self, num_items: int, *, neighbors: int = 100, shrink: float = 0.0, history: int = 0,
                 rngs: nnx.Rngs | None = None):
        self.num_items = num_items
        self.shrink = shrink
        self.history = history
        # A history of every item the user had (a user has at most num_items distinct items).
        self.max_len = history if history > 0 else num_items
        k = min(neighbors, num_items)
        self.neighbors = nnx.Param(jnp.full((num_items, k), num_items, jnp.int32))
        self.weights = nnx.Param(jnp.zeros((num_items, k), jnp.float32))

    def fit(self, batch: Mapping[str, np.ndarray], num_users: int) -> None:
        """Set the neighbours from every training pair ``batch`` ``{"user", "item"}`` ``(pairs,)``."""
        neighbors, weights = cosine_neighbors(batch["user"], batch["item"], num_users, self.num_items,
                                              self.neighbors.shape[1], shrink=self.shrink)
        self.neighbors[...] = jnp.asarray(neighbors)
        self.weights[...] = jnp.asarray(weights)

    # The model interface (fgjax.models.interface.Recommender).

    def loss(self, batch: Mapping[str, Array], key: Array) -> Array:
        """No gradient objective (closed form, ``fit``): ``0``."""
        return jnp.zeros((), jnp.float32)

    def item_rows(self) -> Array:
        """``(items, 2K)`` float32: candidate i's K neighbour indices (exact in float32 below 2**24 items;
        ``num_items`` = none), then their similarities."""
        return jnp.concatenate([self.neighbors[...].astype(jnp.float32), self.weights[...]], axis=1)

    def query(self, inputs) -> Array:
        """``{"items": (n, L)}`` the user's last items (padding ``num_items``) -> ``(n, items)`` indicator of the
        items used: the last ``history`` of them (all if 0)."""
        items = inputs["items"]
        if self.history > 0:
            items = items[:, -self.history :]
        n = items.shape[0]
        hot = jnp.zeros((n, self.num_items + 1), jnp.float32).at[jnp.arange(n)[:, None], items].set(1.0)
        return hot[:, : self.num_items]

    def score(self, query: Array, rows: Array) -> Array:
        """``(n, items)`` history indicators and ``(1 | n, C, 2K)`` rows -> ``(n, C)``: the sum of each candidate's
        neighbour similarities over the neighbours in the history."""
        k = rows.shape[-1] // 2
        neighbors, weights = rows[..., :k].astype(jnp.int32), rows[..., k:]
        padded = jnp.pad(query, ((0, 0), (0, 1)))  # column num_items: no neighbour, never in a history
        if rows.shape[0] == 1:
            had = padded[:, neighbors[0]]  # (n, C, K)
        else:
            n, c = neighbors.shape[:2]
            had = jnp.take_along_axis(padded, neighbors.reshape(n, c * k), axis=1).reshape(n, c, k)
        return jnp.sum(had * weights, axis=-1)
