"""The learned verdict's kernels: features from the detector's state against a float64 NumPy reference
computed from the raw counts, the logit, and the verdict's edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jax
import jax.numpy as jnp

from fgjax import kernels
from fgjax.analysis import detector_step, window_params, window_spec
from fgjax.config import load_config

F = len(kernels.VERDICT_FEATURES)


def _run(counts: np.ndarray, buffer_windows: int = 64):
    """The detector over ``(W, users, K)`` counts; the state and output after the last window."""
    config = load_config(None, [f"analysis.detector.buffer_windows={buffer_windows}"])
    params, spec = window_params(config.analysis), window_spec(config.analysis, counts.shape[-1])

    @jax.jit
    def series(c):
        def step(state, x):
            state, out = detector_step(state, x, None, params, spec)
            return state, out
        state = kernels.detector_init(c.shape[1], c.shape[2], spec.buffer_windows)
        state, outs = jax.lax.scan(step, state, c[:-1])
        return step(state, c[-1])  # the last window's output is all the test needs

    return series(jnp.asarray(counts, jnp.float32))


def _reference(counts: np.ndarray, state, out, recent_windows: int = 16) -> np.ndarray:
    """float64 features from the raw counts; the detector's own quantities (rate, surprise, gaps, verdict,
    drop evidence, dispersion) read from its state and output, whose own tests pin them."""
    w, users, k = counts.shape
    c = np.minimum(counts.astype(np.float64), 255.0)
    length = np.asarray(state.buffer.counts).shape[-1]
    rate = np.asarray(out.rate, np.float64)
    ref = np.zeros((users, k, F))
    for u in range(users):
        alive_u = []
        for i in range(k):
            active = np.nonzero(c[:, u, i] > 0)[0]
            alive_u.append(w - active[0] if len(active) else 0)
        user_history = max(max(alive_u), 1)
        user_rate = c[:, u, :].sum() / user_history
        lived = [i for i in range(k) if alive_u[i] > 0]
        user_silence = min((w - 1 - np.nonzero(c[:, u, i] > 0)[0][-1]) for i in lived) if lived else 0
        for i in range(k):
            x = c[:, u, i]
            active = np.nonzero(x > 0)[0]
            alive = alive_u[i]
            s = (w - 1 - active[-1]) if len(active) else 0
            history = max(alive - s, 1)
            span = min(alive, recent_windows)
            recent = x[w - span:].sum() if span else 0.0
            recent_rate = recent / max(span - min(s, recent_windows), 1)
            within = min(s, length)
            user_in_silence = c[w - within:, u, :].sum() if within else 0.0
            other = max(user_rate - rate[u, i], 1e-3)
            ref[u, i] = [
                np.log1p(s), np.log1p(history), np.log1p(x.sum()), np.log1p(rate[u, i] * s),
                np.log((s + 1) / (float(state.longest_gap[u, i]) + 1)), np.log1p(float(state.gaps[u, i])),
                len(active) / history, np.log1p(recent_rate * s), np.log1p(user_in_silence), np.log1p(other * s),
                np.log1p(user_silence) - np.log1p(s), float(state.state[u, i] == kernels.FORGOTTEN),
                np.log1p(float(state.surprise[u, i])),
                np.log1p(float(out.expected_recent[u, i])) - np.log1p(float(out.recent[u, i])),
                np.log(max(float(out.dispersion[u, i]), 1.0)), np.log1p(rate[u, i]),
            ]
    return ref


def _counts(rng: np.random.Generator, windows: int, users: int, k: int) -> np.ndarray:
    """Poisson counts with late starts and a silent tail for some interests, some users silent at the end."""
    rates = rng.gamma(1.0, 1.5, (users, k))
    counts = rng.poisson(rates, (windows, users, k)).astype(np.float32)
    start = rng.integers(0, windows // 2, (users, k))
    stop = rng.integers(windows // 2, windows + 1, (users, k))
    t = np.arange(windows)[:, None, None]
    counts *= (t >= start) & (t < stop)
    counts[:, 0, 1] = 0  # an interest never active
    counts[-5:, 1] = 0  # a user silent everywhere lately
    return counts


def test_the_features_match_a_float64_reference_from_the_raw_counts():
    rng = np.random.default_rng(7)
    counts = _counts(rng, 40, 6, 4)
    state, out = _run(counts)
    got = np.asarray(kernels.verdict_features(state, out))
    assert got.shape == (6, 4, F) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(counts, state, out), rtol=2e-5, atol=2e-5)


def test_a_silence_longer_than_the_buffer_counts_the_users_events_of_the_buffer_only():
    """User events in the silence come from the ring buffer: beyond its T windows they are not known."""
    counts = np.zeros((30, 1, 2), np.float32)
    counts[:3, 0, 0] = 2.0  # interest 0: active, then silent 27 windows
    counts[:, 0, 1] = 1.0  # interest 1: active every window
    state, out = _run(counts, buffer_windows=8)
    got = np.asarray(kernels.verdict_features(state, out))
    col = {name: i for i, name in enumerate(kernels.VERDICT_FEATURES)}
    assert got[0, 0, col["log_silence"]] == pytest.approx(np.log1p(27))
    assert got[0, 0, col["log_user_events_in_silence"]] == pytest.approx(np.log1p(8))  # T = 8, not 27
    assert got[0, 0, col["user_silence_share"]] == pytest.approx(-np.log1p(27))  # the user stayed active
    np.testing.assert_allclose(got, _reference(counts, state, out), rtol=2e-5, atol=2e-5)


def test_one_interest_gets_the_floor_for_its_other_interests_and_a_quiet_user_a_zero_share():
    counts = np.zeros((12, 1, 1), np.float32)
    counts[:6, 0, 0] = 3.0
    state, out = _run(counts)
    got = np.asarray(kernels.verdict_features(state, out))[0, 0]
    col = {name: i for i, name in enumerate(kernels.VERDICT_FEATURES)}
    assert got[col["log_user_expected_in_silence"]] == pytest.approx(np.log1p(1e-3 * 6), rel=1e-4)
    assert got[col["user_silence_share"]] == 0.0  # the whole user went quiet with it
    assert got[col["log_user_events_in_silence"]] == 0.0
    assert np.isfinite(got).all()


def test_the_verdict_flags_only_silent_interests_and_activity_ends_it():
    counts = np.zeros((10, 1, 3), np.float32)
    counts[:, 0, 0] = 1.0  # active now
    counts[:4, 0, 1] = 1.0  # silent 6 windows
    state, out = _run(counts)  # interest 2 was never active
    features = kernels.verdict_features(state, out)
    always = kernels.VerdictParams(mean=jnp.zeros(F), scale=jnp.ones(F), weights=jnp.zeros(F), bias=jnp.float32(5.0))
    assert np.asarray(kernels.verdict_forgotten(state, features, always, 0.0)).tolist() == [[False, True, False]]
    assert not np.asarray(kernels.verdict_forgotten(state, features, always, 6.0)).any()
    # The log-odds the analysis writes: the logit where silent, NaN (no verdict) on the active and never active.
    assert np.asarray(kernels.verdict_silent(state)).tolist() == [[False, True, False]]
    params = kernels.VerdictParams(mean=jnp.zeros(F), scale=jnp.ones(F), weights=jnp.full(F, 0.1),
                                   bias=jnp.float32(-1.0))
    odds = np.asarray(kernels.verdict_log_odds(state, features, params))
    assert np.isnan(odds[0, [0, 2]]).all()
    assert odds[0, 1] == pytest.approx(float(np.asarray(features)[0, 1].sum()) * 0.1 - 1.0, rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_the_logit_matches_numpy(rows, seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 3, F)).astype(np.float32) * 4
    params = kernels.VerdictParams(mean=rng.normal(size=F).astype(np.float32),
                                   scale=rng.uniform(0.1, 3, F).astype(np.float32),
                                   weights=rng.normal(size=F).astype(np.float32), bias=np.float32(rng.normal()))
    want = ((features.astype(np.float64) - params.mean) / params.scale) @ params.weights.astype(np.float64) + params.bias
    got = np.asarray(kernels.verdict_logit(features, params))
    assert got.shape == (rows, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
