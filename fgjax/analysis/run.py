"""Window sources and the one run loop: ``analyze`` (an in-memory log) and ``analyze_stream`` (Parquet files).

A source yields ``Window(index, start, events)``, each window's events
padded to at least ``MIN_BUCKET`` rows (few shapes to compile, little
padding): a source that knows its window sizes up front pads every window to
the largest one's ``run_size`` (one shape per run), a stream to power-of-two
buckets that only grow:
``log_windows`` slices a time-sorted in-memory log, ``parquet_windows``
cuts time-ordered Parquet record batches. ``run_windows`` drives
``window_step`` over any source: a prefetch thread (``fgjax.data.prefetch``)
pads the next windows and copies them to the device while the current one
computes, each window's outputs are copied back while the next one
computes, and on request it keeps each user's values at its own snapshot
window and gathers the rows whose state changed (``states.parquet``).

Streaming needs columns of dense integer indices (``user``, ``item``: ``0 <=
id < num_users / num_items``), float epoch seconds ``timestamp`` and
``weight``; timestamps must not decrease across files and rows (a streamed
window is closed once a later one starts). Its memory is bounded by the
state (``users x K``), the record batch size and the windows in flight, never
by the number of events. ``analyze`` on the same events gives the same
results (tested).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from fgjax import kernels
from fgjax.analysis.window import (
    EVIDENCE_FIELDS,
    AnalysisCarry,
    Counters,
    Evidence,
    WindowDetail,
    WindowOutput,
    WindowParams,
    WindowSpec,
    add_event_sums,
    counters,
    cpu_tuned_jit,
    init_carry,
    observed_evidence,
    window_index,
    window_params,
    window_spec,
    window_step,
    window_step_sums,
    with_limits,
)
from fgjax.analysis.distributed import Layout, ShardedStep, user_mesh
from fgjax.config import AnalysisConfig, Config
from fgjax.data.prefetch import prefetch
from fgjax.data.reader import EventLog
from fgjax.data.stream import ScannedLog, check_window_count
from fgjax.errors import DataError
from fgjax.processes import allgather
from fgjax.shapes import bucket_size, quarter_octave_size, user_rows

COLUMNS = ("user", "item", "timestamp", "weight")
# Fewest rows a window's events (and its changed rows) are padded to: small windows
# then share one shape, so a run compiles the step (and the gather) once or twice,
# not once per power of two; padding a few hundred rows costs microseconds.
MIN_BUCKET = 1024


def padded_size(n: int) -> int:
    """Rows ``n`` events or changed rows are padded to: a power of two, at least ``MIN_BUCKET``."""
    return max(bucket_size(n), MIN_BUCKET)


def run_size(n: int) -> int:
    """Rows every window of a run is padded to when its largest window has ``n`` events (known up front):
    the smallest of 2^j x (1, 1.25, 1.5, 1.75) >= ``n``, at least ``MIN_BUCKET``. One shape for the
    whole run, as a power of two would be, with at most 25 % padding instead of up to 100 % (the padded
    windows in flight grow with it), and still few distinct shapes for the persistent compilation cache
    to share between runs."""
    return quarter_octave_size(n, MIN_BUCKET)


class Window(NamedTuple):
    """One closed window of a source, or one chunk of it (``closes`` False for every chunk but its last)."""

    index: int
    start: float  # epoch seconds
    events: kernels.WindowEvents  # padded to a bucket with rows of user ``num_users``
    closes: bool = True  # the window's last (or only) chunk: the step closes the window after it


def gather_size(num_pairs: int) -> int:
    """Rows of one gather of changed (user, interest) rows for ``num_pairs`` = users x K: a power of
    two near 1/64 of the pairs (about the changes of a usual window), at least ``MIN_BUCKET`` (at most
    the pairs' bucket). One size per run, so the gather (which carries the silence limits, a costly
    compilation) compiles once; a window with more changes gathers them in several calls, each from
    where the last stopped."""
    return min(max(bucket_size(max(num_pairs // 64, 1)), MIN_BUCKET), bucket_size(num_pairs))


def _window(t: int, origin: float, window_seconds: float, num_users: int, user: np.ndarray, interest: np.ndarray,
            weight: np.ndarray, timestamp: np.ndarray, size: int | None = None, closes: bool = True) -> Window:
    """Window ``t``'s events (interest ``K`` = no category), ``age`` in windows from the window's end, padded
    to ``size`` rows (default: their own bucket), written straight into the padded arrays (no copy between)."""
    n = len(user)
    size = size or padded_size(n)
    end = origin + (t + 1) * window_seconds
    padded = kernels.WindowEvents(np.full(size, num_users, np.int32), np.zeros(size, np.int32),
                                  np.zeros(size, np.float32), np.zeros(size, np.float32))
    padded.user[:n], padded.interest[:n], padded.weight[:n] = user, interest, weight
    np.divide(end - timestamp, window_seconds, out=padded.age[:n], casting="same_kind")
    return Window(t, origin + t * window_seconds, padded, closes)


def _interests(item: np.ndarray, item_category: np.ndarray, num_interests: int) -> np.ndarray:
    """``(events,)`` int32 interest of each item; ``K`` for items without a category (the step drops them)."""
    interest = item_category[item]
    return np.where(interest >= 0, interest, num_interests).astype(np.int32)


def log_windows(user: np.ndarray, interest: np.ndarray, weight: np.ndarray, timestamp: np.ndarray, *, origin: float,
                window_seconds: float, num_windows: int, num_users: int) -> Iterator[Window]:
    """Windows ``0 .. num_windows - 1`` from ``origin`` of in-memory events sorted by ``timestamp``.

    Every window is padded to the largest one's size (``run_size``): the sizes are known up front, so the
    window step compiles once per run (a stream, which cannot know them, pads each window to its own bucket).
    """
    bounds = np.searchsorted(window_index(timestamp, window_seconds, origin), np.arange(num_windows + 1))
    size = run_size(int(np.diff(bounds).max(initial=0)))
    for t in range(num_windows):
        sl = slice(bounds[t], bounds[t + 1])
        yield _window(t, origin, window_seconds, num_users, user[sl], interest[sl], weight[sl], timestamp[sl], size)


def chunk_rows(window_rows: np.ndarray, chunk: int = 0) -> int:
    """Rows of every window (or chunk) of a run whose windows have ``window_rows`` events: the largest
    window's ``run_size``, or with ``chunk`` > 0 (``analysis.window_chunk``) at most ``run_size(chunk)``."""
    largest = int(np.max(window_rows, initial=0))
    return run_size(min(largest, chunk) if chunk > 0 else largest)


def run_chunk(window_chunk: int, window_rows: np.ndarray, num_pairs: int) -> int:
    """Events per chunk of a run (0 = whole windows): ``window_chunk`` (``analysis.window_chunk``), at least
    1/8 of the (user, interest) pairs, when the largest window has more events than that.

    Chunks need one pair of ``(users, K)`` float32 sums for the run, 8 bytes a pair: about what pairs / 8
    events take in flight (decoded, padded, on the device: 64 bytes or more an event), so smaller chunks
    would not save memory (at 1M users x 16 they would cost about 0.1 GB more than whole windows).
    """
    if window_chunk <= 0:
        return 0
    chunk = max(window_chunk, num_pairs // 8)
    return chunk if int(np.max(window_rows, initial=0)) > chunk else 0


def scanned_windows(scanned: ScannedLog, num_interests: int, num_users: int | None = None,
                    chunk: int = 0) -> Iterator[Window]:
    """Every window of a scanned log (pass 2 of ``fgjax.data.stream``), each padded to the largest
    window's size (``run_size``, known from pass 1): the window step compiles once per run. Padding rows have user
    ``num_users`` (default the log's users; more when the step's rows are padded).

    ``chunk`` > 0: a window of more events comes as chunks of at most ``chunk`` events, each padded to
    ``chunk_rows`` rows (``Window.closes`` False but on the last), so the events padded and in flight are
    bounded by the chunk whatever the window (``run_windows(..., chunked=True)`` sums them on the device)."""
    size = chunk_rows(scanned.window_rows, chunk)
    pad_user = scanned.num_users if num_users is None else num_users
    for rows in scanned.windows(chunk):  # with a chunk, pieces of at most `chunk` rows, decoded one at a time
        interest = _interests(rows.item, scanned.item_category, num_interests)
        yield _window(rows.index, scanned.origin, scanned.window_seconds, pad_user, rows.user, interest,
                      rows.weight, rows.seconds, size, closes=rows.closes)


def _record_batches(files: Sequence[str | Path], batch_rows: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    for path in files:
        with pq.ParquetFile(str(path)) as f:
            missing = [c for c in COLUMNS if c not in f.schema_arrow.names]
            if missing:
                raise DataError(f"'{path}': missing column(s) {', '.join(missing)} (streaming needs {', '.join(COLUMNS)})")
            for batch in f.iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
                yield str(path), {c: batch.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}


def parquet_windows(
    files: Sequence[str | Path],
    *,
    item_category: np.ndarray,
    num_users: int,
    window_seconds: float,
    batch_rows: int = 1 << 20,
) -> Iterator[Window]:
    """Every window from the first event's to the last's of time-ordered Parquet files.

    Windows without events are yielded too (empty, padded), so the
    state decays through them as ``analyze`` does. A window is padded to
    the largest bucket seen so far (sizes only grow), so the step compiles
    once per bucket the stream reaches, not again when windows shrink.
    """
    num_interests = int(item_category.max(initial=-1)) + 1
    origin = None
    current = -1
    parts: list[dict[str, np.ndarray]] = []
    last_ts = -np.inf
    size = 0

    def close(t: int) -> Window:
        nonlocal size
        cols = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0) for c in COLUMNS}
        parts.clear()
        interest = _interests(cols["item"].astype(np.int64), item_category, num_interests)
        size = max(size, padded_size(len(cols["user"])))
        return _window(t, origin, window_seconds, num_users, cols["user"], interest, cols["weight"], cols["timestamp"],
                       size)

    for path, cols in _record_batches(files, batch_rows):
        ts = cols["timestamp"].astype(np.float64)
        if len(ts) == 0:
            continue
        if ts[0] < last_ts or np.any(np.diff(ts) < 0):
            raise DataError(f"'{path}': timestamps decrease; streaming needs events in time order across files")
        last_ts = ts[-1]
        if origin is None:
            origin = float(np.floor(ts[0] / window_seconds) * window_seconds)
            current = 0
        win = window_index(ts, window_seconds, origin)
        cols = {**cols, "timestamp": ts}
        # Split the batch at window boundaries; close each window a later event starts.
        bounds = np.flatnonzero(np.diff(win)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ts)]):
            w = int(win[lo])
            while current < w:
                yield close(current)
                current += 1
            parts.append({c: v[lo:hi] for c, v in cols.items()})
    if origin is not None:
        yield close(current)


class Snapshot(NamedTuple):
    """``(users, K)`` values of each user at its snapshot window."""

    f: jax.Array
    p: jax.Array
    state: jax.Array
    ever: jax.Array
    evidence: Evidence  # silence_limit filled at the end, from the counters
    counters: Counters | None  # None without a detector


class ChangeRows(NamedTuple):
    """``(rows,)`` the (user, interest) pairs whose state changed in a window, with their evidence."""

    user: jax.Array
    interest: jax.Array
    state: jax.Array
    previous_state: jax.Array
    F: jax.Array
    F_threshold: jax.Array | None  # None (and the evidence too) under the level rule: no detector ran
    F_alarm: jax.Array | None
    f_k: jax.Array
    p: jax.Array
    evidence: Evidence | None

    def columns(self) -> dict[str, np.ndarray]:
        """Host columns: the fields, with the evidence's spread out; the detector's absent under the level rule
        (``states.parquet`` holds them as nulls)."""
        fields = {name: getattr(self, name) for name in self._fields if name != "evidence"}
        evidence = {} if self.evidence is None else self.evidence._asdict()
        return {name: np.asarray(a) for name, a in {**fields, **evidence}.items() if a is not None}


def _snapshot_of(detail: WindowDetail, carry: AnalysisCarry) -> Snapshot:
    return Snapshot(detail.f, detail.p, detail.state, carry.ever, observed_evidence(detail),
                    None if detail.detection is None else counters(carry.detector, detail.detection))


@functools.partial(cpu_tuned_jit, donate_argnums=(0,))
def _keep_snapshot(snapshot: Snapshot, detail: WindowDetail, carry: AnalysisCarry, take: jax.Array) -> Snapshot:
    """Replace the rows of ``take`` ``(users,)`` by this window's values."""
    return jax.tree.map(lambda old, new: jnp.where(take[:, None], new, old), snapshot, _snapshot_of(detail, carry))


@functools.partial(cpu_tuned_jit, static_argnames=("spec",))
def _final(snapshot: Snapshot, params: WindowParams, spec: WindowSpec) -> Snapshot:
    """The snapshot with s* computed, its counters dropped."""
    return snapshot._replace(evidence=with_limits(snapshot.evidence, snapshot.counters, params, spec), counters=None)


@functools.partial(cpu_tuned_jit, static_argnames=("spec",))
def _gather_changes(
    degree: jax.Array, detail: WindowDetail, detector: kernels.DetectorState, params: WindowParams, spec: WindowSpec,
    flat: jax.Array,
) -> ChangeRows:
    """The rows of the (user, interest) pairs at ``flat`` (``(rows,)`` int32 user-major flat indices, chosen
    on the host: the pairs whose state changed in a window); padding indices repeat a real row and are
    trimmed by the caller. Its cost is the rows', not the pairs' (users x K)."""
    num_interests = detail.state.shape[1]
    user, interest = flat // num_interests, flat % num_interests
    take = lambda a: a.ravel()[flat]  # noqa: E731 - a local gather
    detection = detail.detection
    rows = ChangeRows(user=user.astype(jnp.int32), interest=interest.astype(jnp.int32), state=take(detail.state),
                      previous_state=take(detail.previous_state), F=degree[user], F_threshold=None, F_alarm=None,
                      f_k=take(detail.f), p=take(detail.p), evidence=None)
    if detection is None:  # the level rule: no evidence to gather, copy or write
        return rows
    evidence = jax.tree.map(take, observed_evidence(detail))
    counts = counters(detector, detection)
    per_pair = lambda a: jnp.broadcast_to(a, counts.kappa.shape)  # noqa: E731 - (users, 1) -> (users, K)
    counts = jax.tree.map(take, counts._replace(stay_share=per_pair(counts.stay_share),
                                                population_steps=per_pair(counts.population_steps)))
    return rows._replace(F_threshold=detection.degree_threshold[user], F_alarm=detection.degree_alarm[user],
                         evidence=with_limits(evidence, counts, params, spec))


def _changed_pairs(detail: WindowDetail) -> np.ndarray:
    """``(changed,)`` int32 user-major flat indices of the pairs whose state changed, ascending.

    Chosen on the host from the two ``(users, K)`` int8 code arrays (a few MB): a device ``nonzero``
    scans every pair once per fixed-size gather, several times a window when many rows change."""
    state, previous = np.asarray(detail.state), np.asarray(detail.previous_state)
    return np.flatnonzero((state != previous).ravel()).astype(np.int32)


class _Series:
    """``(windows, ...)`` host arrays filled window by window (preallocated when the count is known)."""

    def __init__(self, num_windows: int | None):
        self.num_windows = num_windows
        self.parts: dict[str, list[np.ndarray] | np.ndarray] = {}

    def put(self, t: int, name: str, value) -> None:
        value = np.asarray(value)
        if self.num_windows is None:
            self.parts.setdefault(name, []).append(value)
            return
        if name not in self.parts:
            self.parts[name] = np.empty((self.num_windows, *value.shape), value.dtype)
        self.parts[name][t] = value

    def get(self, name: str, empty: np.ndarray) -> np.ndarray:
        """The series of ``name``; ``empty`` (shaped ``(0, ...)``) when no window came."""
        got = self.parts.get(name)
        if got is None:
            return empty
        return np.stack(got) if isinstance(got, list) else got


@dataclasses.dataclass(frozen=True)
class RunOutput:
    """What ``run_windows`` collected.

    Attributes:
      window_start: ``(windows,)`` epoch seconds.
      degree: ``(windows, users)`` F.
      top_interests, top_probs: ``(windows, users, top)``; None unless ``keep_top``.
      carry: the state after the last window (on the device).
      final: the snapshot (each user's snapshot window, or the last window) with s*, on the host; None unless asked.
      changes: ``{column: (rows,)}`` changed rows with a ``window`` column; empty unless ``record_changes``.
      events: rows with a positive weight.
    """

    window_start: np.ndarray
    degree: np.ndarray
    top_interests: np.ndarray | None
    top_probs: np.ndarray | None
    carry: AnalysisCarry
    final: Snapshot | None
    changes: dict[str, np.ndarray]
    events: int


def run_windows(
    source: Iterable[Window],
    spec: WindowSpec,
    params: WindowParams,
    carry: AnalysisCarry,
    *,
    num_windows: int | None = None,
    keep_top: bool = True,
    snapshot_window: np.ndarray | None = None,
    final: bool = False,
    record_changes: bool = False,
    prefetch_windows: int = 2,
    progress: bool = False,
    desc: str = "analyze",
    sink: Callable[[int, float, WindowOutput, list[dict[str, np.ndarray]] | None], None] | None = None,
    step: Callable[..., tuple[AnalysisCarry, WindowOutput, WindowDetail, kernels.DetectorState]] | None = None,
    chunked: bool = False,
) -> RunOutput:
    """Drive ``window_step`` over every window of ``source``.

    Args:
      source: windows in order, from window 0 (``log_windows``, ``parquet_windows``).
      carry: the state before the first window (donated).
      num_windows: how many windows ``source`` yields, if known (preallocates, sizes the progress bar).
      keep_top: also collect the top interests per (window, user), not only F.
      snapshot_window: optional ``(users,)`` window index at which ``final`` reads each user.
      final: compute ``RunOutput.final`` (at ``snapshot_window``, else after the last window).
      record_changes: gather the rows whose state changed, with their evidence.
      prefetch_windows: windows (or chunks) padded and copied to the device ahead in a thread; 0 = one after
        the other.
      sink: optional ``sink(t, window_start, output, changed_rows)`` called with each window's host
        outputs (``changed_rows`` the window's changed rows as a list of pieces in row order, each a dict
        of columns, or None), in window order, while
        the next window computes; with a sink nothing is collected (``degree`` and ``changes`` come back
        empty), so memory does not grow with the windows.
      step: another window step, ``step(carry, events, params, spec) -> (carry, output, detail, detector)``
        with the output, detail and detector of ``step.rows`` users, e.g. one process's rows of a step
        sharded over processes (``fgjax.analysis.distributed.ShardedStep``); not with ``snapshot_window``
        or ``final``.
      chunked: ``source`` may cut a window into chunks (``Window.closes``; ``scanned_windows`` with a
        ``chunk``): every chunk is summed on the device (``add_event_sums``) and the window closed from
        the sums by ``window_step_sums`` after its last one, so every window runs the same two programs.
        The sums are added in a different order than one window's, so F may differ from an unchunked
        run's in the last float32 bits. Not with a ``step`` of its own.
    """
    if step is not None and (snapshot_window is not None or final):
        raise ValueError("run_windows: a step of its own runs without snapshot_window and final")
    if step is not None and chunked:
        raise ValueError("run_windows: a step of its own runs whole windows, not chunks")
    num_users = carry.peak.shape[0] if step is None else step.rows

    def to_device(window: Window) -> tuple[Window, int]:
        return window._replace(events=jax.device_put(window.events)), int(np.sum(window.events.weight > 0))

    stream = prefetch(source, prefetch_windows, to_device) if prefetch_windows else map(to_device, source)
    series = _Series(num_windows)
    starts: list[float] = []
    changes: list[dict[str, np.ndarray]] = []
    snapshot = detail = pending = None
    gathered = gather_size(num_users * spec.num_interests)
    events = 0
    sums = None
    if chunked:  # one pair of (users, K) sums for the run, donated through every chunk and window
        shape = carry.peak.shape  # zeros from the host: an eager jnp.zeros would compile a program of its own
        sums = tuple(jax.device_put(np.zeros(shape, np.float32)) for _ in range(2))
    bar = tqdm(total=num_windows, desc=desc, unit="window", disable=not progress, leave=False)

    def collect(t: int, start: float, kept, rows: list[ChangeRows], changed: int) -> None:
        # The window's changed rows as the pieces they were gathered in, not joined: a window where many
        # interests change at once (the first windows of a busy log) would otherwise hold them twice.
        pieces = []
        for lo, r in zip(range(0, changed, gathered), rows):
            piece = {name: a[:changed - lo] for name, a in r.columns().items()}
            piece["window"] = np.full(len(piece["user"]), t, np.int32)
            pieces.append(piece)
        if sink is not None:
            sink(t, start, jax.tree.map(np.asarray, kept), pieces or None)
            return
        for name, value in kept._asdict().items():
            if value is not None:
                series.put(t, name, value)
        changes.extend(pieces)

    for window, count in stream:
        t = window.index
        events += count
        if chunked:
            sums = add_event_sums(sums, window.events, params)
            if not window.closes:
                continue
        elif not window.closes:
            raise ValueError(f"run_windows: window {t} came in chunks; pass chunked=True")
        bar.update()
        if chunked:
            carry, out, detail, sums = window_step_sums(carry, sums, params, spec)
            detector = carry.detector
        elif step is None:
            carry, out, detail = window_step(carry, window.events, params, spec)
            detector = carry.detector
        else:
            carry, out, detail, detector = step(carry, window.events, params, spec)
        if snapshot_window is not None:
            if snapshot is None:  # distinct buffers: the snapshot is donated
                snapshot = jax.tree.map(jnp.zeros_like, _snapshot_of(detail, carry))
            snapshot = _keep_snapshot(snapshot, detail, carry, jnp.asarray(snapshot_window == t))
        rows, changed = [], 0
        if record_changes:
            # Only the changed rows leave the device, in gathers of one fixed size (one compilation);
            # which rows is read from the state codes (a sync per window).
            flat = _changed_pairs(detail)
            changed = len(flat)
            if changed:
                flat = np.pad(flat, (0, -changed % gathered), mode="edge")
                rows = [_gather_changes(out.degree, detail, detector, params, spec, flat[lo:lo + gathered])
                        for lo in range(0, len(flat), gathered)]
        kept = out if keep_top else out._replace(top_interests=None, top_probs=None)
        # Fetch window t-1 while window t computes: outputs never pile up on the device.
        for leaf in jax.tree.leaves((kept, rows)):
            leaf.copy_to_host_async()
        if pending is not None:
            collect(*pending)
        pending = (t, window.start, kept, rows, changed)
        starts.append(window.start)
    bar.close()
    if pending is not None:
        collect(*pending)
    last = None
    if final and detail is not None:
        last = jax.device_get(_final(snapshot if snapshot is not None else _snapshot_of(detail, carry), params, spec))
    top = np.zeros((0, num_users, spec.top))
    return RunOutput(
        window_start=np.asarray(starts, np.float64),
        degree=series.get("degree", np.zeros((0, num_users), np.float32)),
        top_interests=series.get("top_interests", top.astype(np.int32)) if keep_top else None,
        top_probs=series.get("top_probs", top.astype(np.float32)) if keep_top else None,
        carry=carry,
        final=last,
        changes={name: np.concatenate([c[name] for c in changes]) for name in changes[0]} if changes else {},
        events=events,
    )


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
        at the same time as ``state``; empty under the level rule.
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
    interest = _interests(log.item[keep], log.item_category, num_interests)
    without_interest = int(np.sum(interest == num_interests))
    if without_interest == len(interest):
        raise DataError(
            f"none of the {len(interest):,} events has an item with a category: "
            "do the items table's item_id values match the events' item_id values?"
        )
    ts = log.timestamp[keep]
    order = np.argsort(ts, kind="stable")
    ws = acfg.window_seconds
    origin = float(np.floor(log.timestamp.min() / ws) * ws)
    num_windows = check_window_count(0, window_index(log.timestamp.max(), ws, origin), ws, acfg.max_windows)
    snap_window = None
    if snapshot_before is not None:
        # Times past the log (inf included) read the last window; times before it, the first.
        finite = np.nan_to_num(snapshot_before, posinf=log.timestamp.max(), neginf=log.timestamp.min())
        snap_window = np.clip(window_index(finite, ws, origin), 0, num_windows - 1)
    users, rows = log.num_users, user_rows(log.num_users)  # the state's rows: padding rows have no events
    if snap_window is not None:
        snap_window = np.pad(snap_window, (0, rows - users))
    source = log_windows(log.user[keep][order], interest[order], log.weight[keep][order], ts[order], origin=origin,
                         window_seconds=ws, num_windows=num_windows, num_users=rows)
    spec = window_spec(acfg, num_interests)
    run = run_windows(source, spec, window_params(acfg, num_windows), init_carry(spec, rows),
                      num_windows=num_windows,
                      snapshot_window=snap_window, final=True, record_changes=record_changes, progress=progress)
    last = jax.device_get(run.carry)
    final = run.final
    return ForgettingResult(
        window_start=run.window_start,
        degree=run.degree[:, :users],
        top_interests=run.top_interests[:, :users],
        top_probs=run.top_probs[:, :users],
        current=np.asarray(last.interest.current)[:users],
        previous=np.asarray(last.interest.previous)[:users],
        f=np.asarray(final.f)[:users],
        p=np.asarray(final.p)[:users],
        state=np.asarray(final.state)[:users],
        ever=np.asarray(final.ever)[:users],
        # Under the level rule no detector ran: no evidence (not zeros that read as "never active").
        evidence={name: np.asarray(getattr(final.evidence, name))[:users] for name in EVIDENCE_FIELDS
                  if getattr(final.evidence, name) is not None}
        if spec.detector == "adaptive" else {},
        changes=run.changes,
        events_without_interest=without_interest,
    )


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """``degree``: ``(windows, users)`` F; ``carry``: the state after the last window (host arrays)."""

    window_start: np.ndarray
    degree: np.ndarray
    carry: AnalysisCarry
    events: int


def analyze_stream(
    files: Sequence[str | Path],
    *,
    num_users: int,
    item_category: np.ndarray,
    config: AnalysisConfig,
    batch_rows: int = 1 << 20,
    prefetch_windows: int = 2,
    top: int = 3,
    fetch_carry: bool = True,
) -> StreamResult:
    """Windowed forgetting analysis of time-ordered event files (see the module docstring).

    ``prefetch_windows=0`` runs decoding, transfer and device work one after
    the other (the reference the prefetched path must equal).
    ``fetch_carry=False`` leaves the final state on the device (for scoring next).
    A stream's end is not known while it runs, so, as in the window-by-window
    monitor, the detector's life budget is ``life_days`` (not capped at the
    log's span) and a learned verdict file lends its longest-span fit
    (``load_verdict``); ``analyze`` and ``fgjax analyze`` know the span.
    """
    item_category = np.asarray(item_category, np.int32)
    num_interests = int(item_category.max(initial=-1)) + 1
    if num_interests < 1:
        raise DataError("item_category has no category")
    spec = window_spec(config, num_interests, top=top)
    source = parquet_windows(files, item_category=item_category, num_users=num_users,
                             window_seconds=config.window_seconds, batch_rows=batch_rows)
    run = run_windows(source, spec, window_params(config), init_carry(spec, num_users), keep_top=False,
                      prefetch_windows=prefetch_windows, desc="stream")
    return StreamResult(run.window_start, run.degree, jax.device_get(run.carry) if fetch_carry else run.carry, run.events)


@dataclasses.dataclass(frozen=True)
class ScannedResult:
    """What ``analyze_scanned`` returns (the per-window outputs went to its sink).

    Attributes:
      window_start: ``(windows,)`` epoch seconds.
      state: ``(users, K)`` int8 state codes after the last window.
      events: events with a positive weight (of every process, when several run).
      events_without_interest: events skipped because their item has no category (of every process).
      devices: the devices the window step split the users over (of every process).
    """

    window_start: np.ndarray
    state: np.ndarray
    events: int
    events_without_interest: int
    devices: int = 1


def require_categories(scanned: ScannedLog) -> None:
    """Raises ``DataError`` unless ``scanned`` has item categories (the interests the analysis follows)."""
    if scanned.item_category is None or scanned.categories is None or len(scanned.categories) == 0:
        raise DataError("the forgetting analysis needs item categories: set data.items_path to an items table")


def analyze_scanned(
    config: Config,
    scanned: ScannedLog,
    sink: Callable[[int, float, WindowOutput, list[dict[str, np.ndarray]] | None], None],
    *,
    progress: bool = True,
    layout: Layout | None = None,
) -> ScannedResult:
    """``analyze`` window by window over a scanned log (``fgjax.data.stream.scan_log``), its outputs sent to
    ``sink`` (see ``run_windows``) as each window completes: memory is bounded by the state, a chunk of
    events (``analysis.window_chunk``; one process) and the windows in flight, whatever the number of events
    or windows.

    On the same events it gives what ``analyze`` gives (tested): the same windows, F, top interests,
    states and changed rows with their evidence.

    ``layout``: this process is one of several (``fgjax.analysis.distributed``; ``scanned`` is its shards,
    aligned by ``agree_scanned``): the window step runs sharded over the processes, ``sink`` gets this
    process's users only, and the result's ``state`` is theirs. Every process calls it.
    """
    acfg = config.analysis
    require_categories(scanned)
    num_interests = len(scanned.categories)
    seen = {"events": 0, "without": 0}

    def counted(windows: Iterator[Window]) -> Iterator[Window]:
        for window in windows:
            real = window.events.user < scanned.num_users
            seen["events"] += int(real.sum())
            seen["without"] += int(np.sum(real & (window.events.interest == num_interests)))
            yield window

    spec = window_spec(acfg, num_interests)
    params = window_params(acfg, scanned.num_windows)
    mesh = user_mesh(acfg.devices)
    chunk = 0
    if layout is None:
        # Windows of more events than the chunk come in chunks, on one device (ShardedStep runs whole windows).
        chunk = run_chunk(acfg.window_chunk, scanned.window_rows, scanned.num_users * num_interests)
        if chunk == 0 and mesh.size > 1:  # one process, its users split between its devices
            layout = Layout(users=scanned.num_users, rows=user_rows(scanned.num_users),
                            process_users=(scanned.num_users,),
                            first_group=scanned.first_group, last_group=scanned.last_group)
    users = scanned.num_users

    def own_rows(t: int, start: float, output: WindowOutput, changed: list[dict[str, np.ndarray]] | None) -> None:
        sink(t, start, WindowOutput(*(x[:users] for x in output)), changed)  # padding rows never change

    if layout is None:
        rows = user_rows(users)
        run = run_windows(counted(scanned_windows(scanned, num_interests, rows, chunk=chunk)), spec, params,
                          init_carry(spec, rows), num_windows=scanned.num_windows, record_changes=True,
                          progress=progress, sink=own_rows, chunked=chunk > 0)
        state = np.asarray(jax.device_get(run.carry.state))[:users]
    else:
        step = ShardedStep(spec, params, layout, mesh)
        run = run_windows(counted(scanned_windows(scanned, num_interests, step.rows)), spec, params,
                          step.init_carry(), num_windows=scanned.num_windows, record_changes=True,
                          progress=progress, sink=own_rows, step=step)
        state = np.asarray(step.local(run.carry.state))[:users]
        if layout.processes > 1:
            seen["events"], seen["without"], seen["weighted"] = (int(v) for v in allgather(
                np.array([seen["events"], seen["without"], run.events], np.int64)).sum(axis=0))
    if seen["without"] == seen["events"]:
        raise DataError(
            f"none of the {seen['events']:,} events has an item with a category: "
            "do the items table's item_id values match the events' item_id values?"
        )
    return ScannedResult(run.window_start, state, seen.get("weighted", run.events), seen["without"],
                         1 if layout is None else step.mesh.size)
