"""fgjax.kernels._states: the threshold state machine, transition by transition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.kernels import (
    ACTIVE,
    DECLINING,
    FORGOTTEN,
    NEW,
    NONE,
    REACTIVATED,
    STATE_NAMES,
    threshold_states,
)

THRESHOLD = 0.3
RATIO = 0.2
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)

states_jit = jax.jit(threshold_states)


def ref_state(prev, active, current, peak, f, threshold=THRESHOLD, ratio=RATIO):
    """The documented rule for one (user, interest), as plain if/else."""
    if active:
        if prev == NONE:
            return NEW
        if prev == FORGOTTEN:
            return REACTIVATED
        return DECLINING if f > threshold else ACTIVE
    if prev == NONE:
        return NONE
    if prev == FORGOTTEN or current < ratio * peak:
        return FORGOTTEN
    if f > threshold:
        return DECLINING
    if prev in (NEW, REACTIVATED):
        return ACTIVE
    return prev


def ref_states(prev, active, current, peak, f, threshold=THRESHOLD, ratio=RATIO):
    threshold = np.broadcast_to(threshold, np.shape(prev))
    ratio = np.broadcast_to(ratio, np.shape(prev))
    out = np.empty(np.shape(prev), np.int8)
    for idx in np.ndindex(out.shape):
        out[idx] = ref_state(
            int(prev[idx]), bool(active[idx]), current[idx], peak[idx], f[idx], threshold[idx], ratio[idx]
        )
    return out


def test_codes():
    assert STATE_NAMES == ("none", "new", "active", "declining", "forgotten", "reactivated")
    assert (NONE, NEW, ACTIVE, DECLINING, FORGOTTEN, REACTIVATED) == (0, 1, 2, 3, 4, 5)


# (previous state, active now, I_k, peak_k, f_k) -> expected state
TRANSITIONS = [
    # never seen
    (NONE, False, 0.0, 0.0, 0.0, NONE),
    (NONE, True, 1.0, 1.0, 0.0, NEW),
    (NONE, True, 1.0, 1.0, 0.9, NEW),  # first appearance is always new
    # with activity
    (NEW, True, 2.0, 2.0, 0.0, ACTIVE),
    (NEW, True, 2.0, 2.0, 0.5, DECLINING),
    (ACTIVE, True, 2.0, 2.0, 0.1, ACTIVE),
    (ACTIVE, True, 1.0, 2.0, 0.5, DECLINING),
    (DECLINING, True, 2.0, 2.0, 0.0, ACTIVE),  # recovered
    (DECLINING, True, 1.0, 2.0, 0.5, DECLINING),
    (FORGOTTEN, True, 0.1, 2.0, 0.0, REACTIVATED),
    (FORGOTTEN, True, 0.1, 2.0, 0.9, REACTIVATED),
    (REACTIVATED, True, 1.0, 2.0, 0.0, ACTIVE),
    (REACTIVATED, True, 1.0, 2.0, 0.5, DECLINING),
    # without activity
    (NEW, False, 1.0, 1.0, 0.0, ACTIVE),  # settles
    (REACTIVATED, False, 1.0, 2.0, 0.0, ACTIVE),  # settles
    (ACTIVE, False, 1.0, 1.0, 0.0, ACTIVE),
    (ACTIVE, False, 0.8, 1.0, 0.5, DECLINING),
    (DECLINING, False, 0.8, 1.0, 0.0, DECLINING),  # keeps its state
    (ACTIVE, False, 0.1, 1.0, 0.0, FORGOTTEN),  # below ratio * peak
    (DECLINING, False, 0.1, 1.0, 0.9, FORGOTTEN),  # forgotten beats declining
    (NEW, False, 0.1, 1.0, 0.0, FORGOTTEN),
    (FORGOTTEN, False, 0.5, 1.0, 0.0, FORGOTTEN),  # stays forgotten until activity
    (FORGOTTEN, False, 0.0, 1.0, 0.0, FORGOTTEN),
    (ACTIVE, False, 0.2, 1.0, 0.0, ACTIVE),  # exactly ratio * peak is not below it
]


@pytest.mark.parametrize(
    "prev,active,cur,peak,f,expected",
    TRANSITIONS,
    ids=[f"{i}-{STATE_NAMES[p]}-{'busy' if a else 'idle'}-{STATE_NAMES[e]}" for i, (p, a, *_, e) in enumerate(TRANSITIONS)],
)
def test_each_transition(prev, active, cur, peak, f, expected):
    assert ref_state(prev, active, cur, peak, f) == expected
    got = threshold_states(
        jnp.array([prev]), jnp.array([active]), jnp.array([cur]), jnp.array([peak]), jnp.array([f]),
        decline_threshold=THRESHOLD, forgotten_ratio=RATIO,
    )
    assert got.dtype == jnp.int8
    assert STATE_NAMES[int(got[0])] == STATE_NAMES[expected]


def test_all_transitions_at_once_jit_and_vmap():
    cols = list(zip(*TRANSITIONS))
    prev, active, cur, peak, f, expected = (np.asarray(c) for c in cols)
    args = (prev.astype(np.int8), active.astype(bool), cur.astype(np.float32), peak.astype(np.float32), f.astype(np.float32))
    got = states_jit(*args, decline_threshold=THRESHOLD, forgotten_ratio=RATIO)
    np.testing.assert_array_equal(got, expected)
    # Per-element thresholds broadcast the same way.
    got = states_jit(*args, decline_threshold=np.full(len(prev), THRESHOLD), forgotten_ratio=np.full(len(prev), RATIO))
    np.testing.assert_array_equal(got, expected)
    vm = jax.jit(jax.vmap(lambda *a: threshold_states(*a, decline_threshold=THRESHOLD, forgotten_ratio=RATIO)))
    np.testing.assert_array_equal(vm(*(a[:, None] for a in args))[:, 0], expected)


def _history(active, current, f):
    """Run the machine over windows for parallel interests (axis -1)."""
    active = np.asarray(active, bool)
    current = np.asarray(current, np.float32)
    f = np.asarray(f, np.float32)
    state = jnp.zeros(active.shape[1:], jnp.int8)
    peak = np.zeros(active.shape[1:], np.float32)
    seen = []
    for t in range(active.shape[0]):
        peak = np.maximum(peak, current[t])
        state = states_jit(
            state, active[t], current[t], peak, f[t], decline_threshold=THRESHOLD, forgotten_ratio=RATIO
        )
        seen.append([STATE_NAMES[s] for s in np.asarray(state)])
    return list(zip(*seen))  # per interest, its sequence of names


def test_hand_made_histories():
    # Interest 0: appears, stays, fades, is forgotten, comes back, settles.
    # Interest 1: never seen: none throughout.
    # Interest 2: appears late, declines while still active, recovers.
    active = [
        [1, 0, 0],
        [1, 0, 0],
        [0, 0, 1],
        [0, 0, 1],
        [0, 0, 1],
        [1, 0, 1],
        [0, 0, 1],
    ]
    current = [
        [1.0, 0, 0.0],
        [2.0, 0, 0.0],
        [1.0, 0, 1.0],
        [0.2, 0, 2.0],
        [0.1, 0, 1.5],
        [1.0, 0, 2.0],
        [1.0, 0, 2.5],
    ]
    f = [
        [0.0, 0, 0.0],
        [0.0, 0, 0.0],
        [0.5, 0, 0.0],
        [0.4, 0, 0.0],
        [0.1, 0, 0.4],
        [0.0, 0, 0.0],
        [0.0, 0, 0.0],
    ]
    seq0, seq1, seq2 = _history(active, current, f)
    assert seq0 == ("new", "active", "declining", "forgotten", "forgotten", "reactivated", "active")
    assert seq1 == ("none",) * 7
    assert seq2 == ("none", "none", "new", "active", "declining", "active", "active")


SHAPES = [(6,), (2, 5), (2, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_random_matches_reference(shape):
    rng = np.random.default_rng(len(shape))
    prev = rng.integers(0, 6, shape).astype(np.int8)
    active = rng.random(shape) < 0.5
    peak = rng.uniform(0, 2, shape).astype(np.float32)
    cur = (peak * rng.uniform(0, 1, shape)).astype(np.float32)
    f = rng.uniform(0, 1, shape).astype(np.float32)
    thr = rng.uniform(0.2, 0.6, shape[:-1] + (1,)).astype(np.float32)  # per user, broadcast over K
    want = ref_states(prev, active, cur, peak, f, thr, RATIO)
    np.testing.assert_array_equal(states_jit(prev, active, cur, peak, f, decline_threshold=thr, forgotten_ratio=RATIO), want)
    if len(shape) > 1:
        vm = jax.jit(jax.vmap(lambda p, a, c, pk, ff, th: threshold_states(p, a, c, pk, ff, decline_threshold=th, forgotten_ratio=RATIO)))
        np.testing.assert_array_equal(vm(prev, active, cur, peak, f, thr), want)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(SHAPES), st.floats(0, 1), st.floats(0, 1))
def test_property_matches_reference(seed, shape, thr, ratio):
    rng = np.random.default_rng(seed)
    prev = rng.integers(0, 6, shape).astype(np.int8)
    active = rng.random(shape) < 0.5
    peak = rng.uniform(0, 2, shape).astype(np.float32)
    cur = (peak * rng.uniform(0, 1, shape)).astype(np.float32)
    f = rng.uniform(0, 1, shape).astype(np.float32)
    got = np.asarray(states_jit(prev, active, cur, peak, f, decline_threshold=thr, forgotten_ratio=ratio))
    np.testing.assert_array_equal(got, ref_states(prev, active, cur, peak, f, np.float32(thr), np.float32(ratio)))
    # Invariants: none stays none without activity; activity never yields none or forgotten.
    assert np.all(got[(prev == NONE) & ~active] == NONE)
    assert not np.isin(got[active], [NONE, FORGOTTEN]).any()
