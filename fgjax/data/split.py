"""Temporal leave-last-out split and per-user item sets (CSR).

Protocol (implicit feedback, SPEC.md Evaluation): each (user, item) pair counts
once, at its first timestamp. Per user with at least 3 distinct items, the last
new item is the test target and the second-to-last the validation target.
Training uses every event strictly before the validation item's first time;
the forgetting analysis behind test-time recommendations uses every event
before the test item's first time. Never a random split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fgjax.shapes import bucket_size


@dataclasses.dataclass(frozen=True)
class ItemSets:
    """Per-user item sets in CSR form: user u's items are ``items[indptr[u]:indptr[u+1]]``.

    Attributes:
      indptr: ``(users + 1,)`` int64.
      items: ``(nnz,)`` int32, sorted within each user.
    """

    indptr: np.ndarray
    items: np.ndarray

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> "ItemSets":
        """Distinct (user, item) pairs -> CSR (duplicates are merged)."""
        key = np.unique(users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items.astype(np.int64))
        width = int(items.max(initial=0)) + 1
        u, i = key // width, key % width
        indptr = np.zeros(num_users + 1, np.int64)
        np.add.at(indptr, u + 1, 1)
        return cls(np.cumsum(indptr), i.astype(np.int32))

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        """``(users,)`` set sizes."""
        return np.diff(self.indptr)

    def padded(self, users: np.ndarray, *, pad_value: int, width: int | None = None) -> np.ndarray:
        """``(len(users), width)`` int32 rows of the users' items, padded with ``pad_value``.

        ``width`` defaults to the largest set among ``users`` rounded up to a
        power of two (few distinct shapes, so few recompiles downstream).
        """
        counts = self.counts()[users]
        if width is None:
            width = bucket_size(int(counts.max(initial=1)))
        out = np.full((len(users), width), pad_value, np.int32)
        cols = np.arange(width)
        valid = cols[None, :] < counts[:, None]
        src = self.indptr[users][:, None] + np.minimum(cols[None, :], np.maximum(counts[:, None] - 1, 0))
        out[valid] = self.items[src[valid]]
        return out


@dataclasses.dataclass(frozen=True)
class TemporalSplit:
    """Leave-last-out split of an ``EventLog``.

    Attributes:
      train_events: ``(events,)`` bool, events used for training.
      history_events: ``(events,)`` bool, events before each user's test item
        (train + validation), used for the analysis behind test recommendations.
      val_target: ``(users,)`` int32 validation item, -1 if none.
      test_target: ``(users,)`` int32 test item, -1 if none.
      test_time: ``(users,)`` float64 first time of the test item, inf if none.
      train_items: items seen in training, per user.
      history_items: items seen before the test item, per user.
    """

    train_events: np.ndarray
    history_events: np.ndarray
    val_target: np.ndarray
    test_target: np.ndarray
    test_time: np.ndarray
    train_items: ItemSets
    history_items: ItemSets

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct positive (user, item) training pairs, ``(pairs,)`` each."""
        sets = self.train_items
        users = np.repeat(np.arange(sets.num_users, dtype=np.int32), sets.counts())
        return users, sets.items


def leave_last_out(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, num_users: int) -> TemporalSplit:
    """Split events per user by time: last new item = test, second-to-last = validation.

    Args:
      user, item: ``(events,)`` int dense indices.
      timestamp: ``(events,)`` float epoch seconds.
      num_users: size of the user vocabulary.
    """
    order = np.lexsort((timestamp, item, user))
    u, i, t = user[order], item[order], timestamp[order]
    first = np.ones(len(u), bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    fu, fi, ft = u[first], i[first], t[first]
    # Per user, first interactions by time (ties broken by item for determinism).
    by_time = np.lexsort((fi, ft, fu))
    fu, fi, ft = fu[by_time], fi[by_time], ft[by_time]
    counts = np.bincount(fu, minlength=num_users)
    ends = np.cumsum(counts)
    eligible = counts >= 3
    val_target = np.full(num_users, -1, np.int32)
    test_target = np.full(num_users, -1, np.int32)
    val_time = np.full(num_users, np.inf)
    test_time = np.full(num_users, np.inf)
    idx = np.flatnonzero(eligible)
    test_target[idx] = fi[ends[idx] - 1]
    test_time[idx] = ft[ends[idx] - 1]
    val_target[idx] = fi[ends[idx] - 2]
    val_time[idx] = ft[ends[idx] - 2]
    train_events = timestamp < val_time[user]
    history_events = timestamp < test_time[user]
    # The targets themselves are never "seen" before their first time, so they
    # cannot be masked out of their own evaluation.
    train_items = ItemSets.from_pairs(user[train_events], item[train_events], num_users)
    history_items = ItemSets.from_pairs(user[history_events], item[history_events], num_users)
    return TemporalSplit(train_events, history_events, val_target, test_target, test_time, train_items, history_items)
