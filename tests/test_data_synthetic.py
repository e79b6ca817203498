"""The synthetic generator: determinism, layout, ground truth, popularity, bad rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from fgjax.config import DataConfig, SyntheticConfig
from fgjax.data import synthetic
from fgjax.data.reader import read_events
from fgjax.errors import ConfigError, DataError

SMALL = SyntheticConfig(num_users=300, num_items=200, num_categories=8, num_days=40, users_per_shard=100, seed=3)
DAY = 86400.0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic.generate(SMALL, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def frames(small):
    """Clean events joined with their category, and the ground truth, as numpy."""
    events = ds.dataset(small.events_dir).to_table()
    valid = pc.and_(pc.is_valid(events["user_id"]), pc.is_valid(events["timestamp"]))
    events = events.filter(valid)
    items = pq.read_table(small.items_path)
    item_ids = items["item_id"].to_numpy()
    cat_names = sorted(set(items["category"].to_pylist()))
    item_cat = np.array([cat_names.index(c) for c in items["category"].to_pylist()])
    pos = np.searchsorted(item_ids, events["item_id"].to_numpy())
    truth = pq.read_table(small.truth_path)
    return {
        "user": events["user_id"].to_numpy(),
        "item": events["item_id"].to_numpy(),
        "cat": item_cat[pos],
        "ts": events["timestamp"].cast(pa.int64()).to_numpy() / 1e6,
        "truth": truth,
        "truth_user": truth["user_id"].to_numpy(),
        "truth_cat": np.array([cat_names.index(c) for c in truth["interest"].to_pylist()]),
        "start": pc.fill_null(truth["start_time"].cast(pa.int64()), 0).to_numpy() / 1e6,
        "change": pc.fill_null(truth["change_time"].cast(pa.int64()), -1).to_numpy() / 1e6,
        "resume": pc.fill_null(truth["resume_time"].cast(pa.int64()), -1).to_numpy() / 1e6,
        "kind": np.array(truth["kind"].to_pylist()),
    }


def _file_bytes(paths: synthetic.SyntheticPaths) -> dict[str, bytes]:
    files = sorted(paths.events_dir.glob("*.parquet")) + [paths.items_path, paths.truth_path]
    return {f.name: f.read_bytes() for f in files}


def test_layout_and_schemas(small):
    parts = sorted(p.name for p in small.events_dir.iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert small.truth_path == small.events_dir.parent / "ground_truth.parquet"
    for part in small.events_dir.iterdir():
        assert pq.read_schema(part) == synthetic.EVENTS_SCHEMA
    assert pq.read_schema(small.truth_path) == synthetic.TRUTH_SCHEMA
    items = pq.read_table(small.items_path)
    assert items.schema == pa.schema([("item_id", pa.int64()), ("category", pa.string())])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = dataclasses.replace(SMALL, num_users=120, users_per_shard=60)
    first = _file_bytes(synthetic.generate(cfg, tmp_path / "a"))
    again = _file_bytes(synthetic.generate(cfg, tmp_path / "b"))
    other = _file_bytes(synthetic.generate(dataclasses.replace(cfg, seed=cfg.seed + 1), tmp_path / "c"))
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_a_shard_depends_only_on_seed_and_index(small, tmp_path):
    # Fewer users: the shards that exist must be byte-identical to the larger run's.
    fewer = synthetic.generate(dataclasses.replace(SMALL, num_users=200), tmp_path)
    assert sorted(p.name for p in fewer.events_dir.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    for name in ("part-00000.parquet", "part-00001.parquet"):
        assert (fewer.events_dir / name).read_bytes() == (small.events_dir / name).read_bytes()
    big_truth = pq.read_table(small.truth_path)
    assert pq.read_table(fewer.truth_path).equals(big_truth.slice(0, pq.read_metadata(fewer.truth_path).num_rows))


def test_stale_shards_are_removed(tmp_path):
    synthetic.generate(dataclasses.replace(SMALL, num_users=200), tmp_path)
    paths = synthetic.generate(dataclasses.replace(SMALL, num_users=50), tmp_path)
    assert [p.name for p in paths.events_dir.iterdir()] == ["part-00000.parquet"]


def test_files_it_did_not_write_are_neither_removed_nor_mixed_in(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    (events / "part-00007.parquet").write_bytes(b"someone else's shard")
    (events / "mine.parquet").write_bytes(b"mine")
    with pytest.raises(DataError, match=r"holds files generate did not write \(mine.parquet, part-00007.parquet\)"):
        synthetic.generate(dataclasses.replace(SMALL, num_users=50), tmp_path)
    assert sorted(p.name for p in events.iterdir()) == ["mine.parquet", "part-00007.parquet"]


def test_default_config_generates_four_shards(tmp_path):
    paths = synthetic.generate(SyntheticConfig(), tmp_path)
    assert len(list(paths.events_dir.glob("part-*.parquet"))) == 4
    rows = sum(pq.read_metadata(p).num_rows for p in paths.events_dir.iterdir())
    # ~2.9 interests x 60 days x 0.6 per day x 2000 users, less faded/stopped/late activity.
    assert 100_000 < rows < 300_000
    users = pc.unique(pc.drop_null(ds.dataset(paths.events_dir).to_table(columns=["user_id"])["user_id"]))
    assert len(users) > 1990  # almost every user is active


def test_items_cover_every_category(small):
    items = pq.read_table(small.items_path)
    ids = items["item_id"].to_numpy()
    assert len(ids) == SMALL.num_items and len(np.unique(ids)) == SMALL.num_items
    assert np.all(np.diff(ids) > 0)
    assert sorted(set(items["category"].to_pylist())) == [f"c{c:02d}" for c in range(SMALL.num_categories)]


def test_truth_columns_follow_kind(frames):
    truth, kind = frames["truth"], frames["kind"]
    assert set(kind) == set(synthetic.KINDS)
    has_change = np.isin(kind, ["fading", "stopped", "reactivated"])
    assert np.array_equal(truth["change_time"].is_valid().to_numpy(zero_copy_only=False), has_change)
    resumes = kind == "reactivated"
    assert np.array_equal(truth["resume_time"].is_valid().to_numpy(zero_copy_only=False), resumes)
    pause_days = (frames["resume"][resumes] - frames["change"][resumes]) / DAY
    assert pause_days.min() >= SMALL.pause_days_min and pause_days.max() <= SMALL.pause_days_max
    periodic = kind == "periodic"
    assert np.array_equal(truth["period_days"].is_valid().to_numpy(zero_copy_only=False), periodic)
    periods = pc.drop_null(truth["period_days"]).to_numpy()
    assert periods.min() >= 5 and periods.max() <= 14
    assert np.all(frames["change"][has_change] > frames["start"][has_change])
    # A user's interests are distinct categories, within min..max interests.
    keys = frames["truth_user"] * 1000 + frames["truth_cat"]
    assert len(np.unique(keys)) == len(keys)
    per_user = np.bincount(np.unique(frames["truth_user"], return_inverse=True)[1])
    assert per_user.min() >= SMALL.min_interests and per_user.max() <= SMALL.max_interests
    # Periodic users have only periodic interests.
    periodic_users = set(frames["truth_user"][periodic])
    assert all(k == "periodic" for u, k in zip(frames["truth_user"], kind) if u in periodic_users)


def _pair_of_events(frames) -> np.ndarray:
    """(events,) index of each event's ground-truth (user, interest) row, -1 if none."""
    truth_key = frames["truth_user"] * 1000 + frames["truth_cat"]
    order = np.argsort(truth_key)
    event_key = frames["user"] * 1000 + frames["cat"]
    pos = np.clip(np.searchsorted(truth_key[order], event_key), 0, len(order) - 1)
    return np.where(truth_key[order][pos] == event_key, order[pos], -1)


def test_every_event_belongs_to_an_interest_after_its_start(frames):
    pair = _pair_of_events(frames)
    assert np.all(pair >= 0)
    assert np.all(frames["ts"] >= frames["start"][pair])


def test_stopped_interest_has_no_events_after_stop(frames):
    pair = _pair_of_events(frames)
    stopped = frames["kind"][pair] == "stopped"
    assert stopped.sum() > 100  # stopped interests had events before they stopped
    assert np.all(frames["ts"][stopped] < frames["change"][pair][stopped])


def test_reactivated_interest_pauses_then_comes_back(frames):
    pair = _pair_of_events(frames)
    rows = np.nonzero(frames["kind"] == "reactivated")[0]
    assert len(rows) > 50
    end = synthetic.start_epoch_us(SMALL.start) / 1e6 + SMALL.num_days * DAY
    ts, change, resume = frames["ts"], frames["change"][pair], frames["resume"][pair]
    mine = frames["kind"][pair] == "reactivated"
    assert not np.any(mine & (ts >= change) & (ts < resume))  # silent during the pause
    back = rows[frames["resume"][rows] < end - 7 * DAY]  # resumed at least a week before the end
    after = np.bincount(pair[mine & (ts >= resume)], minlength=len(frames["kind"]))[back]
    assert np.mean(after > 0) > 0.95  # and active again after it


def test_bursty_interest_has_burst_days_at_the_same_baseline(frames):
    pair = _pair_of_events(frames)
    origin = synthetic.start_epoch_us(SMALL.start) / 1e6
    day = np.floor((frames["ts"] - origin) / DAY).astype(int)
    kinds = frames["kind"][pair]
    daily = {}
    for kind in ("bursty", "stable"):
        sel = (kinds == kind) & (frames["ts"] >= frames["start"][pair])
        per_cell = np.bincount(pair[sel] * SMALL.num_days + day[sel])
        daily[kind] = per_cell[per_cell > 0]
    # Burst days make the daily counts heavy-tailed: many more days far above the mean.
    far = {k: np.mean(v >= 6 * v.mean()) for k, v in daily.items()}
    assert far["bursty"] > 5 * max(far["stable"], 1e-4)
    assert np.median(daily["bursty"]) == np.median(daily["stable"])  # the baseline is the same


def _rates_around_change(frames, kind: str, gap_days: float) -> tuple[float, float]:
    """Events per pair-day before the change and from ``gap_days`` after it, pooled over pairs."""
    pair = _pair_of_events(frames)
    rows = np.nonzero(frames["kind"] == kind)[0]
    start, change = frames["start"][rows], frames["change"][rows]
    end = synthetic.start_epoch_us(SMALL.start) / 1e6 + SMALL.num_days * DAY
    if kind == "stable":  # a pseudo change point halfway
        change = (start + end) / 2
    after_from = change + gap_days * DAY
    days_before = ((change - start) / DAY).sum()
    days_after = np.clip((end - after_from) / DAY, 0, None).sum()
    index = np.full(len(frames["kind"]), -1)
    index[rows] = np.arange(len(rows))
    sel = index[pair]
    mine, ts = sel >= 0, frames["ts"]
    before = (mine & (ts < change[np.maximum(sel, 0)])).sum()
    after = (mine & (ts >= after_from[np.maximum(sel, 0)])).sum()
    return before / days_before, after / days_after


def test_fading_rate_drops_after_fade_start(frames):
    before, after = _rates_around_change(frames, "fading", gap_days=SMALL.fade_half_life_days)
    assert before > 0.3
    assert after < 0.5 * before  # at least one half-life later the rate has halved
    stable_before, stable_after = _rates_around_change(frames, "stable", gap_days=0)
    assert 0.8 < stable_after / stable_before < 1.25


def test_periodic_interests_come_in_bursts(frames):
    pair = _pair_of_events(frames)
    truth = frames["truth"]
    period = pc.fill_null(truth["period_days"], 0).to_numpy()
    day = np.floor((frames["ts"] - synthetic.start_epoch_us(SMALL.start) / 1e6) / DAY).astype(int)
    checked = 0
    for row in np.nonzero(frames["kind"] == "periodic")[0]:
        days = day[pair == row]
        if len(days) < 10:
            continue
        checked += 1
        # Active on at most 1 + P // 5 residues of the period, far fewer than P.
        assert len(np.unique(days % period[row])) <= 1 + period[row] // 5
    assert checked > 20


def test_items_follow_zipf_within_category():
    cfg = SyntheticConfig(num_items=60, num_categories=3, zipf_exponent=1.1, seed=7)
    catalog = synthetic.build_catalog(cfg)
    rng = np.random.default_rng(0)
    category = np.full(200_000, 1)
    drawn = synthetic.draw_items(rng, catalog, category)
    lo, hi = catalog.category_start[1], catalog.category_start[2]
    members = catalog.item_ids[lo:hi]
    assert np.all(np.isin(drawn, members))  # never outside the category
    freq = np.array([(drawn == m).sum() for m in members]) / len(drawn)
    expected = synthetic.zipf_weights(hi - lo, 1.1)
    np.testing.assert_allclose(freq, expected, atol=0.004)
    slope = np.polyfit(np.log(np.arange(1, 6)), np.log(freq[:5]), 1)[0]
    assert -1.3 < slope < -0.9


def test_generated_popularity_is_skewed(frames):
    # Within each category the rank-frequency curve falls like a power law.
    for cat in range(SMALL.num_categories):
        counts = np.sort(np.unique(frames["item"][frames["cat"] == cat], return_counts=True)[1])[::-1]
        assert counts[0] > 5 * np.median(counts)
        top = counts[:8]
        slope = np.polyfit(np.log(np.arange(1, len(top) + 1)), np.log(top), 1)[0]
        assert -1.6 < slope < -0.6, (cat, slope)


def test_event_types_are_mostly_views_and_clicks(small):
    events = ds.dataset(small.events_dir).to_table(columns=["event_type"])["event_type"]
    counts = {d["values"]: d["counts"] for d in pc.value_counts(events).to_pylist()}
    assert set(counts) == set(synthetic.EVENT_TYPES)
    assert (counts["view"] + counts["click"]) / len(events) > 0.8
    assert counts["view"] > counts["click"] > counts["cart"] > counts["purchase"]


def test_timestamps_lie_within_the_days(frames):
    start = synthetic.start_epoch_us(SMALL.start) / 1e6
    assert start == 1767225600.0  # 2026-01-01T00:00:00Z
    assert frames["ts"].min() >= start and frames["ts"].max() < start + SMALL.num_days * DAY


def test_bad_rows_are_injected_and_rejected_exactly(small, tmp_path):
    raw = ds.dataset(small.events_dir).to_table()
    null_user = raw["user_id"].null_count
    null_time = raw["timestamp"].null_count
    valid = raw.filter(pc.and_(pc.is_valid(raw["user_id"]), pc.is_valid(raw["timestamp"])))
    distinct = valid.group_by(["user_id", "item_id", "timestamp", "event_type"]).aggregate([]).num_rows
    duplicates = valid.num_rows - distinct
    assert null_user > 0 and null_time > 0 and duplicates > 0
    bad = null_user + null_time + duplicates
    assert abs(bad - SMALL.bad_row_fraction * (raw.num_rows - bad)) <= 3  # rounding per shard
    log = read_events(DataConfig(path=str(small.events_dir)), rejects_path=tmp_path / "rejects.parquet")
    assert log.report.rejected == {"null user_id": null_user, "null timestamp": null_time, "duplicate": duplicates}
    assert log.report.rows_read == raw.num_rows
    assert log.report.rows_used == distinct
    assert pq.read_metadata(tmp_path / "rejects.parquet").num_rows == bad


def test_no_bad_rows_when_fraction_is_zero(tmp_path):
    paths = synthetic.generate(dataclasses.replace(SMALL, num_users=100, bad_row_fraction=0.0), tmp_path)
    log = read_events(DataConfig(path=str(paths.events_dir), items_path=str(paths.items_path)))
    assert log.report.rejected == {}
    assert log.num_items == SMALL.num_items  # the items table adds never-seen items
    assert np.all(log.item_category >= 0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_items": 4}, "num_items must be >= synthetic.num_categories"),
        ({"max_interests": 1}, "max_interests must be >= min_interests"),
        ({"fade_fraction": 0.7, "stop_fraction": 0.5}, "fade_fraction + stop_fraction + reactivate_fraction + bursty_fraction must be <= 1"),
        ({"bad_row_fraction": 1.5}, "bad_row_fraction must be in [0, 1]"),
        ({"start": "first of may"}, "synthetic.start: expected an ISO-8601 date"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("+", r"\+")):
        synthetic.generate(dataclasses.replace(SMALL, **change), tmp_path)
