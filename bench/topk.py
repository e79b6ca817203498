"""Top-K scoring of all users against the catalog: blocked exact top-K vs the full matrix.

    python -m bench topk --scale small|large [--out bench/results/topk.json]

``U`` users x ``N`` items x ``d`` float32 embeddings, k = 10, scores =
``users @ items.T``. Measured in one run:

- ``matmul``: the score matmul alone, ``(U, N)`` written to memory: the floor
  any full-matrix selection starts from (full float32 products,
  ``Precision.HIGHEST``, like every exact path here and like PyTorch's
  default, which keeps TF32 off);
- ``full_top_k``: ``jax.lax.top_k`` of that full matrix (matmul included);
- ``groups``: ``fgjax.kernels.matmul_top_k(method="groups")``, exact float32,
  no ``(U, N)`` matrix (group maxima over item blocks, then the k best groups);
- ``merge``: the same with a running top-k merged block by block;
- ``groups_bf16``: ``groups`` with bfloat16 inputs (float32 accumulation);
  its recall@k against the exact float32 top-k is reported;
- NumPy (``argpartition`` of the matmul; small sizes only), PyTorch eager
  (``torch.topk(q @ k.T)``) and ``torch.compile`` when torch imports.

``exact_match``: share of rows whose k indices equal ``full_top_k``'s (float
rounding of a dot product can differ by an ulp between a full matmul and a
block, so exact ties may rarely swap); ``recall``: mean share of the exact
top-k found.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from bench import _report

K = 10
SIZES = {
    "smoke": {"users": 128, "items": [2_000], "dim": 64},
    "small": {"users": 256, "items": [2_000, 20_000], "dim": 64},
    "large": {"users": 32_768, "items": [10_000, 30_000, 100_000], "dim": 64},
}
NUMPY_MAX_CELLS = 2e8  # NumPy's full matrix beyond this takes too long to be worth a reference


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = (found[:, :, None] == exact[:, None, :]).any(-1).sum(-1)
    return float(np.mean(hits / exact.shape[1]))


def bench_size(users: int, items: int, dim: int, *, timing, seed: int, use_torch: bool, block: int,
               sweep=()) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from fgjax.kernels import matmul_top_k

    rng = np.random.default_rng(seed)
    q_np = rng.normal(size=(users, dim)).astype(np.float32)
    k_np = rng.normal(size=(items, dim)).astype(np.float32)
    q, keys = jax.device_put(q_np), jax.device_put(k_np)

    # Full float32 products everywhere exact is claimed (the default would let XLA use TF32 on a GPU).
    exact_matmul = partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    fns = {
        "matmul": jax.jit(lambda a, b: exact_matmul(a, b.T)),
        "full_top_k": jax.jit(lambda a, b: jax.lax.top_k(exact_matmul(a, b.T), K)),
        "groups": jax.jit(partial(matmul_top_k, k=K, block_size=block, method="groups")),
        "merge": jax.jit(partial(matmul_top_k, k=K, block_size=block, method="merge")),
        "groups_bf16": jax.jit(partial(matmul_top_k, k=K, block_size=block, method="groups",
                                       compute_dtype=jnp.bfloat16)),
    }
    out: dict[str, Any] = {"users": users, "items": items, "dim": dim, "k": K, "block_size": block,
                           "score_matrix_bytes": users * items * 4, "timings": {}}
    exact = np.asarray(fns["full_top_k"](q, keys)[1])
    for name in ("groups", "merge", "groups_bf16"):
        got = np.asarray(fns[name](q, keys)[1])
        out[f"{name}_exact_match"] = float(np.mean(np.all(got == exact, axis=1)))
        out[f"{name}_recall"] = _recall(got, exact)
    for name, fn in fns.items():
        out["timings"][name] = _report.time_call(fn, q, keys, **timing)
    if users * items <= NUMPY_MAX_CELLS:
        def numpy_top_k(a, b):
            s = a @ b.T
            part = np.argpartition(-s, K - 1, axis=1)[:, :K]
            order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
            return np.take_along_axis(part, order, 1)

        out["timings"]["numpy"] = _report.time_call(numpy_top_k, q_np, k_np, sync=lambda _: None, **timing)
    torch = _report.import_torch() if use_torch else None
    if torch is not None:
        dev = _report.torch_device(torch)
        tq, tk = torch.from_numpy(q_np).to(dev), torch.from_numpy(k_np).to(dev)

        def torch_top_k(a, b):
            return torch.topk(a @ b.T, K, dim=1)

        with torch.no_grad():
            out["timings"]["torch_matmul"] = _report.time_call(lambda a, b: a @ b.T, tq, tk,
                                                               sync=_report.torch_sync(torch), **timing)
            out["timings"]["torch"] = _report.time_call(torch_top_k, tq, tk, sync=_report.torch_sync(torch), **timing)
        compiled, error = _report.time_torch_compile(torch, torch_top_k, tq, tk, timing=timing)
        if compiled is not None:
            out["timings"]["torch_compile"] = compiled
        else:
            out["torch_compile_error"] = error
        out["torch_device"] = dev
    # Block size sweep of the exact path (the best block depends on the device's caches).
    out["block_sweep"] = {}
    for b in sweep:
        if b != block:
            fn = jax.jit(partial(matmul_top_k, k=K, block_size=b, method="groups"))
            out["block_sweep"][str(b)] = _report.time_call(fn, q, keys, **timing)["median_s"]
    out["block_sweep"][str(block)] = out["timings"]["groups"]["median_s"]
    best = min(out["block_sweep"], key=out["block_sweep"].get)
    out["best_block"] = int(best)
    t = {name: v["median_s"] for name, v in out["timings"].items()}
    t["groups_best"] = out["block_sweep"][best]
    out["groups_best_vs_full_top_k"] = t["groups_best"] / t["full_top_k"]
    out["full_top_k_vs_matmul"] = t["full_top_k"] / t["matmul"]
    for name in ("groups", "merge", "groups_bf16"):
        out[f"{name}_vs_full_top_k"] = t[name] / t["full_top_k"]
        out[f"{name}_vs_matmul"] = t[name] / t["matmul"]
    for ref in ("numpy", "torch", "torch_compile"):
        if ref in t:
            out[f"speedup_vs_{ref}"] = t[ref] / t["groups"]
    return out


COLUMNS = [
    ("items", "N", ",d"),
    ("matmul_ms", "matmul ms", ".2f"),
    ("full_top_k_ms", "lax.top_k ms", ".2f"),
    ("groups_ms", "groups ms", ".2f"),
    ("merge_ms", "merge ms", ".2f"),
    ("groups_bf16_ms", "bf16 ms", ".2f"),
    ("groups_vs_full_top_k", "groups/top_k", ".3f"),
    ("groups_best_vs_full_top_k", "best/top_k", ".3f"),
    ("groups_vs_matmul", "groups/matmul", ".2f"),
    ("groups_exact_match", "exact rows", ".4f"),
    ("groups_bf16_recall", "bf16 recall", ".4f"),
    ("torch_ms", "torch ms", ".2f"),
    ("torch_compile_ms", "torch.compile ms", ".2f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _report.suite_parser("python -m bench topk", __doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=0, help="items per block (default by scale)")
    args = parser.parse_args(argv)
    size = SIZES[args.scale]
    block = args.block or 2048
    sweep = (512, 8192) if args.scale != "large" else (1024, 8192, 32768)
    repeats = args.repeats or (3 if args.scale != "large" else 5)
    timing = {"repeats": repeats, "warmup": 1, "min_time": 0.0}
    payload: dict[str, Any] = {"benchmark": "topk", **_report.environment(),
                               "config": {**size, "k": K, "scale": args.scale, "block_size": block, "repeats": repeats},
                               "results": []}
    print(f"topk on {payload['device']}: {size['users']} users x d={size['dim']}, k={K}", flush=True)
    rows = []
    for n in size["items"]:
        r = bench_size(size["users"], n, size["dim"], timing=timing, seed=args.seed, use_torch=not args.no_torch,
                       block=block, sweep=sweep if n == size["items"][-1] else ())
        payload["results"].append(r)
        rows.append({**r, **{f"{name}_ms": v["median_s"] * 1e3 for name, v in r["timings"].items()}})
    last = payload["results"][-1]
    payload["summary"] = {k: last[k] for k in ("groups_vs_full_top_k", "groups_best_vs_full_top_k", "best_block", "groups_vs_matmul", "full_top_k_vs_matmul",
                                               "groups_exact_match", "groups_bf16_recall")}
    plots = _report.plots_dir(args)
    if plots:
        series = {name: [r["timings"][name]["median_s"] for r in payload["results"]]
                  for name in ("matmul", "full_top_k", "groups", "merge", "groups_bf16")}
        payload["plots"] = [str(_report.plot_scaling(plots / "topk_time.png", size["items"], series, xlabel="items N",
                                                     ylabel="seconds", title=f"top-{K}, {size['users']} users, "
                                                     f"d={size['dim']}, {payload['device']}"))]
    return _report.finish(payload, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
