"""Stream a behavior log (Parquet / CSV / Arrow IPC / RecBole / MovieLens) into
dense, validated event arrays.

Input: a file, a directory of shards (hive-partitioned or not), or a glob.
Each file's schema is checked before any row is read; a missing required
column or one of the wrong type stops with a one-line ``SchemaError`` naming
the file, the column and what was expected. Rows are then streamed in record
batches of ``config.batch_size`` with only the configured columns projected.

Row rule: a row is dropped for the first reason that applies, in this order

    ragged row (CSV: another number of fields than the header), null user_id,
    null item_id, null timestamp, unparseable timestamp, timestamp out of
    range, unparseable weight, negative weight, non-finite weight, weight too large, unknown
    event_type (``config.unknown_event_types``: quarantine), duplicate

(an empty or all-blank string counts as null; a NaN epoch timestamp counts as
null; ``duplicate`` = same user, item, timestamp and event type as an earlier
row in read order, checked over all files when ``config.drop_duplicates``;
timestamps compare as float64 epoch seconds, exact to the microsecond). Repairs, not
drops: a null ``event_type`` becomes ``config.default_event_type``, a null
``weight`` becomes the event type's weight. Every dropped row is counted by
reason and, when a rejects path is given, written there (Parquet): the
original columns rendered as strings, plus ``reason``, ``source_file``,
``source_row`` (0-based row in that file; for CSV, among the rows that parse)
and ``source_line`` (1-based line of a ragged CSV row, else null).
``rows_read == rows_used + sum(rejected)`` always.

ID types: integer columns stay int64, string columns stay strings. Text
formats (CSV, hive partition values) carry no types, so their IDs become int64
when every used value is a canonical integer (``"7"``, not ``"007"``). Sources
that disagree (integer IDs in some files, string IDs in others) are refused
with a ``SchemaError`` naming files and column, unless
``config.mixed_id_types`` is ``string`` (every ID of that column read as a string).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob as globlib
import types
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fgjax.config import ColumnsConfig, DataConfig
from fgjax.data import formats
from fgjax.data.prefetch import prefetch
from fgjax.data.pseudonym import Pseudonymizer
from fgjax.data.vocab import Vocabulary
from fgjax.errors import DataError, SchemaError

REASONS = (
    "ragged row",
    "null user_id",
    "null item_id",
    "null timestamp",
    "unparseable timestamp",
    "timestamp out of range",
    "unparseable weight",
    "negative weight",
    "non-finite weight",
    "weight too large",
    "unknown event_type",
    "duplicate",
)
_RAGGED = REASONS.index("ragged row")
_OUT_OF_RANGE = REASONS.index("timestamp out of range")
_UNKNOWN_TYPE = REASONS.index("unknown event_type")
_DUPLICATE = REASONS.index("duplicate")
# The reasons clean_batch decides, in the order of its conditions.
_ROW_REASONS = np.array([REASONS.index(r) for r in REASONS[1:-1]], dtype=np.int8)
_PLAUSIBLE_SINCE = 631152000.0  # 1990-01-01: a milli/micro/nanosecond value read as seconds would land after it

_EXTENSION_FORMATS = types.MappingProxyType({
    ".parquet": "parquet",
    ".parq": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".arrow": "ipc",
    ".ipc": "ipc",
    ".feather": "ipc",
    ".inter": "recbole",
})
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_TIMESTAMP_EXPECTED = "an Arrow timestamp, epoch seconds (int/float) or ISO-8601 strings"
# A number as text; inf, infinity and nan (any case) too, so that they are rejected as a non-finite weight in
# CSV as they are in Parquet, not as unparseable text.
_NUMERIC_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^[+-]?(?i:inf|infinity|nan)$"
_UNIT_PER_SECOND = types.MappingProxyType({"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000})


@dataclasses.dataclass(frozen=True)
class ReadReport:
    """What reading did: rows in, rows used, rows rejected by reason."""

    rows_read: int
    rows_used: int
    rejected: dict[str, int]  # reason -> count, only reasons that occurred
    rejects_path: str | None
    files: int
    items_table: dict[str, int] = dataclasses.field(default_factory=dict)  # rows and rows not used as given
    # event_type values not in data.event_weights -> rows (quarantined, or kept at unknown_event_weight)
    unknown_event_types: dict[str, int] = dataclasses.field(default_factory=dict)
    unknown_event_policy: str = "quarantine"

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        """One line, e.g. "read 1,200 rows from 4 files: used 1,100, rejected 100 (duplicate: 100)"."""
        files = "1 file" if self.files == 1 else f"{self.files:,} files"
        rows = "1 row" if self.rows_read == 1 else f"{self.rows_read:,} rows"
        line = f"read {rows} from {files}: used {self.rows_used:,}, rejected {self.rows_rejected:,}"
        if self.rejected:
            line += " (" + ", ".join(f"{r}: {n:,}" for r, n in sorted(self.rejected.items())) + ")"
            if self.rejects_path:
                line += f"; rejects in '{self.rejects_path}'"
        if self.unknown_event_types:
            names = ", ".join(f"{name}: {n:,}" for name, n in sorted(self.unknown_event_types.items()))
            if self.unknown_event_policy == "keep":
                line += f"; event types not in data.event_weights kept at data.unknown_event_weight ({names})"
            else:
                line += (f"; event types not in data.event_weights quarantined ({names}): add them to "
                         "data.event_weights, or set data.unknown_event_types=keep")
        issues = {k: n for k, n in self.items_table.items() if k != "rows" and n}
        if issues:
            line += f"; items table: {self.items_table['rows']:,} rows, " + ", ".join(
                f"{k}: {n:,}" for k, n in issues.items()
            )
        return line


@dataclasses.dataclass(frozen=True)
class EventLog:
    """A validated behavior log as dense arrays, sorted by (timestamp, user).

    A user's events at the same timestamp keep read order (files in sorted
    path order, rows in file order): the order is deterministic, and it is the
    input order the protocol's default tie order (``data.tie_order: input``)
    keeps.
    """

    user: np.ndarray  # (events,) int32 index into users
    item: np.ndarray  # (events,) int32 index into items
    timestamp: np.ndarray  # (events,) float64 epoch seconds, UTC
    weight: np.ndarray  # (events,) float32
    users: Vocabulary
    items: Vocabulary  # every item of the events and of the items table
    item_category: np.ndarray | None  # (len(items),) int32 index into categories, -1 = no category row
    categories: Vocabulary | None
    report: ReadReport

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_events(self) -> int:
        return len(self.user)


# ---------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """One input file (or in-memory table) with its full schema.

    ``schema`` includes hive partition columns; ``text`` marks a source whose
    values carry no types (CSV), so its IDs were read as strings.
    """

    name: str
    schema: pa.Schema
    text: bool
    batches: Callable[[Sequence[str], int], Iterator[pa.RecordBatch]]  # (columns, batch_size)
    take: Callable[[Sequence[str], np.ndarray], pa.Table]  # (columns, rows)
    ragged: dict[int, str] = dataclasses.field(default_factory=dict)  # CSV: 1-based line -> text of skipped rows


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _hidden(relative: Path) -> bool:
    # pyarrow's convention: _SUCCESS, _metadata, .crc files are not data.
    return any(part.startswith((".", "_")) for part in relative.parts)


def list_files(path: str) -> tuple[list[Path], Path | None]:
    """Data files of a file, directory or glob, sorted; plus the hive base dir.

    Raises ``DataError`` naming the path if it does not exist or holds no files.
    """
    if _is_glob(path):
        files = sorted(Path(p) for p in globlib.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"events glob '{path}' matched no files")
        prefix = path[: min(path.index(ch) for ch in "*?[" if ch in path)]
        base = Path(prefix) if prefix.endswith(("/", "\\")) else Path(prefix).parent
        return [f for f in files if not _hidden(f.relative_to(base))], base
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p)))
        if not files:
            raise DataError(f"events directory '{path}' holds no data files")
        return files, p
    if p.is_file():
        return [p], None
    raise DataError(f"events path '{path}' does not exist")


def format_of(path: Path) -> str | None:
    """``parquet`` / ``csv`` / ``ipc`` / ``recbole`` / ``movielens`` from a file name, or None."""
    name = path.name.lower()
    if name == "u.data":
        return "movielens"
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSION_FORMATS.get(Path(name).suffix)


def detect_format(files: list[Path], requested: str, path: str) -> tuple[str, list[Path]]:
    """The format to read and the files of that format.

    With ``auto``, files without a known extension are skipped in directories
    and globs; several known formats at once is an error.
    """
    if requested != "auto":
        return requested, files
    by_format: dict[str, list[Path]] = {}
    for f in files:
        fmt = format_of(f)
        if fmt is not None:
            by_format.setdefault(fmt, []).append(f)
    if not by_format:
        raise DataError(
            f"events '{path}': cannot tell the format from the file name(s); "
            "set data.format to parquet, csv, ipc, recbole or movielens"
        )
    if len(by_format) > 1:
        raise DataError(f"events '{path}': mixes formats ({', '.join(sorted(by_format))}); set data.format")
    ((fmt, chosen),) = by_format.items()
    return fmt, chosen


def hive_keys(file: Path, base: Path | None) -> dict[str, str]:
    """``{"date": "2026-01-01"}`` from ``base/date=2026-01-01/part-0.parquet``."""
    if base is None:
        return {}
    keys = {}
    for part in file.relative_to(base).parent.parts:
        name, sep, value = part.partition("=")
        if sep and name:
            keys[urllib.parse.unquote(name)] = urllib.parse.unquote(value)
    return keys


def file_format(fmt: str, text_columns: Sequence[str] = (), ragged: dict[int, str] | None = None) -> ds.FileFormat:
    """A pyarrow dataset format. CSV reads ``text_columns`` as strings (so a late
    odd value is a rejected row, not a conversion crash); other columns are inferred.

    ``ragged``: for CSV, rows with another number of fields than the header are
    skipped and recorded there (1-based line -> text) instead of failing the file.
    """
    if fmt == "parquet":
        return ds.ParquetFileFormat()
    if fmt == "ipc":
        return ds.IpcFileFormat()
    if fmt == "csv":
        types = {c: pa.string() for c in text_columns}
        parse = pacsv.ParseOptions()
        if ragged is not None:
            def skip(row) -> str:  # pyarrow's InvalidRow: expected_columns, actual_columns, number, text
                ragged[row.number if row.number is not None else -1 - len(ragged)] = row.text
                return "skip"

            parse = pacsv.ParseOptions(invalid_row_handler=skip)
        # Only an empty cell is null: pyarrow's default null markers ("NA", "null", "N/A", "nan", ...) would turn
        # such IDs into nulls and lose their text in rejects.parquet ("NA" is a name, and an ID like any other).
        convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=[""])
        return ds.CsvFileFormat(parse_options=parse, convert_options=convert)
    raise DataError(f"data.format '{fmt}' is not a file format the reader streams")


def fragment_source(fragment: ds.Fragment, name: str, keys: dict[str, str], text: bool,
                    ragged: dict[int, str] | None = None) -> Source:
    """A file's fragment as a ``Source``; hive keys become constant string columns."""
    try:
        physical = fragment.physical_schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"events '{name}': cannot read it ({str(exc).splitlines()[0]})") from None
    extra = {k: v for k, v in keys.items() if k not in physical.names}
    schema = pa.schema([*physical, *(pa.field(k, pa.string()) for k in extra)])

    def add_keys(table_or_batch, columns: Sequence[str]):
        arrays = []
        for c in columns:
            if c in extra:
                arrays.append(pa.array([extra[c]] * table_or_batch.num_rows, pa.string()))
            else:
                arrays.append(table_or_batch.column(c))
        return arrays

    def batches(columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        own = [c for c in columns if c not in extra]
        for batch in fragment.to_batches(schema=physical, columns=own, batch_size=batch_size, use_threads=False):
            yield pa.RecordBatch.from_arrays(add_keys(batch, columns), names=list(columns))

    def take(columns: Sequence[str], rows: np.ndarray) -> pa.Table:
        own = [c for c in columns if c not in extra]
        table = fragment.take(pa.array(rows, pa.int64()), columns=own)
        return pa.Table.from_arrays(add_keys(table, columns), names=list(columns))

    return Source(name, schema, text or bool(extra), batches, take, ragged if ragged is not None else {})


def table_source(table: pa.Table, name: str) -> Source:
    """An in-memory table (RecBole, MovieLens) as a ``Source``."""

    def batches(columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        yield from table.select(list(columns)).to_batches(max_chunksize=batch_size)

    def take(columns: Sequence[str], rows: np.ndarray) -> pa.Table:
        return table.select(list(columns)).take(pa.array(rows, pa.int64()))

    return Source(name, table.schema, False, batches, take)


def open_sources(path: str, config: DataConfig, shard: tuple[int, int] | None = None
                 ) -> tuple[list[Source], Path | formats.ZipMember | None]:
    """The sources of ``path`` and, for RecBole/MovieLens (also in a zip), the items file beside.

    ``shard=(i, n)``: only every ``n``-th file of the sorted list from the ``i``-th (process ``i`` of
    ``n``, ``fgjax.processes.process_files``); a single-file dataset cannot be split so.
    """
    if shard is not None and shard[1] > 1:
        single = config.format in ("recbole", "movielens") or formats.is_zip(path) or (
            config.format == "auto" and format_of(Path(path)) in ("recbole", "movielens"))
        if single:
            raise DataError(f"events '{path}': a RecBole/MovieLens dataset is one events file and cannot be split "
                            f"between {shard[1]} processes; write it as several files partitioned by user")
    requested = config.format
    if requested in ("auto", "recbole", "movielens") and formats.is_zip(path):
        fmt, events, items = formats.find_zip_dataset(path)
        if requested not in ("auto", fmt):
            raise DataError(f"zip '{path}': holds {fmt} files, not data.format={requested}")
        read = formats.read_recbole_atomic if fmt == "recbole" else formats.read_movielens_udata
        return [table_source(read(events), str(events))], items
    if requested == "recbole" or (requested == "auto" and format_of(Path(path)) == "recbole"):
        inter, item = formats.find_recbole_files(path)
        return [table_source(formats.read_recbole_atomic(inter), str(inter))], item
    if requested == "movielens" or (requested == "auto" and format_of(Path(path)) == "movielens"):
        data, item = formats.find_movielens_files(path)
        return [table_source(formats.read_movielens_udata(data), str(data))], item
    files, base = list_files(path)
    fmt, files = detect_format(files, requested, path)
    if fmt == "csv" and len(files) > 1:
        # A 0-byte CSV file has no rows and not even a header (Spark writes one per empty partition): skipped,
        # where pyarrow would refuse it ("Empty CSV file"). A dataset of only such files is still refused.
        files = [f for f in files if f.stat().st_size > 0] or files[:1]
    if fmt in ("recbole", "movielens"):  # a directory or glob holding such files
        inner = path if Path(path).is_dir() else str(files[0])
        return open_sources(inner, dataclasses.replace(config, format=fmt), shard)
    if shard is not None:
        if len(files) < shard[1]:
            raise DataError(f"events '{path}': {len(files)} file(s) for {shard[1]} processes; each process reads "
                            "its own files (every N-th of the sorted list), so give at least one file per process, "
                            "partitioned by user")
        files = sorted(files, key=str)[shard[0]::shard[1]]
    cols = config.columns
    text_columns = (cols.user_id, cols.item_id, cols.timestamp, cols.event_type, cols.weight)
    filesystem = pafs.LocalFileSystem()
    sources = []
    for f in files:
        ragged: dict[int, str] = {}  # one per file: its skipped lines
        file_fmt = file_format(fmt, text_columns, ragged if fmt == "csv" else None)
        fragment = file_fmt.make_fragment(str(f.resolve()), filesystem=filesystem)
        sources.append(fragment_source(fragment, str(f), hive_keys(f, base), fmt == "csv", ragged))
    return sources, None


# ---------------------------------------------------------------- schema


def _is_string(tp: pa.DataType) -> bool:
    if pa.types.is_dictionary(tp):
        return _is_string(tp.value_type)
    return pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_string_view(tp)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to read from one source: its column names and ID kinds."""

    columns: tuple[str, ...]  # configured columns present, in user, item, timestamp, event_type, weight order
    user_kind: str  # int | string | text
    item_kind: str
    has_event_type: bool
    has_weight: bool


def _id_kind(source: Source, what: str, column: str) -> str:
    tp = source.schema.field(column).type
    if pa.types.is_integer(tp) or pa.types.is_null(tp):  # all-null: every row is rejected anyway
        return "int"
    if _is_string(tp):
        return "text" if source.text else "string"
    raise SchemaError(f"{what} '{source.name}': column '{column}' has type {tp}, expected integer or string IDs")


def check_schema(source: Source, columns: ColumnsConfig, what: str = "events") -> Plan:
    """Validate a source's schema against the data contract; no rows are read."""
    names = source.schema.names
    for key in ("user_id", "item_id", "timestamp"):
        column = getattr(columns, key)
        if column not in names:
            raise SchemaError(
                f"{what} '{source.name}': missing required column '{column}' (found: {', '.join(names)}); "
                f"set data.columns.{key} if it has another name"
            )
    user_kind = _id_kind(source, what, columns.user_id)
    item_kind = _id_kind(source, what, columns.item_id)
    ts = source.schema.field(columns.timestamp).type
    ts_ok = (
        pa.types.is_null(ts) or pa.types.is_timestamp(ts) or pa.types.is_date(ts) or pa.types.is_integer(ts)
        or pa.types.is_floating(ts) or _is_string(ts)
    )  # fmt: skip
    if not ts_ok:
        raise SchemaError(
            f"{what} '{source.name}': column '{columns.timestamp}' has type {ts}, expected {_TIMESTAMP_EXPECTED}"
        )
    has_event_type = columns.event_type in names
    if has_event_type and not _is_string_or_null(source.schema.field(columns.event_type).type):
        tp = source.schema.field(columns.event_type).type
        raise SchemaError(f"{what} '{source.name}': column '{columns.event_type}' has type {tp}, expected strings")
    has_weight = columns.weight in names
    if has_weight:
        tp = source.schema.field(columns.weight).type
        numeric = pa.types.is_floating(tp) or pa.types.is_integer(tp) or pa.types.is_null(tp)
        if not (numeric or (source.text and _is_string(tp))):
            raise SchemaError(f"{what} '{source.name}': column '{columns.weight}' has type {tp}, expected a float")
    present = [columns.user_id, columns.item_id, columns.timestamp]
    present += [columns.event_type] if has_event_type else []
    present += [columns.weight] if has_weight else []
    return Plan(tuple(present), user_kind, item_kind, has_event_type, has_weight)


# ---------------------------------------------------------------- values


def _is_string_or_null(tp: pa.DataType) -> bool:
    return _is_string(tp) or pa.types.is_null(tp)


def _plain(array: pa.Array) -> pa.Array:
    """Dictionary -> its values; string views / large strings / all-null -> string."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_null(array.type):
        array = array.cast(pa.string())
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if _is_string(array.type) and not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    return array


def _null_mask(array: pa.Array) -> np.ndarray:
    """(n,) bool, True where null."""
    return array.is_null().to_numpy(zero_copy_only=False)


def normalize_ids(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """IDs -> (int64 or string array, (n,) bool null mask); blank strings count as null."""
    if pa.types.is_null(array.type):
        array = array.cast(pa.int64())  # the "int" kind of an all-null column
    array = _plain(array)
    if pa.types.is_integer(array.type):
        try:
            return array.cast(pa.int64()), _null_mask(array)
        except pa.ArrowInvalid:  # uint64 beyond int64
            raise DataError(f"integer IDs beyond the int64 range in column of type {array.type}") from None
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(array), ""), True)
    return array, blank.to_numpy(zero_copy_only=False)


def _iso_seconds(text: str) -> float:
    """One ISO-8601 string -> epoch seconds (naive = UTC); NaN if unparseable."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return np.nan
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def iso_seconds(strings: pa.Array) -> np.ndarray:
    """(n,) float64 epoch seconds of ISO-8601 strings, NaN where unparseable.

    Fast path: Arrow's vectorized cast (naive strings, then strings with a
    zone). A batch with mixed or odd strings falls back to Python's parser
    over its distinct values.
    """
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            parsed = pc.cast(strings, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return timestamp_seconds(parsed)
    uniq = pc.unique(strings)
    values = np.array([_iso_seconds(s) for s in uniq.to_pylist()], dtype=np.float64)
    return values[pc.index_in(strings, value_set=uniq).to_numpy(zero_copy_only=False)]


def timestamp_seconds(array: pa.Array) -> np.ndarray:
    """(n,) float64 epoch seconds of an Arrow timestamp array (nulls -> NaN).

    Whole seconds and the remainder are converted apart, so microseconds
    survive the float64 conversion. Arrow stores tz-aware values in UTC.
    """
    per_second = _UNIT_PER_SECOND[array.type.unit]
    raw = pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    seconds = (raw // per_second).astype(np.float64) + (raw % per_second) / per_second
    seconds[_null_mask(array)] = np.nan
    return seconds


def epoch_seconds(array: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Timestamps -> ``(seconds (n,) float64, null (n,) bool, unparseable (n,) bool)``.

    Arrow timestamps (any unit; naive = UTC), dates (midnight UTC), int/float
    epoch seconds (NaN = null), or strings: numeric text = epoch seconds, else
    ISO 8601; blank = null.
    """
    array = _plain(array)
    tp = array.type
    unparseable = np.zeros(len(array), dtype=bool)
    if pa.types.is_timestamp(tp):
        seconds = timestamp_seconds(array)
    elif pa.types.is_date(tp):
        seconds = timestamp_seconds(array.cast(pa.timestamp("s")))
    elif pa.types.is_integer(tp) or pa.types.is_floating(tp):
        seconds = pc.fill_null(array.cast(pa.float64(), safe=False), np.nan).to_numpy(zero_copy_only=False).copy()
    else:
        trimmed = pc.utf8_trim_whitespace(array)
        blank = pc.fill_null(pc.equal(trimmed, ""), True).to_numpy(zero_copy_only=False)
        numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMERIC_TEXT), False).to_numpy(zero_copy_only=False)
        seconds = np.full(len(array), np.nan)
        if numeric.any():
            seconds[numeric] = pc.cast(trimmed.filter(pa.array(numeric)), pa.float64()).to_numpy(zero_copy_only=False)
        iso = ~blank & ~numeric
        if iso.any():
            seconds[iso] = iso_seconds(trimmed.filter(pa.array(iso)))
        unparseable = iso & np.isnan(seconds)
        return seconds, blank, unparseable
    return seconds, np.isnan(seconds), unparseable


def event_weights(names: list[str], config: DataConfig) -> np.ndarray:
    """(names,) float64 weight of each event type name (unknown names: ``unknown_event_weight``)."""
    return np.array([config.event_weights.get(t, config.unknown_event_weight) for t in names], dtype=np.float64)


@dataclasses.dataclass
class EventTypes:
    """Event type name -> a stable small code, grown as new names appear.

    Codes only serve the duplicate check, so their order does not matter.
    """

    names: list[str] = dataclasses.field(default_factory=list)
    codes: dict[str, int] = dataclasses.field(default_factory=dict)

    def encode(self, values: pa.Array) -> np.ndarray:
        """(n,) non-null strings -> (n,) int32 codes; a loop over distinct names only."""
        uniq = pc.unique(values)
        names = uniq.to_pylist()
        for name in names:
            if name not in self.codes:
                self.codes[name] = len(self.names)
                self.names.append(name)
        code_of_uniq = np.array([self.codes[n] for n in names], dtype=np.int32)
        return code_of_uniq[pc.index_in(values, value_set=uniq).to_numpy(zero_copy_only=False)]

    def unknown(self, config: DataConfig) -> np.ndarray:
        """(codes,) bool: the names that are neither in ``event_weights`` nor ``default_event_type``."""
        known = set(config.event_weights) | {config.default_event_type}
        return np.array([name not in known for name in self.names], dtype=bool)


@dataclasses.dataclass(frozen=True)
class CleanBatch:
    """One record batch after validation: per-row reasons and normalized values."""

    reason: np.ndarray  # (n,) int8 index into REASONS, -1 = used
    user: pa.Array  # (n,) int64 or string raw IDs
    item: pa.Array
    seconds: np.ndarray  # (n,) float64
    event: np.ndarray  # (n,) int32 event type code
    weight: np.ndarray  # (n,) float64


def clean_batch(batch: pa.RecordBatch, plan: Plan, config: DataConfig, event_types: EventTypes) -> CleanBatch:
    """Normalize a batch and give every row its first failing reason (or -1)."""
    cols = config.columns
    n = batch.num_rows
    user, user_null = normalize_ids(batch.column(cols.user_id))
    item, item_null = normalize_ids(batch.column(cols.item_id))
    seconds, ts_null, ts_bad = epoch_seconds(batch.column(cols.timestamp))
    in_range = (seconds >= config.min_timestamp) & (seconds <= config.max_timestamp)
    if plan.has_event_type:
        event = event_types.encode(pc.fill_null(_plain(batch.column(cols.event_type)), config.default_event_type))
    else:  # every row has the default type: one code, not a string per row
        event = np.full(n, event_types.encode(pa.array([config.default_event_type], pa.string()))[0], np.int32)
    weight = event_weights(event_types.names, config)[event]
    weight_bad = np.zeros(n, bool)
    if plan.has_weight:
        given = _plain(batch.column(cols.weight))
        if _is_string(given.type):  # CSV text or a hive partition value: parse per row
            text = pc.utf8_trim_whitespace(given)
            numeric = pc.fill_null(pc.match_substring_regex(text, _NUMERIC_TEXT), False)
            weight_bad = ~numeric.to_numpy(zero_copy_only=False) & ~_null_mask(given)
            given = pc.cast(pc.if_else(numeric, text, pa.nulls(n, pa.string())), pa.float64())
        given = pc.cast(given, pa.float64()).to_numpy(zero_copy_only=False)
        weight = np.where(np.isnan(given) & (_null_mask(batch.column(cols.weight)) | weight_bad), weight, given)
    unknown = np.zeros(n, bool)
    if config.unknown_event_types != "keep":
        unknown = event_types.unknown(config)[event]
    with np.errstate(invalid="ignore"):
        conditions = [user_null, item_null, ts_null, ts_bad, ~in_range, weight_bad, weight < 0, ~np.isfinite(weight),
                      weight > config.max_weight, unknown]
    reason = np.select(conditions, _ROW_REASONS, -1).astype(np.int8)
    return CleanBatch(reason, user, item, seconds, event, weight)


# ---------------------------------------------------------------- rejects


class RejectsWriter:
    """Writes rejected rows to Parquet as they are found (opened on first use).

    Schema: the configured columns found in any source, as strings, then
    ``reason``, ``source_file`` (string) and ``source_row`` (int64).
    """

    def __init__(self, path: str | None, columns: Sequence[str], *, user_column: str = "",
                 pseudonymizer: Pseudonymizer | None = None):
        self.path = path
        self.columns = list(columns)
        # With data.pseudonymize the user column is written as pseudonyms (of the normalized ID), never raw.
        self.user_column = user_column
        self.pseudonymizer = pseudonymizer
        self.schema = pa.schema(
            [
                *(pa.field(c, pa.string()) for c in self.columns),
                pa.field("reason", pa.string()),
                pa.field("source_file", pa.string()),
                pa.field("source_row", pa.int64()),
                pa.field("source_line", pa.int64()),
            ]
        )
        self._writer: pq.ParquetWriter | None = None
        self._closed = False

    def write(self, rows: pa.Table | pa.RecordBatch | None, reason: np.ndarray, source: str,
              row: np.ndarray | None, line: np.ndarray | pa.Array | None = None) -> None:
        """Append rejected ``rows`` (original columns; None: unknown), their (n,) reason codes, (n,) source
        rows (None: unknown) and (n,) 1-based source lines (None: unknown)."""
        if self.path is None or len(reason) == 0:
            return
        n = len(reason)
        arrays = []
        for c in self.columns:
            if rows is not None and c in rows.schema.names and self.pseudonymizer is not None \
                    and c == self.user_column:
                ids, null = normalize_ids(rows.column(c))
                arrays.append(self.pseudonymizer.apply(pc.if_else(pa.array(null), pa.nulls(n, ids.type), ids)))
            elif rows is not None and c in rows.schema.names:
                arrays.append(pc.cast(_plain(rows.column(c)), pa.string()))
            else:
                arrays.append(pa.nulls(n, pa.string()))
        arrays.append(pa.array(REASONS).take(pa.array(reason.astype(np.int64))))
        arrays.append(pa.array([source] * n, pa.string()))
        arrays.append(pa.nulls(n, pa.int64()) if row is None else pa.array(row, pa.int64()))
        arrays.append(pa.nulls(n, pa.int64()) if line is None
                      else line if isinstance(line, pa.Array) else pa.array(line, pa.int64()))
        self._open().write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, self.schema)
        return self._writer

    def close(self) -> str | None:
        """Finish the file (an empty one if nothing was rejected); returns its path.

        Closing twice is harmless."""
        if self.path is None:
            return None
        if not self._closed:
            self._open().close()
            self._closed = True
        return self.path


# ---------------------------------------------------------------- assembly


def unify_ids(chunks: list[pa.Array], kinds: list[str]) -> pa.ChunkedArray:
    """One ID type for a column across sources (see the module docstring)."""
    if all(k == "int" for k in kinds):
        return pa.chunked_array(chunks, pa.int64())
    if "string" not in kinds:
        text = pa.chunked_array([c for c, k in zip(chunks, kinds) if k == "text"], pa.string())
        if formats.as_int_ids(text) is not None:
            return pa.chunked_array([c.cast(pa.int64()) for c in chunks], pa.int64())
    return pa.chunked_array([c.cast(pa.string()) for c in chunks], pa.string())


def _mixed_ids(column: str, ints: list[str], strings: list[str], what: str = "strings") -> SchemaError:
    def files(names: list[str]) -> str:
        shown = ", ".join(f"'{n}'" for n in names[:2]) + (", ..." if len(names) > 2 else "")
        return f"{len(names)} file{'s' if len(names) != 1 else ''} ({shown})"

    return SchemaError(
        f"events: column '{column}' holds integers in {files(ints)} and {what} in {files(strings)}: the shards "
        f"disagree on the type of their IDs (7 and 's7' are never the same ID); convert them to one type, or set "
        f"data.mixed_id_types=string to read every {column} as a string"
    )


def check_id_kinds(sources: list[Source], plans: list[Plan], config: DataConfig) -> None:
    """Refuse sources whose ID columns are integers in some files and strings in others (before any row).

    Raises:
      SchemaError: naming the column and the files of each type, unless ``config.mixed_id_types`` is ``string``.
    """
    if config.mixed_id_types == "string":
        return
    for column, attr in ((config.columns.user_id, "user_kind"), (config.columns.item_id, "item_kind")):
        ints = [s.name for s, p in zip(sources, plans) if getattr(p, attr) == "int"
                and not pa.types.is_null(s.schema.field(column).type)]
        strings = [s.name for s, p in zip(sources, plans) if getattr(p, attr) == "string"]
        if ints and strings:
            raise _mixed_ids(column, ints, strings)


def _check_text_ids(chunks: list[pa.Array], kinds: list[str], kind_sources: dict[str, set[int]],
                    sources: list[Source], column: str, config: DataConfig) -> None:
    """Refuse text IDs (CSV) that are not all integers beside integer-typed sources (``check_id_kinds``'s rule).

    ``kinds`` is each chunk's ID kind; ``kind_sources`` the sources that gave each kind (``_Collected``)."""
    if config.mixed_id_types == "string" or "int" not in kinds or "text" not in kinds or "string" in kinds:
        return
    text = pa.chunked_array([c for c, k in zip(chunks, kinds) if k == "text"], pa.string())
    if formats.as_int_ids(text) is not None:
        return
    ints = sorted(sources[i].name for i in kind_sources["int"])
    strings = sorted(sources[i].name for i in kind_sources["text"])
    raise _mixed_ids(column, ints, strings, "non-integer text")


def duplicate_mask(user: np.ndarray, item: np.ndarray, seconds: np.ndarray, event: np.ndarray) -> np.ndarray:
    """(n,) bool: True for a row equal on all four keys to an earlier row.

    ``lexsort`` is stable, so within a group of equal rows the first in read
    order comes first and is the one kept.
    """
    order = np.lexsort((event, seconds, item, user))
    same = np.ones(len(order) - 1 if len(order) else 0, dtype=bool)
    for key in (user, item, seconds, event):
        sorted_key = key[order]
        same &= sorted_key[1:] == sorted_key[:-1]
    mask = np.zeros(len(order), dtype=bool)
    mask[order[1:]] = same
    return mask


def read_items_table(path: str | Path, config: DataConfig) -> tuple[pa.Array, str, pa.Array, int]:
    """Items table -> ``(item IDs, their kind, categories, rows dropped for a null item_id)``.

    Parquet/IPC/CSV with columns ``config.item_id_column`` and ``config.item_category_column``
    (the first of the listed categories when ``config.item_category_separator`` is set), a RecBole
    ``.item`` (first genre of ``class``) or a MovieLens ``u.item``.
    """
    column, id_column = config.item_category_column, config.item_id_column
    if isinstance(path, formats.ZipMember):
        read = formats.read_movielens_items if path.name == "u.item" else formats.read_recbole_items
        table = read(path)
        ids, null = normalize_ids(_plain(table.column("item_id")))
        keep = pa.array(~null)
        return ids.filter(keep), "int" if pa.types.is_integer(ids.type) else "string", \
            _plain(table.column("category")).filter(keep), int(null.sum())
    path = Path(path)
    if not path.is_file():
        raise DataError(f"items path '{path}' does not exist")
    if path.name == "u.item":
        table, column = formats.read_movielens_items(path), "category"
    elif path.suffix == ".item":
        table, column = formats.read_recbole_items(path), "category"
    else:
        fmt = format_of(path)
        if fmt not in ("parquet", "csv", "ipc"):
            raise DataError(f"items '{path}': expected a .parquet, .csv or .arrow/.feather file")
        fragment = file_format(fmt, (id_column, column)).make_fragment(
            str(path.resolve()), filesystem=pafs.LocalFileSystem()
        )
        source = fragment_source(fragment, str(path), {}, fmt == "csv")
        for name, setting_name in ((id_column, "data.item_id_column"), (column, "data.item_category_column")):
            if name not in source.schema.names:
                raise SchemaError(f"items '{path}': missing required column '{name}' ({setting_name}; found: "
                                  f"{', '.join(source.schema.names)})")
        _id_kind(source, "items", id_column)  # int or string IDs, like the events'
        table = pa.Table.from_batches(list(source.batches([id_column, column], 1 << 20)))
        table = table.rename_columns(["item_id", column])
        if config.item_category_separator:
            cells = _plain(table.column(column))
            if not _is_string(cells.type):
                raise SchemaError(f"items '{path}': data.item_category_separator is set but column '{column}' "
                                  f"has type {cells.type}, expected strings")
            first = pc.list_element(pc.split_pattern(cells, pattern=config.item_category_separator), 0)
            table = table.set_column(1, column, first)
    if table.num_rows == 0:  # else the analysis would ask for the items table it was given
        raise DataError(f"items '{path}': the table has no rows (expected one row per item: {id_column}, {column})")
    ids, null = normalize_ids(_plain(table.column("item_id")))
    kind = "int" if pa.types.is_integer(ids.type) else ("text" if format_of(path) == "csv" else "string")
    keep = pa.array(~null)
    return ids.filter(keep), kind, _plain(table.column(column)).filter(keep), int(null.sum())


@dataclasses.dataclass
class _Collected:
    """Used rows accumulated over batches, in read order."""

    users: list[pa.Array] = dataclasses.field(default_factory=list)
    user_kinds: list[str] = dataclasses.field(default_factory=list)
    items: list[pa.Array] = dataclasses.field(default_factory=list)
    item_kinds: list[str] = dataclasses.field(default_factory=list)
    seconds: list[np.ndarray] = dataclasses.field(default_factory=list)
    events: list[np.ndarray] = dataclasses.field(default_factory=list)
    weights: list[np.ndarray] = dataclasses.field(default_factory=list)
    source: list[np.ndarray] = dataclasses.field(default_factory=list)  # index into sources
    row: list[np.ndarray] = dataclasses.field(default_factory=list)  # row within that source
    # For the mixed-ID error: which sources gave each ID kind, per column ({kind: {source index}}).
    user_kind_sources: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    item_kind_sources: dict[str, set[int]] = dataclasses.field(default_factory=dict)

    def add_ids(self, user: pa.Array, user_kind: str, item: pa.Array, item_kind: str, source: int) -> None:
        """One batch's user and item IDs (all of them, or its distinct ones), their kinds and their source."""
        for ids, kinds, by_kind, values, kind in ((self.users, self.user_kinds, self.user_kind_sources, user, user_kind),
                                                  (self.items, self.item_kinds, self.item_kind_sources, item, item_kind)):
            ids.append(values)
            kinds.append(kind)
            by_kind.setdefault(kind, set()).add(source)


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def read_events(
    config: DataConfig,
    *,
    path: str | Path | None = None,
    rejects_path: str | Path | None = None,
    items_path: str | Path | None = None,
) -> EventLog:
    """Read, validate and index a behavior log (see the module docstring for the rules).

    ``path`` / ``items_path`` override ``config.path`` / ``config.items_path``.
    Rejected rows go to ``rejects_path`` (Parquet) when given. With ``config.pseudonymize`` every user ID
    (in the log and in the rejects) is its pseudonym (``fgjax.data.pseudonym``).

    Raises:
      ConfigError: ``config.pseudonymize`` is on and its secret is missing or empty.
    """
    path = str(path) if path is not None else config.path
    if not path:
        raise DataError("no events path given; set data.path to a file, directory or glob")
    pseudonymizer = Pseudonymizer.from_config(config)  # before any file is read: a missing secret stops at once
    sources, default_items = open_sources(path, config)
    plans = [check_schema(s, config.columns) for s in sources]  # every schema before any row
    check_id_kinds(sources, plans, config)
    items_path = items_path if items_path is not None else (config.items_path or default_items)
    item_table = read_items_table(items_path, config) if items_path else None
    reject_columns = [c for c in dataclasses.astuple(config.columns) if any(c in p.columns for p in plans)]
    rejects = RejectsWriter(str(rejects_path) if rejects_path is not None else None, reject_columns,
                            user_column=config.columns.user_id, pseudonymizer=pseudonymizer)
    try:
        return _read_rows(sources, plans, item_table, config, rejects, path)
    finally:
        rejects.close()  # also on errors, so a partial rejects file is still readable


class UsedRows(NamedTuple):
    """One record batch's used rows (``scan_rows``), in read order."""

    source: int  # index into the sources
    user_kind: str  # "int" | "string" | "text" (``Plan``)
    item_kind: str
    user: pa.Array  # (n,) raw IDs
    item: pa.Array
    seconds: np.ndarray  # (n,) float64
    event: np.ndarray  # (n,) int32 event type code
    weight: np.ndarray  # (n,) float64
    row: np.ndarray  # (n,) int64 row within the source


@dataclasses.dataclass
class ScanTally:
    """What ``scan_rows`` counted: rows read, rejected by reason, event types met."""

    config: DataConfig
    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(REASONS), dtype=np.int64))
    rows_read: int = 0
    event_types: "EventTypes" = dataclasses.field(default_factory=lambda: EventTypes())
    unknown_types: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    out_of_range: "_OutOfRange | None" = None

    def __post_init__(self):
        self.out_of_range = _OutOfRange(self.config)

    def unknown(self) -> dict[str, int]:
        """Rows per event type rejected as unknown."""
        return {self.event_types.names[c]: int(n) for c, n in enumerate(self.unknown_types) if n}


#: Record batches decoded ahead of the row rules, by a background thread (decoding releases the GIL, so it
#: runs beside the rules on a second core); each holds at most ``data.batch_size`` rows.
READ_AHEAD = 2


def _source_batches(sources: list[Source], plans: list[Plan], batch_size: int) -> Iterator[tuple[int, pa.RecordBatch | None]]:
    """``(source index, batch)`` of every source in order, ``(index, None)`` after each source's last batch
    (its ``ragged`` lines are then complete). A read error is raised at its place, naming the file."""
    for index, (source, plan) in enumerate(zip(sources, plans)):
        try:
            for batch in source.batches(plan.columns, batch_size):
                yield index, batch
        except pa.ArrowInvalid as exc:
            raise DataError(f"events '{source.name}': {str(exc).splitlines()[0]}") from None
        yield index, None


def scan_rows(sources: list[Source], plans: list[Plan], config: DataConfig, rejects: RejectsWriter,
              tally: ScanTally) -> Iterator[UsedRows]:
    """Every source's batches in read order: bad rows are counted in ``tally`` and written to ``rejects``
    as they come; the used rows are yielded (every rule but ``duplicate``, which needs all rows). The
    batches are decoded ``READ_AHEAD`` ahead by a thread."""
    ahead = prefetch(_source_batches(sources, plans, config.batch_size), READ_AHEAD)
    try:
        yield from _used_rows(ahead, sources, plans, config, rejects, tally)
    finally:  # stops the reading thread when the caller stops early
        ahead.close()


def _used_rows(ahead: Iterator[tuple[int, pa.RecordBatch | None]], sources: list[Source], plans: list[Plan],
               config: DataConfig, rejects: RejectsWriter, tally: ScanTally) -> Iterator[UsedRows]:
    for index, (source, plan) in enumerate(zip(sources, plans)):
        offset = 0
        try:
            for batch in iter(lambda: next(ahead)[1], None):  # this source's batches, up to its end marker
                clean = clean_batch(batch, plan, config, tally.event_types)
                rows = np.arange(offset, offset + batch.num_rows)
                offset += batch.num_rows
                used = clean.reason < 0
                tally.counts += np.bincount(clean.reason[~used], minlength=len(REASONS))
                if not used.all():
                    rejects.write(batch.filter(pa.array(~used)), clean.reason[~used], source.name, rows[~used])
                tally.out_of_range.add(clean.seconds[clean.reason == _OUT_OF_RANGE])
                if config.unknown_event_types != "keep":
                    codes = clean.event[clean.reason == _UNKNOWN_TYPE]
                    tally.unknown_types = _add_counts(
                        tally.unknown_types, np.bincount(codes, minlength=len(tally.event_types.names)))
                    if codes.size and config.unknown_event_types == "refuse":
                        raise DataError(_refused_types(source.name, tally.event_types, tally.unknown_types))
                keep = pa.array(used)
                yield UsedRows(index, plan.user_kind, plan.item_kind, clean.user.filter(keep),
                               clean.item.filter(keep), clean.seconds[used], clean.event[used], clean.weight[used],
                               rows[used])
        except pa.ArrowInvalid as exc:  # e.g. a CSV weight that is not a number
            raise DataError(f"events '{source.name}': {str(exc).splitlines()[0]}") from None
        tally.rows_read += offset
        if source.ragged:  # CSV rows with another number of fields than the header: quarantined with their line
            lines = np.array(sorted(source.ragged), dtype=np.int64)
            tally.counts[_RAGGED] += len(lines)
            tally.rows_read += len(lines)
            rejects.write(None, np.full(len(lines), _RAGGED, np.int8), source.name, None,
                          pa.array(lines, pa.int64(), mask=lines < 0))  # (a line pyarrow could not number: null)


def _read_rows(
    sources: list[Source],
    plans: list[Plan],
    item_table: tuple[pa.Array, str, pa.Array, int] | None,
    config: DataConfig,
    rejects: RejectsWriter,
    path: str,
) -> EventLog:
    """Stream every source's batches, reject bad rows as they come, then assemble."""
    got = _Collected()
    tally = ScanTally(config)
    for used in scan_rows(sources, plans, config, rejects, tally):
        got.add_ids(used.user, used.user_kind, used.item, used.item_kind, used.source)
        got.seconds.append(used.seconds)
        got.events.append(used.event)
        got.weights.append(used.weight)
        got.source.append(np.full(len(used.row), used.source, dtype=np.int32))
        got.row.append(used.row)
    return _assemble(got, item_table, config, sources, rejects, tally.counts, tally.rows_read, path,
                     tally.event_types, tally.unknown(), tally.out_of_range)


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise sum of two count vectors of possibly different lengths."""
    if len(a) < len(b):
        a = np.concatenate([a, np.zeros(len(b) - len(a), a.dtype)])
    a[: len(b)] += b
    return a


def _refused_types(name: str, event_types: EventTypes, counts: np.ndarray) -> str:
    found = ", ".join(f"{event_types.names[c]!r} ({int(n):,} rows)" for c, n in enumerate(counts) if n)
    return (f"events '{name}': event_type values not in data.event_weights: {found}; add them to "
            "data.event_weights, or set data.unknown_event_types to quarantine or keep")


class _OutOfRange:
    """What the rows outside [min_timestamp, max_timestamp] look like: their span, and how many would be
    plausible epoch seconds if they were milli-, micro- or nanoseconds."""

    UNITS = (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))

    def __init__(self, config: DataConfig):
        self.low = max(config.min_timestamp, _PLAUSIBLE_SINCE)
        self.high = config.max_timestamp
        self.n = 0
        self.min, self.max = np.inf, -np.inf
        self.as_unit = dict.fromkeys([name for name, _ in self.UNITS], 0)

    def add(self, seconds: np.ndarray) -> None:
        seconds = seconds[np.isfinite(seconds)]
        if not seconds.size:
            return
        self.n += seconds.size
        self.min, self.max = min(self.min, float(seconds.min())), max(self.max, float(seconds.max()))
        for name, factor in self.UNITS:
            scaled = seconds / factor
            self.as_unit[name] += int(((scaled >= self.low) & (scaled <= self.high)).sum())

    def hint(self, config: DataConfig) -> str:
        """Why no row was in range: the likely unit, or the span found beside the configured one."""
        if not self.n:
            return ""
        for name, count in self.as_unit.items():
            if count >= 0.9 * self.n:
                return f"; are the timestamps in {name}? they must be epoch seconds or an Arrow timestamp type"
        return (f"; the timestamps lie between {_when(self.min)} and {_when(self.max)}, outside "
                f"[{_when(config.min_timestamp)}, {_when(config.max_timestamp)}] (data.min_timestamp, "
                "data.max_timestamp): widen those if these times are right")


def _when(seconds: float) -> str:
    """Epoch seconds as an ISO-8601 UTC date (or the number, beyond the calendar)."""
    try:
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g} s"


def _assemble(
    got: _Collected,
    item_table: tuple[pa.Array, str, pa.Array, int] | None,
    config: DataConfig,
    sources: list[Source],
    rejects: RejectsWriter,
    counts: np.ndarray,
    rows_read: int,
    path: str,
    event_types: EventTypes | None = None,
    unknown: dict[str, int] | None = None,
    out_of_range: _OutOfRange | None = None,
) -> EventLog:
    """Vocabularies, duplicate removal, sort: the used rows become an ``EventLog``."""
    cols = config.columns
    _check_text_ids(got.users, got.user_kinds, got.user_kind_sources, sources, cols.user_id, config)
    _check_text_ids(got.items, got.item_kinds, got.item_kind_sources, sources, cols.item_id, config)
    user_raw = unify_ids(got.users, got.user_kinds)
    if rejects.pseudonymizer is not None:  # the only place raw user IDs become indices: pseudonyms from here on
        user_raw = pa.chunked_array([rejects.pseudonymizer.apply(user_raw)], pa.string())
    item_chunks, item_kinds = list(got.items), list(got.item_kinds)
    if item_table is not None:
        item_chunks.append(item_table[0])
        item_kinds.append(item_table[1])
    item_all = unify_ids(item_chunks, item_kinds)
    n_events = len(user_raw)
    users = Vocabulary.from_values(user_raw)
    items = Vocabulary.from_values(item_all)
    user = users.encode(user_raw)
    item = items.encode(item_all.slice(0, n_events)) if n_events else np.zeros(0, np.int32)
    seconds = _concat(got.seconds, np.float64)
    event = _concat(got.events, np.int32)
    weight = _concat(got.weights, np.float32)
    source = _concat(got.source, np.int32)
    row = _concat(got.row, np.int64)
    if config.drop_duplicates and n_events:
        dup = duplicate_mask(user, item, seconds, event)
        counts[_DUPLICATE] += dup.sum()
        _write_duplicates(rejects, sources, source[dup], row[dup])
        keep = ~dup
        user, item, seconds, weight, event = user[keep], item[keep], seconds[keep], weight[keep], event[keep]
    unknown = dict(unknown or {})
    if config.unknown_event_types == "keep" and event_types is not None and len(event):
        kept = np.bincount(event, minlength=len(event_types.names))
        unknown = {name: int(kept[c]) for c, name in enumerate(event_types.names)
                   if kept[c] and event_types.unknown(config)[c]}
    item_category, categories, items_notes = _categories(item_table, items)
    report = ReadReport(
        rows_read=rows_read,
        rows_used=len(user),
        rejected={REASONS[i]: int(c) for i, c in enumerate(counts) if c},
        rejects_path=rejects.close(),
        files=len(sources),
        items_table=items_notes,
        unknown_event_types=unknown,
        unknown_event_policy=config.unknown_event_types,
    )
    if len(user) == 0:
        hint = _units_hint(report, out_of_range, config)
        raise DataError(f"events '{path}': no valid rows ({report.summary()}){hint}")
    order = np.lexsort((user, seconds))  # stable: a user's same-time events stay in read order
    return EventLog(
        user=user[order],
        item=item[order],
        timestamp=seconds[order],
        weight=weight[order],
        users=users,
        items=items,
        item_category=item_category,
        categories=categories,
        report=report,
    )


def _units_hint(report: ReadReport, out_of_range: _OutOfRange | None, config: DataConfig) -> str:
    if out_of_range is not None and report.rejected.get("timestamp out of range", 0) > report.rows_read // 2:
        return out_of_range.hint(config)
    return ""


def _write_duplicates(rejects: RejectsWriter, sources: list[Source], source: np.ndarray, row: np.ndarray) -> None:
    """Re-read duplicate rows from their files so the rejects hold their original text."""
    if rejects.path is None:
        return
    reason = np.full(len(row), _DUPLICATE, dtype=np.int8)
    for index in np.unique(source):
        rows = np.sort(row[source == index])
        present = [c for c in rejects.columns if c in sources[index].schema.names]
        table = sources[index].take(present, rows)
        rejects.write(table, reason[: len(rows)], sources[index].name, rows)


def _categories(
    item_table: tuple[pa.Array, str, pa.Array, int] | None, items: Vocabulary
) -> tuple[np.ndarray | None, Vocabulary | None, dict[str, int]]:
    """(items,) int32 category index per item (first row of the table wins; -1 = none),
    the category vocabulary, and counts of the table rows that were not used as given."""
    if item_table is None:
        return None, None, {}
    ids, _, category, null_ids = item_table
    categories = Vocabulary.from_values(category)
    index = items.encode(ids.cast(items.type))
    code = categories.encode(category)
    first = np.unique(index, return_index=True)[1]
    item_category = np.full(len(items), -1, dtype=np.int32)
    item_category[index[first]] = code[first]
    notes = {
        "rows": len(ids) + null_ids,
        "null item_id (dropped)": null_ids,
        "repeated item_id (first row kept)": len(index) - len(first),
        "null category": int(np.sum(code[first] < 0)),
    }
    return item_category, categories, notes
