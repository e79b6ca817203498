"""Real-time monitoring: an ``init``/``update`` pair (optax style) around ``window_step``.

A service calls ``monitor_update`` as each window closes, with that window's
events; the state is the ``AnalysisCarry`` NamedTuple. The results equal what
``analyze`` computes for the same window over the whole log (tested) once the
log is at least ``analysis.detector.life_days`` long: a live log has no end, so
the monitor's life budget is ``life_days``, where ``analyze`` caps it at the
windows of the log it is given.
"""

from __future__ import annotations

import jax
import numpy as np

from fgjax import kernels
from fgjax.analysis.window import (
    AnalysisCarry,
    WindowDetail,
    WindowOutput,
    init_carry,
    window_params,
    window_spec,
    window_step,
)
from fgjax.config import Config
from fgjax.errors import DataError


def monitor_init(num_users: int, num_interests: int, config: Config) -> AnalysisCarry:
    """The monitor state before the first window closes: ``(users, K)`` arrays and the detector's ring buffer."""
    return init_carry(window_spec(config.analysis, num_interests), num_users)


def monitor_update(
    state: AnalysisCarry, events: kernels.WindowEvents, config: Config, *, top: int | None = None
) -> tuple[AnalysisCarry, WindowOutput, WindowDetail]:
    """Close one window.

    Args:
      state: the monitor state after the previous window (donated: do not reuse it).
      events: the window's events with dense indices; ``age`` in windows
        (``(window end - timestamp) / window_seconds``); pad with ``user == users``
        to any size (a few sizes keep compilations few).
      config: the run's config (``analysis`` section); knobs may change between
        calls without compiling again, the structure (``WindowSpec``) may not.
      top: interests kept per user (default ``analysis.top_interests``).

    Returns ``(state, per-user output, per-interest detail)``.

    Raises:
      DataError: an event outside those ranges (user in ``[0, users]``, interest in ``[0, K]``, ``K`` = no
        interest), or a weight or age that is negative or not finite: on the device such an event would
        be credited to another user or interest, or turn the state into NaN. Checked on the host, not when
        called inside a trace.
    """
    num_users, num_interests = state.peak.shape
    check_events(events, num_users, num_interests)
    spec = window_spec(config.analysis, num_interests, top=top)
    return window_step(state, events, window_params(config.analysis), spec)


def check_events(events: kernels.WindowEvents, num_users: int, num_interests: int) -> None:
    """Raises ``DataError`` naming the first event outside ``monitor_update``'s ranges (no-op on tracers)."""
    if any(isinstance(x, jax.core.Tracer) for x in events):
        return
    user, interest, weight, age = (np.asarray(x) for x in events)
    checks = (
        ("user", user, (user < 0) | (user > num_users), f"a dense user index in [0, {num_users}] ({num_users} = padding)"),
        ("interest", interest, (interest < 0) | (interest > num_interests),
         f"an interest index in [0, {num_interests}] ({num_interests} = none)"),
        ("weight", weight, ~(np.isfinite(weight) & (weight >= 0)), "a finite weight >= 0"),
        ("age", age, ~(np.isfinite(age) & (age >= 0)), "a finite age >= 0 in windows"),
    )
    for name, values, bad, expected in checks:
        if np.any(bad):
            at = int(np.flatnonzero(bad)[0])
            raise DataError(f"monitor_update: events.{name}[{at}] = {values.ravel()[at].item()!r}, expected {expected} "
                            f"({int(np.sum(bad)):,} such events)")
