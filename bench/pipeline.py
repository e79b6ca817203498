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
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from typing import Any

import numpy as np

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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _report.suite_parser("python -m bench pipeline", __doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=0)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--items", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=0, help="users per top-K call (default by scale)")
    parser.add_argument("--data", default="", help="folder for the generated shards (default: a temp folder)")
    args = parser.parse_args(argv)
    import jax

    from fgjax.config import AnalysisConfig
    from fgjax.analysis import analyze_stream

    size = dict(SIZES[args.scale])
    for key in ("users", "events", "items"):
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
        # Warm-up: compile the window step's shapes and the scoring on a slice of the data.
        analyze_stream(paths[:1], num_users=size["users"], item_category=item_category, config=cfg)
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
    total = analysis_s + recommend_s
    payload.update({
        "events": rows, "windows": len(plain.window_start), "raw_scan_s": raw_s, "analysis_s": analysis_s,
        "analysis_unprefetched_s": unprefetched_s, "recommend_s": recommend_s, "total_s": total,
        "raw_scan_events_per_s": rows / raw_s, "analysis_events_per_s": rows / analysis_s,
        "events_per_s": rows / total, "users_per_s": size["users"] / total,
        "vs_raw_scan": (rows / total) / (rows / raw_s), "analysis_vs_raw_scan": raw_s / analysis_s,
        "prefetch_speedup": unprefetched_s / analysis_s, "recommendations_shape": list(top.shape),
        "memory": {"peak_host_rss_bytes": _report.peak_host_rss_bytes(), "device": _report.device_memory()},
    })
    payload["summary"] = {k: payload[k] for k in ("total_s", "events_per_s", "users_per_s", "vs_raw_scan",
                                                  "analysis_vs_raw_scan", "prefetch_speedup")}
    row = {**payload, "users": size["users"]}
    cols = [("users", "users", ",d"), ("events", "events", ",d"), ("raw_scan_s", "raw scan s", ".3f"),
            ("analysis_s", "analysis s", ".3f"), ("analysis_unprefetched_s", "no prefetch s", ".3f"),
            ("recommend_s", "top-10 s", ".3f"), ("total_s", "total s", ".3f"), ("events_per_s", "events/s", ".3g"),
            ("users_per_s", "users/s", ".3g"), ("vs_raw_scan", "vs raw scan", ".2f")]
    return _report.finish(payload, args, [row], cols)


if __name__ == "__main__":
    main()
