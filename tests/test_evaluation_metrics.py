"""Paired comparisons of two methods on the same users, against plain NumPy and SciPy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fgjax.evaluation.metrics import paired_comparison, per_user_ndcg


def test_paired_comparison_matches_a_numpy_bootstrap_and_scipy():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 300) * (rng.random(300) < 0.2)  # most users miss with both methods
    treat = np.where(rng.random(300) < 0.1, rng.uniform(0, 1, 300), base)
    got = paired_comparison(treat, base, seed=7, resamples=500)
    diff = treat - base
    draws = np.random.default_rng(7).integers(0, 300, size=(500, 300))
    means = diff[draws].mean(axis=1)
    assert got["mean_difference"] == pytest.approx(diff.mean(), abs=1e-15)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-15)
    assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diff[diff != 0]).pvalue)
    assert (got["better"], got["worse"], got["tied"]) == ((diff > 0).sum(), (diff < 0).sum(), (diff == 0).sum())
    assert got["better"] + got["worse"] + got["tied"] == got["users"] == 300


def test_identical_methods_tie_everywhere_and_a_clear_gain_is_significant():
    same = np.linspace(0, 1, 50)
    tie = paired_comparison(same, same)
    assert tie["mean_difference"] == 0 and tie["ci_low"] == tie["ci_high"] == 0 and tie["wilcoxon_p"] == 1.0
    assert tie["tied"] == 50
    gain = paired_comparison(same + 0.1 + 0.01 * np.sin(np.arange(50)), same)
    assert gain["ci_low"] > 0 and gain["wilcoxon_p"] < 1e-6 and gain["better"] == 50
    with pytest.raises(ValueError, match="no users"):
        paired_comparison(np.zeros(0), np.zeros(0))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=40), st.integers(0, 2**31 - 1))
def test_property_the_interval_brackets_resampled_means_and_swapping_negates(values, seed):
    diff = np.asarray(values)
    a, b = np.clip(diff, 0, None), np.clip(-diff, 0, None)  # a - b == diff
    got = paired_comparison(a, b, seed=seed, resamples=200)
    assert diff.min() - 1e-12 <= got["ci_low"] <= got["ci_high"] <= diff.max() + 1e-12
    swapped = paired_comparison(b, a, seed=seed, resamples=200)
    assert swapped["mean_difference"] == pytest.approx(-got["mean_difference"])
    assert (swapped["ci_low"], swapped["ci_high"]) == pytest.approx((-got["ci_high"], -got["ci_low"]), abs=1e-12)
    assert (swapped["better"], swapped["worse"]) == (got["worse"], got["better"])


def test_per_user_ndcg_averages_to_the_reported_metric():
    from fgjax.evaluation.metrics import metrics_at

    rng = np.random.default_rng(0)
    top = np.stack([rng.permutation(30)[:10] for _ in range(20)]).astype(np.int32)
    targets = rng.integers(0, 30, (20, 1)).astype(np.int32)
    per_user = per_user_ndcg(top, targets, 10)
    rank = np.array([np.flatnonzero(t == row)[0] if (row == t).any() else -1 for row, t in zip(top, targets[:, 0])])
    want = np.where(rank >= 0, 1 / np.log2(np.maximum(rank, 0) + 2), 0.0)  # one target: IDCG = 1
    np.testing.assert_allclose(per_user, want, rtol=1e-6)
    assert metrics_at(top, targets, [10])["ndcg@10"] == pytest.approx(per_user.mean(), rel=1e-6)
