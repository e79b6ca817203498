"""Temporal leave-last-out split and per-user item sets (CSR).

Protocol (implicit feedback, SPEC.md Evaluation; docs/data.md, "Evaluation
protocol"): a user's events are put in chronological order, and events at the
same timestamp keep their input order (``ties="input"``, a stable sort by time:
the convention of RecBole and most papers) or, as an option, go by item index
(``ties="item"``). Each (user, item) pair counts once, at its first event in
that order. Per user with at least 3 distinct items, the last new item is the
test target and the second-to-last the validation target. Training uses every
event before the validation item's first event *in that order*; the history
behind test-time recommendations (what a model may read, and what is masked)
uses every event before the test item's first event in that order, so an
item had at the test item's own timestamp but before it in the order is
history, and is masked. Never a random split.
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


#: How events at the same timestamp are ordered: input position (stable sort by time) or item index.
TIE_ORDERS = ("input", "item")


def chronological_order(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, ties: str = "input") -> np.ndarray:
    """``(events,)`` permutation putting events in the protocol's order: by user, then time, then the tie order.

    Args:
      user, item: ``(events,)`` dense indices; timestamp: ``(events,)`` epoch seconds.
      ties: ``"input"``: events at the same time keep their input position (a
        stable sort by time); ``"item"``: they go by item index, then input position.
    """
    position = np.arange(len(user))
    if ties == "input":
        return np.lexsort((position, timestamp, user))
    if ties == "item":
        return np.lexsort((position, item, timestamp, user))
    raise ValueError(f"ties={ties!r}: expected one of {', '.join(TIE_ORDERS)}")


def first_interactions(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, ties: str = "input") -> np.ndarray:
    """``(pairs,)`` event indices of each (user, item) pair's first event, in ``chronological_order``.

    Grouped by user (users ascending), each user's items oldest first.
    """
    order = chronological_order(user, item, timestamp, ties)
    width = int(item.max(initial=0)) + 1
    key = user[order].astype(np.int64) * width + item[order]
    _, first = np.unique(key, return_index=True)
    return order[np.sort(first)]


@dataclasses.dataclass(frozen=True)
class TemporalSplit:
    """Leave-last-out split of an ``EventLog``.

    Attributes:
      train_events: ``(events,)`` bool, events before each user's validation
        item in the chronological order (``chronological_order``), used for training.
      history_events: ``(events,)`` bool, events before each user's test item
        in that order (train + validation, and events that share the test
        item's timestamp but come before it): what test-time rankings read and mask.
      val_target: ``(users,)`` int32 validation item, -1 if none.
      test_target: ``(users,)`` int32 test item, -1 if none.
      test_time: ``(users,)`` float64 first time of the test item, inf if none.
      train_items: items seen in training, per user.
      history_items: items seen before the test item, per user.
      ties: the tie order the split was made in (``TIE_ORDERS``); sequences
        built for it must use the same.
    """

    train_events: np.ndarray
    history_events: np.ndarray
    val_target: np.ndarray
    test_target: np.ndarray
    test_time: np.ndarray
    train_items: ItemSets
    history_items: ItemSets
    ties: str = "input"

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct positive (user, item) training pairs, ``(pairs,)`` each."""
        sets = self.train_items
        users = np.repeat(np.arange(sets.num_users, dtype=np.int32), sets.counts())
        return users, sets.items


def leave_last_out(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, num_users: int, *,
                   ties: str = "input") -> TemporalSplit:
    """Split events per user in chronological order: last new item = test, second-to-last = validation.

    Args:
      user, item: ``(events,)`` int dense indices.
      timestamp: ``(events,)`` float epoch seconds.
      num_users: size of the user vocabulary.
      ties: how events at the same timestamp are ordered (``chronological_order``):
        ``"input"`` (default; input position) or ``"item"`` (item index).
    """
    n = len(user)
    order = chronological_order(user, item, timestamp, ties)
    position = np.empty(n, np.int64)  # each event's place in the order
    position[order] = np.arange(n)
    first = first_interactions(user, item, timestamp, ties)
    counts = np.bincount(user[first], minlength=num_users)
    ends = np.cumsum(counts)
    idx = np.flatnonzero(counts >= 3)
    test_event, val_event = first[ends[idx] - 1], first[ends[idx] - 2]
    val_target = np.full(num_users, -1, np.int32)
    test_target = np.full(num_users, -1, np.int32)
    test_time = np.full(num_users, np.inf)
    test_target[idx] = item[test_event]
    val_target[idx] = item[val_event]
    test_time[idx] = timestamp[test_event]
    # Users without targets keep every event (a place past the end).
    val_place = np.full(num_users, n, np.int64)
    test_place = np.full(num_users, n, np.int64)
    val_place[idx] = position[val_event]
    test_place[idx] = position[test_event]
    train_events = position < val_place[user]
    history_events = position < test_place[user]
    # The targets themselves are never had before their first event, so they
    # cannot be masked out of their own evaluation.
    train_items = ItemSets.from_pairs(user[train_events], item[train_events], num_users)
    history_items = ItemSets.from_pairs(user[history_events], item[history_events], num_users)
    return TemporalSplit(train_events, history_events, val_target, test_target, test_time, train_items, history_items,
                         ties)
