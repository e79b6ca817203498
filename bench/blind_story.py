"""Blind synthetic behaviour-log generator, for testing the interest-change detector out of sample.

This file was written from a prose description only (the text of the project's issue 10), by someone who
did not read the project's own generators or its detector. It exists so the detector can be checked on
data its tuners never saw: no knob of the project (threshold, window, prior, ...) may be chosen on it.

Story: U users (default 3,000) over D days (default 120) from 2026-01-01 00:00 UTC. Each user has 3-6
interests drawn without replacement among 24 categories "cat00".."cat23"; a category has 50 items
(id = category * 1000 + j, j < 50) and each event picks one of them uniformly. Each (user, interest) pair
has one kind (probability, parameters):

- steady   (35 %): homogeneous Poisson process, rate r log-uniform in [0.3, 3] events/day;
- periodic (15 %): a burst day every P days (P uniform integer in [3, 10], random phase), Poisson(lb)
  events on a burst day with lb log-uniform in [2, 6], background 0.02/day otherwise; truth rate = lb / P;
- stop     (15 %): steady at r, then zero from a stop day uniform integer in [20, D-10);
- fade     (15 %): steady at r, then from a start day uniform integer in [20, D-20) the rate decays
  exponentially to zero with a half-life uniform (real) in [3, 14] days;
- late     (10 %): zero before a start day uniform integer in [15, D-30), steady at r afterwards;
- pause    (10 %): steady at r, zero for L days (L uniform integer in [14, 35]) from a day uniform integer
  in [20, D-L-10), then r again.

Event counts are drawn per (pair, day) as Poisson of the rate integrated over that day (exact for every
kind, the fade included), and times are uniform within the day at one-second resolution. Everything is
drawn from one numpy Generator seeded explicitly. Timestamps are whole seconds built as Arrow
timestamp[s, tz=UTC]; Parquet has no seconds unit, so the files hold them as milliseconds (same instants).

    python -m bench.blind_story --out DIR [--users 3000] [--days 120] [--seed 0] [--shards 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_CATS = 24
ITEMS_PER_CAT = 50
START_EPOCH_S = 1767225600  # 2026-01-01 00:00:00 UTC
KINDS = ("steady", "periodic", "stop", "fade", "late", "pause")
KIND_P = (0.35, 0.15, 0.15, 0.15, 0.10, 0.10)
BACKGROUND = 0.02  # periodic pairs' rate between bursts, events/day
TS_TYPE = pa.timestamp("s", tz="UTC")


def _loguniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _int_in(rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
    """Uniform integers in [lo, hi); hi is raised to lo + 1 when the day range is too short."""
    return rng.integers(lo, np.maximum(hi, lo + 1), n)


def _rates(rng: np.random.Generator, kind: np.ndarray, days: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-(pair, day) expected counts and the truth parameters of every pair."""
    n = kind.size
    nan = np.full(n, np.nan)
    r = _loguniform(rng, 0.3, 3.0, n)
    lam_burst = _loguniform(rng, 2.0, 6.0, n)
    period = rng.integers(3, 11, n)
    phase = rng.integers(0, period)
    stop_day = _int_in(rng, 20, days - 10, n)
    fade_day = _int_in(rng, 20, days - 20, n)
    half_life = rng.uniform(3.0, 14.0, n)
    late_day = _int_in(rng, 15, days - 30, n)
    pause_len = rng.integers(14, 36, n)
    pause_day = rng.integers(20, np.maximum(days - pause_len - 10, 21))

    d = np.arange(days)[None, :]
    is_k = {k: (kind == i)[:, None] for i, k in enumerate(KINDS)}
    mu = np.broadcast_to(r[:, None], (n, days)).copy()
    # periodic: burst days only, tiny background otherwise
    burst = (d - phase[:, None]) % period[:, None] == 0
    mu = np.where(is_k["periodic"], np.where(burst, lam_burst[:, None], BACKGROUND), mu)
    mu = np.where(is_k["stop"] & (d >= stop_day[:, None]), 0.0, mu)
    # fade: integral over day t of r * 2^(-(s - f)/h) ds, for t >= f
    k = np.log(2.0) / half_life[:, None]
    age = np.maximum(d - fade_day[:, None], 0)
    fade_mu = r[:, None] * np.exp(-k * age) * (1.0 - np.exp(-k)) / k
    mu = np.where(is_k["fade"] & (d >= fade_day[:, None]), fade_mu, mu)
    mu = np.where(is_k["late"] & (d < late_day[:, None]), 0.0, mu)
    in_pause = (d >= pause_day[:, None]) & (d < (pause_day + pause_len)[:, None])
    mu = np.where(is_k["pause"] & in_pause, 0.0, mu)

    ks = {k: kind == i for i, k in enumerate(KINDS)}
    truth = {
        "rate": np.where(ks["periodic"], lam_burst / period, r),
        "start_day": np.where(ks["late"], late_day, 0).astype(np.int32),
        "change_day": np.select([ks["stop"], ks["fade"], ks["pause"]], [stop_day, fade_day, pause_day], np.nan),
        "half_life_days": np.where(ks["fade"], half_life, nan),
        "return_day": np.where(ks["pause"], (pause_day + pause_len).astype(float), nan),
        "period_days": np.where(ks["periodic"], period.astype(float), nan),
    }
    return mu, truth


def generate(out_dir: Path, users: int = 3000, days: int = 120, seed: int = 0, shards: int = 4) -> dict:
    """Write events/part-{k}.parquet, items.parquet and truth.parquet under out_dir; return paths and counts."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    (out_dir / "events").mkdir(parents=True, exist_ok=True)
    names = np.array([f"cat{c:02d}" for c in range(N_CATS)])

    # interests: 3-6 distinct categories per user
    n_int = rng.integers(3, 7, users)
    perm = np.argsort(rng.random((users, N_CATS)), axis=1)
    take = np.arange(N_CATS)[None, :] < n_int[:, None]
    pair_user = np.repeat(np.arange(1, users + 1, dtype=np.int64), n_int)
    pair_cat = perm[take]
    kind = rng.choice(len(KINDS), size=pair_user.size, p=KIND_P)
    mu, truth = _rates(rng, kind, days)

    counts = rng.poisson(mu).ravel()
    cell = np.repeat(np.arange(counts.size), counts)
    pair, day = np.divmod(cell, days)
    n_events = int(cell.size)
    user_id = pair_user[pair]
    item_id = pair_cat[pair].astype(np.int64) * 1000 + rng.integers(0, ITEMS_PER_CAT, n_events)
    ts = START_EPOCH_S + day.astype(np.int64) * 86400 + rng.integers(0, 86400, n_events)

    parts = []
    for s in range(shards):
        sel = np.flatnonzero(user_id % shards == s)
        sel = sel[np.argsort(ts[sel], kind="stable")]
        path = out_dir / "events" / f"part-{s}.parquet"
        table = pa.table({
            "user_id": pa.array(user_id[sel], pa.int64()),
            "item_id": pa.array(item_id[sel], pa.int64()),
            "timestamp": pa.array(ts[sel], pa.int64()).cast(TS_TYPE),
        })
        pq.write_table(table, path)
        parts.append(path)

    all_items = (np.arange(N_CATS)[:, None] * 1000 + np.arange(ITEMS_PER_CAT)[None, :]).ravel()
    items_path = out_dir / "items.parquet"
    pq.write_table(pa.table({
        "item_id": pa.array(all_items, pa.int64()),
        "category": pa.array(names[all_items // 1000].tolist(), pa.string()),
    }), items_path)

    truth_path = out_dir / "truth.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array(pair_user, pa.int64()),
        "interest": pa.array(names[pair_cat].tolist(), pa.string()),
        "kind": pa.array(np.array(KINDS)[kind].tolist(), pa.string()),
        "rate": pa.array(truth["rate"], pa.float64()),
        "start_day": pa.array(truth["start_day"], pa.int32()),
        "change_day": pa.array(truth["change_day"], pa.float64()),
        "half_life_days": pa.array(truth["half_life_days"], pa.float64()),
        "return_day": pa.array(truth["return_day"], pa.float64()),
        "period_days": pa.array(truth["period_days"], pa.float64()),
    }), truth_path)
    return {"events": parts, "items": items_path, "truth": truth_path, "n_events": n_events,
            "n_pairs": int(pair_user.size), "users": users, "days": days, "seed": seed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    res = generate(a.out, users=a.users, days=a.days, seed=a.seed, shards=a.shards)
    print(f"{res['n_events']} events, {res['n_pairs']} (user, interest) pairs -> {a.out}")


if __name__ == "__main__":
    main()
