"""Cost against N users: the fused analysis pass and top-K scoring must grow linearly.

    python -m bench scaling --scale small|large

For N over a decade range (small: 1e3..1e5, large: 1e4..1e7): seconds per
window of ``fgjax.analysis.window_step`` (E = N events) and seconds to rank all N
users against a fixed catalog (``kernels.matmul_top_k``, k = 10, chunks of
users). ``exponent`` = slope of log(seconds) on log(N) over the upper sizes
(fixed overheads dominate the smallest): 1.0 is linear growth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import _report

#: smoke only checks that the sweep runs and fits its exponents (the test suite): small sizes, one chunk.
SIZES = {"smoke": {"users": [256, 512, 1_024], "items": 500, "chunk": 1024},
         "small": {"users": [1_000, 4_000, 16_000], "items": 1_000, "chunk": 4096},
         "large": {"users": [10_000, 100_000, 1_000_000, 10_000_000], "items": 100_000, "chunk": 32768}}
K_INTERESTS = 32
DIM = 64


def time_analysis(n: int, timing) -> float:
    import jax

    from fgjax import kernels
    from fgjax.analysis import init_carry, window_params, window_spec, window_step
    from fgjax.config import AnalysisConfig

    cfg = AnalysisConfig()
    rng = np.random.default_rng(0)
    ev = kernels.WindowEvents(*(jax.device_put(x) for x in (
        rng.integers(0, n, n).astype(np.int32), rng.integers(0, K_INTERESTS, n).astype(np.int32),
        rng.uniform(0.5, 2, n).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32))))
    spec, params = window_spec(cfg, K_INTERESTS, top=3), window_params(cfg)
    box = [init_carry(spec, n)]

    def step():
        box[0], out, _ = window_step(box[0], ev, params, spec)
        return out

    return _report.time_call(step, **timing)["median_s"]


def time_topk(n: int, items: int, chunk: int, timing) -> float:
    import jax

    from fgjax.kernels import matmul_top_k

    rng = np.random.default_rng(0)
    users = jax.device_put(rng.normal(size=(n, DIM)).astype(np.float32))
    keys = jax.device_put(rng.normal(size=(items, DIM)).astype(np.float32))
    c = min(chunk, n)
    fn = jax.jit(lambda q, k: matmul_top_k(q, k, 10, block_size=2048))

    def run():
        outs = [fn(jax.lax.dynamic_slice_in_dim(users, lo, c), keys) for lo in range(0, n - c + 1, c)]
        return outs[-1]

    return _report.time_call(run, **timing)["median_s"] * (n / (c * (n // c)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _report.suite_parser("python -m bench scaling", __doc__.split("\n\n")[0]).parse_args(argv)
    size = SIZES[args.scale]
    timing = {"repeats": args.repeats or 3, "warmup": 1, "min_time": 0.0}
    payload: dict[str, Any] = {"benchmark": "scaling", **_report.environment(),
                               "config": {**size, "scale": args.scale, "interests": K_INTERESTS, "dim": DIM},
                               "results": []}
    print(f"scaling on {payload['device']}", flush=True)

    def measure(n: int) -> dict[str, Any]:
        a = time_analysis(n, timing)
        t = time_topk(n, size["items"], size["chunk"], timing)
        return {"users": n, "analysis_s": a, "topk_s": t, "analysis_ns_per_user": a / n * 1e9,
                "topk_us_per_user": t / n * 1e6}

    payload["results"] = _report.each_size_that_fits(size["users"], measure, payload)
    upper = payload["results"][1:]
    x = [r["users"] for r in upper]
    payload["analysis_exponent"] = _report.fit_exponent(x, [r["analysis_s"] for r in upper])
    payload["topk_exponent"] = _report.fit_exponent(x, [r["topk_s"] for r in upper])
    payload["summary"] = {"analysis_exponent": payload["analysis_exponent"], "topk_exponent": payload["topk_exponent"]}
    plots = _report.plots_dir(args)
    if plots:
        xs = [r["users"] for r in payload["results"]]
        payload["plots"] = [str(_report.plot_scaling(
            plots / "scaling.png", xs, {"analysis pass (s/window)": [r["analysis_s"] for r in payload["results"]],
                                        f"top-10 over {size['items']:,} items (s)": [r["topk_s"] for r in payload["results"]]},
            xlabel="users N", ylabel="seconds", title=f"cost vs N, {payload['device']}"))]
    cols = [("users", "N", ",d"), ("analysis_s", "analysis s", ".4g"), ("analysis_ns_per_user", "ns/user", ".1f"),
            ("topk_s", "top-10 s", ".4g"), ("topk_us_per_user", "us/user", ".2f")]
    out = _report.finish(payload, args, payload["results"], cols)

    def shown(exponent: float | None) -> str:
        return "-" if exponent is None else f"{exponent:.2f}"

    print(f"exponents: analysis {shown(payload['analysis_exponent'])}, top-k {shown(payload['topk_exponent'])} "
          "(1.0 = linear)")
    return out


if __name__ == "__main__":
    main()
