"""``fgjax analyze``: the forgetting analysis of a behavior log, streamed in two passes.

    fgjax analyze --out runs/a --set data.path=events/ --set data.items_path=items.parquet

Pass 1 reads and validates every row once (``fgjax.data.stream.scan_log``:
rejects counted and written, vocabularies built, used rows spilled by window);
pass 2 streams the windows into the fused window step and writes
``forgetting.parquet`` and ``states.parquet`` window by window
(``fgjax.analysis.TableWriters``). Peak memory is the state (users x
interests), one record batch, one window's events and the windows in flight:
it does not grow with the number of events or windows. The tables equal what
the in-memory path (``read_events`` -> ``analyze`` -> ``write_forgetting`` /
``write_states``) writes for the same log (tested).

This module imports no training code, so the command starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fgjax import kernels
from fgjax.analysis import TableWriters, analyze_scanned
from fgjax.config import Config, to_dict
from fgjax.data.stream import scan_log
from fgjax.errors import ConfigError
from fgjax.outputs import run_folder, shown_as_final
from fgjax.plots import plot_forgetting

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def final_state_counts(state: np.ndarray) -> dict[str, int]:
    """How many (user, interest) pairs end in each state, from ``(users, K)`` codes."""
    counts = np.bincount(np.asarray(state).ravel(), minlength=len(kernels.STATE_NAMES))
    return {name: int(c) for name, c in zip(kernels.STATE_NAMES, counts) if name != "none"}


def analyze_log(
    config: Config, out: str | Path, report: Reporter = _quiet, progress: bool = True, *, overwrite: bool = False
) -> tuple[int, int]:
    """Forgetting analysis of every event of ``config.data`` (see the module docstring).

    Writes ``out/forgetting.parquet`` (per user and window), ``out/states.parquet``
    (per state change, with evidence), ``out/rejects.parquet`` and ``out/plots/forgetting.png``;
    returns the rows of the two tables.
    """
    if not config.data.path:
        raise ConfigError("data.path is empty: set it with --set data.path=EVENTS (file, directory or glob)")
    out = Path(out).absolute()
    with run_folder(out, "analyze", to_dict(config), overwrite=overwrite) as stage:
        shown = shown_as_final(report, stage, out)
        window_seconds = config.analysis.window_seconds
        with scan_log(config.data, window_seconds, rejects_path=stage / "rejects.parquet",
                      spill_parent=stage) as scanned:
            shown(f"pass 1: {scanned.report.rows_read:,} rows read, {scanned.num_users:,} users, "
                  f"{len(scanned.items):,} items, {scanned.num_windows:,} windows")
            window_start = scanned.origin + np.arange(scanned.num_windows) * window_seconds
            top = min(config.analysis.top_interests, len(scanned.categories or ()))
            writers = TableWriters(stage, scanned.users, scanned.categories, window_start, max(top, 1))
            try:
                result = analyze_scanned(config, scanned, writers, progress=progress)
            finally:  # the writer thread stops either way (a failed run's stage folder is discarded)
                rows = writers.close()
            shown(scanned.report.summary())
        if result.events_without_interest:
            shown(f"analysis: {result.events_without_interest:,} events skipped, their items have no category")
        (stage / "plots").mkdir(exist_ok=True)
        sampled = writers.plot_degree().shape[1]
        plot_forgetting(writers.plot_degree(), window_start, stage / "plots" / "forgetting.png",
                        sample_note="" if sampled == scanned.num_users else f"{sampled:,} sampled users")
        shown(f"forgetting: {scanned.num_windows} windows; final states {final_state_counts(result.state)}")
    return rows["forgetting"], rows["states"]
