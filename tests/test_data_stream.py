"""The two-pass reader (``fgjax.data.stream``) equals ``read_events``; ``fgjax analyze`` streamed equals the
in-memory analysis and compiles at most three programs."""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax.analysis import analyze, window_index, write_forgetting, write_states
from fgjax.analysis.tables import STATE_COLUMNS
from fgjax.analysis.run import run_chunk
from fgjax.analysis.window import add_event_sums
from fgjax.analysis_job import analyze_log
from fgjax.config import DataConfig, SyntheticConfig, load_config
from fgjax.data import stream, synthetic
from fgjax.data.reader import read_events
from fgjax.data.stream import scan_log
from fgjax.errors import DataError

SMALL = SyntheticConfig(num_users=240, num_items=150, num_categories=6, num_days=30, users_per_shard=60, seed=5,
                        bad_row_fraction=0.02)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Shards by user (every shard spans the whole time range), with duplicates and null rows mixed in."""
    return synthetic.generate(SMALL, tmp_path_factory.mktemp("stream"))


def _windows_of(log, window_seconds: float) -> list[set]:
    """Per window, the multiset of (user ID, item ID, seconds, weight) of an in-memory log."""
    origin = np.floor(log.timestamp.min() / window_seconds) * window_seconds
    win = window_index(log.timestamp, window_seconds, origin)
    users = np.asarray(log.users.values.to_pylist(), dtype=object)
    items = np.asarray(log.items.values.to_pylist(), dtype=object)
    out: list[list] = [[] for _ in range(int(win.max()) + 1)]
    for w, u, i, s, x in zip(win, users[log.user], items[log.item], log.timestamp, log.weight):
        out[w].append((u, i, float(s), float(x)))
    return [sorted(rows) for rows in out]


def _scanned_windows(scanned) -> list[list]:
    users = np.asarray(scanned.users.values.to_pylist(), dtype=object)
    items = np.asarray(scanned.items.values.to_pylist(), dtype=object)
    return [sorted((u, i, float(s), float(x)) for u, i, s, x in
                   zip(users[w.user], items[w.item], w.seconds, w.weight)) for w in scanned.windows()]


@pytest.mark.parametrize("window_seconds", [86400.0, 7 * 86400.0])
def test_two_passes_equal_read_events(generated, tmp_path, window_seconds, monkeypatch):
    """Same vocabularies, same report and rejects file, and each window holds exactly the events read_events
    puts there, though the shards are by user (no time order across files); the distinct IDs of the
    batches are merged every few batches (bounded memory) without changing the vocabularies."""
    monkeypatch.setattr(stream, "COMPACT_CHUNKS", 3)
    config = DataConfig(path=str(generated.events_dir), items_path=str(generated.items_path), batch_size=500)
    log = read_events(config, rejects_path=tmp_path / "memory.parquet")
    with scan_log(config, window_seconds, rejects_path=tmp_path / "stream.parquet", spill_parent=tmp_path) as scanned:
        assert scanned.users.values.equals(log.users.values) and scanned.items.values.equals(log.items.values)
        np.testing.assert_array_equal(scanned.item_category, log.item_category)
        assert scanned.categories.values.equals(log.categories.values)
        got = _scanned_windows(scanned)
        assert scanned.report == dataclasses.replace(log.report, rejects_path=str(tmp_path / "stream.parquet"))
        spill = [p for p in tmp_path.iterdir() if p.name.startswith(".fgjax-spill-")]
        assert len(spill) == 1 and any(spill[0].iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fgjax-spill-")], "close removes the spill"
    assert log.report.rejected["duplicate"] > 0 and log.report.rejected["null user_id"] > 0
    assert got == _windows_of(log, window_seconds)
    assert pq.read_table(tmp_path / "stream.parquet").equals(pq.read_table(tmp_path / "memory.parquet"))


@pytest.mark.parametrize("chunk", [3, 64])
def test_windows_in_pieces_are_the_whole_windows(generated, tmp_path, chunk):
    """Pieces of at most ``chunk`` rows, in read order, the last one closing its window: joined they are the
    whole windows, with the same duplicates dropped (found over the whole window, whichever piece holds
    them), the same report and the same rejects file."""
    config = DataConfig(path=str(generated.events_dir), items_path=str(generated.items_path), batch_size=500)
    results = {}
    for size in (0, chunk):
        rejects = tmp_path / f"rejects-{size}.parquet"
        with scan_log(config, 86400.0, rejects_path=rejects, spill_parent=tmp_path) as scanned:
            pieces = list(scanned.windows(size))
            results[size] = (pieces, scanned.report, pq.read_table(rejects))
    whole, report, rejects = results[0]
    pieces, chunk_report, chunk_rejects = results[chunk]
    assert all(len(p.user) <= chunk for p in pieces)
    assert [p.index for p in pieces if p.closes] == [w.index for w in whole] == list(range(len(whole)))
    for w in whole:
        mine = [p for p in pieces if p.index == w.index]
        assert [p.closes for p in mine] == [False] * (len(mine) - 1) + [True]
        for name in ("user", "item", "seconds", "weight"):
            np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in mine]), getattr(w, name))
    assert report.rejected["duplicate"] > 0
    assert dataclasses.replace(chunk_report, rejects_path=None) == dataclasses.replace(report, rejects_path=None)
    assert chunk_rejects.equals(rejects)


def test_text_ids_unsorted_rows_and_pseudonyms(tmp_path, monkeypatch):
    """CSV IDs (text that is all integers -> int64), rows in reverse time order inside a file, string items,
    and pseudonymized users: the vocabularies and windows still equal read_events'."""
    rng = np.random.default_rng(0)
    n = 3000
    seconds = np.sort(rng.uniform(1.6e9, 1.6e9 + 20 * 86400, n))[::-1].round(3)  # newest first
    users = rng.integers(1, 90, n)
    items = np.array([f"item-{i}" for i in rng.integers(0, 40, n)])
    table = pa.table({"user_id": users.astype(str), "item_id": items, "timestamp": seconds})
    (tmp_path / "events").mkdir()
    pacsv.write_csv(table.slice(0, 1800), tmp_path / "events" / "a.csv")
    pacsv.write_csv(table.slice(1800), tmp_path / "events" / "b.csv")
    config = DataConfig(path=str(tmp_path / "events"), batch_size=256, pseudonymize=True,
                        pseudonym_secret_env="FGJAX_TEST_SECRET")
    monkeypatch.setenv("FGJAX_TEST_SECRET", "s3cret")
    monkeypatch.setattr(stream, "COMPACT_CHUNKS", 2)  # text IDs merged batch by batch too
    log = read_events(config)
    assert log.users.type == pa.string() and log.num_users > 50  # pseudonyms
    with scan_log(config, 86400.0) as scanned:
        assert scanned.users.values.equals(log.users.values)
        assert scanned.items.values.equals(log.items.values)
        assert _scanned_windows(scanned) == _windows_of(log, 86400.0)


def test_no_valid_rows_is_the_same_error(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": pa.array([None, None], pa.int64()), "item_id": [1, 2],
                             "timestamp": [1.6e9, 1.6e9]}), path)
    config = DataConfig(path=str(path))
    with pytest.raises(DataError) as memory:
        read_events(config)
    with pytest.raises(DataError) as streamed:
        scan_log(config, 86400.0, spill_parent=tmp_path)
    assert str(streamed.value) == str(memory.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fgjax-spill-")]


def test_streamed_analyze_writes_the_same_tables_with_its_users_padded_or_not(generated, tmp_path, monkeypatch):
    """``fgjax analyze`` runs 240 users as 256 state rows (``user_rows``): its tables are those of an unpadded
    run, byte for byte, with the windows in chunks (the window's sums are shaped like the padded state)."""
    from fgjax.analysis import run as run_module

    config = load_config(None, [f"data.path={generated.events_dir}", f"data.items_path={generated.items_path}",
                                "analysis.window_chunk=40"])
    assert run_module.user_rows(SMALL.num_users) == 256
    written = [analyze_log(config, tmp_path / "padded", progress=False)]
    monkeypatch.setattr(run_module, "user_rows", lambda n: n)
    written.append(analyze_log(config, tmp_path / "exact", progress=False))
    assert written[0] == written[1] and written[0][1] > 0
    for name in ("forgetting", "states"):
        padded, exact = (pq.read_table(tmp_path / run / f"{name}.parquet") for run in ("padded", "exact"))
        assert padded.schema.equals(exact.schema) and padded.num_rows == exact.num_rows, name
        for column in exact.column_names:
            a, b = padded.column(column), exact.column(column)
            value_type = b.type.value_type if pa.types.is_fixed_size_list(b.type) else b.type
            if pa.types.is_floating(value_type):
                # Sums over the users (the population's terms) may round in another order with more rows.
                np.testing.assert_allclose(*(np.asarray(c.to_pylist(), float) for c in (a, b)), rtol=1e-6,
                                           err_msg=f"{name}.{column}")
            else:
                assert a.equals(b), f"{name}.{column}"


@pytest.mark.parametrize(("detector", "chunk"), [("level", 0), ("adaptive", 0), ("adaptive", 40)])
def test_streamed_analyze_writes_the_in_memory_tables(generated, tmp_path, detector, chunk):
    """``fgjax analyze`` (two passes, tables written window by window) writes what read_events -> analyze ->
    write_forgetting / write_states writes, also when every window comes in chunks of ``chunk`` events."""
    config = load_config(None, [f"data.path={generated.events_dir}", f"data.items_path={generated.items_path}",
                                "data.batch_size=700", f"analysis.detector.kind={detector}",
                                f"analysis.window_chunk={chunk}"])
    windows = scan_log(config.data, config.analysis.window_seconds, spill_parent=tmp_path)
    with windows:
        size = run_chunk(chunk, windows.window_rows, windows.num_users * len(windows.categories))
        assert (size == 0) if not chunk else windows.window_rows.max() > 2 * size  # several chunks a window
    rows, changes = analyze_log(config, tmp_path / "out", progress=False)
    log = read_events(config.data)
    result = analyze(config, log, progress=False)
    assert write_forgetting(result, log, tmp_path / "f.parquet") == rows
    assert write_states(result, log, tmp_path / "s.parquet") == changes > 0
    for mine, theirs in (("forgetting", "f"), ("states", "s")):
        streamed, memory = (pq.read_table(p) for p in (tmp_path / "out" / f"{mine}.parquet",
                                                         tmp_path / f"{theirs}.parquet"))
        assert streamed.schema.equals(memory.schema)
        for name in memory.column_names:
            a, b = streamed.column(name), memory.column(name)
            value_type = b.type.value_type if pa.types.is_fixed_size_list(b.type) else b.type
            if pa.types.is_floating(value_type):
                a, b = (np.asarray(c.to_pylist(), float) for c in (a, b))
                # events of a window are summed in read order here, in time order there: float32 rounding
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
            else:
                assert a.equals(b), name
    assert (tmp_path / "out" / "plots" / "forgetting.png").stat().st_size > 0
    assert not list((tmp_path / "out").glob(".fgjax-spill-*"))
    # The level rule runs no detector: its columns are null (no evidence), not zeros; the schema is the same.
    states = pq.read_table(tmp_path / "out" / "states.parquet")
    detector_columns = ("F_threshold", "F_alarm", *STATE_COLUMNS[STATE_COLUMNS.index("silence"):])
    nulls = {name: states.column(name).null_count for name in detector_columns}
    if detector == "level":
        assert nulls == dict.fromkeys(detector_columns, states.num_rows)
    else:
        assert all(nulls[name] == 0 for name in detector_columns if name not in ("last_active", "verdict")), nulls
        # verdict_file auto: the shipped learned verdict judges the silent rows of daily windows, and only those.
        silent = np.asarray(states.column("silence").to_pylist()) > 0
        judged = np.asarray(states.column("verdict").is_valid())
        assert judged.any() and np.array_equal(judged, silent)
    assert states.column("f_k").null_count == states.column("p").null_count == 0


@pytest.mark.parametrize("chunk", [0, 30])
def test_a_streamed_run_compiles_at_most_three_programs(generated, tmp_path, chunk):
    """The window step, the changed-row gather and the initial state: no program per bucket, field or scalar;
    windows in chunks add one, the chunks' sums."""
    # A spec no other test compiles (top 2 or 4 interests), so every program of the run is compiled here
    # without dropping the worker's other compiled programs (jax.clear_caches would).
    config = load_config(None, [f"data.path={generated.events_dir}", f"data.items_path={generated.items_path}",
                                "analysis.window_seconds=43200", f"analysis.top_interests={4 if chunk else 2}",
                                f"analysis.window_chunk={chunk}"])
    compiled: list[str] = []
    add_event_sums.clear_cache()  # takes no spec: another test's run may have compiled it for these shapes

    class Collect(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Compiling "):
                compiled.append(message.split(" with ")[0])

    handler = Collect()
    logger = logging.getLogger("jax._src.interpreters.pxla")

    def run(config, out):
        logger.addHandler(handler)
        try:
            with jax.log_compiles(True):
                analyze_log(config, out, progress=False)
        finally:
            logger.removeHandler(handler)

    run(config, tmp_path / "out")
    step = (["Compiling jit(add_event_sums)", "Compiling jit(window_step_sums)"] if chunk
            else ["Compiling jit(window_step)"])
    assert sorted(compiled) == sorted(["Compiling jit(_gather_changes)", "Compiling jit(init_carry)", *step])
    if chunk:
        return
    # The same log less 7 of its 240 users: the state's rows are the same (user_rows), so nothing compiles again.
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    gone = pq.read_table(generated.events_dir).column("user_id").unique()[:7]
    for shard in sorted(generated.events_dir.glob("*.parquet")):
        table = pq.read_table(shard)
        pq.write_table(table.filter(pc.invert(pc.is_in(table["user_id"], gone))), fewer / shard.name)
    compiled.clear()
    run(dataclasses.replace(config, data=dataclasses.replace(config.data, path=str(fewer))), tmp_path / "again")
    assert compiled == []
    assert len(pq.read_table(tmp_path / "again" / "forgetting.parquet").column("user_id").unique()) == 240 - 7


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 400), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_window_duplicates_equal_the_readers_rule(n, spread, seed):
    """The hashed duplicate check marks exactly the rows ``duplicate_mask`` marks (later copies, in read order),
    with many collisions of some keys and none of others."""
    from fgjax.data.reader import duplicate_mask
    from fgjax.data.stream import _duplicates

    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, spread, n).astype(np.int32), rng.integers(0, spread, n).astype(np.int32)
    seconds = 1.7e9 + rng.integers(0, spread, n) * 0.5
    event = rng.integers(0, 2, n).astype(np.int32)
    np.testing.assert_array_equal(_duplicates(user, item, seconds, event), duplicate_mask(user, item, seconds, event))


def test_run_chunk_only_where_chunks_save_memory():
    """Chunks of window_chunk events, at least 1/8 of the (user, interest) pairs (the sums cost 8 bytes a
    pair), and none when every window fits in one or the knob is 0."""
    rows = np.array([10, 5000, 300])
    assert run_chunk(0, rows, 80) == 0
    assert run_chunk(1000, rows, 80) == 1000
    assert run_chunk(1000, rows, 16_000) == 2000
    assert run_chunk(1000, rows, 40_000) == 0  # 40,000 pairs / 8 = 5,000 >= the largest window: whole windows
    assert run_chunk(5000, rows, 80) == 0 and run_chunk(4999, rows, 80) == 4999
    assert run_chunk(1000, np.zeros(0, np.int64), 80) == 0


def test_table_writers_keep_window_order_and_surface_a_thread_error(tmp_path, monkeypatch):
    """Two writer threads (one per table): each file's row groups come in window order, a window's changed
    rows may come in pieces, and an error in either thread reaches the caller instead of being lost with its
    thread."""
    from fgjax.analysis import TableWriters
    from fgjax.analysis.window import WindowOutput
    from fgjax.data.vocab import Vocabulary

    users, categories = Vocabulary(pa.array([10, 11, 12], pa.int64())), Vocabulary(pa.array(["a", "b"]))
    windows = 6
    monkeypatch.setattr(TableWriters, "ROWS_IN_FLIGHT", 3)  # the changed-rows bound waits too
    monkeypatch.setattr(TableWriters, "ROW_GROUP_ROWS", 1)  # and a window's pieces go in row groups of their own
    writers = TableWriters(tmp_path, users, categories, np.arange(windows) * 86400.0, 2)
    rng = np.random.default_rng(0)
    for t in range(windows):
        probs = rng.random((3, 2)).astype(np.float32)
        output = WindowOutput(degree=rng.random(3).astype(np.float32), top_interests=np.tile([1, 0], (3, 1)),
                              top_probs=probs)
        changed = {name: np.zeros(2, np.int32) for name in ("user", "interest", "state", "previous_state",
                                                              "last_active")}
        changed.update({name: np.zeros(2, np.float32) for name in (
            "F", "F_threshold", "f_k", "p", "silence", "silence_limit", "rate", "recent", "expected_recent", "trend",
            "dispersion", "period", "period_strength")})
        changed.update(user=np.array([0, 2], np.int32), window=np.full(2, t, np.int32), F_alarm=np.zeros(2, bool))
        pieces = [{k: v[:1] for k, v in changed.items()}, {k: v[1:] for k, v in changed.items()}]
        writers(t, t * 86400.0, output, pieces)
    assert writers.close() == {"forgetting": 3 * windows, "states": 2 * windows}
    assert pq.ParquetFile(tmp_path / "states.parquet").metadata.num_row_groups == 2 * windows
    for name in ("forgetting", "states"):
        assert pq.read_table(tmp_path / f"{name}.parquet").column("window").to_pylist() == sorted(
            pq.read_table(tmp_path / f"{name}.parquet").column("window").to_pylist())
    broken = TableWriters(tmp_path / "b", users, categories, np.arange(windows) * 86400.0, 2)
    (tmp_path / "b").mkdir()
    bad = {"user": np.array([0], np.int32)}  # a changed row without its columns: the states thread fails
    with pytest.raises(KeyError):
        for t in range(windows):
            broken(t, t * 86400.0, output, [bad])
        broken.close()



def test_merged_ids_keep_every_value_and_the_files_of_each_kind():
    """Merging the batches' distinct IDs (one chunk per kind and type) keeps every value and kind, and the
    mixed-ID error still names every file that gave each kind."""
    import types

    from fgjax.data import reader
    from fgjax.errors import SchemaError

    got = reader._Collected()
    batches = [(pa.array([1, 2, 3]), "int", 0), (pa.array(["u1", "x"]), "text", 1), (pa.array([3, 4]), "int", 2),
               (pa.array(["x", "u2"]), "text", 1), (pa.array([5]), "int", 0)]
    for users, kind, source in batches:
        got.add_ids(users, kind, pa.array([7]), "int", source)
    stream._compact_ids(got)
    assert sorted(got.user_kinds) == ["int", "text"] and len(got.users) == 2
    merged = {k: sorted(c.to_pylist()) for c, k in zip(got.users, got.user_kinds)}
    assert merged == {"int": [1, 2, 3, 4, 5], "text": ["u1", "u2", "x"]}
    assert got.items[0].to_pylist() == [7] and got.item_kinds == ["int"]
    sources = [types.SimpleNamespace(name=n) for n in ("a.parquet", "b.csv", "c.parquet")]
    with pytest.raises(SchemaError, match=r"integers in 2 files \('a.parquet', 'c.parquet'\) and non-integer text "
                                          r"in 1 file \('b.csv'\)"):
        reader._check_text_ids(got.users, got.user_kinds, got.user_kind_sources, sources, "user_id", DataConfig())


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["int8", "int32", "int64", "uint16", "uint64"]), st.integers(1, 3000),
       st.sampled_from([1, 50, 1 << 14, 1 << 40]), st.integers(0, 2**32 - 1), st.booleans())
def test_distinct_ids_are_numpys_unique(dtype, n, span, seed, at_the_top):
    """Both paths (the table of seen flags for a small span, hashing for a wide one) give ``np.unique``'s
    values, at the dtype's ends too (no overflow in ``values - lo``)."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    span = min(span, int(info.max) - int(info.min))
    lo = int(info.max) - span if at_the_top else int(info.min)
    values = (lo + rng.integers(0, span + 1, n, dtype=np.uint64).astype(object)).astype(dtype)
    got = stream.distinct_ids(pa.array(values))
    assert got.type == pa.from_numpy_dtype(np.dtype(dtype))
    np.testing.assert_array_equal(np.sort(got.to_numpy()), np.unique(values))


def test_distinct_ids_of_text_and_empty_batches():
    assert sorted(stream.distinct_ids(pa.array(["b", "a", "b"])).to_pylist()) == ["a", "b"]
    assert len(stream.distinct_ids(pa.array([], pa.int64()))) == 0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["int8", "int64", "uint16", "uint64"]), st.lists(st.integers(0, 400), min_size=1, max_size=8),
       st.sampled_from([3, 1000, 1 << 20, 1 << 40]), st.integers(0, 2**32 - 1), st.booleans())
def test_seen_ids_over_batches_are_numpys_unique(dtype, sizes, span, seed, rising):
    """A pass's table of seen flags, with the batches it declines hashed instead, gives ``np.unique`` of every
    batch: batches that widen the span (rising shards) grow the table; too wide a span is declined."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    span = min(span, int(info.max) - int(info.min))
    table, declined, every = stream.SeenIds(), [], []
    for i, n in enumerate(sizes):
        base = int(info.min) + (span * i // len(sizes) if rising else 0)
        values = (base + rng.integers(0, span // (len(sizes) if rising else 1) + 1, n, dtype=np.uint64)
                  .astype(object)).astype(dtype)
        every.append(values)
        if not table.add(pa.array(values)):
            declined.append(stream.distinct_ids(pa.array(values)).to_numpy())
    got = np.concatenate([table.values().to_numpy().astype(dtype), *declined])
    np.testing.assert_array_equal(np.unique(got), np.unique(np.concatenate(every)))
    assert table.flags is None or len(table.flags) <= max(32 * table.marked, 1 << 16)
    assert not table.add(pa.array(["7"])) and not table.add(pa.array([1, None], pa.int64()))
