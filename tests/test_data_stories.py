"""The generative stories beside the classic one: each keeps its promise and writes the same files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fgjax.config import SyntheticConfig
from fgjax.data import stories, synthetic
from fgjax.errors import ConfigError

BASE = SyntheticConfig(num_users=400, num_items=200, num_categories=8, num_days=84, users_per_shard=400, seed=4)


def draw(story: str, **changes) -> synthetic.StoryDraw:
    config = dataclasses.replace(BASE, story=story, **changes)
    catalog = synthetic.build_catalog(config)
    return synthetic.draw_story(np.random.default_rng([config.seed, 0]), config, catalog, config.num_users)


@pytest.fixture(scope="module", params=["seasonal", "hawkes", "engaged"])
def story(request):
    return request.param, draw(request.param)


def test_each_story_writes_the_classic_files(tmp_path):
    for name in ("seasonal", "hawkes", "engaged"):
        paths = synthetic.generate(dataclasses.replace(BASE, story=name, num_users=60), tmp_path / name)
        truth = pq.read_table(paths.truth_path)
        assert truth.schema.equals(synthetic.TRUTH_SCHEMA)
        fading = np.array(truth["kind"].to_pylist()) == "fading"
        assert np.array_equal(truth["fade_floor"].is_valid().to_numpy(zero_copy_only=False), fading)
        assert pq.read_table(paths.events_dir / "part-00000.parquet").num_rows > 1000


def test_same_seed_same_counts_and_a_bad_story_is_a_config_error(tmp_path):
    a, b = draw("hawkes"), draw("hawkes")
    np.testing.assert_array_equal(a.counts, b.counts)
    with pytest.raises(ConfigError, match="synthetic.story must be one of"):
        synthetic.generate(dataclasses.replace(BASE, story="nope"), tmp_path)


def test_truth_follows_kind(story):
    name, d = story
    floors = {"seasonal": stories.SEASONAL_FLOORS, "hawkes": stories.HAWKES_FLOORS,
              "engaged": stories.ENGAGED_FLOORS}[name]
    fading = d.kind == synthetic.FADING
    assert set(np.unique(d.fade_floor[fading])) == set(floors)
    assert np.all(d.change_day > d.start_day)
    paused = d.kind == synthetic.REACTIVATED
    assert np.all(d.resume_day[paused] - d.change_day[paused] >= BASE.pause_days_min)
    # No event before an interest starts, none while it is paused or after it stopped.
    day = np.arange(BASE.num_days)[None, :]
    assert not np.any(d.counts * (day < d.start_day[:, None]))
    quiet = paused[:, None] & (day >= d.change_day[:, None]) & (day < d.resume_day[:, None])
    stopped = (d.kind == synthetic.STOPPED)[:, None] & (day >= d.change_day[:, None])
    if name == "hawkes":  # sessions already excited die out on their own, within days
        quiet &= day >= d.change_day[:, None] + 14
        stopped &= day >= d.change_day[:, None] + 14
    assert d.counts[quiet].sum() <= 0.001 * d.counts.sum()
    assert d.counts[stopped].sum() <= 0.001 * d.counts.sum()


def test_fades_approach_their_floor(story):
    _, d = story
    day = np.arange(BASE.num_days)[None, :]
    for floor in np.unique(d.fade_floor):
        rows = (d.kind == synthetic.FADING) & (d.fade_floor == floor)
        before = (d.counts * (day < d.change_day[:, None]) * (day >= d.start_day[:, None]))[rows].sum()
        before_days = (d.change_day - d.start_day)[rows].sum()
        late = day >= d.change_day[:, None] + 5 * d.fade_half_life[:, None].astype(int) + 5
        after = (d.counts * late)[rows].sum()
        after_days = late[rows].sum()
        if after_days < 200:
            continue
        ratio = (after / after_days) / (before / before_days)
        assert floor * 0.5 - 0.05 < ratio < floor * 1.5 + 0.08, (floor, ratio)


def test_seasonal_weekend_users_are_quiet_on_weekdays():
    d = draw("seasonal")
    weekday = stories._weekday(dataclasses.replace(BASE, story="seasonal"))
    weekend = np.isin(weekday, (5, 6))
    loyal = (d.kind == synthetic.STABLE) & (d.start_day == 0)
    share = d.counts[loyal][:, weekend].sum(1) / np.maximum(d.counts[loyal].sum(1), 1)
    # Three weekday profiles: flat (2/7 of events on weekends), work week (~7 %), weekend (~80 %).
    assert np.mean(share > 0.6) > 0.1 and np.mean(share < 0.15) > 0.2
    # Heavy-tailed activity: the busiest tenth of loyal interests hold far more than a tenth of the events.
    total = np.sort(d.counts[loyal].sum(1))[::-1]
    assert total[: len(total) // 10].sum() > 0.3 * total.sum()


def test_hawkes_counts_are_clustered():
    d = draw("hawkes")
    loyal = d.counts[(d.kind == synthetic.STABLE) & (d.start_day == 0)].astype(float)
    dispersion = loyal.var(axis=1) / np.maximum(loyal.mean(axis=1), 1e-9)
    assert np.median(dispersion) > 1.8  # Poisson counts would give 1
    # Active days cluster: an active day is followed by another more often than the share of active days.
    on = loyal > 0
    follow = (on[:, 1:] & on[:, :-1]).sum() / on[:, :-1].sum()
    assert follow > on.mean() + 0.1


def test_engaged_users_go_quiet_together_and_churners_stop_together():
    d = draw("engaged")
    users = np.unique(d.user)
    # Churned users: every interest stopped on the same day.
    same_day = [np.all(d.kind[d.user == u] == synthetic.STOPPED) and len(set(d.change_day[d.user == u])) == 1
                for u in users]
    assert 0.05 < np.mean(same_day) < 0.2
    # Loyal interests of one user are silent on the same days more often than independent ones would be.
    loyal = (d.kind == synthetic.STABLE) & (d.start_day == 0)
    pairs = [np.nonzero(loyal & (d.user == u))[0] for u in users]
    pairs = [p[:2] for p in pairs if len(p) >= 2]
    corr = [np.corrcoef(d.counts[p[0]], d.counts[p[1]])[0, 1] for p in pairs]
    assert np.nanmean(corr) > 0.05  # independent interests would give 0


def test_stories_differ_from_classic_and_each_other():
    """Loyal interests' daily dispersion and weekday spread tell the stories apart."""
    weekday = stories._weekday(BASE)
    stats = {}
    for name in ("classic", "seasonal", "hawkes", "engaged"):
        d = draw(name)
        loyal = d.counts[(d.kind == synthetic.STABLE) & (d.start_day == 0)].astype(float)
        by_day = np.array([loyal[:, weekday == w].mean() for w in range(7)])
        stats[name] = (np.median(loyal.var(1) / np.maximum(loyal.mean(1), 1e-9)), by_day.std() / by_day.mean())
    assert stats["classic"][0] < 1.3 and stats["hawkes"][0] > 1.8
    assert stats["seasonal"][1] > 2 * stats["classic"][1]
    assert stats["engaged"][0] > stats["classic"][0] + 0.05


def test_fade_columns_give_the_forgotten_time():
    from fgjax.evaluation.detection import fade_forgotten_days

    days = fade_forgotten_days(np.array([0.0, 0.1, 0.3]), np.array([7.0, 7.0, 7.0]), 0.25)
    assert days[0] == pytest.approx(14.0)  # 0.5 ** 2 = 0.25
    assert days[1] == pytest.approx(7 * np.log2(0.9 / 0.15))
    assert np.isinf(days[2])  # a fade to 30 % is never below 25 %
    assert pc is not None
