"""The article's EmbeddingMLP as a ``flax.nnx`` module.

User and item embeddings are concatenated and passed through
``Dense(hidden, relu) -> Dense(1)``, giving a click logit (SPEC.md, Models).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import Array


class EmbeddingMLP(nnx.Module):
    """``logit(u, i) = w2 . relu(W1 [e_u; e_i] + b1) + b2``.

    Args:
      num_users, num_items: table sizes.
      embed_dim: width of each embedding (the article uses 32).
      hidden_dim: hidden units (the article uses 64).
      rngs: ``nnx.Rngs`` for initialization.
    """

    batch_fields = ("user", "item")
    query_fields = ("user",)
    normalization = "sigmoid"

    def __init__(self, num_users: int, num_items: int, *, embed_dim: int = 32, hidden_dim: int = 64,
                 negatives: int = 4, rngs: nnx.Rngs):
        self.num_items = num_items
        self.negatives = negatives  # uniform negatives per positive in ``loss``
        self.user_embed = nnx.Embed(num_users, embed_dim, rngs=rngs)
        self.item_embed = nnx.Embed(num_items, embed_dim, rngs=rngs)
        self.hidden = nnx.Linear(2 * embed_dim, hidden_dim, rngs=rngs)
        self.out = nnx.Linear(hidden_dim, 1, rngs=rngs)

    def __call__(self, users: Array, items: Array) -> Array:
        """``(batch,)`` user and item indices -> ``(batch,)`` logits."""
        return self.logits_from_rows(self.user_embed(users), self.item_embed(items))

    def labelled_pairs(self, batch: Mapping[str, Array], key: Array) -> tuple[Array, Array, Array]:
        """Positives ``(batch,)`` plus ``negatives`` uniform items each -> ``(users, items, labels)``, each
        ``(batch * (1 + negatives),)``: the positives first, then each user's negatives."""
        users, items = batch["user"], batch["item"]
        negs = jax.random.randint(key, (users.shape[0], self.negatives), 0, self.num_items, dtype=jnp.int32)
        all_users = jnp.concatenate([users, jnp.repeat(users, self.negatives)])
        all_items = jnp.concatenate([items, negs.reshape(-1)])
        labels = jnp.concatenate([jnp.ones(users.shape[0]), jnp.zeros(users.shape[0] * self.negatives)])
        return all_users, all_items, labels

    def logits_from_rows(self, user_rows: Array, item_rows: Array) -> Array:
        """``(n, d)`` gathered user and item embeddings -> ``(n,)`` logits (the layers after the lookup)."""
        x = jnp.concatenate([user_rows, item_rows], axis=-1)
        return self.out(jax.nn.relu(self.hidden(x)))[..., 0]

    # The model interface (fgjax.models.interface.Recommender).

    def loss(self, batch: Mapping[str, Array], key: Array) -> Array:
        """Mean binary cross-entropy of ``batch`` ``{"user", "item"}`` ``(batch,)`` positives and
        ``negatives`` uniform items per positive drawn from ``key`` -> ``()``."""
        users, items, labels = self.labelled_pairs(batch, key)
        logits = self.logits_from_rows(self.user_embed(users), self.item_embed(items))
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))

    def item_rows(self) -> Array:
        """``(items, hidden)``: each item's share of the first layer, ``W1i e_i``.

        The first layer splits as ``W1 [e_u; e_i] = W1u e_u + W1i e_i``, so each
        side is projected once (``item_rows``, ``query``); scoring many users
        reuses the rows, and no ``(users, items, 2d)`` concatenation is built.
        """
        d = self.user_embed.embedding.shape[-1]
        return self.item_embed.embedding[...] @ self.hidden.kernel[...][d:]

    def query(self, inputs) -> Array:
        """``{"user": (n,)}`` -> ``(n, hidden)`` the user's share of the first layer plus its bias."""
        d = self.user_embed.embedding.shape[-1]
        return self.user_embed(inputs["user"]) @ self.hidden.kernel[...][:d] + self.hidden.bias[...]

    def score(self, query: Array, rows: Array) -> Array:
        """``(n, hidden)`` queries and ``(1 | n, C, hidden)`` item rows -> ``(n, C)`` logits."""
        hidden = jax.nn.relu(query[:, None, :] + rows)
        return hidden @ self.out.kernel[...][:, 0] + self.out.bias[...][0]

    def score_all_items(self, users: Array) -> Array:
        """``(users,)`` indices -> ``(users, items)`` logits against the whole catalog."""
        return self.score(self.query({"user": users}), self.item_rows()[None])
