"""The windowed forgetting analysis: one window step, one run loop, its tables and the real-time monitor.

Modules: ``window`` (``WindowSpec``, ``WindowParams``, the carry and the jitted
``window_step``), ``run`` (window sources, ``run_windows``, ``analyze``,
``analyze_stream``), ``monitor`` (``monitor_init`` / ``monitor_update``),
``tables`` (``forgetting.parquet``, ``states.parquet``).
"""

from fgjax.analysis.monitor import monitor_init, monitor_update
from fgjax.analysis.run import (
    ForgettingResult,
    RunOutput,
    StreamResult,
    Window,
    analyze,
    analyze_stream,
    log_windows,
    parquet_windows,
    run_windows,
)
from fgjax.analysis.tables import (
    STATE_COLUMNS,
    degree_since_first_activity,
    forgetting_table,
    state_series,
    states_table,
    write_forgetting,
    write_states,
)
from fgjax.analysis.window import (
    EVIDENCE_FIELDS,
    AnalysisCarry,
    Counters,
    Evidence,
    WindowDetail,
    WindowOutput,
    WindowParams,
    WindowSpec,
    detector_step,
    init_carry,
    pad_events,
    window_index,
    window_params,
    window_spec,
    window_step,
    with_limits,
)

__all__ = [
    "AnalysisCarry",
    "Counters",
    "EVIDENCE_FIELDS",
    "Evidence",
    "ForgettingResult",
    "RunOutput",
    "STATE_COLUMNS",
    "StreamResult",
    "Window",
    "WindowDetail",
    "WindowOutput",
    "WindowParams",
    "WindowSpec",
    "analyze",
    "analyze_stream",
    "degree_since_first_activity",
    "detector_step",
    "forgetting_table",
    "init_carry",
    "log_windows",
    "monitor_init",
    "monitor_update",
    "pad_events",
    "parquet_windows",
    "run_windows",
    "state_series",
    "states_table",
    "window_index",
    "window_params",
    "window_spec",
    "window_step",
    "with_limits",
    "write_forgetting",
    "write_states",
]
