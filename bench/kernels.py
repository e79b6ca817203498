"""Each forgetting kernel at N users: effective bandwidth beside a same-run copy, NumPy and PyTorch.

    python -m bench kernels --scale small|large [--out bench/results/kernels.json]

Kernels (K interests, float32), each ``jax.jit`` of the ``fgjax.kernels`` function:

- ``F``: ``forgetting_degree(cur, prev)``: reads 2·N·K·4 bytes, writes N·4.
- ``fk_softmax``: ``interest_probs(interest_forgetting(cur, prev), alpha, mask=ever)``:
  reads 2·N·K·4 + N·K (mask), writes N·K·4.
- ``state_update``: ``interest_state_update`` with E = N events (scatter-add of
  decayed weights, one-hot interests), state donated: reads and writes N·K·4,
  reads E·16 event bytes.

References measured in the same run on the same sizes: ``copy`` (a donated,
in-place read + write of an array of the kernel's byte count: the device's
bandwidth ceiling for those bytes), the same math in float32 NumPy, and PyTorch
eager / ``torch.compile`` when torch imports (CUDA when available).
``kernel/copy`` = kernel GB/s / copy GB/s (bytes the kernel must move / time).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from bench import _report

SIZES = {"smoke": [1_000], "small": [1_000, 10_000], "large": [100_000, 1_000_000, 10_000_000]}
NUM_INTERESTS = 32
ALPHA = 2.0


def _numpy_fk_softmax(cur, prev, mask, alpha=ALPHA, eps=1e-8):
    denom = np.sqrt(np.sum(cur * cur, axis=-1, keepdims=True))
    change = np.maximum(prev - cur, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(denom > eps, change / np.where(denom > eps, denom, 1), np.where(change > 0, np.inf, 0))
    logits = np.where(mask, -alpha * np.where(np.isinf(f), 1e30, f), -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    w = np.where(mask, np.exp(logits - top), 0)
    total = w.sum(-1, keepdims=True)
    return np.where(total > 0, w / np.where(total > 0, total, 1), 0).astype(np.float32)


def _numpy_forgetting_degree(cur, prev, eps=1e-8):
    diff = np.sqrt(np.sum((cur - prev) ** 2, axis=-1))
    denom = np.sqrt(np.sum(cur * cur, axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > eps, diff / denom, np.where(diff > eps, np.inf, 0)).astype(np.float32)


def _numpy_state_update(current, user, interest, weight, age, decay, inv_tau):
    n, k = current.shape
    added = np.bincount(user * k + interest, weights=weight * np.exp(-inv_tau * age), minlength=n * k)
    return (decay * current + added.reshape(n, k)).astype(np.float32), current


def _torch_fns(torch, eps=1e-8):
    def fd(c, p):
        diff = torch.linalg.vector_norm(c - p, dim=-1)
        denom = torch.linalg.vector_norm(c, dim=-1)
        safe = torch.where(denom > eps, denom, torch.ones_like(denom))
        return torch.where(denom > eps, diff / safe, torch.where(diff > eps, torch.full_like(diff, float("inf")),
                                                                 torch.zeros_like(diff)))

    def fk(c, p, mask):
        denom = torch.linalg.vector_norm(c, dim=-1, keepdim=True)
        f = torch.clamp(p - c, min=0) / torch.clamp(denom, min=eps)
        logits = torch.where(mask, -ALPHA * f, torch.full_like(f, float("-inf")))
        return torch.nan_to_num(torch.softmax(logits, dim=-1))

    def su(cur, user, interest, weight, age, decay, inv_tau):
        n, k = cur.shape
        added = torch.zeros(n * k, dtype=cur.dtype, device=cur.device)
        added.index_add_(0, user * k + interest, weight * torch.exp(-inv_tau * age))
        return decay * cur + added.view(n, k), cur

    return {"F": fd, "fk_softmax": fk, "state_update": su}


def bench_size(n: int, *, timing: dict[str, Any], seed: int, use_torch: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from fgjax import kernels

    k = NUM_INTERESTS
    rng = np.random.default_rng(seed)
    cur_np = rng.uniform(0, 1, (n, k)).astype(np.float32)
    prev_np = rng.uniform(0, 1, (n, k)).astype(np.float32)
    cur_np[: n // 10] = 0.0
    mask_np = rng.random((n, k)) < 0.7
    ev_user = rng.integers(0, n, n).astype(np.int32)
    ev_interest = rng.integers(0, k, n).astype(np.int32)
    ev_weight = rng.uniform(0.5, 2, n).astype(np.float32)
    ev_age = rng.uniform(0, 1, n).astype(np.float32)
    decay, inv_tau = kernels.decay_factors(1.0, 7.0)
    cur, prev, mask = (jax.device_put(x) for x in (cur_np, prev_np, mask_np))
    events = kernels.WindowEvents(*(jax.device_put(x) for x in (ev_user, ev_interest, ev_weight, ev_age)))

    fd = jax.jit(kernels.forgetting_degree)
    fk = jax.jit(lambda c, p, m: kernels.interest_probs(kernels.interest_forgetting(c, p), ALPHA, mask=m))
    update = jax.jit(partial(kernels.interest_state_update, decay=decay, inv_tau=inv_tau), donate_argnums=(0,))
    state_box = [kernels.InterestState(cur + 0, prev + 0, jnp.asarray(0, jnp.int32))]

    def run_update():
        state_box[0] = update(state_box[0], events)
        return state_box[0].current

    nk4 = n * k * 4
    moved = {"F": 2 * nk4 + n * 4, "fk_softmax": 2 * nk4 + n * k + nk4, "state_update": 2 * nk4 + n * 16}

    # Correctness beside NumPy, in the same run.
    checks = {
        "F_max_abs_diff_vs_numpy": float(np.nanmax(np.abs(np.where(np.isinf(_numpy_forgetting_degree(cur_np, prev_np)),
                                                                   0, _numpy_forgetting_degree(cur_np, prev_np) -
                                                                   np.where(np.isinf(np.asarray(fd(cur, prev))), 0,
                                                                            np.asarray(fd(cur, prev))))))),
        "fk_softmax_max_abs_diff_vs_numpy": float(np.max(np.abs(np.asarray(fk(cur, prev, mask)) -
                                                                _numpy_fk_softmax(cur_np, prev_np, mask_np)))),
    }
    state0 = kernels.InterestState(jnp.asarray(cur_np), jnp.asarray(prev_np), jnp.asarray(0, jnp.int32))
    want = _numpy_state_update(cur_np, ev_user, ev_interest, ev_weight, ev_age, decay, inv_tau)[0]
    got = np.asarray(jax.jit(partial(kernels.interest_state_update, decay=decay, inv_tau=inv_tau))(state0, events).current)
    checks["state_update_max_abs_diff_vs_numpy"] = float(np.max(np.abs(got - want)))

    out: dict[str, Any] = {"users": n, "interests": k, "checks": checks, "kernels": {}}
    jax_fns = {"F": (fd, (cur, prev)), "fk_softmax": (fk, (cur, prev, mask)), "state_update": (run_update, ())}
    numpy_fns = {
        "F": (_numpy_forgetting_degree, (cur_np, prev_np)),
        "fk_softmax": (_numpy_fk_softmax, (cur_np, prev_np, mask_np)),
        "state_update": (_numpy_state_update, (cur_np, ev_user, ev_interest, ev_weight, ev_age, decay, inv_tau)),
    }
    torch = _report.import_torch() if use_torch else None
    if torch is not None:
        dev = _report.torch_device(torch)
        t = {name: torch.from_numpy(x).to(dev) for name, x in
             dict(cur=cur_np, prev=prev_np, mask=mask_np, user=ev_user.astype(np.int64),
                  interest=ev_interest.astype(np.int64), weight=ev_weight, age=ev_age).items()}
        torch_args = {"F": (t["cur"], t["prev"]), "fk_softmax": (t["cur"], t["prev"], t["mask"]),
                      "state_update": (t["cur"], t["user"], t["interest"], t["weight"], t["age"], decay, inv_tau)}
        torch_fns = _torch_fns(torch)
        out["torch_device"] = dev
    for name, (fn, args) in jax_fns.items():
        nbytes = moved[name]
        # A copy of the same bytes: one float32 array, donated, read and written in place.
        copy_src = jnp.zeros(nbytes // 4 // 2 * 2 // 2, jnp.float32)  # nbytes/2 read + nbytes/2 written
        bump = jax.jit(lambda a: a + 1, donate_argnums=(0,))
        box = [copy_src]

        def copy():
            box[0] = bump(box[0])
            return box[0]

        row = {"bytes": nbytes, "kernel": _report.time_call(fn, *args, **timing), "copy": _report.time_call(copy, **timing)}
        np_fn, np_args = numpy_fns[name]
        row["numpy"] = _report.time_call(np_fn, *np_args, sync=lambda _: None, **timing)
        if torch is not None:
            with torch.no_grad():
                row["torch"] = _report.time_call(torch_fns[name], *torch_args[name], sync=_report.torch_sync(torch), **timing)
            compiled, error = _report.time_torch_compile(torch, torch_fns[name], *torch_args[name], timing=timing)
            if compiled is not None:
                row["torch_compile"] = compiled
            else:
                row["torch_compile_error"] = error
        kt = row["kernel"]["median_s"]
        row["kernel_gbps"] = _report.gbps(nbytes, kt)
        row["copy_gbps"] = _report.gbps(box[0].size * 4 * 2, row["copy"]["median_s"])
        row["kernel_vs_copy"] = row["kernel_gbps"] / row["copy_gbps"]
        row["speedup_vs_numpy"] = row["numpy"]["median_s"] / kt
        for ref in ("torch", "torch_compile"):
            if ref in row:
                row[f"speedup_vs_{ref}"] = row[ref]["median_s"] / kt
        out["kernels"][name] = row
    return out


COLUMNS = [
    ("name", "kernel", ""),
    ("users", "N", ",d"),
    ("ms", "ms", ".3f"),
    ("kernel_gbps", "GB/s", ".2f"),
    ("copy_gbps", "copy GB/s", ".2f"),
    ("kernel_vs_copy", "kernel/copy", ".2f"),
    ("speedup_vs_numpy", "x numpy", ".1f"),
    ("speedup_vs_torch", "x torch", ".1f"),
    ("speedup_vs_torch_compile", "x torch.compile", ".1f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _report.suite_parser("python -m bench kernels", __doc__.split("\n\n")[0])
    parser.add_argument("--users", type=_report.int_list, default=None,
                        help="comma-separated N (users); default by --scale")
    args = parser.parse_args(argv)
    sizes = args.users or SIZES[args.scale]
    repeats = args.repeats or (3 if args.scale != "large" else 7)
    timing = {"repeats": repeats, "warmup": 1, "min_time": 0.0 if args.scale != "large" else 0.05}
    payload: dict[str, Any] = {"benchmark": "kernels", **_report.environment(),
                               "config": {"scale": args.scale, "users": sizes, "interests": NUM_INTERESTS,
                                          "repeats": repeats, "dtype": "float32"}, "results": []}
    print(f"kernels on {payload['device']}", flush=True)
    rows = []
    for n in sizes:
        r = bench_size(n, timing=timing, seed=args.seed, use_torch=not args.no_torch)
        payload["results"].append(r)
        for name, row in r["kernels"].items():
            rows.append({**row, "name": name, "users": n, "ms": row["kernel"]["median_s"] * 1e3})
            # Each size as it completes: a run killed at its limit (the device script's) still leaves these.
            print(_report.format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    largest = payload["results"][-1]["kernels"]
    payload["summary"] = {f"{name}_vs_copy": row["kernel_vs_copy"] for name, row in largest.items()}
    payload["summary"].update({f"{name}_x_numpy": row["speedup_vs_numpy"] for name, row in largest.items()})
    plots = _report.plots_dir(args)
    if plots:
        series = {name: [r["kernels"][name]["kernel_gbps"] for r in payload["results"]] for name in largest}
        series["copy (F bytes)"] = [r["kernels"]["F"]["copy_gbps"] for r in payload["results"]]
        payload["plots"] = [str(_report.plot_scaling(plots / "kernels_bandwidth.png", sizes, series, xlabel="users N",
                                                     ylabel="GB/s", title=f"kernels, K={NUM_INTERESTS}, {payload['device']}"))]
    return _report.finish(payload, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
