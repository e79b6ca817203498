"""A behavior log in two passes, window by window, with memory bounded by a batch and a window.

``scan_log`` is ``fgjax.data.reader.read_events`` for logs that do not fit in
memory, or that should not be held there: the same rules, the same counts, the
same rejects file, the same vocabularies, but the events come out one time
window at a time instead of as one array.

Pass 1 (``scan_log``) reads every source once, in record batches: every row
rule but ``duplicate`` is applied as ``read_events`` applies it (bad rows are
counted and written to the rejects file as they come); each batch's distinct
user and item IDs are kept (they become the sorted vocabularies at the end,
with the items table's IDs); the used rows are spilled to Arrow IPC files in a
spill folder, each batch's rows grouped by window (a stable sort: read order
within a window).

Pass 2 (``ScannedLog.windows``) yields the windows in time order: for each, the
rows of every spilled batch that fall in it (memory-mapped, zero-copy), in read
order, with raw IDs encoded against the vocabularies. Duplicates (same user,
item, timestamp and event type as an earlier row in read order) share a
timestamp, hence a window: they are found there, counted and written to the
rejects file with their original text at the end, as ``read_events`` does.

Order rule: files and rows may come in any time order (shards by user, by day,
or unsorted); windows are cut by timestamp, and the events of a window keep read
order (files in sorted path order, rows in file order), the order
``read_events`` keeps for equal timestamps. Nothing is late and nothing is
dropped for its order.

Memory: the vocabularies (unique IDs), one record batch in pass 1, one window's
rows in pass 2, or with a ``chunk`` (``ScannedLog.windows``) one piece of at most
that many rows and an 8-byte hash per row of the window. Disk: about 36 bytes per
used event (more with string IDs) in the spill folder, removed by
``ScannedLog.close``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from fgjax.config import DataConfig
from fgjax.data import reader
from fgjax.data.pseudonym import Pseudonymizer
from fgjax.data.vocab import Vocabulary
from fgjax.errors import ConfigError, DataError

# A lookup table for integer IDs when their span is at most this many times the number of IDs (plus a floor).
_TABLE_SPAN = 4
_TABLE_FLOOR = 1 << 22


# Distinct integer IDs by a table of seen flags when their span is at most this many times their number
# (plus a floor): marking and reading back a table costs a few ns an ID, hashing (``pc.unique``) about 30.
_DISTINCT_SPAN = 32
_DISTINCT_FLOOR = 1 << 16


class SeenIds:
    """The distinct integer IDs of one column and type over a whole pass: each batch's IDs are marked in one
    table of flags over their span (a few ns an ID, no per-batch table to read back), read out once by
    ``values``. ``add`` declines a batch (returns False) that is not integers without nulls, or that would
    make the span wider than ``_DISTINCT_SPAN`` times the IDs marked (plus a floor): hash those
    (``distinct_ids``).
    """

    def __init__(self):
        self.lo = 0
        self.flags: np.ndarray | None = None
        self.type: pa.DataType | None = None
        self.marked = 0

    def add(self, ids: pa.Array) -> bool:
        if not pa.types.is_integer(ids.type) or ids.null_count or (self.type is not None and ids.type != self.type):
            return False
        if not len(ids):
            return True
        values = ids.to_numpy()
        lo, hi = int(values.min()), int(values.max())
        if self.flags is not None:
            lo, hi = min(lo, self.lo), max(hi, self.lo + len(self.flags) - 1)
        limit = max(_DISTINCT_SPAN * (self.marked + len(values)), _DISTINCT_FLOOR)
        if hi - lo >= limit:
            return False
        if self.flags is None or lo < self.lo or hi >= self.lo + len(self.flags):
            # Grown with room above (IDs often rise from shard to shard), within the limit and the type.
            top = min(hi + (hi - lo + 1), lo + limit - 1, int(np.iinfo(values.dtype).max))
            grown = np.zeros(top - lo + 1, bool)
            if self.flags is not None:
                grown[self.lo - lo:self.lo - lo + len(self.flags)] = self.flags
            self.flags, self.lo, self.type = grown, lo, ids.type
        # Offsets in 64 bits (an int8 span can exceed int8); they fit there, so wrapping cannot hurt them.
        wide = np.dtype(np.int64 if np.issubdtype(values.dtype, np.signedinteger) else np.uint64)
        self.flags[values.astype(wide) - wide.type(self.lo)] = True
        self.marked += len(values)
        return True

    def values(self) -> pa.Array:
        """The distinct IDs marked, ascending (an empty int64 array when none were)."""
        if self.flags is None:
            return pa.array([], pa.int64())
        dtype = self.type.to_pandas_dtype()
        wide = np.dtype(np.int64 if np.issubdtype(dtype, np.signedinteger) else np.uint64)
        return pa.array((np.flatnonzero(self.flags).astype(wide) + wide.type(self.lo)).astype(dtype), self.type)


def distinct_ids(ids: pa.Array) -> pa.Array:
    """The distinct values of one array of IDs (no nulls), in any order: integers of a small span by a table of
    seen flags (``SeenIds``; ascending), anything else by ``pyarrow.compute.unique``."""
    table = SeenIds()
    return table.values() if len(ids) and table.add(ids) else pc.unique(ids)


def window_group(seconds: np.ndarray, window_seconds: float) -> np.ndarray:
    """``(n,)`` int64 epoch-aligned window number of each time: ``floor(seconds / window_seconds)``."""
    return np.floor(seconds / window_seconds).astype(np.int64)


class _Encoder:
    """Raw IDs of one column -> int32 vocabulary indices.

    A lookup table for compact integer IDs, a binary search for other integers,
    and for strings a hash lookup of each call's distinct values only.
    """

    def __init__(self, raw: pa.Array, index: np.ndarray):
        self.type = raw.type
        self.index = index.astype(np.int32)
        self.table: np.ndarray | None = None
        if pa.types.is_integer(raw.type):
            self.values = raw.to_numpy(zero_copy_only=False).astype(np.int64)
            if len(self.values):
                low, span = int(self.values[0]), int(self.values[-1]) - int(self.values[0]) + 1
                if span <= _TABLE_SPAN * len(self.values) + _TABLE_FLOOR:
                    self.low = low
                    self.table = np.full(span, -1, np.int32)
                    self.table[self.values - low] = self.index
        else:
            self.raw = raw

    def __call__(self, ids: pa.Array) -> np.ndarray:
        if ids.type != self.type:
            ids = ids.cast(self.type)
        if pa.types.is_integer(self.type):
            x = ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            if self.table is not None:
                return self.table[x - self.low]
            return self.index[np.searchsorted(self.values, x)]
        encoded = pc.dictionary_encode(ids)
        distinct = pc.index_in(encoded.dictionary, value_set=self.raw).to_numpy(zero_copy_only=False)
        return self.index[distinct][encoded.indices.to_numpy(zero_copy_only=False)]


class WindowRows(NamedTuple):
    """One window's used events, in read order (``ScannedLog.windows``)."""

    index: int  # window t, from 0 at the first event's window
    user: np.ndarray  # (n,) int32 index into users
    item: np.ndarray  # (n,) int32 index into items
    seconds: np.ndarray  # (n,) float64 epoch seconds
    weight: np.ndarray  # (n,) float32
    closes: bool = True  # the window's last (or only) piece (``ScannedLog.windows`` with a ``chunk``)


@dataclasses.dataclass(frozen=True)
class _Spilled:
    """Where one spilled batch's rows of each window are: file, batch, and row bounds per window."""

    file: int
    batch: int
    groups: np.ndarray  # (g,) window numbers present, increasing
    bounds: np.ndarray  # (g + 1,) row offsets


class ScannedLog:
    """The result of pass 1: vocabularies, the spilled rows, and pass 2 (``windows``).

    Attributes:
      users, items, item_category, categories: as in ``fgjax.data.reader.EventLog``.
      first_group: epoch-aligned window number of the first event (``window_group``).
      num_windows: windows from the first event's to the last's.
      window_rows: ``(num_windows,)`` used rows per window before duplicates are removed.
      report: the read report; final (duplicates counted) once ``windows`` has run to its end.
    """

    def __init__(self, *, users: Vocabulary, items: Vocabulary, item_category, categories, user_encoder: _Encoder,
                 item_encoder: _Encoder, spill_dir: Path, files: list[Path],
                 spilled: list[_Spilled], first_group: int, window_seconds: float, window_rows: np.ndarray,
                 tally: reader.ScanTally, rejects: reader.RejectsWriter, sources: list[reader.Source],
                 config: DataConfig, items_notes: dict[str, int]):
        self.users, self.items = users, items
        self.item_category, self.categories = item_category, categories
        self._encode_user, self._encode_item = user_encoder, item_encoder
        self._spill_dir, self._files, self._spilled = spill_dir, files, spilled
        self.first_group, self.window_seconds = first_group, window_seconds
        self.window_rows = window_rows
        self._tally, self._rejects, self._sources, self._config = tally, rejects, sources, config
        self._items_notes = items_notes
        self._duplicates: list[tuple[np.ndarray, np.ndarray]] = []
        self._kept_types = np.zeros(0, np.int64)
        self._used = int(window_rows.sum())
        self._done = False
        self.decode_seconds = 0.0  # pass 2's host work: mapping, encoding, duplicates (``windows``)
        self.report = self._report(rejects_path=None)

    @property
    def num_windows(self) -> int:
        return len(self.window_rows)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def origin(self) -> float:
        """Epoch seconds where window 0 starts."""
        return self.first_group * self.window_seconds

    @property
    def last_group(self) -> int:
        """Epoch-aligned window number of the last window."""
        return self.first_group + self.num_windows - 1

    def align(self, first_group: int, last_group: int) -> None:
        """Make pass 2 run over windows ``first_group .. last_group`` (a range holding this log's own, e.g.
        the range of every process's shards): the windows before and after this log's events come out empty."""
        if first_group > self.first_group or last_group < self.last_group:
            raise ValueError(f"windows {first_group}..{last_group} do not hold this log's "
                             f"{self.first_group}..{self.last_group}")
        rows = np.zeros(last_group - first_group + 1, np.int64)
        rows[self.first_group - first_group:][:self.num_windows] = self.window_rows
        self.first_group, self.window_rows = first_group, rows

    def _report(self, rejects_path: str | None) -> reader.ReadReport:
        tally = self._tally
        unknown = tally.unknown()
        if self._config.unknown_event_types == "keep":
            unknown = {tally.event_types.names[c]: int(n) for c, n in enumerate(self._kept_types)
                       if n and tally.event_types.unknown(self._config)[c]}
        return reader.ReadReport(
            rows_read=tally.rows_read,
            rows_used=self._used,
            rejected={reader.REASONS[i]: int(c) for i, c in enumerate(tally.counts) if c},
            rejects_path=rejects_path,
            files=len(self._sources),
            items_table=self._items_notes,
            unknown_event_types=unknown,
            unknown_event_policy=self._config.unknown_event_types,
        )

    def windows(self, chunk: int = 0) -> Iterator[WindowRows]:
        """Pass 2: every window from the first event's to the last's, empty ones included (see the module).

        ``chunk`` > 0: a window of more used rows comes as pieces of at most ``chunk`` rows, in read order
        (``WindowRows.closes`` on the last), decoded one at a time, so pass 2's memory does not grow with the
        window: duplicates are found over the whole window first from a 64-bit hash of each row's keys
        (8 bytes a row), and dropped from the pieces they fall in.
        """
        if self._done:
            raise RuntimeError("ScannedLog.windows runs once")
        by_group: dict[int, list[tuple[int, int, int, int]]] = {}
        for s in self._spilled:
            for g, lo, hi in zip(s.groups, s.bounds[:-1], s.bounds[1:]):
                by_group.setdefault(int(g), []).append((s.file, s.batch, int(lo), int(hi)))
        for t in range(self.num_windows):
            started = time.perf_counter()
            entries = by_group.pop(self.first_group + t, [])
            if chunk <= 0 or sum(hi - lo for *_, lo, hi in entries) <= chunk:
                pieces = iter([self._window(t, entries)])
            else:
                pieces = self._pieces(t, entries, chunk)
            for piece in pieces:
                self.decode_seconds += time.perf_counter() - started
                yield piece
                started = time.perf_counter()
        self._finish()

    def _columns(self, entries: list[tuple[int, int, int, int]], names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Columns ``names`` of the spilled rows ``entries`` ``(file, batch, lo, hi)``, concatenated (copies;
        ``user`` and ``item`` encoded to vocabulary indices)."""
        # The spill is memory-mapped for these reads only: the rows are copied out, and unmapping drops the
        # pages read from this process's resident memory (a map kept open for the whole run would count every
        # spilled page in the peak RSS, growing with the events).
        maps = {f: pa.memory_map(str(self._files[f])) for f, *_ in entries}
        try:
            readers = {f: ipc.open_file(m) for f, m in maps.items()}
            parts = [readers[f].get_batch(b).slice(lo, hi - lo) for f, b, lo, hi in entries]
            encode = {"user": self._encode_user, "item": self._encode_item}
            # concatenate always copies: nothing points into the map once it is closed
            return {name: np.concatenate([encode[name](p.column(name)) if name in encode
                                          else p.column(name).to_numpy() for p in parts]) for name in names}
        finally:
            for m in maps.values():
                m.close()

    def _pieces(self, t: int, entries: list[tuple[int, int, int, int]], chunk: int) -> Iterator[WindowRows]:
        """Window ``t`` as pieces of at most ``chunk`` rows (``windows``)."""
        pieces = _split(entries, chunk)
        drop = np.zeros(0, np.int64)  # positions in the window (read order) of the duplicates
        if self._config.drop_duplicates:
            keys = ("user", "item", "seconds", "event")
            h = np.concatenate([_key_hash(*self._columns(p, keys).values()) for p in pieces])
            ordered = np.sort(h)
            if (ordered[1:] == ordered[:-1]).any():  # rare: only then are the candidates' keys read again
                del ordered
                candidates = _equal_hash_rows(h)
                del h
                found = []
                for p, lo in zip(pieces, _starts(pieces)):
                    mine = candidates[(candidates >= lo) & (candidates < lo + _rows(p))]
                    if len(mine):
                        c = self._columns(p, keys)
                        found.append((mine, *(c[k][mine - lo] for k in keys)))
                where, user, item, seconds, event = (np.concatenate(x) for x in zip(*found))
                drop = where[reader.duplicate_mask(user, item, seconds, event)]
        for p, lo in zip(pieces, _starts(pieces)):
            mine = drop[(drop >= lo) & (drop < lo + _rows(p))] - lo
            names = ("user", "item", "seconds", "weight", "event") + (("source", "row") if len(mine) else ())
            c = self._columns(p, names)
            if len(mine):
                self._tally.counts[reader.REASONS.index("duplicate")] += len(mine)
                self._duplicates.append((c["source"][mine], c["row"][mine]))
                self._used -= len(mine)
                keep = np.ones(_rows(p), bool)
                keep[mine] = False
                c = {name: c[name][keep] for name in names}
            if self._config.unknown_event_types == "keep":
                self._kept_types = reader._add_counts(self._kept_types, np.bincount(c["event"]))
            yield WindowRows(t, c["user"], c["item"], c["seconds"], c["weight"], closes=p is pieces[-1])

    def _window(self, t: int, entries: list[tuple[int, int, int, int]]) -> WindowRows:
        if not entries:
            return WindowRows(t, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.float32))
        c = self._columns(entries, ("user", "item", "seconds", "weight", "event"))
        user, item, seconds, weight, event = c["user"], c["item"], c["seconds"], c["weight"], c["event"]
        del c
        if self._config.drop_duplicates and len(user) > 1:
            # After the map is closed: the duplicates' temporaries do not add to the mapped pages.
            dup = _duplicates(user, item, seconds, event)
            if dup.any():
                self._tally.counts[reader.REASONS.index("duplicate")] += int(dup.sum())
                where = self._columns(entries, ("source", "row"))  # rare: read again for the rejects file
                self._duplicates.append((where["source"][dup], where["row"][dup]))
                self._used -= int(dup.sum())
                keep = ~dup
                user, item, seconds, weight, event = user[keep], item[keep], seconds[keep], weight[keep], event[keep]
        if self._config.unknown_event_types == "keep":
            self._kept_types = reader._add_counts(self._kept_types, np.bincount(event))
        return WindowRows(t, user, item, seconds, weight)

    def _finish(self) -> None:
        if self._duplicates:
            source = np.concatenate([s for s, _ in self._duplicates])
            row = np.concatenate([r for _, r in self._duplicates])
            reader._write_duplicates(self._rejects, self._sources, source, row)
        self._done = True
        self.report = self._report(self._rejects.close())

    def close(self) -> None:
        """Close the rejects file and remove the spill folder."""
        self._rejects.close()
        shutil.rmtree(self._spill_dir, ignore_errors=True)

    def __enter__(self) -> "ScannedLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rows(entries: list[tuple[int, int, int, int]]) -> int:
    return sum(hi - lo for *_, lo, hi in entries)


def _starts(pieces: list[list[tuple[int, int, int, int]]]) -> list[int]:
    """The window position of each piece's first row."""
    return np.cumsum([0] + [_rows(p) for p in pieces[:-1]]).tolist()


def _split(entries: list[tuple[int, int, int, int]], chunk: int) -> list[list[tuple[int, int, int, int]]]:
    """Spilled rows ``(file, batch, lo, hi)`` in read order, cut into pieces of at most ``chunk`` rows."""
    pieces, piece, room = [], [], chunk
    for f, b, lo, hi in entries:
        while lo < hi:
            take = min(hi - lo, room)
            piece.append((f, b, lo, lo + take))
            lo, room = lo + take, room - take
            if room == 0:
                pieces.append(piece)
                piece, room = [], chunk
    return pieces + [piece] if piece or not pieces else pieces


def _equal_hash_rows(h: np.ndarray) -> np.ndarray:
    """Increasing positions of the rows whose hash another row shares: the only rows that can be duplicates."""
    order = np.argsort(h)
    same = h[order][1:] == h[order][:-1]
    candidates = np.zeros(len(h), bool)
    candidates[order[1:][same]] = True
    candidates[order[:-1][same]] = True
    return np.flatnonzero(candidates)


def _duplicates(user: np.ndarray, item: np.ndarray, seconds: np.ndarray, event: np.ndarray) -> np.ndarray:
    """``reader.duplicate_mask`` (True for a row equal on all four keys to an earlier row), 5-10x cheaper:
    one sort of a 64-bit hash of the keys finds the few rows that could be duplicates, and only those go
    through the exact four-key comparison (equal rows have equal hashes; collisions are sorted out there)."""
    h = _key_hash(user, item, seconds, event)
    mask = np.zeros(len(h), bool)
    ordered = np.sort(h)
    if not (ordered[1:] == ordered[:-1]).any():  # no two hashes equal: no duplicates (the usual case)
        return mask
    del ordered
    where = _equal_hash_rows(h)  # read order kept: the first of equal rows stays
    mask[where] = reader.duplicate_mask(user[where], item[where], seconds[where], event[where])
    return mask


def _key_hash(user: np.ndarray, item: np.ndarray, seconds: np.ndarray, event: np.ndarray) -> np.ndarray:
    """``(n,)`` uint64 hash of each row's duplicate keys (user and item indices, float64 seconds, event)."""
    # In place, two 64-bit arrays at a time: these are per-event temporaries of the largest window.
    h, term = user.astype(np.uint64), np.empty(len(user), np.uint64)
    h *= np.uint64(0x9E3779B97F4A7C15)
    for column, factor in ((item, 0xC2B2AE3D27D4EB4F), (seconds.view(np.uint64), 0x165667B19E3779F9),
                           (event, 0x27D4EB2F165667C5)):
        term[:] = column
        term *= np.uint64(factor)
        h ^= term
    return h


def _spill_schema(user: pa.DataType, item: pa.DataType) -> pa.Schema:
    return pa.schema([("user", user), ("item", item), ("seconds", pa.float64()), ("weight", pa.float32()),
                      ("event", pa.int32()), ("source", pa.int32()), ("row", pa.int64())])


def _grouped(groups: np.ndarray) -> np.ndarray:
    """A stable order that groups rows by window (the identity when already in order)."""
    if len(groups) < 2 or bool(np.all(groups[1:] >= groups[:-1])):
        return np.arange(len(groups))
    low = groups.min()
    if groups.max() - low < (1 << 15):  # small keys: numpy's stable sort is a radix sort
        return np.argsort((groups - low).astype(np.int16), kind="stable")
    return np.argsort(groups, kind="stable")


#: Distinct-ID chunks kept per column before they are merged, one per ID kind and type (``_compact_ids``).
COMPACT_CHUNKS = 32


def _compact_ids(got: reader._Collected) -> None:
    """Merge the distinct user and item IDs kept per batch into one chunk per ID kind and Arrow type.

    Each batch's distinct IDs are kept for the vocabularies; unmerged they add up to about the events
    (every batch repeats most users), so memory would grow with the log. The kind checks and
    ``unify_ids`` read only the values and kinds; the sources of each kind are kept apart
    (``_Collected``), so a mixed-ID error still names every file.
    """
    for ids, kinds in ((got.users, got.user_kinds), (got.items, got.item_kinds)):
        groups: dict[tuple[str, pa.DataType], list[pa.Array]] = {}
        for chunk, kind in zip(ids, kinds):
            groups.setdefault((kind, chunk.type), []).append(chunk)
        ids[:] = [distinct_ids(pa.chunked_array(chunks).combine_chunks()) for chunks in groups.values()]
        kinds[:] = [kind for kind, _ in groups]


def check_window_count(first_window: int, last_window: int, window_seconds: float, max_windows: int | None) -> int:
    """The windows from ``first_window`` to ``last_window`` (inclusive); ``ConfigError`` past ``max_windows``
    (``analysis.max_windows``; None = no limit), before anything of that size is allocated."""
    count = int(last_window) - int(first_window) + 1
    if max_windows is not None and count > max_windows:
        span = count * window_seconds
        span_text = f"{span / 86400.0:,.1f} days" if span >= 86400.0 else f"{span:,.0f} seconds"
        raise ConfigError(
            f"analysis.window_seconds={window_seconds:g} gives {count:,} windows over the log's {span_text}, "
            f"more than analysis.max_windows={max_windows:,}: is the window in seconds where days were "
            "meant (--window 7d is a week)? Raise analysis.max_windows to run it anyway")
    return count


def scan_log(config: DataConfig, window_seconds: float, *, rejects_path: str | Path | None = None,
             spill_parent: str | Path | None = None, path: str | Path | None = None,
             shard: tuple[int, int] | None = None, max_windows: int | None = None) -> ScannedLog:
    """Pass 1 over ``config.path`` (``path`` overrides it): see the module docstring.

    Args:
      window_seconds: the analysis window the spill is grouped by.
      rejects_path: Parquet file for the rejected rows (as ``read_events``).
      spill_parent: where the spill folder is made (default: the system's temporary folder); ``close``
        removes it.
      shard: ``(i, n)``: read only every ``n``-th file of the sorted list from the ``i``-th (process ``i``
        of ``n``; ``fgjax.data.reader.open_sources``).
      max_windows: ``check_window_count``'s limit on the windows from the first event to the last.

    Raises:
      DataError / SchemaError: as ``read_events``, with the same messages.
    """
    path = str(path) if path is not None else config.path
    if not path:
        raise DataError("no events path given; set data.path to a file, directory or glob")
    pseudonymizer = Pseudonymizer.from_config(config)
    sources, default_items = reader.open_sources(path, config, shard)
    plans = [reader.check_schema(s, config.columns) for s in sources]
    reader.check_id_kinds(sources, plans, config)
    items_path = config.items_path or default_items
    item_table = reader.read_items_table(items_path, config) if items_path else None
    reject_columns = [c for c in dataclasses.astuple(config.columns) if any(c in p.columns for p in plans)]
    rejects = reader.RejectsWriter(str(rejects_path) if rejects_path is not None else None, reject_columns,
                                   user_column=config.columns.user_id, pseudonymizer=pseudonymizer)
    folder = Path(tempfile.mkdtemp(prefix=".fgjax-spill-", dir=spill_parent))
    writers: dict[pa.Schema, tuple[int, ipc.RecordBatchFileWriter]] = {}
    files: list[Path] = []
    batches_in: list[int] = []
    spilled: list[_Spilled] = []
    got = reader._Collected()  # distinct IDs per batch, with their kinds and sources
    # Integer IDs of a small span are marked in one table per (column, kind, type), added to ``got`` at the end.
    seen: dict[tuple[int, str, pa.DataType], SeenIds] = {}

    def distinct(column: int, ids: pa.Array, kind: str) -> pa.Array:
        table = seen.setdefault((column, kind, ids.type), SeenIds())
        return ids.slice(0, 0) if table.add(ids) else distinct_ids(ids)

    rows_per_group: dict[int, int] = {}
    tally = reader.ScanTally(config)
    try:
        for used in reader.scan_rows(sources, plans, config, rejects, tally):
            if not len(used.row):
                continue
            got.add_ids(distinct(0, used.user, used.user_kind), used.user_kind,
                        distinct(1, used.item, used.item_kind), used.item_kind, used.source)
            if len(got.users) >= COMPACT_CHUNKS:
                _compact_ids(got)
            groups = window_group(used.seconds, window_seconds)
            order = _grouped(groups)
            groups = groups[order]
            schema = _spill_schema(used.user.type, used.item.type)
            if schema not in writers:
                files.append(folder / f"spill-{len(files)}.arrow")
                writers[schema] = (len(files) - 1, ipc.new_file(str(files[-1]), schema))
                batches_in.append(0)
            file, writer = writers[schema]
            take = pa.array(order)
            writer.write_batch(pa.record_batch([
                used.user.take(take), used.item.take(take), used.seconds[order], used.weight[order].astype(np.float32),
                used.event[order].astype(np.int32), np.full(len(order), used.source, np.int32), used.row[order],
            ], schema=schema))
            present, first = np.unique(groups, return_index=True)
            spilled.append(_Spilled(file, batches_in[file], present, np.r_[first, len(groups)]))
            batches_in[file] += 1
            for g, n in zip(present.tolist(), np.diff(np.r_[first, len(groups)]).tolist()):
                rows_per_group[g] = rows_per_group.get(g, 0) + n
        for _, writer in writers.values():
            writer.close()
        if not rows_per_group:
            report = reader.ReadReport(tally.rows_read, 0, {reader.REASONS[i]: int(c) for i, c in
                                                            enumerate(tally.counts) if c}, rejects.close(),
                                       len(sources))
            raise DataError(f"events '{path}': no valid rows ({report.summary()})"
                            f"{reader._units_hint(report, tally.out_of_range, config)}")
        for (column, kind, _), table in seen.items():
            if table.flags is not None:
                (got.items if column else got.users).append(table.values())
                (got.item_kinds if column else got.user_kinds).append(kind)
        cols = config.columns
        reader._check_text_ids(got.users, got.user_kinds, got.user_kind_sources, sources, cols.user_id, config)
        reader._check_text_ids(got.items, got.item_kinds, got.item_kind_sources, sources, cols.item_id, config)
        raw_users = Vocabulary.from_values(reader.unify_ids(got.users, got.user_kinds)).values
        if pseudonymizer is not None:  # indices follow the sorted pseudonyms, as read_events gives them
            pseudonyms = pseudonymizer.apply(raw_users)
            users = Vocabulary.from_values(pseudonyms)
            user_index = users.encode(pseudonyms)
        else:
            users, user_index = Vocabulary(raw_users), np.arange(len(raw_users))
        item_chunks, item_kinds = list(got.items), list(got.item_kinds)
        if item_table is not None:
            item_chunks.append(item_table[0])
            item_kinds.append(item_table[1])
        items = Vocabulary.from_values(reader.unify_ids(item_chunks, item_kinds))
        item_category, categories, notes = reader._categories(item_table, items)
        first, last = min(rows_per_group), max(rows_per_group)
        window_rows = np.zeros(check_window_count(first, last, window_seconds, max_windows), np.int64)
        for g, n in rows_per_group.items():
            window_rows[g - first] = n
        return ScannedLog(
            users=users, items=items, item_category=item_category, categories=categories,
            user_encoder=_Encoder(raw_users, user_index), item_encoder=_Encoder(items.values, np.arange(len(items))),
            spill_dir=folder, files=files, spilled=spilled, first_group=first,
            window_seconds=window_seconds, window_rows=window_rows, tally=tally, rejects=rejects, sources=sources,
            config=config, items_notes=notes,
        )
    except BaseException:
        for _, writer in writers.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already failing; the original error matters
                pass
        rejects.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
