"""fgjax.kernels._topk.masked_top_k against a stable NumPy argsort."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.kernels import masked_top_k

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
topk_jit = jax.jit(masked_top_k, static_argnums=1)


def ref_top_k(scores, k, exclude=None):
    """Best first, ties to the lower index, excluded items never before allowed ones."""
    scores = np.asarray(scores, np.float64)
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    idx = np.empty(scores.shape[:-1] + (k,), np.int64)
    val = np.empty(scores.shape[:-1] + (k,))
    for row in np.ndindex(scores.shape[:-1]):
        order = np.argsort(-scores[row], kind="stable")[:k]
        idx[row] = order
        val[row] = scores[row][order]
    return val, idx


def _check(got, want, exclude=None):
    values, indices = (np.asarray(x) for x in got)
    want_v, want_i = want
    np.testing.assert_array_equal(values, want_v.astype(np.float32))
    finite = np.isfinite(want_v)
    np.testing.assert_array_equal(indices[finite], want_i[finite])
    if exclude is not None:
        # Excluded items only ever appear in the -inf tail.
        picked = np.take_along_axis(np.asarray(exclude), indices, axis=-1)
        assert np.all(values[picked] == -np.inf)
    # Indices are distinct per row.
    flat = indices.reshape(-1, indices.shape[-1])
    assert all(len(set(r)) == len(r) for r in flat)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
@pytest.mark.parametrize("use_exclude", [False, True])
def test_matches_argsort(batch, use_exclude):
    rng = np.random.default_rng(len(batch) + 10 * use_exclude)
    scores = rng.normal(size=batch + (20,)).astype(np.float32)
    exclude = rng.random(batch + (20,)) < 0.3 if use_exclude else None
    for k in (1, 5, 20):
        want = ref_top_k(scores, k, exclude)
        got = topk_jit(scores, k, exclude=exclude)
        assert got[0].shape == batch + (k,) and got[1].shape == batch + (k,)
        _check(got, want, exclude)
    if batch:
        vm = jax.jit(jax.vmap(lambda s, e: masked_top_k(s, 5, exclude=e)))
        e = exclude if use_exclude else np.zeros(scores.shape, bool)
        _check(vm(scores, e), ref_top_k(scores, 5, e), e)


def test_eager_and_ties():
    scores = jnp.array([[1.0, 3.0, 3.0, 1.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    exclude = jnp.array([[False, True, False, False, False, False], [False] * 6])
    values, indices = masked_top_k(scores, 4, exclude=exclude)
    np.testing.assert_array_equal(indices, [[2, 4, 0, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(values, [[3.0, 3.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])


def test_fewer_allowed_than_k():
    scores = jnp.array([0.5, 0.1, 0.9, 0.3])
    exclude = jnp.array([True, False, True, True])
    values, indices = topk_jit(scores, 3, exclude=exclude)
    assert int(indices[0]) == 1 and float(values[0]) == pytest.approx(0.1)
    assert np.all(np.isneginf(np.asarray(values[1:])))
    values, _ = topk_jit(scores, 2, exclude=jnp.ones(4, bool))
    assert np.all(np.isneginf(np.asarray(values)))


def test_bad_k():
    for k in (0, 5):
        with pytest.raises(ValueError, match="k must be"):
            masked_top_k(jnp.zeros((2, 4)), k)


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([(), (3,), (2, 2)]),
    st.sampled_from([1, 7, 16]),
    st.booleans(),
    st.floats(0, 1),
)
def test_property_equals_argsort_with_exclusions(seed, batch, items, ties, p_exclude):
    rng = np.random.default_rng(seed)
    shape = batch + (items,)
    scores = rng.integers(-3, 3, shape) if ties else rng.normal(size=shape)
    scores = scores.astype(np.float32)
    exclude = rng.random(shape) < p_exclude
    k = int(rng.integers(1, items + 1))
    _check(topk_jit(scores, k, exclude=exclude), ref_top_k(scores, k, exclude), exclude)
