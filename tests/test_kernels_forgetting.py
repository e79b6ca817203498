"""fgjax.kernels._forgetting against plain float64 NumPy references.

The references below are written from SPEC.md ("The seed's model, made
precise"), not from the kernels: per-row loops in float64.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fgjax.kernels import (
    forgetting_degree,
    interest_forgetting,
    interest_probs,
    recommendation_score,
)

RTOL = 1e-5
ATOL = 1e-6
BATCHES = [(), (4,), (2, 3)]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

# Jitted entry points, shared by most tests: eager dispatch compiles every
# primitive once per new shape, which dominates the runtime of small tests.
# Each kernel is also called eagerly at least once below.
degree_jit = jax.jit(forgetting_degree, static_argnames=("normalize", "eps", "cap"))
forgetting_jit = jax.jit(interest_forgetting, static_argnames=("mode", "eps"))
probs_jit = jax.jit(interest_probs)


# --------------------------------------------------------------------------
# float64 references


def ref_forgetting_degree(cur, prev, normalize="current", eps=1e-8, cap=None):
    cur = np.asarray(cur, np.float64)
    prev = np.asarray(prev, np.float64)
    out = np.empty(cur.shape[:-1])
    for idx in np.ndindex(out.shape):
        c, p = cur[idx], prev[idx]
        diff = math.sqrt(sum((a - b) ** 2 for a, b in zip(c, p)))
        den = math.sqrt(sum(a * a for a in c))
        if normalize == "max":
            den = max(den, math.sqrt(sum(b * b for b in p)))
        if den > eps:
            val = diff / den
        elif diff > eps:
            val = math.inf
        else:
            val = 0.0
        if cap is not None:
            val = min(val, cap)
        out[idx] = val
    return out


def ref_interest_forgetting(cur, prev, mode="decline", eps=1e-8):
    cur = np.asarray(cur, np.float64)
    prev = np.asarray(prev, np.float64)
    out = np.empty(cur.shape)
    for idx in np.ndindex(cur.shape[:-1]):
        c, p = cur[idx], prev[idx]
        den = math.sqrt(sum(a * a for a in c))
        for k in range(c.shape[0]):
            change = max(p[k] - c[k], 0.0) if mode == "decline" else abs(p[k] - c[k])
            if den > eps:
                out[idx + (k,)] = change / den
            else:
                out[idx + (k,)] = math.inf if change > 0 else 0.0
    return out


def ref_interest_probs(f, alpha, mask=None):
    f = np.asarray(f, np.float64)
    batch = f.shape[:-1]
    alpha = np.broadcast_to(np.asarray(alpha, np.float64), batch)
    mask = np.ones(f.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), f.shape)
    out = np.zeros(f.shape)
    for idx in np.ndindex(batch):
        allowed = np.flatnonzero(mask[idx])
        if allowed.size == 0:
            continue
        a = float(alpha[idx])
        row = f[idx][allowed]
        if a == 0.0:
            logits = np.zeros(row.shape)
        else:
            logits = np.array([-math.inf if math.isinf(x) else -a * x for x in row])
        if np.all(np.isneginf(logits)):
            probs = np.full(row.shape, 1.0 / row.size)
        else:
            top = logits[np.isfinite(logits)].max()
            w = np.exp(logits - top)
            probs = w / w.sum()
        out[idx][allowed] = probs
    return out


# --------------------------------------------------------------------------
# the golden example of SPEC.md


def test_golden_example():
    cur = jnp.array([1.0, 1.0, 0.0])
    prev = jnp.array([1.0, 0.0, 1.0])
    assert float(forgetting_degree(cur, prev)) == pytest.approx(1.0, rel=1e-6)
    decline = interest_forgetting(cur, prev)
    np.testing.assert_allclose(decline, [0.0, 0.0, 0.70711], atol=1e-5)
    np.testing.assert_allclose(interest_probs(decline, 1.0), [0.4011, 0.4011, 0.1978], atol=1e-4)
    np.testing.assert_allclose(interest_probs(decline, 2.0), [0.4458, 0.4458, 0.1084], atol=1e-4)
    change = interest_forgetting(cur, prev, mode="change")
    np.testing.assert_allclose(change, [0.0, 0.70711, 0.70711], atol=1e-5)
    np.testing.assert_allclose(interest_probs(change, 1.0), [0.5035, 0.2483, 0.2483], atol=1e-4)
    # Not the article's sqrt 2 (it took ||I_t|| = 1), not its uniform 1/3.
    assert float(forgetting_degree(cur, prev)) != pytest.approx(math.sqrt(2))


# --------------------------------------------------------------------------
# random inputs, batch shapes, jit and vmap


def _pair(rng, shape, k):
    cur = rng.normal(size=shape + (k,)).astype(np.float32)
    prev = rng.normal(size=shape + (k,)).astype(np.float32)
    return cur, prev


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("normalize", ["current", "max"])
def test_forgetting_degree_matches_reference(batch, normalize):
    rng = np.random.default_rng(10 * len(batch) + (normalize == "max"))
    cur, prev = _pair(rng, batch, 6)
    want = ref_forgetting_degree(cur, prev, normalize)
    got = degree_jit(cur, prev, normalize=normalize)
    assert got.shape == batch and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if batch:
        vmapped = jax.jit(jax.vmap(partial(forgetting_degree, normalize=normalize)))
        np.testing.assert_allclose(vmapped(cur, prev), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mode", ["decline", "change"])
def test_interest_forgetting_matches_reference(batch, mode):
    rng = np.random.default_rng(7 + len(batch))
    cur, prev = _pair(rng, batch, 5)
    want = ref_interest_forgetting(cur, prev, mode)
    got = forgetting_jit(cur, prev, mode=mode)
    assert got.shape == batch + (5,)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if batch:
        vmapped = jax.vmap(partial(interest_forgetting, mode=mode))
        vmapped = jax.jit(jax.vmap(vmapped) if len(batch) == 2 else vmapped)
        np.testing.assert_allclose(vmapped(cur, prev), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 3.0])
def test_interest_probs_matches_reference(batch, alpha):
    rng = np.random.default_rng(11 + len(batch))
    f = rng.uniform(0, 3, size=batch + (7,)).astype(np.float32)
    want = ref_interest_probs(f, alpha)
    got = probs_jit(f, alpha)
    assert got.shape == f.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if batch:
        np.testing.assert_allclose(jax.jit(jax.vmap(interest_probs, in_axes=(0, None)))(f, alpha), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_interest_probs_per_user_alpha_and_mask(batch):
    rng = np.random.default_rng(3)
    f = rng.uniform(0, 2, size=batch + (6,)).astype(np.float32)
    f[..., 0] = np.inf
    alpha = rng.uniform(0, 4, size=batch).astype(np.float32)
    alpha.reshape(-1)[0] = 0.0
    mask = rng.random(batch + (6,)) < 0.6
    mask.reshape(-1, 6)[0] = False  # one user with an empty history
    want = ref_interest_probs(f, alpha, mask)
    got = np.asarray(probs_jit(f, alpha, mask=mask))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    vmapped = jax.jit(jax.vmap(lambda f_, a_, m_: interest_probs(f_, a_, mask=m_)))
    np.testing.assert_allclose(vmapped(f, alpha, mask), want, rtol=RTOL, atol=ATOL)
    assert np.all(got[~mask] == 0)
    sums = got.sum(-1)
    np.testing.assert_allclose(sums[mask.any(-1)], 1.0, rtol=1e-5)
    assert np.all(sums[~mask.any(-1)] == 0)


@pytest.mark.parametrize("batch", BATCHES)
def test_recommendation_score_matches_reference(batch):
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(4), size=batch).astype(np.float32)
    w = rng.uniform(0, 2, size=4).astype(np.float32)
    want = np.einsum("...k,k->...", p.astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(recommendation_score(w, p), want, rtol=RTOL)
    wb = rng.uniform(0, 2, size=batch + (4,)).astype(np.float32)
    want_b = (wb.astype(np.float64) * p).sum(-1)
    np.testing.assert_allclose(jax.jit(recommendation_score)(wb, p), want_b, rtol=RTOL)


# --------------------------------------------------------------------------
# edge cases


def test_zero_vectors():
    zero = jnp.zeros((3,))
    one = jnp.array([0.0, 2.0, 0.0])
    for normalize in ("current", "max"):
        assert float(degree_jit(zero, zero, normalize=normalize)) == 0.0
        assert float(degree_jit(zero, zero, normalize=normalize, cap=10.0)) == 0.0
    # Everything forgotten: +inf (or the cap) under the seed's normalization.
    assert float(degree_jit(zero, one)) == math.inf
    assert float(degree_jit(zero, one, cap=10.0)) == 10.0
    assert float(degree_jit(zero, one, normalize="max")) == 1.0
    # Everything new: ||I_t - 0|| / ||I_t|| = 1.
    assert float(degree_jit(one, zero)) == 1.0
    # Per-interest: the lost interest is inf, the others 0; never NaN.
    for mode in ("decline", "change"):
        f = np.asarray(forgetting_jit(zero, one, mode=mode))
        np.testing.assert_array_equal(f, [0.0, math.inf, 0.0])
        np.testing.assert_array_equal(forgetting_jit(zero, zero, mode=mode), [0.0, 0.0, 0.0])
    # An interest that grew from nothing: decline 0, change 1.
    np.testing.assert_array_equal(forgetting_jit(one, zero), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(forgetting_jit(one, zero, mode="change"), [0.0, 1.0, 0.0])


def test_mixed_batch_never_nan_and_cap():
    cur = jnp.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1e-9, 0.0]])
    prev = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    got = np.asarray(degree_jit(cur, prev))
    np.testing.assert_array_equal(got, [0.0, np.inf, 1.0, 0.0])
    np.testing.assert_array_equal(degree_jit(cur, prev, cap=5.0), [0.0, 5.0, 1.0, 0.0])
    for normalize in ("current", "max"):
        for cap in (None, 5.0):
            got = np.asarray(jax.jit(partial(forgetting_degree, normalize=normalize, cap=cap))(cur, prev))
            assert not np.isnan(got).any()
            np.testing.assert_array_equal(got, ref_forgetting_degree(cur, prev, normalize, cap=cap))


def test_max_normalization_bounded_for_opposite_vectors():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20000, 4)) * 10.0 ** rng.uniform(-3, 3, size=(20000, 1))).astype(np.float32)
    y = (-x * (1 + rng.normal(size=x.shape) * 1e-7)).astype(np.float32)
    got = np.asarray(degree_jit(x, y, normalize="max"))
    assert got.min() >= 0.0 and got.max() <= 2.0
    np.testing.assert_allclose(got, 2.0, rtol=1e-5)
    # Tiny opposite vectors below eps: still 2 (not inf) under "max".
    tiny = jnp.array([0.9e-8, 0.0])
    assert float(degree_jit(tiny, -tiny, normalize="max")) <= 2.0


def test_huge_alpha():
    rng = np.random.default_rng(1)
    f = rng.uniform(0, 1, size=(64, 5)).astype(np.float32)
    p = np.asarray(probs_jit(f, 1e6))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    # All the mass on the least-forgotten interest (distinct f here).
    np.testing.assert_array_equal(p.argmax(-1), f.argmin(-1))
    np.testing.assert_allclose(p.max(-1), 1.0, rtol=1e-6)
    # Ties at the minimum share it; the golden decline example.
    p = np.asarray(probs_jit(jnp.array([0.0, 0.0, 0.70711]), 1e6))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-7)


def test_alpha_zero_is_uniform():
    f = jnp.array([[0.0, 3.0, np.inf, 100.0], [np.inf, np.inf, np.inf, np.inf]])
    np.testing.assert_allclose(probs_jit(f, 0.0), np.full((2, 4), 0.25), rtol=1e-6)
    mask = jnp.array([[True, False, True, True], [True, True, False, False]])
    np.testing.assert_allclose(
        probs_jit(f, 0.0, mask=mask), [[1 / 3, 0, 1 / 3, 1 / 3], [0.5, 0.5, 0, 0]], rtol=1e-6
    )


def test_infinite_f():
    f = jnp.array([[np.inf, 0.5, 1.0], [np.inf, np.inf, np.inf], [np.inf, np.inf, 2.0]])
    p = np.asarray(probs_jit(f, 2.0))
    assert not np.isnan(p).any()
    np.testing.assert_allclose(p, ref_interest_probs(f, 2.0), rtol=RTOL, atol=ATOL)
    assert p[0, 0] == 0.0 and p[2, 2] == 1.0
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-6)  # nothing distinguishes them


def test_one_interest():
    rng = np.random.default_rng(2)
    cur, prev = _pair(rng, (10,), 1)
    np.testing.assert_allclose(degree_jit(cur, prev), ref_forgetting_degree(cur, prev), rtol=RTOL)
    f = forgetting_jit(cur, prev)
    np.testing.assert_allclose(f, ref_interest_forgetting(cur, prev), rtol=RTOL, atol=ATOL)
    for alpha in (0.0, 1.0, 1e6):
        np.testing.assert_array_equal(probs_jit(f, alpha), np.ones((10, 1)))
    np.testing.assert_array_equal(probs_jit(jnp.array([np.inf]), 1.0), [1.0])


def test_empty_history_mask():
    f = jnp.ones((3, 4))
    mask = jnp.zeros((3, 4), bool)
    for alpha in (0.0, 1.0, 1e6):
        np.testing.assert_array_equal(probs_jit(f, alpha, mask=mask), np.zeros((3, 4)))


def test_bad_options():
    with pytest.raises(ValueError, match="normalize"):
        forgetting_degree(jnp.ones(2), jnp.ones(2), normalize="prev")
    with pytest.raises(ValueError, match="mode"):
        interest_forgetting(jnp.ones(2), jnp.ones(2), mode="gain")


# --------------------------------------------------------------------------
# properties

_K = st.sampled_from([1, 3, 8])
_B = st.sampled_from([(), (2,), (2, 3)])


@st.composite
def _vectors(draw, allow_zero=True):
    shape = draw(_B) + (draw(_K),)
    # 0 or |x| in [2^-10, 100]: norms are 0 or far from eps, so float32 and
    # float64 agree on which side of eps they fall.
    elems = st.one_of(st.just(0.0), st.floats(2.0**-10, 100, width=32), st.floats(-100, -(2.0**-10), width=32))
    cur = draw(hnp.arrays(np.float32, shape, elements=elems))
    prev = draw(hnp.arrays(np.float32, shape, elements=elems))
    if allow_zero and draw(st.booleans()):
        cur[..., : shape[-1] // 2 + 1] = 0  # some rows partly or fully zero
    return cur, prev


@SETTINGS
@given(_vectors())
def test_property_degree_matches_reference_and_bounds(pair):
    cur, prev = pair
    got = np.asarray(degree_jit(cur, prev))
    want = ref_forgetting_degree(cur, prev)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    bounded = np.asarray(degree_jit(cur, prev, normalize="max"))
    assert np.all((bounded >= 0) & (bounded <= 2))
    np.testing.assert_allclose(bounded, ref_forgetting_degree(cur, prev, "max"), rtol=1e-4, atol=1e-5)
    capped = np.asarray(degree_jit(cur, prev, cap=3.0))
    assert np.all((capped >= 0) & (capped <= 3))


@SETTINGS
@given(_vectors(allow_zero=False), st.floats(1e-2, 1e2), st.integers(-10, 20))
def test_property_degree_scale_invariant(pair, scale, power):
    cur, prev = pair
    cur[np.all(cur == 0, axis=-1)] = 1.0  # keep ||I_t|| well above eps after scaling
    for normalize in ("current", "max"):
        base = np.asarray(degree_jit(cur, prev, normalize=normalize))
        exact = np.float32(2.0**power)
        # Power-of-two scaling is exact in floating point (up to underflow of
        # squares far below the norm).
        np.testing.assert_allclose(
            degree_jit(cur * exact, prev * exact, normalize=normalize), base, rtol=1e-6, atol=1e-12
        )
        scaled = np.asarray(
            degree_jit(np.float32(scale) * cur, np.float32(scale) * prev, normalize=normalize)
        )
        np.testing.assert_allclose(scaled, base, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(_vectors())
def test_property_decline_at_most_change(pair):
    cur, prev = pair
    decline = np.asarray(forgetting_jit(cur, prev))
    change = np.asarray(forgetting_jit(cur, prev, mode="change"))
    assert np.all(decline >= 0) and not np.isnan(change).any()
    assert np.all(decline <= change)
    np.testing.assert_allclose(decline, ref_interest_forgetting(cur, prev), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(
    _B.flatmap(
        lambda b: _K.flatmap(
            lambda k: hnp.arrays(
                np.float32,
                b + (k,),
                elements=st.one_of(st.floats(0, 50, width=32), st.just(np.float32(np.inf))),
            )
        )
    ),
    st.one_of(st.just(0.0), st.floats(1e-3, 1e6)),
)
def test_property_probs_sum_to_one_and_monotone(f, alpha):
    p = np.asarray(probs_jit(f, alpha))
    assert np.isfinite(p).all() and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    rows_f = f.reshape(-1, f.shape[-1])
    rows_p = p.reshape(-1, f.shape[-1])
    for fr, pr in zip(rows_f, rows_p):
        order = np.argsort(fr, kind="stable")
        if alpha > 0:
            # Less forgotten -> at least as probable.
            assert np.all(np.diff(pr[order]) <= 1e-7)
        else:
            np.testing.assert_allclose(pr, 1.0 / len(pr), rtol=1e-6)
    if alpha <= 10:  # beyond this float32 rounding of alpha * f exceeds rtol 1e-4
        np.testing.assert_allclose(p, ref_interest_probs(f, alpha), rtol=1e-4, atol=1e-6)
