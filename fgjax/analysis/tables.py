"""The analysis' tables: ``forgetting.parquet`` (F and the top interests per (user, window)) and
``states.parquet`` (one row per state change, with its evidence), and the state series they imply."""

from __future__ import annotations

import collections
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fgjax import kernels
from fgjax.analysis.run import ForgettingResult
from fgjax.data.reader import EventLog
from fgjax.data.vocab import Vocabulary


def degree_since_first_activity(result: ForgettingResult) -> np.ndarray:
    """``(windows, users)`` F, NaN before each user's first active window."""
    return np.where(result.started, result.degree, np.nan)


def _timestamps(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array((np.asarray(seconds) * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"), mask=mask)


def _forgetting_rows(users: Vocabulary, categories: Vocabulary, win: np.ndarray, user: np.ndarray,
                     start: np.ndarray, degree: np.ndarray, top_interests: np.ndarray, top_probs: np.ndarray) -> pa.Table:
    """``forgetting.parquet`` rows from ``(rows,)`` window, user, window start and F and ``(rows, top)`` interests."""
    top = top_interests.shape[-1]
    return pa.table(
        {
            "user_id": users.decode(user),
            "window": pa.array(win, pa.int32()),
            "window_start": _timestamps(start),
            "F": pa.array(degree, pa.float32()),
            # Category indices with the category names as their dictionary: no string per row to build or
            # write (5x cheaper to write than plain strings); readers see strings.
            "top_interests": pa.FixedSizeListArray.from_arrays(
                pa.DictionaryArray.from_arrays(pa.array(np.asarray(top_interests, np.int32).ravel()),
                                               categories.values), top),
            "top_p": pa.FixedSizeListArray.from_arrays(pa.array(top_probs.ravel(), pa.float32()), top),
        }
    )


def forgetting_table(result: ForgettingResult, log: EventLog) -> pa.Table:
    """One row per (user, window) from the user's first active window on.

    Columns: user_id, window, window_start (timestamp), F, top_interests
    (list<category>, dictionary-encoded strings), top_p (list<float>).
    """
    win, user = np.nonzero(result.started)
    return _forgetting_rows(log.users, log.categories, win, user, result.window_start[win], result.degree[win, user],
                            result.top_interests[win, user], result.top_probs[win, user])


# Parquet dictionary pages only where values repeat: trying them on IDs and floats (the default) makes
# writing these tables about 3x slower, and the files no smaller.
DICTIONARY_COLUMNS = {
    "forgetting": ["window", "window_start", "top_interests.list.element"],
    "states": ["interest", "window", "window_start", "state", "previous_state", "F_alarm", "silence",
               "silence_limit", "period", "last_active"],
}


# Column statistics (min / max per row group) only where a reader filters: a row group is one window (or a part
# of one, TableWriters.ROW_GROUP_ROWS), so the evidence's floats span their whole range in each and their
# statistics would skip nothing (writing them costs about 15 % of encoding states.parquet).
STATISTICS_COLUMNS = {
    "forgetting": ["user_id", "window", "window_start"],
    "states": ["user_id", "interest", "window", "window_start", "state", "previous_state"],
}


def parquet_options(name: str) -> dict:
    """How table ``name`` (``forgetting`` or ``states``) is written: its dictionary and statistics columns.

    ``states.parquet`` stores no Arrow schema: its names (state, previous_state, interest) are built as
    dictionary arrays, cheap to build and written as Parquet dictionary pages as they are, and without
    the stored schema readers see them as plain values, as before (pyarrow sorts tables by them).
    Timestamps keep UTC through Parquet's own type (``isAdjustedToUTC``).
    """
    options = {"use_dictionary": DICTIONARY_COLUMNS[name], "write_statistics": STATISTICS_COLUMNS[name]}
    return options | ({"store_schema": False} if name == "states" else {})


def write_forgetting(result: ForgettingResult, log: EventLog, path) -> int:
    """Write ``forgetting.parquet``; returns the number of rows."""
    table = forgetting_table(result, log)
    pq.write_table(table, str(path), **parquet_options("forgetting"))
    return table.num_rows


STATE_COLUMNS = (
    "user_id", "interest", "window", "window_start", "state", "previous_state", "F", "F_threshold", "F_alarm", "f_k",
    "p", "silence", "silence_limit", "events_per_window", "recent_events", "expected_recent_events", "trend",
    "dispersion", "period", "period_strength", "last_active", "verdict",
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
    with period_strength, last_active (start of the last active window),
    and verdict: the learned verdict's log-odds that a silent interest is
    forgotten (``analysis.detector.verdict_file``: by default the shipped fit in weekly
    windows; null without a verdict, and on
    rows of an active interest, which it does not judge).
    Rows are ordered by window, then user, then interest. Under
    ``analysis.detector.kind: level`` no detector runs: F_threshold, F_alarm
    and the evidence columns are null.
    """
    return _state_rows(log.users, log.categories, result.changes, result.window_start)


def _state_rows(users: Vocabulary, categories: Vocabulary, changes: dict[str, np.ndarray],
                window_start: np.ndarray, *, encoded: bool = False) -> pa.Table:
    """``states.parquet`` rows from change rows (``ForgettingResult.changes``); ``window_start`` ``(windows,)``.

    ``encoded``: interest, state and previous_state as dictionary arrays (for writing, ``parquet_options``:
    the file reads back the same), else plain arrays."""
    c = changes
    if not c:
        c = {name: np.zeros(0, np.int32) for name in ("user", "interest", "window", "state", "previous_state", "last_active")}
        c.update({name: np.zeros(0, np.float32) for name in (
            "F", "F_threshold", "f_k", "p", "silence", "silence_limit", "rate", "recent", "expected_recent", "trend",
            "dispersion", "period", "period_strength")})
        c["F_alarm"] = np.zeros(0, bool)
    # Plain strings in memory (pyarrow cannot sort a table by dictionary columns, which users of this table
    # do); dictionary arrays for writing, which read back as plain strings (``parquet_options``).
    names = pa.array(kernels.STATE_NAMES, pa.string())

    def coded(codes, values: pa.Array) -> pa.Array:
        indices = pa.array(np.asarray(codes, np.int32))
        return pa.DictionaryArray.from_arrays(indices, values) if encoded else values.take(indices)

    rows = len(c["user"])

    def column(name: str, dtype, arrow_type: pa.DataType) -> pa.Array:
        # A column the run did not produce (the detector's, under the level rule) is null: no evidence, not a
        # zero that reads as "silent 0 windows" (and nulls cost next to nothing to write).
        if name not in c:
            return pa.nulls(rows, arrow_type)
        return pa.array(np.asarray(c[name], dtype), arrow_type)

    f32 = lambda name: column(name, np.float32, pa.float32())  # noqa: E731
    i32 = lambda name: column(name, np.int32, pa.int32())  # noqa: E731
    return pa.table({
        "user_id": users.decode(c["user"]),
        "interest": coded(c["interest"], categories.values),
        "window": pa.array(c["window"], pa.int32()),
        "window_start": _timestamps(window_start[c["window"]]),
        "state": coded(c["state"], names),
        "previous_state": coded(c["previous_state"], names),
        "F": f32("F"),
        "F_threshold": f32("F_threshold"),
        "F_alarm": column("F_alarm", bool, pa.bool_()),
        "f_k": f32("f_k"),
        "p": f32("p"),
        "silence": i32("silence"),
        "silence_limit": i32("silence_limit"),
        "events_per_window": f32("rate"),
        "recent_events": f32("recent"),
        "expected_recent_events": f32("expected_recent"),
        "trend": f32("trend"),
        "dispersion": f32("dispersion"),
        "period": f32("period"),
        "period_strength": f32("period_strength"),
        "last_active": pa.nulls(rows, pa.timestamp("us", tz="UTC")) if "last_active" not in c
        else _timestamps(window_start[np.maximum(c["last_active"], 0)], mask=np.asarray(c["last_active"]) < 0),
        # NaN where the verdict judged nothing (an active interest): null, as where there is no verdict at all.
        "verdict": pa.nulls(rows, pa.float32()) if "verdict" not in c
        else pa.array(np.asarray(c["verdict"], np.float32), pa.float32(), mask=np.isnan(np.asarray(c["verdict"]))),
    })


def write_states(result: ForgettingResult, log: EventLog, path) -> int:
    """Write ``states.parquet`` (``states_table``); returns the number of rows."""
    table = _state_rows(log.users, log.categories, result.changes, result.window_start, encoded=True)
    pq.write_table(table, str(path), **parquet_options("states"))
    return table.num_rows


class TableWriters:
    """``forgetting.parquet`` and ``states.parquet`` written window by window: a sink for
    ``fgjax.analysis.analyze_scanned``, so the tables never sit in memory whole.

    The rows, their order and their values are those of ``forgetting_table`` and ``states_table``
    (one Parquet row group per window). For the plot it keeps F of a fixed random sample of at most
    ``plot_users`` users (``plot_degree``).

    ``part``: this writer is one process's of several (``fgjax.analysis.distributed``): each table is a
    folder of parts, ``forgetting.parquet/part-0000{part}.parquet``, which Parquet readers read as one
    table (``pyarrow.parquet.read_table``, ``pyarrow.dataset``, pandas, DuckDB, Spark).
    """

    IN_FLIGHT = 2  # windows queued per writer thread
    ROWS_IN_FLIGHT = 1 << 19  # changed rows queued (about 80 bytes each on the host), one window's at least
    ROW_GROUP_ROWS = 1 << 17  # a window's changed rows are written in row groups of about this many, or one

    def __init__(self, folder: str | Path, users: Vocabulary, categories: Vocabulary, window_start: np.ndarray,
                 top: int, *, plot_users: int = 50_000, seed: int = 0, part: int | None = None):
        self.folder = Path(folder)
        self.part = part
        self.users, self.categories, self.window_start = users, categories, np.asarray(window_start, np.float64)
        self.started = np.zeros(len(users), bool)
        self.top = top
        self.rows = {"forgetting": 0, "states": 0}
        self._writers: dict[str, pq.ParquetWriter] = {}
        rng = np.random.default_rng(seed)
        self.sample = np.sort(rng.choice(len(users), min(plot_users, len(users)), replace=False))
        self._degree = np.full((len(self.window_start), len(self.sample)), np.nan, np.float32)
        self._busy = {"forgetting": 0.0, "states": 0.0}  # each writer thread's busy seconds (its own entry)
        # One thread per table: each file's row groups stay in window order, and the two encode side by side.
        self._executors = {name: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fgjax-{name}")
                           for name in ("forgetting", "states")}
        self._pending: collections.deque[tuple[Future, int]] = collections.deque()  # with changed rows

    def _write(self, name: str, table: pa.Table) -> None:
        if name not in self._writers:
            self._writers[name] = pq.ParquetWriter(str(self.path(name)), table.schema, **parquet_options(name))
        self._writers[name].write_table(table)
        self.rows[name] += table.num_rows

    def path(self, name: str) -> Path:
        """Where table ``name`` (``forgetting`` or ``states``) is written."""
        if self.part is None:
            return self.folder / f"{name}.parquet"
        path = self.folder / f"{name}.parquet" / part_name(self.part)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def __call__(self, t: int, start: float, output, changed: list[dict[str, np.ndarray]] | None) -> None:
        """Write window ``t``: ``output`` its ``(users,)`` F and ``(users, top)`` top interests, ``changed``
        its changed rows as pieces of columns in row order (``run_windows``), or None.

        The rows are built and written by two background threads, one per table (Parquet encoding
        releases the GIL), at most ``IN_FLIGHT`` windows behind, so writing overlaps the next windows' work.
        """
        forgetting = self._executors["forgetting"].submit(self._timed, "forgetting", self._forgetting_of, t, output)
        self._pending.append((forgetting, 0))
        if changed:
            rows = sum(len(piece["user"]) for piece in changed)
            self._pending.append((self._executors["states"].submit(self._timed, "states", self._states_of, changed),
                                  rows))
        # Bounded memory (a writer error surfaces here): a window where many interests change at once (the
        # first windows of a busy log) waits for the rows before it, so the rows in flight do not grow with it.
        while len(self._pending) > 2 * self.IN_FLIGHT or (
                len(self._pending) > 1 and sum(rows for _, rows in self._pending) > self.ROWS_IN_FLIGHT):
            self._pending.popleft()[0].result()

    def _timed(self, name: str, work, *args) -> None:
        started = time.perf_counter()
        work(*args)
        self._busy[name] += time.perf_counter() - started

    @property
    def seconds(self) -> float:
        """The writer threads' busy seconds, summed."""
        return sum(self._busy.values())

    def _forgetting_of(self, t: int, output) -> None:
        self.started |= output.top_probs[:, 0] > 0
        user = np.flatnonzero(self.started)
        win = np.full(len(user), t, np.int64)
        self._write("forgetting", _forgetting_rows(self.users, self.categories, win, user, self.window_start[win],
                                                   output.degree[user], output.top_interests[user],
                                                   output.top_probs[user]))
        self._degree[t] = np.where(self.started[self.sample], output.degree[self.sample], np.nan)

    def _states_of(self, changed: list[dict[str, np.ndarray]]) -> None:
        # The pieces as row groups of about ROW_GROUP_ROWS rows (usually one a window), each built and written
        # before the next is built: a window where many interests change at once is not held twice in Arrow.
        group: list[dict[str, np.ndarray]] = []
        rows = 0
        for i, piece in enumerate(changed):
            group.append(piece)
            rows += len(piece["user"])
            if i == len(changed) - 1 or rows >= self.ROW_GROUP_ROWS:
                self._write("states", pa.concat_tables([_state_rows(self.users, self.categories, p, self.window_start,
                                                                    encoded=True) for p in group]))
                group, rows = [], 0

    def close(self) -> dict[str, int]:
        """Finish both files (empty ones with their columns if no row came); returns the rows of each."""
        try:
            while self._pending:
                self._pending.popleft()[0].result()
        finally:
            for executor in self._executors.values():
                executor.shutdown(wait=True, cancel_futures=True)
        empty = {"forgetting": lambda: _forgetting_rows(self.users, self.categories, *(np.zeros(0, np.int64),) * 2,
                                                        np.zeros(0), np.zeros(0, np.float32),
                                                        np.zeros((0, self.top), np.int32),
                                                        np.zeros((0, self.top), np.float32)),
                 "states": lambda: _state_rows(self.users, self.categories, {}, self.window_start, encoded=True)}
        for name, table in empty.items():
            if name not in self._writers:
                self._write(name, table())
            self._writers.pop(name).close()
        return dict(self.rows)

    def plot_degree(self) -> np.ndarray:
        """``(windows, sampled users)`` F, NaN before each user's first active window."""
        return self._degree


def part_name(part: int) -> str:
    """The file name of one process's part of a table written by several: ``part-00001.parquet``."""
    return f"part-{part:05d}.parquet"


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
