"""fgjax.kernels._random: the counter-hash dropout mask against a NumPy uint32 reference and its statistics."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.kernels import bernoulli_mask, fmix32, hashed_bits

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def ref_fmix32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.uint64) & 0xFFFFFFFF  # uint64 arithmetic, cut to 32 bits: no overflow warnings
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    x ^= x >> 16
    return x.astype(np.uint32)


def ref_bits(key, shape) -> np.ndarray:
    s0, s1 = (int(v) for v in np.asarray(jax.random.bits(key, (2,), np.uint32)))
    index = np.arange(int(np.prod(shape)), dtype=np.uint64)
    inner = ref_fmix32(index ^ s0).astype(np.uint64)
    return ref_fmix32((inner + s1) & 0xFFFFFFFF).reshape(shape)


def test_fmix32_matches_the_reference_and_is_a_bijection_on_a_range():
    x = np.arange(1 << 16, dtype=np.uint32) * np.uint32(65_537)
    got = np.asarray(fmix32(x))
    np.testing.assert_array_equal(got, ref_fmix32(x))
    assert len(np.unique(got)) == len(x)
    assert int(fmix32(np.uint32(0))) == 0  # the finalizer's fixed point: hashed_bits mixes a seed in first


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5), (0,), ()])
def test_hashed_bits_match_the_numpy_reference(shape):
    key = jax.random.key(3)
    np.testing.assert_array_equal(np.asarray(hashed_bits(key, shape)), ref_bits(key, shape))


@given(keep=st.floats(0.0, 1.0), rows=st.integers(1, 300), cols=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
@SETTINGS
def test_property_the_kept_fraction_is_keep(keep, rows, cols, seed):
    mask = np.asarray(bernoulli_mask(jax.random.key(seed), keep, (rows, cols)))
    assert mask.shape == (rows, cols) and mask.dtype == bool
    n = rows * cols
    bound = 5.0 * np.sqrt(keep * (1 - keep) / n) + 1.0 / n
    assert abs(mask.mean() - keep) <= bound
    # Exactly the reference's threshold on the reference's bits.
    threshold = round((1 - keep) * 2**32)
    want = ref_bits(jax.random.key(seed), (rows, cols)) >= threshold if threshold < 2**32 else np.zeros_like(mask)
    np.testing.assert_array_equal(mask, want)


def test_masks_look_independent_across_keys_and_neighbours():
    keep, shape = 0.8, (128, 2, 50, 50)
    a = np.asarray(bernoulli_mask(jax.random.key(0), keep, shape)).ravel()
    b = np.asarray(bernoulli_mask(jax.random.key(1), keep, shape)).ravel()
    n = a.size
    tol = 5.0 / np.sqrt(n)
    # Two keys: agreement as for independent draws, p^2 + (1-p)^2.
    assert abs((a == b).mean() - (keep**2 + (1 - keep) ** 2)) < tol
    # Neighbouring counters (i, i+1), (i, i+50) and a step of the key's seed: correlation near 0.
    for lag in (1, 50, 2500):
        assert abs(np.corrcoef(a[:-lag], a[lag:])[0, 1]) < tol
    # Split keys of one parent (as the model splits a step's key per layer) differ too.
    k1, k2 = jax.random.split(jax.random.key(9))
    c = np.asarray(bernoulli_mask(k1, keep, shape)).ravel()
    d = np.asarray(bernoulli_mask(k2, keep, shape)).ravel()
    assert abs(np.corrcoef(c, d)[0, 1]) < tol


def test_edge_cases():
    key = jax.random.key(0)
    assert np.asarray(bernoulli_mask(key, 1.0, (4, 5))).all()
    assert not np.asarray(bernoulli_mask(key, 0.0, (4, 5))).any()
    assert bernoulli_mask(key, 0.5, (0, 3)).shape == (0, 3)
    np.testing.assert_array_equal(np.asarray(bernoulli_mask(key, 0.3, (9,))),
                                  np.asarray(bernoulli_mask(key, 0.3, (9,))))  # deterministic in the key
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="keep"):
            bernoulli_mask(key, bad, (3,))
    # A raw uint32 key (the legacy jax.random.PRNGKey form) works the same way.
    legacy = jax.random.PRNGKey(0)
    assert bernoulli_mask(legacy, 0.5, (100,)).shape == (100,)
