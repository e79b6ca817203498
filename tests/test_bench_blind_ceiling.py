"""bench/blind_ceiling.py: a verdict fitted on a blind log's own truth, in two folds by user."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import blind_ceiling, blind_story
from fgjax.evaluation.detection import Truth
from fgjax.evaluation.verdict import VerdictRows


def _raw_reference(counts, user, slot):
    """``raw_features`` by a loop over windows and pairs, in float64."""
    windows, pairs = counts.shape[0], len(user)
    out = np.zeros((windows, pairs, 2 * len(blind_ceiling.RAW_BINS) + 2))
    for p in range(pairs):
        own = counts[:, user[p], slot[p]].astype(np.float64)
        mine = counts[:, user[p], :].sum(axis=1).astype(np.float64)
        active = np.nonzero(own)[0]
        for t in range(windows):
            for b, (lo, hi) in enumerate(blind_ceiling.RAW_BINS):
                span = slice(max(t - hi, 0), max(t - lo + 1, 0))
                out[t, p, b] = np.log1p(own[span].sum())
                out[t, p, len(blind_ceiling.RAW_BINS) + b] = np.log1p(mine[span].sum())
            out[t, p, -2] = np.log1p(t - active[0]) if len(active) and t >= active[0] else 0.0
            out[t, p, -1] = np.log1p(own[: t + 1].sum())
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), windows=st.integers(1, 140), users=st.integers(1, 4),
       slots=st.integers(1, 3), empty=st.booleans())
def test_raw_features_match_a_loop(seed, windows, users, slots, empty):
    """Each bin, the user's totals, the age and the running count against a plain loop; bins reaching before the
    log's start sum what there is, a pair never active has age 0 and count 0."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(0, 2, (1, users, slots)), (windows, users, slots)).astype(np.float32)
    counts *= rng.uniform(size=(windows, 1, 1)) < 0.6
    if empty:
        counts[:, 0, 0] = 0
    user, slot = np.repeat(np.arange(users), slots), np.tile(np.arange(slots), users)
    got = blind_ceiling.raw_features(counts, user, slot)
    np.testing.assert_allclose(got, _raw_reference(counts, user, slot), rtol=1e-6, atol=1e-6)


def _rows(users: int, slots: int, windows: int = 5) -> VerdictRows:
    pairs = users * slots
    user, slot = np.repeat(np.arange(users), slots), np.tile(np.arange(slots), users)
    zeros = np.zeros(pairs, np.int64)
    truth = Truth(user=user, interest=slot, kind=zeros, start=zeros, onset=zeros - 1, forgotten=zeros - 1,
                  resume=zeros - 1, judged=np.ones(pairs, bool))
    features = np.arange(windows * pairs, dtype=np.float32).reshape(windows, pairs, 1)
    return VerdictRows(features, np.ones((windows, pairs), bool), truth, (windows, users, slots))


def test_two_fold_scores_each_user_by_the_fit_of_the_other_half():
    """The fit sees one half of the users and flags only the other; the halves cover every pair once, and the
    subset keeps each pair's features and truth together."""
    rows = _rows(users=7, slots=3)
    seen = []

    def fit(train):
        trained = set(train.truth.user.tolist())
        seen.append(trained)
        # each pair's features identify it: the subset must carry them with its truth
        assert np.array_equal(train.features[0, :, 0], train.truth.user * 3 + train.truth.interest)

        def flag(scored):
            assert not trained & set(scored.truth.user.tolist())
            flags = np.zeros(scored.shape, bool)
            flags[1, scored.truth.user, scored.truth.interest] = True
            return flags
        return flag

    flags = blind_ceiling.two_fold(rows, fit)
    assert seen[0] | seen[1] == set(range(7)) and not seen[0] & seen[1]
    assert flags[1].all() and not flags[[0, 2, 3, 4]].any()


def test_subset_keeps_every_truth_field():
    rows = _rows(users=4, slots=2)
    keep = rows.truth.user >= 2
    part = blind_ceiling.subset(rows, keep)
    for field in dataclasses.fields(Truth):
        np.testing.assert_array_equal(getattr(part.truth, field.name), getattr(rows.truth, field.name)[keep])
    assert part.features.shape == (5, 4, 1) and part.silent.shape == (5, 4) and part.shape == rows.shape


def test_data_without_truth_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no truth.parquet"):
        blind_ceiling.main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.slow
def test_the_study_scores_the_shipped_and_the_truth_fitted_verdict(tmp_path):
    """End to end on a small log: the shipped verdict, the rule at its best N and the linear fit on the log's truth
    are each scored; the JSON and Markdown are written."""
    data = tmp_path / "data"
    blind_story.generate(data, users=200, days=63, seed=5)
    payload = blind_ceiling.main(["--data", str(data), "--out", str(tmp_path / "out"), "--windows", "7",
                                  "--shares", "0.25"])
    (cell,) = payload["cells"]
    assert cell["positives"] > 0 and cell["windows"] == 9
    for method in ("rule", "shipped", "linear_on_truth"):
        assert 0.0 < cell[method]["f1"] <= 1.0
    assert "trees_on_truth" not in cell
    # the log's own span and users, not the flags' defaults (3,000 x 120)
    assert payload["setup"]["users"] == 200 and 60 <= payload["setup"]["days"] <= 64 and payload["setup"]["seed"] is None
    written = json.loads((tmp_path / "out" / "blind_ceiling.json").read_text())
    assert written["cells"][0]["linear_on_truth"] == cell["linear_on_truth"]
    assert "linear, on truth" in (tmp_path / "out" / "blind_ceiling.md").read_text()


@pytest.mark.slow
def test_the_trees_learn_a_separable_verdict_and_flag_only_the_held_out_forgotten():
    """Slot 0 of every user stops at window 6 and its one feature turns on there; slot 1 is loyal with the feature
    off. Fitted on one half of the users, the trees' threshold (chosen on that half's F1) flags the other half's
    stopped slots from window 6 on and nothing else."""
    pytest.importorskip("sklearn")
    from fgjax.config import load_config
    from fgjax.data import synthetic

    users, windows = 40, 12
    rows = _rows(users=users, slots=2, windows=windows)
    stopped = rows.truth.interest == 0
    kind = np.where(stopped, synthetic.KINDS.index("stopped"), synthetic.KINDS.index("stable"))
    truth = dataclasses.replace(rows.truth, kind=kind, onset=np.where(stopped, 6, -1),
                                forgotten=np.where(stopped, 6, -1))
    on = (np.arange(windows)[:, None] >= 6) & stopped[None, :]
    rows = dataclasses.replace(rows, truth=truth, features=on[..., None].astype(np.float32))
    flags = blind_ceiling.two_fold(rows, blind_ceiling.trees_fit(load_config(None, [])))
    want = np.zeros(rows.shape, bool)
    want[6:, :, 0] = True
    np.testing.assert_array_equal(flags, want)
