"""Leave-last-out split and CSR item sets against a plain-Python reference; tie order and masks on tiny logs."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fgjax.data.sequences import build_sequences
from fgjax.data.split import ItemSets, chronological_order, leave_last_out


def reference_split(user, item, ts, num_users, ties="input"):
    """Per user, events by (time, tie key, input position); each item at its first event;
    last new item = test, second-to-last = validation; train / history = events before them in that order."""
    val = np.full(num_users, -1)
    test = np.full(num_users, -1)
    train = np.ones(len(user), bool)
    hist = np.ones(len(user), bool)
    for u in range(num_users):
        events = [e for e in range(len(user)) if user[e] == u]
        events.sort(key=lambda e: (ts[e], item[e] if ties == "item" else 0, e))
        firsts = []
        for e in events:
            if item[e] not in [item[f] for f in firsts]:
                firsts.append(e)
        if len(firsts) >= 3:
            val[u], test[u] = item[firsts[-2]], item[firsts[-1]]
            place = {e: r for r, e in enumerate(events)}
            for e in events:
                train[e] = place[e] < place[firsts[-2]]
                hist[e] = place[e] < place[firsts[-1]]
    return val, test, train, hist


def random_log(rng, num_users=20, num_items=15, events=300):
    user = rng.integers(0, num_users, events).astype(np.int32)
    item = rng.integers(0, num_items, events).astype(np.int32)
    ts = rng.integers(0, 50, events).astype(np.float64)  # ties on purpose
    return user, item, ts


@pytest.mark.parametrize("ties", ["input", "item"])
def test_matches_reference_on_random_logs(ties):
    rng = np.random.default_rng(0)
    for _ in range(3):
        user, item, ts = random_log(rng)
        split = leave_last_out(user, item, ts, 20, ties=ties)
        val, test, train_mask, hist_mask = reference_split(user, item, ts, 20, ties)
        np.testing.assert_array_equal(split.val_target, val)
        np.testing.assert_array_equal(split.test_target, test)
        np.testing.assert_array_equal(split.train_events, train_mask)
        np.testing.assert_array_equal(split.history_events, hist_mask)
        assert split.ties == ties


def _items(sets, u):
    return sets.items[sets.indptr[u] : sets.indptr[u + 1]].tolist()


# One user, three events at the last timestamp, given in the input order 7, 3, 5 (not by item).
TIED = (np.zeros(6, np.int32), np.array([1, 2, 9, 7, 3, 5], np.int32), np.array([1.0, 2.0, 3.0, 9.0, 9.0, 9.0]))


def test_ties_keep_the_input_order_by_default():
    user, item, ts = TIED
    split = leave_last_out(user, item, ts, 1)
    # Input order: ... 9, 7, 3, 5 -> test 5 (last given), validation 3.
    assert (split.test_target[0], split.val_target[0]) == (5, 3)
    assert split.test_time[0] == 9.0
    # Training: everything before 3 in that order, 7 at the same timestamp included.
    assert split.train_events.tolist() == [True, True, True, True, False, False]
    assert split.history_events.tolist() == [True, True, True, True, True, False]
    # Masks: every item before the target in the order, same-timestamp ones included.
    assert _items(split.train_items, 0) == [1, 2, 7, 9]
    assert _items(split.history_items, 0) == [1, 2, 3, 7, 9]
    seq = build_sequences(user, item, ts, 1)
    assert seq.items.tolist() == [1, 2, 9, 7, 3, 5]  # the split's order: the held-out items are the last two


def test_item_id_ties_are_an_option():
    user, item, ts = TIED
    split = leave_last_out(user, item, ts, 1, ties="item")
    # Item order at timestamp 9: 3, 5, 7 -> test 7, validation 5.
    assert (split.test_target[0], split.val_target[0]) == (7, 5)
    assert _items(split.train_items, 0) == [1, 2, 3, 9]
    assert _items(split.history_items, 0) == [1, 2, 3, 5, 9]
    assert build_sequences(user, item, ts, 1, ties="item").items.tolist() == [1, 2, 9, 3, 5, 7]


def test_the_order_is_a_stable_sort_by_time_whatever_the_input_layout():
    # Two users interleaved, a later event given first: time decides, then input position.
    user = np.array([1, 0, 1, 0, 1, 0], np.int32)
    item = np.array([4, 8, 2, 6, 3, 1], np.int32)
    ts = np.array([5.0, 2.0, 1.0, 2.0, 5.0, 1.0])
    order = chronological_order(user, item, ts)
    assert list(zip(user[order].tolist(), item[order].tolist())) == [(0, 1), (0, 8), (0, 6), (1, 2), (1, 4), (1, 3)]
    order = chronological_order(user, item, ts, "item")
    assert list(zip(user[order].tolist(), item[order].tolist())) == [(0, 1), (0, 6), (0, 8), (1, 2), (1, 3), (1, 4)]
    with pytest.raises(ValueError, match="ties"):
        chronological_order(user, item, ts, "random")


def test_repeats_count_at_their_first_event_and_later_repeats_are_not_history():
    # Item 2 is had at t=1 and again after the test item: its second event is neither trained on nor history.
    user = np.zeros(6, np.int32)
    item = np.array([2, 4, 2, 6, 8, 2], np.int32)
    ts = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    split = leave_last_out(user, item, ts, 1)
    assert (split.val_target[0], split.test_target[0]) == (6, 8)
    assert split.train_events.tolist() == [True, True, True, False, False, False]
    assert split.history_events.tolist() == [True, True, True, True, False, False]
    assert build_sequences(user, item, ts, 1).items.tolist() == [2, 4, 6, 8]


def test_targets_are_never_seen_before_they_are_evaluated():
    rng = np.random.default_rng(1)
    user, item, ts = random_log(rng, events=1000)
    split = leave_last_out(user, item, ts, 20)
    for u in np.flatnonzero(split.test_target >= 0):
        train_items = _items(split.train_items, u)
        hist_items = _items(split.history_items, u)
        assert split.val_target[u] not in train_items
        assert split.test_target[u] not in hist_items
        # The validation item comes before the test item in the order, so it is history (and masked at test).
        assert split.val_target[u] in hist_items


def test_users_with_fewer_than_three_items_have_no_targets_and_keep_all_events():
    user = np.array([0, 0, 1, 1, 1], np.int32)
    item = np.array([4, 4, 1, 2, 3], np.int32)
    ts = np.array([1.0, 2.0, 1.0, 2.0, 3.0])
    split = leave_last_out(user, item, ts, 3)
    assert split.val_target.tolist() == [-1, 2, -1]
    assert split.test_target.tolist() == [-1, 3, -1]
    assert split.train_events.tolist() == [True, True, True, False, False]
    users, items = split.train_pairs()
    assert sorted(zip(users.tolist(), items.tolist())) == [(0, 4), (1, 1)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9)), min_size=1, max_size=60))
def test_item_sets_hold_exactly_the_distinct_pairs(pairs):
    users = np.array([p[0] for p in pairs], np.int32)
    items = np.array([p[1] for p in pairs], np.int32)
    sets = ItemSets.from_pairs(users, items, 6)
    for u in range(6):
        got = sets.items[sets.indptr[u] : sets.indptr[u + 1]].tolist()
        assert got == sorted({i for uu, i in pairs if uu == u})
    padded = sets.padded(np.arange(6), pad_value=99)
    assert padded.shape[1] & (padded.shape[1] - 1) == 0  # power of two
    for u in range(6):
        row = padded[u]
        assert sorted(row[row != 99].tolist()) == sorted({i for uu, i in pairs if uu == u})
