"""Real-time monitoring: an ``init``/``update`` pair (optax style) around ``window_step``.

A service calls ``monitor_update`` as each window closes, with that window's
events; the state is the ``AnalysisCarry`` NamedTuple. The results equal what
``analyze`` computes for the same window over the whole log (tested).
"""

from __future__ import annotations

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
    """
    spec = window_spec(config.analysis, state.peak.shape[1], top=top)
    return window_step(state, events, window_params(config.analysis), spec)
