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

DECLINE = 0.5
RATIO = 0.2
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)

states_jit = jax.jit(threshold_states)


def ref_state(prev, active, current, peak, decline=DECLINE, ratio=RATIO):
    """The documented rule for one (user, interest), as plain if/else."""
    level = DECLINING if current < decline * peak else ACTIVE
    if active:
        if prev == NONE:
            return NEW
        if prev == FORGOTTEN:
            return REACTIVATED
        return level
    if prev == NONE:
        return NONE
    if prev == FORGOTTEN or current < ratio * peak:
        return FORGOTTEN
    return level


def ref_states(prev, active, current, peak, decline=DECLINE, ratio=RATIO):
    decline = np.broadcast_to(decline, np.shape(prev))
    ratio = np.broadcast_to(ratio, np.shape(prev))
    out = np.empty(np.shape(prev), np.int8)
    for idx in np.ndindex(out.shape):
        out[idx] = ref_state(int(prev[idx]), bool(active[idx]), current[idx], peak[idx], decline[idx], ratio[idx])
    return out


def test_codes():
    assert STATE_NAMES == ("none", "new", "active", "declining", "forgotten", "reactivated")
    assert (NONE, NEW, ACTIVE, DECLINING, FORGOTTEN, REACTIVATED) == (0, 1, 2, 3, 4, 5)


# (previous state, active now, I_k, peak_k) -> expected state  (declining < 0.5 peak, forgotten < 0.2 peak)
TRANSITIONS = [
    # never seen
    (NONE, False, 0.0, 0.0, NONE),
    (NONE, True, 1.0, 1.0, NEW),
    (NONE, True, 0.1, 1.0, NEW),  # first appearance is always new
    # with activity
    (NEW, True, 2.0, 2.0, ACTIVE),
    (NEW, True, 0.9, 2.0, DECLINING),
    (ACTIVE, True, 1.5, 2.0, ACTIVE),
    (ACTIVE, True, 0.9, 2.0, DECLINING),  # active, but at under half its high
    (ACTIVE, True, 0.1, 2.0, DECLINING),  # activity never means forgotten
    (DECLINING, True, 2.0, 2.0, ACTIVE),  # recovered
    (DECLINING, True, 0.5, 2.0, DECLINING),
    (FORGOTTEN, True, 0.1, 2.0, REACTIVATED),
    (FORGOTTEN, True, 2.0, 2.0, REACTIVATED),
    (REACTIVATED, True, 1.0, 1.0, ACTIVE),
    (REACTIVATED, True, 0.4, 1.0, DECLINING),
    # without activity
    (NEW, False, 1.0, 1.0, ACTIVE),  # settles
    (REACTIVATED, False, 0.9, 1.0, ACTIVE),  # settles
    (ACTIVE, False, 0.9, 1.0, ACTIVE),
    (ACTIVE, False, 0.4, 1.0, DECLINING),
    (DECLINING, False, 0.3, 1.0, DECLINING),
    (ACTIVE, False, 0.1, 1.0, FORGOTTEN),  # below ratio * peak
    (DECLINING, False, 0.1, 1.0, FORGOTTEN),
    (NEW, False, 0.1, 1.0, FORGOTTEN),
    (FORGOTTEN, False, 0.5, 1.0, FORGOTTEN),  # stays forgotten until activity
    (FORGOTTEN, False, 0.0, 1.0, FORGOTTEN),
    (ACTIVE, False, 0.2, 1.0, DECLINING),  # exactly ratio * peak is not below it
    (ACTIVE, False, 0.5, 1.0, ACTIVE),  # exactly decline * peak is not below it
]


@pytest.mark.parametrize(
    "prev,active,cur,peak,expected",
    TRANSITIONS,
    ids=[f"{i}-{STATE_NAMES[p]}-{'busy' if a else 'idle'}-{STATE_NAMES[e]}" for i, (p, a, *_, e) in enumerate(TRANSITIONS)],
)
def test_each_transition(prev, active, cur, peak, expected):
    assert ref_state(prev, active, cur, peak) == expected
    got = threshold_states(
        jnp.array([prev]), jnp.array([active]), jnp.array([cur]), jnp.array([peak]),
        declining_ratio=DECLINE, forgotten_ratio=RATIO,
    )
    assert got.dtype == jnp.int8
    assert STATE_NAMES[int(got[0])] == STATE_NAMES[expected]


def test_all_transitions_at_once_jit_and_vmap():
    prev, active, cur, peak, expected = (np.asarray(c) for c in zip(*TRANSITIONS))
    args = (prev.astype(np.int8), active.astype(bool), cur.astype(np.float32), peak.astype(np.float32))
    np.testing.assert_array_equal(states_jit(*args, declining_ratio=DECLINE, forgotten_ratio=RATIO), expected)
    # Per-element ratios broadcast the same way.
    got = states_jit(*args, declining_ratio=np.full(len(prev), DECLINE), forgotten_ratio=np.full(len(prev), RATIO))
    np.testing.assert_array_equal(got, expected)
    vm = jax.jit(jax.vmap(lambda *a: threshold_states(*a, declining_ratio=DECLINE, forgotten_ratio=RATIO)))
    np.testing.assert_array_equal(vm(*(a[:, None] for a in args))[:, 0], expected)


def _history(active, current):
    """Run the machine over windows for parallel interests (axis -1), peak = running max."""
    active = np.asarray(active, bool)
    current = np.asarray(current, np.float32)
    state = jnp.zeros(active.shape[1:], jnp.int8)
    peak = np.zeros(active.shape[1:], np.float32)
    seen = []
    for t in range(active.shape[0]):
        peak = np.maximum(peak, current[t])
        state = states_jit(state, active[t], current[t], peak, declining_ratio=DECLINE, forgotten_ratio=RATIO)
        seen.append([STATE_NAMES[s] for s in np.asarray(state)])
    return list(zip(*seen))  # per interest, its sequence of names


def test_hand_made_histories():
    # Interest 0: appears, grows, fades, is forgotten, comes back.
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
        [0.9, 0, 1.0],
        [0.3, 0, 2.0],
        [0.1, 0, 0.8],
        [1.0, 0, 2.0],
        [1.0, 0, 2.5],
    ]
    seq0, seq1, seq2 = _history(active, current)
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
    decline = rng.uniform(0.3, 0.7, shape[:-1] + (1,)).astype(np.float32)  # per user, broadcast over K
    want = ref_states(prev, active, cur, peak, decline, RATIO)
    np.testing.assert_array_equal(states_jit(prev, active, cur, peak, declining_ratio=decline, forgotten_ratio=RATIO), want)
    if len(shape) > 1:
        vm = jax.jit(jax.vmap(lambda p, a, c, pk, d: threshold_states(p, a, c, pk, declining_ratio=d, forgotten_ratio=RATIO)))
        np.testing.assert_array_equal(vm(prev, active, cur, peak, decline), want)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(SHAPES), st.floats(0, 1), st.floats(0, 1))
def test_property_matches_reference(seed, shape, decline, ratio):
    rng = np.random.default_rng(seed)
    prev = rng.integers(0, 6, shape).astype(np.int8)
    active = rng.random(shape) < 0.5
    peak = rng.uniform(0, 2, shape).astype(np.float32)
    cur = (peak * rng.uniform(0, 1, shape)).astype(np.float32)
    got = np.asarray(states_jit(prev, active, cur, peak, declining_ratio=decline, forgotten_ratio=ratio))
    np.testing.assert_array_equal(got, ref_states(prev, active, cur, peak, np.float32(decline), np.float32(ratio)))
    # Invariants: none stays none without activity; activity never yields none or forgotten.
    assert np.all(got[(prev == NONE) & ~active] == NONE)
    assert not np.isin(got[active], [NONE, FORGOTTEN]).any()
