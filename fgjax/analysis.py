"""The forgetting pipeline: window the events, stream I(u, t), compute F, f_k,
p(k|u,t) and the per-interest states, window after window.

One jitted, state-donating step (``window_step``) does the whole fused
pass for all users of a window: state update -> F -> f -> p -> states -> the
top interests. Memory on the device is O(users x K); each window's events are
padded to a power-of-two bucket so the step compiles a few times only, and
each window's outputs are copied to the host while the next one computes.
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
from fgjax.shapes import bucket_size


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
      current, previous: ``(users, K)`` float32 I after the last two windows.
      f, p: ``(users, K)`` float32, state: ``(users, K)`` int8 codes and
        ever: ``(users, K)`` bool (the user has had the interest), after the
        last window, or after each user's snapshot window if one was asked.
      events_without_interest: events skipped because their item has no category.
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
    events_without_interest: int = 0

    @property
    def num_windows(self) -> int:
        return len(self.window_start)

    @property
    def started(self) -> np.ndarray:
        """``(windows, users)`` bool: the user has had activity by this window."""
        return np.cumsum(self.top_probs[:, :, 0] > 0, axis=0) > 0


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
        carry.state, active_now, cur, peak,
        declining_ratio=config.declining_ratio, forgotten_ratio=config.forgotten_ratio,
    )
    # A reactivated interest is measured against its new level, not the old
    # peak; otherwise one quiet window sends it straight back to forgotten.
    peak = jnp.where(state == kernels.REACTIVATED, cur, peak)
    top_probs, top_interests = jax.lax.top_k(p, top)
    return AnalysisCarry(interest, peak, state, ever), WindowOutput(degree, top_interests, top_probs), (f, p)


@functools.partial(jax.jit, donate_argnums=(0,))
def _keep_snapshot(snapshot, f, p, state, ever, take):
    """Replace the rows of ``take`` ``(users,)`` in the (f, p, state, ever) snapshot."""
    return tuple(jnp.where(take[:, None], new, old) for new, old in zip((f, p, state, ever), snapshot))


def window_index(timestamp: np.ndarray, window_seconds: float, origin: float) -> np.ndarray:
    """``(events,)`` window index of each timestamp, counted from ``origin``."""
    return np.floor((timestamp - origin) / window_seconds).astype(np.int64)


def pad_events(events: kernels.WindowEvents, size: int, pad_user: int) -> kernels.WindowEvents:
    """Pad a window's events to ``size`` rows with zero-weight rows of an out-of-range user."""
    pad = size - len(events.user)
    return kernels.WindowEvents(
        user=np.concatenate([events.user, np.full(pad, pad_user, np.int32)]),
        interest=np.concatenate([events.interest, np.zeros(pad, np.int32)]),
        weight=np.concatenate([events.weight, np.zeros(pad, np.float32)]),
        age=np.concatenate([events.age, np.zeros(pad, np.float32)]),
    )


def analyze(
    config: Config,
    log: EventLog,
    *,
    events: np.ndarray | None = None,
    snapshot_before: np.ndarray | None = None,
    progress: bool = True,
) -> ForgettingResult:
    """Run the windowed forgetting analysis over ``log`` (category interests).

    Windows span the whole log (aligned to a multiple of the window length),
    whatever ``events`` selects.

    Args:
      events: optional ``(events,)`` bool mask of the events to use (e.g. the
        history before each user's test item); default all.
      snapshot_before: optional ``(users,)`` epoch seconds; ``f``, ``p`` and
        ``state`` of the result are then each user's values at the end of the
        window holding that time (``inf``: after the last window), so a user
        is judged as of its own test time, not as of the end of the log.
    """
    acfg = config.analysis
    if log.item_category is None or log.categories is None or len(log.categories) == 0:
        raise DataError("the forgetting analysis needs item categories: set data.items_path to an items table")
    keep = np.ones(len(log.user), bool) if events is None else events
    if not keep.any():
        raise DataError("no events to analyze")
    num_interests = len(log.categories)
    interest = log.item_category[log.item[keep]]
    without_interest = int(np.sum(interest < 0))
    if without_interest == len(interest):
        raise DataError(
            f"none of the {len(interest):,} events has an item with a category: "
            "do the items table's item_id values match the events' item_id values?"
        )
    interest = np.where(interest >= 0, interest, num_interests).astype(np.int32)  # no category: dropped
    ts = log.timestamp[keep]
    order = np.argsort(ts, kind="stable")
    users, interest, ts, weight = log.user[keep][order], interest[order], ts[order], log.weight[keep][order]
    origin = float(np.floor(log.timestamp.min() / acfg.window_seconds) * acfg.window_seconds)
    win = window_index(ts, acfg.window_seconds, origin)
    num_windows = int(window_index(log.timestamp.max(), acfg.window_seconds, origin)) + 1
    bounds = np.searchsorted(win, np.arange(num_windows + 1))
    decay, inv_tau = kernels.decay_factors(1.0, acfg.half_life_windows, reset_each_window=acfg.reset_each_window)
    top = min(acfg.top_interests, num_interests)

    carry = init_carry(log.num_users, num_interests)
    degree = np.empty((num_windows, log.num_users), np.float32)
    top_interests = np.empty((num_windows, log.num_users, top), np.int32)
    top_probs = np.empty((num_windows, log.num_users, top), np.float32)
    snapshot = None
    if snapshot_before is not None:
        # Times past the log (inf included) read the last window; times before it, the first.
        finite = np.nan_to_num(snapshot_before, posinf=log.timestamp.max(), neginf=log.timestamp.min())
        snap_window = np.clip(window_index(finite, acfg.window_seconds, origin), 0, num_windows - 1)
        shape = (log.num_users, num_interests)
        # Distinct buffers: the snapshot is donated.
        snapshot = (jnp.zeros(shape), jnp.zeros(shape), jnp.zeros(shape, jnp.int8), jnp.zeros(shape, bool))
    pending: tuple[int, WindowOutput] | None = None

    def collect(t: int, out: WindowOutput) -> None:
        degree[t], top_interests[t], top_probs[t] = out.degree, out.top_interests, out.top_probs

    for t in tqdm(range(num_windows), desc="analyze", unit="window", disable=not progress, leave=False):
        lo, hi = bounds[t], bounds[t + 1]
        end = origin + (t + 1) * acfg.window_seconds
        window_events = kernels.WindowEvents(
            users[lo:hi], interest[lo:hi], weight[lo:hi], ((end - ts[lo:hi]) / acfg.window_seconds).astype(np.float32)
        )
        # Power-of-two buckets: few shapes to compile, little padding.
        batch = pad_events(window_events, bucket_size(hi - lo), log.num_users)
        carry, out, (f, p) = window_step(carry, batch, decay=decay, inv_tau=inv_tau, config=acfg, top=top)
        if snapshot is not None:
            snapshot = _keep_snapshot(snapshot, f, p, carry.state, carry.ever, jnp.asarray(snap_window == t))
        # Fetch window t-1 while window t computes: outputs never pile up on the device.
        for leaf in out:
            leaf.copy_to_host_async()
        if pending is not None:
            collect(*pending)
        pending = (t, out)
    collect(*pending)
    last = jax.device_get(carry)
    f, p, state, ever = jax.device_get(snapshot if snapshot is not None else (f, p, carry.state, carry.ever))
    return ForgettingResult(
        window_start=origin + np.arange(num_windows) * acfg.window_seconds,
        degree=degree,
        top_interests=top_interests,
        top_probs=top_probs,
        current=np.asarray(last.interest.current),
        previous=np.asarray(last.interest.previous),
        f=np.asarray(f),
        p=np.asarray(p),
        state=np.asarray(state),
        ever=np.asarray(ever),
        events_without_interest=without_interest,
    )


def degree_since_first_activity(result: ForgettingResult) -> np.ndarray:
    """``(windows, users)`` F, NaN before each user's first active window."""
    return np.where(result.started, result.degree, np.nan)


def forgetting_table(result: ForgettingResult, log: EventLog) -> pa.Table:
    """One row per (user, window) from the user's first active window on.

    Columns: user_id, window, window_start (timestamp), F, top_interests
    (list<category>), top_p (list<float>).
    """
    win, user = np.nonzero(result.started)
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
    """Scoring weights ``m(u, k) = max(p(k|u) * state_weight(state(u, k)), floor)``.

    A column K is appended for items without a category: the mean weight of
    the interests the user has had, so such items are neither boosted nor
    suppressed against the user's other items (for a user with no interest,
    the floor, like everything else). The floor keeps items of never-seen or
    forgotten interests ordered by the model instead of tied at zero.
    """
    rcfg = config.recommend
    per_state = np.array([rcfg.state_weights.get(n, 1.0) for n in kernels.STATE_NAMES], np.float32)
    weights = result.p * per_state[result.state]
    had = result.ever.sum(axis=1)
    neutral = np.where(had > 0, np.sum(weights * result.ever, axis=1) / np.maximum(had, 1), 0.0)
    user_interest = np.maximum(np.concatenate([weights, neutral[:, None]], axis=1), rcfg.interest_floor)
    return ForgettingWeights(
        user_interest=user_interest.astype(np.float32),
        item_interest=log.item_category.astype(np.int32),
        item_weight=np.ones(log.num_items, np.float32),
    )
