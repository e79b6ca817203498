"""fgjax.kernels._state: the streaming interest state against float64 NumPy.

I(u, t) = g I(u, t-1) + sum_{e in window t} w_e exp(-(end_t - ts_e) / tau) phi(e),
g = exp(-window / tau), recomputed here with plain loops over events.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.kernels import (
    InterestState,
    WindowEvents,
    decay_factors,
    interest_state_apply,
    interest_state_init,
    interest_state_update,
    window_contributions,
)

RTOL = 1e-5
ATOL = 1e-5
WINDOW = 2.0  # window length, in the unit of timestamps and half-lives
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

update_jit = jax.jit(interest_state_update)


# --------------------------------------------------------------------------
# a synthetic event log and float64 references


def make_log(rng, num_users, num_interests, num_windows, events_per_window, dense=False):
    """Per window: (user, phi (index or vector), weight, ts) arrays."""
    log = []
    for t in range(num_windows):
        n = events_per_window
        user = rng.integers(0, num_users, n)
        if dense:
            phi = rng.normal(size=(n, num_interests))
        else:
            phi = rng.integers(0, num_interests, n)
        weight = rng.choice([0.5, 1.0, 2.0, 4.0], n)  # view < click < cart < purchase
        ts = t * WINDOW + rng.uniform(0, WINDOW, n)
        log.append((user, phi, weight, ts))
    return log


def phi_vector(phi_e, num_interests):
    if np.ndim(phi_e) == 0:
        v = np.zeros(num_interests)
        v[int(phi_e)] = 1.0
        return v
    return np.asarray(phi_e, np.float64)


def ref_stream(log, num_users, num_interests, decay, inv_tau):
    """float64 loop over windows and events; returns the list of I(., t)."""
    state = np.zeros((num_users, num_interests))
    out = []
    for t, (user, phi, weight, ts) in enumerate(log):
        end = (t + 1) * WINDOW
        state = decay * state
        for e in range(len(user)):
            state[user[e]] += weight[e] * math.exp(-(end - ts[e]) * inv_tau) * phi_vector(phi[e], num_interests)
        out.append(state.copy())
    return out


def ref_closed_form(log, num_users, num_interests, upto, half_life):
    """I(., upto) = sum over all events so far of w exp(-(end_upto - ts) ln2 / h) phi."""
    end = (upto + 1) * WINDOW
    state = np.zeros((num_users, num_interests))
    for t in range(upto + 1):
        user, phi, weight, ts = log[t]
        for e in range(len(user)):
            decay = 0.5 ** ((end - ts[e]) / half_life) if math.isfinite(half_life) else 1.0
            state[user[e]] += weight[e] * decay * phi_vector(phi[e], num_interests)
    return state


def events_of(window_log, t, pad_to=None, num_users=None, rng=None):
    user, phi, weight, ts = window_log
    age = (t + 1) * WINDOW - ts
    user, phi, weight, age = user.copy(), phi.copy(), weight.copy(), age.copy()
    if pad_to is not None and pad_to > len(user):
        extra = pad_to - len(user)
        # Half the padding rows point at the dropped index `num_users` (with a
        # nonzero weight, which must be ignored), half at real users with 0 weight.
        pad_user = np.where(np.arange(extra) % 2 == 0, num_users, rng.integers(0, num_users, extra))
        pad_weight = np.where(pad_user == num_users, 3.0, 0.0)
        pad_phi = (
            rng.normal(size=(extra,) + phi.shape[1:]) if phi.ndim == 2 else rng.integers(0, 1, extra)
        )
        user = np.concatenate([user, pad_user])
        phi = np.concatenate([phi, pad_phi])
        weight = np.concatenate([weight, pad_weight])
        age = np.concatenate([age, rng.uniform(0, WINDOW, extra)])
    return WindowEvents(
        user=jnp.asarray(user, jnp.int32),
        interest=jnp.asarray(phi, jnp.int32 if phi.ndim == 1 else jnp.float32),
        weight=jnp.asarray(weight, jnp.float32),
        age=jnp.asarray(age, jnp.float32),
    )


# --------------------------------------------------------------------------
# decay factors


def test_decay_factors():
    g, inv_tau = decay_factors(1.0, 7.0)
    assert inv_tau == pytest.approx(math.log(2) / 7.0)
    assert g == pytest.approx(0.5 ** (1 / 7))
    g, _ = decay_factors(7.0, 7.0)
    assert g == pytest.approx(0.5)  # one half-life per window halves the state
    assert decay_factors(1.0, math.inf) == (1.0, 0.0)
    assert decay_factors(1.0, math.inf, reset_each_window=True) == (0.0, 0.0)
    g, inv_tau = decay_factors(1.0, 3.0, reset_each_window=True)
    assert g == 0.0 and inv_tau == pytest.approx(math.log(2) / 3.0)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="half_life"):
            decay_factors(1.0, bad)


def test_init():
    state = interest_state_init(5, 3)
    assert state.current.shape == (5, 3) and state.previous.shape == (5, 3)
    assert state.current.dtype == jnp.float32
    assert not np.asarray(state.current).any() and not np.asarray(state.previous).any()
    assert int(state.window) == -1


# --------------------------------------------------------------------------
# streaming over several windows


@pytest.mark.parametrize("dense", [False, True], ids=["one_hot", "dense_phi"])
@pytest.mark.parametrize(
    "half_life,reset",
    [(3.0, False), (math.inf, False), (math.inf, True), (3.0, True)],
    ids=["finite", "inf", "reset_indicator", "reset_decayed"],
)
def test_stream_matches_numpy(dense, half_life, reset):
    num_users, num_interests, num_windows = 7, 4, 5
    rng = np.random.default_rng(int(dense) * 10 + int(reset) + (0 if math.isinf(half_life) else 5))
    log = make_log(rng, num_users, num_interests, num_windows, 30, dense=dense)
    decay, inv_tau = decay_factors(WINDOW, half_life, reset_each_window=reset)
    want = ref_stream(log, num_users, num_interests, decay, inv_tau)
    state = interest_state_init(num_users, num_interests)
    previous = np.zeros((num_users, num_interests))
    for t in range(num_windows):
        events = events_of(log[t], t, pad_to=40, num_users=num_users, rng=rng)
        state = update_jit(state, events, decay=decay, inv_tau=inv_tau)
        assert int(state.window) == t
        np.testing.assert_allclose(state.current, want[t], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(state.previous, previous, rtol=RTOL, atol=ATOL)
        previous = want[t]
        if not reset:
            # The streaming state equals the closed form over the whole log.
            np.testing.assert_allclose(
                state.current, ref_closed_form(log, num_users, num_interests, t, half_life), rtol=RTOL, atol=ATOL
            )
        else:
            # Only window t counts.
            alone = _single_window(log[t], t, num_users, num_interests, inv_tau)
            np.testing.assert_allclose(state.current, alone, rtol=RTOL, atol=ATOL)


def _single_window(window_log, t, num_users, num_interests, inv_tau):
    user, phi, weight, ts = window_log
    out = np.zeros((num_users, num_interests))
    for e in range(len(user)):
        out[user[e]] += weight[e] * math.exp(-((t + 1) * WINDOW - ts[e]) * inv_tau) * phi_vector(phi[e], num_interests)
    return out


def test_indicator_counts_per_window():
    # tau = inf, reset each window: I(u, t)_k = weighted count of u's events on k in window t.
    decay, inv_tau = decay_factors(1.0, math.inf, reset_each_window=True)
    state = interest_state_init(2, 3)
    ev = WindowEvents(
        user=jnp.array([0, 0, 1, 0], jnp.int32),
        interest=jnp.array([2, 2, 0, 1], jnp.int32),
        weight=jnp.array([1.0, 1.0, 4.0, 0.5]),
        age=jnp.array([0.1, 0.9, 0.5, 0.0]),
    )
    state = interest_state_update(state, ev, decay=decay, inv_tau=inv_tau)
    np.testing.assert_array_equal(state.current, [[0.0, 0.5, 2.0], [4.0, 0.0, 0.0]])
    ev2 = ev._replace(user=jnp.array([1, 1, 1, 1], jnp.int32))
    state = interest_state_update(state, ev2, decay=decay, inv_tau=inv_tau)
    np.testing.assert_array_equal(state.current, [[0.0, 0.0, 0.0], [4.0, 0.5, 2.0]])
    np.testing.assert_array_equal(state.previous, [[0.0, 0.5, 2.0], [4.0, 0.0, 0.0]])


def test_padding_changes_nothing():
    rng = np.random.default_rng(4)
    num_users, num_interests = 6, 3
    log = make_log(rng, num_users, num_interests, 1, 20)
    decay, inv_tau = decay_factors(WINDOW, 5.0)
    plain = window_contributions(events_of(log[0], 0), num_users, num_interests, inv_tau=inv_tau)
    padded = window_contributions(
        events_of(log[0], 0, pad_to=64, num_users=num_users, rng=rng), num_users, num_interests, inv_tau=inv_tau
    )
    np.testing.assert_allclose(padded, plain, rtol=1e-6, atol=1e-6)
    # No events at all (only padding): nothing is added.
    empty = WindowEvents(
        user=jnp.full((8,), num_users, jnp.int32),
        interest=jnp.zeros((8,), jnp.int32),
        weight=jnp.ones((8,)),
        age=jnp.zeros((8,)),
    )
    np.testing.assert_array_equal(window_contributions(empty, num_users, num_interests, inv_tau=inv_tau), 0.0)
    state = InterestState(
        current=jnp.ones((num_users, num_interests)),
        previous=jnp.zeros((num_users, num_interests)),
        window=jnp.asarray(3, jnp.int32),
    )
    after = interest_state_update(state, empty, decay=0.5, inv_tau=inv_tau)
    np.testing.assert_array_equal(after.current, 0.5)
    np.testing.assert_array_equal(after.previous, 1.0)
    assert int(after.window) == 4


def test_apply_equals_update():
    rng = np.random.default_rng(8)
    log = make_log(rng, 5, 4, 1, 25, dense=True)
    events = events_of(log[0], 0)
    state = InterestState(
        current=jnp.asarray(rng.uniform(size=(5, 4)), jnp.float32),
        previous=jnp.zeros((5, 4)),
        window=jnp.asarray(0, jnp.int32),
    )
    added = window_contributions(events, 5, 4, inv_tau=0.2)
    a = interest_state_apply(state, added, decay=0.7)
    b = interest_state_update(state, events, decay=0.7, inv_tau=0.2)
    np.testing.assert_allclose(a.current, b.current, rtol=1e-6)
    np.testing.assert_allclose(a.current, 0.7 * np.asarray(state.current) + np.asarray(added), rtol=1e-6)
    np.testing.assert_array_equal(a.previous, state.current)


def test_vmap_over_shards():
    # A leading batch of independent states (e.g. shards or scenarios), 1-D and 2-D.
    rng = np.random.default_rng(9)
    num_users, num_interests = 4, 3
    decay, inv_tau = decay_factors(WINDOW, 2.0)
    step = jax.jit(jax.vmap(lambda s, e: interest_state_update(s, e, decay=decay, inv_tau=inv_tau)))
    step2 = jax.jit(jax.vmap(jax.vmap(lambda s, e: interest_state_update(s, e, decay=decay, inv_tau=inv_tau))))
    for batch, fn in (((3,), step), ((2, 2), step2)):
        n = int(np.prod(batch))
        logs = [make_log(rng, num_users, num_interests, 2, 12) for _ in range(n)]
        state = jax.tree.map(lambda x: jnp.broadcast_to(x, batch + x.shape), interest_state_init(num_users, num_interests))
        for t in range(2):
            evs = [events_of(lg[t], t) for lg in logs]
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs).reshape(batch + xs[0].shape), *evs)
            state = fn(state, stacked)
        want = np.stack([ref_stream(lg, num_users, num_interests, decay, inv_tau)[-1] for lg in logs])
        np.testing.assert_allclose(np.asarray(state.current).reshape(want.shape), want, rtol=RTOL, atol=ATOL)
        assert np.all(np.asarray(state.window) == 1)


# --------------------------------------------------------------------------
# properties


@st.composite
def _case(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    num_users = draw(st.sampled_from([1, 3, 8]))
    num_interests = draw(st.sampled_from([1, 4]))
    dense = draw(st.booleans())
    inv_tau = draw(st.sampled_from([0.0, 0.3]))
    decay = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return seed, num_users, num_interests, dense, inv_tau, decay


contrib_jit = jax.jit(window_contributions, static_argnums=(1, 2))
NUM_EVENTS = 16


def _random_events(rng, num_users, num_interests, dense):
    interest = rng.normal(size=(NUM_EVENTS, num_interests)) if dense else rng.integers(0, num_interests, NUM_EVENTS)
    return WindowEvents(
        user=jnp.asarray(rng.integers(0, num_users + 1, NUM_EVENTS), jnp.int32),  # num_users = dropped
        interest=jnp.asarray(interest, jnp.float32 if dense else jnp.int32),
        weight=jnp.asarray(rng.uniform(0, 3, NUM_EVENTS), jnp.float32),
        age=jnp.asarray(rng.uniform(0, 2, NUM_EVENTS), jnp.float32),
    )


@SETTINGS
@given(_case(), st.floats(-3, 3))
def test_property_update_linear_in_weights_and_equals_loop(case, c):
    seed, num_users, num_interests, dense, inv_tau, decay = case
    rng = np.random.default_rng(seed)
    ev1 = _random_events(rng, num_users, num_interests, dense)
    w2 = jnp.asarray(rng.uniform(0, 3, NUM_EVENTS), jnp.float32)
    ev2 = ev1._replace(weight=w2)
    ev12 = ev1._replace(weight=ev1.weight + np.float32(c) * w2)
    a = contrib_jit(ev1, num_users, num_interests, inv_tau=inv_tau)
    b = contrib_jit(ev2, num_users, num_interests, inv_tau=inv_tau)
    ab = contrib_jit(ev12, num_users, num_interests, inv_tau=inv_tau)
    np.testing.assert_allclose(ab, np.asarray(a) + c * np.asarray(b), rtol=1e-4, atol=1e-4)

    start = rng.uniform(0, 2, size=(num_users, num_interests))
    state = InterestState(
        current=jnp.asarray(start, jnp.float32),
        previous=jnp.zeros((num_users, num_interests)),
        window=jnp.asarray(4, jnp.int32),
    )
    got = update_jit(state, ev1, decay=decay, inv_tau=inv_tau)
    want = decay * start.astype(np.float32).astype(np.float64)
    user, interest, weight, age = (np.asarray(x) for x in ev1)
    for e in range(NUM_EVENTS):
        if user[e] == num_users:
            continue
        scale = float(weight[e]) * math.exp(-float(age[e]) * inv_tau)
        want[user[e]] += scale * phi_vector(interest[e], num_interests)
    np.testing.assert_allclose(got.current, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.previous, state.current)
    assert int(got.window) == 5
