"""The fused per-window analysis pass over N users (state update -> F -> f -> p -> states -> top interests).

    python -m bench analysis_pass --scale small|large [--out bench/results/analysis_pass.json]

One call = ``fgjax.analysis.window_step`` (jitted, carry donated) closing one
window for every user, with E = N events in the window. Bytes the pass must
move at least (K interests): read the carry (I 4, peak 4, state 1, ever 1
bytes per cell), write it back plus f and p (4 + 4 + 1 + 1 + 4 + 4), i.e.
28·N·K bytes, plus E·16 event bytes and the per-user outputs.

References in the same run: ``copy`` (a donated in-place read + write of the
same number of bytes), ``unfused`` (the same kernels, each its own jit call:
what fusion saves), the pass in float32 NumPy, and PyTorch eager /
``torch.compile`` when torch imports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import _report

SIZES = {"smoke": [1_000], "small": [1_000, 10_000], "large": [100_000, 1_000_000, 10_000_000]}
NUM_INTERESTS = 32
TOP = 3


def _events(n: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n, n).astype(np.int32), rng.integers(0, k, n).astype(np.int32),
            rng.uniform(0.5, 2, n).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32))


def numpy_pass(carry, events, *, decay, inv_tau, cfg, top=TOP):
    """The same pass in NumPy (float32 state; returns the new carry and the outputs)."""
    cur, _, peak, state, ever = carry
    n, k = cur.shape
    user, interest, weight, age = events
    added = np.bincount(user * k + interest, weights=weight * np.exp(-inv_tau * age), minlength=n * k)
    added = added.reshape(n, k).astype(np.float32)
    new = (decay * cur + added).astype(np.float32)
    active = added > 0
    peak = np.maximum(peak, new)
    ever = ever | active
    denom = np.sqrt((new * new).sum(-1))
    diff = np.sqrt(((new - cur) ** 2).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        degree = np.where(denom > cfg.eps, diff / denom, np.where(diff > cfg.eps, np.inf, 0))
        change = np.maximum(cur - new, 0)
        f = np.where(denom[:, None] > cfg.eps, change / denom[:, None], np.where(change > 0, np.inf, 0))
    logits = np.where(ever, -cfg.alpha * np.where(np.isinf(f), 1e30, f), -np.inf)
    m = logits.max(-1, keepdims=True)
    w = np.where(ever, np.exp(logits - np.where(np.isfinite(m), m, 0)), 0)
    s = w.sum(-1, keepdims=True)
    p = np.where(s > 0, w / np.where(s > 0, s, 1), 0)
    level = np.where(new < cfg.level.declining_ratio * peak, 3, 2)
    with_act = np.where(state == 0, 1, np.where(state == 4, 5, level))
    faded = (state == 4) | (new < cfg.level.forgotten_ratio * peak)
    without = np.where(state == 0, 0, np.where(faded, 4, level))
    state = np.where(active, with_act, without).astype(np.int8)
    peak = np.where(state == 5, new, peak)
    top_i = np.argpartition(-p, top - 1, axis=1)[:, :top]
    return (new, cur, peak, state, ever), (degree, top_i, f, p)


def torch_pass(torch, carry, events, *, decay, inv_tau, cfg, top=TOP):
    cur, _, peak, state, ever = carry
    n, k = cur.shape
    user, interest, weight, age = events
    added = torch.zeros(n * k, dtype=cur.dtype, device=cur.device)
    added.index_add_(0, user * k + interest, weight * torch.exp(-inv_tau * age))
    added = added.view(n, k)
    new = decay * cur + added
    active = added > 0
    peak = torch.maximum(peak, new)
    ever = ever | active
    denom = torch.linalg.vector_norm(new, dim=-1)
    degree = torch.linalg.vector_norm(new - cur, dim=-1) / torch.clamp(denom, min=cfg.eps)
    f = torch.clamp(cur - new, min=0) / torch.clamp(denom, min=cfg.eps)[:, None]
    p = torch.nan_to_num(torch.softmax(torch.where(ever, -cfg.alpha * f, torch.full_like(f, float("-inf"))), -1))
    level = torch.where(new < cfg.level.declining_ratio * peak, 3, 2)
    with_act = torch.where(state == 0, 1, torch.where(state == 4, 5, level))
    faded = (state == 4) | (new < cfg.level.forgotten_ratio * peak)
    without = torch.where(state == 0, 0, torch.where(faded, 4, level))
    state = torch.where(active, with_act, without).to(torch.int8)
    peak = torch.where(state == 5, new, peak)
    return (new, cur, peak, state, ever), (degree, torch.topk(p, top, dim=1), f, p)


def bench_size(n: int, *, timing, seed: int, use_torch: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from fgjax import kernels
    from fgjax.analysis import init_carry, window_params, window_spec, window_step
    from fgjax.config import AnalysisConfig, DetectorConfig

    k = NUM_INTERESTS
    # The level rule: the unfused reference below runs the same kernels one by one
    # (the adaptive detector's own cost is bench/detector_update.py).
    cfg = AnalysisConfig(detector=DetectorConfig(kind="level"))
    spec, params = window_spec(cfg, k, top=TOP), window_params(cfg)
    decay, inv_tau = float(params.decay), float(params.inv_tau)  # the references take Python floats
    ev_np = _events(n, k, seed)
    events = kernels.WindowEvents(*(jax.device_put(x) for x in ev_np))
    box = [init_carry(spec, n)]
    # Two warm windows so the state is not all zero.
    for _ in range(2):
        box[0], _, _ = window_step(box[0], events, params, spec)

    def fused():
        box[0], out, fp = window_step(box[0], events, params, spec)
        return out, fp

    # Unfused: the same kernels as separate device calls.
    contrib = jax.jit(lambda e: kernels.window_contributions(e, n, k, inv_tau=inv_tau))
    apply = jax.jit(lambda s, a: kernels.interest_state_apply(s, a, decay=decay))
    degree_fn = jax.jit(lambda c, p: kernels.forgetting_degree(c, p))
    forget_fn = jax.jit(lambda c, p: kernels.interest_forgetting(c, p))
    probs_fn = jax.jit(lambda f, m: kernels.interest_probs(f, cfg.alpha, mask=m))
    states_fn = jax.jit(lambda s, a, c, pk: kernels.threshold_states(
        s, a, c, pk, declining_ratio=cfg.level.declining_ratio, forgotten_ratio=cfg.level.forgotten_ratio))
    topk_fn = jax.jit(lambda p: jax.lax.top_k(p, TOP))
    ubox = [jax.tree.map(lambda x: x + 0 if x.dtype != bool else x | False, box[0])]

    def unfused():
        c = ubox[0]
        added = contrib(events)
        interest = apply(c.interest, added)
        active = added > 0
        peak = jnp.maximum(c.peak, interest.current)
        ever = c.ever | active
        degree = degree_fn(interest.current, interest.previous)
        f = forget_fn(interest.current, interest.previous)
        p = probs_fn(f, ever)
        state = states_fn(c.state, active, interest.current, peak)
        ubox[0] = c._replace(interest=interest, peak=peak, state=state, ever=ever)
        return degree, topk_fn(p), f, p

    nbytes = 28 * n * k + n * 16 + n * 4 + n * TOP * 8
    copy_box = [jnp.zeros(nbytes // 8, jnp.float32)]
    bump = jax.jit(lambda a: a + 1, donate_argnums=(0,))

    def copy():
        copy_box[0] = bump(copy_box[0])
        return copy_box[0]

    out: dict[str, Any] = {"users": n, "interests": k, "events": n, "bytes": nbytes, "timings": {}}
    # Same answer as NumPy from the same carry.
    c0 = jax.device_get(box[0])
    np_carry = (c0.interest.current, c0.interest.previous, c0.peak, c0.state, c0.ever)
    _, (np_degree, _, _, np_p) = numpy_pass(np_carry, ev_np, decay=decay, inv_tau=inv_tau, cfg=cfg)
    jx_out, jx_detail = fused()
    jx_p = jx_detail.p
    finite = np.isfinite(np_degree)
    out["max_abs_diff_F_vs_numpy"] = float(np.max(np.abs(np.asarray(jx_out.degree)[finite] - np_degree[finite]),
                                                  initial=0))
    out["max_abs_diff_p_vs_numpy"] = float(np.max(np.abs(np.asarray(jx_p) - np_p)))
    out["timings"]["fused"] = _report.time_call(fused, **timing)
    out["timings"]["unfused"] = _report.time_call(unfused, **timing)
    out["timings"]["copy"] = _report.time_call(copy, **timing)
    out["timings"]["numpy"] = _report.time_call(
        lambda: numpy_pass(np_carry, ev_np, decay=decay, inv_tau=inv_tau, cfg=cfg), sync=lambda _: None, **timing)
    torch = _report.import_torch() if use_torch else None
    if torch is not None:
        dev = _report.torch_device(torch)
        tc = tuple(torch.from_numpy(np.array(x)).to(dev) for x in np_carry)
        te = (torch.from_numpy(ev_np[0].astype(np.int64)).to(dev), torch.from_numpy(ev_np[1].astype(np.int64)).to(dev),
              torch.from_numpy(ev_np[2]).to(dev), torch.from_numpy(ev_np[3]).to(dev))

        def tp(c, e):
            return torch_pass(torch, c, e, decay=decay, inv_tau=inv_tau, cfg=cfg)

        with torch.no_grad():
            out["timings"]["torch"] = _report.time_call(tp, tc, te, sync=_report.torch_sync(torch), **timing)
        compiled, error = _report.time_torch_compile(torch, tp, tc, te, timing=timing)
        if compiled is not None:
            out["timings"]["torch_compile"] = compiled
        else:
            out["torch_compile_error"] = error
    t = {name: v["median_s"] for name, v in out["timings"].items()}
    out["fused_gbps"] = _report.gbps(nbytes, t["fused"])
    out["copy_gbps"] = _report.gbps(copy_box[0].size * 8, t["copy"])
    out["fused_vs_copy"] = out["fused_gbps"] / out["copy_gbps"]
    out["fusion_speedup"] = t["unfused"] / t["fused"]
    for ref in ("numpy", "torch", "torch_compile"):
        if ref in t:
            out[f"speedup_vs_{ref}"] = t[ref] / t["fused"]
    out["users_per_s"] = n / t["fused"]
    return out


COLUMNS = [
    ("users", "N", ",d"),
    ("fused_ms", "fused ms", ".3f"),
    ("unfused_ms", "unfused ms", ".3f"),
    ("fused_gbps", "GB/s", ".2f"),
    ("copy_gbps", "copy GB/s", ".2f"),
    ("fused_vs_copy", "fused/copy", ".2f"),
    ("speedup_vs_numpy", "x numpy", ".1f"),
    ("speedup_vs_torch", "x torch", ".1f"),
    ("speedup_vs_torch_compile", "x torch.compile", ".1f"),
    ("users_per_s", "users/s", ".3g"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _report.suite_parser("python -m bench analysis_pass", __doc__.split("\n\n")[0])
    parser.add_argument("--users", type=_report.int_list, default=None,
                        help="comma-separated N (users); default by --scale")
    args = parser.parse_args(argv)
    sizes = args.users or SIZES[args.scale]
    repeats = args.repeats or (3 if args.scale != "large" else 5)
    timing = {"repeats": repeats, "warmup": 1, "min_time": 0.0 if args.scale != "large" else 0.05}
    payload: dict[str, Any] = {"benchmark": "analysis_pass", **_report.environment(),
                               "config": {"scale": args.scale, "users": sizes, "interests": NUM_INTERESTS,
                                          "events_per_window": "N", "top": TOP, "repeats": repeats}, "results": []}
    print(f"analysis_pass on {payload['device']}", flush=True)
    rows = []
    for n in sizes:
        r = bench_size(n, timing=timing, seed=args.seed, use_torch=not args.no_torch)
        payload["results"].append(r)
        rows.append({**r, **{f"{k}_ms": v["median_s"] * 1e3 for k, v in r["timings"].items()}})
        # Each size as it completes: a run killed at its limit (the device script's) still leaves these.
        print(_report.format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    last = payload["results"][-1]
    payload["summary"] = {k: last.get(k) for k in ("fused_vs_copy", "fusion_speedup", "speedup_vs_numpy",
                                                   "speedup_vs_torch", "users_per_s")}
    plots = _report.plots_dir(args)
    if plots:
        series = {name: [r["timings"].get(name, {}).get("median_s") for r in payload["results"]]
                  for name in ("fused", "unfused", "copy", "numpy", "torch")}
        payload["plots"] = [str(_report.plot_scaling(plots / "analysis_pass.png", sizes, series, xlabel="users N",
                                                     ylabel="seconds per window",
                                                     title=f"fused analysis pass, K={NUM_INTERESTS}, {payload['device']}"))]
    return _report.finish(payload, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
