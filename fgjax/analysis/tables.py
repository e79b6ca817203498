"""The analysis' tables: ``forgetting.parquet`` (F and the top interests per (user, window)) and
``states.parquet`` (one row per state change, with its evidence), and the state series they imply."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fgjax import kernels
from fgjax.analysis.run import ForgettingResult
from fgjax.data.reader import EventLog


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
    "dispersion", "period", "period_strength", "last_active",
)


def states_table(result: ForgettingResult, log: EventLog) -> pa.Table:
    """One row per (user, interest, window) where the interest's state changed.

    Columns (``STATE_COLUMNS``): user_id, interest (category), window,
    window_start (timestamp), state and previous_state (names), F with the
    user's adaptive threshold F_threshold and F_alarm, f_k, p, and the
    evidence: silence and silence_limit (windows), events_per_window before
    the silence, recent_events against expected_recent_events (the drop
    test), trend (events per window per window), dispersion (var / mean of the counts before the
    silence, >= 1), period (windows; 0 = none)
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
            "dispersion", "period", "period_strength")})
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
        "dispersion": f32("dispersion"),
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
