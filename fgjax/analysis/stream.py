"""Streaming forgetting analysis: Parquet record batches -> windows -> the fused pass, overlapped.

``analyze_stream`` reads time-ordered event files (e.g. one Parquet shard
per day) record batch by record batch, cuts them into windows, pads each
window to a power-of-two bucket and moves it to the device in a prefetch
thread (``fgjax.data.prefetch``): Parquet decoding and host->device copies
of the next windows overlap ``analysis.window_step`` on the current one.
Memory is bounded by the state (``users x K``), the record batch size and
the ``prefetch`` windows in flight, never by the number of events.

The columns hold dense integer indices (``user``, ``item``: ``0 <= id <
num_users / num_items``), float epoch seconds ``timestamp`` and ``weight``;
timestamps must not decrease across files and rows (a streamed window is
closed once a later one starts). ``fgjax.analysis.loop.analyze`` on the same events
gives the same results (tested).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np
import pyarrow.parquet as pq

from fgjax import kernels
from fgjax.analysis.loop import AnalysisCarry, detector_params, init_carry, pad_events, window_index, window_step
from fgjax.config import AnalysisConfig
from fgjax.data.prefetch import prefetch
from fgjax.errors import DataError
from fgjax.shapes import bucket_size

COLUMNS = ("user", "item", "timestamp", "weight")


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """``degree``: ``(windows, users)`` F; ``carry``: the state after the last window (host arrays)."""

    window_start: np.ndarray
    degree: np.ndarray
    carry: AnalysisCarry
    events: int


def _record_batches(files: Sequence[str | Path], batch_rows: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    for path in files:
        with pq.ParquetFile(str(path)) as f:
            missing = [c for c in COLUMNS if c not in f.schema_arrow.names]
            if missing:
                raise DataError(f"'{path}': missing column(s) {', '.join(missing)} (streaming needs {', '.join(COLUMNS)})")
            for batch in f.iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
                yield str(path), {c: batch.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}


def window_batches(
    files: Sequence[str | Path],
    *,
    item_category: np.ndarray,
    num_users: int,
    window_seconds: float,
    batch_rows: int = 1 << 20,
) -> Iterator[tuple[int, float, kernels.WindowEvents]]:
    """``(window index, window start, padded events)`` for every window from the first event's to the last's.

    Windows without events are yielded too (empty, padded to 1 row), so the
    state decays through them as ``analyze`` does.
    """
    num_interests = int(item_category.max(initial=-1)) + 1
    origin = None
    current = -1
    parts: list[dict[str, np.ndarray]] = []
    last_ts = -np.inf

    def close(t: int) -> tuple[int, float, kernels.WindowEvents]:
        cols = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0) for c in COLUMNS}
        parts.clear()
        end = origin + (t + 1) * window_seconds
        interest = item_category[cols["item"].astype(np.int64)] if len(cols["item"]) else np.zeros(0, np.int32)
        events = kernels.WindowEvents(
            cols["user"].astype(np.int32),
            np.where(interest >= 0, interest, num_interests).astype(np.int32),
            cols["weight"].astype(np.float32),
            ((end - cols["timestamp"]) / window_seconds).astype(np.float32),
        )
        return t, origin + t * window_seconds, pad_events(events, bucket_size(len(events.user)), num_users)

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
    """
    item_category = np.asarray(item_category, np.int32)
    num_interests = int(item_category.max(initial=-1)) + 1
    if num_interests < 1:
        raise DataError("item_category has no category")
    decay, inv_tau = kernels.decay_factors(1.0, config.half_life_windows, reset_each_window=config.reset_each_window)
    top = min(top, num_interests)
    source = window_batches(files, item_category=item_category, num_users=num_users,
                            window_seconds=config.window_seconds, batch_rows=batch_rows)

    def to_device(item):
        t, start, events = item
        return t, start, jax.device_put(events), int(np.sum(events.weight > 0))

    stream = prefetch(source, prefetch_windows, to_device) if prefetch_windows else map(to_device, source)
    carry = init_carry(num_users, num_interests, config)
    params = detector_params(config)
    starts: list[float] = []
    degrees: list[np.ndarray] = []
    pending = None
    events = 0
    for t, start, batch, count in stream:
        carry, out, _ = window_step(carry, batch, params, decay=decay, inv_tau=inv_tau, config=config, top=top)
        out.degree.copy_to_host_async()
        if pending is not None:  # fetch window t-1 while t computes
            degrees.append(np.asarray(pending))
        pending = out.degree
        starts.append(start)
        events += count
    if pending is not None:
        degrees.append(np.asarray(pending))
    degree = np.stack(degrees) if degrees else np.zeros((0, num_users), np.float32)
    return StreamResult(np.asarray(starts), degree, jax.device_get(carry) if fetch_carry else carry, events)
