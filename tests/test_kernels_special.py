"""``kernels._special``: lgamma and betaln equal to XLA's and jax's bit for bit, checked against float64 too."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jax import lax
from jax.scipy.special import betaln as jax_betaln

from fgjax.kernels import _special as special


def _bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.int32)


def test_lgamma_from_half_is_xla_lgamma_bit_for_bit_and_lgamma():
    rng = np.random.default_rng()
    x = np.concatenate([
        rng.uniform(0.5, 2.0, 200_000),
        np.exp(rng.uniform(0.0, math.log(1e6), 400_000)),
        np.arange(1, 5000),  # pseudo-counts: integers and half-integers
        np.arange(1, 5000) + 0.5,
        [0.5, 1.0, 2.0, np.inf, np.float32(3.4e38)],
    ]).astype(np.float32)
    got = np.asarray(jax.jit(special.lgamma_from_half)(x))
    np.testing.assert_array_equal(_bits(got), _bits(jax.jit(lax.lgamma)(x)))
    finite = np.isfinite(x) & (x < 1e30)
    want = np.array([math.lgamma(float(v)) for v in x[finite][::50]])
    # XLA's float32 lgamma is off by up to 2.4e-6 absolute near its roots (x in [0.5, 2.5], 2M draws against
    # float64; 2.0e-6 at the 99.99th percentile), so 2e-6 failed one draw in a few runs.
    np.testing.assert_allclose(got[finite][::50], want, rtol=2e-6, atol=5e-6)


@pytest.mark.parametrize("below_half", [False, True])
def test_betaln_is_jax_betaln_bit_for_bit(below_half):
    """From 1/2 on (the fast branch) and with one argument below it (XLA's lgamma, reflection included)."""
    rng = np.random.default_rng()
    n = 300_000
    a = np.exp(rng.uniform(math.log(0.5), math.log(1e4), n)).astype(np.float32)
    b = np.exp(rng.uniform(math.log(0.5), math.log(1e4), n)).astype(np.float32)
    a[: n // 10] = np.round(a[: n // 10])  # counts plus a prior of 1
    if below_half:
        a[7] = 0.25
        b[: n // 10] = rng.uniform(0.01, 0.5, n // 10).astype(np.float32)
    got = jax.jit(special.betaln)(a, b)
    np.testing.assert_array_equal(_bits(got), _bits(jax.jit(jax_betaln)(a, b)))


def test_betaln_edge_cases_follow_jax():
    cases = np.array([[0.5, 0.5], [1.0, 1.0], [1.0, 1e6], [8.0, 8.0], [7.999, 8.0], [np.inf, 2.0], [np.nan, 2.0],
                      [0.0, 3.0], [3.0, 1e-30]], np.float32)
    for pair in cases:  # one at a time: a NaN or a value below 1/2 sends the whole input to XLA's lgamma
        got = jax.jit(special.betaln)(pair[:1], pair[1:])
        want = jax.jit(jax_betaln)(pair[:1], pair[1:])
        np.testing.assert_array_equal(_bits(got), _bits(want))
    empty = np.zeros((0,), np.float32)
    assert jax.jit(special.betaln)(empty, empty).shape == (0,)


@settings(max_examples=200, deadline=None)
@given(a=st.floats(0.5, 1e5), b=st.floats(0.5, 1e5))
@example(a=0.5, b=0.5)
@example(a=1.0, b=60.0)
@example(a=1e5, b=1.0)
def test_betaln_matches_float64_and_is_symmetric(a, b):
    a32, b32 = np.float32(a), np.float32(b)
    got = float(jax.jit(special.betaln)(np.array([a32, b32]), np.array([b32, a32]))[0])
    swapped = float(jax.jit(special.betaln)(np.array([b32]), np.array([a32]))[0])
    assert got == swapped
    want = math.lgamma(float(a32)) + math.lgamma(float(b32)) - math.lgamma(float(a32) + float(b32))
    assert abs(got - want) <= 1e-4 * max(1.0, abs(want))


@pytest.mark.parametrize("below_half", [False, True])
def test_lgamma_is_gammaln_bit_for_bit(below_half):
    from jax.scipy.special import gammaln

    rng = np.random.default_rng()
    x = np.exp(rng.uniform(math.log(0.5), math.log(1e5), 100_000)).astype(np.float32)
    if below_half:
        x[::7] = rng.uniform(-3.5, 0.5, len(x[::7])).astype(np.float32)  # the reflection, poles included
        x[3] = -2.0
    np.testing.assert_array_equal(_bits(jax.jit(special.lgamma)(x)), _bits(jax.jit(gammaln)(x)))


def test_elsewhere_than_a_cpu_both_are_xla_and_jax_own(monkeypatch):
    """Off a CPU (no scalar ``sin`` to avoid, and a conditional may cost a device round trip) no ``lax.cond``:
    the same values from XLA's ``lgamma``. (Shapes no other test uses: traces are cached by shape, not by
    backend.)"""
    monkeypatch.setattr(special.jax, "default_backend", lambda: "gpu")
    rng = np.random.default_rng()
    a = np.exp(rng.uniform(math.log(0.1), math.log(1e4), 10_007)).astype(np.float32)
    b = np.exp(rng.uniform(math.log(0.5), math.log(1e4), 10_007)).astype(np.float32)
    assert "cond" not in str(jax.make_jaxpr(special.betaln)(a, b)) + str(jax.make_jaxpr(special.lgamma)(a))
    np.testing.assert_array_equal(_bits(jax.jit(special.betaln)(a, b)), _bits(jax.jit(jax_betaln)(a, b)))
    np.testing.assert_array_equal(_bits(jax.jit(special.lgamma)(a)), _bits(jax.jit(lax.lgamma)(a)))
    monkeypatch.undo()
    assert "cond" in str(jax.make_jaxpr(special.betaln)(a[:1003], b[:1003]))
