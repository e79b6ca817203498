"""Leave-last-out split and CSR item sets against a plain-Python reference."""

import numpy as np
from hypothesis import given, settings, strategies as st

from fgjax.data.split import ItemSets, leave_last_out


def reference_split(user, item, ts, num_users):
    """Per user: first time of each item; last new item = test, second-to-last = validation."""
    val = np.full(num_users, -1)
    test = np.full(num_users, -1)
    val_time = np.full(num_users, np.inf)
    test_time = np.full(num_users, np.inf)
    for u in range(num_users):
        first = {}
        for i, t in zip(item[user == u], ts[user == u]):
            first[i] = min(first.get(i, np.inf), t)
        ordered = sorted(first.items(), key=lambda kv: (kv[1], kv[0]))
        if len(ordered) >= 3:
            (val[u], val_time[u]), (test[u], test_time[u]) = ordered[-2], ordered[-1]
    return val, test, ts < val_time[user], ts < test_time[user]


def random_log(rng, num_users=20, num_items=15, events=300):
    user = rng.integers(0, num_users, events).astype(np.int32)
    item = rng.integers(0, num_items, events).astype(np.int32)
    ts = rng.integers(0, 50, events).astype(np.float64)  # ties on purpose
    return user, item, ts


def test_matches_reference_on_random_logs():
    rng = np.random.default_rng(0)
    for _ in range(5):
        user, item, ts = random_log(rng)
        split = leave_last_out(user, item, ts, 20)
        val, test, train_mask, hist_mask = reference_split(user, item, ts, 20)
        np.testing.assert_array_equal(split.val_target, val)
        np.testing.assert_array_equal(split.test_target, test)
        np.testing.assert_array_equal(split.train_events, train_mask)
        np.testing.assert_array_equal(split.history_events, hist_mask)


def test_targets_are_never_seen_before_they_are_evaluated():
    rng = np.random.default_rng(1)
    user, item, ts = random_log(rng, events=1000)
    split = leave_last_out(user, item, ts, 20)
    for u in np.flatnonzero(split.test_target >= 0):
        train_items = split.train_items.items[split.train_items.indptr[u] : split.train_items.indptr[u + 1]]
        hist_items = split.history_items.items[split.history_items.indptr[u] : split.history_items.indptr[u + 1]]
        assert split.val_target[u] not in train_items
        assert split.test_target[u] not in hist_items
        val_first = ts[(user == u) & (item == split.val_target[u])].min()
        test_first = ts[(user == u) & (item == split.test_target[u])].min()
        # Simultaneous first interactions are not "before" the test item.
        assert (split.val_target[u] in hist_items) == (val_first < test_first)


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
