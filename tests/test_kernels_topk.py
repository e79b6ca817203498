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


# ---------------------------------------------------------------------------
# blocked_top_k / matmul_top_k: the same answer as masked_top_k on the full matrix.
# ---------------------------------------------------------------------------

from fgjax.kernels import TOPK_METHODS, blocked_top_k, matmul_top_k  # noqa: E402


def _matrix_scorer(matrix):
    matrix = jnp.asarray(matrix)

    def score(ids):
        return jnp.take_along_axis(matrix, jnp.broadcast_to(ids, (matrix.shape[0], ids.shape[1])), axis=1)

    return score


def _exclude_mask(exclude, shape):
    mask = np.zeros(shape, bool)
    for r in range(shape[0]):
        e = exclude[r][(exclude[r] >= 0) & (exclude[r] < shape[1])]
        mask[r, e] = True
    return mask


def _blocked(matrix, k, exclude=None, **kw):
    rows, items = matrix.shape
    fn = jax.jit(lambda m, e: blocked_top_k(_matrix_scorer(m), rows, items, k, exclude=e, **kw))
    return fn(matrix, exclude)


@pytest.mark.parametrize("method", TOPK_METHODS)
@pytest.mark.parametrize("items,block,group", [(1000, 128, 32), (37, 8, 4), (5, 4096, 32), (300, 64, 1), (64, 64, 64)])
def test_blocked_equals_full_top_k(method, items, block, group):
    rng = np.random.default_rng(items + block)
    scores = rng.normal(size=(9, items)).astype(np.float32)
    exclude = rng.integers(-2, items + 5, (9, 13)).astype(np.int32)  # out-of-range values are padding
    for k in sorted({1, min(7, items), items}):
        want = ref_top_k(scores, k, _exclude_mask(exclude, scores.shape))
        got = _blocked(scores, k, exclude, block_size=block, group_size=group, method=method)
        _check(got, want, _exclude_mask(exclude, scores.shape))
        # No exclusion at all.
        _check(_blocked(scores, k, None, block_size=block, group_size=group, method=method), ref_top_k(scores, k))


@pytest.mark.parametrize("method", TOPK_METHODS)
def test_blocked_ties_and_fully_excluded_rows(method):
    # Few distinct values: many ties across groups and blocks; indices must match exactly.
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, (6, 203)).astype(np.float32)
    scores[1] = 1.0  # one row all equal
    exclude = np.full((6, 210), 10_000, np.int32)
    exclude[2, :203] = np.arange(203)  # everything excluded: all -inf
    exclude[3, :200] = np.arange(200)  # 3 allowed items, fewer than k
    mask = _exclude_mask(exclude, scores.shape)
    for k in (1, 5, 40):
        values, indices = _blocked(scores, k, exclude, block_size=32, group_size=8, method=method)
        want_v, want_i = ref_top_k(scores, k, mask)
        np.testing.assert_array_equal(np.asarray(values), want_v.astype(np.float32))
        np.testing.assert_array_equal(np.asarray(indices), want_i)  # -inf tail too, same tie rule
        np.testing.assert_array_equal(np.asarray(masked_top_k(scores, k, exclude=mask)[1]), want_i)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 120),
    st.sampled_from([1, 3, 16]),
    st.sampled_from([1, 4, 8]),
    st.sampled_from(TOPK_METHODS),
    st.booleans(),
)
def test_property_blocked_equals_full(seed, items, block, group, method, ties):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 5))
    scores = (rng.integers(-2, 2, (rows, items)) if ties else rng.normal(size=(rows, items))).astype(np.float32)
    exclude = rng.integers(0, items + 3, (rows, int(rng.integers(1, 6)))).astype(np.int32)
    k = int(rng.integers(1, items + 1))
    mask = _exclude_mask(exclude, scores.shape)
    values, indices = blocked_top_k(_matrix_scorer(scores), rows, items, k, exclude=exclude,
                                    block_size=block, group_size=group, method=method)
    want_v, want_i = ref_top_k(scores, k, mask)
    np.testing.assert_array_equal(np.asarray(values), want_v.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(indices), want_i)


@pytest.mark.parametrize("method", TOPK_METHODS)
def test_matmul_top_k_exact_on_integer_inputs(method):
    # Small integers: every dot product is exact in float32, whatever the summation order,
    # so the blocked path must return exactly the full matrix's top-k (ties included).
    rng = np.random.default_rng(11)
    q = rng.integers(-3, 4, (33, 16)).astype(np.float32)
    keys = rng.integers(-3, 4, (1001, 16)).astype(np.float32)
    exclude = rng.integers(0, 1001, (33, 20)).astype(np.int32)
    full = q @ keys.T
    mask = _exclude_mask(exclude, full.shape)
    fn = jax.jit(lambda a, b, e: matmul_top_k(a, b, 10, exclude=e, block_size=256, method=method))
    values, indices = fn(q, keys, exclude)
    want_v, want_i = jax.lax.top_k(jnp.where(mask, -jnp.inf, jnp.asarray(full)), 10)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want_v))
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_i))


def test_matmul_top_k_float_and_bfloat16_recall():
    rng = np.random.default_rng(5)
    q = rng.normal(size=(64, 32)).astype(np.float32)
    keys = rng.normal(size=(3000, 32)).astype(np.float32)
    want_v, want_i = jax.lax.top_k(jnp.asarray(q) @ jnp.asarray(keys).T, 10)
    values, indices = jax.jit(lambda a, b: matmul_top_k(a, b, 10, block_size=512))(q, keys)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_i))
    np.testing.assert_allclose(np.asarray(values), np.asarray(want_v), rtol=1e-5, atol=1e-5)
    _, approx = jax.jit(lambda a, b: matmul_top_k(a, b, 10, block_size=512, compute_dtype=jnp.bfloat16))(q, keys)
    approx, exact = np.asarray(approx), np.asarray(want_i)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
    assert 0.8 < recall <= 1.0  # bf16 inputs: close, not exact (the bench measures it at scale)


def test_blocked_top_k_bad_arguments():
    score = _matrix_scorer(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        blocked_top_k(score, 2, 10, 11)
    with pytest.raises(ValueError, match="method must be"):
        blocked_top_k(score, 2, 10, 3, method="sort")
    with pytest.raises(ValueError, match="block_size and group_size"):
        blocked_top_k(score, 2, 10, 3, group_size=0)


def test_matmul_top_k_multiplies_at_full_float32_precision_unless_asked_for_bfloat16():
    """Exact float32 selection must not inherit XLA's default precision, which is TF32 on NVIDIA GPUs (on an
    H200, 3 % of rows differed from lax.top_k at 100,000 items): every product in the exact path is HIGHEST."""
    import functools

    from fgjax.kernels import matmul_top_k

    def dot_precisions(fn, *args):
        found = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "dot_general":
                    found.append(eqn.params["precision"])
                for value in eqn.params.values():
                    for inner in value if isinstance(value, (tuple, list)) else (value,):
                        if hasattr(inner, "jaxpr") and hasattr(inner.jaxpr, "eqns"):
                            walk(inner.jaxpr)
                        elif hasattr(inner, "eqns"):
                            walk(inner)

        walk(jax.make_jaxpr(fn)(*args).jaxpr)
        return found

    q = jnp.ones((8, 4), jnp.float32)
    keys = jnp.ones((300, 4), jnp.float32)
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    for method in ("groups", "merge"):
        exact = dot_precisions(functools.partial(matmul_top_k, k=3, block_size=64, method=method), q, keys)
        assert exact and all(p == highest for p in exact), (method, exact)
        fast = dot_precisions(functools.partial(matmul_top_k, k=3, block_size=64, method=method,
                                                compute_dtype=jnp.bfloat16), q, keys)
        assert fast and all(p != highest for p in fast), (method, fast)


# ---------------------------------------------------------------------------
# few_top_k: lax.top_k's answer bit for bit, and a total-order sort's.
# ---------------------------------------------------------------------------

import math  # noqa: E402

from fgjax.kernels import few_top_k  # noqa: E402
from fgjax.kernels._topk import FEW_TOP_K_COLUMNS  # noqa: E402

few_jit = jax.jit(few_top_k, static_argnums=1)


def _total_order(value):
    """IEEE total order as a Python sort key: -NaN, -inf .. -0.0, 0.0 .. inf, NaN."""
    negative = math.copysign(1.0, value) < 0
    if math.isnan(value):
        return (0,) if negative else (2,)
    return (1, value, 0 if negative else 1)


def ref_total_top_k(x, k):
    """Largest first in total order, ties (equal keys) to the lower index: a stable sort per row."""
    x = np.asarray(x)
    values = np.empty(x.shape[:-1] + (k,), x.dtype)
    indices = np.empty(x.shape[:-1] + (k,), np.int64)
    for row in np.ndindex(x.shape[:-1]):
        key = [tuple(-v for v in _total_order(float(v))) for v in x[row]]  # largest first
        order = sorted(range(x.shape[-1]), key=lambda i: (key[i], i))[:k]
        indices[row] = order
        values[row] = x[row][order]
    return values, indices


def _same_bits(got, want):
    got_v, got_i = (np.asarray(a) for a in got)
    want_v, want_i = (np.asarray(a) for a in want)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_v.view(f"u{got_v.itemsize}"), want_v.view(f"u{want_v.itemsize}"))


SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan, 0.5], np.float32)


@pytest.mark.parametrize("columns", [1, 3, 16, 17])
@pytest.mark.parametrize("batch", [(40,), (4, 9)])
def test_few_top_k_equals_lax_top_k_and_a_total_order_sort(columns, batch):
    rng = np.random.default_rng(columns * 100 + len(batch))
    shape = batch + (columns,)
    x = rng.normal(size=shape).astype(np.float32)
    x[rng.random(shape) < 0.3] = 0.0  # ties at zero, as masked interests are
    special = rng.random(shape) < 0.2
    x[special] = rng.choice(SPECIAL, size=int(special.sum()))
    for k in sorted({1, min(3, columns), columns}):
        got = few_jit(x, k)
        assert got[0].shape == batch + (k,) and got[1].dtype == jnp.int32
        _same_bits(got, jax.lax.top_k(jnp.asarray(x), k))
        _same_bits(got, ref_total_top_k(x, k))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, jnp.bfloat16, np.float16, np.bool_])
def test_few_top_k_other_dtypes_equal_lax_top_k(dtype):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.integers(0, 5, (50, 12)).astype(np.float32)).astype(dtype)  # many ties
    for k in (1, 4, 12):
        _same_bits(few_jit(x, k), jax.lax.top_k(x, k))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.integers(1, 20), st.sampled_from([1, 30]), st.booleans())
def test_property_few_top_k_equals_lax_top_k(seed, columns, rows, ties):
    rng = np.random.default_rng(seed)
    shape = (rows, columns)
    x = (rng.choice(SPECIAL, size=shape) if ties else rng.normal(size=shape)).astype(np.float32)
    k = int(rng.integers(1, columns + 1))
    _same_bits(few_jit(x, k), jax.lax.top_k(jnp.asarray(x), k))


def test_few_top_k_past_its_columns_is_lax_top_k_and_checks_k():
    x = np.random.default_rng(3).normal(size=(5, FEW_TOP_K_COLUMNS + 1)).astype(np.float32)
    _same_bits(few_jit(x, 4), jax.lax.top_k(jnp.asarray(x), 4))
    row = np.array([0.5, -0.0, np.nan, 0.5, 0.0, 2.0], np.float32)  # one row: no batch axis
    _same_bits(few_top_k(row, 4), jax.lax.top_k(jnp.asarray(row), 4))
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be"):
            few_top_k(jnp.zeros((2, 3)), k)
