"""RecBole atomic files and MovieLens u.data / u.item, alone and through read_events."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fgjax.config import DataConfig
from fgjax.data import formats
from fgjax.data.reader import read_events
from fgjax.errors import DataError, SchemaError

ML100K = Path("/work/shared/data/ml-100k")
needs_ml100k = pytest.mark.skipif(not (ML100K / "ml-100k.inter").is_file(), reason="ml-100k not present")


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t4\t881250949\n"
    "2\t10\t\t881250950.5\n"
    "1\t12\t3.5\t881250951\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Children's Comedy\n"
    "12\tHeat\t1995\tAction Crime Thriller\n"
    "13\tUntitled\t\t\n"
)


def test_recbole_atomic_types(tmp_path):
    table = formats.read_recbole_atomic(_write(tmp_path / "d.inter", INTER))
    assert table.column_names == ["user_id", "item_id", "rating", "timestamp"]
    assert [f.type for f in table.schema] == [pa.int64(), pa.int64(), pa.float64(), pa.float64()]
    assert table.column("rating").to_pylist() == [4.0, None, 3.5]
    assert table.column("timestamp").to_pylist() == [881250949.0, 881250950.5, 881250951.0]


def test_recbole_tokens_that_are_not_canonical_ints_stay_strings(tmp_path):
    text = "user_id:token\titem_id:token\tzip:token\n007\ta1\t123\n7\ta2\t456\n"
    table = formats.read_recbole_atomic(_write(tmp_path / "d.inter", text))
    assert table.column("user_id").to_pylist() == ["007", "7"]  # "007" != "7"
    assert table.column("item_id").type == pa.string()
    assert table.column("zip").to_pylist() == [123, 456]


def test_recbole_bad_header(tmp_path):
    f = _write(tmp_path / "d.inter", "user_id\titem_id:token\n1\t2\n")
    with pytest.raises(SchemaError) as err:
        formats.read_recbole_atomic(f)
    assert str(err.value) == (
        f"recbole '{f}': header field 'user_id' is not name:type with type one of token, token_seq, float, float_seq"
    )
    with pytest.raises(DataError, match=r"recbole file '.*missing.inter' does not exist"):
        formats.read_recbole_atomic(tmp_path / "missing.inter")


def test_recbole_ragged_row_is_a_data_error(tmp_path):
    f = _write(tmp_path / "d.inter", "user_id:token\titem_id:token\n1\t2\n3\n")
    with pytest.raises(DataError, match=rf"recbole '{f}': .*"):
        formats.read_recbole_atomic(f)


def test_recbole_items_first_genre(tmp_path):
    table = formats.read_recbole_items(_write(tmp_path / "d.item", ITEM))
    assert table.to_pydict() == {"item_id": [10, 12, 13], "category": ["Animation", "Action", None]}
    with pytest.raises(SchemaError, match=r"missing column 'genre'"):
        formats.read_recbole_items(tmp_path / "d.item", category_field="genre")


def test_read_events_recbole_dataset_directory(tmp_path):
    _write(tmp_path / "d" / "d.inter", INTER)
    _write(tmp_path / "d" / "d.item", ITEM)
    log = read_events(DataConfig(format="recbole", path=str(tmp_path / "d")))
    assert log.users.values.to_pylist() == [1, 2]
    assert log.items.values.to_pylist() == [10, 12, 13]  # 13 from the .item catalog
    assert log.categories.values.to_pylist() == ["Action", "Animation"]
    assert log.item_category.tolist() == [1, 0, -1]
    assert log.timestamp.tolist() == [881250949.0, 881250950.5, 881250951.0]
    # Auto format from the .inter extension; the rating column can be the weight.
    cfg = DataConfig(columns=dataclasses.replace(DataConfig().columns, weight="rating"))
    log = read_events(cfg, path=tmp_path / "d" / "d.inter")
    assert log.weight.tolist() == [4.0, 1.0, 3.5]  # the null rating takes the click weight


def test_recbole_directory_without_inter_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"expected d.inter or a single .inter file, found none"):
        read_events(DataConfig(format="recbole", path=str(tmp_path / "d")))


UDATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n"
UITEM = (
    "242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "302|L.A. Confidential (1997)|01-Jan-1997||http://y|0|0|0|0|0|0|1|0|0|1|0|0|0|1|0|0|1|0|0\n"
    "303|Caf\xe9 (1997)|01-Jan-1997||http://z|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


def test_movielens_udata(tmp_path):
    table = formats.read_movielens_udata(_write(tmp_path / "u.data", UDATA))
    assert table.schema == pa.schema(
        [("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float64()), ("timestamp", pa.int64())]
    )
    assert table.column("user_id").to_pylist() == [196, 186, 196]
    assert table.column("timestamp").to_pylist() == [881250949, 891717742, 881250950]


def test_movielens_udata_bad_file(tmp_path):
    f = _write(tmp_path / "u.data", "196\t242\t3\n")
    with pytest.raises(DataError, match=rf"movielens '{f}': "):
        formats.read_movielens_udata(f)


def test_movielens_items_latin1(tmp_path):
    table = formats.read_movielens_items(_write(tmp_path / "u.item", UITEM, encoding="latin-1"))
    assert table.to_pydict() == {"item_id": [242, 302, 303], "category": ["Comedy", "Crime", None]}


def test_read_events_movielens_file_and_directory(tmp_path):
    _write(tmp_path / "ml" / "u.data", UDATA)
    _write(tmp_path / "ml" / "u.item", UITEM, encoding="latin-1")
    for path, fmt in ((tmp_path / "ml", "movielens"), (tmp_path / "ml" / "u.data", "auto")):
        log = read_events(DataConfig(format=fmt), path=path)
        assert log.users.values.to_pylist() == [186, 196]
        assert log.items.values.to_pylist() == [242, 302, 303]
        assert log.categories.values.to_pylist() == ["Comedy", "Crime"]
        assert log.item_category.tolist() == [0, 1, -1]
        assert log.timestamp.tolist() == [881250949, 881250950, 891717742]
        assert log.user.tolist() == [1, 1, 0]


@pytest.fixture(scope="module")
def ml100k_expected():
    """Counts and first genres computed by plain Python, independent of the readers."""
    rows = (ML100K / "ml-100k.inter").read_text().splitlines()[1:]
    fields = [r.split("\t") for r in rows]
    first_genre = {}
    for line in (ML100K / "ml-100k.item").read_text().splitlines()[1:]:
        item, _, _, classes = line.split("\t")
        first_genre[int(item)] = classes.split()[0] if classes.split() else None
    return {
        "rows": len(fields),
        "users": len({f[0] for f in fields}),
        "items": len({f[1] for f in fields}),
        "min_ts": min(float(f[3]) for f in fields),
        "first_genre": first_genre,
    }


@needs_ml100k
def test_ml100k_recbole(ml100k_expected, tmp_path):
    log = read_events(DataConfig(format="recbole", path=str(ML100K)), rejects_path=tmp_path / "r.parquet")
    assert ml100k_expected["rows"] == 100_000
    assert log.report.rows_read == log.report.rows_used == 100_000 and log.report.rejected == {}
    assert (log.num_users, log.num_items) == (943, 1682) == (ml100k_expected["users"], ml100k_expected["items"])
    assert log.users.type == pa.int64() and log.items.type == pa.int64()
    assert log.timestamp[0] == ml100k_expected["min_ts"] and np.all(np.diff(log.timestamp) >= 0)
    genres = ml100k_expected["first_genre"]
    assert len(log.categories) == len(set(genres.values()))
    decoded = log.categories.decode(log.item_category).to_pylist()
    assert dict(zip(log.items.values.to_pylist(), decoded)) == genres
    # The .inter file itself, format from its extension, gives the same arrays.
    again = read_events(DataConfig(), path=ML100K / "ml-100k.inter")
    np.testing.assert_array_equal(again.user, log.user)
    np.testing.assert_array_equal(again.item, log.item)


@needs_ml100k
def test_ml100k_atomic_user_file():
    table = formats.read_recbole_atomic(ML100K / "ml-100k.user")
    assert table.num_rows == 943
    assert table.column_names == ["user_id", "age", "gender", "occupation", "zip_code"]
    assert table.column("user_id").type == pa.int64()
    assert table.column("zip_code").type == pa.string()  # some zip codes are not integers
