"""Temporal evaluation protocols as validation and test stages (never a random split).

- ``leave_last_out``: per user, in chronological order (ties by input
  position by default, or by item index: ``ties``), the last new item is the
  test target and the second-to-last the validation target; a stage knows and
  masks every event before its target in that order, same-timestamp ones
  included (``fgjax.data.split.leave_last_out``).
- ``time_cutoff``: one global time for everybody. Events before the
  validation cut train; a user's new items in ``[validation cut, test cut)``
  are its validation targets, those at or after the test cut (not had
  before it) its test targets. Users are judged when they have targets and at
  least one known item.

Every stage says what a model may read (``known_events``), what is masked
(``seen``), what is relevant (``targets``) and when each user is judged
(``at_time``, for the forgetting analysis).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fgjax.data.split import ItemSets, TemporalSplit, leave_last_out
from fgjax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Stage:
    """One evaluation stage (validation or test).

    Attributes:
      users: ``(n,)`` int32 users judged.
      targets: ``(n, T)`` int32 relevant items, -1 padded.
      known_events: ``(events,)`` bool events a model may read as input.
      seen: items masked per user (everything known before the stage).
      at_time: ``(users,)`` float64 epoch seconds each user is judged at (inf: never).
    """

    users: np.ndarray
    targets: np.ndarray
    known_events: np.ndarray
    seen: ItemSets
    at_time: np.ndarray


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A temporal protocol: what to train on, and its validation and test stages."""

    name: str
    train_events: np.ndarray  # (events,) bool
    train_items: ItemSets
    validation: Stage
    test: Stage
    ties: str = "input"  # the tie order (fgjax.data.split.TIE_ORDERS): sequences built for it use the same


def _first_times(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, users: np.ndarray,
                 targets: np.ndarray) -> np.ndarray:
    """``(len(users),)`` first time of each (user, target item) pair."""
    width = int(item.max(initial=0)) + 1
    key = user.astype(np.int64) * width + item
    order = np.lexsort((timestamp, key))
    keys, first = np.unique(key[order], return_index=True)
    wanted = users.astype(np.int64) * width + targets
    return timestamp[order][first][np.searchsorted(keys, wanted)]


def from_split(split: TemporalSplit, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> Protocol:
    """A leave-last-out ``TemporalSplit`` as a ``Protocol``."""
    num_users = len(split.val_target)
    users = np.flatnonzero(split.test_target >= 0).astype(np.int32)
    val_time = np.full(num_users, np.inf)
    val_time[users] = _first_times(user, item, timestamp, users, split.val_target[users])
    validation = Stage(users, split.val_target[users][:, None], split.train_events, split.train_items, val_time)
    test = Stage(users, split.test_target[users][:, None], split.history_events, split.history_items, split.test_time)
    return Protocol("leave_last_out", split.train_events, split.train_items, validation, test, split.ties)


def leave_last_out_protocol(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, num_users: int, *,
                            ties: str = "input") -> Protocol:
    return from_split(leave_last_out(user, item, timestamp, num_users, ties=ties), user, item, timestamp)


def _stage_targets(user, item, timestamp, known: np.ndarray, window: np.ndarray, known_items: ItemSets,
                   num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Users with >= 1 known item and new items in ``window``; ``(users, targets (n, T))``."""
    width = int(item.max(initial=0)) + 1
    known_keys = np.unique(user[known].astype(np.int64) * width + item[known])
    keys = np.unique(user[window].astype(np.int64) * width + item[window])
    new = keys[~np.isin(keys, known_keys)]
    owner = (new // width).astype(np.int64)
    has_known = known_items.counts() > 0
    keep = has_known[owner]
    new, owner = new[keep], owner[keep]
    users = np.unique(owner).astype(np.int32)
    counts = np.bincount(owner, minlength=num_users)[users]
    targets = np.full((len(users), max(int(counts.max(initial=0)), 1)), -1, np.int32)
    row = np.searchsorted(users, owner)
    col = np.arange(len(new)) - np.repeat(np.cumsum(counts) - counts, counts)
    targets[row, col] = (new % width).astype(np.int32)
    return users, targets


def time_cutoff_protocol(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, num_users: int,
                         quantiles: tuple[float, float] = (0.8, 0.9), *, ties: str = "input") -> Protocol:
    """Global time cut-offs at the ``quantiles`` of the event times (validation, test).

    The stages depend on time only; ``ties`` is recorded for the sequences built for them.
    """
    val_cut, test_cut = (float(np.quantile(timestamp, q)) for q in quantiles)
    train_events = timestamp < val_cut
    history_events = timestamp < test_cut
    train_items = ItemSets.from_pairs(user[train_events], item[train_events], num_users)
    history_items = ItemSets.from_pairs(user[history_events], item[history_events], num_users)
    val_users, val_targets = _stage_targets(user, item, timestamp, train_events, history_events & ~train_events,
                                            train_items, num_users)
    test_users, test_targets = _stage_targets(user, item, timestamp, history_events, ~history_events, history_items,
                                              num_users)
    if len(val_users) == 0 or len(test_users) == 0:
        raise DataError(f"time cut-offs at quantiles {list(quantiles)} leave no user with both history and "
                        "targets in a stage: choose other quality.cutoff_quantiles")
    validation = Stage(val_users, val_targets, train_events, train_items, np.full(num_users, val_cut))
    test = Stage(test_users, test_targets, history_events, history_items, np.full(num_users, test_cut))
    return Protocol("time_cutoff", train_events, train_items, validation, test, ties)
