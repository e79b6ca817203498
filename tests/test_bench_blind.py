"""bench/blind_story.py, blind_story2.py and blind_story3.py (the generators written blind) and bench/blind.py (their scoring
through fgjax analyze)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import blind, blind_story, blind_story2, blind_story3
from fgjax import kernels
from fgjax.data import synthetic
from fgjax.evaluation.detection import fade_forgotten_days

DAY = 86400


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("blind") / "data"
    blind_story.generate(out, users=200, days=70, seed=3, shards=2)
    return out


def _events(data, start_epoch_s=blind_story.START_EPOCH_S):
    """``(user_id, category, day)`` of every event, day 0 the one starting at ``start_epoch_s``."""
    events = pq.read_table(data / "events").to_pydict()
    items = pq.read_table(data / "items.parquet").to_pydict()
    category = dict(zip(items["item_id"], items["category"]))
    day = [int((t.timestamp() - start_epoch_s) // DAY) for t in events["timestamp"]]
    return list(zip(events["user_id"], [category[i] for i in events["item_id"]], day))


def test_the_story_keeps_its_kinds_promises(small_log):
    """No event after a stop, inside a pause or before a late start; every event is in one of the user's interests;
    fades and stops change after day 20; 3-6 interests a user."""
    truth = pq.read_table(small_log / "truth.parquet").to_pylist()
    by_pair = {(r["user_id"], r["interest"]): r for r in truth}
    events = _events(small_log)
    assert all((u, c) in by_pair for u, c, _ in events)
    _assert_each_event_fits_its_kind(events, by_pair)
    per_user = np.bincount([r["user_id"] for r in truth])[1:]
    assert per_user.min() >= 3 and per_user.max() <= 6
    assert {r["kind"] for r in truth} == set(blind_story.KINDS)
    assert all(r["change_day"] >= 20 for r in truth if r["kind"] in ("stop", "fade", "pause"))


def _assert_each_event_fits_its_kind(events, by_pair):
    """No event on or after a stop, inside a pause or before a late start."""
    for u, c, d in events:
        r = by_pair[(u, c)]
        if r["kind"] == "stop":
            assert d < r["change_day"]
        if r["kind"] == "pause":
            assert not r["change_day"] <= d < r["return_day"]
        if r["kind"] == "late":
            assert d >= r["start_day"]


def _generate(story, out, users, days, seed):
    """Generate ``story`` under ``out`` and read back its truth rows, the rows by (user, interest) and its events
    (``_events``), checking that every event is a truth pair's, inside the log."""
    story.generate(out, users=users, days=days, seed=seed, shards=2)
    truth = pq.read_table(out / "truth.parquet").to_pylist()
    by_pair = {(r["user_id"], r["interest"]): r for r in truth}
    events = _events(out, story.START_EPOCH_S)
    assert events and all((u, c) in by_pair and 0 <= d < days for u, c, d in events)
    return truth, by_pair, events


def test_the_second_story_keeps_its_promises_and_reads_as_the_matrix_reads_it(tmp_path):
    """blind_story2: no event after a stop, inside a pause, before a late start or in its user's vacation; a
    periodic interest's events on one day of its period; 2-7 interests a user; the same files for the same seed;
    and ``load_story`` counts every event of it in its user's slot on its day."""
    users, days, seed = 150, 40, 5
    out = tmp_path / "data"
    truth, by_pair, events = _generate(blind_story2, out, users, days, seed)
    world = blind_story2._simulate(users, days, seed)
    vacation = {u + 1: range(s, s + n) for u, (s, n) in enumerate(zip(world["vac_start"], world["vac_len"])) if n}
    assert vacation  # a quarter of the users take one
    assert not any(d in vacation.get(u, ()) for u, _, d in events)
    _assert_each_event_fits_its_kind(events, by_pair)
    periodic_days = {}
    for u, c, d in events:
        if by_pair[(u, c)]["kind"] == "periodic":
            periodic_days.setdefault((u, c), set()).add(d % int(by_pair[(u, c)]["period_days"]))
    assert periodic_days and all(len(phases) == 1 for phases in periodic_days.values())
    per_user = np.bincount([r["user_id"] for r in truth])[1:]
    assert per_user.min() >= 2 and per_user.max() <= 7 and len(per_user) == users
    assert {r["kind"] for r in truth} == set(blind_story2.KINDS)
    again = tmp_path / "again"
    blind_story2.generate(again, users=users, days=days, seed=seed, shards=2)
    assert pq.read_table(again / "events").equals(pq.read_table(out / "events"))
    loaded = blind.load_story(out, blind_story2.START_EPOCH_S, blind_story2.START_EPOCH_S)
    slot, seen = {}, {}
    for r in truth:
        slot[(r["user_id"], r["interest"])] = seen.get(r["user_id"], 0)
        seen[r["user_id"]] = seen.get(r["user_id"], 0) + 1
    want = np.zeros_like(loaded.counts)
    for u, c, d in events:
        want[d, u - 1, slot[(u, c)]] += 1
    np.testing.assert_array_equal(loaded.counts, want)


def test_the_third_story_keeps_its_promises_and_its_linear_fades_are_scored_on_their_day(tmp_path):
    """blind_story3: no event after a stop, inside a pause or before a late start, nor once a fade to zero has run
    its course; 3-8 interests a user; churners' interests all stop on one day; the same files for the same seed;
    ``load_story`` reads every event; and ``fades_at_share`` puts each linear fade's forgotten day where the
    linear rate crosses the share (never where its floor is at or above it)."""
    users, days, seed = 120, 45, 2
    out = tmp_path / "data"
    truth, by_pair, events = _generate(blind_story3, out, users, days, seed)
    _assert_each_event_fits_its_kind(events, by_pair)
    for u, c, d in events:
        r = by_pair[(u, c)]
        if r["kind"] == "fade" and r["fade_floor"] == 0:
            assert d < r["change_day"] + r["fade_days"]
    per_user = np.bincount([r["user_id"] for r in truth])[1:]
    assert per_user.min() >= 3 and per_user.max() <= 8 and len(per_user) == users
    assert {r["kind"] for r in truth} == set(blind_story3.KINDS)
    stop_days = {}
    for r in truth:
        stop_days.setdefault(r["user_id"], set()).add(r["change_day"] if r["kind"] == "stop" else None)
    assert any(len(v) == 1 and None not in v for v in stop_days.values())  # a churner: one stop day for all
    again = tmp_path / "again"
    blind_story3.generate(again, users=users, days=days, seed=seed, shards=2)
    assert pq.read_table(again / "events").equals(pq.read_table(out / "events"))
    loaded = blind.load_story(out, blind_story3.START_EPOCH_S, blind_story3.START_EPOCH_S)
    assert loaded.counts.sum() == len(events)
    fading = np.array([r["kind"] == "fade" for r in truth])
    floor, length = (np.array([r[k] for r in truth], float) for k in ("fade_floor", "fade_days"))
    assert fading.any() and np.array_equal(np.isfinite(length), fading)
    for share in (0.25, 0.1, 0.05):
        at = blind.fades_at_share(out, loaded, share)
        got = fade_forgotten_days(at.fade_floor, at.fade_half_life, share)[fading]
        want = np.where(floor < share, length * (1 - share) / (1 - floor), np.inf)[fading]
        np.testing.assert_allclose(got, want, rtol=1e-9)
        assert np.isinf(got).any() == (share <= floor[fading].max())
    story2 = tmp_path / "story2"
    blind_story2.generate(story2, users=20, days=40, seed=1, shards=1)
    days2 = blind.load_story(story2, blind_story2.START_EPOCH_S, blind_story2.START_EPOCH_S)
    assert blind.fades_at_share(story2, days2, 0.25) is days2  # exponential fades: as given


def test_load_story_counts_every_event_in_its_users_slot_on_its_day(small_log):
    """``load_story``'s daily counts against a plain count of the events, at day 0 and at an origin one day earlier
    (a window grid that starts before the story: every day shifts by one)."""
    truth = pq.read_table(small_log / "truth.parquet").to_pylist()
    slot, seen = {}, {}
    for r in truth:
        slot[(r["user_id"], r["interest"])] = seen.get(r["user_id"], 0)
        seen[r["user_id"]] = seen.get(r["user_id"], 0) + 1
    for shift in (0, 1):
        days = blind.load_story(small_log, blind_story.START_EPOCH_S - shift * DAY, blind_story.START_EPOCH_S)
        want = np.zeros_like(days.counts)
        for u, c, d in _events(small_log):
            want[d + shift, u - 1, slot[(u, c)]] += 1
        np.testing.assert_array_equal(days.counts, want)
        kinds = [blind.KIND_NAMES[r["kind"]] for r in truth]
        assert [synthetic.KINDS[k] for k in days.kind] == kinds
        stops = [i for i, r in enumerate(truth) if r["kind"] == "stop"]
        assert [days.change[i] for i in stops] == [r["change_day"] + shift for r in (truth[i] for i in stops)]
        assert all(days.change[i] == days.counts.shape[0] for i, r in enumerate(truth) if r["kind"] == "steady")


def test_states_forgotten_holds_each_state_until_its_next_change(small_log, tmp_path):
    """``states.parquet`` holds change rows: a pair is forgotten from its forgotten row until its next change, and
    rows past the scored windows are dropped."""
    truth = pq.read_table(small_log / "truth.parquet").to_pylist()
    days = blind.load_story(small_log, blind_story.START_EPOCH_S, blind_story.START_EPOCH_S)
    first = [r for r in truth if r["user_id"] == 1]
    rows = {"user_id": [1, 1, 1, 1, 2], "interest": [first[1]["interest"]] * 3 + [first[0]["interest"]] * 2,
            "window": [0, 3, 6, 1, 9], "state": ["new", "forgotten", "reactivated", "forgotten", "forgotten"]}
    rows["interest"][4] = next(r for r in truth if r["user_id"] == 2)["interest"]
    path = tmp_path / "states.parquet"
    pq.write_table(pa.table(rows), path)
    flags = blind.states_forgotten(path, days, small_log, 8)
    assert flags.shape == (8, *days.counts.shape[1:])
    assert np.nonzero(flags[:, 0, 1])[0].tolist() == [3, 4, 5]
    assert np.nonzero(flags[:, 0, 0])[0].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert not flags[:, 1].any()  # its only change is past the 8 windows scored
    assert int(flags.sum()) == 10 and kernels.STATE_NAMES.index("forgotten") == kernels.FORGOTTEN


@pytest.mark.slow
def test_the_report_runs_fgjax_analyze_and_scores_what_it_wrote(tmp_path, capsys):
    """End to end on a small log (one window length, one share): fgjax analyze's states.parquet with the detector's
    own verdict gives the same answers as its kernels in process, the rule's best N is the best of its sweep, and the JSON and
    Markdown are written."""
    out = tmp_path / "blind"
    payload = blind.main(["--out", str(out), "--users", "150", "--days", "63", "--windows", "7", "--shares", "0.25"])
    (cell,) = payload["cells"]
    assert cell["window_days"] == 7 and cell["windows"] == 9 and cell["positives"] > 0
    assert cell["in_process_matches_analyze"]
    # Weekly windows: the product's default lends them the shipped verdict, so it runs beside the detector alone.
    assert cell["default_verdict"] == "auto" and (out / "analyze_default_7d_25" / "states.parquet").exists()
    assert cell["default"]["loyal_ever_flagged"] is not None and "(auto)" in (out / "blind.md").read_text()
    assert cell["silence_best"]["f1"] == max(p["f1"] or 0.0 for p in cell["silence_sweep"])
    assert 0.0 <= cell["detector"]["loyal_ever_flagged"] <= 1.0
    assert (out / "analyze_detector_7d_25" / "states.parquet").exists()
    assert json.loads((out / "blind.json").read_text())["cells"][0]["detector"] == cell["detector"]
    assert "| 7-day | 25% |" in (out / "blind.md").read_text() and "7-day" in capsys.readouterr().out
