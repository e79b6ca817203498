"""Per-user chronological item sequences (CSR) for sequence models.

Implicit feedback, like the split: each (user, item) pair counts once, at its
first event among the selected events in the protocol's chronological order
(``fgjax.data.split.chronological_order``: by time, ties by input position or,
with ``ties="item"``, by item index), the order ``leave_last_out`` uses, so
the last items of a sequence are exactly the split's held-out ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fgjax.data.split import first_interactions


@dataclasses.dataclass(frozen=True)
class Sequences:
    """User u's items are ``items[indptr[u]:indptr[u+1]]``, oldest first.

    Attributes:
      indptr: ``(users + 1,)`` int64.
      items: ``(n,)`` int32 item indices.
      times: ``(n,)`` float64 epoch seconds of each item's first interaction.
    """

    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray

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
        users = np.asarray(users, np.int64)
        ends = self.indptr[users + 1]
        counts = np.minimum(ends - self.indptr[users], max_len)
        cols = np.arange(max_len)
        valid = cols[None, :] >= (max_len - counts)[:, None]
        src = ends[:, None] - max_len + cols[None, :]
        items = np.full((len(users), max_len), pad_item, np.int32)
        times = np.zeros((len(users), max_len), np.float64)
        items[valid] = self.items[src[valid]]
        times[valid] = self.times[src[valid]]
        return items, times

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
        inputs = np.full((len(owner), max_len), pad_item, np.int32)
        times = np.zeros((len(owner), max_len), np.float64)
        targets = np.full((len(owner), max_len), -1, np.int32)
        inputs[valid] = self.items[src[valid]]
        times[valid] = self.times[src[valid]]
        targets[valid] = self.items[src[valid] + 1]
        return inputs, times, targets


def build_sequences(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, num_users: int, events: np.ndarray | None = None, *,
    ties: str = "input",
) -> Sequences:
    """Chronological first interactions per user among the selected ``events``.

    Args:
      user, item: ``(events,)`` dense indices; timestamp: ``(events,)`` epoch seconds.
      events: optional ``(events,)`` bool mask (e.g. a split's training events);
        the selected events keep their relative input order.
      ties: the order of events at the same timestamp (``"input"`` or ``"item"``, as in ``leave_last_out``).
    """
    if events is not None:
        user, item, timestamp = user[events], item[events], timestamp[events]
    first = first_interactions(user, item, timestamp, ties)
    indptr = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(user[first], minlength=num_users), out=indptr[1:])
    return Sequences(indptr, item[first].astype(np.int32), timestamp[first].astype(np.float64))


def relative_times(times: np.ndarray, items: np.ndarray, pad_item: int) -> np.ndarray:
    """``(n, L)`` float64 epoch seconds -> float32 seconds before each row's latest item (0 in padding).

    Epoch seconds do not fit float32 to the second; gaps within a row do.
    """
    valid = items != pad_item
    latest = np.max(np.where(valid, times, -np.inf), axis=1, keepdims=True)
    return np.where(valid, times - np.where(np.isfinite(latest), latest, 0.0), 0.0).astype(np.float32)
