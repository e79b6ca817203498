"""Load a checkpoint in another service and recommend by raw IDs.

Needs only fgjax installed: no training code, optimizer or data files are
imported or read. Works on CPU or GPU (arrays go to the default device).

    model = fgjax.load("runs/quickstart/checkpoint")
    table = model.recommend(["u1", "u2"], k=10)   # pyarrow.Table
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import pyarrow as pa

from fgjax.checkpoint import TrainCheckpoints, check_manifest, load_serving, load_vocabularies
from fgjax.config import from_dict
from fgjax.data.split import ItemSets
from fgjax.data.vocab import Vocabulary
from fgjax.models import abstract_params
from fgjax.ranking.explain import Explanations, recommendation_table
from fgjax.ranking.strategy import ForgettingWeights
from fgjax.ranking.topk import rank_items


class ServingModel:
    """A trained model with its vocabularies and (optionally) forgetting state.

    Attributes:
      users, items, categories: vocabularies (raw ID <-> index).
      step: training step of the loaded params.
      config: the ``Config`` the model was trained with.
      has_forgetting: whether forgetting arrays were saved beside the params.
    """

    def __init__(self, graphdef, params, users: Vocabulary, items: Vocabulary, categories: Vocabulary | None,
                 config, step: int, serving: dict[str, np.ndarray] | None, serving_meta: dict | None = None):
        self._graphdef = graphdef
        self._params = params
        self.users, self.items, self.categories = users, items, categories
        self.config = config
        self.step = step
        self._serving = serving
        self._serving_meta = serving_meta or {}
        self.has_forgetting = serving is not None and "user_interest" in serving and categories is not None

    @property
    def graphdef(self):
        """The model's static graph (``flax.nnx.GraphDef``)."""
        return self._graphdef

    @property
    def params(self):
        """The model's parameters as a pure nested dict of arrays."""
        return self._params

    def _seen(self) -> ItemSets | None:
        if self._serving is None:
            return None
        return ItemSets(self._serving["seen_indptr"], self._serving["seen_items"])

    def recommend(
        self,
        raw_user_ids: Sequence[Any] | pa.Array | np.ndarray,
        k: int = 10,
        *,
        use_forgetting: bool = True,
        exclude_seen: bool = True,
    ) -> pa.Table:
        """Top-k items per user as a long table, users in input order.

        Columns: user_id, rank, item_id, score, and with forgetting also
        interest, interest_state, f_k. Users unknown to the vocabulary get the
        most popular items (score = share of training users) and null
        explanations.
        """
        ids = raw_user_ids if isinstance(raw_user_ids, (pa.Array, pa.ChunkedArray)) else pa.array(raw_user_ids)
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        dense = self.users.encode(ids)
        known = dense >= 0
        k = min(k, len(self.items))
        scores = np.full((len(dense), k), -np.inf, np.float32)
        items = np.zeros((len(dense), k), np.int32)
        forgetting = None
        if use_forgetting and self.has_forgetting:
            forgetting = ForgettingWeights(
                user_interest=self._serving["user_interest"],
                item_interest=self._serving["item_interest"],
                item_weight=self._serving["item_weight"],
            )
        if known.any():
            s, i = rank_items(
                self._graphdef, self._params, dense[known], k=k, num_items=len(self.items),
                seen=self._seen() if exclude_seen else None, forgetting=forgetting,
            )
            scores[known], items[known] = s, i
        if (~known).any():
            popularity = self._serving["popularity"] if self._serving is not None else np.ones(len(self.items), np.float32)
            order = np.argsort(-popularity, kind="stable")[:k]
            scores[~known] = popularity[order] / max(float(popularity.max()), 1.0)
            items[~known] = order
        explanations = None
        if self.has_forgetting:
            evidence = Explanations.evidence_from_serving(self._serving, self._serving_meta)
            explanations = Explanations(
                item_interest=self._serving["item_interest"], state=self._serving["state"],
                f=self._serving["f"], categories=self.categories, **evidence,
            )
        return recommendation_table(ids, dense, scores, items, self.items, explanations)


def load(path: str | Path, *, step: int | None = None) -> ServingModel:
    """Load an fgjax checkpoint directory for serving (latest step by default)."""
    directory = check_manifest(path)
    users, items, categories = load_vocabularies(directory)
    store = TrainCheckpoints(directory, read_only=True)
    try:
        meta = store.restore_meta(step)
        config = from_dict(meta["config"])
        graphdef, abstract = abstract_params(config.model, len(users), len(items))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params, _, meta = store.restore(abstract, None, sharding=device, step=step)
    finally:
        store.close()
    serving = load_serving(directory)
    return ServingModel(graphdef, params, users, items, categories, config, int(meta["step"]),
                        None if serving is None else serving[0], None if serving is None else serving[1])
