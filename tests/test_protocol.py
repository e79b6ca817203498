"""Temporal protocols as stages: leave-last-out and the global time cut-off."""

from __future__ import annotations

import numpy as np
import pytest

from fgjax.data.split import leave_last_out
from fgjax.errors import DataError
from fgjax.data.protocol import from_split, leave_last_out_protocol, time_cutoff_protocol
from test_data_formats import ML100K, needs_ml100k


def _events(seed=0, n=600, users=30, items=80):
    rng = np.random.default_rng(seed)
    return rng.integers(0, users, n), rng.integers(0, items, n), rng.uniform(0, 1e6, n).round(), users


def _items(sets, u):
    return set(sets.items[sets.indptr[u] : sets.indptr[u + 1]].tolist())


def test_leave_last_out_stages():
    user, item, ts, users = _events()
    split = leave_last_out(user, item, ts, users)
    p = from_split(split, user, item, ts)
    assert p.name == "leave_last_out"
    np.testing.assert_array_equal(p.validation.targets[:, 0], split.val_target[p.validation.users])
    np.testing.assert_array_equal(p.test.targets[:, 0], split.test_target[p.test.users])
    for u in p.validation.users:
        # The validation time is the first time of the validation item; training comes before it in the order.
        first = ts[(user == u) & (item == split.val_target[u])].min()
        assert p.validation.at_time[u] == first
        assert ts[p.train_events & (user == u)].max(initial=-1) <= first
        assert split.val_target[u] not in _items(p.validation.seen, u)
        assert split.test_target[u] not in _items(p.test.seen, u)


def test_leave_last_out_stages_mask_same_timestamp_items_before_the_target():
    # User 0: items 1, 2 then three at t=9 in the input order 7, 3, 5; user 1: 4, 6, 8 at distinct times.
    user = np.array([0, 0, 1, 0, 0, 1, 0, 1], np.int32)
    item = np.array([1, 2, 4, 7, 3, 6, 5, 8], np.int32)
    ts = np.array([1.0, 2.0, 1.0, 9.0, 9.0, 2.0, 9.0, 3.0])
    for ties, (val0, test0) in (("input", (3, 5)), ("item", (5, 7))):
        p = leave_last_out_protocol(user, item, ts, 2, ties=ties)
        assert p.ties == ties
        assert p.validation.targets[:, 0].tolist() == [val0, 6]
        assert p.test.targets[:, 0].tolist() == [test0, 8]
        assert p.validation.at_time.tolist() == [9.0, 2.0] and p.test.at_time.tolist() == [9.0, 3.0]
        # Seen = every item before the stage's target in the order, the same-timestamp ones included.
        assert _items(p.validation.seen, 0) == {1, 2, 3, 5, 7} - {val0, test0}
        assert _items(p.test.seen, 0) == {1, 2, 3, 5, 7} - {test0}
        assert _items(p.validation.seen, 1) == {4} and _items(p.test.seen, 1) == {4, 6}
        # A model reads exactly the events of the masked items.
        for stage in (p.validation, p.test):
            for u in (0, 1):
                assert set(item[stage.known_events & (user == u)].tolist()) == _items(stage.seen, u)
        np.testing.assert_array_equal(p.train_events, p.validation.known_events)


def test_time_cutoff_targets_are_new_items_after_the_cut():
    user, item, ts, users = _events(1)
    p = time_cutoff_protocol(user, item, ts, users, (0.6, 0.8))
    val_cut, test_cut = np.quantile(ts, 0.6), np.quantile(ts, 0.8)
    np.testing.assert_array_equal(p.train_events, ts < val_cut)
    np.testing.assert_array_equal(p.test.known_events, ts < test_cut)
    assert np.all(p.validation.at_time == val_cut) and np.all(p.test.at_time == test_cut)
    for stage, lo, hi in ((p.validation, -np.inf, val_cut), (p.test, -np.inf, test_cut)):
        for u, row in zip(stage.users, stage.targets):
            known = set(item[(user == u) & (ts < hi)].tolist())
            assert known and known == _items(stage.seen, u)  # judged users have history; all of it is masked
            got = set(row[row >= 0].tolist())
            window = (user == u) & (ts >= hi) & ((ts < test_cut) if hi == val_cut else True)
            assert got == set(item[window].tolist()) - known
            assert len(got) == int((row >= 0).sum())  # distinct
    # Every user with history and a new item after the cut is judged.
    expected = {u for u in range(users) if ((user == u) & (ts < test_cut)).any()
                and (set(item[(user == u) & (ts >= test_cut)].tolist()) - set(item[(user == u) & (ts < test_cut)].tolist()))}
    assert set(p.test.users.tolist()) == expected


def test_time_cutoff_with_no_one_to_judge_is_a_clear_error():
    user = np.array([0, 0, 1, 1])
    item = np.array([1, 2, 3, 4])
    ts = np.array([0.0, 1.0, 2.0, 3.0])  # user 1 only after the cut: no history
    with pytest.raises(DataError, match="cutoff_quantiles"):
        time_cutoff_protocol(user, item, ts, 2, (0.4, 0.5))


@pytest.mark.slow
@needs_ml100k
def test_popularity_on_ml100k_matches_the_field(tmp_path):
    """Issue 15's check that the default protocol is the field's: popularity (distinct training users per item,
    known items masked, full ranking) on ML-100K leave-last-out reaches test NDCG@10 0.0449 within 0.002
    (the stable-sort convention of RecBole and most papers; item-index ties give about 0.025)."""
    from fgjax.config import DataConfig
    from fgjax.data.reader import read_events
    from fgjax.evaluation import quality as Q

    log = read_events(DataConfig(format="recbole", path=str(ML100K)), rejects_path=tmp_path / "r.parquet")
    got = {}
    for ties in ("input", "item"):
        p = leave_last_out_protocol(log.user, log.item, log.timestamp, log.num_users, ties=ties)
        scores = Q.popularity_scores(p.train_items, p.test.users, log.num_items)
        got[ties] = Q.evaluate_stage(scores, Q.exclusion_matrix(p.test, log.num_items), p.test, [10])
        assert len(p.test.users) == 943
    assert abs(got["input"]["ndcg@10"] - 0.0449) <= 0.002
    assert got["item"]["ndcg@10"] < 0.03
