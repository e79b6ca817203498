"""bench/silences.py: the silences of a log, their outcomes, ROC AUC, and the report on a small generated log."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import silences as S


def reference_silences(counts: np.ndarray, min_events: float, age: int) -> set[tuple[int, int, int, int, bool]]:
    """Window by window, per pair: (user, interest, start, length, returned)."""
    windows, users, interests = counts.shape
    out = set()
    for u in range(users):
        for k in range(interests):
            total = 0.0
            for t in range(windows):
                total += counts[t, u, k]
                if counts[t, u, k] > 0 and total >= min_events:
                    nxt = t + 1
                    while nxt < windows and counts[nxt, u, k] == 0:
                        nxt += 1
                    if nxt - t - 1 >= age:
                        out.add((u, k, t + 1, nxt - t - 1, nxt < windows))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), age=st.integers(1, 6), min_events=st.sampled_from([1.0, 3.0, 5.0]))
def test_silences_match_a_window_by_window_reference(seed, age, min_events):
    rng = np.random.default_rng(seed)
    counts = (rng.poisson(0.6, (30, 3, 2)) * (rng.random((30, 3, 2)) < 0.5)).astype(np.float32)
    found = S.silences(counts, min_events, age)
    got = set(zip(found.user.tolist(), found.interest.tolist(), found.start.tolist(), found.length.tolist(),
                  found.returned.tolist()))
    assert len(got) == len(found.user) and got == reference_silences(counts, min_events, age)


def test_no_silence_is_empty_arrays():
    found = S.silences(np.ones((5, 2, 2), np.float32), 1.0, 1)
    assert all(len(c) == 0 for c in found)


def test_outcomes_need_the_user_seen_after_the_horizon_or_a_return_within_it():
    found = S.Silences(user=np.array([0, 1, 2, 3]), interest=np.zeros(4, int), start=np.array([5, 5, 5, 5]),
                       length=np.array([20, 20, 4, 20]), returned=np.array([False, False, True, True]))
    user_last = np.array([30, 12, 30, 30])  # user 1 left before the horizon ended
    gone, decided = S.outcomes(found, user_last, horizon=10)
    assert gone.tolist() == [True, False, False, True]  # a return after the horizon is still gone for it
    assert decided.tolist() == [True, False, True, True]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 40))
def test_roc_auc_is_the_share_of_ordered_pairs_with_ties_half(seed, n):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 5, n).astype(np.float64)  # many ties
    label = rng.random(n) < 0.4
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        assert S.roc_auc(score, label) is None
        return
    pairs = [(p > q) + 0.5 * (p == q) for p in pos for q in neg]
    assert S.roc_auc(score, label) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_features_read_the_history_before_the_silence_and_the_user_during_it():
    counts = np.zeros((12, 1, 2), np.float32)
    counts[[0, 1, 2, 3], 0, 0] = [2, 0, 1, 3]  # 6 events in 4 windows, 3 of them active; silent from 4
    counts[[1, 5, 6, 9], 0, 1] = [4, 1, 2, 7]  # the user's other interest
    found = S.silences(counts, 1.0, 3)
    first = [i for i in range(len(found.user)) if found.interest[i] == 0 and found.start[i] == 4]
    assert len(first) == 1
    row = {key: value[first[0]] for key, value in S.features(counts, found, 3).items()}
    assert row["events per window before"] == pytest.approx(6 / 4)
    assert row["active windows before"] == 3
    assert row["share of the user's events before"] == pytest.approx(6 / 10)
    assert row["user's events elsewhere during it"] == 3  # windows 4-6: 1 + 2


@pytest.mark.slow
def test_the_report_on_a_generated_log(tmp_path, capsys):
    payload = S.main(["--synthetic", "classic", "--synthetic-days", "140", "--synthetic-users", "80",
                      "--set", "synthetic.users_per_shard=80", "--out", str(tmp_path)])
    (row,) = payload["datasets"]
    assert row["name"] == "synthetic classic" and row["silences"] > 0 and row["age_windows"] == 4
    assert row["rows_read"] == row["events"] + sum(row["rows_rejected"].values())  # no row lost unseen
    assert 0 <= row["base_rate"] <= 1 and 0 <= row["detector_flagged"] <= 1
    assert set(row["auc"]) == {"events per window before", "active windows before",
                               "share of the user's events before", "user's events elsewhere during it"}
    written = json.loads((tmp_path / "silences.json").read_text())
    assert written["datasets"][0]["silences"] == row["silences"] and written["device"]
    assert "| synthetic classic |" in (tmp_path / "silences.md").read_text() and "| synthetic classic |" in capsys.readouterr().out
