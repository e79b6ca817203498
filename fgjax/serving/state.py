"""What a service needs besides the model's params: the typed serving state.

``pipeline.fit`` builds a ``ServingState`` after training and the forgetting
analysis of every event and saves it beside the checkpoint
(``DIR/serving``, ``DIR/serving.json``); ``fgjax.load`` reads it back. Every
array round-trips exactly (float64 times and int64 offsets included).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from fgjax import kernels
from fgjax.checkpoint import load_serving, save_serving
from fgjax.data.sequences import Sequences
from fgjax.data.split import ItemSets
from fgjax.data.vocab import Vocabulary
from fgjax.errors import CheckpointError
from fgjax.ranking.explain import Explanations
from fgjax.ranking.strategy import ForgettingWeights

# Optional (users, K) explanation arrays and the dtype each is stored in.
_EVIDENCE = {"state": np.int8, "f": np.float32, "trend": np.float32, "period": np.float32, "explore": np.bool_,
             "last_active": np.float64}


def queries_history(graphdef: nnx.GraphDef, params: Any) -> bool:
    """Whether the model queries with a user's recent items and times (sequence models), not its index."""
    return "items" in nnx.merge(graphdef, params).query_fields


def queries_interest_ages(graphdef: nnx.GraphDef, params: Any) -> bool:
    """Whether the model's queries also read the interest ages of a user's history (forgetting_sasrec)."""
    return "interest_ages" in nnx.merge(graphdef, params).query_fields


@dataclasses.dataclass(frozen=True)
class ServingState:
    """The arrays behind ``ServingModel.recommend``, besides the params.

    Attributes:
      popularity: ``(items,)`` float32 distinct training users per item (the
        ranking of users unknown to the vocabulary).
      seen: every item each user has had (excluded from recommendations).
      forgetting: the scoring weights of the forgetting analysis, or None
        (no item categories: the model ranks alone).
      state: ``(users, K)`` int8 interest state codes (``kernels.STATE_NAMES``), or None.
      f: ``(users, K)`` float32 per-interest forgetting f_k, or None.
      trend, period: ``(users, K)`` float32 detector evidence, or None.
      explore: ``(users, K)`` bool forgotten interests re-surfaced, or None.
      last_active: ``(users, K)`` float64 epoch seconds of the start of the
        interest's last active window (NaN = never), or None.
      window_origin, window_seconds: start (epoch seconds) of the analysis's
        first window and the window length, or None without an analysis.
      history: each user's chronological items and times over every event:
        the queries of sequence models (None for models that query by user),
        with their interest ages for models that read them (forgetting_sasrec).
    """

    popularity: np.ndarray
    seen: ItemSets
    forgetting: ForgettingWeights | None = None
    state: np.ndarray | None = None
    f: np.ndarray | None = None
    trend: np.ndarray | None = None
    period: np.ndarray | None = None
    explore: np.ndarray | None = None
    last_active: np.ndarray | None = None
    window_origin: float | None = None
    window_seconds: float | None = None
    history: Sequences | None = None

    @classmethod
    def create(
        cls,
        popularity: np.ndarray,
        seen: ItemSets,
        *,
        forgetting: ForgettingWeights | None = None,
        explanations: Explanations | None = None,
        window_origin: float | None = None,
        window_seconds: float | None = None,
        history: Sequences | None = None,
    ) -> "ServingState":
        """A state from the pieces ``pipeline.fit`` computes (dtypes normalized for saving)."""
        evidence: dict[str, np.ndarray | None] = {name: None for name in _EVIDENCE}
        if explanations is not None:
            evidence = {name: None if getattr(explanations, name) is None
                        else np.asarray(getattr(explanations, name), dtype) for name, dtype in _EVIDENCE.items()}
        return cls(
            popularity=np.asarray(popularity, np.float32), seen=seen, forgetting=forgetting,
            window_origin=None if window_origin is None else float(window_origin),
            window_seconds=None if window_seconds is None else float(window_seconds), history=history, **evidence,
        )

    @property
    def num_items(self) -> int:
        return len(self.popularity)

    @property
    def num_users(self) -> int:
        return self.seen.num_users

    def explanations(self, categories: Vocabulary | None) -> Explanations | None:
        """The per-(user, interest) facts behind recommendations (None without a forgetting analysis)."""
        if self.forgetting is None or self.state is None or self.f is None or categories is None:
            return None
        return Explanations(
            item_interest=self.forgetting.item_interest, state=self.state, f=self.f, categories=categories,
            last_active=self.last_active, trend=self.trend, period=self.period, explore=self.explore,
        )

    # Saving: a flat dict of NumPy arrays (fgjax.checkpoint.save_serving) plus JSON scalars.

    def save(self, directory: str | Path) -> None:
        """Write the state beside the checkpoint in ``directory`` (replacing an older one)."""
        arrays: dict[str, np.ndarray] = {
            "popularity": self.popularity, "seen_indptr": self.seen.indptr, "seen_items": self.seen.items,
        }
        if self.forgetting is not None:
            arrays.update(user_interest=self.forgetting.user_interest, item_interest=self.forgetting.item_interest,
                          item_weight=self.forgetting.item_weight)
        arrays.update({name: getattr(self, name) for name in _EVIDENCE if getattr(self, name) is not None})
        if self.history is not None:
            arrays.update(history_indptr=self.history.indptr, history_items=self.history.items,
                          history_times=self.history.times)
            if self.history.interest_ages is not None:
                arrays["history_interest_ages"] = self.history.interest_ages
        meta = {"state_names": list(kernels.STATE_NAMES), "window_origin": self.window_origin,
                "window_seconds": self.window_seconds}
        save_serving(directory, arrays, meta)

    @classmethod
    def load(cls, directory: str | Path, *, verified: bool = False) -> "ServingState":
        """The state saved in ``directory`` (``verified``: its files were just checked against the manifest).

        Raises:
          CheckpointError: missing or damaged (a file that differs from the checkpoint's manifest, arrays
            missing, shapes that do not fit together, NaN or out-of-range values).
        """
        arrays, meta = load_serving(directory, verified=verified)
        where = Path(directory).absolute() / "serving"

        def take(*names: str) -> list[np.ndarray] | None:
            present = [n in arrays for n in names]
            if not any(present):
                return None
            if not all(present):
                missing = [n for n, p in zip(names, present) if not p]
                raise CheckpointError(f"'{where}': serving arrays {', '.join(missing)} are missing "
                                      f"(expected {', '.join(names)} together)")
            return [arrays[n] for n in names]

        required = take("popularity", "seen_indptr", "seen_items")
        if required is None:
            raise CheckpointError(f"'{where}': no popularity and seen items, expected a serving state")
        popularity, indptr, items = required
        weights = take("user_interest", "item_interest", "item_weight")
        history = take("history_indptr", "history_items", "history_times")
        state = cls(
            popularity=popularity,
            seen=ItemSets(indptr, items),
            forgetting=None if weights is None else ForgettingWeights(*weights),
            window_origin=meta.get("window_origin"),
            window_seconds=meta.get("window_seconds"),
            history=None if history is None else Sequences(*history, arrays.get("history_interest_ages")),
            **{name: arrays.get(name) for name in _EVIDENCE},
        )
        state.check(where)
        return state

    def check(self, where: Any = "serving state") -> None:
        """Raise ``CheckpointError`` naming ``where`` unless the arrays fit together."""
        users, items = self.num_users, self.num_items
        problems = []
        if self.popularity.shape != (items,):
            problems.append(f"popularity has shape {self.popularity.shape}, expected (items,)")
        for name, csr, n in (("seen", self.seen, len(self.seen.items)),
                             ("history", self.history, None if self.history is None else len(self.history.items))):
            if csr is None:
                continue
            indptr = csr.indptr
            if indptr.ndim != 1 or len(indptr) != users + 1 or indptr[0] != 0 or indptr[-1] != n \
                    or (np.diff(indptr) < 0).any():
                problems.append(f"{name} offsets do not index its {n} items for {users} users")
        if self.history is not None and self.history.times.shape != self.history.items.shape:
            problems.append("history times and items differ in length")
        ages = None if self.history is None else self.history.interest_ages
        if ages is not None and (ages.ndim != 2 or len(ages) != len(self.history.items)):
            problems.append(f"history interest ages have shape {ages.shape}, expected (history items, interests)")
        if self.forgetting is not None:
            fw = self.forgetting
            if fw.item_interest.shape != (items,) or fw.item_weight.shape != (items,) \
                    or fw.user_interest.ndim != 2 or fw.user_interest.shape[0] != users:
                problems.append("forgetting weights do not match the users and items")
            shape = (users, fw.user_interest.shape[1] - 1) if fw.user_interest.ndim == 2 else None
            for name in _EVIDENCE:
                value = getattr(self, name)
                if value is not None and value.shape != shape:
                    problems.append(f"{name} has shape {value.shape}, expected (users, interests) = {shape}")
        if not problems:
            problems = self._value_problems()
        if problems:
            raise CheckpointError(f"'{where}': damaged serving state: {'; '.join(problems)}")

    def _value_problems(self) -> list[str]:
        """Values no saved state can hold: NaN or infinite numbers, indices outside their tables."""
        items = self.num_items
        problems = []

        def finite(name: str, value: np.ndarray | None, *, nan_ok: bool = False, inf_ok: bool = False) -> None:
            if value is None or value.dtype.kind != "f":
                return
            bad = (np.isnan(value) & (not nan_ok)) | (np.isinf(value) & (not inf_ok))
            if bad.any():
                what = "infinite" if nan_ok else "NaN" if inf_ok else "NaN or infinite"
                problems.append(f"{name} holds {int(bad.sum()):,} {what} values")

        def within(name: str, value: np.ndarray | None, low: int, high: int) -> None:
            if value is not None and value.size and (value.min() < low or value.max() >= high):
                problems.append(f"{name} holds values outside [{low}, {high})")

        finite("popularity", self.popularity)
        within("seen items", self.seen.items, 0, items)
        if self.history is not None:
            within("history items", self.history.items, 0, items + 1)
            finite("history times", self.history.times)
            ages = self.history.interest_ages
            finite("history interest ages", ages, inf_ok=True)  # +inf: an interest the user never had
            if ages is not None and ages.size and np.nanmin(ages) < 0:
                problems.append("history interest ages hold negative values")
        if self.forgetting is not None:
            fw = self.forgetting
            finite("forgetting user weights", fw.user_interest)
            finite("forgetting item weights", fw.item_weight)
            within("item interests", fw.item_interest, -1, fw.user_interest.shape[1] - 1)
        # f_k is +inf where ||I_t|| fell to eps or below while the interest changed (kernels.interest_forgetting):
        # a user silent for years on real logs; p(k) and the ranking handle it. NaN never is.
        finite("f", self.f, inf_ok=True)
        for name in ("trend", "period"):
            finite(name, getattr(self, name))
        finite("last_active", self.last_active, nan_ok=True)
        within("interest states", self.state, 0, len(kernels.STATE_NAMES))
        return problems

    def check_categories(self, num_categories: int, where: Any = "serving state") -> None:
        """Raise ``CheckpointError`` unless the forgetting analysis covers exactly ``num_categories`` interests."""
        if self.forgetting is None:
            return
        interests = self.forgetting.user_interest.shape[1] - 1
        if interests != num_categories:
            raise CheckpointError(f"'{where}': forgetting analysis over {interests} interests, the checkpoint's "
                                  f"vocab/categories.parquet names {num_categories}")
