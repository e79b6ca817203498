"""Peak device and host memory of the streaming analysis: bounded by state and batch, not by data size.

    python -m bench memory --scale small|large

Each probe runs in a fresh process (so peaks are its own): the streaming
analysis (``fgjax.analysis.analyze_stream``) over N users with E and then 4·E
events (same users, same windows, 4x the data). Reported: peak host RSS,
peak device bytes (where JAX reports them: GPU/TPU; on CPU the device is the
host), the state's size ``N·K·(4+4+4+1+1)`` bytes and the Parquet bytes.
``growth_with_data`` = peak at 4·E / peak at E (1.0 = independent of data size).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import _data, _report

SIZES = {"smoke": {"users": [1_000], "events": 20_000},  # one size: each probe is a fresh process
         "small": {"users": [2_000, 8_000], "events": 40_000},
         "large": {"users": [1_000_000, 10_000_000], "events": 8_000_000}}
CATEGORIES = 32

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench import _data, _report
import jax
from fgjax.config import AnalysisConfig
from fgjax.analysis import analyze_stream
users, folder = int(sys.argv[2]), sys.argv[3]
paths, _ = _data.list_events(folder)
import numpy as np
cats = np.random.default_rng(0).integers(0, %d, 5000).astype(np.int32)
base = _report.peak_host_rss_bytes()
res = analyze_stream(paths, num_users=users, item_category=cats, config=AnalysisConfig(window_seconds=86400.0),
                     batch_rows=1 << 18, fetch_carry=False)
jax.block_until_ready(res.carry)
print("RESULT" + json.dumps({"peak_host_rss_bytes": _report.peak_host_rss_bytes(), "rss_before_bytes": base,
                             "device": _report.device_memory(), "windows": len(res.window_start),
                             "parquet_bytes": sum(p.stat().st_size for p in paths)}))
""" % CATEGORIES


def probe(users: int, events: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        # The data is written here: only the analysis runs in the probe's process, so its peak is the analysis's.
        _data.write_events(tmp, users=users, items=5000, events=events, days=14, categories=CATEGORIES, files=14)
        proc = subprocess.run([sys.executable, "-c", PROBE, str(root), str(users), tmp],
                              capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"memory probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _report.suite_parser("python -m bench memory", __doc__.split("\n\n")[0]).parse_args(argv)
    size = SIZES[args.scale]
    payload: dict[str, Any] = {"benchmark": "memory", **_report.environment(),
                               "config": {**size, "scale": args.scale, "categories": CATEGORIES}, "results": []}
    print(f"memory on {payload['device']}", flush=True)

    def measure(n: int) -> dict[str, Any]:
        small, big = probe(n, size["events"]), probe(n, 4 * size["events"])
        state = n * CATEGORIES * (4 + 4 + 4 + 1 + 1)

        def peak(p):
            return (p["device"] or {}).get("peak_bytes_in_use") or p["peak_host_rss_bytes"]

        return {"users": n, "events": size["events"], "state_bytes": state, "probe_1x": small, "probe_4x": big,
                "peak_1x_bytes": peak(small), "peak_4x_bytes": peak(big), "growth_with_data": peak(big) / peak(small),
                "parquet_growth": big["parquet_bytes"] / small["parquet_bytes"],
                "peak_over_state": peak(small) / state, "measure": "device" if small["device"] else "host_rss"}

    rows = _report.each_size_that_fits(size["users"], measure, payload)
    payload["results"] = rows
    payload["summary"] = {"growth_with_data": max(r["growth_with_data"] for r in rows),
                          "parquet_growth": rows[-1]["parquet_growth"]}
    plots = _report.plots_dir(args)
    if plots:
        x = [r["users"] for r in rows]
        payload["plots"] = [str(_report.plot_scaling(
            plots / "memory.png", x, {"peak, E events": [r["peak_1x_bytes"] for r in rows],
                                      "peak, 4E events": [r["peak_4x_bytes"] for r in rows],
                                      "state N*K*14 B": [r["state_bytes"] for r in rows]},
            xlabel="users N", ylabel="bytes", title=f"streaming analysis memory, {payload['device']}"))]
    cols = [("users", "N", ",d"), ("measure", "peak of", ""), ("peak_1x_bytes", "peak E", ",d"),
            ("peak_4x_bytes", "peak 4E", ",d"), ("growth_with_data", "growth", ".2f"), ("state_bytes", "state B", ",d"),
            ("parquet_growth", "data growth", ".1f")]
    return _report.finish(payload, args, rows, cols)


if __name__ == "__main__":
    main()
