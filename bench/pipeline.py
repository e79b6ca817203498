"""End to end: Parquet shards -> windowed forgetting analysis -> top-10 of all users over the catalog.

    python -m bench pipeline --scale small|large [--users N --events E --items I]

Stages, timed in one run on the same files:

- ``raw_scan``: plain ``pyarrow.parquet.read_table`` of the four columns into
  NumPy, file by file (the Parquet speed reference);
- ``analysis``: ``fgjax.analysis.analyze_stream`` (decode, window, pad, copy to
  the device in a prefetch thread; the fused pass per window);
- ``analysis_unprefetched``: the same without the prefetch thread;
- ``recommend``: top-10 items for every user, exact (``kernels.blocked_top_k``),
  score = ``sigmoid(e_u . e_i) * m(u, k(i))`` with ``m`` from the final
  interest probabilities and states (random embeddings stand in for a
  trained model: training is the ``train`` benchmark), users in chunks.

``events_per_s`` = events / (analysis + recommend); ``vs_raw_scan`` =
events_per_s / the raw scan's events/s (target >= 0.6); ``users_per_s`` =
users / (analysis + recommend). Seen-item exclusion is not applied here.

The product path beside the script a user would write, on the same files:

- ``numpy_script``: plain NumPy + pyarrow (``numpy_script`` below, the core
  formulas only): read three columns, per window a ``bincount`` of (user,
  category), the decayed state I (same half-life), the seed's F and the top
  interest per user, one Parquet table per (user, window) from the user's first
  event; no detector, no states, no rejects;
- ``numpy_process``: the same script in a fresh process (interpreter and imports
  included, as a user runs it), with its peak RSS;
- ``cli_level`` / ``cli_adaptive``: ``fgjax analyze`` as the CLI runs it
  (``fgjax.analysis_job.analyze_log``: two passes, the first reading with every
  data rule and rejects and building the vocabularies, the second streaming the
  windows through the compiled step and writing ``forgetting.parquet`` and
  ``states.parquet`` window by window), with the level rule and with the adaptive detector, each
  in a fresh process (compilation included, as a user pays it).

``cli_*_vs_numpy`` = the CLI's seconds / the in-process script's (1.0 = as fast);
``cli_*_vs_numpy_process`` and ``cli_*_rss_vs_numpy``: against the script in a
fresh process, seconds and peak RSS (issue 14's targets: level <= 1x,
adaptive <= 3x, RSS <= 1.5x).
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import _data, _report

SIZES = {
    "smoke": {"users": 1_000, "events": 20_000, "items": 500, "days": 7, "files": 7, "categories": 16},
    "small": {"users": 2_000, "events": 50_000, "items": 1_000, "days": 14, "files": 7, "categories": 16},
    "large": {"users": 10_000_000, "events": 60_000_000, "items": 100_000, "days": 14, "files": 28, "categories": 32},
}
K = 10
DIM = 64


def _recommend_fn(k: int, block: int):
    import jax
    import jax.numpy as jnp

    from fgjax import kernels

    @partial(jax.jit, static_argnames=())
    def chunk_top_k(user_emb, item_emb, cur, prev, state, ever, item_interest, state_weight, floor, alpha):
        p = kernels.interest_probs(kernels.interest_forgetting(cur, prev), alpha, mask=ever)
        m = jnp.maximum(p * state_weight[state], floor)  # (chunk, K)

        def score(ids):
            s = jax.nn.sigmoid(user_emb @ jnp.take(item_emb, ids[0], axis=0).T if ids.shape[0] == 1 else
                               jnp.einsum("rd,rcd->rc", user_emb, jnp.take(item_emb, ids, axis=0)))
            cols = jnp.broadcast_to(item_interest[ids], s.shape)
            return s * jnp.take_along_axis(m, cols, axis=1)

        return kernels.blocked_top_k(score, user_emb.shape[0], item_emb.shape[0], k, block_size=block)

    return chunk_top_k


def recommend_all(carry, user_emb, item_emb, item_category, *, chunk: int, block: int = 2048):
    """``(users, k)`` top items for every user, chunk by chunk on the device."""
    import jax
    import jax.numpy as jnp

    from fgjax import kernels
    from fgjax.config import RecommendConfig

    rcfg = RecommendConfig()
    state_weight = jnp.asarray([rcfg.state_weights.get(n, 1.0) for n in kernels.STATE_NAMES], jnp.float32)
    fn = _recommend_fn(K, block)
    users = user_emb.shape[0]
    item_interest = jnp.asarray(np.maximum(item_category, 0))
    out = []
    for lo in range(0, users, chunk):
        hi = min(lo + chunk, users)
        sl = slice(lo, hi)
        pad = chunk - (hi - lo)

        def rows(x):
            x = jax.lax.slice_in_dim(x, lo, hi)
            return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x

        _, idx = fn(rows(user_emb), item_emb, rows(carry.interest.current), rows(carry.interest.previous),
                    rows(carry.state), rows(carry.ever), item_interest, state_weight, rcfg.interest_floor, 2.0)
        idx.copy_to_host_async()
        out.append((sl, idx))
    result = np.empty((users, K), np.int32)
    for sl, idx in out:
        result[sl] = np.asarray(idx)[: sl.stop - sl.start]
    return result


def numpy_script(paths, item_category: np.ndarray, *, window_seconds: float, half_life_windows: float,
                 out: Path) -> int:
    """The core formulas as a user would script them with NumPy and pyarrow -> rows written to ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = [pq.read_table(p, columns=["user", "item", "timestamp"]) for p in paths]
    user = np.concatenate([t.column("user").to_numpy() for t in cols])
    cat = item_category[np.concatenate([t.column("item").to_numpy() for t in cols])]
    ts = np.concatenate([t.column("timestamp").to_numpy() for t in cols])
    window = (ts // window_seconds - ts.min() // window_seconds).astype(np.int64)  # epoch-aligned, as fgjax's
    users, k = int(user.max()) + 1, int(item_category.max()) + 1
    decay = 0.5 ** (1.0 / half_life_windows)
    order = np.argsort(window, kind="stable")
    bounds = np.searchsorted(window[order], np.arange(window.max() + 2))
    state = np.zeros((users, k), np.float32)
    started = np.zeros(users, bool)
    writer = pq.ParquetWriter(out, pa.schema([("user", pa.int64()), ("window", pa.int32()), ("F", pa.float32()),
                                              ("top_interest", pa.int32())]))
    rows = 0
    for w in range(len(bounds) - 1):
        sel = order[bounds[w]:bounds[w + 1]]
        counts = np.bincount(user[sel] * k + cat[sel], minlength=users * k).reshape(users, k)
        prev, state = state, decay * state + counts
        norm = np.linalg.norm(state, axis=1)
        change = np.linalg.norm(prev - state, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            F = np.where(norm > 1e-8, change / norm, np.where(change > 0, np.inf, 0.0))
        started |= counts.sum(1) > 0
        idx = np.flatnonzero(started)
        writer.write_table(pa.table({"user": idx.astype(np.int64), "window": np.full(len(idx), w, np.int32),
                                     "F": F[idx].astype(np.float32),
                                     "top_interest": state[idx].argmax(1).astype(np.int32)}))
        rows += len(idx)
    writer.close()
    return rows


NUMPY_PROBE = """
import json, sys, time
import numpy as np
import pyarrow.parquet as pq
from bench.pipeline import numpy_script, peak_rss_bytes
items = pq.read_table(sys.argv[2])
category = np.full(int(items.column("item_id").to_numpy().max()) + 1, -1, np.int32)
category[items.column("item_id").to_numpy()] = items.column("category").to_numpy()
started = time.perf_counter()
rows = numpy_script(sorted(__import__("glob").glob(sys.argv[1] + "/*.parquet")), category,
                    window_seconds=float(sys.argv[4]), half_life_windows=float(sys.argv[5]), out=sys.argv[3])
print("RESULT" + json.dumps({"seconds": time.perf_counter() - started, "rows": rows, "peak_rss_bytes": peak_rss_bytes(),
                             "cpu_s": time.process_time()}))
"""


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, not ru_maxrss (Linux carries ru_maxrss over fork + exec,
    so a child of a big parent would report the parent's peak)."""
    import resource

    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_probe(code: str, args: list[str], limit: float = 3600.0, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """A probe (``code`` printing ``RESULT{json}``) in a fresh interpreter from the repository root, as a
    user runs it: imports and compilation included (no persistent compilation cache, unless ``env_vars``, set
    last, turns one on), in its own process group, killed whole after ``limit`` s. Returns
    ``finished``, the wall seconds and what it printed, or why it did not finish (``limit_s``; ``returncode``,
    negative for a signal, and ``error``)."""
    import json
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(FGJAX_COMPILE_CACHE="off", JAX_ENABLE_COMPILATION_CACHE="false")
    env.update(env_vars or {})
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(Path(__file__).resolve().parent.parent), env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the interpreter and anything it started
        proc.communicate()
        return {"finished": False, "wall_s": None, "limit_s": limit}
    wall = time.perf_counter() - started
    if proc.returncode:
        return {"finished": False, "wall_s": wall, "returncode": proc.returncode, "error": stderr[-1500:]}
    return {"finished": True, "wall_s": wall, **json.loads(stdout.split("RESULT", 1)[1])}


def _fresh_process(code: str, args: list[str], what: str) -> dict[str, Any]:
    """``run_probe`` that must finish: wall seconds, its own seconds, its rows and peak RSS."""
    run = run_probe(code, args)
    if not run["finished"]:
        raise RuntimeError(f"{what} failed: {run.get('error') or 'past its limit'}")
    return {"wall_s": run["wall_s"], "in_process_s": run["seconds"], "rows": run["rows"],
            "peak_rss_bytes": run["peak_rss_bytes"]}


def numpy_process(folder: Path, items_path: Path, out: Path, window_seconds: float, half_life: float) -> dict:
    """The NumPy script in a fresh process, as a user runs it (``_fresh_process``)."""
    return _fresh_process(NUMPY_PROBE, [str(folder), str(items_path), str(out), str(window_seconds), str(half_life)],
                          "the NumPy script")


CLI_PROBE = """
import json, sys, time
started = time.perf_counter()
from fgjax import analysis_job
from fgjax.cli import return_freed_memory
from fgjax.config import load_config
return_freed_memory()  # as `fgjax analyze` does (fgjax.cli.main), without its compilation cache
config = load_config(None, sys.argv[3:])
analysis_job.split_cpu(config.analysis.cpu_devices)  # as fgjax analyze does, before JAX starts
timings = {}
rows = analysis_job.analyze_log(config, sys.argv[1], progress=False, timings=timings)
from bench.pipeline import peak_rss_bytes
print("RESULT" + json.dumps({"seconds": time.perf_counter() - started, "rows": list(rows),
                             "peak_rss_bytes": peak_rss_bytes(), "stages": timings, "cpu_s": time.process_time()}))
"""


def cli_analyze(folder: Path, items_path: Path, out: Path, detector: str, window_seconds: float) -> dict[str, Any]:
    """``fgjax analyze`` on the shards in a fresh process (``_fresh_process``)."""
    sets = [f"data.path={folder}", f"data.items_path={items_path}", "data.format=parquet",
            "data.columns.user_id=user", "data.columns.item_id=item", "data.columns.weight=weight",
            f"analysis.window_seconds={window_seconds}", f"analysis.detector.kind={detector}"]
    return _fresh_process(CLI_PROBE, [str(out), "-", *sets], f"fgjax analyze ({detector})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _report.suite_parser("python -m bench pipeline", __doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=0)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--items", type=int, default=0)
    parser.add_argument("--days", type=int, default=0, help="days of events (one window per day; default by scale)")
    parser.add_argument("--files", type=int, default=0, help="Parquet shards (default by scale)")
    parser.add_argument("--chunk", type=int, default=0, help="users per top-K call (default by scale)")
    parser.add_argument("--data", default="", help="folder for the generated shards (default: a temp folder)")
    args = parser.parse_args(argv)
    import jax

    from fgjax.config import AnalysisConfig
    from fgjax.analysis import analyze_stream

    size = dict(SIZES[args.scale])
    for key in ("users", "events", "items", "days", "files"):
        if getattr(args, key):
            size[key] = getattr(args, key)
    chunk = args.chunk or (1024 if args.scale != "large" else 32768)
    payload: dict[str, Any] = {"benchmark": "pipeline", **_report.environment(),
                               "config": {**size, "scale": args.scale, "k": K, "dim": DIM, "chunk": chunk}}
    print(f"pipeline on {payload['device']}: {size}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or tmp
        t0 = time.perf_counter()
        paths, item_category = _data.write_events(f"{folder}/events", users=size["users"], items=size["items"],
                                                  events=size["events"], days=size["days"],
                                                  categories=size["categories"], files=size["files"], seed=args.seed)
        payload["generate_s"] = time.perf_counter() - t0
        payload["parquet_bytes"] = sum(p.stat().st_size for p in paths)
        cfg = AnalysisConfig(window_seconds=86400.0)
        # Warm-up: compile the window step for every shape the timed runs meet. A stream pads each window to
        # power-of-two buckets that only grow, so a slice of the data compiled smaller buckets than the whole
        # log needs, and the first timed run (the prefetched one) paid the rest of the compilation: on an H100
        # (2026-12-05) it took 4.71 s against 2.12 s for the unprefetched run after it.
        jax.block_until_ready(analyze_stream(paths, num_users=size["users"], item_category=item_category,
                                             config=cfg, fetch_carry=False).carry)
        t0 = time.perf_counter()
        rows = _data.raw_scan(paths)
        raw_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = analyze_stream(paths, num_users=size["users"], item_category=item_category, config=cfg,
                             fetch_carry=False)
        jax.block_until_ready(res.carry)
        analysis_s = time.perf_counter() - t0
        rng = np.random.default_rng(args.seed)
        user_emb = jax.device_put(rng.normal(size=(size["users"], DIM)).astype(np.float32) / 8)
        item_emb = jax.device_put(rng.normal(size=(size["items"], DIM)).astype(np.float32) / 8)
        recommend_all(res.carry, user_emb[:chunk], item_emb, item_category, chunk=chunk)  # compile
        t0 = time.perf_counter()
        top = recommend_all(res.carry, user_emb, item_emb, item_category, chunk=chunk)
        recommend_s = time.perf_counter() - t0
        del res
        t0 = time.perf_counter()
        plain = analyze_stream(paths, num_users=size["users"], item_category=item_category, config=cfg,
                               prefetch_windows=0, fetch_carry=False)
        jax.block_until_ready(plain.carry)
        unprefetched_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        numpy_rows = numpy_script(paths, item_category, window_seconds=cfg.window_seconds,
                                  half_life_windows=cfg.half_life_windows, out=Path(tmp) / "numpy_forgetting.parquet")
        numpy_s = time.perf_counter() - t0
        items_path = Path(tmp) / "items.parquet"
        pq.write_table(pa.table({"item_id": np.arange(len(item_category), dtype=np.int64),
                                 "category": item_category.astype(np.int64)}), items_path)
        # Smoke (the test suite) runs the level rule only: each fresh process compiles its whole run.
        kinds = ("level",) if args.scale == "smoke" else ("level", "adaptive")
        numpy_fresh = numpy_process(paths[0].parent, items_path, Path(tmp) / "numpy_fresh.parquet",
                                    cfg.window_seconds, cfg.half_life_windows)
        cli = {kind: cli_analyze(paths[0].parent, items_path, Path(tmp) / f"cli_{kind}", kind, cfg.window_seconds)
               for kind in kinds}
    total = analysis_s + recommend_s
    payload.update({
        "events": rows, "windows": len(plain.window_start), "raw_scan_s": raw_s, "analysis_s": analysis_s,
        "analysis_unprefetched_s": unprefetched_s, "recommend_s": recommend_s, "total_s": total,
        "raw_scan_events_per_s": rows / raw_s, "analysis_events_per_s": rows / analysis_s,
        "events_per_s": rows / total, "users_per_s": size["users"] / total,
        "vs_raw_scan": (rows / total) / (rows / raw_s), "analysis_vs_raw_scan": raw_s / analysis_s,
        "prefetch_speedup": unprefetched_s / analysis_s, "recommendations_shape": list(top.shape),
        "numpy_script_s": numpy_s, "numpy_script_rows": numpy_rows, "numpy_process": numpy_fresh, "cli": cli,
        **{f"cli_{kind}_vs_numpy": run["wall_s"] / numpy_s for kind, run in cli.items()},
        # Both in fresh processes, interpreter and imports included: the user's view.
        **{f"cli_{kind}_vs_numpy_process": run["wall_s"] / numpy_fresh["wall_s"] for kind, run in cli.items()},
        **{f"cli_{kind}_rss_vs_numpy": run["peak_rss_bytes"] / numpy_fresh["peak_rss_bytes"]
           for kind, run in cli.items()},
        "memory": {"peak_host_rss_bytes": _report.peak_host_rss_bytes(), "device": _report.device_memory()},
    })
    payload["summary"] = {k: payload[k] for k in ("total_s", "events_per_s", "users_per_s", "vs_raw_scan",
                                                  "analysis_vs_raw_scan", "prefetch_speedup", "numpy_script_s")}
    payload["summary"].update({f"cli_{kind}_{what}": payload[f"cli_{kind}_{what}"] for kind in cli
                               for what in ("vs_numpy", "vs_numpy_process", "rss_vs_numpy")})
    print(f"numpy script {numpy_s:.2f}s (fresh process {numpy_fresh['wall_s']:.2f}s, "
          f"{numpy_fresh['peak_rss_bytes'] / 1e9:.2f} GB); fgjax analyze in a fresh process: " + ", ".join(
              f"{kind} {run['wall_s']:.2f}s ({payload[f'cli_{kind}_vs_numpy_process']:.1f}x), "
              f"{run['peak_rss_bytes'] / 1e9:.2f} GB ({payload[f'cli_{kind}_rss_vs_numpy']:.1f}x)"
              for kind, run in cli.items()), flush=True)
    row = {**payload, "users": size["users"]}
    cols = [("users", "users", ",d"), ("events", "events", ",d"), ("raw_scan_s", "raw scan s", ".3f"),
            ("analysis_s", "analysis s", ".3f"), ("analysis_unprefetched_s", "no prefetch s", ".3f"),
            ("recommend_s", "top-10 s", ".3f"), ("total_s", "total s", ".3f"), ("events_per_s", "events/s", ".3g"),
            ("users_per_s", "users/s", ".3g"), ("vs_raw_scan", "vs raw scan", ".2f")]
    return _report.finish(payload, args, [row], cols)


if __name__ == "__main__":
    main()
