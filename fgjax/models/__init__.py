"""Flax nnx recommenders behind one interface (``fgjax.models.interface.Recommender``) and their registry.

``build_model(config, ...)`` builds the model ``config.model.name`` names:

- ``embedding_mlp``: the article's EmbeddingMLP (``model`` section; ``train.negatives``);
- ``time_sasrec``: the time-aware sequence model (``sequence`` section);
- ``sasrec``: the same network with ``time_encoding`` ``none`` (plain SASRec);
- ``forgetting_sasrec``: time_sasrec plus the user's learned per-interest
  forgetting (``sequence.interest_decay``; needs item categories, ``num_categories``);
- ``bpr``: BPR matrix factorization (``bpr`` section, with its training settings);
- ``itemknn``: cosine ItemKNN from the whole history or the last n items
  (``knn`` section), fitted in closed form.

``abstract_params`` gives the same graph with shape-only params, so a
checkpoint is restored (serving, resumes) without allocating or training code.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from fgjax.config import Config, ModelConfig
from fgjax.errors import ConfigError
from fgjax.models.baselines import BPRMF, ItemKNN
from fgjax.models.interface import Params, Recommender, split_params
from fgjax.models.mlp import EmbeddingMLP
from fgjax.models.sequence import ForgettingSASRec, TimeAwareSASRec

MODEL_NAMES = ("embedding_mlp", "time_sasrec", "sasrec", "bpr", "itemknn", "forgetting_sasrec")
#: Trained on next-item windows with the ``sequence`` section's settings.
SEQUENCE_MODELS = ("time_sasrec", "sasrec", "forgetting_sasrec")
#: Query with each user's history (its last items), not its index.
HISTORY_MODELS = ("time_sasrec", "sasrec", "forgetting_sasrec", "itemknn")
#: Also read each position's interest ages (histories built with item categories).
INTEREST_MODELS = ("forgetting_sasrec",)
#: Fitted in one pass (``model.fit``), not by gradient steps.
CLOSED_FORM_MODELS = ("itemknn",)

__all__ = ["BPRMF", "CLOSED_FORM_MODELS", "EmbeddingMLP", "ForgettingSASRec", "HISTORY_MODELS", "INTEREST_MODELS",
           "ItemKNN", "MODEL_NAMES", "Params", "Recommender", "SEQUENCE_MODELS", "TimeAwareSASRec", "abstract_params",
           "build_model", "split_params"]


def _as_config(config: Config | ModelConfig) -> Config:
    """A bare ``ModelConfig`` is that section with the others at their defaults: enough
    for EmbeddingMLP (and the baselines at their defaults); sequence models are sized by the ``sequence`` section."""
    if not isinstance(config, ModelConfig):
        return config
    if config.name in SEQUENCE_MODELS:
        raise ConfigError(f"model.name={config.name!r} is sized by the sequence section: pass the whole Config")
    return dataclasses.replace(Config(), model=config)


def build_model(config: Config | ModelConfig, num_users: int, num_items: int, *, seed: int,
                num_categories: int = 0) -> nnx.Module:
    """The model ``config.model.name`` names, initialized from ``seed``.

    Args:
      config: the run's ``Config`` (a bare ``ModelConfig`` is taken as a
        ``Config`` with that model section).
      num_users, num_items: table sizes (sequence models and ItemKNN use only ``num_items``).
      num_categories: item categories K (``forgetting_sasrec`` needs K >= 1; the others ignore it).

    Raises:
      ConfigError: an unknown name, or ``forgetting_sasrec`` without item categories.
    """
    config = _as_config(config)
    name = config.model.name
    if name == "embedding_mlp":
        return EmbeddingMLP(num_users, num_items, embed_dim=config.model.embed_dim,
                            hidden_dim=config.model.hidden_dim, negatives=config.train.negatives,
                            rngs=nnx.Rngs(seed))
    if name in SEQUENCE_MODELS:
        seq = config.sequence
        network = dict(
            max_len=seq.max_len, dim=seq.dim, heads=seq.heads, layers=seq.layers, ffn_mult=seq.ffn_mult,
            time_encoding="none" if name == "sasrec" else seq.time_encoding, time_unit=seq.time_unit_seconds,
            num_buckets=seq.time_buckets, dropout=seq.dropout, loss=seq.loss,
            sampled_negatives=seq.sampled_negatives, mask_known=seq.mask_known, rngs=nnx.Rngs(seed),
        )
        if name in INTEREST_MODELS:
            if num_categories < 1:
                raise ConfigError(f"model.name={name}: forgetting_sasrec needs item categories (data.items_path)")
            return ForgettingSASRec(num_items, num_interests=num_categories, interest_decay=seq.interest_decay,
                                    interest_time_unit=seq.interest_time_unit_seconds, **network)
        return TimeAwareSASRec(num_items, **network)
    if name == "bpr":
        return BPRMF(num_users, num_items, dim=config.bpr.dim, negatives=config.bpr.negatives, l2=config.bpr.l2,
                     rngs=nnx.Rngs(seed))
    if name == "itemknn":
        knn = config.knn
        return ItemKNN(num_items, neighbors=knn.neighbors, shrink=knn.shrink, history=knn.history)
    raise ConfigError(f"model.name={name!r}: expected one of {', '.join(MODEL_NAMES)}")


def abstract_params(config: Config | ModelConfig, num_users: int, num_items: int, *,
                    num_categories: int = 0) -> tuple[nnx.GraphDef, Params]:
    """Graph and ``jax.ShapeDtypeStruct`` params of ``build_model``'s model, allocating nothing (for restores)."""
    model = nnx.eval_shape(lambda: build_model(config, num_users, num_items, seed=0, num_categories=num_categories))
    return split_params(model)
