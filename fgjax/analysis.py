"""The forgetting pipeline: window the events, stream I(u, t), compute F, f_k,
p(k|u,t) and the per-interest states, window after window.

One jitted, state-donating step (``make_window_step``) does the whole fused
pass for all users of a window: state update -> F -> f -> p -> states -> the
top interests. Memory on the device is O(users x K); events are padded to one
bucket size so the step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from fgjax import kernels
from fgjax.config import AnalysisConfig, Config
from fgjax.data.reader import EventLog
from fgjax.errors import DataError
from fgjax.scoring import ForgettingWeights


class AnalysisCarry(NamedTuple):
    """Per-(user, interest) state carried across windows, all ``(users, K)``."""

    interest: kernels.InterestState
    peak: jax.Array  # running max of I
    state: jax.Array  # int8 codes, kernels.STATE_NAMES
    ever: jax.Array  # bool, the user ever had the interest


class WindowOutput(NamedTuple):
    """Per-user results of one window."""

    degree: jax.Array  # (users,) F(u, t)
    top_interests: jax.Array  # (users, top) int32
    top_probs: jax.Array  # (users, top) float32


@dataclasses.dataclass(frozen=True)
class ForgettingResult:
    """Result of ``analyze``.

    Attributes:
      window_start: ``(windows,)`` float64 epoch seconds of each window start.
      degree: ``(windows, users)`` float32 F; +inf where everything was forgotten.
      top_interests, top_probs: ``(windows, users, top)`` the most probable interests.
      current, previous, f, p: ``(users, K)`` float32 after the last window.
      state: ``(users, K)`` int8 state codes after the last window.
      ever: ``(users, K)`` bool.
    """

    window_start: np.ndarray
    degree: np.ndarray
    top_interests: np.ndarray
    top_probs: np.ndarray
    current: np.ndarray
    previous: np.ndarray
    f: np.ndarray
    p: np.ndarray
    state: np.ndarray
    ever: np.ndarray

    @property
    def num_windows(self) -> int:
        return len(self.window_start)


def init_carry(num_users: int, num_interests: int) -> AnalysisCarry:
    zeros = jnp.zeros((num_users, num_interests), jnp.float32)
    return AnalysisCarry(
        interest=kernels.interest_state_init(num_users, num_interests),
        peak=zeros,
        state=jnp.zeros((num_users, num_interests), jnp.int8),
        ever=jnp.zeros((num_users, num_interests), bool),
    )


@functools.partial(jax.jit, static_argnames=("config", "top"), donate_argnums=(0,))
def window_step(
    carry: AnalysisCarry, events: kernels.WindowEvents, *, decay: float, inv_tau: float, config: AnalysisConfig, top: int
) -> tuple[AnalysisCarry, WindowOutput, tuple[jax.Array, jax.Array]]:
    """Close one window for every user: the fused analysis pass.

    Returns the new carry, the window's per-user output, and ``(users, K)``
    ``(f, p)`` of the window.
    """
    num_users, num_interests = carry.peak.shape
    added = kernels.window_contributions(events, num_users, num_interests, inv_tau=inv_tau)
    interest = kernels.interest_state_apply(carry.interest, added, decay=decay)
    cur, prev = interest.current, interest.previous
    active_now = added > 0
    peak = jnp.maximum(carry.peak, cur)
    ever = carry.ever | active_now
    degree = kernels.forgetting_degree(cur, prev, normalize=config.normalize, eps=config.eps)
    f = kernels.interest_forgetting(cur, prev, mode=config.forgetting_mode, eps=config.eps)
    p = kernels.interest_probs(f, config.alpha, mask=ever)
    state = kernels.threshold_states(
        carry.state, active_now, cur, peak, f,
        decline_threshold=config.decline_threshold, forgotten_ratio=config.forgotten_ratio,
    )
    top_probs, top_interests = jax.lax.top_k(p, top)
    return AnalysisCarry(interest, peak, state, ever), WindowOutput(degree, top_interests, top_probs), (f, p)


def window_index(timestamp: np.ndarray, window_seconds: float) -> tuple[np.ndarray, float]:
    """``(events,)`` window index of each event and the origin (aligned to a multiple of the window)."""
    origin = float(np.floor(timestamp.min() / window_seconds) * window_seconds)
    return np.floor((timestamp - origin) / window_seconds).astype(np.int64), origin


def analyze(config: Config, log: EventLog, *, events: np.ndarray | None = None, progress: bool = True) -> ForgettingResult:
    """Run the windowed forgetting analysis over ``log`` (category interests).

    Args:
      events: optional ``(events,)`` bool mask of the events to use (e.g. the
        history before each user's test item); default all.
    """
    acfg = config.analysis
    if log.item_category is None or log.categories is None or len(log.categories) == 0:
        raise DataError("the forgetting analysis needs item categories: set data.items_path to an items table")
    keep = np.ones(len(log.user), bool) if events is None else events
    if not keep.any():
        raise DataError("no events to analyze")
    num_interests = len(log.categories)
    interest = log.item_category[log.item[keep]]
    interest = np.where(interest >= 0, interest, num_interests).astype(np.int32)  # no category: dropped
    ts = log.timestamp[keep]
    order = np.argsort(ts, kind="stable")
    users, interest, ts, weight = log.user[keep][order], interest[order], ts[order], log.weight[keep][order]
    win, origin = window_index(ts, acfg.window_seconds)
    num_windows = int(win[-1]) + 1
    bounds = np.searchsorted(win, np.arange(num_windows + 1))
    bucket = 1 << int(max(int(np.diff(bounds).max()), 1) - 1).bit_length()
    decay, inv_tau = kernels.decay_factors(1.0, acfg.half_life_windows, reset_each_window=acfg.reset_each_window)
    top = min(acfg.top_interests, num_interests)

    carry = init_carry(log.num_users, num_interests)
    outputs: list[WindowOutput] = []
    f_and_p = None
    for t in tqdm(range(num_windows), desc="analyze", unit="window", disable=not progress, leave=False):
        lo, hi = bounds[t], bounds[t + 1]
        end = origin + (t + 1) * acfg.window_seconds
        pad = bucket - (hi - lo)
        batch = kernels.WindowEvents(
            user=np.concatenate([users[lo:hi], np.full(pad, log.num_users, np.int32)]),
            interest=np.concatenate([interest[lo:hi], np.zeros(pad, np.int32)]),
            weight=np.concatenate([weight[lo:hi], np.zeros(pad, np.float32)]),
            age=np.concatenate([(end - ts[lo:hi]) / acfg.window_seconds, np.zeros(pad)]).astype(np.float32),
        )
        carry, out, f_and_p = window_step(carry, batch, decay=decay, inv_tau=inv_tau, config=acfg, top=top)
        outputs.append(out)
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *outputs))
    last = jax.device_get(carry)
    f, p = jax.device_get(f_and_p)
    return ForgettingResult(
        window_start=origin + np.arange(num_windows) * acfg.window_seconds,
        degree=np.asarray(stacked.degree),
        top_interests=np.asarray(stacked.top_interests),
        top_probs=np.asarray(stacked.top_probs),
        current=np.asarray(last.interest.current),
        previous=np.asarray(last.interest.previous),
        f=np.asarray(f),
        p=np.asarray(p),
        state=np.asarray(last.state),
        ever=np.asarray(last.ever),
    )


def forgetting_table(result: ForgettingResult, log: EventLog) -> pa.Table:
    """One row per (user, window) from the user's first active window on.

    Columns: user_id, window, window_start (timestamp), F, top_interests
    (list<category>), top_p (list<float>).
    """
    started = np.cumsum(result.top_probs[:, :, 0] > 0, axis=0) > 0  # (windows, users)
    win, user = np.nonzero(started)
    top = result.top_interests.shape[-1]
    interests = log.categories.decode(result.top_interests[win, user].ravel())
    probs = pa.array(result.top_probs[win, user].ravel(), pa.float32())
    return pa.table(
        {
            "user_id": log.users.decode(user),
            "window": pa.array(win, pa.int32()),
            "window_start": pa.array((result.window_start[win] * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC")),
            "F": pa.array(result.degree[win, user], pa.float32()),
            "top_interests": pa.FixedSizeListArray.from_arrays(interests, top),
            "top_p": pa.FixedSizeListArray.from_arrays(probs, top),
        }
    )


def write_forgetting(result: ForgettingResult, log: EventLog, path) -> int:
    """Write ``forgetting.parquet``; returns the number of rows."""
    table = forgetting_table(result, log)
    pq.write_table(table, str(path))
    return table.num_rows


def forgetting_weights(result: ForgettingResult, config: Config, log: EventLog) -> ForgettingWeights:
    """Scoring weights m(u, k) = p(k|u) * state_weight(state(u, k)) from the last window."""
    names = kernels.STATE_NAMES
    per_state = np.array([config.recommend.state_weights.get(n, 1.0) for n in names], np.float32)
    return ForgettingWeights(
        user_interest=(result.p * per_state[result.state]).astype(np.float32),
        item_interest=log.item_category.astype(np.int32),
        item_weight=np.ones(log.num_items, np.float32),
    )
