"""Prefetching and the streaming analysis equal the plain paths; the prefetch queue stays bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fgjax.config import load_config
from fgjax.data.prefetch import prefetch
from fgjax.errors import DataError
from fgjax.analysis import analyze, analyze_stream

from conftest import make_log


def test_prefetch_yields_everything_in_order_and_stays_bounded():
    produced = []
    lock = threading.Lock()

    def source():
        for i in range(40):
            with lock:
                produced.append(i)
            yield i

    seen = []
    for x in prefetch(source(), size=3, transform=lambda v: v * 10):
        time.sleep(0.002)  # a slow consumer: the producer would run far ahead without a bound
        with lock:
            ahead = len(produced) - len(seen)
        # size finished items queued + one in the producer's hands + the one just handed over
        assert ahead <= 3 + 2, ahead
        seen.append(x)
    assert seen == [10 * i for i in range(40)]


def test_prefetch_raises_producer_errors_and_stops_on_close():
    def broken():
        yield 1
        raise OSError("disk gone")

    it = prefetch(broken(), size=2)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    started = []

    def endless():
        i = 0
        while True:
            started.append(i)
            i += 1
            yield i

    gen = prefetch(endless(), size=2)
    next(gen)
    gen.close()
    n = len(started)
    time.sleep(0.1)
    assert len(started) == n  # the thread stopped
    with pytest.raises(ValueError, match="prefetch size"):
        next(prefetch([1], size=0))


def _write_shards(log, folder, per_file):
    folder.mkdir()
    files = []
    for i, lo in enumerate(range(0, log.num_events, per_file)):
        sl = slice(lo, lo + per_file)
        table = pa.table({"user": log.user[sl].astype(np.int64), "item": log.item[sl].astype(np.int64),
                          "timestamp": log.timestamp[sl], "weight": log.weight[sl]})
        path = folder / f"part-{i:04d}.parquet"
        pq.write_table(table, path, row_group_size=97)
        files.append(path)
    return files


@pytest.mark.parametrize("prefetch_windows", [0, 1, 3])
def test_stream_equals_in_memory_analysis(tmp_path, prefetch_windows):
    log = make_log(num_users=50, events_per_user=20, seed=2)
    log.item_category[::7] = -1  # some items without a category: their events are skipped
    files = _write_shards(log, tmp_path / "events", per_file=311)
    config = load_config(None, ["analysis.window_seconds=172800"])  # 2-day windows
    want = analyze(config, log, progress=False)
    got = analyze_stream(files, num_users=log.num_users, item_category=log.item_category, config=config.analysis,
                         batch_rows=64, prefetch_windows=prefetch_windows)
    np.testing.assert_array_equal(got.window_start, want.window_start)
    np.testing.assert_allclose(got.degree, want.degree, rtol=1e-6)
    np.testing.assert_allclose(got.carry.interest.current, want.current, rtol=1e-6)
    np.testing.assert_array_equal(got.carry.state, want.state)
    assert got.events == log.num_events


def test_stream_refuses_out_of_order_events(tmp_path):
    log = make_log(num_users=10, events_per_user=5)
    files = _write_shards(log, tmp_path / "events", per_file=20)
    with pytest.raises(DataError, match="timestamps decrease"):
        analyze_stream(files[::-1], num_users=10, item_category=log.item_category, config=load_config().analysis)
