"""The adaptive forgetting detector against a float64 recomputation from scratch.

The reference recomputes every window's features from the whole count
history (first and last activity, gaps, sums, the last T windows, the FFT),
not by the kernel's recursion, then runs the same state rules.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax import kernels
from fgjax.config import DetectorConfig
from fgjax.kernels import ACTIVE, DECLINING, FORGOTTEN, NEW, NONE, REACTIVATED

P = DetectorConfig().kernel_params()  # the defaults live in the config


def ref_log_silence(s, events, exposure, active, silent, p=P, periodic=False):
    a, b = p.prior_events + events, p.prior_windows + exposure
    by_events = a * (math.log(b) - math.log(b + s))
    if periodic:
        return by_events
    on, off = p.prior_active + active, p.prior_silent + silent
    by_windows = math.lgamma(off + s) - math.lgamma(off) + math.lgamma(on + off) - math.lgamma(on + off + s)
    return max(by_events, by_windows)


MAX_LIMIT = 1 << 16  # the kernel's cap


def ref_limit(events, exposure, active, silent, gap, p=P, periodic=False):
    """The first s in 1..MAX_LIMIT whose float64 log-probability is <= log(false_alarm), by enumeration."""
    s = np.arange(1, MAX_LIMIT + 1, dtype=np.float64)
    a, b = p.prior_events + events, p.prior_windows + exposure
    logp = a * (np.log(b) - np.log(b + s))
    if not periodic:
        on, off = p.prior_active + active, p.prior_silent + silent
        j = s - 1
        logp = np.maximum(logp, np.cumsum(np.log((off + j) / (on + off + j))))
    unlikely = np.nonzero(logp <= math.log(p.false_alarm))[0]
    by_chance = int(s[unlikely[0]]) if len(unlikely) else MAX_LIMIT
    return min(max(by_chance, math.ceil(p.gap_factor * gap - 1e-4), 1), MAX_LIMIT)


def ref_poisson_cdf(k, mean):
    if mean <= 0:
        return 1.0
    k = math.floor(k)
    return sum(math.exp(-mean + i * math.log(mean) - math.lgamma(i + 1)) for i in range(k + 1))


def ref_detect(counts: np.ndarray, T: int, p=P) -> dict[str, np.ndarray]:
    """Float64 per-(window, pair) features and states for ``counts`` ``(W, pairs)``."""
    W, n = counts.shape
    out = {name: np.zeros((W, n)) for name in ("silence", "limit", "rate", "recent", "expected", "period", "strength")}
    out["state"] = np.zeros((W, n), np.int8)
    for j in range(n):
        c = np.minimum(counts[:, j].astype(np.float64), 255)
        state, since_return = NONE, 10**9
        pauses = set()  # windows where activity ended a silence that had been judged forgotten
        for t in range(W):
            hist = c[: t + 1]
            active_idx = np.nonzero(hist > 0)[0]
            active_now = hist[t] > 0
            if len(active_idx) == 0:
                out["state"][t, j] = NONE
                continue
            first, last = active_idx[0], active_idx[-1]
            alive, silence = t - first + 1, t - last
            total = hist[first:].sum()
            active_windows = len(active_idx)
            # Longest completed gap: silences between two active windows, except pauses
            # that had been judged forgotten.
            if active_now and state == FORGOTTEN:
                pauses.add(t)
            gaps = [b - a - 1 for a, b in zip(active_idx, active_idx[1:]) if b not in pauses]
            longest = max(gaps, default=0)
            alive_before = alive - silence
            rate = total / max(alive_before, 1)
            # The last T windows, oldest first (zeros before the first window).
            window = np.zeros(T)
            lo = max(0, t + 1 - T)
            window[T - (t + 1 - lo):] = np.clip(hist[lo:], 0, 255)
            age = np.arange(T - 1, -1, -1)
            lived = age < alive
            span = min(max(math.ceil(p.drop_events / max(rate, 1e-3)), p.recent_windows), T // 2)
            recent_mask = lived & (age < span)
            recent, recent_n = window[recent_mask].sum(), recent_mask.sum()
            # Periodogram of the lived windows.
            m = lived.astype(float)
            centered = (window - (m * window).sum() / max(m.sum(), 1)) * m
            power = np.abs(np.fft.rfft(centered)) ** 2
            total_power = power[1:].sum()
            cand = power[1 : T // 2 + 1]
            has = total_power > 1e-9
            period = T / (cand.argmax() + 1) if has else 0.0
            strength = cand.max() / total_power if has else 0.0
            periodic = strength >= p.min_strength and min(alive, T) >= 2 * period
            gap = max(longest, period - 1 if periodic else 0)
            limit = ref_limit(max(total - 1, 0), max(alive_before - 1, 0), max(active_windows - 1, 0),
                              alive_before - active_windows, gap, p, periodic)
            earlier_n = alive - recent_n
            expected = max(total - recent - 1, 0) / max(earlier_n, 1) * recent_n
            enough = earlier_n >= p.min_history and earlier_n >= recent_n
            earlier = lived & ~recent_mask
            e = window[earlier]
            disp = max(e.var(ddof=1) / e.mean(), 1.0) if len(e) >= 2 and e.mean() > 0 else 1.0
            tail = ref_poisson_cdf(recent / disp, expected / disp)
            dropped = (enough and not periodic and not active_now and recent > 0
                       and recent <= p.forgotten_ratio * expected and tail < p.false_alarm)
            forgotten_now = silence >= limit or dropped
            slope = np.polyfit(np.nonzero(recent_mask)[0], window[recent_mask], 1)[0] if recent_n >= 2 else 0.0
            sagging = (enough and not periodic and slope <= 1e-6 and recent < p.declining_ratio * expected
                       and tail < math.sqrt(p.false_alarm))
            declining_now = (silence > 0 and silence >= math.ceil(limit / 2)) or sagging
            since_return = 0 if (state == FORGOTTEN and active_now) else since_return + 1
            if state == NONE:
                state = NEW
            elif state == FORGOTTEN:
                state = REACTIVATED if active_now else FORGOTTEN
            elif forgotten_now:
                state = FORGOTTEN
            elif state == NEW and alive <= p.new_windows:
                state = NEW
            elif state == REACTIVATED and since_return < p.new_windows:
                state = REACTIVATED
            else:
                state = DECLINING if declining_now else ACTIVE
            out["state"][t, j] = state
            for name, value in (("silence", silence), ("limit", limit), ("rate", rate), ("recent", recent),
                                ("expected", expected), ("period", period if periodic else 0.0), ("strength", strength)):
                out[name][t, j] = value
    return out


def run_kernel(counts: np.ndarray, T: int, p=P) -> dict[str, np.ndarray]:
    """``counts`` ``(W, pairs)`` through ``detector_update`` window by window (one user per pair)."""
    W, n = counts.shape
    state = kernels.detector_init(n, 1, T)
    update = jax.jit(kernels.detector_update, donate_argnums=0)
    fields = {"state": "state", "silence": "silence", "limit": "silence_limit", "rate": "rate", "recent": "recent",
              "expected": "expected_recent", "period": "period", "strength": "period_strength"}
    out = {name: np.zeros((W, n)) for name in fields}
    for t in range(W):
        state, o = update(state, counts[t][:, None].astype(np.float32), None, p)
        for name, attr in fields.items():
            out[name][t] = np.asarray(getattr(o, attr))[:, 0]
    return out


def random_histories(seed: int, W: int = 40, n: int = 60) -> np.ndarray:
    """Stable, stopping, fading, periodic, paused and late histories."""
    rng = np.random.default_rng(seed)
    t = np.arange(W)[:, None]
    rate = rng.uniform(0.3, 6.0, size=n)[None, :]
    kind = rng.integers(0, 5, size=n)[None, :]
    change = rng.integers(5, W - 5, size=n)[None, :]
    start = np.where(rng.random(n) < 0.3, rng.integers(0, W // 2, size=n), 0)[None, :]
    period = rng.integers(3, 9, size=n)[None, :]
    mult = np.select(
        [kind == 1, kind == 2, kind == 3, kind == 4],
        [t < change, 0.5 ** np.maximum(t - change, 0), (t % period == 0) * period, (t < change) | (t > change + 6)],
        1.0,
    )
    return rng.poisson(rate * mult * (t >= start)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_detector_matches_recomputation_from_scratch(seed):
    counts = random_histories(seed)
    T = 16  # shorter than the history, so the ring buffer wraps
    # A false-alarm rate off the round numbers: with 0.002, 1 / (s + 1) hits it exactly at s = 499.
    p = P._replace(false_alarm=0.0023)
    got, ref = run_kernel(counts, T, p), ref_detect(counts, T, p)
    seen = ref["state"] != NONE
    np.testing.assert_array_equal(got["silence"][seen], ref["silence"][seen])
    np.testing.assert_allclose(got["rate"][seen], ref["rate"][seen], rtol=1e-5)
    np.testing.assert_allclose(got["recent"][seen], ref["recent"][seen])
    np.testing.assert_allclose(got["expected"][seen], ref["expected"][seen], rtol=1e-4, atol=1e-5)
    # Periodogram peaks can tie exactly (short series); argmax may then differ.
    assert np.mean(np.isclose(got["period"][seen], ref["period"][seen], rtol=1e-5)) > 0.98
    np.testing.assert_allclose(got["strength"][seen], ref["strength"][seen], rtol=1e-3, atol=1e-5)
    # Limits and states: float32 against float64 may differ at an exact
    # boundary; anywhere else they must agree.
    assert np.mean(got["limit"][seen] == ref["limit"][seen]) > 0.995
    # (A limit may differ where a float32 input sits on a boundary: e.g. a period
    # strength of 0.24999997 against min_strength 0.25. The states still agree exactly.)
    np.testing.assert_array_equal(got["state"], ref["state"])
    assert set(np.unique(ref["state"])) >= {NEW, ACTIVE, FORGOTTEN, REACTIVATED}


def test_hand_made_history_walks_every_state():
    # 20 windows of 4 events, silence, a return, then steady again.
    history = np.array([4] * 20 + [0] * 6 + [4] * 5, np.float32)[:, None]
    never = np.zeros_like(history)
    got = run_kernel(np.concatenate([history, never], axis=1), 32)
    states = got["state"][:, 0].astype(int).tolist()
    assert states[:2] == [NEW, NEW] and states[2:20] == [ACTIVE] * 18
    limit = int(got["limit"][20, 0])
    # 79 more events over 19 windows, all active: three silent windows are unusual.
    assert limit == ref_limit(79, 19, 19, 0, 0) == 3
    silent = states[20:26]
    assert silent[:2] == [ACTIVE, DECLINING]  # half-way, ceil(3 / 2) = 2 silent windows, is declining
    assert silent[limit - 1 :] == [FORGOTTEN] * (6 - limit + 1)
    assert states[26:28] == [REACTIVATED, REACTIVATED] and states[28:] == [ACTIVE] * 3
    assert set(got["state"][:, 1]) == {NONE}  # never active: none, and no limit
    assert set(got["limit"][:, 1]) == {0}


def test_periodic_history_is_never_forgotten_but_a_stop_is():
    W = 48
    t = np.arange(W)
    periodic = ((t % 6) == 0) * 5.0  # five events every sixth window
    stopped = np.where(t < 30, (t % 6 == 0) * 5.0, 0.0)  # the same, then gone
    got = run_kernel(np.stack([periodic, stopped], axis=1).astype(np.float32), 32)
    assert FORGOTTEN not in set(got["state"][:, 0].astype(int))
    stop_states = got["state"][30:, 1].astype(int)
    assert FORGOTTEN in stop_states
    first = 30 + int(np.argmax(stop_states == FORGOTTEN))
    assert first - 24 > 7  # not before the usual 5-window gap has clearly run over (last burst at 24)


def test_slow_fade_is_caught_by_the_drop_test_before_any_long_silence():
    W = 30
    t = np.arange(W)
    fade = np.round(40 * 0.6 ** np.maximum(t - 12, 0)).astype(np.float32)  # 40 a window, then fading
    fade[t >= 12] = np.maximum(fade[t >= 12], 0)
    got = run_kernel(fade[:, None], 16)
    states = got["state"][:, 0].astype(int)
    first = int(np.argmax(states == FORGOTTEN))
    assert states[first] == FORGOTTEN
    assert fade[first] > 0 or fade[first - 1] > 0  # caught while events still trickle in


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 200), st.integers(1, 60), st.integers(0, 60), st.integers(0, 60), st.floats(1e-6, 0.2),
)
def test_silence_probability_falls_with_silence_and_the_limit_is_the_first_unlikely_silence(
    events, exposure, active, silent, false_alarm
):
    p = P._replace(false_alarm=false_alarm)
    logs = [float(kernels._detector.log_silence_probability(s, events, exposure, active, silent, p)) for s in range(6)]
    assert logs[0] == pytest.approx(0.0, abs=1e-5)
    assert all(a >= b - 1e-5 for a, b in zip(logs, logs[1:]))
    limit = int(kernels.silence_limit(events, exposure, active, silent, 0.0, p))
    # The first unlikely silence, up to float32 rounding at an exact boundary.
    log_q, tol = math.log(false_alarm), 1e-4
    if limit < MAX_LIMIT:
        assert ref_log_silence(limit, events, exposure, active, silent, p) <= log_q + tol
    assert limit == 1 or ref_log_silence(limit - 1, events, exposure, active, silent, p) > log_q - tol
    assert abs(limit - ref_limit(events, exposure, active, silent, 0.0, p)) <= 1
    # A smaller false-alarm rate never shortens the limit.
    stricter = int(kernels.silence_limit(events, exposure, active, silent, 0.0, p._replace(false_alarm=false_alarm / 10)))
    assert stricter >= limit


def test_poisson_cdf_matches_reference_and_edge_cases():
    for k, mean in [(0, 0.5), (3, 2.0), (10, 25.0), (0, 30.0), (5, 0.0)]:
        np.testing.assert_allclose(float(kernels.poisson_cdf(k, mean)), ref_poisson_cdf(k, mean), rtol=1e-4, atol=1e-9)


def test_degree_alarm_uses_each_users_own_history():
    num_users = 2
    state = kernels.detector_init(num_users, 1, 8)
    counts = np.ones((num_users, 1), np.float32)
    degrees = [np.array([0.1, 0.5]), np.array([0.12, 0.6]), np.array([0.11, 0.55]), np.array([0.5, 0.58])]
    alarms = []
    for d in degrees:
        state, out = kernels.detector_update(state, counts, d.astype(np.float32), P)
        alarms.append(np.asarray(out.degree_alarm).tolist())
    # The last F of 0.5 is an alarm for user 0 (history ~0.11) but not for user 1 (history ~0.55).
    assert alarms[-1] == [True, False]
    assert alarms[0] == [False, False]  # the fallback threshold (1.0) before any history


def test_event_counts_drop_padding_and_uncategorized():
    counts = kernels.event_counts(np.array([0, 0, 1, 2, 1]), np.array([1, 1, 0, 0, 3]), 2, 3)
    np.testing.assert_array_equal(np.asarray(counts), [[0, 2, 0], [1, 0, 0]])


def test_user_blocks_give_the_same_results():
    counts = random_histories(3, W=24, n=23)  # 23 users: blocks of 5 leave a ragged last block
    params = P
    whole = kernels.detector_init(23, 1, 8)
    blocked = kernels.detector_init(23, 1, 8)
    step = jax.jit(kernels.detector_update)
    step_blocked = jax.jit(lambda s, c: kernels.detector_update(s, c, None, params, user_block=5))
    for t in range(counts.shape[0]):
        whole, a = step(whole, counts[t][:, None], None, params)
        blocked, b = step_blocked(blocked, counts[t][:, None])
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(blocked)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_long_history_pause_then_fade_is_forgotten_twice():
    """Past 2T windows a trend must not pass as a period-T cycle, and a pause must not become the expected gap."""
    rng = np.random.default_rng(11)
    T = 8
    rate = np.concatenate([np.full(30, 6.0), np.zeros(6), np.full(20, 6.0), 6.0 * 0.5 ** np.arange(1, 15)])
    counts = rng.poisson(rate).astype(np.float32)[:, None]  # 70 windows, far past 2T
    got = run_kernel(counts, T)
    states = got["state"][:, 0].astype(int)
    assert FORGOTTEN in states[30:36]  # the pause
    assert REACTIVATED in states[36:39]
    fade = states[56:]
    assert FORGOTTEN in fade
    assert int(np.argmax(fade == FORGOTTEN)) <= 7  # within 7 windows of the fade's start (rate 6 -> 0.05)
    # The limit after the return is not stretched by the 6-window pause.
    assert got["limit"][50, 0] <= 3



def test_period_is_zero_where_there_is_none():
    """The evidence's period is 0 unless it counts: strong, and two cycles seen; never the buffer length."""
    rng = np.random.default_rng(5)
    W, T = 90, 64
    t = np.arange(W)
    paused = np.where((t < 40) | (t >= 60), rng.poisson(3.0, W), 0)  # a pause: one slow "cycle" in the buffer
    steady = rng.poisson(2.0, W)
    periodic = ((t % 6) == 0) * 5
    got = run_kernel(np.stack([paused, steady, periodic], axis=1).astype(np.float32), T)
    period, strength = got["period"], got["strength"]
    assert not np.any(period == T)
    assert np.all(period[strength < P.min_strength] == 0)
    assert np.all(period[:, :2] == 0)  # no period in a pause or in Poisson noise
    assert np.all(period[40:, 2] > 0)  # a real one is reported
