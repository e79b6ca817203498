"""One model interface: what every recommender in fgjax provides.

Training (``fgjax.training``), ranking (``fgjax.ranking``) and serving
(``fgjax.serving``) see a model only through this protocol, so a new model
is a new module here and nothing else changes.

A model is a ``flax.nnx.Module`` whose queries and item rows meet in
``score``:

- ``loss(batch, key)``: the training objective on a batch (a dict of
  ``(batch, ...)`` arrays whose keys are the model's ``batch_fields``) -> ``()``.
- ``item_rows()``: ``(items, h)`` item-side representations, computed once
  per ranking call (EmbeddingMLP: each item's share of the first layer;
  sequence models: the output item table).
- ``query(inputs)``: ``(n, h)`` user-side queries from a dict of ``(n, ...)``
  arrays whose keys are the model's ``query_fields`` (EmbeddingMLP:
  ``user``; sequence models: ``items``, ``times``: the user's last L items and
  their times in seconds relative to the latest, and for forgetting_sasrec
  ``interest_ages`` ``(n, L, K)``; ItemKNN: ``items``).
- ``score(query, rows)``: ``(n, h)`` queries and ``(1 | n, C, h)`` item rows
  -> ``(n, C)`` logits.
- ``normalization``: how logits become the relevance of SPEC.md's score:
  ``"sigmoid"`` (pointwise click probability), ``"softmax"`` (next-item
  probability over the catalog) or ``"none"`` (the logit already is a
  nonnegative relevance, e.g. ItemKNN's summed similarities).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

from flax import nnx
from jax import Array

NORMALIZATIONS = ("sigmoid", "softmax", "none")
Params = dict[str, Any]  # a pure nested dict of arrays (nnx State.to_pure_dict())


@runtime_checkable
class Recommender(Protocol):
    """The protocol every fgjax model implements (see the module docstring)."""

    batch_fields: ClassVar[tuple[str, ...]]
    query_fields: ClassVar[tuple[str, ...]]
    normalization: ClassVar[str]

    def loss(self, batch: Mapping[str, Array], key: Array) -> Array: ...

    def item_rows(self) -> Array: ...

    def query(self, inputs: Mapping[str, Array]) -> Array: ...

    def score(self, query: Array, rows: Array) -> Array: ...


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, Params]:
    """``(graphdef, params)`` with params as a pure nested dict of arrays."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)
