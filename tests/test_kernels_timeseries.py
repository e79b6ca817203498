"""Time-series kernels against float64 NumPy references.

The references take time first, ``(T, ...)``; the kernels take it last,
``(..., T)``, so inputs are handed over with ``last`` (``np.moveaxis``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax import kernels


def last(a):
    """Time axis first -> last."""
    return np.moveaxis(np.asarray(a), 0, -1)


def ref_slope(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Least-squares slope along axis 0 per column, by np.polyfit on the valid points."""
    flat_y = y.reshape(y.shape[0], -1).astype(np.float64)
    flat_m = np.broadcast_to(valid, y.shape).reshape(y.shape[0], -1)
    out = np.zeros(flat_y.shape[1])
    for j in range(flat_y.shape[1]):
        x = np.nonzero(flat_m[:, j])[0]
        if len(x) >= 2:
            out[j] = np.polyfit(x.astype(np.float64), flat_y[x, j], 1)[0]
    return out.reshape(y.shape[1:])


def ref_period(y: np.ndarray, valid: np.ndarray, min_period: int = 2) -> tuple[np.ndarray, np.ndarray]:
    y = y.astype(np.float64)
    m = np.broadcast_to(valid, y.shape).astype(np.float64)
    mean = (m * y).sum(0) / np.maximum(m.sum(0), 1)
    centered = (y - mean) * m
    power = np.abs(np.fft.rfft(centered, axis=0)) ** 2
    total = power[1:].sum(0)
    cand = power[1 : y.shape[0] // min_period + 1]
    j = cand.argmax(0) + 1
    has = total > 1e-9
    return np.where(has, y.shape[0] / j, 0.0), np.where(has, cand.max(0) / np.where(has, total, 1), 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trend_slope_matches_polyfit_with_masks(seed):
    rng = np.random.default_rng(seed)
    y = rng.poisson(3.0, size=(9, 5, 4)).astype(np.float32)
    valid = rng.random((9, 5, 4)) < 0.7
    valid[:, 0, 0] = False  # no point
    valid[:, 0, 1] = False
    valid[3, 0, 1] = True  # one point
    got = np.asarray(kernels.trend_slope(last(y), last(valid)))
    np.testing.assert_allclose(got, ref_slope(y, valid), rtol=1e-4, atol=1e-5)
    assert got[0, 0] == 0 and got[0, 1] == 0
    np.testing.assert_allclose(kernels.trend_slope(last(y)), ref_slope(y, np.ones_like(valid)), rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.floats(-50, 50), st.floats(-5, 5), st.integers(2, 16))
def test_trend_slope_of_a_line_is_its_slope(intercept, slope, length):  # one series: (T,) either way
    y = intercept + slope * np.arange(length, dtype=np.float64)
    np.testing.assert_allclose(float(kernels.trend_slope(y)), slope, rtol=1e-3, atol=1e-3 * (1 + abs(intercept)))


@pytest.mark.parametrize("seed", [0, 1])
def test_dominant_period_matches_numpy_fft(seed):
    rng = np.random.default_rng(seed)
    T = 32
    y = rng.poisson(2.0, size=(T, 6, 3)).astype(np.float32)
    valid = np.arange(T)[:, None, None] >= rng.integers(0, T - 4, size=(1, 6, 3))
    period, strength = kernels.dominant_period(last(y), last(valid))
    ref_p, ref_s = ref_period(y, valid)
    np.testing.assert_allclose(np.asarray(period), ref_p, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(strength), ref_s, rtol=1e-3, atol=1e-5)


def test_dominant_period_finds_a_periodic_signal_and_not_a_flat_one():
    T = 64
    t = np.arange(T)
    bursts = ((t % 8) < 2).astype(np.float32) * 5  # every 8 windows
    flat = np.full(T, 3.0, np.float32)
    period, strength = kernels.dominant_period(np.stack([bursts, flat, np.zeros(T, np.float32)]))
    assert float(period[0]) == 8.0 and float(strength[0]) > 0.4
    assert float(period[1]) == 0.0 and float(strength[1]) == 0.0  # constant: no period
    assert float(period[2]) == 0.0 and float(strength[2]) == 0.0  # zero vector
    with pytest.raises(ValueError, match="min_period"):
        kernels.dominant_period(np.zeros((2, 3)), min_period=1)
    with pytest.raises(ValueError, match="min_period"):
        kernels.dominant_period(np.zeros((2, 3)), min_period=4)


def test_activity_buffer_keeps_the_last_T_windows_in_order_and_saturates():
    rng = np.random.default_rng(3)
    T, W = 5, 13
    counts = rng.integers(0, 400, size=(W, 4, 3))
    buffer = kernels.activity_buffer_init(T, (4, 3))
    update = jax.jit(kernels.activity_buffer_update, donate_argnums=0)
    for w in range(W):
        buffer = update(buffer, counts[w])
        ordered = np.moveaxis(np.asarray(kernels.activity_buffer_ordered(buffer)), -1, 0)
        expect = np.zeros((T, 4, 3))
        recent = np.clip(counts[max(0, w + 1 - T) : w + 1], 0, 255)
        expect[T - len(recent) :] = recent
        np.testing.assert_array_equal(ordered, expect)
    assert int(buffer.windows) == W
    with pytest.raises(ValueError):
        kernels.activity_buffer_init(0, (2,))


def test_running_moments_and_adaptive_threshold_match_numpy():
    rng = np.random.default_rng(5)
    values = rng.normal(1.0, 2.0, size=(20, 6)).astype(np.float32)
    values[3, 0] = np.inf  # never counted
    values[4, 1] = np.nan
    include = rng.random((20, 6)) < 0.8
    include[:, 5] = False  # no history: fallback
    include[:, 4] = False
    include[0, 4] = True  # one value: fallback too
    moments = kernels.running_moments_init((6,))
    for v, m in zip(values, include):
        moments = kernels.running_moments_update(moments, v, m)
    threshold = np.asarray(kernels.adaptive_threshold(moments, 2.0, fallback=7.0))
    for j in range(6):
        xs = values[include[:, j] & np.isfinite(values[:, j]), j].astype(np.float64)
        assert float(moments.count[j]) == len(xs)
        if len(xs) >= 2:
            np.testing.assert_allclose(float(moments.mean[j]), xs.mean(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(threshold[j], xs.mean() + 2 * xs.std(ddof=1), rtol=1e-4, atol=1e-4)
        else:
            assert threshold[j] == 7.0


def test_kernels_jit_and_vmap():
    y = np.random.default_rng(0).poisson(2.0, size=(4, 16, 3)).astype(np.float32)  # 4 batches of (T=16, 3)
    slopes = jax.vmap(lambda s: kernels.trend_slope(s))(jnp.asarray(np.moveaxis(y, 1, -1)))  # (4, 3)
    np.testing.assert_allclose(slopes, np.stack([ref_slope(s, np.ones_like(s, bool)) for s in y]),
                               rtol=1e-4, atol=1e-5)
    period, _ = jax.jit(kernels.dominant_period)(last(y[0]))
    np.testing.assert_allclose(period, ref_period(y[0], np.ones((16, 3), bool))[0])
