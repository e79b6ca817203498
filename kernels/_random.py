"""Dropout masks from a counter hash: one threefry draw per mask, then a few integer ops per element.

``jax.random.bernoulli`` runs threefry-2x32 (20 rounds) for every element; on a CPU that was 15 % of a
sequence model's training step (about 30 of 200 ms at batch 128 x 50, dim 64, two layers: seven masks a
step, forward and backward). A dropout mask needs independent-looking bits per element and fresh ones per
step, not a cryptographic-strength stream: ``bernoulli_mask`` draws one 64-bit seed from the key with
threefry and gives element ``i`` the bits ``fmix32(fmix32(i ^ seed_0) + seed_1)`` (MurmurHash3's
finalizer, full avalanche: every input bit flips each output bit with probability about 1/2), 6-17x
cheaper than ``jax.random.bernoulli`` for the model's mask shapes (2 cores, measured 2026-12-04).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array, lax


def fmix32(x: Array) -> Array:
    """MurmurHash3's 32-bit finalizer on a ``uint32`` array (elementwise, a bijection)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def hashed_bits(key: Array, shape: Sequence[int]) -> Array:
    """``shape`` uint32: element ``i`` (row-major) is ``fmix32(fmix32(i ^ s0) + s1)`` for ``(s0, s1)`` =
    ``jax.random.bits(key, (2,), uint32)``. Deterministic in ``key``; fewer than 2**32 elements."""
    shape = tuple(int(d) for d in shape)
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"hashed_bits: {size} elements; at most 2**32 - 1 (one counter per element)")
    seed = jax.random.bits(key, (2,), jnp.uint32)
    index = lax.iota(jnp.uint32, size).reshape(shape)
    return fmix32(fmix32(index ^ seed[0]) + seed[1])


def bernoulli_mask(key: Array, keep: float, shape: Sequence[int]) -> Array:
    """``shape`` bool, True with probability ``keep`` (to within 2**-32), from ``hashed_bits``.

    ``keep`` is a Python float in ``[0, 1]`` (a dropout rate is static): element ``i`` is kept when its bits
    are at least ``round((1 - keep) * 2**32)``.
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"bernoulli_mask: keep={keep!r}, expected a probability in [0, 1]")
    threshold = round((1.0 - keep) * 2**32)
    if threshold >= 2**32:  # keep 0: nothing kept (uint32 bits never reach 2**32)
        return jnp.zeros(tuple(shape), bool)
    return hashed_bits(key, shape) >= jnp.uint32(threshold)
