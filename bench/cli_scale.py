"""``fgjax analyze`` at scale as a user runs it: fresh processes over generated Parquet shards.

    python -m bench cli_scale --users 10000000 --events 60000000 --days 60 --files 60 \
        --kinds level,adaptive,numpy --limit 150 --out OUT/cli_scale.json

Issue 14's GPU target is 10M users x 60 daily windows from Parquet in under 60 s; its CPU target
1M users x 60 windows (~87M events) in under 3 min and 6 GB. Each run is a fresh interpreter
(imports and compilation included, no persistent compilation cache), killed after ``--limit``
seconds (then reported as not finished, not dropped):

- ``level`` / ``adaptive``: ``fgjax.analysis_job.analyze_log`` (what ``fgjax analyze`` runs) with that
  detector (``adaptive`` with the learned verdict it decides with by default, ``adaptive_detector_only``
  without); reports wall seconds, the process's CPU seconds (user + system, all threads: against the wall,
  how many cores it kept busy), peak RSS, its rows and its stage split (pass 1, pass 2, compile, decode,
  write, plot);
- ``numpy``: the plain NumPy + pyarrow script of ``bench.pipeline`` (core formulas, no detector), the
  peer the ratios are taken against.

Runs go in the order given, so the most important comes first when time is short. ``--repeat N`` runs
every kind N times, in turn, and reports each kind's median run (with the range of its walls): on a shared
2-core machine one run of the NumPy script took 3.2 s or 8.8 s on the same files, depending on what ran
just before. Every run starts after an ``os.sync()``, so the pages the run before wrote are not flushed
during it.

``--grow N``: each fgjax run again on shards of N times the events for the same users, days and files
(``--data`` + ``_xN``), reporting the peak RSS growth (issue 14: at most 10 % at 4x the events)::

    python -m bench cli_scale --users 100000 --events 8750000 --days 60 --files 200 --items 1000 \
        --categories 16 --kinds level --grow 4 --data DIR
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import _data, _report
from bench.pipeline import CLI_PROBE, NUMPY_PROBE, run_probe

SIZES = {
    "smoke": {"users": 2_000, "events": 20_000, "days": 7, "files": 7},
    "small": {"users": 100_000, "events": 2_000_000, "days": 60, "files": 20},
    "large": {"users": 10_000_000, "events": 60_000_000, "days": 60, "files": 60},
}
# fgjax runs by their config overrides; adaptive_every_window takes every periodogram every window (the
# detector before analysis.detector.period_every), and the *_one_device kinds run on one CPU device (before
# analysis.cpu_devices), and adaptive_detector_only without the learned verdict that ``auto`` lends daily and
# weekly windows (analysis.detector.verdict_file=): its cost, side by side.
CLI_KINDS = {
    "level": ["analysis.detector.kind=level"],
    "adaptive": ["analysis.detector.kind=adaptive"],
    "adaptive_detector_only": ["analysis.detector.kind=adaptive", "analysis.detector.verdict_file="],
    "adaptive_every_window": ["analysis.detector.kind=adaptive", "analysis.detector.period_every=1"],
    "level_one_device": ["analysis.detector.kind=level", "analysis.cpu_devices=0"],
    "adaptive_one_device": ["analysis.detector.kind=adaptive", "analysis.cpu_devices=0"],
}
KINDS = (*CLI_KINDS, "numpy")


def _shards(folder: Path, size: dict[str, int], seed: int) -> tuple[list[Path], Path, bool]:
    """The shards and items table of ``size`` in ``folder``: reused when its ``meta.json`` says they are
    those (written last, so an interrupted generation is never taken for a complete one), else written.
    Returns ``(paths, items_path, reused)``; raises ``ValueError`` for shards of other sizes."""
    meta_path, items_path = folder / "meta.json", folder / "items.parquet"
    want = {**size, "seed": seed}
    if meta_path.exists():
        have = json.loads(meta_path.read_text())
        if have != want:
            differ = ", ".join(f"{k} {have.get(k)} (asked {v})" for k, v in want.items() if have.get(k) != v)
            raise ValueError(f"{folder} holds shards of other sizes: {differ}; use another --data folder")
        return _data.list_events(folder / "events")[0], items_path, True
    if any(folder.glob("events/part-*.parquet")):
        raise ValueError(f"{folder}/events holds shards without {meta_path.name} (an interrupted or foreign "
                         "generation): remove them or use another --data folder")
    paths, item_category = _data.write_events(folder / "events", users=size["users"], items=size["items"],
                                              events=size["events"], days=size["days"],
                                              categories=size["categories"], files=size["files"], seed=seed)
    pq.write_table(pa.table({"item_id": np.arange(len(item_category), dtype=np.int64),
                             "category": item_category.astype(np.int64)}), items_path)
    meta_path.write_text(json.dumps(want))
    return paths, items_path, False


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _report.suite_parser("python -m bench cli_scale", __doc__.split("\n\n")[0])
    for key in ("users", "events", "days", "files"):
        parser.add_argument(f"--{key}", type=int, default=0, help=f"default by --scale ({SIZES['large'][key]:,} large)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--categories", type=int, default=32)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"runs in order, from {', '.join(KINDS)}")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds before a run is killed")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every kind, in turn; each row reports its median run (walls on a shared "
                             "2-core machine move by 2x from run to run, most with what ran just before)")
    parser.add_argument("--grow", type=int, default=0,
                        help="also run each fgjax kind on N times the events (same users) and report the RSS growth")
    parser.add_argument("--data", default="", help="folder for the shards and items table (kept; reused by a run of the same sizes and seed, refused for others)")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: expected at least 1")
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"--kinds: unknown {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    size = {key: getattr(args, key) or SIZES[args.scale][key] for key in SIZES["large"]}
    size.update(items=args.items, categories=args.categories)
    payload: dict[str, Any] = {"benchmark": "cli_scale", **_report.environment(),
                               "config": {**size, "scale": args.scale, "kinds": kinds, "limit_s": args.limit,
                                          "repeat": args.repeat}}
    print(f"cli_scale on {payload['device']}: {size}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            paths, items_path, payload["reused"] = _shards(Path(args.data or tmp), size, args.seed)
        except ValueError as exc:
            parser.error(f"--data: {exc}")
        folder = Path(args.data or tmp) / "events"
        payload["generate_s"] = time.perf_counter() - t0
        payload["parquet_bytes"] = sum(p.stat().st_size for p in paths)
        payload["events"] = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for r in range(args.repeat):  # kinds in turn, so that drift over the minutes falls on every kind alike
            for kind in kinds:
                label = f"{kind} (round {r + 1} of {args.repeat})" if args.repeat > 1 else ""
                rounds[kind].append(_run(kind, folder, items_path, Path(tmp) / f"out_{kind}_{r}", args.limit, label))
        runs = {kind: _median_run(done) for kind, done in rounds.items()}
        grown: dict[str, Any] = {}
        if args.grow and (fgjax_kinds := [k for k in kinds if k in CLI_KINDS]):
            more = {**size, "events": size["events"] * args.grow}
            data = Path(f"{args.data.rstrip('/')}_x{args.grow}" if args.data else Path(tmp) / f"x{args.grow}")
            try:
                _, items_more, _ = _shards(data, more, args.seed)
            except ValueError as exc:
                parser.error(f"--grow: {exc}")
            grown = {kind: _run(kind, data / "events", items_more, Path(tmp) / f"out_{kind}_x{args.grow}",
                                args.limit, label=f"{kind} at {args.grow}x the events") for kind in fgjax_kinds}
    payload["runs"] = runs
    payload["rounds"] = rounds if args.repeat > 1 else {}
    payload["grown"] = grown
    numpy_s = runs.get("numpy", {}).get("wall_s") if runs.get("numpy", {}).get("finished") else None
    rows = []
    for kind, run in runs.items():
        ratio = run["wall_s"] / numpy_s if (numpy_s and run["finished"]) else None
        more = grown.get(kind, {})
        growth = (more["peak_rss_bytes"] / run["peak_rss_bytes"] - 1.0) if (
            more.get("finished") and run["finished"]) else None
        walls = [x["wall_s"] for x in rounds[kind] if x["finished"]]
        rows.append({"kind": kind, "wall_s": run["wall_s"] if run["finished"] else None, "cpu_s": run.get("cpu_s"),
                     "wall_range": f"{min(walls):.1f}-{max(walls):.1f}" if walls else None,
                     "rss_gb": run["peak_rss_bytes"] / 1e9 if run["finished"] else None, "vs_numpy": ratio,
                     **{k: run.get("stages", {}).get(k) for k in ("pass1_s", "pass2_s", "compile_s", "write_s")},
                     "rss_growth": growth})
    payload["summary"] = {f"{r['kind']}_s": r["wall_s"] for r in rows} | {
        f"{r['kind']}_vs_numpy": r["vs_numpy"] for r in rows if r["kind"] != "numpy"} | {
        f"{r['kind']}_rss_growth_x{args.grow}": r["rss_growth"] for r in rows if r["rss_growth"] is not None}
    cols = [("kind", "run", "s"), ("wall_s", "wall s", ".1f"), ("cpu_s", "CPU s", ".1f"), ("rss_gb", "peak RSS GB", ".2f"),
            ("vs_numpy", "vs NumPy", ".2f"), ("pass1_s", "pass 1 s", ".1f"), ("pass2_s", "pass 2 s", ".1f"),
            ("compile_s", "compile s", ".1f"), ("write_s", "write s", ".1f")]
    if args.repeat > 1:
        cols.insert(2, ("wall_range", f"walls of {args.repeat} rounds", "s"))
    if grown:
        cols.append(("rss_growth", f"RSS at {args.grow}x events", "+.1%"))
    return _report.finish(payload, args, rows, cols)


def _median_run(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall among the finished ones (the lower middle of an even count), else the first."""
    finished = sorted((x for x in done if x["finished"]), key=lambda x: x["wall_s"])
    return finished[(len(finished) - 1) // 2] if finished else done[0]


def _run(kind: str, folder: Path, items_path: Path, out: Path, limit: float, label: str = "") -> dict[str, Any]:
    """One run of ``kind`` over the shards in ``folder`` in a fresh process; prints its line."""
    os.sync()  # the run before's written pages go to disk now, not during this run
    if kind == "numpy":
        run = run_probe(NUMPY_PROBE, [str(folder), str(items_path), str(out) + ".parquet", "86400", "7"], limit)
    else:
        sets = [f"data.path={folder}", f"data.items_path={items_path}", "data.format=parquet",
                "data.columns.user_id=user", "data.columns.item_id=item", "data.columns.weight=weight",
                "analysis.window_seconds=86400", *CLI_KINDS[kind]]
        run = run_probe(CLI_PROBE, [str(out), "-", *sets], limit)
    wall = f"{run['wall_s']:.1f} s" if run["finished"] else f"not finished ({run.get('error', 'killed')!s:.200})"
    slowest = ", ".join(f"{k[8:]} {v:.1f} s" for k, v in run.get("stages", {}).items() if k.startswith("compile:"))
    print(f"{label or kind}: {wall}" + (f", {run['peak_rss_bytes'] / 1e9:.2f} GB" if run["finished"] else "")
          + (f"; slowest to compile: {slowest}" if slowest else ""), flush=True)
    return run


if __name__ == "__main__":
    main()
