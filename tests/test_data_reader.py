"""The event reader: schema checks, row rules, rejects, inputs, timestamps, IDs."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgjax.config import ColumnsConfig, DataConfig
from fgjax.data.reader import REASONS, ReadReport, read_events
from fgjax.errors import DataError, SchemaError

T0 = 1767225600  # 2026-01-01T00:00:00Z
CFG = DataConfig()


def write(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    elif path.suffix in (".arrow", ".feather"):
        feather.write_feather(table, path)
    else:
        pq.write_table(table, path)
    return path


def events(user, item, ts, **extra) -> pa.Table:
    return pa.table({"user_id": user, "item_id": item, "timestamp": ts, **extra})


def read(path, **kwargs) -> object:
    config = kwargs.pop("config", CFG)
    return read_events(config, path=path, **kwargs)


# ---------------------------------------------------------------- basic values


def test_reads_values_sorted_with_vocabularies(tmp_path):
    f = write(
        tmp_path / "e.parquet",
        events(
            [30, 10, 20, 10],
            [7, 5, 5, 9],
            pa.array([T0 + 5, T0 + 1, T0 + 1, T0 + 3], pa.int64()),
            event_type=["purchase", "view", "cart", "mystery"],
        ),
    )
    log = read(f, config=dataclasses.replace(CFG, unknown_event_types="keep"))
    assert log.users.values.to_pylist() == [10, 20, 30]
    assert log.items.values.to_pylist() == [5, 7, 9]
    assert log.user.dtype == np.int32 and log.item.dtype == np.int32
    assert log.timestamp.dtype == np.float64 and log.weight.dtype == np.float32
    # Sorted by (timestamp, user, item): (T0+1, 10, 5), (T0+1, 20, 5), (T0+3, 10, 9), (T0+5, 30, 7).
    assert log.user.tolist() == [0, 1, 0, 2]
    assert log.item.tolist() == [0, 0, 2, 1]
    assert log.timestamp.tolist() == [T0 + 1, T0 + 1, T0 + 3, T0 + 5]
    assert log.weight.tolist() == [0.5, 2.0, 1.0, 4.0]  # view, cart, unknown -> unknown_event_weight, purchase
    assert (log.num_users, log.num_items, log.num_events) == (3, 3, 4)
    assert log.item_category is None and log.categories is None
    assert log.report == ReadReport(rows_read=4, rows_used=4, rejected={}, rejects_path=None, files=1,
                                    unknown_event_types={"mystery": 1}, unknown_event_policy="keep")
    assert log.report.summary().endswith("event types not in data.event_weights kept at data.unknown_event_weight "
                                         "(mystery: 1)")


def test_default_event_type_and_weight_column(tmp_path):
    f = write(tmp_path / "e.parquet", events([1, 2, 3], [1, 1, 1], [T0, T0, T0], weight=[3.0, None, 0.0]))
    cfg = dataclasses.replace(CFG, default_event_type="purchase")
    log = read(f, config=cfg)
    assert log.weight.tolist() == [3.0, 4.0, 0.0]  # a null weight takes the event type's weight


def test_null_event_type_is_repaired_to_default(tmp_path):
    f = write(tmp_path / "e.parquet", events([1, 2], [1, 1], [T0, T0], event_type=["cart", None]))
    log = read(f)
    assert log.weight.tolist() == [2.0, 1.0]  # cart, default click
    assert log.report.rejected == {}


def test_summary_line():
    report = ReadReport(120_400, 120_100, {"null user_id": 200, "duplicate": 100}, None, 4)
    assert report.summary() == (
        "read 120,400 rows from 4 files: used 120,100, rejected 300 (duplicate: 100, null user_id: 200)"
    )
    assert ReadReport(5, 5, {}, None, 1).summary() == "read 5 rows from 1 file: used 5, rejected 0"
    assert ReadReport(5, 4, {"duplicate": 1}, "r.parquet", 1).summary().endswith("; rejects in 'r.parquet'")


# ---------------------------------------------------------------- bad rows, one reason each


def _read_with_rejects(tmp_path, table, config=CFG):
    f = write(tmp_path / "e.parquet", table)
    rejects = tmp_path / "rejects.parquet"
    log = read(f, config=config, rejects_path=rejects)
    return log, pq.read_table(rejects).to_pylist(), str(f)


def test_null_user_id_rows_are_rejected(tmp_path):
    log, rejected, f = _read_with_rejects(tmp_path, events([1, None, 3], [1, 2, 3], [T0, T0, T0]))
    assert log.report.rejected == {"null user_id": 1}
    assert (log.report.rows_read, log.report.rows_used) == (3, 2)
    assert rejected == [
        {
            "user_id": None, "item_id": "2", "timestamp": str(T0), "reason": "null user_id",
            "source_file": f, "source_row": 1, "source_line": None,
        }  # fmt: skip
    ]


def test_null_and_blank_string_ids_are_rejected(tmp_path):
    table = events(["a", "b", "", "c"], ["x", None, "y", "  "], [T0] * 4)
    log, rejected, _ = _read_with_rejects(tmp_path, table)
    assert log.report.rejected == {"null item_id": 2, "null user_id": 1}
    assert [r["reason"] for r in rejected] == ["null item_id", "null user_id", "null item_id"]
    assert log.users.values.to_pylist() == ["a"]


def test_null_timestamp_rows_are_rejected(tmp_path):
    ts = pa.array([T0, None, T0 + 1], pa.timestamp("s"))
    log, rejected, _ = _read_with_rejects(tmp_path, events([1, 2, 3], [1, 1, 1], ts))
    assert log.report.rejected == {"null timestamp": 1}
    assert rejected[0]["user_id"] == "2" and rejected[0]["timestamp"] is None


def test_all_null_columns_are_null_rows_not_schema_errors(tmp_path):
    table = pa.table(
        {
            "user_id": [1, 2],
            "item_id": [1, 1],
            "timestamp": [T0, T0],
            "event_type": pa.nulls(2),
            "weight": pa.nulls(2),
        }
    )
    log, _, _ = _read_with_rejects(tmp_path, table)
    assert log.weight.tolist() == [1.0, 1.0]  # default click
    nulls = events(pa.nulls(2), [1, 1], [T0, T0])
    with pytest.raises(DataError, match=r"no valid rows .*null user_id: 2"):
        read(write(tmp_path / "n.parquet", nulls))


def test_nan_epoch_timestamp_counts_as_null(tmp_path):
    log, _, _ = _read_with_rejects(tmp_path, events([1, 2], [1, 1], [float(T0), float("nan")]))
    assert log.report.rejected == {"null timestamp": 1}


def test_unparseable_timestamp_rows_are_rejected(tmp_path):
    ts = ["2026-01-01T00:00:00", "yesterday", "2026-13-45", "2026-01-02"]
    log, rejected, _ = _read_with_rejects(tmp_path, events([1, 2, 3, 4], [1, 1, 1, 1], ts))
    assert log.report.rejected == {"unparseable timestamp": 2}
    assert [r["timestamp"] for r in rejected] == ["yesterday", "2026-13-45"]
    assert [r["source_row"] for r in rejected] == [1, 2]
    assert sorted(log.timestamp.tolist()) == [T0, T0 + 86400]


def test_out_of_range_timestamps_are_rejected(tmp_path):
    cfg = dataclasses.replace(CFG, min_timestamp=T0, max_timestamp=T0 + 100)
    ts = [T0 - 1, T0, T0 + 100, T0 + 101, float("inf")]
    log, rejected, _ = _read_with_rejects(tmp_path, events([1, 2, 3, 4, 5], [1] * 5, ts), cfg)
    assert log.report.rejected == {"timestamp out of range": 3}
    assert [r["user_id"] for r in rejected] == ["1", "4", "5"]
    assert log.timestamp.tolist() == [T0, T0 + 100]  # the bounds are inclusive


def test_negative_weight_rows_are_rejected(tmp_path):
    table = events([1, 2, 3], [1, 1, 1], [T0] * 3, weight=[1.0, -0.5, 0.0])
    log, rejected, _ = _read_with_rejects(tmp_path, table)
    assert log.report.rejected == {"negative weight": 1}
    assert rejected[0]["weight"] == "-0.5"


def test_non_finite_weight_rows_are_rejected(tmp_path):
    table = events([1, 2, 3, 4], [1, 1, 1, 1], [T0] * 4, weight=[1.0, float("nan"), float("inf"), float("-inf")])
    log, _, _ = _read_with_rejects(tmp_path, table)
    # -inf is negative first (the rule order), NaN and +inf are non-finite.
    assert log.report.rejected == {"non-finite weight": 2, "negative weight": 1}
    assert log.weight.tolist() == [1.0]


def test_weights_past_max_weight_are_rejected(tmp_path):
    table = events([1, 2, 3, 4], [1, 1, 1, 1], [T0] * 4, weight=[1e9, 1e20, 2e9, float("inf")])
    log, rejected, _ = _read_with_rejects(tmp_path, table)
    # The bound is inclusive; inf is non-finite first (the rule order).
    assert log.report.rejected == {"weight too large": 2, "non-finite weight": 1}
    assert log.weight.tolist() == [1e9]
    assert sorted(r["weight"] for r in rejected if r["reason"] == "weight too large") == ["1e+20", "2000000000"]


def test_duplicates_keep_the_first(tmp_path):
    table = events(
        [1, 1, 1, 1, 2],
        [5, 5, 5, 5, 5],
        [T0, T0, T0, T0 + 1, T0],
        event_type=["view", "view", "click", "view", "view"],
        weight=[1.0, 9.0, 1.0, 1.0, 1.0],
    )
    log, rejected, f = _read_with_rejects(tmp_path, table)
    assert log.report.rejected == {"duplicate": 1}
    assert log.report.rows_used == 4
    # The first of the two identical (1, 5, T0, view) rows is kept, weight 1 not 9.
    assert 9.0 not in log.weight.tolist()
    assert rejected == [
        {
            "user_id": "1", "item_id": "5", "timestamp": str(T0), "event_type": "view", "weight": "9",
            "reason": "duplicate", "source_file": f, "source_row": 1, "source_line": None,
        }  # fmt: skip
    ]


def test_duplicates_across_files_and_batches(tmp_path):
    write(tmp_path / "d" / "a.parquet", events([1, 2], [1, 1], [T0, T0]))
    write(tmp_path / "d" / "b.parquet", events([2, 1, 1], [1, 1, 1], [T0, T0, T0 + 1]))
    log = read(tmp_path / "d", config=dataclasses.replace(CFG, batch_size=1), rejects_path=tmp_path / "r.parquet")
    assert log.report.rejected == {"duplicate": 2}
    rejected = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [(Path(r["source_file"]).name, r["source_row"]) for r in rejected] == [("b.parquet", 0), ("b.parquet", 1)]


def test_duplicates_kept_when_not_dropping(tmp_path):
    f = write(tmp_path / "e.parquet", events([1, 1], [1, 1], [T0, T0]))
    log = read(f, config=dataclasses.replace(CFG, drop_duplicates=False))
    assert log.report.rows_used == 2 and log.report.rejected == {}


def test_first_failing_reason_wins(tmp_path):
    table = events([None, 1], [None, 1], ["garbage", "garbage"], weight=[-1.0, -1.0])
    f = write(tmp_path / "e.parquet", table)
    with pytest.raises(DataError) as err:
        read(f, rejects_path=tmp_path / "r.parquet")
    assert "null user_id: 1" in str(err.value) and "unparseable timestamp: 1" in str(err.value)
    assert [r["reason"] for r in pq.read_table(tmp_path / "r.parquet").to_pylist()] == [
        "null user_id", "unparseable timestamp"
    ]  # fmt: skip


def test_rejects_file_is_written_even_when_empty(tmp_path):
    f = write(tmp_path / "e.parquet", events([1], [1], [T0]))
    log = read(f, rejects_path=tmp_path / "sub" / "r.parquet")
    assert log.report.rejects_path == str(tmp_path / "sub" / "r.parquet")
    table = pq.read_table(tmp_path / "sub" / "r.parquet")
    assert table.num_rows == 0
    assert table.schema.names == ["user_id", "item_id", "timestamp", "reason", "source_file", "source_row",
                                  "source_line"]


def test_no_rejects_file_without_a_path(tmp_path):
    f = write(tmp_path / "e.parquet", events([None, 1], [1, 1], [T0, T0]))
    log = read(f)
    assert log.report.rejects_path is None and log.report.rejected == {"null user_id": 1}


def test_no_valid_rows_is_a_data_error_with_a_units_hint(tmp_path):
    f = write(tmp_path / "e.parquet", events([1, 2], [1, 1], [T0 * 1000, T0 * 1000]))  # milliseconds
    with pytest.raises(DataError, match=r"no valid rows \(read 2 rows .*timestamp out of range: 2\).*milliseconds"):
        read(f)
    f = write(tmp_path / "ns.parquet", events([1, 2], [1, 1], [T0 * 10**9, T0 * 10**9 + 5]))
    with pytest.raises(DataError, match=r"are the timestamps in nanoseconds\?"):
        read(f)


@pytest.mark.parametrize("times, span", [
    ([-3.1e8, -3e8], "between 1960-03-06 .* and 1960-06-29 .*, outside \\[1970-01-01 00:00:00 UTC, 2100-01-01"),
    ([7.3e9, 7.31e9], "between 2201-04-30 .* and 2201-08-24 .*, outside"),
])
def test_out_of_range_times_that_are_not_another_unit_name_their_span(tmp_path, times, span):
    f = write(tmp_path / "e.parquet", events([1, 2], [1, 1], times))
    with pytest.raises(DataError, match=span) as info:
        read(f)
    assert "milliseconds" not in str(info.value) and "data.min_timestamp, data.max_timestamp" in str(info.value)


row_values = st.tuples(
    st.one_of(st.none(), st.integers(1, 3)),
    st.one_of(st.none(), st.integers(1, 3)),
    st.one_of(st.none(), st.sampled_from([T0, T0 + 1, -5, 5e9])),
    st.sampled_from(["view", "click", None]),
    st.one_of(st.none(), st.sampled_from([1.0, -1.0, float("nan"), 2.0])),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_values, min_size=1, max_size=30))
def test_rows_read_equals_used_plus_rejected(tmp_path, rows):
    cols = list(zip(*rows))
    table = pa.table(
        {
            "user_id": pa.array(cols[0], pa.int64()),
            "item_id": pa.array(cols[1], pa.int64()),
            "timestamp": pa.array(cols[2], pa.float64()),
            "event_type": pa.array(cols[3], pa.string()),
            "weight": pa.array(cols[4], pa.float64()),
        }
    )
    f = write(tmp_path / "h.parquet", table)
    rejects = tmp_path / "h_rejects.parquet"
    try:
        log = read(f, rejects_path=rejects)
        report = log.report
        assert report.rows_used == log.num_events
    except DataError:
        report = None
    n_rejects = pq.read_metadata(rejects).num_rows
    if report is not None:
        assert report.rows_read == len(rows) == report.rows_used + sum(report.rejected.values())
        assert n_rejects == sum(report.rejected.values())
        assert set(report.rejected) <= set(REASONS)
    else:
        assert n_rejects == len(rows)  # nothing usable: every row is in the rejects file


# ---------------------------------------------------------------- schema errors


def test_missing_required_column(tmp_path):
    f = write(tmp_path / "x.parquet", pa.table({"user_id": [1], "item_id": [1]}))
    with pytest.raises(SchemaError) as err:
        read(f)
    assert str(err.value) == (
        f"events '{f}': missing required column 'timestamp' (found: user_id, item_id); "
        "set data.columns.timestamp if it has another name"
    )


def test_wrong_timestamp_type(tmp_path):
    f = write(tmp_path / "x.parquet", events([1], [1], [True]))
    with pytest.raises(SchemaError) as err:
        read(f)
    assert str(err.value) == (
        f"events '{f}': column 'timestamp' has type bool, "
        "expected an Arrow timestamp, epoch seconds (int/float) or ISO-8601 strings"
    )


def test_wrong_id_type(tmp_path):
    f = write(tmp_path / "x.parquet", events([1.5], [1], [T0]))
    with pytest.raises(SchemaError, match=r"column 'user_id' has type double, expected integer or string IDs"):
        read(f)


def test_wrong_event_type_and_weight_types(tmp_path):
    f = write(tmp_path / "x.parquet", events([1], [1], [T0], event_type=[3]))
    with pytest.raises(SchemaError, match=r"column 'event_type' has type int64, expected strings"):
        read(f)
    g = write(tmp_path / "y.parquet", events([1], [1], [T0], weight=["heavy"]))
    with pytest.raises(SchemaError, match=r"y\.parquet': column 'weight' has type string, expected a float"):
        read(g)


def test_schema_is_checked_before_any_row(tmp_path):
    # The second file is bad: nothing is read, no rejects file is started.
    write(tmp_path / "d" / "a.parquet", events(pa.array([None], pa.int64()), [1], [T0]))
    write(tmp_path / "d" / "b.parquet", pa.table({"user_id": [1], "item_id": [1], "ts": [T0]}))
    with pytest.raises(SchemaError, match=r"b.parquet': missing required column 'timestamp'"):
        read(tmp_path / "d", rejects_path=tmp_path / "r.parquet")
    assert not (tmp_path / "r.parquet").exists()


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        read(tmp_path / "nope.parquet")
    assert str(err.value) == f"events path '{tmp_path / 'nope.parquet'}' does not exist"
    with pytest.raises(DataError, match=r"events glob '.*\*.parquet' matched no files"):
        read(str(tmp_path / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"events directory '.*empty' holds no data files"):
        read(tmp_path / "empty")
    with pytest.raises(DataError, match=r"no events path given; set data.path"):
        read_events(CFG)


def test_not_a_parquet_file(tmp_path):
    f = tmp_path / "x.parquet"
    f.write_text("hello, this is not a parquet file")
    with pytest.raises(DataError, match=rf"events '{f}': cannot read it \(.*magic bytes"):
        read(f)


def test_unknown_extension_needs_a_format(tmp_path):
    f = write(tmp_path / "x.parquet", events([1], [1], [T0]))
    g = f.rename(tmp_path / "x.bin")
    with pytest.raises(DataError, match=r"cannot tell the format .* set data.format"):
        read(g)
    assert read(g, config=dataclasses.replace(CFG, format="parquet")).num_events == 1


def test_mixed_formats_in_a_directory(tmp_path):
    write(tmp_path / "d" / "a.parquet", events([1], [1], [T0]))
    write(tmp_path / "d" / "b.csv", events([1], [1], [T0]))
    with pytest.raises(DataError, match=r"mixes formats \(csv, parquet\)"):
        read(tmp_path / "d")


# ---------------------------------------------------------------- inputs


def test_directory_skips_hidden_and_underscore_files(tmp_path):
    write(tmp_path / "d" / "part-0.parquet", events([1], [1], [T0]))
    write(tmp_path / "d" / "part-1.parquet", events([2], [1], [T0]))
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".part-0.parquet.crc").write_text("x")
    log = read(tmp_path / "d")
    assert log.report.files == 2 and log.num_users == 2


def test_glob(tmp_path):
    for i in range(3):
        write(tmp_path / f"s{i}" / "part.parquet", events([i], [1], [T0]))
    log = read(str(tmp_path / "s[01]" / "*.parquet"))
    assert log.report.files == 2 and log.users.values.to_pylist() == [0, 1]
    log = read(str(tmp_path / "**" / "*.parquet"))
    assert log.report.files == 3


def test_hive_partitioned_directory(tmp_path):
    base = tmp_path / "events"
    write(base / "date=2026-01-01" / "event_type=purchase" / "p.parquet", events([1, 2], [1, 1], [T0, T0]))
    write(base / "date=2026-01-02" / "event_type=view" / "p.parquet", events([1], [2], [T0 + 86400]))
    log = read(base, rejects_path=tmp_path / "r.parquet")
    assert log.report.files == 2 and log.num_events == 3
    assert log.weight.tolist() == [4.0, 4.0, 0.5]  # event_type from the partition key
    # A partition key that is an ID column is text: canonical integers become int64.
    write(tmp_path / "byuser" / "user_id=7" / "p.parquet", pa.table({"item_id": [1], "timestamp": [T0]}))
    write(tmp_path / "byuser" / "user_id=8" / "p.parquet", pa.table({"item_id": [1], "timestamp": [T0]}))
    log = read(tmp_path / "byuser")
    assert log.users.values.to_pylist() == [7, 8] and log.users.type == pa.int64()


def test_csv_input(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text(
        "user_id,item_id,timestamp,event_type,weight\n"
        "1,10,2026-01-01T00:00:00Z,view,\n"
        ",10,2026-01-01,click,1\n"
        "2,11,1767225601,,2.5\n"
        "3,11,not a time,view,1\n"
    )
    log = read(f, rejects_path=tmp_path / "r.parquet")
    assert log.report.rejected == {"null user_id": 1, "unparseable timestamp": 1}
    assert log.users.type == pa.int64() and log.users.values.to_pylist() == [1, 2]
    assert log.items.type == pa.int64() and log.items.values.to_pylist() == [10, 11]
    assert log.timestamp.tolist() == [T0, T0 + 1]
    assert log.weight.tolist() == [0.5, 2.5]
    rejected = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert rejected[1]["timestamp"] == "not a time" and rejected[1]["source_row"] == 3


def test_csv_ids_with_leading_zeros_stay_strings(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp\n007,1,1767225600\n7,2,1767225600\n")
    log = read(f)
    assert log.users.type == pa.string() and log.users.values.to_pylist() == ["007", "7"]
    assert log.items.type == pa.int64()


def test_csv_text_like_na_or_null_is_an_id_and_only_an_empty_cell_is_null(tmp_path):
    # pyarrow's default CSV null markers would read these IDs as null and lose their text in the rejects.
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp,weight\nNA,1,1767225600,1\nnull,1,1767225600,1\nN/A,1,1767225600,1\n"
                 "u1,NULL,1767225600,1\n,1,1767225600,1\nu2,1,1767225600,nan\nu3,1,1767225600,\n")
    log = read(f, rejects_path=tmp_path / "r.parquet")
    assert sorted(log.users.values.to_pylist()) == ["N/A", "NA", "null", "u1", "u3"]
    assert sorted(log.items.values.to_pylist()) == ["1", "NULL"]
    assert log.report.rejected == {"null user_id": 1, "non-finite weight": 1}  # as a NaN weight in Parquet
    assert [(r["user_id"], r["weight"], r["reason"]) for r in pq.read_table(tmp_path / "r.parquet").to_pylist()] == [
        (None, "1", "null user_id"), ("u2", "nan", "non-finite weight")]
    assert log.weight.tolist().count(1.0) == 5  # u3's empty weight is the event type's (1.0), a repair


def test_csv_inf_and_nan_weights_are_non_finite_as_in_parquet(tmp_path):
    f = tmp_path / "e.csv"
    weights = ["inf", "-Infinity", "NaN", "1e400", "+inf", "2.5", "infinite"]
    f.write_text("user_id,item_id,timestamp,weight\n" + "".join(f"{i},1,1767225600,{w}\n" for i, w in enumerate(weights)))
    log = read(f)
    # -Infinity is negative first (the rule order, as in Parquet); "infinite" is no number.
    assert log.report.rejected == {"non-finite weight": 4, "negative weight": 1, "unparseable weight": 1}
    assert log.weight.tolist() == [2.5]


def test_zero_byte_csv_parts_are_skipped_as_spark_writes_them(tmp_path):
    write(tmp_path / "d" / "part-0000.csv", events([1, 2], [1, 1], [T0, T0 + 1]))
    (tmp_path / "d" / "part-0001.csv").write_bytes(b"")  # an empty partition
    (tmp_path / "d" / "_SUCCESS").write_bytes(b"")
    log = read(tmp_path / "d")
    assert (log.report.rows_read, log.report.rows_used) == (2, 2)
    (tmp_path / "e").mkdir()
    for name in ("part-0000.csv", "part-0001.csv"):
        (tmp_path / "e" / name).write_bytes(b"")
    with pytest.raises(DataError, match="part-0000.csv"):  # nothing but empty files: refused, naming one
        read(tmp_path / "e")


def test_csv_unparseable_weight_is_a_rejected_row(tmp_path):
    f = tmp_path / "e.csv"
    # The bad value sits past the first block, where type inference would have crashed.
    rows = "".join(f"{i},1,1767225600,1\n" for i in range(80_000))
    f.write_text("user_id,item_id,timestamp,weight\n1,1,1767225600,heavy\n" + rows + "2,1,1767225601, 2.5 \n9,1,1767225600,x\n")
    log = read(f, rejects_path=tmp_path / "r.parquet")
    assert log.report.rejected == {"unparseable weight": 2}
    assert log.report.rows_read == 80_003 and log.report.rows_used == 80_001
    rejects = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [(r["weight"], r["reason"], r["source_row"]) for r in rejects] == [
        ("heavy", "unparseable weight", 0),
        ("x", "unparseable weight", 80_002),
    ]
    assert 2.5 in log.weight.tolist()


def test_ipc_and_feather_inputs(tmp_path):
    table = events([1, 2], ["a", "b"], pa.array([T0 * 1000, T0 * 1000 + 1000], pa.timestamp("ms")))
    for name in ("e.arrow", "e.feather"):
        log = read(write(tmp_path / name, table))
        assert log.items.values.to_pylist() == ["a", "b"] and log.timestamp.tolist() == [T0, T0 + 1]


def test_string_and_int_ids(tmp_path):
    log = read(write(tmp_path / "s.parquet", events(["u2", "u1"], ["i1", "i1"], [T0, T0])))
    assert log.users.type == pa.string() and log.users.values.to_pylist() == ["u1", "u2"]
    assert log.user.tolist() == [0, 1]  # sorted by user on a timestamp tie
    log = read(write(tmp_path / "i.parquet", events(pa.array([2, 1], pa.int32()), [1, 1], [T0, T0])))
    assert log.users.type == pa.int64()
    dictionary = pa.array(["b", "a", "b"]).dictionary_encode()
    log = read(write(tmp_path / "dict.parquet", events(dictionary, [1, 1, 1], [T0, T0 + 1, T0 + 2])))
    assert log.users.values.to_pylist() == ["a", "b"] and log.user.tolist() == [1, 0, 1]


def test_int_and_string_ids_across_files_are_refused_or_read_as_strings(tmp_path):
    write(tmp_path / "d" / "a.parquet", events([12, 13], [1, 1], [T0, T0]))
    write(tmp_path / "d" / "b.parquet", events(["x"], [1], [T0]))
    write(tmp_path / "d" / "c.parquet", events([14], [1], [T0]))
    with pytest.raises(SchemaError, match=r"column 'user_id' holds integers in 2 files \('.*a.parquet', '.*c.parquet'\) "
                                          r"and strings in 1 file \('.*b.parquet'\).*data.mixed_id_types=string"):
        read(tmp_path / "d")
    log = read(tmp_path / "d", config=dataclasses.replace(CFG, mixed_id_types="string"))
    assert log.users.type == pa.string() and log.users.values.to_pylist() == ["12", "13", "14", "x"]
    # CSV IDs carry no type: text shards are integers when every value is one, else strings (documented).
    write(tmp_path / "f" / "a.csv", events([12], [1], [T0]))
    write(tmp_path / "f" / "b.csv", events(["s13"], ["1"], [str(T0)]))
    assert read(tmp_path / "f").users.values.to_pylist() == ["12", "s13"]  # text only: strings, as documented


def test_unknown_event_types_are_quarantined_by_default(tmp_path):
    table = events([1, 2, 3, 4], [1, 1, 1, 1], [T0, T0 + 1, T0 + 2, T0 + 3],
                   event_type=["view", "pruchase", "pruchase", None])
    log, rejected, f = _read_with_rejects(tmp_path, table)
    assert log.report.rejected == {"unknown event_type": 2} and log.num_events == 2  # null -> default_event_type
    assert [(r["event_type"], r["reason"], r["source_row"]) for r in rejected] == [
        ("pruchase", "unknown event_type", 1), ("pruchase", "unknown event_type", 2)]
    assert log.report.unknown_event_types == {"pruchase": 2}
    assert "event types not in data.event_weights quarantined (pruchase: 2)" in log.report.summary()
    with pytest.raises(DataError, match=r"event_type values not in data.event_weights: 'pruchase' \(2 rows\)"):
        read(f, config=dataclasses.replace(CFG, unknown_event_types="refuse"))
    custom = dataclasses.replace(CFG, event_weights={**CFG.event_weights, "pruchase": 4.0})
    assert read(f, config=custom).num_events == 4


def test_ragged_csv_rows_are_quarantined_with_their_lines(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,timestamp\n"
                 f"1,2,{T0}\n"
                 f"1,3,{T0 + 1},extra\n"
                 "2,4\n"
                 f"2,5,{T0 + 3}\n")
    rejects = tmp_path / "rejects.parquet"
    log = read(f, rejects_path=rejects)
    assert (log.report.rows_read, log.report.rows_used, log.report.rejected) == (4, 2, {"ragged row": 2})
    rows = pq.read_table(rejects).to_pylist()
    assert [(r["reason"], r["source_line"], r["source_row"], r["user_id"]) for r in rows] == [
        ("ragged row", 3, None, None), ("ragged row", 4, None, None)]


def test_column_name_mapping(tmp_path):
    # RecBole atomic column names, loaded through the configured names.
    table = pa.table(
        {
            "user_id:token": ["7", "8"],
            "item_id:token": ["1", "2"],
            "rating:float": [4.0, 0.5],
            "timestamp:float": [float(T0), float(T0 + 9)],
        }
    )
    f = write(tmp_path / "x.parquet", table)
    columns = ColumnsConfig(
        user_id="user_id:token", item_id="item_id:token", timestamp="timestamp:float", weight="rating:float"
    )
    log = read(f, config=dataclasses.replace(CFG, columns=columns), rejects_path=tmp_path / "r.parquet")
    assert log.users.values.to_pylist() == ["7", "8"]
    assert log.weight.tolist() == [4.0, 0.5]
    assert pq.read_schema(tmp_path / "r.parquet").names[:4] == [
        "user_id:token", "item_id:token", "timestamp:float", "rating:float"
    ]  # fmt: skip


# ---------------------------------------------------------------- timestamps


def test_timestamp_units_and_zones_agree(tmp_path):
    seconds = np.array([T0, T0 + 1, T0 + 86399], dtype=np.int64)
    micros = seconds * 1_000_000 + 250_000  # a quarter second past
    expected = (seconds + 0.25).tolist()
    variants = {
        "s": pa.array(seconds, pa.timestamp("s")),
        "ms": pa.array(micros // 1000, pa.timestamp("ms")),
        "us": pa.array(micros, pa.timestamp("us")),
        "ns": pa.array(micros * 1000, pa.timestamp("ns")),
        "us_utc": pa.array(micros, pa.timestamp("us", tz="UTC")),
        "ns_tokyo": pa.array(micros * 1000, pa.timestamp("ns", tz="Asia/Tokyo")),
        "float": pa.array(micros / 1e6, pa.float64()),
        "iso_naive": pa.array([f"2026-01-01T00:00:{s:02d}.25" for s in (0, 1)] + ["2026-01-01 23:59:59.250"]),
        "iso_zoned": pa.array(
            ["2026-01-01T09:00:00.25+09:00", "2026-01-01T00:00:01.25Z", "2026-01-01T18:59:59.25-05:00"]
        ),
    }
    for name, ts in variants.items():
        log = read(write(tmp_path / f"{name}.parquet", events([1, 2, 3], [1, 1, 1], ts)))
        want = seconds.tolist() if name == "s" else expected
        assert log.timestamp.tolist() == want, name
    log = read(write(tmp_path / "int.parquet", events([1, 2, 3], [1, 1, 1], seconds)))
    assert log.timestamp.tolist() == seconds.tolist()
    log = read(write(tmp_path / "date.parquet", events([1], [1], [dt.date(2026, 1, 2)])))
    assert log.timestamp.tolist() == [T0 + 86400]


def test_numeric_strings_are_epoch_seconds(tmp_path):
    log = read(write(tmp_path / "x.parquet", events([1, 2], [1, 1], [str(T0), f" {T0}.5 "])))
    assert log.timestamp.tolist() == [T0, T0 + 0.5]


# ---------------------------------------------------------------- items table


def test_items_table_categories(tmp_path):
    f = write(tmp_path / "e.parquet", events([1, 1, 2], [10, 11, 12], [T0, T0, T0]))
    items = write(
        tmp_path / "items.parquet",
        pa.table({"item_id": [10, 11, 13, 10, None], "category": ["b", "a", "a", "z", "q"]}),
    )
    log = read(f, items_path=items)
    assert log.items.values.to_pylist() == [10, 11, 12, 13]  # 13 is in the catalog, never seen
    assert log.categories.values.to_pylist() == ["a", "b", "z"]  # "q" only on a row without item_id
    # 10 -> b (first row wins), 11 -> a, 12 -> none, 13 -> a.
    assert log.item_category.tolist() == [1, 0, -1, 0]
    assert log.num_events == 3 and log.report.rows_read == 3


def test_items_table_from_config_csv_and_custom_column(tmp_path):
    f = write(tmp_path / "e.parquet", events([1], [10], [T0]))
    items = tmp_path / "items.csv"
    items.write_text("item_id,genre\n10,rock\n20,jazz\n")
    cfg = dataclasses.replace(CFG, items_path=str(items), item_category_column="genre")
    log = read(f, config=cfg)
    assert log.items.type == pa.int64() and log.items.values.to_pylist() == [10, 20]
    assert log.categories.values.to_pylist() == ["jazz", "rock"] and log.item_category.tolist() == [1, 0]


def test_movielens_csv_files_read_as_they_are(tmp_path):
    """ml-latest-small's ratings.csv and movies.csv through the plain CSV reader: renamed columns, first genre."""
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
                       "2,31,4.0,1260759180\n")
    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n31,Dangerous Minds,Drama\n1029,"Dumbo, the",Animation|Children|Drama\n'
                      "7,Nothing,(no genres listed)\n")
    cfg = dataclasses.replace(CFG, items_path=str(movies), item_id_column="movieId", item_category_column="genres",
                              item_category_separator="|",
                              columns=dataclasses.replace(CFG.columns, user_id="userId", item_id="movieId"))
    log = read(ratings, config=cfg)
    assert log.num_events == 3 and log.items.values.to_pylist() == [7, 31, 1029]
    assert log.categories.values.to_pylist() == ["(no genres listed)", "Animation", "Drama"]
    assert log.item_category.tolist() == [0, 2, 1]  # 7 -> (no genres listed), 31 -> Drama, 1029 -> Animation
    with pytest.raises(SchemaError, match=r"missing required column 'item_id' \(data.item_id_column; found: movieId"):
        read(ratings, config=dataclasses.replace(cfg, item_id_column="item_id"))
    numbers = write(tmp_path / "n.parquet", pa.table({"movieId": [31], "genres": [3]}))
    with pytest.raises(SchemaError, match=r"data.item_category_separator is set but column 'genres' has type int64"):
        read(ratings, config=dataclasses.replace(cfg, items_path=str(numbers)))


def test_items_table_errors(tmp_path):
    f = write(tmp_path / "e.parquet", events([1], [10], [T0]))
    bad = write(tmp_path / "items.parquet", pa.table({"item_id": [10], "kind": ["x"]}))
    with pytest.raises(SchemaError, match=rf"items '{bad}': missing required column 'category'"):
        read(f, items_path=bad)
    with pytest.raises(DataError, match=r"items path '.*nope.parquet' does not exist"):
        read(f, items_path=tmp_path / "nope.parquet")


def test_batch_size_does_not_change_the_result(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    table = events(
        pa.array(rng.integers(0, 20, n)),
        pa.array(rng.integers(0, 30, n)),
        pa.array(T0 + rng.integers(0, 50, n)),
        event_type=pa.array(rng.choice(["view", "click"], n)),
    )
    f = write(tmp_path / "e.parquet", table)
    whole = read(f)
    pieces = read(f, config=dataclasses.replace(CFG, batch_size=7))
    assert whole.report == pieces.report and whole.report.rejected["duplicate"] > 0
    for name in ("user", "item", "timestamp", "weight"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(pieces, name))
    order = np.lexsort((whole.user, whole.timestamp))
    assert np.array_equal(order, np.arange(whole.num_events))


def test_same_time_events_keep_read_order(tmp_path):
    # The protocol's default tie order is the input order: the reader must not re-sort a user's ties by item.
    log = read(write(tmp_path / "e.parquet", events([1, 1, 1, 2], [30, 10, 20, 5], [T0, T0, T0, T0 - 1])))
    assert log.items.decode(log.item).to_pylist() == [5, 30, 10, 20]


def test_vocabulary_round_trip(tmp_path):
    f = write(tmp_path / "e.parquet", events(["x", "y"], [5, 6], [T0, T0 + 1]))
    log = read(f)
    assert log.users.decode(log.user).to_pylist() == ["x", "y"]
    assert log.items.encode(pa.array([6, 5, 99])).tolist() == [1, 0, -1]
    assert pc.all(pc.equal(log.items.decode(log.item), pa.array([5, 6]))).as_py()


def test_items_table_rows_not_used_as_given_are_counted(tmp_path):
    f = tmp_path / "e.parquet"
    pq.write_table(events([1, 1, 2], [10, 11, 10], [T0, T0 + 1, T0 + 2]), f)
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": pa.array([10, 10, None, 11, 12], pa.int64()),
                             "category": ["a", "b", "c", None, "d"]}), items)
    log = read(f, items_path=items)
    assert log.report.items_table == {"rows": 5, "null item_id (dropped)": 1,
                                      "repeated item_id (first row kept)": 1, "null category": 1}
    assert "items table: 5 rows, null item_id (dropped): 1, repeated item_id (first row kept): 1" in log.report.summary()
    names = log.categories.decode(log.item_category[log.items.encode([10, 12])]).to_pylist()
    assert names == ["a", "d"]  # first row wins; item 12 is in the catalog though never seen
    assert log.item_category[log.items.encode([11])[0]] == -1


def test_batches_read_ahead_in_order_and_the_thread_stops_with_the_caller(tmp_path):
    """Pass 1's batches are decoded by a thread ahead of the row rules: every source's rows still come in read
    order with their own row numbers, a CSV's ragged lines still count, and the thread ends when the caller
    stops early."""
    import threading

    from fgjax.data import reader

    for i in range(4):
        write(tmp_path / "d" / f"{i}.csv", events([i] * 5, list(range(5)), [T0 + 10 * i + r for r in range(5)]))
    (tmp_path / "d" / "4.csv").write_text(f'"user_id","item_id","timestamp"\n9,1,{T0}\n9,2\n9,3,{T0 + 1}\n')
    config = dataclasses.replace(CFG, batch_size=2)
    sources, _ = reader.open_sources(str(tmp_path / "d"), config)
    plans = [reader.check_schema(s, config.columns) for s in sources]
    tally = reader.ScanTally(config)
    rows = list(reader.scan_rows(sources, plans, config, reader.RejectsWriter(None, ["user_id"]), tally))
    got = [(u.source, int(r)) for u in rows for r in u.row]
    assert got == [(s, r) for s in range(4) for r in range(5)] + [(4, 0), (4, 1)]  # rows of the parsed ones
    assert [int(x) for u in rows for x in u.user.to_pylist()] == [s for s in range(4) for _ in range(5)] + [9, 9]
    assert tally.rows_read == 23 and tally.counts[REASONS.index("ragged row")] == 1

    early = reader.scan_rows(sources, plans, config, reader.RejectsWriter(None, ["user_id"]), reader.ScanTally(config))
    next(early)
    early.close()
    assert not [t for t in threading.enumerate() if t.name == "fgjax-prefetch" and t.is_alive()]
