"""Blind story 3: a synthetic video / music streaming behaviour log with known "forgotten interests".

This module is a self-contained specification plus a reference implementation.  Everything is drawn from one
``np.random.default_rng(seed)``; all integer ranges below are half-open ``[lo, hi)`` unless written "lo-hi"
(inclusive both ends).  "Uniform integer in [lo, hi)" is ``rng.integers(lo, hi)``.

Calendar
--------
Day 0 starts at ``START_EPOCH_S = 1788220800`` (2026-09-01 00:00:00 UTC, a **Tuesday**).  Day ``d`` covers
``[START_EPOCH_S + 86400 d, START_EPOCH_S + 86400 (d + 1))``.  The weekday of day ``d`` is ``(1 + d) % 7`` with
Monday = 0, so days 3, 4 (Friday, Saturday) and 6 (Monday) are the first special days.

Population-wide calendar factor ``cal[d]`` (identical for every user and interest), product of:
  * weekday: Friday and Saturday x1.25, Monday x0.8, other days x1;
  * holiday: a block of 9 days starting on day ``h0 = floor(0.55 * days + 0.5)`` (round half up; 66 for 120
    days), truncated at the end of the window, during which everyone's activity is x1.8.

Catalogue
---------
40 categories named ``"g00"`` .. ``"g39"``; category ``c`` owns 25 items ``c * 100 + j`` for ``j = 0..24``.  Within
a category, an event's item index ``j`` is drawn with Zipf-like weights proportional to ``1 / (j + 1)``.
``items.parquet`` lists all 1000 items.

Users and interests
-------------------
Users are numbered ``1..U``.  Each user has an interest count uniform integer 3-8 and that many *distinct*
categories, drawn without replacement with category popularity weights ``1 / (c + 1) ** 0.7`` (sequential weighted
sampling without replacement, implemented with the Gumbel-top-k trick).  Each (user, category) is a *pair*.

Per-user activity multiplier ``m``: gamma with shape 0.7 and mean 1 (scale 1 / 0.7), clipped to ``[0.05, 15]``.

Per pair:
  * ``L`` log-uniform on ``[0.1, 3]``; base rate ``R = clip(m * L, 0.03, 8)`` events/day (the user activity enters
    the realised mean only through ``R``).  ``R`` is the truth column ``rate``.
  * over-dispersion shape ``k`` uniform on ``[0.5, 3]``.
  * drift: a random walk ``w[d] = sum_{t <= d} eps_t`` with ``eps_t ~ N(0, 0.03)``, recentred so that its mean over
    the window is 0 (``w - mean(w)``); the drift factor is ``exp(w[d])`` (geometric mean 1).  Every pair drifts,
    none changes abruptly because of it.
  * kind, with probabilities steady 38 %, periodic 12 %, stop 14 %, fade 16 %, late 10 %, pause 10 %.  All kind
    parameters are drawn for every pair (then only the relevant ones are used), so the draws do not depend on kinds.

Kind shapes ``s[d]`` (mean events/day before calendar, drift and absences):
  * steady: ``s = R`` every day.
  * periodic ("binge"): period ``P`` uniform integer 14-35, phase uniform integer in ``[0, P)``, binge length ``B``
    uniform integer 1-3.  ``s = R * P / B`` on days with ``(d - phase) mod P < B``, 0 otherwise (average ``R``).
    Truth ``period_days = P``.
  * stop: ``change`` uniform integer in ``[12, days - 10)``; ``s = R`` for ``d < change``, 0 from it on.
  * fade: ``change`` uniform integer in ``[12, days - 14)``; duration ``D`` uniform integer 7-40; ``floor`` drawn
    uniformly from ``{0, 0, 0.05, 0.15}`` (half the fades go to zero).  ``s = R`` for ``d < change`` and
    ``s = R * (1 - (1 - floor) * min(1, (d - change) / D))`` from it on.  Truth ``half_life_days`` =
    ``0.5 * D / (1 - floor)``: the number of days after ``change`` at which the linear fade reaches ``R / 2``.
  * late: ``start`` uniform integer in ``[8, days - 20)``; ``s = 0`` for ``d < start``, ``R`` from it on.  Truth
    ``start_day = start`` (all other kinds have ``start_day = 0``).
  * pause: length ``Lp`` uniform integer in ``[7, min(30, days - 20)]``; ``change`` uniform integer in
    ``[12, days - Lp - 7)``; ``s = 0`` for ``change <= d < change + Lp``, ``R`` otherwise.  Truth
    ``return_day = change + Lp``.
  Truth ``change_day`` is the stop day / fade start / pause start (NaN for steady, periodic, late).

User churn
----------
7 % of users (independently of everything else) leave for good on a churn day uniform integer in
``[floor(0.3 days), floor(0.85 days))``.  Every pair of a churned user has truth kind ``"stop"`` with
``change_day`` = churn day and NaN ``half_life_days`` / ``return_day`` / ``period_days``.  Before the churn day the
pair behaves as its drawn kind would, except: stop, fade and pause pairs behave as steady (their own change would
confuse the truth); periodic pairs keep their binges; late pairs keep their start if it is before the churn day,
otherwise their start is redrawn uniform integer in ``[0, churn - 7)`` (so it is earlier than the churn day), and
the truth ``start_day`` is that start.  From the churn day on the shape is 0.

User absences (noise, not ground truth)
---------------------------------------
30 % of users have absences: 1 or 2 of them (50/50), each of length uniform integer 3-21 days, start uniform
integer in ``[7, days - 10)``, truncated at the end of the window; absences may overlap.  On an absence day the
user has no events in any interest.  Absences do not change the truth (a steady pair stays steady).

Counts and events
-----------------
Realised daily mean ``mu[pair, d] = s[d] * cal[d] * exp(w[d]) * (0 if the user is absent on d else 1)``.
The count is negative binomial: ``lam ~ Gamma(shape=k, scale=mu / k)`` (mean ``mu``; exactly 0 when ``mu = 0``) and
``n ~ Poisson(lam)``.  Each event gets an item of the pair's category (Zipf weights above) and a timestamp at a
uniform integer second of its day.  So a day whose realised mean is 0 has no events of that pair.

Small windows
-------------
The generator is meant for ``days >= 30`` and ``users >= 10``.  Every integer range ``[lo, hi)`` above is clamped
to be non-empty: ``hi = max(hi, lo + 1)`` (and the pause length upper bound is at least 7).  With ``days >= 30`` the
only ranges that actually shrink are the late start (``[8, 10)`` at 30 days) and the pause length (7-10 at 30 days);
none is empty.  A fade or pause may run past the end of the window; a holiday or absence is truncated at it.

Output
------
``events/part-{k}.parquet`` (k < shards): ``user_id`` int64, ``item_id`` int64, ``timestamp`` timestamp[s, UTC] (Parquet
stores it in milliseconds: it reads back as timestamp[ms, UTC], whole seconds); user
``u`` goes to shard ``u % shards``; rows sorted by timestamp (stable).  ``items.parquet``: ``item_id`` int64,
``category`` string.  ``truth.parquet``: one row per pair with ``user_id``, ``interest``, ``kind``, ``rate``,
``start_day`` (int32), ``change_day``, ``half_life_days``, ``return_day``, ``period_days``, ``fade_floor`` and
``fade_days`` (a fade's ``floor`` and ``D``) (float64, NaN when not applicable). The last two were added after the
story was written (by the project, for scoring: a linear fade is forgotten at a share ``q`` of its former rate
``D (1 - q) / (1 - floor)`` days after its change, and never when ``floor >= q``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START_EPOCH_S = 1788220800
KINDS = ("steady", "periodic", "stop", "fade", "late", "pause")
KIND_PROBS = (0.38, 0.12, 0.14, 0.16, 0.10, 0.10)

N_CATEGORIES = 40
ITEMS_PER_CATEGORY = 25
HOLIDAY_LEN = 9
HOLIDAY_FACTOR = 1.8
DAY_S = 86400


def _randint(rng: np.random.Generator, lo, hi, size) -> np.ndarray:
    """Uniform integers in [lo, hi) with hi clamped to at least lo + 1 (element-wise)."""
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.maximum(np.asarray(hi, dtype=np.int64), lo + 1)
    return rng.integers(lo, hi, size=size)


def calendar_factor(days: int) -> np.ndarray:
    """Population-wide activity factor per day (weekday x holiday)."""
    d = np.arange(days)
    weekday = (1 + d) % 7  # day 0 is a Tuesday; Monday = 0
    cal = np.ones(days)
    cal[(weekday == 4) | (weekday == 5)] *= 1.25
    cal[weekday == 0] *= 0.8
    h0 = int(np.floor(0.55 * days + 0.5))
    cal[h0:h0 + HOLIDAY_LEN] *= HOLIDAY_FACTOR
    return cal


def _simulate(users: int, days: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    day = np.arange(days)

    # ---- users and their interests (Gumbel-top-k = weighted sampling without replacement)
    n_int = rng.integers(3, 9, size=users)
    cat_logw = -0.7 * np.log(np.arange(N_CATEGORIES) + 1.0)
    keys = cat_logw[None, :] + rng.gumbel(size=(users, N_CATEGORIES))
    order = np.argsort(-keys, axis=1, kind="stable")[:, :8]
    take = np.arange(8)[None, :] < n_int[:, None]
    pu, col = np.nonzero(take)  # user-major pair order
    pcat = order[pu, col]
    n_pairs = pu.size

    m = np.clip(rng.gamma(0.7, 1.0 / 0.7, size=users), 0.05, 15.0)

    # ---- user absences
    absent = np.zeros((users, days), dtype=bool)
    has_abs = rng.random(users) < 0.30
    n_abs = np.where(rng.random(users) < 0.5, 1, 2)
    for slot in range(2):
        a_len = _randint(rng, 3, 22, users)
        a_start = _randint(rng, 7, days - 10, users)
        on = has_abs & (n_abs > slot)
        absent |= on[:, None] & (day[None, :] >= a_start[:, None]) & (day[None, :] < (a_start + a_len)[:, None])

    # ---- churn
    churned = rng.random(users) < 0.07
    churn_day = _randint(rng, int(np.floor(0.3 * days)), int(np.floor(0.85 * days)), users)

    # ---- per-pair parameters (all drawn for every pair)
    L = np.exp(rng.uniform(np.log(0.1), np.log(3.0), size=n_pairs))
    R = np.clip(m[pu] * L, 0.03, 8.0)
    k_shape = rng.uniform(0.5, 3.0, size=n_pairs)
    kind = rng.choice(len(KINDS), size=n_pairs, p=KIND_PROBS)

    per_P = rng.integers(14, 36, size=n_pairs)
    per_phase = (rng.random(n_pairs) * per_P).astype(np.int64)
    per_B = rng.integers(1, 4, size=n_pairs)
    stop_change = _randint(rng, 12, days - 10, n_pairs)
    fade_change = _randint(rng, 12, days - 14, n_pairs)
    fade_D = rng.integers(7, 41, size=n_pairs)
    fade_floor = np.array([0.0, 0.0, 0.05, 0.15])[rng.integers(0, 4, size=n_pairs)]
    late_start = _randint(rng, 8, days - 20, n_pairs)
    pause_len = _randint(rng, 7, max(7, min(30, days - 20)) + 1, n_pairs)
    pause_change = _randint(rng, 12, days - pause_len - 7, n_pairs)
    churn_late_start = _randint(rng, 0, churn_day[pu] - 7, n_pairs)

    steps = rng.normal(0.0, 0.03, size=(n_pairs, days))
    walk = np.cumsum(steps, axis=1)
    drift = np.exp(walk - walk.mean(axis=1, keepdims=True))

    # ---- churn overrides
    pchurn = churned[pu]
    k_steady, k_per, k_stop, k_fade, k_late, k_pause = range(len(KINDS))
    shape_kind = kind.copy()
    shape_kind[pchurn & np.isin(kind, [k_stop, k_fade, k_pause])] = k_steady
    start = np.where(kind == k_late, late_start, 0)
    redraw = pchurn & (kind == k_late) & (late_start >= churn_day[pu])
    start = np.where(redraw, churn_late_start, start)

    # ---- kind shapes s[pair, d]
    D = day[None, :]
    s = np.repeat(R[:, None], days, axis=1)
    sel = shape_kind == k_per
    binge = ((D - per_phase[:, None]) % per_P[:, None]) < per_B[:, None]
    s = np.where(sel[:, None], np.where(binge, (R * per_P / per_B)[:, None], 0.0), s)
    sel = shape_kind == k_stop
    s[sel[:, None] & (D >= stop_change[:, None])] = 0.0
    sel = shape_kind == k_fade
    prog = np.clip((D - fade_change[:, None]) / fade_D[:, None], 0.0, 1.0)
    fade = R[:, None] * (1.0 - (1.0 - fade_floor[:, None]) * prog)
    s = np.where(sel[:, None], fade, s)
    s[D < start[:, None]] = 0.0
    sel = shape_kind == k_pause
    s[sel[:, None] & (D >= pause_change[:, None]) & (D < (pause_change + pause_len)[:, None])] = 0.0
    s[pchurn[:, None] & (D >= churn_day[pu][:, None])] = 0.0

    mu = s * calendar_factor(days)[None, :] * drift
    mu[absent[pu]] = 0.0

    # ---- over-dispersed counts
    lam = rng.gamma(np.broadcast_to(k_shape[:, None], mu.shape), mu / k_shape[:, None])
    counts = rng.poisson(lam)
    counts[mu <= 0] = 0

    # ---- events
    flat = counts.ravel()
    idx = np.repeat(np.arange(flat.size), flat)
    e_pair, e_day = np.divmod(idx, days)
    n_ev = idx.size
    item_w = 1.0 / np.arange(1, ITEMS_PER_CATEGORY + 1)
    j = rng.choice(ITEMS_PER_CATEGORY, size=n_ev, p=item_w / item_w.sum())
    events = {
        "user_id": pu[e_pair].astype(np.int64) + 1,
        "item_id": pcat[e_pair].astype(np.int64) * 100 + j,
        "ts": START_EPOCH_S + DAY_S * e_day.astype(np.int64) + rng.integers(0, DAY_S, size=n_ev),
    }

    # ---- truth
    nan = np.full(n_pairs, np.nan)
    t_kind = np.where(pchurn, k_stop, kind)
    change = nan.copy()
    change = np.where(kind == k_stop, stop_change, change)
    change = np.where(kind == k_fade, fade_change, change)
    change = np.where(kind == k_pause, pause_change, change)
    change = np.where(pchurn, churn_day[pu], change)
    keep = ~pchurn
    truth = {
        "user_id": pu.astype(np.int64) + 1,
        "interest": np.array([f"g{c:02d}" for c in range(N_CATEGORIES)])[pcat],
        "kind": np.array(KINDS)[t_kind],
        "rate": R.astype(np.float64),
        "start_day": start.astype(np.int32),
        "change_day": change.astype(np.float64),
        "half_life_days": np.where(keep & (kind == k_fade), 0.5 * fade_D / (1.0 - fade_floor), nan),
        "return_day": np.where(keep & (kind == k_pause), pause_change + pause_len, nan).astype(np.float64),
        "period_days": np.where(keep & (kind == k_per), per_P, nan).astype(np.float64),
        "fade_floor": np.where(keep & (kind == k_fade), fade_floor, nan),
        "fade_days": np.where(keep & (kind == k_fade), fade_D, nan).astype(np.float64),
    }
    return events, truth


def generate(out_dir: Path, users: int = 3000, days: int = 120, seed: int = 0, shards: int = 4) -> dict:
    """Generate story 3 into ``out_dir`` (see module docstring) and return a summary dict."""
    out_dir = Path(out_dir)
    ev_dir = out_dir / "events"
    ev_dir.mkdir(parents=True, exist_ok=True)
    events, truth = _simulate(int(users), int(days), int(seed))

    ts_type = pa.timestamp("s", tz="UTC")
    shard_of = events["user_id"] % shards
    paths = []
    for k in range(shards):
        sel = np.nonzero(shard_of == k)[0]
        sel = sel[np.argsort(events["ts"][sel], kind="stable")]
        table = pa.table({
            "user_id": pa.array(events["user_id"][sel], pa.int64()),
            "item_id": pa.array(events["item_id"][sel], pa.int64()),
            "timestamp": pa.array(events["ts"][sel], pa.int64()).cast(ts_type),
        })
        path = ev_dir / f"part-{k}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))

    cat = np.repeat(np.arange(N_CATEGORIES), ITEMS_PER_CATEGORY)
    item_ids = cat * 100 + np.tile(np.arange(ITEMS_PER_CATEGORY), N_CATEGORIES)
    items = pa.table({
        "item_id": pa.array(item_ids, pa.int64()),
        "category": pa.array([f"g{c:02d}" for c in cat], pa.string()),
    })
    items_path = out_dir / "items.parquet"
    pq.write_table(items, items_path)

    truth_table = pa.table({
        "user_id": pa.array(truth["user_id"], pa.int64()),
        "interest": pa.array(truth["interest"].tolist(), pa.string()),
        "kind": pa.array(truth["kind"].tolist(), pa.string()),
        "rate": pa.array(truth["rate"], pa.float64()),
        "start_day": pa.array(truth["start_day"], pa.int32()),
        "change_day": pa.array(truth["change_day"], pa.float64()),
        "half_life_days": pa.array(truth["half_life_days"], pa.float64()),
        "return_day": pa.array(truth["return_day"], pa.float64()),
        "period_days": pa.array(truth["period_days"], pa.float64()),
        "fade_floor": pa.array(truth["fade_floor"], pa.float64()),
        "fade_days": pa.array(truth["fade_days"], pa.float64()),
    })
    truth_path = out_dir / "truth.parquet"
    pq.write_table(truth_table, truth_path)

    return {
        "events": paths,
        "items": str(items_path),
        "truth": str(truth_path),
        "n_events": int(events["ts"].size),
        "n_pairs": int(truth_table.num_rows),
        "users": int(users),
        "days": int(days),
        "seed": int(seed),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="Blind story 3: synthetic streaming log with forgotten interests.")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    t0 = time.perf_counter()
    info = generate(args.out, users=args.users, days=args.days, seed=args.seed, shards=args.shards)
    dt = time.perf_counter() - t0
    print(f"blind_story3: {info['users']} users x {info['days']} days seed {info['seed']}: "
          f"{info['n_events']} events, {info['n_pairs']} pairs in {dt:.2f}s -> {args.out}")


if __name__ == "__main__":
    main()
