"""Load a checkpoint in another service and recommend by raw IDs.

Needs only fgjax installed: no training code, optimizer or data files are
imported or read. Works on CPU or GPU (arrays go to the default device), for
every model ``config.model.name`` names (EmbeddingMLP, time-aware SASRec, SASRec).

    model = fgjax.load("runs/quickstart/checkpoint")
    table = model.recommend(["u1", "u2"], k=10)   # pyarrow.Table
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import pyarrow as pa

from fgjax.checkpoint import TrainCheckpoints, check_manifest, load_vocabularies
from fgjax.config import Config, from_dict
from fgjax.data.vocab import Vocabulary
from fgjax.errors import CheckpointError
from fgjax.models import abstract_params
from fgjax.ranking.explain import recommendation_table
from fgjax.ranking.topk import query_inputs, rank_items
from fgjax.serving.state import ServingState, queries_history


class ServingModel:
    """A trained model with its vocabularies and serving state.

    Attributes:
      users, items, categories: vocabularies (raw ID <-> index).
      step: training step of the loaded params.
      config: the ``Config`` the model was trained with.
      state: the ``ServingState`` (seen items, popularity, forgetting, evidence, histories).
    """

    def __init__(self, graphdef, params, users: Vocabulary, items: Vocabulary, categories: Vocabulary | None,
                 config: Config, step: int, state: ServingState):
        self._graphdef = graphdef
        self._params = params
        self.users, self.items, self.categories = users, items, categories
        self.config = config
        self.step = step
        self.state = state

    @property
    def graphdef(self):
        """The model's static graph (``flax.nnx.GraphDef``)."""
        return self._graphdef

    @property
    def params(self):
        """The model's parameters as a pure nested dict of arrays."""
        return self._params

    @property
    def has_forgetting(self) -> bool:
        """Whether a forgetting analysis (and item categories) were saved beside the params."""
        return self.state.forgetting is not None and self.categories is not None

    def rank(self, users: np.ndarray, k: int, *, use_forgetting: bool = True,
             exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, items)``, each ``(len(users), k)``, for dense user indices (``rank_items``).

        Sequence models query with each user's last items of the saved history.
        """
        users = np.asarray(users, np.int32)
        inputs = query_inputs(self._graphdef, self._params, users, self.state.history, num_items=len(self.items))
        return rank_items(
            self._graphdef, self._params, users, k=k, num_items=len(self.items), inputs=inputs,
            seen=self.state.seen if exclude_seen else None,
            forgetting=self.state.forgetting if use_forgetting else None,
            chunk=self.config.recommend.user_chunk, memory_budget_mb=self.config.recommend.score_memory_mb,
        )

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
        interest, interest_state, f_k, last_active, trend, period, explore.
        Users unknown to the vocabulary get the most popular items
        (score = share of training users) and null explanations.
        """
        ids = raw_user_ids if isinstance(raw_user_ids, (pa.Array, pa.ChunkedArray)) else pa.array(raw_user_ids)
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        dense = self.users.encode(ids)
        known = dense >= 0
        k = min(k, len(self.items))
        scores = np.full((len(dense), k), -np.inf, np.float32)
        items = np.zeros((len(dense), k), np.int32)
        if known.any():
            scores[known], items[known] = self.rank(dense[known], k, use_forgetting=use_forgetting,
                                                    exclude_seen=exclude_seen)
        if (~known).any():
            popularity = self.state.popularity
            order = np.argsort(-popularity, kind="stable")[:k]
            scores[~known] = popularity[order] / max(float(popularity.max(initial=0.0)), 1.0)
            items[~known] = order
        return recommendation_table(ids, dense, scores, items, self.items, self.state.explanations(self.categories))


def load(path: str | Path, *, step: int | None = None) -> ServingModel:
    """Load an fgjax checkpoint directory for serving (latest step by default).

    Raises:
      CheckpointError: not a checkpoint, another format version, or its
        params or serving state missing, damaged or of other sizes.
    """
    directory = check_manifest(path)
    users, items, categories = load_vocabularies(directory)
    store = TrainCheckpoints(directory, read_only=True)
    try:
        meta = store.restore_meta(step)
        config = from_dict(meta["config"])
        graphdef, abstract = abstract_params(config, len(users), len(items))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params, _, meta = store.restore(abstract, None, sharding=device, step=step)
    finally:
        store.close()
    state = ServingState.load(directory)
    if (state.num_users, state.num_items) != (len(users), len(items)):
        raise CheckpointError(
            f"'{directory / 'serving'}': serving state for {state.num_users:,} users and {state.num_items:,} items, "
            f"expected the vocabularies' {len(users):,} and {len(items):,}"
        )
    if state.history is None and queries_history(graphdef, params):
        raise CheckpointError(f"'{directory / 'serving'}': no user histories, expected them for the sequence model "
                              f"{config.model.name!r} (its queries are each user's last items)")
    return ServingModel(graphdef, params, users, items, categories, config, int(meta["step"]), state)
