"""Fast synthetic event shards for the pipeline and memory benchmarks (dense integer IDs, time order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAY = 86400.0


def write_events(folder: str | Path, *, users: int, items: int, events: int, days: int, categories: int,
                 files: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """``files`` time-ordered Parquet shards (columns user, item, timestamp, weight) and ``(items,)`` categories."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    item_category = rng.integers(0, categories, items).astype(np.int32)
    start = 1.77e9
    paths = []
    per_file = -(-events // files)
    span = days * DAY / files
    for i in range(files):
        n = min(per_file, events - i * per_file)
        if n <= 0:
            break
        ts = np.sort(start + i * span + rng.uniform(0, span, n))
        # Users' taste: items near a per-user offset, so categories repeat per user.
        user = rng.integers(0, users, n)
        item = (user * 7919 + rng.integers(0, 50, n)) % items
        table = pa.table({"user": user.astype(np.int64), "item": item.astype(np.int64), "timestamp": ts,
                          "weight": rng.choice(np.array([1.0, 2.0, 4.0], np.float32), n)})
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(table, path, row_group_size=1 << 20)
        paths.append(path)
    return paths, item_category


def raw_scan(paths) -> int:
    """Read every shard's columns into NumPy with plain pyarrow (the same-run Parquet speed reference)."""
    rows = 0
    for path in paths:
        table = pq.read_table(path, columns=["user", "item", "timestamp", "weight"])
        for col in table.columns:
            col.to_numpy()
        rows += table.num_rows
    return rows


def list_events(folder: str | Path, **_) -> tuple[list[Path], None]:
    """The shards ``write_events`` wrote to ``folder`` (categories are not stored)."""
    return sorted(Path(folder).glob("part-*.parquet")), None
