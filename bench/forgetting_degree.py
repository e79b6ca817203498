"""Forgetting degree F over N users: is the kernel at memory bandwidth?

    python -m bench.forgetting_degree --users 10000,100000,1000000 --interests 32 \
        --repeats 5 --out bench/results/forgetting_degree.json

For each N, in the same run and on the same (N, K) float32 inputs:

- ``kernel``: ``jax.jit(fgjax.kernels.forgetting_degree)``;
- ``copy``: a jitted ``(a, b) -> (a + 0, b + 0)``, which XLA compiles to two
  real copies (checked: fresh output buffers equal to the inputs): the
  device's read + write bandwidth ceiling;
- ``copy_inplace``: the same read + write with donated buffers
  (``(a, b) -> (a + 1, b + 1)``, outputs written over the inputs), which
  needs no fresh output memory: on CPU a fresh 128 MB output costs page
  faults on every call, which the kernel (N*4 bytes out) hardly pays;
- ``reduce``: a jitted ``(a, b) -> sum(a, -1) + sum(b, -1)``, which moves
  exactly the kernel's bytes (a read-mostly ceiling);
- ``numpy``: the same formula in float32 NumPy (one host thread mostly);
- ``torch`` and ``torch_compile``: the same formula in PyTorch (eager, and
  ``torch.compile`` if it works), on CUDA if available, when torch imports.

Effective bandwidth = bytes the operation must move / median time. The kernel
must read 2*N*K*4 bytes and write N*4; the copy reads and writes 2*N*K*4 each.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Any

import numpy as np

from bench import _report

DEFAULT_OUT = "bench/results/forgetting_degree.json"


def numpy_forgetting_degree(cur: np.ndarray, prev: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """The seed's F in float32 NumPy, with the kernel's zero handling."""
    diff = np.linalg.norm(cur - prev, axis=-1)
    denom = np.linalg.norm(cur, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = diff / denom
    return np.where(denom > eps, ratio, np.where(diff > eps, np.inf, 0.0)).astype(np.float32)


def _copy_is_real(copy_fn, a, b) -> bool:
    """The copy must produce fresh buffers holding the inputs (not aliases)."""
    out_a, out_b = copy_fn(a, b)
    fresh = all(
        o.unsafe_buffer_pointer() != i.unsafe_buffer_pointer()
        for o in (out_a, out_b)
        for i in (a, b)
    )
    return bool(fresh and np.array_equal(np.asarray(out_a), np.asarray(a)) and np.array_equal(np.asarray(out_b), np.asarray(b)))


def _torch_variants(cur: np.ndarray, prev: np.ndarray, eps: float, timing: dict[str, Any]) -> dict[str, Any]:
    """PyTorch eager (and compiled) timings; {} when torch is not importable."""
    try:
        import torch
    except Exception:  # not installed (or broken): skip cleanly
        return {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tc = torch.from_numpy(cur).to(device)
    tp = torch.from_numpy(prev).to(device)

    def torch_fd(c, p):
        diff = torch.linalg.vector_norm(c - p, dim=-1)
        denom = torch.linalg.vector_norm(c, dim=-1)
        safe = torch.where(denom > eps, denom, torch.ones_like(denom))
        inf = torch.full_like(diff, float("inf"))
        return torch.where(denom > eps, diff / safe, torch.where(diff > eps, inf, torch.zeros_like(diff)))

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    out: dict[str, Any] = {"torch_device": device}
    with torch.no_grad():
        out["torch"] = _report.time_call(torch_fd, tc, tp, sync=sync, **timing)
        try:
            compiled = torch.compile(torch_fd)
            out["torch_compile"] = _report.time_call(compiled, tc, tp, sync=sync, **timing)
        except Exception as exc:  # inductor needs a compiler toolchain; report why not
            out["torch_compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return out


def bench_one(num_users: int, num_interests: int, *, repeats: int, warmup: int, min_time: float,
              normalize: str, seed: int, torch_enabled: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from fgjax.kernels import forgetting_degree

    rng = np.random.default_rng(seed)
    cur_np = rng.uniform(0, 1, (num_users, num_interests)).astype(np.float32)
    prev_np = rng.uniform(0, 1, (num_users, num_interests)).astype(np.float32)
    cur_np[: num_users // 10] = 0.0  # some users forgot everything: the inf path is exercised
    cur = jax.block_until_ready(jax.device_put(cur_np))
    prev = jax.block_until_ready(jax.device_put(prev_np))

    kernel = jax.jit(partial(forgetting_degree, normalize=normalize))
    copy = jax.jit(lambda a, b: (a + 0, b + 0))
    reduce = jax.jit(lambda a, b: jnp.sum(a, axis=-1) + jnp.sum(b, axis=-1))
    bump = jax.jit(lambda a, b: (a + 1, b + 1), donate_argnums=(0, 1))
    inplace_state = list(copy(cur, prev))  # private buffers, donated call after call

    def copy_inplace():
        inplace_state[:] = bump(*inplace_state)
        return inplace_state

    timing = {"repeats": repeats, "warmup": warmup, "min_time": min_time}
    input_bytes = 2 * num_users * num_interests * 4
    kernel_bytes = input_bytes + num_users * 4
    copy_bytes = 2 * input_bytes

    result: dict[str, Any] = {
        "users": num_users,
        "interests": num_interests,
        "kernel_bytes": kernel_bytes,
        "copy_bytes": copy_bytes,
        "copy_verified": _copy_is_real(copy, cur, prev),
    }
    before = inplace_state[0].unsafe_buffer_pointer()
    result["copy_inplace_verified"] = bool(copy_inplace()[0].unsafe_buffer_pointer() == before)
    if normalize == "current":
        got = np.asarray(kernel(cur, prev))
        want = numpy_forgetting_degree(cur_np, prev_np)
        finite = np.isfinite(want) & np.isfinite(got)
        result["max_abs_diff_vs_numpy"] = float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))
        result["inf_matches_numpy"] = bool(np.array_equal(np.isinf(got), np.isinf(want)))

    timings = {
        "kernel": _report.time_call(kernel, cur, prev, **timing),
        "copy": _report.time_call(copy, cur, prev, **timing),
        "copy_inplace": _report.time_call(copy_inplace, **timing),
        "reduce": _report.time_call(reduce, cur, prev, **timing),
    }
    if normalize == "current":
        timings["numpy"] = _report.time_call(numpy_forgetting_degree, cur_np, prev_np, sync=lambda _: None, **timing)
    torch_out = _torch_variants(cur_np, prev_np, 1e-8, timing) if torch_enabled and normalize == "current" else {}
    for key in ("torch_device", "torch_compile_error"):
        if key in torch_out:
            result[key] = torch_out.pop(key)
    timings.update(torch_out)

    moved = {"copy": copy_bytes, "copy_inplace": copy_bytes}
    for name, t in timings.items():
        t["bytes"] = moved.get(name, kernel_bytes)
        t["gbps"] = _report.gbps(t["bytes"], t["median_s"])
        t["gbps_best"] = _report.gbps(t["bytes"], t["min_s"])
    result["timings"] = timings
    k = timings["kernel"]
    result["kernel_gbps"] = k["gbps"]
    result["copy_gbps"] = timings["copy"]["gbps"]
    result["copy_inplace_gbps"] = timings["copy_inplace"]["gbps"]
    result["reduce_gbps"] = timings["reduce"]["gbps"]
    result["kernel_vs_copy_bandwidth"] = k["gbps"] / timings["copy"]["gbps"]
    result["kernel_vs_copy_inplace_bandwidth"] = k["gbps"] / timings["copy_inplace"]["gbps"]
    result["kernel_vs_reduce_bandwidth"] = k["gbps"] / timings["reduce"]["gbps"]
    if "numpy" in timings:
        result["speedup_vs_numpy"] = timings["numpy"]["median_s"] / k["median_s"]
    for name in ("torch", "torch_compile"):
        if name in timings:
            result[f"speedup_vs_{name}"] = timings[name]["median_s"] / k["median_s"]
    return result


def _int_list(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.forgetting_degree", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=_int_list, default=[10_000, 100_000, 1_000_000],
                   help="comma-separated N (users), e.g. 10000,100000,1000000 (1e6 is accepted)")
    p.add_argument("--interests", type=int, default=32, help="K, interests per user (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (compilation; default 1)")
    p.add_argument("--min-time", type=float, default=0.02,
                   help="seconds one repeat lasts at least (more calls per repeat on small N; default 0.02)")
    p.add_argument("--normalize", choices=("current", "max"), default="current")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it imports")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON results file (default {DEFAULT_OUT})")
    return p


COLUMNS = [
    ("users", "N", ",d"),
    ("kernel_ms", "kernel ms", ".3f"),
    ("kernel_gbps", "kernel GB/s", ".2f"),
    ("copy_gbps", "copy GB/s", ".2f"),
    ("copy_inplace_gbps", "in-place GB/s", ".2f"),
    ("reduce_gbps", "reduce GB/s", ".2f"),
    ("kernel_vs_copy_bandwidth", "kernel/copy", ".2f"),
    ("kernel_vs_copy_inplace_bandwidth", "kernel/in-place", ".2f"),
    ("kernel_vs_reduce_bandwidth", "kernel/reduce", ".2f"),
    ("numpy_ms", "numpy ms", ".3f"),
    ("speedup_vs_numpy", "x numpy", ".1f"),
    ("torch_ms", "torch ms", ".3f"),
    ("torch_compile_ms", "torch.compile ms", ".3f"),
]


def _table_row(r: dict[str, Any]) -> dict[str, Any]:
    t = r["timings"]
    row = dict(r)
    for name in ("kernel", "numpy", "torch", "torch_compile"):
        if name in t:
            row[f"{name}_ms"] = t[name]["median_s"] * 1e3
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.interests < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("forgetting_degree: --interests and --repeats must be >= 1, --warmup >= 0")
    payload: dict[str, Any] = {
        "benchmark": "forgetting_degree",
        **_report.environment(),
        "config": {
            "users": args.users,
            "interests": args.interests,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "min_time_s": args.min_time,
            "normalize": args.normalize,
            "dtype": "float32",
            "seed": args.seed,
        },
        "notes": (
            "gbps = bytes moved / median time; the kernel and reduce move 2*N*K*4 + N*4 bytes, "
            "copy and copy_inplace 2 * 2*N*K*4 (read + write)."
        ),
        "results": [],
    }
    print(f"forgetting_degree on {payload['device']}, K={args.interests}, jax {payload['versions']['jax']}", flush=True)
    for n in args.users:
        r = bench_one(n, args.interests, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                      normalize=args.normalize, seed=args.seed, torch_enabled=not args.no_torch)
        payload["results"].append(r)
        if not r["copy_verified"]:
            print(f"warning: N={n}: the copy baseline did not produce fresh buffers", file=sys.stderr)
        if not r["copy_inplace_verified"]:
            print(f"warning: N={n}: the in-place copy did not reuse its donated buffers", file=sys.stderr)
    rows = [_table_row(r) for r in payload["results"]]
    columns = [c for c in COLUMNS if not c[0].startswith("torch") or any(c[0] in row for row in rows)]
    print(_report.format_table(rows, columns))
    if payload["results"] and "torch_compile_error" in payload["results"][0]:
        print(f"torch.compile skipped: {payload['results'][0]['torch_compile_error']}")
    if args.out:
        path = _report.write_json(args.out, payload)
        print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
