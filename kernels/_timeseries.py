"""Time-series features of per-(user, interest) activity, vectorized over users.

All functions take the time axis last, ``(..., T)``: every window the
detector reads each interest's whole series (sums, slope, FFT), and
reductions and FFTs along the minor axis are contiguous (on a CPU, a sum
over the last axis measured 37x faster than over the first for 10k users x
32 interests x 64 windows). Writing one window's slot is then strided, but
it is one byte per (user, interest) against the T bytes read anyway.

- ``ActivityBuffer`` with ``activity_buffer_init`` / ``activity_buffer_update``
  / ``activity_buffer_ordered`` / ``activity_buffer_ages``: the last T windows
  of per-window counts, stored as saturating ``uint8`` (10M users x 32
  interests x 64 windows is 20 GB, which fits on one 80 GB accelerator;
  float32 would not). The detector reads the ring in slot order, with each
  slot's age from index arithmetic (``activity_buffer_ages``), instead of an
  ordered copy.
- ``trend_slope``: least-squares slope over the last W windows, with a mask.
- ``dominant_period``: dominant period and its strength from the periodogram
  (``rfft`` along time); ``dft_period``: the same by a DFT product, for any
  rotation of the series (a ring buffer in slot order), with where two peaks
  tie to float32 rounding.
- ``RunningMoments`` with ``running_moments_init`` / ``running_moments_update``
  and ``adaptive_threshold``: Welford mean/variance of a user's own history
  and the threshold ``mean + z * std``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

COUNT_MAX = 255  # uint8 saturation of one window's count in the ring buffer


class ActivityBuffer(NamedTuple):
    """The last T windows of activity counts.

    Attributes:
      counts: ``(..., T)`` uint8; slot ``w % T`` holds window w (saturating at 255).
      windows: ``()`` int32, windows written so far.
    """

    counts: Array
    windows: Array


def activity_buffer_init(length: int, shape: tuple[int, ...]) -> ActivityBuffer:
    """An empty buffer of ``length`` windows over ``shape`` (e.g. ``(users, K)``)."""
    if length < 1:
        raise ValueError(f"activity buffer length must be >= 1, got {length}")
    return ActivityBuffer(jnp.zeros((*shape, length), jnp.uint8), jnp.zeros((), jnp.int32))


def activity_buffer_update(buffer: ActivityBuffer, counts: ArrayLike) -> ActivityBuffer:
    """Write one window's ``(...)`` counts into the next slot (in place under donation)."""
    length = buffer.counts.shape[-1]
    slot = jnp.clip(jnp.asarray(counts), 0, COUNT_MAX).astype(jnp.uint8)
    index = (0,) * slot.ndim + (buffer.windows % length,)
    return ActivityBuffer(lax.dynamic_update_slice(buffer.counts, slot[..., None], index), buffer.windows + 1)


def activity_buffer_ordered(buffer: ActivityBuffer) -> Array:
    """``(..., T)`` float32 counts, oldest first, the newest window last.

    Slots not yet written (fewer than T windows seen) are zeros at the front.
    """
    length = buffer.counts.shape[-1]
    # After w windows the oldest slot is w % T; roll it to the front.
    return jnp.roll(buffer.counts, -(buffer.windows % length), axis=-1).astype(jnp.float32)


def activity_buffer_ages(buffer: ActivityBuffer) -> Array:
    """``(T,)`` int32 age of each slot in windows: 0 = the newest window written, T - 1 = the oldest.

    ``buffer.counts[..., s]`` is the count of ``age[s]`` windows ago, so masks
    by age (the last n windows, the windows since first activity) apply to the
    ring as it lies, without ``activity_buffer_ordered``'s copy.
    """
    length = buffer.counts.shape[-1]
    return (buffer.windows - 1 - jnp.arange(length, dtype=jnp.int32)) % length


def trend_slope(series: ArrayLike, valid: ArrayLike | None = None) -> Array:
    """Least-squares slope per step of ``series`` ``(..., W)`` along time (the last axis).

    Args:
      series: ``(..., W)`` values, oldest first.
      valid: optional ``(..., W)`` bool; only valid points enter the fit.

    Returns:
      ``(...)`` float32 slope; 0 where fewer than two valid points.
    """
    y = jnp.asarray(series, jnp.float32)
    m = jnp.ones_like(y) if valid is None else jnp.asarray(valid, jnp.float32) * jnp.ones_like(y)
    x = jnp.arange(y.shape[-1], dtype=jnp.float32)
    n = m.sum(-1)
    sx, sy = (m * x).sum(-1), (m * y).sum(-1)
    # Centered sums: fewer cancellations than sxx - sx^2/n in float32.
    mean_x = (sx / jnp.maximum(n, 1.0))[..., None]
    mean_y = (sy / jnp.maximum(n, 1.0))[..., None]
    sxx = (m * (x - mean_x) ** 2).sum(-1)
    sxy = (m * (x - mean_x) * (y - mean_y)).sum(-1)
    return jnp.where((n >= 2) & (sxx > 0), sxy / jnp.where(sxx > 0, sxx, 1.0), 0.0)


def dft_basis(length: int) -> Array:
    """``(T, 2 * (T // 2))`` float32 ``cos`` then ``sin`` of ``2 pi j t / T`` for t < T, j = 1 .. T // 2.

    ``x @ dft_basis(T)`` is the real and the (negated) imaginary part of the
    DFT of ``x`` at the non-zero frequencies ``rfft`` returns. A constant
    (T is static): the angles are reduced modulo T in integers and their
    sines and cosines taken in float64, then rounded to float32.
    """
    half = length // 2
    angles = [[2.0 * math.pi * ((t * j) % length) / length for j in range(1, half + 1)] for t in range(length)]
    return jnp.asarray([[math.cos(a) for a in row] + [math.sin(a) for a in row] for row in angles], jnp.float32)


def dominant_period(series: ArrayLike, valid: ArrayLike | None = None, *, min_period: int = 2) -> tuple[Array, Array]:
    """Dominant period and its strength from the periodogram along time (the last axis).

    The series is demeaned over its valid points and zeroed elsewhere, then
    ``|rfft|^2`` is taken over the T points. Frequencies j = 1 .. T // min_period
    are candidates; the period is ``T / j`` windows and the strength is the
    peak's share of the power over all non-zero frequencies, in [0, 1].

    Args:
      series: ``(..., T)`` values, oldest first.
      valid: optional ``(..., T)`` bool mask (e.g. windows since first activity).
      min_period: shortest period considered, in windows (>= 2).

    Returns:
      ``(period (...) float32, strength (...) float32)``; both 0 for a
      constant series.
    """
    y = jnp.asarray(series, jnp.float32)
    length = y.shape[-1]
    if min_period < 2 or length < min_period:
        raise ValueError(f"dominant_period needs min_period >= 2 and T >= min_period; got T={length}, min_period={min_period}")
    m = jnp.ones_like(y) if valid is None else jnp.asarray(valid, jnp.float32) * jnp.ones_like(y)
    mean = (m * y).sum(-1, keepdims=True) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    centered = (y - mean) * m
    power = jnp.abs(jnp.fft.rfft(centered, axis=-1)) ** 2  # (..., T // 2 + 1)
    total = power[..., 1:].sum(-1)
    candidates = power[..., 1 : length // min_period + 1]
    j = jnp.argmax(candidates, axis=-1) + 1
    peak = jnp.max(candidates, axis=-1)
    has_power = total > 1e-12 * jnp.maximum(1.0, (centered**2).sum(-1) * length)
    period = jnp.where(has_power, length / j.astype(jnp.float32), 0.0)
    strength = jnp.where(has_power, peak / jnp.where(has_power, total, 1.0), 0.0)
    return period, strength


def dft_period(
    series: ArrayLike, valid: ArrayLike | None = None, *, min_period: int = 2, tie: float = 1e-4
) -> tuple[Array, Array, Array]:
    """``dominant_period`` by a DFT product instead of ``rfft``, for any rotation of the series.

    The power ``|DFT|^2`` does not depend on where the T points start (a
    rotation only turns each coefficient's phase), so a ring buffer can be
    passed in slot order with its mask by age, without an ordered copy. The
    DFT is one matrix product with ``dft_basis`` (at full float32 precision,
    also on accelerators); on a CPU it costs less than ``rfft`` over T = 64
    points. Its period and strength are ``dominant_period``'s to float32
    rounding: the strength to about 1e-6 relative, and the period exactly
    unless two candidate peaks tie to rounding (then either may be called the
    peak, by ``rfft``'s rounding or by this one's).

    Returns:
      ``(period, strength, tied)``: ``tied`` (bool) where another candidate's
      power is within ``tie`` (relative) of the peak's.
    """
    series = jnp.asarray(series)
    y = series.astype(jnp.float32)
    length = y.shape[-1]
    if min_period < 2 or length < min_period:
        raise ValueError(f"dft_period needs min_period >= 2 and T >= min_period; got T={length}, "
                         f"min_period={min_period}")
    m = jnp.ones(y.shape, bool) if valid is None else jnp.broadcast_to(jnp.asarray(valid, bool), y.shape)
    if jnp.issubdtype(series.dtype, jnp.integer) and series.dtype.itemsize == 1 and length < 1 << 16:
        # Byte counts (a ring buffer): their sum is an integer below 2 ** 24, the same in int32 as in float32,
        # and XLA:CPU takes it with the mask's count in one vectorized loop (a float32 sum it does apart).
        total_y, count = lax.reduce((jnp.where(m, series, 0).astype(jnp.int32), m.astype(jnp.int32)),
                                    (np.int32(0), np.int32(0)), lambda a, b: (a[0] + b[0], a[1] + b[1]), (y.ndim - 1,))
        total_y = total_y.astype(jnp.float32)[..., None]
        count = count[..., None]
    else:
        total_y, count = jnp.where(m, y, 0.0).sum(-1, keepdims=True), m.sum(-1, keepdims=True)
    if valid is None:
        centered = y - total_y / length
    else:
        centered = jnp.where(m, y - total_y / jnp.maximum(count, 1).astype(y.dtype), 0.0)
    half = length // 2
    parts = jnp.matmul(centered, dft_basis(length), precision=lax.Precision.HIGHEST)  # (..., 2 * half)
    power = parts[..., :half] ** 2 + parts[..., half:] ** 2  # frequencies 1 .. T // 2
    total = power.sum(-1)
    candidates = power[..., : length // min_period]
    peak = jnp.max(candidates, axis=-1)
    # argmax as the first index of the peak (or of a NaN, as argmax): an integer minimum XLA:CPU vectorizes,
    # where its argmax is a (value, index) reduction element by element.
    first = (candidates == peak[..., None]) | jnp.isnan(candidates)
    j = jnp.min(jnp.where(first, jnp.arange(candidates.shape[-1], dtype=jnp.int32), candidates.shape[-1]), axis=-1) + 1
    has_power = total > 1e-12 * jnp.maximum(1.0, (centered**2).sum(-1) * length)
    period = jnp.where(has_power, length / j.astype(jnp.float32), 0.0)
    strength = jnp.where(has_power, peak / jnp.where(has_power, total, 1.0), 0.0)
    tied = has_power & (jnp.sum(candidates >= (1.0 - tie) * peak[..., None], axis=-1) > 1)
    return period, strength, tied


class RunningMoments(NamedTuple):
    """Welford running count, mean and sum of squared deviations, all ``(...)``."""

    count: Array
    mean: Array
    m2: Array


def running_moments_init(shape: tuple[int, ...]) -> RunningMoments:
    return RunningMoments(*(jnp.zeros(shape, jnp.float32) for _ in range(3)))  # distinct buffers (donation)


def running_moments_update(moments: RunningMoments, value: ArrayLike, include: ArrayLike = True) -> RunningMoments:
    """Add ``value`` ``(...)`` where ``include`` (and where it is finite)."""
    value = jnp.asarray(value, jnp.float32)
    take = jnp.asarray(include, bool) & jnp.isfinite(value)
    count = moments.count + take
    safe = jnp.where(take, value, moments.mean)
    delta = safe - moments.mean
    mean = moments.mean + jnp.where(take, delta / jnp.maximum(count, 1.0), 0.0)
    m2 = moments.m2 + jnp.where(take, delta * (safe - mean), 0.0)
    return RunningMoments(count, mean, m2)


def adaptive_threshold(moments: RunningMoments, z: ArrayLike, *, fallback: ArrayLike, min_count: int = 2) -> Array:
    """``mean + z * std`` of a user's own history; ``fallback`` with under ``min_count`` values.

    Returns ``(...)`` float32.
    """
    std = jnp.sqrt(jnp.maximum(moments.m2, 0.0) / jnp.maximum(moments.count - 1.0, 1.0))
    own = moments.mean + z * std
    return jnp.where(moments.count >= min_count, own, jnp.asarray(fallback, jnp.float32))
