"""Blind synthetic behaviour log for a shopping / news app ("story 2").

Written without looking at the project's other generators or its detector, so
that a "forgotten interest" detector can be tested out of sample.

The story
---------
Time is measured in whole days. Day ``d`` covers the UTC interval
``[START_EPOCH_S + 86400 d, START_EPOCH_S + 86400 (d + 1))``; day 0 is Monday
2026-03-02, so the weekday of day ``d`` is ``d % 7`` (0 = Monday, 5 = Saturday,
6 = Sunday). Users are numbered 1..U.

There are ``N_CATS`` = 30 categories named ``"c00"`` .. ``"c29"``; category ``c``
owns the items ``c * 1000 + j`` for ``j < ITEMS_PER_CAT`` (= 40). Every event
picks an item of its interest's category uniformly.

Per user (all drawn from one ``np.random.default_rng(seed)``):

* 2-7 interests (uniform integer), distinct categories drawn without replacement.
* An activity multiplier ``m ~ lognormal(mean=0, sigma=0.8)`` (heavy tail).
* A weekly rhythm: 40 % "workweek" users (x1.3 Mon-Fri, x0.25 Sat-Sun),
  20 % "weekend" users (x0.6 Mon-Fri, x2.0 Sat-Sun), 40 % flat (x1). Both
  non-flat rhythms average exactly 1 over a week.
* A mean session size ``S ~ uniform[1.2, 3]``.
* With probability 25 % one vacation: length 5-14 days (uniform integer),
  starting on a day uniform in ``[10, days - 20)``. During it the user has no
  events at all. Vacations are NOT part of the ground truth (a steady interest
  stays "steady"); they are only known inside the generator (``_simulate``).

Per (user, interest) pair:

* Base rate ``r = clip(R * m, 0.05, 6)`` events/day with ``R`` log-uniform in
  ``[0.15, 2.5]``. This is the truth ``rate``: the weekly-average mean events
  per day before any change (for ``periodic`` the long-run mean).
* A kind, with probabilities steady 40 %, periodic 12 %, stop 14 %, fade 14 %,
  late 10 %, pause 10 %. The kind shapes the pair's daily mean ``mu(d)``:

  - ``steady``: ``mu(d) = r``.
  - ``periodic``: period ``P`` uniform integer in ``[5, 14]``, phase uniform
    integer in ``[0, P)``; ``mu(d) = r * P`` when ``(d - phase) % P == 0`` else 0.
  - ``stop``: ``change_day`` uniform integer in ``[15, days - 12)``;
    ``mu(d) = r`` for ``d < change_day``, 0 from ``change_day`` on.
  - ``fade``: ``change_day`` uniform integer in ``[15, days - 15)``, half-life
    ``h`` uniform real in ``[2, 20]`` days; the instantaneous rate is ``r`` before
    ``change_day`` and ``r * 0.5 ** ((t - change_day) / h)`` after, and
    ``mu(d)`` is its integral over ``[d, d + 1)``.
  - ``late``: ``start_day`` uniform integer in ``[10, days - 25)``; ``mu(d) = 0``
    before ``start_day`` and ``r`` from it on.
  - ``pause``: length ``L`` uniform integer in ``[10, 40]``, ``change_day`` uniform
    integer in ``[15, days - L - 7)``, ``return_day = change_day + L``;
    ``mu(d) = 0`` for ``change_day <= d < return_day``, else ``r``.

* The realised daily mean is ``mu(d) * rhythm(weekday(d)) * (0 if on vacation
  else 1)``.

Sessions: on each day a pair gets ``Poisson(daily mean / S)`` sessions. A
session has ``Geometric(p = 1 / S)`` events (support 1, 2, ...; i.e. one event
plus geometric extras, mean ``S``). A session starts at an integer second
uniform in ``[0, 86400 - 1200)`` of its day; its first event is at the start and
every other event at start + an integer second uniform in ``[0, 1200)``, so a
session spans under 20 minutes and never leaves its day.

Small ``days``: every integer range ``[lo, hi)`` above is clamped before drawing
to ``hi' = max(hi, 1)``, ``lo' = max(0, min(lo, hi' - 1))`` so it is never
empty (when the nominal range is empty the draw collapses to ``hi' - 1``, the
latest value that fits). For ``pause`` the upper bound of ``L`` is first lowered
to ``max(1, min(40, days - 23))`` (and its lower bound to ``min(10, that)``) so
that ``[15, days - L - 7)`` is non-empty whenever ``days >= 24``. With the
default ranges every interval is non-empty for ``days >= 40`` without clamping
except ``L``.

Outputs (see ``generate``): sharded event Parquet files, ``items.parquet`` and
``truth.parquet`` with one row per (user, interest) pair.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START_EPOCH_S = 1772409600
KINDS = ("steady", "periodic", "stop", "fade", "late", "pause")
N_CATS = 30
ITEMS_PER_CAT = 40

KIND_PROBS = (0.40, 0.12, 0.14, 0.14, 0.10, 0.10)
DAY_S = 86400
SESSION_SPAN_S = 1200
ITEM_STRIDE = 1000

# weekday multipliers (Mon..Sun) for rhythm types 0 = workweek, 1 = weekend, 2 = flat
_RHYTHMS = np.array(
    [
        [1.3, 1.3, 1.3, 1.3, 1.3, 0.25, 0.25],
        [0.6, 0.6, 0.6, 0.6, 0.6, 2.0, 2.0],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    ]
)


def _clamped_integers(rng: np.random.Generator, lo: object, hi: object, size: int) -> np.ndarray:
    """Uniform integers in [lo, hi) after clamping the range to be non-empty (see module docstring)."""
    hi = np.maximum(np.asarray(hi, dtype=np.int64), 1)
    lo = np.maximum(np.minimum(np.asarray(lo, dtype=np.int64), hi - 1), 0)
    return rng.integers(lo, hi, size=size).astype(np.int64)


def _simulate(users: int, days: int, seed: int) -> dict:
    """Draw the whole world; returns per-user, per-pair and per-event numpy arrays (internal)."""
    if users < 1 or days < 1:
        raise ValueError("users and days must be >= 1")
    rng = np.random.default_rng(seed)

    # ---- users -------------------------------------------------------------
    n_int = rng.integers(2, 8, size=users)
    mult = rng.lognormal(mean=0.0, sigma=0.8, size=users)
    u = rng.random(users)
    rhythm = np.where(u < 0.4, 0, np.where(u < 0.6, 1, 2))
    sess_mean = rng.uniform(1.2, 3.0, size=users)
    has_vac = rng.random(users) < 0.25
    vac_start = _clamped_integers(rng, 10, days - 20, users)
    vac_len = rng.integers(5, 15, size=users)
    vac_start = np.where(has_vac, vac_start, -1)
    vac_len = np.where(has_vac, vac_len, 0)

    # interests: the first n_int entries of a random permutation of the categories
    perm = np.argsort(rng.random((users, N_CATS)), axis=1)
    take = np.arange(N_CATS)[None, :] < n_int[:, None]
    pair_user = np.nonzero(take)[0].astype(np.int64)
    pair_cat = perm[take].astype(np.int64)
    n_pairs = pair_user.size

    # ---- pairs -------------------------------------------------------------
    kind = rng.choice(len(KINDS), size=n_pairs, p=KIND_PROBS)
    base = np.exp(rng.uniform(np.log(0.15), np.log(2.5), size=n_pairs))
    rate = np.clip(base * mult[pair_user], 0.05, 6.0)

    start_day = np.zeros(n_pairs, dtype=np.int64)
    change_day = np.full(n_pairs, np.nan)
    half_life = np.full(n_pairs, np.nan)
    return_day = np.full(n_pairs, np.nan)
    period = np.full(n_pairs, np.nan)
    phase = np.zeros(n_pairs, dtype=np.int64)

    # draw every kind's parameters for all pairs (fixed draw count), then keep the relevant ones
    per_all = rng.integers(5, 15, size=n_pairs)
    phase_all = rng.integers(0, per_all)
    stop_all = _clamped_integers(rng, 15, days - 12, n_pairs)
    fade_all = _clamped_integers(rng, 15, days - 15, n_pairs)
    hl_all = rng.uniform(2.0, 20.0, size=n_pairs)
    late_all = _clamped_integers(rng, 10, days - 25, n_pairs)
    l_hi = max(1, min(40, days - 23))
    l_lo = min(10, l_hi)
    plen_all = rng.integers(l_lo, l_hi + 1, size=n_pairs)
    pause_all = _clamped_integers(rng, 15, days - plen_all - 7, n_pairs)

    k_per, k_stop, k_fade, k_late, k_pause = (KINDS.index(k) for k in ("periodic", "stop", "fade", "late", "pause"))
    m = kind == k_per
    period[m] = per_all[m]
    phase[m] = phase_all[m]
    m = kind == k_stop
    change_day[m] = stop_all[m]
    m = kind == k_fade
    change_day[m] = fade_all[m]
    half_life[m] = hl_all[m]
    m = kind == k_late
    start_day[m] = late_all[m]
    m = kind == k_pause
    change_day[m] = pause_all[m]
    return_day[m] = pause_all[m] + plen_all[m]

    # ---- daily means (pairs x days) ---------------------------------------
    d = np.arange(days, dtype=np.int64)[None, :]
    mu = np.repeat(rate[:, None], days, axis=1)

    idx = np.flatnonzero(kind == k_per)
    if idx.size:
        p = per_all[idx][:, None]
        active = (d - phase_all[idx][:, None]) % p == 0
        mu[idx] = np.where(active, rate[idx][:, None] * p, 0.0)
    idx = np.flatnonzero(kind == k_stop)
    if idx.size:
        mu[idx] = np.where(d >= stop_all[idx][:, None], 0.0, mu[idx])
    idx = np.flatnonzero(kind == k_fade)
    if idx.size:
        c = fade_all[idx][:, None]
        h = hl_all[idx][:, None]
        x = (d - c).astype(np.float64)
        integral = h / np.log(2.0) * (0.5 ** (x / h) - 0.5 ** ((x + 1.0) / h))
        mu[idx] = np.where(d >= c, rate[idx][:, None] * integral, mu[idx])
    idx = np.flatnonzero(kind == k_late)
    if idx.size:
        mu[idx] = np.where(d < late_all[idx][:, None], 0.0, mu[idx])
    idx = np.flatnonzero(kind == k_pause)
    if idx.size:
        c = pause_all[idx][:, None]
        inside = (d >= c) & (d < c + plen_all[idx][:, None])
        mu[idx] = np.where(inside, 0.0, mu[idx])

    user_day = _RHYTHMS[rhythm][:, d[0] % 7]  # users x days
    on_vac = (d >= vac_start[:, None]) & (d < (vac_start + vac_len)[:, None])
    user_day = np.where(on_vac, 0.0, user_day)
    mu *= user_day[pair_user]

    # ---- sessions and events ----------------------------------------------
    n_sess = rng.poisson(mu / sess_mean[pair_user][:, None]).ravel()
    cells = np.flatnonzero(n_sess)
    sess_cell = np.repeat(cells, n_sess[cells])
    sess_pair = sess_cell // days
    sess_day = sess_cell % days
    n_total_sess = sess_cell.size
    sizes = rng.geometric(1.0 / sess_mean[pair_user[sess_pair]]).astype(np.int64)
    sess_t0 = rng.integers(0, DAY_S - SESSION_SPAN_S, size=n_total_sess)
    ev_sess = np.repeat(np.arange(n_total_sess), sizes)
    n_ev = ev_sess.size
    offset = rng.integers(0, SESSION_SPAN_S, size=n_ev)
    offset[np.cumsum(sizes) - sizes] = 0
    ev_pair = sess_pair[ev_sess]
    ts = START_EPOCH_S + sess_day[ev_sess] * DAY_S + sess_t0[ev_sess] + offset
    item = pair_cat[ev_pair] * ITEM_STRIDE + rng.integers(0, ITEMS_PER_CAT, size=n_ev)

    return {
        "pair_user": pair_user,
        "pair_cat": pair_cat,
        "kind": kind,
        "rate": rate,
        "start_day": start_day,
        "change_day": change_day,
        "half_life": half_life,
        "return_day": return_day,
        "period": period,
        "phase": phase,
        "vac_start": vac_start,
        "vac_len": vac_len,
        "rhythm": rhythm,
        "sess_mean": sess_mean,
        "ev_user": pair_user[ev_pair] + 1,
        "ev_item": item.astype(np.int64),
        "ev_ts": ts.astype(np.int64),
    }


def generate(out_dir: Path, users: int = 3000, days: int = 120, seed: int = 0, shards: int = 4) -> dict:
    """Generate the story's event log, item table and ground truth under ``out_dir``; return paths and counts."""
    out_dir = Path(out_dir)
    if shards < 1:
        raise ValueError("shards must be >= 1")
    w = _simulate(users, days, seed)
    ev_dir = out_dir / "events"
    ev_dir.mkdir(parents=True, exist_ok=True)

    ts_type = pa.timestamp("s", tz="UTC")
    ev_user, ev_item, ev_ts = w["ev_user"], w["ev_item"], w["ev_ts"]
    event_paths = []
    for k in range(shards):
        sel = np.flatnonzero(ev_user % shards == k)
        sel = sel[np.argsort(ev_ts[sel], kind="stable")]
        table = pa.table(
            {
                "user_id": pa.array(ev_user[sel], type=pa.int64()),
                "item_id": pa.array(ev_item[sel], type=pa.int64()),
                "timestamp": pa.array(ev_ts[sel], type=pa.int64()).cast(ts_type),
            }
        )
        path = ev_dir / f"part-{k}.parquet"
        pq.write_table(table, path)
        event_paths.append(str(path))

    cats = np.repeat(np.arange(N_CATS), ITEMS_PER_CAT)
    items = pa.table(
        {
            "item_id": pa.array(cats * ITEM_STRIDE + np.tile(np.arange(ITEMS_PER_CAT), N_CATS), type=pa.int64()),
            "category": pa.array([f"c{c:02d}" for c in cats], type=pa.string()),
        }
    )
    items_path = out_dir / "items.parquet"
    pq.write_table(items, items_path)

    truth = pa.table(
        {
            "user_id": pa.array(w["pair_user"] + 1, type=pa.int64()),
            "interest": pa.array([f"c{c:02d}" for c in w["pair_cat"]], type=pa.string()),
            "kind": pa.array([KINDS[k] for k in w["kind"]], type=pa.string()),
            "rate": pa.array(w["rate"], type=pa.float64()),
            "start_day": pa.array(w["start_day"].astype(np.int32), type=pa.int32()),
            "change_day": pa.array(w["change_day"], type=pa.float64()),
            "half_life_days": pa.array(w["half_life"], type=pa.float64()),
            "return_day": pa.array(w["return_day"], type=pa.float64()),
            "period_days": pa.array(w["period"], type=pa.float64()),
        }
    )
    truth_path = out_dir / "truth.parquet"
    pq.write_table(truth, truth_path)

    return {
        "events": event_paths,
        "items": str(items_path),
        "truth": str(truth_path),
        "n_events": int(ev_ts.size),
        "n_pairs": int(truth.num_rows),
        "users": users,
        "days": days,
        "seed": seed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = generate(args.out, users=args.users, days=args.days, seed=args.seed, shards=args.shards)
    dt = time.perf_counter() - t0
    print(f"events={res['n_events']} pairs={res['n_pairs']} users={res['users']} days={res['days']} ({dt:.2f} s)")


if __name__ == "__main__":
    main()
