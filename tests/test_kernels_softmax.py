"""fgjax.kernels._softmax against a float64 NumPy reference: softmax_cross_entropy (loss and both gradients) and
the fused training loss weighted_softmax_cross_entropy (loss and its three gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.kernels import softmax_cross_entropy, weighted_softmax_cross_entropy

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)


def ref_ce(queries, table, labels, weights):
    """float64: per-row losses and the gradients of ``sum(weights * losses)`` in queries and table."""
    q = np.asarray(queries, np.float64)
    t = np.asarray(table, np.float64)
    w = np.asarray(weights, np.float64)
    logits = q @ t.T
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    rows = np.arange(len(q))
    losses = lse - logits[rows, labels]
    soft = np.exp(logits - lse[:, None])
    soft[rows, labels] -= 1.0
    soft *= w[:, None]
    return losses, soft @ t, soft.T @ q


def kernel_ce(queries, table, labels, weights, chunk):
    # One jitted program per case: op-by-op dispatch would compile every scan and custom-VJP piece apart.
    @jax.jit
    def run(q, t, y, w):
        def total(q, t):
            return jnp.sum(w * softmax_cross_entropy(q, t, y, chunk=chunk))

        return softmax_cross_entropy(q, t, y, chunk=chunk), *jax.grad(total, argnums=(0, 1))(q, t)

    return tuple(np.asarray(a) for a in run(queries, table, labels, weights))


def fused_ce(queries, table, labels, weights, chunk):
    """The fused kernel under one jit: its value, and its gradients in queries, table and weights."""

    @jax.jit
    def run(q, t, y, w):
        return jax.value_and_grad(lambda q, t, w: weighted_softmax_cross_entropy(q, t, y, w, chunk=chunk),
                                  argnums=(0, 1, 2))(q, t, w)

    value, grads = run(queries, table, labels, weights)
    return (np.asarray(value), *(np.asarray(g) for g in grads))


def ref_fused(queries, table, labels, weights):
    losses, d_q, d_t = ref_ce(queries, table, labels, weights)
    return np.sum(np.asarray(weights, np.float64) * losses), d_q, d_t, losses


def fused_ce_constant_weights(queries, table, labels, weights, chunk):
    """The fused kernel with the weights held constant (the training loss): rows of weight 0 are skipped."""

    @jax.jit
    def run(q, t, y):
        return jax.value_and_grad(lambda q, t: weighted_softmax_cross_entropy(q, t, y, weights, chunk=chunk),
                                  argnums=(0, 1))(q, t)

    value, grads = run(queries, table, labels)
    return (np.asarray(value), *(np.asarray(g) for g in grads))


def ref_fused_constant_weights(queries, table, labels, weights):
    return ref_fused(queries, table, labels, weights)[:3]


#: kernel under test -> (run it under jit, its float64 reference), both returning the same tuple.
KERNELS = {"per_row": (kernel_ce, ref_ce), "fused": (fused_ce, ref_fused),
           "fused_constant_weights": (fused_ce_constant_weights, ref_fused_constant_weights)}


def _case(seed, rows, items, dim, scale=1.0):
    rng = np.random.default_rng(seed)
    q = (scale * rng.normal(size=(rows, dim))).astype(np.float32)
    t = rng.normal(size=(items, dim)).astype(np.float32)
    y = rng.integers(0, items, rows).astype(np.int32)
    w = rng.random(rows).astype(np.float32)
    return q, t, y, w


def _close(got, want, tol):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(1.0, float(np.abs(w).max(initial=0.0))))


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("rows, items, dim, chunk", [(37, 11, 8, 5), (64, 300, 16, 64), (7, 3, 4, 512),
                                                      (100, 50, 8, 1)])
def test_matches_float64_reference(kind, rows, items, dim, chunk):
    run, reference = KERNELS[kind]
    q, t, y, w = _case(rows + items, rows, items, dim)
    _close(run(q, t, y, w, chunk), reference(q, t, y, w), 1e-5)


@pytest.mark.parametrize("kind", KERNELS)
@given(rows=st.integers(1, 40), items=st.integers(1, 30), dim=st.integers(1, 6), chunk=st.integers(1, 50),
       seed=st.integers(0, 2**16), scale=st.sampled_from([0.0, 0.1, 1.0, 5.0]))
@SETTINGS
def test_property_any_shape_and_chunk(kind, rows, items, dim, chunk, seed, scale):
    run, reference = KERNELS[kind]
    q, t, y, w = _case(seed, rows, items, dim, scale)
    w[::3] = 0.0  # masked rows, as the padding of a sequence batch
    _close(run(q, t, y, w, chunk), reference(q, t, y, w), 2e-5)


def test_equals_autodiff_of_the_dense_loss_under_jit():
    import optax

    q, t, y, w = _case(3, 90, 40, 8)

    def dense(q, t):
        return jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(q @ t.T, y))

    def chunked(q, t):
        return jnp.sum(w * softmax_cross_entropy(q, t, y, chunk=16))

    got = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(q, t)
    want = jax.value_and_grad(dense, argnums=(0, 1))(q, t)
    for g, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=1e-5, atol=1e-5)


def test_edge_cases():
    # Zero queries: a uniform softmax, loss log(items) for every row.
    t = np.random.default_rng(0).normal(size=(13, 4)).astype(np.float32)
    losses = np.asarray(softmax_cross_entropy(np.zeros((6, 4), np.float32), t, np.arange(6) % 13, chunk=4))
    np.testing.assert_allclose(losses, np.log(13.0), rtol=1e-6)
    # One item: the loss and every gradient are zero.
    q, _, _, w = _case(1, 9, 1, 3)
    one = np.ones((1, 3), np.float32)
    got = kernel_ce(q, one, np.zeros(9, np.int32), w, 4)
    for x in got:
        np.testing.assert_allclose(x, 0.0, atol=1e-6)
    # Huge logits stay finite and match the float64 reference (log-sum-exp, never exp of a raw logit).
    q, t, y, w = _case(2, 20, 30, 4, scale=200.0)
    got = kernel_ce(q, t, y, w, 8)
    assert all(np.isfinite(x).all() for x in got)
    _close(got, ref_ce(q, t, y, w), 1e-4)
    # No rows: an empty result, and a zero gradient.
    empty = softmax_cross_entropy(np.zeros((0, 4), np.float32), t, np.zeros(0, np.int32))
    assert empty.shape == (0,)


def test_bad_shapes_raise():
    q, t, y, _ = _case(0, 5, 7, 3)
    with pytest.raises(ValueError, match="share dim"):
        softmax_cross_entropy(q, t[:, :2], y)
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(q, t, y[:3])
    with pytest.raises(ValueError, match="chunk"):
        softmax_cross_entropy(q, t, y, chunk=0)



@pytest.mark.parametrize("zero_rows", [slice(0, 0), slice(None, None, 2), slice(3, None), slice(None, -5), slice(None)])
def test_zero_weight_rows_are_skipped_exactly(zero_rows):
    # Weighted rows first, zero rows anywhere: value and gradients as if every row were computed, with chunk
    # boundaries inside and between the weighted rows (37 rows, chunks of 8).
    q, t, y, w = _case(11, 37, 23, 5)
    w[zero_rows] = 0.0
    want = ref_fused(q, t, y, w)
    _close(fused_ce_constant_weights(q, t, y, w, 8), want[:3], 1e-5)
    # Differentiated in the weights, the zero rows' losses are computed: d/dw is every row's loss.
    _close(fused_ce(q, t, y, w, 8), want, 1e-5)
    # Without grad the value is the same.
    value = jax.jit(lambda q, t: weighted_softmax_cross_entropy(q, t, y, w, chunk=8))(q, t)
    np.testing.assert_allclose(float(value), want[0], rtol=1e-5)


@pytest.mark.parametrize("query_dtype, table_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16)])
def test_fused_mixed_precision_keeps_each_input_dtype(query_dtype, table_dtype):
    # bf16 queries with an f32 table (or the reverse): the value as the float64 reference of the rounded inputs,
    # each gradient in its input's dtype.
    q, t, y, w = _case(7, 29, 17, 6)
    w[::3] = 0.0
    q_low, t_low = jnp.asarray(q, query_dtype), jnp.asarray(t, table_dtype)
    value, (d_q, d_t) = jax.jit(jax.value_and_grad(
        lambda q, t: weighted_softmax_cross_entropy(q, t, y, w, chunk=8), argnums=(0, 1)))(q_low, t_low)
    assert d_q.dtype == query_dtype and d_t.dtype == table_dtype
    want = ref_fused(np.asarray(q_low, np.float32), np.asarray(t_low, np.float32), y, w)
    np.testing.assert_allclose(float(value), want[0], rtol=1e-5)
    for got, ref in ((d_q, want[1]), (d_t, want[2])):
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def test_fused_value_without_grad_equals_the_per_row_kernel():
    q, t, y, w = _case(5, 50, 20, 6)
    fused = float(jax.jit(lambda q, t: weighted_softmax_cross_entropy(q, t, y, w, chunk=7))(q, t))
    per_row = float(jnp.sum(w * softmax_cross_entropy(q, t, y, chunk=7)))
    np.testing.assert_allclose(fused, per_row, rtol=1e-6)


def test_fused_edge_cases():
    # Zero queries: every row's loss is log(items); the value is sum(w) * log(items).
    t = np.random.default_rng(0).normal(size=(13, 4)).astype(np.float32)
    w = np.full(6, 0.5, np.float32)
    got = fused_ce(np.zeros((6, 4), np.float32), t, np.arange(6) % 13, w, 4)
    np.testing.assert_allclose(got[0], 3.0 * np.log(13.0), rtol=1e-6)
    np.testing.assert_allclose(got[3], np.log(13.0), rtol=1e-6)  # d/dw = each row's loss
    # One item: the loss and every gradient are zero.
    q, _, _, w = _case(1, 9, 1, 3)
    for x in fused_ce(q, np.ones((1, 3), np.float32), np.zeros(9, np.int32), w, 4):
        np.testing.assert_allclose(x, 0.0, atol=1e-6)
    # Huge logits stay finite and match the reference.
    q, t, y, w = _case(2, 20, 30, 4, scale=200.0)
    got = fused_ce(q, t, y, w, 8)
    assert all(np.isfinite(x).all() for x in got)
    _close(got, ref_fused(q, t, y, w), 1e-4)
    # Every weight 0 (a batch of padding): a zero loss and zero gradients.
    for x in fused_ce(q, t, y, np.zeros_like(w), 8)[:3]:
        np.testing.assert_allclose(x, 0.0, atol=1e-6)
    assert float(weighted_softmax_cross_entropy(np.zeros((0, 4), np.float32), t, np.zeros(0, np.int32),
                                                np.zeros(0, np.float32))) == 0.0


def test_fused_bad_shapes_raise():
    q, t, y, w = _case(0, 5, 7, 3)
    with pytest.raises(ValueError, match="share dim"):
        weighted_softmax_cross_entropy(q, t[:, :2], y, w)
    with pytest.raises(ValueError, match="weights"):
        weighted_softmax_cross_entropy(q, t, y, w[:2])
    with pytest.raises(ValueError, match="chunk"):
        weighted_softmax_cross_entropy(q, t, y, w, chunk=0)
