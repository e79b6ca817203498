"""The detector against the implementation it replaced (issue 14: a cheap detector with the same answers).

``reference_update`` below is a frozen copy of ``kernels.detector_update`` as
it was before issue 14 (commit a8d0a9e): every window it rolled the whole
ring buffer into an ordered float32 copy and took the periodogram with an
FFT over it. The kernel now reads the ring in slot order (ages by index
arithmetic), takes the periodogram as a DFT product (its power does not
depend on where the series starts) and the features in cache-sized user
blocks. The decisions must not change: states, silences, last active windows
exactly; the float evidence to float32 rounding (rtol 1e-5), the period
exactly except where two periodogram peaks tie to float32 rounding (either
is the dominant one; the check says which).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from fgjax import kernels
from fgjax.config import DetectorConfig
from fgjax.kernels import ACTIVE, DECLINING, FORGOTTEN, NEW, NONE, REACTIVATED
from fgjax.kernels import _detector as kd

# The frozen reference predates the population priors (the window model's, the dispersion's): compared with
# them off (tested apart in tests/test_kernels_detector.py), the same answers.
P = DetectorConfig().kernel_params()._replace(population_strength=0.0, dispersion_strength=0.0)


# ---- frozen reference: kernels/_detector.py and kernels/_timeseries.py at a8d0a9e ----------------------------------


def reference_dominant_period(series, valid=None, *, min_period=2):
    """``dominant_period`` before issue 14: ``|rfft|^2`` of the demeaned series (oldest first)."""
    y = jnp.asarray(series, jnp.float32)
    length = y.shape[-1]
    m = jnp.ones_like(y) if valid is None else jnp.asarray(valid, jnp.float32) * jnp.ones_like(y)
    mean = (m * y).sum(-1, keepdims=True) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    centered = (y - mean) * m
    power = jnp.abs(jnp.fft.rfft(centered, axis=-1)) ** 2
    total = power[..., 1:].sum(-1)
    candidates = power[..., 1 : length // min_period + 1]
    j = jnp.argmax(candidates, axis=-1) + 1
    peak = jnp.max(candidates, axis=-1)
    has_power = total > 1e-12 * jnp.maximum(1.0, (centered**2).sum(-1) * length)
    period = jnp.where(has_power, length / j.astype(jnp.float32), 0.0)
    strength = jnp.where(has_power, peak / jnp.where(has_power, total, 1.0), 0.0)
    return period, strength


def reference_power(series, valid):
    """The reference's candidate powers ``(..., T // 2)`` (for telling a tie of two peaks)."""
    y = jnp.asarray(series, jnp.float32)
    m = jnp.asarray(valid, jnp.float32)
    mean = (m * y).sum(-1, keepdims=True) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    return (jnp.abs(jnp.fft.rfft((y - mean) * m, axis=-1)) ** 2)[..., 1 : y.shape[-1] // 2 + 1]


def _reference_judge(series, b, kappa, params, with_limits):
    length = series.shape[-1]
    active = b["counts"] > 0
    age = jnp.arange(length - 1, -1, -1, dtype=jnp.int32)
    lived = age < b["alive"][..., None]
    alive_before = b["alive"] - b["silence"]
    rate = b["total"] / jnp.maximum(alive_before, 1).astype(jnp.float32)
    span = jnp.clip(jnp.ceil(params.drop_events / jnp.maximum(rate, 1e-3)), params.recent_windows, length // 2)
    recent_mask = lived & (age < span.astype(jnp.int32)[..., None])
    recent = jnp.sum(series * recent_mask, axis=-1)
    recent_n = jnp.sum(recent_mask, axis=-1).astype(jnp.float32)
    n = recent_n
    position = (length - 1 - age).astype(jnp.float32)
    centre = length - (n + 1.0) / 2.0
    spread = n * (n * n - 1.0) / 12.0
    moment = jnp.sum(series * recent_mask * (position - centre[..., None]), axis=-1)
    trend = jnp.where(n >= 2, moment / jnp.maximum(spread, 1e-6), 0.0)
    period, strength = reference_dominant_period(series, lived)
    silence_dispersion, step_spread = kd.history_dispersion(b["total"], b["sum_sq"], b["sum_lag"], alive_before)
    exposure = jnp.maximum(alive_before - 1, 0)
    model = kd.silence_model(b["total"], b["alive"], b["silence"], b["active_windows"], b["gaps"], b["longest_gap"],
                             period, strength, silence_dispersion, kd.pair_kappa(kappa, exposure), params, length,
                             step_spread)
    periodic = model.periodic
    limit = jnp.where(b["alive"] > 0, kd.model_silence_limit(model, params), 0) if with_limits else None
    surprise = jnp.where(b["alive"] > 0, kd.silence_surprise(b["silence"], model, params), 0.0)
    threshold = kd.silence_threshold(model, params)
    level = kd.window_level(params)
    earlier_n = b["alive"].astype(jnp.float32) - recent_n
    earlier_rate = jnp.maximum(b["total"] - recent - 1.0, 0.0) / jnp.maximum(earlier_n, 1.0)
    expected_recent = earlier_rate * recent_n
    enough = (earlier_n >= params.min_history) & (earlier_n >= recent_n)
    dispersion = step_spread
    drop_tail = kd.poisson_cdf(recent / dispersion, expected_recent / dispersion)
    below_share = kd.poisson_cdf(recent / dispersion, params.fade_share * expected_recent / dispersion)
    dropped = (enough & ~periodic & ~active & (recent > 0) & (below_share < params.fade_confidence)
               & (drop_tail < level))
    silent_enough = kd.silence_is_unusual(b["silence"], model, params)
    forgotten_now = (b["alive"] > 0) & (silent_enough | dropped)
    half_silent = (b["silence"] > 0) & (surprise >= 0.5 * threshold)
    sagging = (enough & ~periodic & (trend <= 0) & (recent < params.declining_ratio * expected_recent)
               & (drop_tail < jnp.sqrt(level)))
    declining_now = half_silent | sagging
    prev = b["previous"]
    since_return = jnp.where((prev == kd.FORGOTTEN) & active, 0, b["since_return"] + 1)
    plain = jnp.where(declining_now, kd.DECLINING, kd.ACTIVE)
    young_new = (prev == kd.NEW) & (b["alive"] <= params.new_windows)
    young_back = (prev == kd.REACTIVATED) & (since_return < params.new_windows)
    ongoing = jnp.where(forgotten_now, kd.FORGOTTEN,
                        jnp.where(young_new, kd.NEW, jnp.where(young_back, kd.REACTIVATED, plain)))
    code = jnp.where(prev == kd.NONE, jnp.where(active, kd.NEW, kd.NONE),
                     jnp.where(prev == kd.FORGOTTEN, jnp.where(active, kd.REACTIVATED, kd.FORGOTTEN), ongoing)
                     ).astype(jnp.int8)
    return {
        "state": code, "since_return": since_return, "rate": rate, "recent": recent,
        "expected_recent": expected_recent, "trend": trend, "dispersion": silence_dispersion,
        "surprise": surprise, "period": jnp.where(periodic, period, 0.0), "period_strength": strength,
    } | ({"silence_limit": limit} if with_limits else {})


def reference_update(state, counts, degree, params, *, with_limits=True):
    """``detector_update`` before issue 14 (all users at once)."""
    counts = jnp.asarray(counts, jnp.float32)
    active = counts > 0
    was_seen = state.alive > 0
    back = active & (state.state == kd.FORGOTTEN)
    alive = jnp.where(back, 1, state.alive + (was_seen | active))
    silence = jnp.where(active, 0, state.silence + was_seen)
    came_back = active & (state.silence > 0) & ~back
    longest_gap = jnp.where(came_back, jnp.maximum(state.longest_gap, state.silence), state.longest_gap)
    active_windows = jnp.where(back, 1, state.active_windows + active)
    gaps = jnp.where(back, 0, state.gaps + came_back)
    x = jnp.minimum(counts, kd.COUNT_MAX)
    total = jnp.where(back, 0.0, state.total) + x
    length = state.buffer.counts.shape[-1]
    previous = lax.dynamic_index_in_dim(state.buffer.counts, (state.buffer.windows - 1) % length, axis=-1,
                                        keepdims=False).astype(jnp.float32)
    previous = jnp.where(state.buffer.windows > 0, previous, 0.0)
    sum_sq = jnp.where(back, 0.0, state.sum_sq) + x * x
    sum_lag = jnp.where(back, 0.0, state.sum_lag) + x * previous
    last_active = jnp.where(active, state.window, state.last_active)
    buffer = kernels.activity_buffer_update(state.buffer, counts)
    kappa = kd.calibration_scale(state.calibration, params)
    block = {"counts": counts, "alive": alive, "silence": silence, "total": total, "sum_sq": sum_sq,
             "sum_lag": sum_lag, "active_windows": active_windows, "gaps": gaps, "longest_gap": longest_gap,
             "since_return": state.since_return, "previous": state.state}
    series = jnp.roll(buffer.counts, -(buffer.windows % length), axis=-1).astype(jnp.float32)
    judged = _reference_judge(series, block, kappa, params, with_limits)
    code = judged["state"]
    calibration = kd.calibration_add(state.calibration, state.surprise,
                                     jnp.maximum(state.alive - state.silence - 1, 0), came_back)
    started = jnp.any(alive > 0, axis=1)
    if degree is None:
        degree_value = jnp.zeros(started.shape, jnp.float32)
        threshold = jnp.full(started.shape, jnp.inf, jnp.float32)
        moments = state.degree_moments
    else:
        degree_value = jnp.asarray(degree, jnp.float32)
        threshold = kernels.adaptive_threshold(state.degree_moments, params.degree_z, fallback=params.degree_fallback)
        moments = kernels.running_moments_update(state.degree_moments, degree_value, started)
    alarm = started & (degree_value > threshold)
    new_state = kernels.DetectorState(
        buffer=buffer, window=state.window + 1, total=total, sum_sq=sum_sq, sum_lag=sum_lag, alive=alive,
        active_windows=active_windows, gaps=gaps, silence=silence, longest_gap=longest_gap,
        surprise=judged["surprise"], since_return=judged["since_return"], last_active=last_active, state=code,
        calibration=calibration, degree_moments=moments,
        # Stored by the new update only (period_every); its outputs (period, strength) are compared.
        period_index=state.period_index, period_strength=state.period_strength,
        silence_totals=kd.silence_totals_add(state.silence_totals, state.silence, came_back),
        dispersion_histogram=kd.dispersion_histogram(*kd.history_dispersion(total, sum_sq, sum_lag, alive - silence),
                                                     jnp.maximum(alive - silence - 1, 0)),
    )
    output = kernels.DetectorOutput(
        state=code, silence=silence, silence_limit=judged.get("silence_limit"), rate=judged["rate"],
        recent=judged["recent"], expected_recent=judged["expected_recent"], trend=judged["trend"],
        dispersion=judged["dispersion"], period=judged["period"], period_strength=judged["period_strength"],
        last_active=last_active, kappa=kappa, degree_threshold=threshold, degree_alarm=alarm,
        stay_share=kd.population_stay_share(state.silence_totals),
        population_dispersion=kd.population_dispersion(state.dispersion_histogram),
    )
    return new_state, output, series, alive


# ---- histories ---------------------------------------------------------------------------------------------------


def mixed_histories(seed: int, windows: int = 150, users: int = 48, interests: int = 4) -> np.ndarray:
    """``(windows, users, K)`` counts: steady, stopping, fading, periodic bursts, pauses with returns, late
    starts, rare, saturating (> 255) and hand-made ones, so every state and both tests are exercised."""
    rng = np.random.default_rng(seed)
    n = users * interests
    t = np.arange(windows)[:, None]
    rate = rng.choice([0.2, 0.7, 2.0, 6.0, 20.0], size=n)[None, :] * rng.uniform(0.7, 1.4, size=n)[None, :]
    kind = rng.integers(0, 7, size=n)[None, :]
    change = rng.integers(10, windows - 10, size=n)[None, :]
    start = np.where(rng.random(n) < 0.3, rng.integers(0, windows // 2, size=n), 0)[None, :]
    period = rng.integers(2, 12, size=n)[None, :]
    pause = rng.integers(3, 40, size=n)[None, :]
    mult = np.select(
        [kind == 1, kind == 2, kind == 3, kind == 4, kind == 5, kind == 6],
        [t < change,  # stops
         0.5 ** (np.maximum(t - change, 0) / 4.0),  # fades
         (t % period == 0) * period,  # periodic bursts
         (t < change) | (t >= change + pause),  # a pause, then a return
         ((t % period == 0) * period) * ((t < change) | (t >= change + pause)),  # periodic with a pause
         ((t // 7) % 3 != 2) * 1.0],  # on two weeks, off one (returns)
        1.0,
    )
    counts = rng.poisson(rate * mult * (t >= start)).astype(np.float32)
    counts[:, :3] = 0.0
    counts[:, 1] = (t[:, 0] % 6 == 0) * 5.0  # hand-made: five events every sixth window
    counts[:, 2] = np.where(t[:, 0] < 40, 4.0, np.where(t[:, 0] < 70, 0.0, 300.0))  # steady, a pause, saturated
    return counts.reshape(windows, users, interests)


def _close(name, new, old):
    new, old = np.asarray(new), np.asarray(old)
    if np.issubdtype(new.dtype, np.floating):
        # float32 evidence from running sums against the frozen code's sums over the buffer: a variance
        # from sum_sq - sum**2 / n cancels, so a few tens of ulps (1.2e-5 seen for a dispersion of 7.18);
        # the states and every integer compare exactly.
        np.testing.assert_allclose(new, old, rtol=5e-5, atol=1e-6, err_msg=name)
    else:
        np.testing.assert_array_equal(new, old, err_msg=name)


def _assert_same_period(new_period, old, series, alive, where):
    """Periods equal, or both reported peaks tie to float32 rounding in the reference's periodogram."""
    new_period, old_period = np.asarray(new_period), np.asarray(old.period)
    differ = new_period != old_period
    if not differ.any():
        return
    length = series.shape[-1]
    lived = np.arange(length - 1, -1, -1)[None, None, :] < np.asarray(alive)[..., None]
    power = np.asarray(reference_power(series, lived))[differ]
    strength = np.asarray(old.period_strength)[differ]
    for p_new, p_old, row, s in zip(new_period[differ], old_period[differ], power, strength):
        assert p_new > 0 and p_old > 0, f"{where}: period {p_new} against {p_old} (strength {s})"
        a, b = row[round(length / p_new) - 1], row[round(length / p_old) - 1]
        assert abs(a - b) <= 1e-5 * max(a, b), f"{where}: period {p_new} against {p_old}: powers {a} and {b}"


_STEPS: dict = {}


def _steps(with_limits: bool, user_block: int | None, cache_block: int | None, periodogram: str | None):
    """The jitted new and reference updates (params traced), compiled once per shape and options."""
    key = (with_limits, user_block, cache_block, periodogram)
    if key not in _STEPS:
        _STEPS[key] = (
            jax.jit(lambda s, c, d, p: kernels.detector_update(s, c, d, p, with_limits=with_limits,
                                                               user_block=user_block, cache_block=cache_block,
                                                               periodogram=periodogram)),
            jax.jit(lambda s, c, d, p: reference_update(s, c, d, p, with_limits=with_limits)),
        )
    return _STEPS[key]


def run_both(counts: np.ndarray, T: int, params=P, *, with_limits=True, user_block=None, cache_block=None,
             periodogram=None, degree=None) -> set[int]:
    """Old and new side by side on the same inputs every window; outputs and states compared each window.

    Returns the state codes seen."""
    windows, users, interests = counts.shape
    new_state = kernels.detector_init(users, interests, T)
    old_state = kernels.detector_init(users, interests, T)
    new_step, old_step = _steps(with_limits, user_block, cache_block, periodogram)
    seen: set[int] = set()
    for w in range(windows):
        d = None if degree is None else degree[w]
        new_state, new_out = new_step(new_state, counts[w], d, params)
        old_state, old_out, series, alive = old_step(old_state, counts[w], d, params)
        for name in kernels.DetectorOutput._fields:
            if name == "period":
                _assert_same_period(new_out.period, old_out, series, alive, f"window {w}")
            elif getattr(old_out, name) is not None:
                _close(f"window {w} {name}", getattr(new_out, name), getattr(old_out, name))
        if w % 4 == 3 or w == windows - 1:  # the outputs every window; the whole state (host copies) every 4th
            for path, leaf in jax.tree_util.tree_leaves_with_path(new_state):
                if jax.tree_util.keystr(path) in (".period_index", ".period_strength"):
                    continue  # the reference keeps no periodogram; the outputs above compare it
                _close(f"window {w} state{jax.tree_util.keystr(path)}", leaf, _leaf(old_state, path))
        seen |= set(np.unique(np.asarray(new_out.state)).tolist())
    return seen


def _leaf(tree, path):
    for key in path:
        tree = tree[key.idx] if hasattr(key, "idx") else getattr(tree, key.name)
    return tree


# ---- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_same_answers_as_before_over_150_windows(seed):
    """150 windows of mixed histories through a 64-window ring (it wraps twice), s* included."""
    counts = mixed_histories(seed)
    seen = run_both(counts, 64, P._replace(false_alarm=0.02 if seed else 0.01))
    assert seen == {NONE, NEW, ACTIVE, DECLINING, FORGOTTEN, REACTIVATED}


def test_same_answers_with_a_short_ring_ragged_blocks_and_the_degree_alarm():
    """A 16-window ring (80 windows: it wraps five times), user blocks of 20 and cache blocks of 7 users over 50
    (ragged), the degree alarm, both periodogram modes."""
    counts = mixed_histories(2, windows=80, users=50, interests=3)
    degree = np.random.default_rng(2).uniform(0, 1, size=(80, 50)).astype(np.float32)
    for periodogram in ("dft", "fft"):
        seen = run_both(counts, 16, with_limits=False, user_block=20, cache_block=7, periodogram=periodogram,
                        degree=degree)
        assert {FORGOTTEN, REACTIVATED} <= seen


@settings(max_examples=6, deadline=None, derandomize=True)  # the same examples in every CI run
@given(
    st.lists(st.tuples(st.sampled_from([0.1, 0.5, 1.0, 3.0, 10.0, 300.0]), st.integers(0, 5), st.integers(2, 9),
                       st.integers(0, 59), st.integers(1, 30)), min_size=8, max_size=8),
    st.floats(1e-3, 0.2),
    st.integers(0, 2**31 - 1),
)
def test_same_answers_on_random_patterns(pairs, false_alarm, seed):
    """Property: any mix of rates, stops, pauses, periodic bursts and late starts, 60 windows, T = 8
    (8 pairs: fewer than _ROWS, so one block)."""
    rng = np.random.default_rng(seed)
    t = np.arange(60)
    columns = []
    for rate, kind, period, change, pause in pairs:
        mult = [np.ones(60), t < change, (t % period == 0) * float(period), (t < change) | (t >= change + pause),
                0.5 ** (np.maximum(t - change, 0) / 3.0), t >= change][kind]
        columns.append(rng.poisson(rate * mult))
    counts = np.stack(columns, axis=1).astype(np.float32).reshape(60, 4, 2)
    run_both(counts, 8, P._replace(false_alarm=false_alarm), with_limits=False, cache_block=3)


@pytest.mark.parametrize("T", [2, 9, 64])
def test_dft_period_of_byte_counts_equals_their_float32_one(T):
    """A ring buffer's uint8 counts (summed in int32) give the float32 series' period, strength and tie, bit for
    bit, with a mask and without, fresh random counts up to 255 (a whole row of them: the largest sum)."""
    rng = np.random.default_rng()
    n = 2000
    y = rng.poisson(rng.choice([0.2, 3.0, 60.0], size=(n, 1)), size=(n, T)).clip(0, 255).astype(np.uint8)
    y[:50] = 255
    valid = np.arange(T)[None, :] >= rng.integers(0, T, size=(n, 1))
    for mask in (valid, None):
        got = jax.jit(kernels.dft_period)(y, mask)
        want = jax.jit(kernels.dft_period)(y.astype(np.float32), mask)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(got[0]).any()


@pytest.mark.parametrize("T", [8, 9, 16, 64])
def test_dft_period_of_any_rotation_is_the_rfft_one(T):
    """The DFT product on a rotated series (a ring in slot order) against ``rfft`` on the ordered one."""
    rng = np.random.default_rng(T)
    n = 3000
    y = rng.poisson(rng.choice([0.3, 2.0, 30.0], size=(n, 1)), size=(n, T)).astype(np.float32)
    y[: n // 3] *= (np.arange(T) % rng.integers(2, 7, size=(n // 3, 1)) == 0)  # periodic ones
    valid = np.arange(T)[None, :] >= rng.integers(0, T, size=(n, 1))
    shift = int(rng.integers(1, T))
    period, strength, tied = kernels.dft_period(np.roll(y, shift, -1), np.roll(valid, shift, -1))
    old_period, old_strength = reference_dominant_period(y, valid)
    np.testing.assert_allclose(np.asarray(strength), np.asarray(old_strength), rtol=1e-5, atol=1e-6)
    differ = np.asarray(period) != np.asarray(old_period)
    assert np.all(np.asarray(tied)[differ])  # where they differ, the DFT product saw the tie
    power = np.asarray(reference_power(y, valid))[differ]
    for row, a, b in zip(power, np.asarray(period)[differ], np.asarray(old_period)[differ]):
        x, z = row[round(T / a) - 1], row[round(T / b) - 1]  # a tie to float32 rounding: either is the peak
        assert abs(x - z) <= 1e-5 * max(x, z)
    assert differ.mean() < 0.05  # short integer series tie exactly now and then (T = 8: about 1 %)
