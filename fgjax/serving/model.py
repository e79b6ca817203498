"""Load a checkpoint in another service and recommend by raw IDs.

Needs only fgjax installed: no training code, optimizer or data files are
imported or read. Works on CPU or GPU (arrays go to the default device), for
every model ``config.model.name`` names (EmbeddingMLP, time-aware SASRec, SASRec,
forgetting_sasrec, BPR, ItemKNN).

    model = fgjax.load("runs/quickstart/checkpoint")
    table = model.recommend(["u1", "u2"], k=10)   # pyarrow.Table

A checkpoint trained with ``data.pseudonymize`` knows users by pseudonym only:
``recommend`` maps raw IDs through the same keyed hash, with the secret given
to ``load(path, pseudonym_secret=...)`` or read from the file or environment
variable its config names; its tables name users by pseudonym.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import pyarrow as pa

from fgjax.checkpoint import check_manifest, load_vocabularies, read_meta, read_params, verify_served
from fgjax.config import Config, from_dict
from fgjax.data.pseudonym import Pseudonymizer
from fgjax.data.vocab import Vocabulary
from fgjax.errors import CheckpointError, ConfigError, DataError, FgjaxError, FgjaxWarning
from fgjax.models import abstract_params
from fgjax.ranking.explain import recommendation_table
from fgjax.ranking.topk import query_inputs, rank_items
from fgjax.serving.state import ServingState, queries_history, queries_interest_ages


class ServingModel:
    """A trained model with its vocabularies and serving state.

    Attributes:
      users, items, categories: vocabularies (raw ID <-> index).
      step: training step of the loaded params.
      config: the ``Config`` the model was trained with.
      state: the ``ServingState`` (seen items, popularity, forgetting, evidence, histories).
      pseudonymized: whether ``users`` holds pseudonyms (``data.pseudonymize``).
    """

    def __init__(self, graphdef, params, users: Vocabulary, items: Vocabulary, categories: Vocabulary | None,
                 config: Config, step: int, state: ServingState, *, pseudonymizer: Pseudonymizer | None = None):
        self._graphdef = graphdef
        self._params = params
        self.users, self.items, self.categories = users, items, categories
        self.config = config
        self.step = step
        self.state = state
        self._pseudonymizer = pseudonymizer

    @property
    def pseudonymized(self) -> bool:
        return self.config.data.pseudonymize

    def pseudonyms(self, raw_user_ids: pa.Array) -> pa.Array:
        """Raw user IDs -> the pseudonyms the checkpoint knows them by (the IDs unchanged without
        ``data.pseudonymize``).

        Raises:
          ConfigError: the checkpoint is pseudonymized and no secret was given to ``load`` nor is in the
            file / environment variable its config names.
        """
        if not self.pseudonymized:
            return raw_user_ids
        if self._pseudonymizer is None:
            self._pseudonymizer = Pseudonymizer.from_config(self.config.data)
        return self._pseudonymizer.apply(raw_user_ids)

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

        Raises:
          DataError: an index outside ``[0, users)``. ConfigError: ``k`` outside ``[1, items]``.
        """
        users = np.asarray(users)
        if users.size and (not np.issubdtype(users.dtype, np.integer) or users.min() < 0
                           or users.max() >= len(self.users)):
            raise DataError(f"rank: users are dense indices in [0, {len(self.users)}), got {users.dtype} values "
                            f"from {users.min()} to {users.max()} (recommend() takes raw IDs)")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self.items):
            raise ConfigError(f"rank: k={k!r}, expected an integer in [1, {len(self.items)}] (the catalog's items)")
        users = users.astype(np.int32)
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
        pseudonyms: bool = False,
    ) -> pa.Table:
        """Top-k items per user as a long table, users in input order.

        Columns: user_id, rank, item_id, score, and with forgetting also
        interest, interest_state, f_k, last_active, trend, period, explore.
        Users unknown to the vocabulary get the most popular items
        (score = the share of training users who had the item) and null explanations.

        A pseudonymized checkpoint maps the raw IDs to pseudonyms first
        (``pseudonyms``: the IDs given already are pseudonyms, no secret needed);
        its table's ``user_id`` column holds the pseudonyms, in input order.

        Raises:
          ConfigError: ``k`` is not a positive integer; or raw IDs for a pseudonymized checkpoint without its secret.
          DataError: a single str or bytes instead of a sequence; null IDs; floats or booleans (1.0 or True
            would be served as user 1); IDs of a type the vocabulary cannot be matched against.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"recommend: k={k!r}, expected a positive integer (items per user)")
        if isinstance(raw_user_ids, (str, bytes)):  # else each character would be served as a user
            raise DataError(f"recommend: user IDs are a sequence (a list, array or Arrow array), got the single "
                            f"{type(raw_user_ids).__name__} {raw_user_ids!r}: pass [{raw_user_ids!r}]")
        if isinstance(raw_user_ids, (pa.Array, pa.ChunkedArray)):
            ids = raw_user_ids
        else:
            try:
                ids = pa.array(raw_user_ids)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                raise DataError(f"recommend: user IDs of mixed or unsupported types, or past int64 "
                                f"({str(exc).splitlines()[0]})") from None
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if len(ids) == 0:
            ids = pa.array([], self.users.values.type)
        check_id_type(ids, self.users.values.type)
        if self.pseudonymized and not pseudonyms:
            ids = self.pseudonyms(ids)
        dense = self.users.encode(ids)
        if self.pseudonymized and len(dense) and not (dense >= 0).any():
            hint = ("are they pseudonyms (pseudonyms=True)?" if pseudonyms
                    else "is the secret the one it was trained with?")
            warnings.warn(f"recommend: none of the {len(dense):,} user IDs is known to this pseudonymized "
                          f"checkpoint: {hint}", FgjaxWarning, stacklevel=2)
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
            scores[~known] = popularity[order] / max(self.state.num_users, 1)
            items[~known] = order
        return recommendation_table(ids, dense, scores, items, self.items, self.state.explanations(self.categories))


def check_id_type(ids: pa.Array, vocabulary_type: pa.DataType, what: str = "recommend") -> None:
    """Raises ``DataError`` (starting with ``what``) for null IDs and for floats or booleans (an integer or
    text vocabulary would read 1.0 or True as user 1); integers and text are matched as ``Vocabulary.encode``
    casts them."""
    if ids.null_count:
        raise DataError(f"{what}: {ids.null_count:,} null user IDs")
    kind = ids.type.value_type if pa.types.is_dictionary(ids.type) else ids.type
    if pa.types.is_floating(kind) or pa.types.is_boolean(kind) or pa.types.is_decimal(kind):
        raise DataError(f"{what}: user IDs of type {ids.type}, the checkpoint's are {vocabulary_type} "
                        "(pass integers or text)")


def load(path: str | Path, *, step: int | None = None, pseudonym_secret: bytes | str | None = None) -> ServingModel:
    """Load an fgjax checkpoint directory for serving (latest step by default).

    Every file read is first checked against the checkpoint's manifest (size
    and sha256), the restored params must be finite, and the serving state
    must fit the vocabularies: a damaged or incomplete checkpoint is refused,
    never served half-configured.

    ``pseudonym_secret``: for a checkpoint trained with ``data.pseudonymize``, the secret that maps raw user IDs
    to its pseudonyms; without it, the file or environment variable its config names is read when raw IDs
    are first given to ``recommend``.

    Raises:
      CheckpointError: not a checkpoint, another format version, a file
        missing or damaged (named), no serving state, or parts that do not
        fit together (e.g. a forgetting analysis without its categories).
      ConfigError: a ``pseudonym_secret`` that is empty or not bytes or str.
    """
    directory = check_manifest(path)
    step = verify_served(directory, step)  # every file read below, before any is opened
    users, items, categories = load_vocabularies(directory, verified=True)
    meta = read_meta(directory, step, verified=True)
    try:
        config = from_dict(meta["config"])
        graphdef, abstract = abstract_params(config, len(users), len(items),
                                             num_categories=0 if categories is None else len(categories))
    except (FgjaxError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"'{directory / 'train' / str(step) / 'meta'}': the step's config does not build a "
                              f"model ({exc})") from None
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params, _ = read_params(directory, abstract, sharding=device, step=step, verified=True)
    state = ServingState.load(directory, verified=True)
    where = directory / "serving"
    if (state.num_users, state.num_items) != (len(users), len(items)):
        raise CheckpointError(
            f"'{where}': serving state for {state.num_users:,} users and {state.num_items:,} items, "
            f"expected the vocabularies' {len(users):,} and {len(items):,}"
        )
    if state.history is None and queries_history(graphdef, params):
        raise CheckpointError(f"'{where}': no user histories, expected them for the sequence model "
                              f"{config.model.name!r} (its queries are each user's last items)")
    if queries_interest_ages(graphdef, params):
        ages = None if state.history is None else state.history.interest_ages
        if ages is None or ages.shape[1] != len(categories):
            raise CheckpointError(f"'{where}': the histories' interest ages do not cover the "
                                  f"{len(categories)} item categories {config.model.name!r} reads; re-run the "
                                  "command that wrote the checkpoint (same --out, data and config) to rebuild it")
    if state.forgetting is not None and categories is None:
        raise CheckpointError(
            f"'{directory / 'vocab' / 'categories.parquet'}' is missing: the serving state holds a forgetting "
            "analysis over item categories, which needs their names; re-run the command that wrote the checkpoint "
            "(same --out, data and config) to rebuild it"
        )
    if state.forgetting is None and categories is not None and len(categories):
        raise CheckpointError(
            f"'{where}': no forgetting analysis beside the item categories of 'vocab/categories.parquet' (serving "
            "would silently rank by the model alone); re-run the command that wrote the checkpoint (same --out, "
            "data and config) to rebuild it"
        )
    if state.forgetting is not None:
        state.check_categories(len(categories), where)
    pseudonymizer = Pseudonymizer(pseudonym_secret) if pseudonym_secret is not None else None
    return ServingModel(graphdef, params, users, items, categories, config, step, state, pseudonymizer=pseudonymizer)
