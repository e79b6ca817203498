"""The forgetting pipeline: window the events, stream I(u, t), compute F, f_k,
p(k|u,t) and the per-interest states, window after window.

One jitted, state-donating step (``window_step``) does the whole fused
pass for all users of a window: state update -> F -> f -> p -> detection
(``kernels.detector_update``) -> states -> the top interests. Memory on the
device is O(users x K x T) for the detector's uint8 ring buffer of T windows
plus O(users x K) for the rest; each window's events are padded to a
power-of-two bucket so the step compiles a few times only, and each window's
outputs are copied to the host while the next one computes.

Real-time monitoring is the same step: ``monitor_init`` and
``monitor_update(state, window_events)`` are what a service calls as each
window closes; ``analyze`` is that loop over a whole log, and only the rows
whose state changed are gathered on the device and copied back
(``states.parquet``).
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
from fgjax.shapes import bucket_size


class AnalysisCarry(NamedTuple):
    """Per-(user, interest) state carried across windows, ``(users, K)`` unless noted.

    This is also the real-time monitor's state (``monitor_init`` / ``monitor_update``).
    """

    interest: kernels.InterestState
    peak: jax.Array  # running max of I
    state: jax.Array  # int8 codes, kernels.STATE_NAMES
    ever: jax.Array  # bool, the user ever had the interest
    detector: kernels.DetectorState  # activity ring buffer (T, users, K) and the detector's counters


# Per-(user, interest) evidence kept for explanations and written to states.parquet.
EVIDENCE_FIELDS = (
    "silence", "silence_limit", "rate", "recent", "expected_recent", "trend", "period", "period_strength", "last_active",
)


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
      evidence: ``{name: (users, K)}`` the detector's evidence (``EVIDENCE_FIELDS``)
        at the same time as ``state``.
      changes: ``{column: (rows,)}`` one row per (user, interest, window) whose
        state changed, with the evidence (see ``states_table``).
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
    evidence: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    changes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    events_without_interest: int = 0

    @property
    def num_windows(self) -> int:
        return len(self.window_start)

    @property
    def started(self) -> np.ndarray:
        """``(windows, users)`` bool: the user has had activity by this window."""
        return np.cumsum(self.top_probs[:, :, 0] > 0, axis=0) > 0


def detector_params(config: AnalysisConfig) -> kernels.DetectorParams:
    """The detector knobs of ``analysis.detector`` as a pytree of scalars."""
    d = config.detector
    return kernels.DetectorParams(*(jnp.asarray(getattr(d, name), jnp.float32) for name in kernels.DetectorParams._fields))


def init_carry(num_users: int, num_interests: int, config: AnalysisConfig = AnalysisConfig()) -> AnalysisCarry:
    """The state before any window (``monitor_init``)."""
    zeros = jnp.zeros((num_users, num_interests), jnp.float32)
    return AnalysisCarry(
        interest=kernels.interest_state_init(num_users, num_interests),
        peak=zeros,
        state=jnp.zeros((num_users, num_interests), jnp.int8),
        ever=jnp.zeros((num_users, num_interests), bool),
        # The level rule needs no ring buffer: a one-window stub keeps the carry's structure.
        detector=kernels.detector_init(
            num_users, num_interests, config.detector.buffer_windows if config.detector.kind == "adaptive" else 1
        ),
    )


class WindowDetail(NamedTuple):
    """``(users, K)`` per-interest results of one window."""

    f: jax.Array
    p: jax.Array
    state: jax.Array  # int8 codes after the window
    previous_state: jax.Array  # int8 codes before it
    detection: kernels.DetectorOutput | None  # None under the level rule (no detector runs)


def _evidence(detail: "WindowDetail", name: str) -> jax.Array:
    """One evidence array of a window; defaults (-1 for last_active, else 0) when the detector did not run.

    ``silence_limit`` is not among them: see ``_with_limits``.
    """
    if detail.detection is not None:
        return getattr(detail.detection, name)
    return jnp.full(detail.state.shape, -1 if name == "last_active" else 0, _EVIDENCE_DTYPES[name])


_EVIDENCE_DTYPES = {"silence": jnp.int32, "silence_limit": jnp.int32, "last_active": jnp.int32}
_EVIDENCE_DTYPES = {name: _EVIDENCE_DTYPES.get(name, jnp.float32) for name in EVIDENCE_FIELDS}


@functools.partial(jax.jit, static_argnames=("config", "top"), donate_argnums=(0,))
def window_step(
    carry: AnalysisCarry,
    events: kernels.WindowEvents,
    params: kernels.DetectorParams,
    *,
    decay: float,
    inv_tau: float,
    config: AnalysisConfig,
    top: int,
) -> tuple[AnalysisCarry, WindowOutput, WindowDetail]:
    """Close one window for every user: the fused analysis pass.

    Args:
      carry: the state after the previous window (donated).
      events: the window's events, ``user == users`` for padding rows and
        ``interest == K`` for events without a category (both dropped).
      params: ``detector_params(config)``.

    Returns the new carry, the window's per-user output and its per-interest detail.
    """
    num_users, num_interests = carry.peak.shape
    added = kernels.window_contributions(events, num_users, num_interests, inv_tau=inv_tau)
    counts = kernels.event_counts(events.user, events.interest, num_users, num_interests)
    interest = kernels.interest_state_apply(carry.interest, added, decay=decay)
    cur, prev = interest.current, interest.previous
    active_now = counts > 0
    peak = jnp.maximum(carry.peak, cur)
    ever = carry.ever | active_now
    degree = kernels.forgetting_degree(cur, prev, normalize=config.normalize, eps=config.eps)
    f = kernels.interest_forgetting(cur, prev, mode=config.forgetting_mode, eps=config.eps)
    p = kernels.interest_probs(f, config.alpha, mask=ever)
    if config.detector.kind == "adaptive":
        detector, detection = kernels.detector_update(
            carry.detector, counts, degree, params, user_block=config.detector.user_block or None, with_limits=False
        )
        state = detection.state
    else:
        # The level rule alone: no detector work, and its evidence reads as zeros.
        state = kernels.threshold_states(
            carry.state, active_now, cur, peak,
            declining_ratio=config.level.declining_ratio, forgotten_ratio=config.level.forgotten_ratio,
        )
        detector = carry.detector
        detection = None
    # A reactivated interest is measured against its new level, not the old
    # peak; otherwise one quiet window sends it straight back to forgotten.
    peak = jnp.where(state == kernels.REACTIVATED, cur, peak)
    top_probs, top_interests = jax.lax.top_k(p, top)
    new_carry = AnalysisCarry(interest, peak, state, ever, detector)
    return new_carry, WindowOutput(degree, top_interests, top_probs), WindowDetail(f, p, state, carry.state, detection)


def monitor_init(num_users: int, num_interests: int, config: Config) -> AnalysisCarry:
    """Real-time monitoring: the state before the first window closes."""
    return init_carry(num_users, num_interests, config.analysis)


def monitor_update(
    state: AnalysisCarry, events: kernels.WindowEvents, config: Config, *, top: int | None = None
) -> tuple[AnalysisCarry, WindowOutput, WindowDetail]:
    """Real-time monitoring: close one window (call it as each window closes).

    Args:
      state: the monitor state after the previous window (donated: do not reuse it).
      events: the window's events with dense indices; ``age`` in windows
        (``(window end - timestamp) / window_seconds``); pad with ``user == users``.
      config: the run's config (``analysis`` section).

    Returns ``(state, per-user output, per-interest detail)``, the same as
    ``analyze`` computes for that window.
    """
    acfg = config.analysis
    num_interests = state.peak.shape[1]
    decay, inv_tau = kernels.decay_factors(1.0, acfg.half_life_windows, reset_each_window=acfg.reset_each_window)
    top = min(acfg.top_interests, num_interests) if top is None else top
    return window_step(state, events, detector_params(acfg), decay=decay, inv_tau=inv_tau, config=acfg, top=top)


# The detector's counters behind s* (silence_limit), kept so s* is computed
# only where it is written, not for every (user, interest) every window.
_COUNTERS = ("total", "alive", "active_windows", "longest_gap")
_OBSERVED = tuple(name for name in EVIDENCE_FIELDS if name != "silence_limit")


def _snapshot_arrays(detail: WindowDetail, carry: AnalysisCarry) -> dict[str, jax.Array]:
    """The ``(users, K)`` arrays kept per user at its snapshot time (counters prefixed ``_``)."""
    arrays = {"f": detail.f, "p": detail.p, "state": detail.state, "ever": carry.ever}
    arrays.update({name: _evidence(detail, name) for name in _OBSERVED})
    if detail.detection is not None:
        arrays.update({f"_{name}": getattr(carry.detector, name) for name in _COUNTERS})
    return arrays


@functools.partial(jax.jit, static_argnames=("buffer_windows",))
def _with_limits(arrays: dict[str, jax.Array], params: kernels.DetectorParams, buffer_windows: int) -> dict[str, jax.Array]:
    """Add ``silence_limit`` (s*) from the ``_`` counters, and drop them; 0 without a detector."""
    out = {name: a for name, a in arrays.items() if not name.startswith("_")}
    if "_total" not in arrays:
        out["silence_limit"] = jnp.zeros(arrays["state"].shape, jnp.int32)
        return out
    model = kernels.silence_model(
        arrays["_total"], arrays["_alive"], arrays["silence"], arrays["_active_windows"], arrays["_longest_gap"],
        arrays["period"], arrays["period_strength"], params, buffer_windows,
    )
    out["silence_limit"] = jnp.where(arrays["_alive"] > 0, kernels.model_silence_limit(model, params), 0)
    return out


@functools.partial(jax.jit, donate_argnums=(0,))
def _keep_snapshot(snapshot, arrays, take):
    """Replace the rows of ``take`` ``(users,)`` in the snapshot dict."""
    return {name: jnp.where(take[:, None], arrays[name], old) for name, old in snapshot.items()}


@functools.partial(jax.jit, static_argnames=("size",))
def _gather_changes(
    degree, detail: WindowDetail, detector: kernels.DetectorState, params: kernels.DetectorParams, *, size: int,
) -> dict[str, jax.Array]:
    """The (user, interest) rows whose state changed in a window, padded to ``size``.

    Row order is user-major; padding rows repeat row 0 and are trimmed by the caller.
    """
    num_interests = detail.state.shape[1]
    (flat,) = jnp.nonzero((detail.state != detail.previous_state).ravel(), size=size, fill_value=0)
    user, interest = flat // num_interests, flat % num_interests
    take = lambda a: a.ravel()[flat]  # noqa: E731 - a local gather
    rows = {
        "user": user.astype(jnp.int32),
        "interest": interest.astype(jnp.int32),
        "state": take(detail.state),
        "previous_state": take(detail.previous_state),
        "F": degree[user],
        "F_threshold": detail.detection.degree_threshold[user] if detail.detection else jnp.zeros(size),
        "F_alarm": detail.detection.degree_alarm[user] if detail.detection else jnp.zeros(size, bool),
        "f_k": take(detail.f),
        "p": take(detail.p),
    }
    rows.update({name: take(_evidence(detail, name)) for name in _OBSERVED})
    if detail.detection is not None:
        rows.update({f"_{name}": take(getattr(detector, name)) for name in _COUNTERS})
    return _with_limits(rows, params, detector.buffer.counts.shape[-1])


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
    record_changes: bool = True,
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
      record_changes: gather the rows whose state changed, with their
        evidence, into ``result.changes`` (``states.parquet``).
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

    carry = init_carry(log.num_users, num_interests, acfg)
    params = detector_params(acfg)
    degree = np.empty((num_windows, log.num_users), np.float32)
    top_interests = np.empty((num_windows, log.num_users, top), np.int32)
    top_probs = np.empty((num_windows, log.num_users, top), np.float32)
    snapshot = snap_window = None
    if snapshot_before is not None:
        # Times past the log (inf included) read the last window; times before it, the first.
        finite = np.nan_to_num(snapshot_before, posinf=log.timestamp.max(), neginf=log.timestamp.min())
        snap_window = np.clip(window_index(finite, acfg.window_seconds, origin), 0, num_windows - 1)
    pending: tuple[int, WindowOutput, dict | None] | None = None
    changes: list[dict[str, np.ndarray]] = []

    def collect(t: int, out: WindowOutput, rows: dict | None, count: int) -> None:
        degree[t], top_interests[t], top_probs[t] = out.degree, out.top_interests, out.top_probs
        if rows is not None:
            window_rows = {name: np.asarray(column)[:count] for name, column in rows.items()}
            window_rows["window"] = np.full(count, t, np.int32)
            changes.append(window_rows)

    for t in tqdm(range(num_windows), desc="analyze", unit="window", disable=not progress, leave=False):
        lo, hi = bounds[t], bounds[t + 1]
        end = origin + (t + 1) * acfg.window_seconds
        window_events = kernels.WindowEvents(
            users[lo:hi], interest[lo:hi], weight[lo:hi], ((end - ts[lo:hi]) / acfg.window_seconds).astype(np.float32)
        )
        # Power-of-two buckets: few shapes to compile, little padding.
        batch = pad_events(window_events, bucket_size(hi - lo), log.num_users)
        carry, out, detail = window_step(carry, batch, params, decay=decay, inv_tau=inv_tau, config=acfg, top=top)
        if snapshot_before is not None:
            arrays = _snapshot_arrays(detail, carry)
            if snapshot is None:  # distinct buffers: the snapshot is donated
                snapshot = {name: jnp.zeros_like(a) for name, a in arrays.items()}
            snapshot = _keep_snapshot(snapshot, arrays, jnp.asarray(snap_window == t))
        rows, count = None, 0
        if record_changes:
            # Only the changed rows leave the device; their count (a sync per window,
            # one scalar) sizes the gather, so outputs overlap only the host work below.
            count = int(jnp.sum(detail.state != detail.previous_state))
            rows = (_gather_changes(out.degree, detail, carry.detector, params, size=bucket_size(max(count, 1)))
                    if count else None)
        # Fetch window t-1 while window t computes: outputs never pile up on the device.
        for leaf in jax.tree.leaves((out, rows)):
            leaf.copy_to_host_async()
        if pending is not None:
            collect(*pending)
        pending = (t, out, rows, count)
        last_detail = detail
    collect(*pending)
    last = jax.device_get(carry)
    final = jax.device_get(_with_limits(snapshot if snapshot is not None else _snapshot_arrays(last_detail, carry), params,
                                        carry.detector.buffer.counts.shape[-1]))
    merged = {name: np.concatenate([c[name] for c in changes]) for name in changes[0]} if changes else {}
    return ForgettingResult(
        window_start=origin + np.arange(num_windows) * acfg.window_seconds,
        degree=degree,
        top_interests=top_interests,
        top_probs=top_probs,
        current=np.asarray(last.interest.current),
        previous=np.asarray(last.interest.previous),
        f=np.asarray(final["f"]),
        p=np.asarray(final["p"]),
        state=np.asarray(final["state"]),
        ever=np.asarray(final["ever"]),
        # Under the level rule no detector ran: no evidence (not zeros that read as "never active").
        evidence={name: np.asarray(final[name]) for name in EVIDENCE_FIELDS} if acfg.detector.kind == "adaptive" else {},
        changes=merged,
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


STATE_COLUMNS = (
    "user_id", "interest", "window", "window_start", "state", "previous_state", "F", "F_threshold", "F_alarm", "f_k",
    "p", "silence", "silence_limit", "events_per_window", "recent_events", "expected_recent_events", "trend",
    "period", "period_strength", "last_active",
)


def states_table(result: ForgettingResult, log: EventLog) -> pa.Table:
    """One row per (user, interest, window) where the interest's state changed.

    Columns (``STATE_COLUMNS``): user_id, interest (category), window,
    window_start (timestamp), state and previous_state (names), F with the
    user's adaptive threshold F_threshold and F_alarm, f_k, p, and the
    evidence: silence and silence_limit (windows), events_per_window before
    the silence, recent_events against expected_recent_events (the drop
    test), trend (events per window per window), period (windows; 0 = none)
    with period_strength, last_active (start of the last active window).
    Rows are ordered by window, then user, then interest. Under
    ``analysis.detector.kind: level`` no detector runs: the evidence columns
    are zeros and last_active is null.
    """
    c = result.changes
    if not c:
        c = {name: np.zeros(0, np.int32) for name in ("user", "interest", "window", "state", "previous_state", "last_active")}
        c.update({name: np.zeros(0, np.float32) for name in (
            "F", "F_threshold", "f_k", "p", "silence", "silence_limit", "rate", "recent", "expected_recent", "trend",
            "period", "period_strength")})
        c["F_alarm"] = np.zeros(0, bool)
    names = pa.array(kernels.STATE_NAMES, pa.string())
    timestamp = lambda seconds: pa.array((seconds * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"))  # noqa: E731
    last = np.asarray(c["last_active"])
    f32 = lambda name: pa.array(np.asarray(c[name], np.float32), pa.float32())  # noqa: E731
    return pa.table({
        "user_id": log.users.decode(c["user"]),
        "interest": log.categories.decode(c["interest"]),
        "window": pa.array(c["window"], pa.int32()),
        "window_start": timestamp(result.window_start[c["window"]]),
        "state": names.take(pa.array(np.asarray(c["state"], np.int32))),
        "previous_state": names.take(pa.array(np.asarray(c["previous_state"], np.int32))),
        "F": f32("F"),
        "F_threshold": f32("F_threshold"),
        "F_alarm": pa.array(np.asarray(c["F_alarm"], bool)),
        "f_k": f32("f_k"),
        "p": f32("p"),
        "silence": pa.array(np.asarray(c["silence"], np.int32), pa.int32()),
        "silence_limit": pa.array(np.asarray(c["silence_limit"], np.int32), pa.int32()),
        "events_per_window": f32("rate"),
        "recent_events": f32("recent"),
        "expected_recent_events": f32("expected_recent"),
        "trend": f32("trend"),
        "period": f32("period"),
        "period_strength": f32("period_strength"),
        "last_active": pa.array(
            (result.window_start[np.maximum(last, 0)] * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"),
            mask=last < 0,
        ),
    })


def write_states(result: ForgettingResult, log: EventLog, path) -> int:
    """Write ``states.parquet`` (``states_table``); returns the number of rows."""
    table = states_table(result, log)
    pq.write_table(table, str(path))
    return table.num_rows


def state_series(changes: dict[str, np.ndarray], num_windows: int, num_users: int, num_interests: int) -> np.ndarray:
    """``(windows, users, K)`` int8 state codes, rebuilt from change rows.

    ``changes`` holds ``(rows,)`` window, user, interest and state (codes), e.g.
    ``ForgettingResult.changes`` or what ``states.parquet`` says: a state
    holds until its next change.
    """
    c = changes
    codes = np.zeros((num_windows, num_users, num_interests), np.int8)
    if not c or len(c["window"]) == 0:
        return codes
    change = np.full((num_windows, num_users, num_interests), -1, np.int8)
    change[c["window"], c["user"], c["interest"]] = c["state"]
    current = np.zeros((num_users, num_interests), np.int8)
    for t in range(num_windows):  # a loop over windows, vectorized over users
        current = np.where(change[t] >= 0, change[t], current)
        codes[t] = current
    return codes
