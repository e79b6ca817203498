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

Several processes (``analysis.distributed: true``): ``fgjax analyze`` runs as N
``jax.distributed`` processes, started by one command each (one per accelerator,
or per machine on CPUs)::

    FGJAX_COORDINATOR=host0:12345 FGJAX_NUM_PROCESSES=2 FGJAX_PROCESS_ID=$i \
        fgjax analyze --out runs/a --set analysis.distributed=true --set data.path=events/ \
        --set data.items_path=items.parquet

Process i reads every N-th file of ``data.path``'s sorted list from the i-th: the
files must be partitioned by user (checked: a user in two processes' files stops
every process with an error naming the rule). Each process runs pass 1 on its
files; the window step runs as one SPMD program over one device per process,
users sharded by process (``fgjax.analysis.distributed``), so the adaptive
detector's population calibration covers every user and the tables equal one
process's (tested with two processes on CPU). Each process writes its own users'
rows: ``forgetting.parquet``, ``states.parquet`` and ``rejects.parquet`` are then
folders of parts (``part-00000.parquet``, ...), one table to Parquet readers
(``pyarrow.parquet.read_table(OUT / "forgetting.parquet")``, pandas, DuckDB,
Spark); rows are ordered by window within each part. Process 0 plots a sample of
every process's users and commits OUT (``fgjax.outputs.shared_run_folder``),
which must be on a file system every process sees.

This module imports no training code, so the command starts fast.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from jax._src import dispatch  # the compile events' names (jax.monitoring has no public constants)

from fgjax import kernels, processes
from fgjax.analysis import (TableWriters, analyze_scanned, load_verdict, require_categories, verdict_file,
                            window_params)
from fgjax.analysis.verdict import AUTO, BUILTIN
from fgjax.analysis.distributed import agree_scanned, user_mesh
from fgjax.analysis.tables import part_name
from fgjax.config import Config, to_dict
from fgjax.data.stream import scan_log
from fgjax.errors import ConfigError
from fgjax.outputs import run_folder, shared_run_folder, shown_as_final
from fgjax.plots import import_in_background as plots_import_in_background
from fgjax.plots import plot_forgetting

PLOT_USERS = 50_000

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def split_cpu(count: int) -> int:
    """Give JAX ``count`` CPU devices (``jax_num_cpu_devices``, at most one per core) for ``fgjax analyze``,
    which splits its users between them (``analysis.cpu_devices``; ``fgjax.analysis.distributed``).

    Left as it is when ``count`` is 0, when the user chose (``JAX_NUM_CPU_DEVICES``, or XLA_FLAGS'
    ``--xla_force_host_platform_device_count``) or when JAX has started in this process (its devices are
    fixed then). Only the CPU's devices change: on a GPU the analysis runs on the GPUs as before. Returns
    the CPU devices set, 0 when left.
    """
    count = min(count, os.cpu_count() or 1)
    chosen = jax.config.jax_num_cpu_devices >= 0 or "xla_force_host_platform_device_count" in os.environ.get(
        "XLA_FLAGS", "")
    if count <= 1 or chosen:
        return 0
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already ran something here (an API caller's process): its devices stay
        return 0
    return count


def _on_devices(devices: int) -> str:
    return f", users split between {devices} {jax.devices()[0].platform} devices" if devices > 1 else ""


def final_state_counts(state: np.ndarray) -> dict[str, int]:
    """How many (user, interest) pairs end in each state, from ``(users, K)`` codes."""
    counts = np.bincount(np.asarray(state).ravel(), minlength=len(kernels.STATE_NAMES))
    return {name: int(c) for name, c in zip(kernels.STATE_NAMES, counts) if name != "none"}


class _CompileClock:
    """Seconds JAX spends tracing, lowering and compiling while active (``jax.monitoring`` events)."""

    EVENTS = (dispatch.JAXPR_TRACE_EVENT, dispatch.JAXPR_TO_MLIR_MODULE_EVENT, dispatch.BACKEND_COMPILE_EVENT)

    def __init__(self):
        self.seconds = 0.0
        self.backend: dict[str, float] = {}  # XLA's compile seconds per program (``fun_name``), summed

    def _listen(self, event: str, duration: float, fun_name: str = "?", **_) -> None:
        if event in self.EVENTS:
            self.seconds += duration
        if event == dispatch.BACKEND_COMPILE_EVENT:
            self.backend[fun_name] = self.backend.get(fun_name, 0.0) + duration

    def slowest(self, count: int = 3) -> dict[str, float]:
        """``{"compile:<program>": seconds}`` of the ``count`` programs XLA took longest to compile."""
        ranked = sorted(self.backend.items(), key=lambda kv: -kv[1])[:count]
        return {f"compile:{name}": seconds for name, seconds in ranked}

    def __enter__(self) -> "_CompileClock":
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


def stage_summary(times: dict[str, float]) -> str:
    """The one line a run reports about where its time went."""
    return (f"time: pass 1 {times['pass1_s']:.1f} s (read, row rules, vocabularies, spill); pass 2 "
            f"{times['pass2_s']:.1f} s (compiling {times['compile_s']:.1f} s; beside the step, in threads: "
            f"windows decoded {times['decode_s']:.1f} s, tables written {times['write_s']:.1f} s by two threads); "
            f"plot {times['plot_s']:.1f} s")


def analyze_log(
    config: Config, out: str | Path, report: Reporter = _quiet, progress: bool = True, *, overwrite: bool = False,
    timings: dict[str, float] | None = None,
) -> tuple[int, int]:
    """Forgetting analysis of every event of ``config.data`` (see the module docstring).

    Writes ``out/forgetting.parquet`` (per user and window), ``out/states.parquet``
    (per state change, with evidence), ``out/rejects.parquet`` and ``out/plots/forgetting.png``;
    returns the rows of the two tables (of every process with ``analysis.distributed``).
    ``timings``, if given, receives the wall seconds per stage (``stage_summary``; one process's with
    several) and, as ``compile:<program>``, XLA's compile seconds of the three slowest programs to compile.
    """
    times = {} if timings is None else timings
    if not config.data.path:
        raise ConfigError("data.path is empty: set it with --set data.path=EVENTS (file, directory or glob)")
    out = Path(out).absolute()
    if config.analysis.distributed:
        processes.initialize()  # before any other JAX call; a no-op when the caller started it
        if jax.process_count() > 1:
            return _analyze_processes(config, out, report, progress, overwrite=overwrite)
    user_mesh(config.analysis.devices)  # too many devices asked for: said before pass 1 reads anything
    verdict = learned_verdict_note(config)  # a bad verdict_file too
    with run_folder(out, "analyze", to_dict(config), overwrite=overwrite) as stage:
        shown = shown_as_final(report, stage, out)
        window_seconds = config.analysis.window_seconds
        clock = time.perf_counter()
        with scan_log(config.data, window_seconds, rejects_path=stage / "rejects.parquet",
                      spill_parent=stage, max_windows=config.analysis.max_windows) as scanned:
            times["pass1_s"] = time.perf_counter() - clock
            shown(f"pass 1: {scanned.report.rows_read:,} rows read, {scanned.num_users:,} users, "
                  f"{len(scanned.items):,} items, {scanned.num_windows:,} windows")
            if verdict:  # named now that the log's span (which picks the fit) is known
                shown(learned_verdict_note(config, scanned.num_windows))
            require_categories(scanned)  # before the writers, which name the categories' columns
            window_start = scanned.origin + np.arange(scanned.num_windows) * window_seconds
            top = min(config.analysis.top_interests, len(scanned.categories or ()))
            writers = TableWriters(stage, scanned.users, scanned.categories, window_start, max(top, 1))
            clock = time.perf_counter()
            plots_import_in_background()  # ready for the plot at the end, imported while pass 2 runs
            with _CompileClock() as compiling:
                try:
                    result = analyze_scanned(config, scanned, writers, progress=progress)
                finally:  # the writer threads stop either way (a failed run's stage folder is discarded)
                    rows = writers.close()
            times.update(pass2_s=time.perf_counter() - clock, compile_s=compiling.seconds,
                         decode_s=scanned.decode_seconds, write_s=writers.seconds, **compiling.slowest())
            shown(scanned.report.summary())
        if result.events_without_interest:
            shown(f"analysis: {result.events_without_interest:,} events skipped, their items have no category")
        clock = time.perf_counter()
        (stage / "plots").mkdir(exist_ok=True)
        sampled = writers.plot_degree().shape[1]
        plot_forgetting(writers.plot_degree(), window_start, stage / "plots" / "forgetting.png",
                        sample_note="" if sampled == scanned.num_users else f"{sampled:,} sampled users")
        times["plot_s"] = time.perf_counter() - clock
        shown(f"forgetting: {scanned.num_windows} windows{_on_devices(result.devices)}; final states "
              f"{final_state_counts(result.state)}")
        shown(stage_summary(times))
    return rows["forgetting"], rows["states"]


def learned_verdict_note(config: Config, log_windows: int | None = None) -> str:
    """What ``analysis.detector.verdict_file`` lends the run, in one line ("" without one), for a log of
    ``log_windows`` windows where known (the fit for that span); a bad file raises its one-line ``ConfigError``
    here, before pass 1 reads the log, not after it."""
    d = config.analysis.detector
    path = verdict_file(config.analysis)
    if not path:
        return ""
    window_params(config.analysis, log_windows)  # every check the run makes of the file and the detector's kind
    fit = load_verdict(path, config.analysis.window_seconds / 86400.0, d.fade_share, d.verdict_recent_windows,
                       log_windows)
    shown = f"the built-in fit ({d.verdict_file})" if d.verdict_file in (BUILTIN, AUTO) else path
    span = f" of logs of {fit.log_windows} windows" if fit.log_windows else ""
    if fit.horizon_windows is not None:  # fgjax fit-verdict's, on a log's own silences
        gone = (f"{fit.horizon_windows} windows" if not fit.rate_surprise else
                f"until improbable at the interest's own rate (rate_surprise {fit.rate_surprise:g}), "
                f"2-{fit.horizon_windows} windows")
        return (f"learned verdict: {shown}, fitted on a log's own silences of {fit.window_days:g}-day windows{span} "
                f"(gone = silent {gone}, the user seen after), log-odds threshold "
                f"{fit.threshold:g} (first alarms gone {fit.precision:.0%} of the time there); silences of "
                f"{fit.horizon_windows} windows are forgotten")
    return (f"learned verdict: {shown}, its fit for {fit.window_days:g}-day windows{span} and fades below "
            f"{fit.fade_share:.0%}, log-odds threshold {fit.threshold:g}, fitted on {len(fit.stories)} stories and "
            f"draws ({', '.join(fit.stories) or 'not named'})")


def _plot_sample(writers: TableWriters) -> np.ndarray:
    """``(windows, sampled users)`` F of every process's sample (process order)."""
    degree = writers.plot_degree()
    parts = processes.allgather_ragged(np.ascontiguousarray(degree.T).ravel())
    return np.concatenate([p.reshape(-1, degree.shape[0]) for p in parts]).T


def _analyze_processes(config: Config, out: Path, report: Reporter, progress: bool, *,
                       overwrite: bool) -> tuple[int, int]:
    """``analyze_log`` as one of ``jax.process_count()`` processes (see the module docstring)."""
    count, me = jax.process_count(), jax.process_index()
    window_seconds = config.analysis.window_seconds
    with shared_run_folder(out, "analyze", to_dict(config), overwrite=overwrite) as stage:
        shown_final = shown_as_final(report, stage, out)

        def shown(message: str) -> None:
            shown_final(f"process {me} of {count}: {message}")

        with contextlib.ExitStack() as stack:
            error = scanned = None
            try:
                scanned = stack.enter_context(scan_log(
                    config.data, window_seconds, rejects_path=stage / "rejects.parquet" / part_name(me),
                    spill_parent=stage, shard=(me, count), max_windows=config.analysis.max_windows))
            except Exception as exc:  # noqa: BLE001 - every process learns of it, then it is raised here
                error = exc
            processes.agree(error, "pass 1 (reading its shards)")
            layout = agree_scanned(scanned)
            shown(f"pass 1: {scanned.report.rows_read:,} rows read, {scanned.num_users:,} users "
                  f"({sum(layout.process_users):,} in all), {len(scanned.items):,} items, "
                  f"{scanned.num_windows:,} windows")
            require_categories(scanned)  # before the writers, which name the categories' columns
            window_start = scanned.origin + np.arange(scanned.num_windows) * window_seconds
            top = min(config.analysis.top_interests, len(scanned.categories or ()))
            writers = TableWriters(stage, scanned.users, scanned.categories, window_start, max(top, 1),
                                   plot_users=-(-PLOT_USERS // count), part=me)
            try:
                result = analyze_scanned(config, scanned, writers, progress=progress and me == 0, layout=layout)
            finally:
                rows = writers.close()
            shown(scanned.report.summary())
        if result.events_without_interest and me == 0:
            shown(f"analysis: {result.events_without_interest:,} events skipped, their items have no category")
        sample = _plot_sample(writers)
        states = processes.allgather(np.bincount(np.asarray(result.state).ravel(),
                                                 minlength=len(kernels.STATE_NAMES)).astype(np.int64)).sum(axis=0)
        totals = processes.allgather(np.array([rows["forgetting"], rows["states"]], np.int64)).sum(axis=0)
        if me == 0:
            (stage / "plots").mkdir(exist_ok=True)
            users = sum(layout.process_users)
            plot_forgetting(sample, window_start, stage / "plots" / "forgetting.png",
                            sample_note="" if sample.shape[1] == users else f"{sample.shape[1]:,} sampled users")
            shown(f"forgetting: {scanned.num_windows} windows{_on_devices(result.devices)}; final states "
                  f"{ {n: int(c) for n, c in zip(kernels.STATE_NAMES, states) if n != 'none'} }")
    return int(totals[0]), int(totals[1])
