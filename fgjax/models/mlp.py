"""The article's EmbeddingMLP as a ``flax.nnx`` module.

User and item embeddings are concatenated and passed through
``Dense(hidden, relu) -> Dense(1)``, giving a click logit (SPEC.md, Models).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

Params = dict[str, Any]  # a pure nested dict of arrays (nnx State.to_pure_dict())


class EmbeddingMLP(nnx.Module):
    """``logit(u, i) = w2 . relu(W1 [e_u; e_i] + b1) + b2``.

    Args:
      num_users, num_items: table sizes.
      embed_dim: width of each embedding (the article uses 32).
      hidden_dim: hidden units (the article uses 64).
      rngs: ``nnx.Rngs`` for initialization.
    """

    query_fields = ("user",)
    normalization = "sigmoid"

    def __init__(self, num_users: int, num_items: int, *, embed_dim: int = 32, hidden_dim: int = 64, rngs: nnx.Rngs):
        self.user_embed = nnx.Embed(num_users, embed_dim, rngs=rngs)
        self.item_embed = nnx.Embed(num_items, embed_dim, rngs=rngs)
        self.hidden = nnx.Linear(2 * embed_dim, hidden_dim, rngs=rngs)
        self.out = nnx.Linear(hidden_dim, 1, rngs=rngs)

    def __call__(self, users: Array, items: Array) -> Array:
        """``(batch,)`` user and item indices -> ``(batch,)`` logits."""
        x = jnp.concatenate([self.user_embed(users), self.item_embed(items)], axis=-1)
        return self.out(jax.nn.relu(self.hidden(x)))[..., 0]

    def project_items(self) -> Array:
        """``(items, hidden)``: each item's share of the first layer, ``W1i e_i``.

        The first layer splits as ``W1 [e_u; e_i] = W1u e_u + W1i e_i``, so each
        side is projected once; scoring many users reuses this.
        """
        d = self.user_embed.embedding.shape[-1]
        return self.item_embed.embedding[...] @ self.hidden.kernel[...][d:]

    def score_projected(self, users: Array, item_part: Array) -> Array:
        """``(users,)`` indices and ``project_items()`` -> ``(users, items)`` logits.

        Only the (users, items) pairs' add, relu and output layer remain; no
        ``(users, items, 2d)`` concatenation is built.
        """
        d = self.user_embed.embedding.shape[-1]
        user_part = self.user_embed(users) @ self.hidden.kernel[...][:d] + self.hidden.bias[...]  # (users, hidden)
        hidden = jax.nn.relu(user_part[:, None, :] + item_part[None, :, :])
        return hidden @ self.out.kernel[...][:, 0] + self.out.bias[...][0]

    def score_item_rows(self, users: Array, item_rows: Array) -> Array:
        """``(users,)`` indices and rows of ``project_items()`` -> ``(users, C)`` logits.

        ``item_rows`` is ``(1, C, hidden)`` (the same C items for every user,
        e.g. a catalog block) or ``(users, C, hidden)`` (per-user candidates).
        """
        d = self.user_embed.embedding.shape[-1]
        user_part = self.user_embed(users) @ self.hidden.kernel[...][:d] + self.hidden.bias[...]  # (users, hidden)
        hidden = jax.nn.relu(user_part[:, None, :] + item_rows)
        return hidden @ self.out.kernel[...][:, 0] + self.out.bias[...][0]

    # The model interface (fgjax.models.interface.Recommender).

    def item_rows(self) -> Array:
        """``(items, hidden)`` item rows: ``project_items()``."""
        return self.project_items()

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
        return self.score_projected(users, self.project_items())


def build_model(model_config, num_users: int, num_items: int, *, seed: int) -> EmbeddingMLP:
    """The model a ``ModelConfig`` names, initialized from ``seed``."""
    return EmbeddingMLP(
        num_users,
        num_items,
        embed_dim=model_config.embed_dim,
        hidden_dim=model_config.hidden_dim,
        rngs=nnx.Rngs(seed),
    )


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, Params]:
    """``(graphdef, params)`` with params as a pure nested dict of arrays."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def abstract_params(config, num_users: int, num_items: int) -> tuple[nnx.GraphDef, Params]:
    """Graph and ``ShapeDtypeStruct`` params without allocating (for restores); ``config``: a ``Config``."""
    # Interim (serving branch): H1's fgjax.models.abstract_params(config, ...) dispatches on config.model.name.
    model_config = getattr(config, "model", config)
    model = nnx.eval_shape(lambda: build_model(model_config, num_users, num_items, seed=0))
    return split_params(model)
