"""Per-user chronological item sequences (CSR) for sequence models.

Implicit feedback, like the split: each (user, item) pair counts once, at its
first event among the selected events in the protocol's chronological order
(``fgjax.data.split.chronological_order``: by time, ties by input position or,
with ``ties="item"``, by item index), the order ``leave_last_out`` uses, so
the last items of a sequence are exactly the split's held-out ones.

With item categories, ``build_sequences`` also gives each event its
*interest ages* (``interest_ages``, the input of ``forgetting_sasrec``): for
each interest (item category) k, the seconds since the user's most recent
event in k at or before that event, in the sequence's order, over the user's
whole sequence (not only a model's window); ``+inf`` where the user has had no
item of k yet. An event's own interest has age 0. Memory: ``n * K * 4`` bytes
(float32) for n events and K interests, e.g. 100,000 events x 19 genres = 7.6 MB.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fgjax.data.split import first_interactions
from fgjax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Sequences:
    """User u's items are ``items[indptr[u]:indptr[u+1]]``, oldest first.

    Attributes:
      indptr: ``(users + 1,)`` int64.
      items: ``(n,)`` int32 item indices.
      times: ``(n,)`` float64 epoch seconds of each item's first interaction.
      interest_ages: ``(n, K)`` float32 seconds since the user's latest event in
        each interest at or before each event (``+inf``: none yet), or None
        (built without item categories; ``interest_ages``).
    """

    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray
    interest_ages: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        """``(users,)`` sequence lengths."""
        return np.diff(self.indptr)

    def last(self, users: np.ndarray, max_len: int, *, pad_item: int) -> tuple[np.ndarray, np.ndarray]:
        """The last ``max_len`` items of each user, left-padded (most recent at the last column).

        Returns:
          ``(items, times)``: ``(len(users), max_len)`` int32 (``pad_item`` in
          the padding) and float64 (0 in the padding).
        """
        src, valid = self._last_positions(users, max_len)
        items = np.full((len(users), max_len), pad_item, np.int32)
        times = np.zeros((len(users), max_len), np.float64)
        items[valid] = self.items[src[valid]]
        times[valid] = self.times[src[valid]]
        return items, times

    def last_interest_ages(self, users: np.ndarray, max_len: int) -> np.ndarray:
        """``(len(users), max_len, K)`` float32 interest ages at the positions of ``last`` (``+inf`` in the padding).

        Raises:
          DataError: the sequences were built without item categories.
        """
        return self._gather_ages(*self._last_positions(users, max_len))

    def _last_positions(self, users: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """``(src, valid)``, each ``(len(users), max_len)``: event index of each column of ``last`` and whether it holds one."""
        users = np.asarray(users, np.int64)
        ends = self.indptr[users + 1]
        counts = np.minimum(ends - self.indptr[users], max_len)
        cols = np.arange(max_len)
        valid = cols[None, :] >= (max_len - counts)[:, None]
        src = ends[:, None] - max_len + cols[None, :]
        return src, valid

    def _gather_ages(self, src: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.interest_ages is None:
            raise DataError("these sequences have no interest ages: build them with item categories "
                            "(build_sequences(..., item_category=, num_categories=))")
        ages = np.full((*src.shape, self.interest_ages.shape[1]), np.inf, np.float32)
        ages[valid] = self.interest_ages[src[valid]]
        return ages

    def window_owners(self, max_len: int) -> np.ndarray:
        """``(windows,)`` int64: the user of each of ``training_windows``' rows, in their order."""
        chunks = -(-np.maximum(self.lengths() - 1, 0) // max_len)
        return np.repeat(np.arange(self.num_users), chunks)

    def training_windows(self, max_len: int, *, pad_item: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Next-item training examples: every item after a user's first is a target once.

        A user's sequence ``s_0 .. s_{n-1}`` gives inputs ``s_0 .. s_{n-2}``
        and targets ``s_1 .. s_{n-1}``; long sequences are cut from the end
        into chunks of ``max_len`` positions (each position attends only to
        its own chunk), each chunk left-padded.

        Returns:
          ``(inputs, times, targets)``, each ``(windows, max_len)``: int32 input
          items (``pad_item`` in the padding), float64 input times, int32
          targets (-1 in the padding).
        """
        src, valid = self._window_positions(max_len)
        inputs = np.full(src.shape, pad_item, np.int32)
        times = np.zeros(src.shape, np.float64)
        targets = np.full(src.shape, -1, np.int32)
        inputs[valid] = self.items[src[valid]]
        times[valid] = self.times[src[valid]]
        targets[valid] = self.items[src[valid] + 1]
        return inputs, times, targets

    def window_interest_ages(self, max_len: int) -> np.ndarray:
        """``(windows, max_len, K)`` float32 interest ages at the input positions of ``training_windows``
        (``+inf`` in the padding).

        Raises:
          DataError: the sequences were built without item categories.
        """
        return self._gather_ages(*self._window_positions(max_len))

    def _window_positions(self, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """``(src, valid)``, each ``(windows, max_len)``: event index of each input of ``training_windows``."""
        lengths = self.lengths()
        pairs = np.maximum(lengths - 1, 0)  # (input, target) positions per user
        chunks = -(-pairs // max_len)
        owner = self.window_owners(max_len)
        # Chunk j of a user (counted from the end) covers pair positions [end - (j+1)L, end - jL).
        j = np.arange(len(owner)) - np.repeat(np.cumsum(chunks) - chunks, chunks)
        stop = self.indptr[owner] + pairs[owner] - j * max_len  # exclusive end of the inputs
        start = np.maximum(stop - max_len, self.indptr[owner])
        cols = np.arange(max_len)
        src = stop[:, None] - max_len + cols[None, :]
        valid = src >= start[:, None]
        return src, valid


def build_sequences(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, num_users: int, events: np.ndarray | None = None, *,
    ties: str = "input", item_category: np.ndarray | None = None, num_categories: int = 0,
) -> Sequences:
    """Chronological first interactions per user among the selected ``events``.

    Args:
      user, item: ``(events,)`` dense indices; timestamp: ``(events,)`` epoch seconds.
      events: optional ``(events,)`` bool mask (e.g. a split's training events);
        the selected events keep their relative input order.
      ties: the order of events at the same timestamp (``"input"`` or ``"item"``, as in ``leave_last_out``).
      item_category: optional ``(items,)`` int category of each item (-1 = none); with ``num_categories``
        K >= 1 the sequences carry ``interest_ages`` ``(n, K)`` (``interest_ages``; memory ``n * K * 4`` bytes).
    """
    if events is not None:
        user, item, timestamp = user[events], item[events], timestamp[events]
    first = first_interactions(user, item, timestamp, ties)
    indptr = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(user[first], minlength=num_users), out=indptr[1:])
    items, times = item[first].astype(np.int32), timestamp[first].astype(np.float64)
    ages = None
    if item_category is not None and num_categories > 0:
        ages = interest_ages(indptr, items, times, np.asarray(item_category)[items], num_categories)
    return Sequences(indptr, items, times, ages)


def interest_ages(indptr: np.ndarray, items: np.ndarray, times: np.ndarray, categories: np.ndarray,
                  num_categories: int) -> np.ndarray:
    """``(n, K)`` float32: per event, the seconds since its user's latest event (itself included) in each interest.

    Args:
      indptr: ``(users + 1,)`` CSR offsets; items: ``(n,)`` (unused but for the length);
      times: ``(n,)`` float64, nondecreasing within each user;
      categories: ``(n,)`` int interest of each event (-1 = none); num_categories: K.

    ``+inf`` where the user has had no event in the interest yet. One pass per
    interest over ``(n,)`` arrays (a running maximum of the index of the last
    event in it), so the only ``(n, K)`` array is the result.
    """
    n = len(items)
    if len(categories) != n or len(times) != n:
        raise DataError(f"interest ages: {n} events but {len(times)} times and {len(categories)} categories")
    out = np.full((n, num_categories), np.inf, np.float32)
    index = np.arange(n, dtype=np.int64)
    start = np.repeat(np.asarray(indptr[:-1], np.int64), np.diff(indptr))  # (n,) first event of each event's user
    for k in range(num_categories):
        last = np.where(categories == k, index, -1)
        np.maximum.accumulate(last, out=last)
        seen = last >= start
        out[seen, k] = times[seen] - times[last[seen]]
    return out


def category_arguments(item_category: np.ndarray | None, categories, *,
                       model_name: str = "forgetting_sasrec") -> dict:
    """``build_sequences``' category arguments from a log's items table, for a model that reads interest ages.

    Raises:
      DataError: the log has no item categories (no items table).
    """
    if item_category is None or categories is None or len(categories) == 0:
        raise DataError(f"model.name={model_name}: forgetting_sasrec needs item categories (data.items_path)")
    return {"item_category": item_category, "num_categories": len(categories)}


def relative_times(times: np.ndarray, items: np.ndarray, pad_item: int) -> np.ndarray:
    """``(n, L)`` float64 epoch seconds -> float32 seconds before each row's latest item (0 in padding).

    Epoch seconds do not fit float32 to the second; gaps within a row do.
    """
    valid = items != pad_item
    latest = np.max(np.where(valid, times, -np.inf), axis=1, keepdims=True)
    return np.where(valid, times - np.where(np.isfinite(latest), latest, 0.0), 0.0).astype(np.float32)
