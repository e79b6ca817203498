"""Readers for public recommender-dataset file formats, as Arrow tables.

- RecBole atomic files (``.inter``, ``.item``, ``.user``): tab-separated with a
  ``name:type`` header; types ``token``, ``token_seq``, ``float``, ``float_seq``.
- Either of these inside a zip archive, e.g. the ``recbole`` wheel from
  ``pip download --no-deps recbole==1.2.1`` (its ``dataset_example/ml-100k``):
  the members are read from the archive, nothing is extracted.
- The original MovieLens-100K ``u.data`` (``user item rating timestamp``, tab
  separated, no header) and ``u.item`` (``|``-separated, Latin-1, 19 genre flags).

The tables use the data contract's column names (``user_id``, ``item_id``,
``timestamp``, ...), so ``fgjax.data.reader.read_events`` streams them like any
other source. ID-like columns become int64 when every value is a canonical
decimal integer and stay strings otherwise, the same rule for every file, so
the IDs of an ``.inter`` and its ``.item`` match.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fgjax.errors import DataError, SchemaError

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
MOVIELENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# No leading zeros ("007" is a different ID from "7") and within int64.
_CANONICAL_INT = r"^(0|-?[1-9][0-9]{0,18})$"


def as_int_ids(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray | None:
    """String IDs -> int64 when every non-null value is a canonical integer, else None.

    Checks the distinct values only, so it is cheap on long columns.
    """
    uniq = pc.drop_null(pc.unique(values))
    if len(uniq) and not pc.all(pc.match_substring_regex(uniq, _CANONICAL_INT)).as_py():
        return None
    try:
        return pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # 19 digits beyond int64
        return None


@dataclasses.dataclass(frozen=True)
class ZipMember:
    """A file inside a zip archive (``str()`` is ``ARCHIVE!MEMBER``, the name in messages)."""

    archive: Path
    member: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.member).name

    def read(self) -> bytes:
        with zipfile.ZipFile(self.archive) as archive:
            return archive.read(self.member)

    def __str__(self) -> str:
        return f"{self.archive}!{self.member}"


Readable = str | Path | ZipMember


def _require_file(path: Readable, what: str) -> Path | ZipMember:
    if isinstance(path, ZipMember):
        return path
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file '{path}' does not exist")
    return path


def _binary(path: Path | ZipMember):
    """What ``pyarrow.csv.read_csv`` reads: the path, or the member's bytes."""
    return pa.BufferReader(path.read()) if isinstance(path, ZipMember) else path


def is_zip(path: str | Path) -> bool:
    """A zip archive (``.zip``, ``.whl``, ...) by content, not by name."""
    path = Path(path)
    return path.is_file() and zipfile.is_zipfile(path)


def find_zip_dataset(path: str | Path) -> tuple[str, ZipMember, ZipMember | None]:
    """``(format, events member, items member or None)`` of a zip archive.

    The archive must hold exactly one RecBole ``.inter`` file or, failing
    that, one MovieLens ``u.data``; the items are the ``.item`` (``u.item``)
    beside it.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
    for fmt, is_events, items_of in (
        ("recbole", lambda n: n.endswith(".inter"), lambda n: n[: -len(".inter")] + ".item"),
        ("movielens", lambda n: PurePosixPath(n).name == "u.data", lambda n: n[: -len("u.data")] + "u.item"),
    ):
        found = [n for n in names if is_events(n)]
        if len(found) > 1:
            raise DataError(f"zip '{path}': holds several {fmt} event files ({', '.join(found)}); expected one")
        if found:
            items = items_of(found[0])
            return fmt, ZipMember(path, found[0]), ZipMember(path, items) if items in names else None
    raise DataError(f"zip '{path}': holds no RecBole .inter file and no MovieLens u.data")


def _read_tsv(path: Path | ZipMember, what: str, **options) -> pa.Table:
    """``pyarrow.csv.read_csv`` with tabs, no quoting, errors as one-line DataErrors."""
    read_options = options.pop("read_options")
    convert_options = options.pop("convert_options")
    delimiter = options.pop("delimiter", "\t")
    try:
        return pacsv.read_csv(
            _binary(path),
            read_options=read_options,
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=convert_options,
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise DataError(f"{what} '{path}': {str(exc).splitlines()[0]}") from None


def recbole_header(path: Path | ZipMember) -> list[tuple[str, str]]:
    """``[(name, type), ...]`` from a RecBole atomic file's first line."""
    try:
        if isinstance(path, ZipMember):
            first = io.BytesIO(path.read()).readline().decode("utf-8").rstrip("\r\n")
        else:
            with open(path, encoding="utf-8") as f:
                first = f.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataError(f"recbole '{path}': the header is not UTF-8 text") from None
    fields = []
    for raw in first.split("\t"):
        name, sep, kind = raw.rpartition(":")
        if not sep or kind not in RECBOLE_TYPES or not name:
            raise SchemaError(
                f"recbole '{path}': header field '{raw}' is not name:type with type one of {', '.join(RECBOLE_TYPES)}"
            )
        fields.append((name, kind))
    return fields


def read_recbole_atomic(path: Readable) -> pa.Table:
    """A RecBole atomic file as a table with the ``:type`` suffixes stripped.

    ``float`` columns are float64; ``token`` columns are int64 if all their
    values are canonical integers, else strings; ``token_seq`` and
    ``float_seq`` stay space-separated strings. Empty fields are null.
    """
    path = _require_file(path, "recbole")
    header = recbole_header(path)
    names = [name for name, _ in header]
    column_types = {name: pa.float64() if kind == "float" else pa.string() for name, kind in header}
    table = _read_tsv(
        path,
        "recbole",
        read_options=pacsv.ReadOptions(skip_rows=1, column_names=names),
        convert_options=pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True),
    )
    for i, (name, kind) in enumerate(header):
        if kind == "token":
            ints = as_int_ids(table.column(i))
            if ints is not None:
                table = table.set_column(i, name, ints)
    return table


def read_recbole_items(path: Readable, category_field: str = "class") -> pa.Table:
    """``(item_id, category)`` from a RecBole ``.item`` file.

    The category is the first genre of the space-separated ``category_field``
    (``class`` in ml-100k.item, e.g. "Animation Children's Comedy" ->
    "Animation"); null when the field is empty.
    """
    table = read_recbole_atomic(path)
    for name in ("item_id", category_field):
        if name not in table.column_names:
            raise SchemaError(
                f"recbole '{path}': missing column '{name}' (found: {', '.join(table.column_names)})"
            )
    first = pc.extract_regex(table.column(category_field), r"^\s*(?P<first>\S+)")
    return pa.table({"item_id": table.column("item_id"), "category": pc.struct_field(first, "first")})


def read_movielens_udata(path: Readable) -> pa.Table:
    """MovieLens-100K ``u.data``: ``(user_id int64, item_id int64, rating float64, timestamp int64)``.

    The timestamp is in epoch seconds, UTC.
    """
    path = _require_file(path, "movielens")
    names = ["user_id", "item_id", "rating", "timestamp"]
    types = [pa.int64(), pa.int64(), pa.float64(), pa.int64()]
    return _read_tsv(
        path,
        "movielens",
        read_options=pacsv.ReadOptions(column_names=names),
        convert_options=pacsv.ConvertOptions(column_types=dict(zip(names, types))),
    )


def read_movielens_items(path: Readable) -> pa.Table:
    """MovieLens-100K ``u.item`` -> ``(item_id int64, category string)``.

    The category is the first genre whose flag is set, in the file's genre
    order (the order RecBole's ``class`` column uses); null when none is.
    """
    path = _require_file(path, "movielens")
    flags = [f"g{i}" for i in range(len(MOVIELENS_GENRES))]
    names = ["item_id", "title", "release_date", "video_release_date", "url", *flags]
    table = _read_tsv(
        path,
        "movielens",
        delimiter="|",
        read_options=pacsv.ReadOptions(column_names=names, encoding="latin-1"),
        convert_options=pacsv.ConvertOptions(
            column_types={"item_id": pa.int64(), **{f: pa.int8() for f in flags}}, include_columns=["item_id", *flags]
        ),
    )
    matrix = np.stack([table.column(f).to_numpy(zero_copy_only=False) for f in flags], axis=1) > 0  # (items, genres)
    first = np.argmax(matrix, axis=1)
    genres = pa.array(MOVIELENS_GENRES).take(pa.array(first, mask=~matrix.any(axis=1)))
    return pa.table({"item_id": table.column("item_id"), "category": genres})


def find_recbole_files(path: str | Path) -> tuple[Path, Path | None]:
    """``(inter, item or None)`` for a ``.inter`` file or a RecBole dataset directory.

    In a directory ``NAME/`` the interactions are ``NAME/NAME.inter`` (RecBole's
    layout) or its only ``.inter`` file. The items are the ``.item`` beside.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.inter"))
        own = path / f"{path.name}.inter"
        if own.is_file():
            inter = own
        elif len(candidates) == 1:
            inter = candidates[0]
        else:
            found = ", ".join(c.name for c in candidates) or "none"
            raise DataError(f"recbole directory '{path}': expected {own.name} or a single .inter file, found {found}")
    elif path.is_file():
        inter = path
    else:
        raise DataError(f"events path '{path}' does not exist")
    item = inter.with_suffix(".item")
    return inter, item if item.is_file() else None


def find_movielens_files(path: str | Path) -> tuple[Path, Path | None]:
    """``(u.data, u.item or None)`` for a ``u.data`` file or its directory."""
    path = Path(path)
    data = path / "u.data" if path.is_dir() else path
    if not data.is_file():
        raise DataError(f"events path '{data}' does not exist")
    item = data.parent / "u.item"
    return data, item if item.is_file() else None
