"""Synthetic behavior logs with known interest-forgetting ground truth.

``synthetic.story`` chooses how the counts are made: ``classic`` (below), or
one of the stories of ``fgjax.data.stories`` (``seasonal``, ``hawkes``,
``engaged``), each unlike this one, which share its catalog, event writing,
bad rows and ground-truth table. In the classic story the generator draws users with a few latent interests (item categories) and
gives each (user, interest) pair a *kind*:

- ``stable``: a constant daily rate,
- ``fading``: the rate halves every ``fade_half_life_days`` from a fade start,
- ``stopped``: the rate drops to zero at a stop time,
- ``periodic``: (all interests of a share of users) active in bursts of
  ``1 + P // 5`` days every ``P`` days, with the same average rate: long
  silences that are not forgetting,
- ``reactivated``: stops at a change time and comes back at the same rate
  after a pause of ``pause_days_min .. pause_days_max`` days,
- ``bursty``: stable, with noisy bursts (``burst_multiplier`` times the rate
  on a random ``burst_day_share`` of days) that are not a new baseline.

Independently, a share of the pairs starts late (``new_interest_fraction``):
new interests.

Daily counts per (user, interest, day) are Poisson; each event gets a uniform
time within its day, an event type (mostly views and clicks) and an item of
the interest's category drawn by Zipf popularity. The change times (fade start,
stop time, resume time) and periods are written to ``ground_truth.parquet`` so forgetting
detection can be scored against them.

Everything is vectorized over the users of a shard; shard ``s`` draws from
``np.random.default_rng([seed, s])``, so a shard's bytes depend only on the
seed and the shard, and memory is bounded by one shard. A small share of bad
rows (exact duplicates, null ``user_id``, null ``timestamp``) is mixed in so
the reader's rejects path has something to show.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fgjax.config import SyntheticConfig
from fgjax.errors import ConfigError, DataError

STORY_NAMES = ("classic", "seasonal", "hawkes", "engaged")  # fgjax.data.stories tells the last three
KINDS = ("stable", "fading", "stopped", "periodic", "reactivated", "bursty")
STABLE, FADING, STOPPED, PERIODIC, REACTIVATED, BURSTY = range(len(KINDS))
EVENT_TYPES = ("view", "click", "cart", "purchase")
EVENT_TYPE_PROBS = (0.6, 0.28, 0.08, 0.04)
BAD_ROW_KINDS = ("duplicate", "null user_id", "null timestamp")

# Raw IDs are offset from the dense indices so code that confuses the two fails.
USER_ID_BASE = 10_000_000
ITEM_ID_BASE = 50_000_000

# The catalog draws from its own stream, far above any shard index.
_CATALOG_STREAM = 2**40
_ACTIVITY_SIGMA = 0.5  # per-user activity multiplier ~ lognormal(mean 1, sigma)
_CHANGE_AT = (0.3, 0.8)  # fade/stop time as a share of the interest's remaining days
_DAY_US = 86_400_000_000

EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("event_type", pa.string()),
    ]
)
TRUTH_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("interest", pa.string()),
        ("kind", pa.string()),
        ("start_time", pa.timestamp("us", tz="UTC")),
        ("change_time", pa.timestamp("us", tz="UTC")),
        ("period_days", pa.int32()),
        ("resume_time", pa.timestamp("us", tz="UTC")),
        ("fade_floor", pa.float32()),
        ("fade_half_life_days", pa.float32()),
    ]
)


@dataclasses.dataclass(frozen=True)
class SyntheticPaths:
    """Where ``generate`` wrote its outputs."""

    events_dir: Path  # part-00000.parquet, ... (user_id, item_id, timestamp, event_type)
    items_path: Path  # items.parquet (item_id, category)
    truth_path: Path  # ground_truth.parquet, one row per (user, interest)


@dataclasses.dataclass(frozen=True)
class _Catalog:
    """Items grouped by category, with per-category popularity CDFs."""

    item_ids: np.ndarray  # (items,) int64 raw IDs, grouped by category
    category_start: np.ndarray  # (categories + 1,) int64 offsets into item_ids
    shifted_cdf: np.ndarray  # (items,) float64: category c's popularity CDF + c
    category_weight: np.ndarray  # (categories,) float64, sums to 1
    category_names: tuple[str, ...]


def check_config(config: SyntheticConfig) -> None:
    """Raise ``ConfigError`` for a config the generator cannot honor."""
    problems = [
        (config.num_users < 1, "synthetic.num_users must be >= 1"),
        (config.num_categories < 1, "synthetic.num_categories must be >= 1"),
        (config.num_items < config.num_categories, "synthetic.num_items must be >= synthetic.num_categories"),
        (config.num_days < 1, "synthetic.num_days must be >= 1"),
        (config.min_interests < 1, "synthetic.min_interests must be >= 1"),
        (config.max_interests < config.min_interests, "synthetic.max_interests must be >= min_interests"),
        (config.events_per_interest_per_day < 0, "synthetic.events_per_interest_per_day must be >= 0"),
        (config.users_per_shard < 1, "synthetic.users_per_shard must be >= 1"),
        (config.zipf_exponent < 0, "synthetic.zipf_exponent must be >= 0"),
        (config.category_zipf_exponent < 0, "synthetic.category_zipf_exponent must be >= 0"),
        (not config.fade_half_life_days > 0, "synthetic.fade_half_life_days must be > 0"),
    ]
    problems += [
        (config.period_days_min < 2, "synthetic.period_days_min must be >= 2"),
        (config.period_days_max < config.period_days_min, "synthetic.period_days_max must be >= period_days_min"),
        (config.pause_days_min < 1, "synthetic.pause_days_min must be >= 1"),
        (config.pause_days_max < config.pause_days_min, "synthetic.pause_days_max must be >= pause_days_min"),
        (config.burst_multiplier < 1, "synthetic.burst_multiplier must be >= 1"),
        (config.story not in STORY_NAMES, f"synthetic.story must be one of {', '.join(STORY_NAMES)}"),
    ]
    shares = ("fade_fraction", "stop_fraction", "reactivate_fraction", "bursty_fraction")
    for name in shares + ("periodic_fraction", "bad_row_fraction", "new_interest_fraction", "burst_day_share"):
        value = getattr(config, name)
        problems.append((not 0.0 <= value <= 1.0, f"synthetic.{name} must be in [0, 1], got {value}"))
    problems.append(
        (sum(getattr(config, n) for n in shares) > 1.0, f"synthetic: {' + '.join(shares)} must be <= 1")
    )
    for bad, message in problems:
        if bad:
            raise ConfigError(message)
    start_epoch_us(config.start)


def start_epoch_us(start: str) -> int:
    """``"2026-01-01"`` (ISO 8601; naive = UTC) -> epoch microseconds."""
    try:
        moment = dt.datetime.fromisoformat(start)
    except ValueError:
        raise ConfigError(f"synthetic.start: expected an ISO-8601 date such as 2026-01-01, got {start!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(round(moment.timestamp() * 1e6))


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """(n,) float64 probabilities ~ rank^-exponent for ranks 1..n."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def category_names(num_categories: int) -> tuple[str, ...]:
    """``("c00", "c01", ...)``, zero-padded so names sort like indices."""
    width = max(2, len(str(num_categories - 1)))
    return tuple(f"c{c:0{width}d}" for c in range(num_categories))


def build_catalog(config: SyntheticConfig) -> _Catalog:
    """Assign items to categories and give each a Zipf popularity rank.

    Every category gets at least one item; the rest are spread multinomially.
    Raw item IDs are shuffled so an item's ID says nothing about its category.
    """
    rng = np.random.default_rng([config.seed, _CATALOG_STREAM])
    c, n = config.num_categories, config.num_items
    sizes = 1 + rng.multinomial(n - c, np.full(c, 1.0 / c))
    category_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    item_ids = ITEM_ID_BASE + rng.permutation(n).astype(np.int64)
    # Within a category the position is the popularity rank (rank 1 first).
    shifted_cdf = np.empty(n, dtype=np.float64)
    for k in range(c):  # a loop over categories, not over items
        lo, hi = category_start[k], category_start[k + 1]
        shifted_cdf[lo:hi] = k + np.cumsum(zipf_weights(hi - lo, config.zipf_exponent))
    category_weight = zipf_weights(c, config.category_zipf_exponent)[rng.permutation(c)]
    return _Catalog(item_ids, category_start, shifted_cdf, category_weight, category_names(c))


def items_table(catalog: _Catalog) -> pa.Table:
    """items.parquet: (item_id int64, category string), sorted by item_id."""
    sizes = np.diff(catalog.category_start)
    category = np.repeat(np.arange(len(sizes)), sizes)
    order = np.argsort(catalog.item_ids, kind="stable")
    names = pa.array(catalog.category_names, pa.string())
    return pa.table(
        {
            "item_id": pa.array(catalog.item_ids[order], pa.int64()),
            "category": names.take(pa.array(category[order])),
        }
    )


def draw_interests(
    rng: np.random.Generator, num_users: int, weight: np.ndarray, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's distinct interests, popular categories more likely.

    Weighted sampling without replacement by the Gumbel-top-k trick.
    Returns ``(pair_user (pairs,), pair_category (pairs,))``, grouped by user.
    """
    c = len(weight)
    count = np.minimum(rng.integers(lo, hi + 1, size=num_users), c)
    keys = np.log(weight)[None, :] + rng.gumbel(size=(num_users, c))
    ranked = np.argsort(-keys, axis=1, kind="stable")
    chosen = np.arange(c)[None, :] < count[:, None]
    pair_user = np.nonzero(chosen)[0]
    return pair_user, ranked[chosen]


@dataclasses.dataclass(frozen=True)
class _Pairs:
    """Per (user, interest) latent parameters, all (pairs,)."""

    user: np.ndarray  # index into the shard's users
    category: np.ndarray
    kind: np.ndarray  # index into KINDS
    start_day: np.ndarray
    change_day: np.ndarray  # meaningful for fading / stopped / reactivated
    resume_day: np.ndarray  # meaningful for reactivated
    period: np.ndarray  # meaningful for periodic
    burst: np.ndarray
    phase: np.ndarray
    activity: np.ndarray  # the user's rate multiplier
    burst_day: np.ndarray  # (pairs, days) bool, a burst day of a bursty interest


@dataclasses.dataclass(frozen=True)
class TrueRates:
    """What generated a story's counts, per (user, interest) and day: for the Bayes ceiling of detection
    (``fgjax.evaluation.oracle``), which knows them and has to find only the change. All ``(pairs, days)``.

    The series ``observed`` is Poisson with mean ``base * m + excited`` on each day, where ``m`` is the
    change's multiplier (1 before it; 0 once stopped or paused; a fade's ``floor + (1 - floor) * 0.5 **
    (days / half_life)``) and 0 before the interest starts.
    """

    observed: np.ndarray  # int64: the counts, or for hawkes the sessions (each holds one or more events)
    base: np.ndarray  # float64: the mean the change multiplies (had the interest never changed)
    excited: np.ndarray  # float64: a mean no change touches (hawkes: sessions excited by earlier ones; else 0)


@dataclasses.dataclass(frozen=True)
class StoryDraw:
    """What a story drew for one shard: the ground truth per (user, interest) and its daily counts.

    All ``(pairs,)`` except ``counts``; days are counted from ``config.start``.
    """

    user: np.ndarray  # index into the shard's users
    category: np.ndarray
    kind: np.ndarray  # index into KINDS
    start_day: np.ndarray
    change_day: np.ndarray  # stop, pause or fade start (meaningful for fading / stopped / reactivated)
    resume_day: np.ndarray  # meaningful for reactivated
    period: np.ndarray  # days, meaningful for periodic
    fade_floor: np.ndarray  # fading: the share of the former rate the fade tends to (0 = to nothing)
    fade_half_life: np.ndarray  # fading: days for the rate's excess over the floor to halve
    counts: np.ndarray  # (pairs, days) int64 events per day
    rates: TrueRates | None = None  # what generated the counts (``draw_story(with_rates=True)``), else None


def poisson_rates(counts: np.ndarray, base: np.ndarray) -> TrueRates:
    """``TrueRates`` of Poisson counts whose no-change mean is ``base`` (nothing excited)."""
    return TrueRates(counts, np.asarray(base, np.float64), np.zeros(counts.shape))


def draw_classic(rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, num_users: int, *,
                 with_rates: bool = False) -> StoryDraw:
    """The ``classic`` story: the kinds of this module's docstring, Poisson counts per day."""
    pairs = draw_pairs(rng, config, catalog, num_users)
    counts = rng.poisson(daily_rates(pairs, config))
    n = len(pairs.user)
    rates = None
    if with_rates:  # the same interests with their changes left out (periodic and bursty ones as they are)
        changes = np.isin(pairs.kind, (FADING, STOPPED, REACTIVATED))
        rates = poisson_rates(counts, daily_rates(dataclasses.replace(pairs, kind=np.where(changes, STABLE, pairs.kind)),
                                                  config))
    return StoryDraw(
        pairs.user, pairs.category, pairs.kind, pairs.start_day, pairs.change_day, pairs.resume_day, pairs.period,
        np.zeros(n), np.full(n, config.fade_half_life_days, np.float64), counts, rates,
    )


def draw_story(rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, num_users: int, *,
               with_rates: bool = False) -> StoryDraw:
    """The shard's draw under ``config.story`` (``classic`` here; the others in ``fgjax.data.stories``).

    ``with_rates``: also return what generated the counts (``StoryDraw.rates``), from the same draws (the
    counts do not change).
    """
    if config.story == "classic":
        return draw_classic(rng, config, catalog, num_users, with_rates=with_rates)
    from fgjax.data.stories import STORIES  # the other stories build on this module

    return STORIES[config.story](rng, config, catalog, num_users, with_rates=with_rates)


def draw_pairs(rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, num_users: int) -> _Pairs:
    """Draw interests, kinds, start/change days and periods for a shard's users."""
    d = config.num_days
    user, category = draw_interests(
        rng, num_users, catalog.category_weight, config.min_interests, config.max_interests
    )
    pairs = len(user)
    periodic_user = rng.random(num_users) < config.periodic_fraction
    r = rng.random(pairs)
    edges = np.cumsum([config.fade_fraction, config.stop_fraction, config.reactivate_fraction, config.bursty_fraction])
    kind = np.array([FADING, STOPPED, REACTIVATED, BURSTY, STABLE])[np.searchsorted(edges, r, side="right")]
    kind = np.where(periodic_user[user], PERIODIC, kind)
    late = rng.random(pairs) < config.new_interest_fraction
    start_day = np.where(late, rng.integers(1, max(2, d // 2), size=pairs), 0)
    start_day = np.minimum(start_day, d - 1)
    share = rng.uniform(*_CHANGE_AT, size=pairs)
    change_day = start_day + np.maximum(1, np.floor((d - start_day) * share).astype(np.int64))
    pause = rng.integers(config.pause_days_min, config.pause_days_max + 1, size=pairs)
    period = rng.integers(config.period_days_min, config.period_days_max + 1, size=pairs)
    burst = 1 + period // 5
    phase = rng.integers(0, period)
    activity = rng.lognormal(-0.5 * _ACTIVITY_SIGMA**2, _ACTIVITY_SIGMA, size=num_users)
    burst_day = (rng.random((pairs, d)) < config.burst_day_share) & (kind == BURSTY)[:, None]
    return _Pairs(
        user, category, kind, start_day, change_day, change_day + pause, period, burst, phase, activity[user], burst_day
    )


def daily_rates(pairs: _Pairs, config: SyntheticConfig) -> np.ndarray:
    """(pairs, days) expected events per day of each (user, interest)."""
    num_days, fade_half_life_days = config.num_days, config.fade_half_life_days
    day = np.arange(num_days)[None, :]
    since_change = day - pairs.change_day[:, None]
    fading = np.where(since_change >= 0, 0.5 ** ((since_change + 0.5) / fade_half_life_days), 1.0)
    stopped = (since_change < 0).astype(np.float64)
    on = ((day - pairs.phase[:, None]) % pairs.period[:, None]) < pairs.burst[:, None]
    periodic = on * (pairs.period / pairs.burst)[:, None]  # same average rate as stable
    paused = 1.0 - (1.0 - stopped) * (day < pairs.resume_day[:, None])
    bursty = np.where(pairs.burst_day, config.burst_multiplier, 1.0)
    kind = pairs.kind[:, None]
    multiplier = np.select(
        [kind == FADING, kind == STOPPED, kind == PERIODIC, kind == REACTIVATED, kind == BURSTY],
        [fading, stopped, periodic, paused, bursty],
        1.0,
    )
    started = day >= pairs.start_day[:, None]
    return config.events_per_interest_per_day * pairs.activity[:, None] * multiplier * started


def draw_items(rng: np.random.Generator, catalog: _Catalog, category: np.ndarray) -> np.ndarray:
    """(events,) raw item IDs drawn by Zipf popularity within each event's category.

    One ``searchsorted`` over the shifted CDFs: category c's CDF lives in
    (c, c + 1], so ``c + u`` lands inside category c.
    """
    pos = np.searchsorted(catalog.shifted_cdf, category + rng.random(len(category)), side="right")
    pos = np.clip(pos, catalog.category_start[category], catalog.category_start[category + 1] - 1)
    return catalog.item_ids[pos]


def inject_bad_rows(
    rng: np.random.Generator, num_events: int, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mix copies of random rows, each made bad one of three ways, into the log.

    Returns ``(source (rows,), null_user (rows,), null_timestamp (rows,))``: row
    r of the output is a copy of clean row ``source[r]``; a bad copy follows
    its source row. Duplicates are the copies with neither null.
    """
    num_bad = int(round(fraction * num_events)) if num_events else 0
    src = rng.integers(0, max(num_events, 1), size=num_bad)
    bad_kind = rng.integers(0, len(BAD_ROW_KINDS), size=num_bad)
    source = np.concatenate([np.arange(num_events), src])
    order = np.argsort(np.concatenate([2 * np.arange(num_events), 2 * src + 1]), kind="stable")
    is_bad = np.concatenate([np.zeros(num_events, bool), np.ones(num_bad, bool)])[order]
    kind = np.concatenate([np.full(num_events, -1), bad_kind])[order]
    return source[order], is_bad & (kind == 1), is_bad & (kind == 2)


def generate_shard(
    config: SyntheticConfig, catalog: _Catalog, shard: int, start_us: int
) -> tuple[pa.Table, pa.Table]:
    """Events and ground truth of shard ``shard`` (users ``shard * users_per_shard ...``)."""
    rng = np.random.default_rng([config.seed, shard])
    first_user = shard * config.users_per_shard
    num_users = min(config.users_per_shard, config.num_users - first_user)
    d = config.num_days
    pairs = draw_story(rng, config, catalog, num_users)
    counts = pairs.counts
    cell = np.repeat(np.arange(counts.size), counts.ravel())
    pair, day = cell // d, cell % d
    timestamp = start_us + day * _DAY_US + rng.integers(0, _DAY_US, size=len(cell))
    user_id = USER_ID_BASE + first_user + pairs.user[pair]
    item_id = draw_items(rng, catalog, pairs.category[pair])
    event_type = rng.choice(len(EVENT_TYPES), size=len(cell), p=EVENT_TYPE_PROBS).astype(np.int8)
    order = np.lexsort((item_id, user_id, timestamp))  # a log is written in time order
    source, null_user, null_time = inject_bad_rows(rng, len(cell), config.bad_row_fraction)
    rows = order[source]
    events = pa.table(
        [
            pa.array(user_id[rows], pa.int64(), mask=null_user),
            pa.array(item_id[rows], pa.int64()),
            pa.array(timestamp[rows], pa.timestamp("us", tz="UTC"), mask=null_time),
            pa.DictionaryArray.from_arrays(event_type[rows], pa.array(EVENT_TYPES)).cast(pa.string()),
        ],
        schema=EVENTS_SCHEMA,
    )
    return events, truth_table(pairs, catalog, first_user, start_us)


def truth_table(pairs: StoryDraw, catalog: _Catalog, first_user: int, start_us: int) -> pa.Table:
    """One row per (user, interest): kind, start time, change time, period, resume time, fade floor and half-life.

    A fading interest's rate is ``floor + (1 - floor) * 0.5 ** (days since change / half-life)`` of its
    former rate, so it falls below a share ``q`` of it (``evaluate.fade_forgotten_share``) after
    ``half-life * log2((1 - floor) / (q - floor))`` days, and never when ``floor >= q``.
    """
    has_change = np.isin(pairs.kind, [FADING, STOPPED, REACTIVATED])
    fading = pairs.kind == FADING
    periodic = pairs.kind == PERIODIC
    resumes = pairs.kind == REACTIVATED
    return pa.table(
        [
            pa.array(USER_ID_BASE + first_user + pairs.user, pa.int64()),
            pa.array(catalog.category_names, pa.string()).take(pa.array(pairs.category)),
            pa.array(KINDS, pa.string()).take(pa.array(pairs.kind)),
            pa.array(start_us + pairs.start_day * _DAY_US, pa.timestamp("us", tz="UTC")),
            pa.array(start_us + pairs.change_day * _DAY_US, pa.timestamp("us", tz="UTC"), mask=~has_change),
            pa.array(pairs.period.astype(np.int32), pa.int32(), mask=~periodic),
            pa.array(start_us + pairs.resume_day * _DAY_US, pa.timestamp("us", tz="UTC"), mask=~resumes),
            pa.array(pairs.fade_floor.astype(np.float32), pa.float32(), mask=~fading),
            pa.array(pairs.fade_half_life.astype(np.float32), pa.float32(), mask=~fading),
        ],
        schema=TRUTH_SCHEMA,
    )


def generate(config: SyntheticConfig, out_dir: str | Path) -> SyntheticPaths:
    """Write a synthetic behavior log with ground truth under ``out_dir``.

    Layout: ``out_dir/events/part-00000.parquet ...`` (``users_per_shard``
    users each), ``out_dir/items.parquet``, ``out_dir/ground_truth.parquet``,
    and ``out_dir/_fgjax_generated.json`` listing the shards. The shards an
    earlier ``generate`` listed there are removed first, so a smaller run never leaves stale shards of a larger
    one; files it did not write are never removed nor mixed in.

    Raises:
      DataError: ``out_dir/events`` holds files ``generate`` did not write.
    """
    check_config(config)
    out_dir = Path(out_dir)
    paths = SyntheticPaths(out_dir / "events", out_dir / "items.parquet", out_dir / "ground_truth.parquet")
    _clear_own_shards(paths.events_dir, out_dir / _GENERATED)
    catalog = build_catalog(config)
    pq.write_table(items_table(catalog), paths.items_path)
    start_us = start_epoch_us(config.start)
    num_shards = -(-config.num_users // config.users_per_shard)
    with pq.ParquetWriter(paths.truth_path, TRUTH_SCHEMA) as truth_writer:
        for shard in range(num_shards):
            events, truth = generate_shard(config, catalog, shard, start_us)
            pq.write_table(events, paths.events_dir / f"part-{shard:05d}.parquet")
            truth_writer.write_table(truth)
    shards = [f"part-{shard:05d}.parquet" for shard in range(num_shards)]
    (out_dir / _GENERATED).write_text(json.dumps({"shards": shards}) + "\n")
    return paths


_GENERATED = "_fgjax_generated.json"


def _clear_own_shards(events_dir: Path, marker: Path) -> None:
    """Remove the shards an earlier ``generate`` listed in ``marker``; refuse an events folder with other files."""
    events_dir.mkdir(parents=True, exist_ok=True)
    try:
        own = set(json.loads(marker.read_text())["shards"]) if marker.is_file() else set()
    except (ValueError, KeyError, TypeError):
        own = set()
    present = sorted(p.name for p in events_dir.iterdir())
    foreign = [name for name in present if name not in own]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f", ... ({len(foreign)} files)" if len(foreign) > 3 else "")
        raise DataError(f"'{events_dir}' holds files generate did not write ({shown}): generate into an empty "
                        "folder (it never removes or mixes in files it did not write)")
    for name in present:
        (events_dir / name).unlink()
    marker.unlink(missing_ok=True)
