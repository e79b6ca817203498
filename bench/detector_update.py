"""The detector's per-window state update over N users: memory speed and footprint.

    python -m bench detector_update --scale small|large
    python -m bench.detector_update --users 10000,100000 --interests 32 --buffer-windows 64 \
        --user-block 65536 --out bench/results/detector_update.json
    python -m bench.detector_update --users 100000 --interests 16 --period-every 4 \
        --seen 0.2 --rate 0.5 --count-arrays 8 --history 12 --hold-outputs    # as in an analysis
    python -m bench.detector_update --scale small --period-every 4 --verdict    # and with the learned verdict

For each N, in the same run, on the same (N, K) state with a T-window ring buffer:

- ``update``: ``jax.jit(kernels.detector_update)`` with the state donated,
  called window after window on random counts (one window = one call);
- ``update_with_verdict`` (with ``--verdict``): the same update followed by the learned verdict
  (``kernels.verdict_features`` and ``verdict_forgotten``), as ``fgjax analyze`` runs it with
  ``analysis.detector.verdict_file``, on its own state from the same history;
- ``copy_inplace``: a donated ``x -> x + 1`` over a float32 array of the
  same bytes as the update's inputs (state + counts; at most 4 GB, so 10M
  users still fit beside it): the device's read + write bandwidth, with no
  fresh allocation.

Bytes the update must move are read off the compiled executable
(``memory_analysis``: its argument bytes are read, its output bytes
written), so the ratio ``update GB/s / copy GB/s`` says how close the
update is to memory speed. The same analysis gives the temporaries per
(user, interest), from which the footprint of 10M users x 32 interests x
T = 64 is projected (everything grows linearly in N; the blocked
temporaries do not grow at all).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import numpy as np

from bench import _report

DEFAULT_OUT = "bench/results/detector_update.json"
TARGET_USERS = 10_000_000  # the scale: 10M users x 32 interests x T = 64 on one 80 GB card
TARGET_INTERESTS = 32
TARGET_WINDOWS = 64
CARD_BYTES = 80e9
COPY_CAP_BYTES = 4e9
SIZES = {"smoke": [500], "small": [1_000, 4_000], "large": [100_000, 1_000_000, 10_000_000]}
#: (K, T, user block, probe users) by scale: smoke only checks that everything runs (the test suite), in few compilations.
SHAPES = {"smoke": (4, 8, 128, 256), "small": (32, 64, 65536, 8192), "large": (32, 64, 65536, 8192)}


def _stats(compiled: Any, pairs: int) -> dict[str, float]:
    """Argument/output/alias/temp bytes of a compiled update, and per (user, interest)."""
    stats = compiled.memory_analysis()
    out = {name: float(getattr(stats, f"{name}_size_in_bytes")) for name in ("argument", "output", "alias", "temp")}
    out.update({f"{name}_per_pair": value / pairs for name, value in list(out.items())})
    return out


def _compiled_update(num_users: int, num_interests: int, buffer_windows: int, user_block: int | None,
                     period_every: int = 1, verdict: bool = False) -> Any:
    """The donated update as the analysis calls it (s* only where rows are written), compiled for (N, K, T);
    ``verdict``: followed by the learned verdict (a bias-only fit: the arithmetic does not depend on the weights)."""
    import jax
    import jax.numpy as jnp

    from fgjax import kernels
    from fgjax.config import DetectorConfig

    params = DetectorConfig().kernel_params()  # the defaults, from the one place they live
    update = functools.partial(kernels.detector_update, degree=None, params=params, user_block=user_block,
                               with_limits=False, period_every=period_every)
    if verdict:
        size = len(kernels.VERDICT_FEATURES)
        fit = kernels.VerdictParams(jnp.zeros(size), jnp.ones(size), jnp.full(size, 0.1), jnp.float32(0.0))
        plain = update

        def update(state, counts):  # noqa: F811  the same update, then the verdict
            state, out = plain(state, counts)
            flags = kernels.verdict_forgotten(state, kernels.verdict_features(state, out), fit, jnp.float32(0.0))
            return state, out._replace(state=flags.astype(out.state.dtype))
    state = jax.eval_shape(lambda: kernels.detector_init(num_users, num_interests, buffer_windows))
    counts = jax.ShapeDtypeStruct((num_users, num_interests), jnp.float32)
    return jax.jit(update, donate_argnums=0).lower(state, counts).compile()


def memory_per_pair(num_users: int, num_interests: int, buffer_windows: int, user_block: int | None) -> dict[str, float]:
    """Compiled argument/output/alias/temp bytes of one donated update, and per (user, interest)."""
    return _stats(_compiled_update(num_users, num_interests, buffer_windows, user_block), num_users * num_interests)


def draw_counts(rng: np.random.Generator, shape: tuple[int, int], *, seen: float = 1.0, rate: float = 1.0,
                count_arrays: int = 1) -> list[np.ndarray]:
    """``count_arrays`` float32 ``(users, K)`` Poisson(``rate``) draws, zero outside one fixed random share ``seen``
    of the pairs (the interests a user never has). ``seen >= 1`` draws no mask (the benchmark's draws as before)."""
    mask = np.ones(shape, np.float32) if seen >= 1 else (rng.random(shape) < seen).astype(np.float32)
    return [(rng.poisson(rate, size=shape) * mask).astype(np.float32) for _ in range(count_arrays)]


def bench_one(num_users: int, num_interests: int, buffer_windows: int, user_block: int | None, *, repeats: int,
              warmup: int, min_time: float, seed: int, period_every: int = 1, seen: float = 1.0, rate: float = 1.0,
              count_arrays: int = 1, history: int = 3, hold_outputs: bool = False,
              verdict: bool = False) -> dict[str, Any]:
    """One N: ``history`` windows first, then each timed call one window. The counts are Poisson(``rate``) on a
    fixed random share ``seen`` of the pairs (0 elsewhere: interests the user never has), ``count_arrays``
    draws used in turn (1: the same counts every window, every pair seen active in each). ``hold_outputs``:
    each window's outputs stay alive until the next window's are made, as the analysis's writers hold them
    (their buffers then cannot be reused for the next window's)."""
    import jax
    import jax.numpy as jnp

    from fgjax import kernels

    pool = [jax.device_put(c) for c in draw_counts(np.random.default_rng(seed), (num_users, num_interests), seen=seen,
                                                   rate=rate, count_arrays=count_arrays)]
    # One compilation serves the timing and the memory analysis.
    update = _compiled_update(num_users, num_interests, buffer_windows, user_block, period_every)
    holder = [kernels.detector_init(num_users, num_interests, buffer_windows), 0, None]
    for w in range(history):  # some history, so every branch has data
        holder[0], _ = update(holder[0], pool[w % count_arrays])
    holder[1] = history

    def one_window():
        holder[0], out = update(holder[0], pool[holder[1] % count_arrays])
        holder[1] += 1
        holder[2] = out if hold_outputs else None
        return out.state

    memory = _stats(update, num_users * num_interests)
    moved = memory["argument"] + memory["output"]
    # The copy reads and writes the update's input bytes once.
    copy_words = int(min(memory["argument"], COPY_CAP_BYTES) // 4)
    bump = jax.jit(lambda x: x + 1, donate_argnums=0)
    copy_holder = [jnp.zeros((copy_words,), jnp.float32)]

    def copy_inplace():
        copy_holder[0] = bump(copy_holder[0])
        return copy_holder[0]

    timing = {"repeats": repeats, "warmup": warmup, "min_time": min_time}
    timings = {"update": _report.time_call(one_window, **timing), "copy_inplace": _report.time_call(copy_inplace, **timing)}
    if verdict:
        with_verdict = _compiled_update(num_users, num_interests, buffer_windows, user_block, period_every, True)
        vholder = [kernels.detector_init(num_users, num_interests, buffer_windows), 0]
        for w in range(history):
            vholder[0], _ = with_verdict(vholder[0], pool[w % count_arrays])
        vholder[1] = history

        def one_verdict_window():
            vholder[0], out = with_verdict(vholder[0], pool[vholder[1] % count_arrays])
            vholder[1] += 1
            return out.state

        timings["update_with_verdict"] = _report.time_call(one_verdict_window, **timing)
        verdict_memory = _stats(with_verdict, num_users * num_interests)
        timings["update_with_verdict"]["bytes"] = verdict_memory["argument"] + verdict_memory["output"]
    timings["update"]["bytes"] = moved
    timings["copy_inplace"]["bytes"] = 2 * copy_words * 4
    for t in timings.values():
        t["gbps"] = _report.gbps(t["bytes"], t["median_s"])
    pairs = num_users * num_interests
    return {
        "users": num_users,
        "interests": num_interests,
        "buffer_windows": buffer_windows,
        "user_block": user_block,
        "period_every": period_every,
        "seen": seen, "rate": rate, "count_arrays": count_arrays, "history": history, "hold_outputs": hold_outputs,
        "memory": memory,
        "timings": timings,
        "update_ms": timings["update"]["median_s"] * 1e3,
        "update_gbps": timings["update"]["gbps"],
        "copy_gbps": timings["copy_inplace"]["gbps"],
        "update_vs_copy_bandwidth": timings["update"]["gbps"] / timings["copy_inplace"]["gbps"],
        "ns_per_pair": timings["update"]["median_s"] / pairs * 1e9,
        "verdict_vs_update": (timings["update_with_verdict"]["median_s"] / timings["update"]["median_s"]
                              if verdict else None),
    }


def projection(num_interests: int, buffer_windows: int, user_block: int | None, probe_users: int) -> dict[str, Any]:
    """Footprint of TARGET_USERS x TARGET_INTERESTS x TARGET_WINDOWS from two compiled probes.

    Linear in N: bytes(N) = a + b * N, fitted on two compiled probes (no
    memory is allocated), for inputs + fresh outputs + temporaries. That is the update's program alone:
    ``fits_80GB`` does not count what the benchmark holds beside it (its count arrays, the copy's buffers) or
    the allocator's fragmentation. On an 80 GB H100 (2026-12-05) 10M users were projected at 63.1 GB, XLA
    placed the program in 58.7 GiB, and the run still ran out of memory allocating a 13.1 GiB buffer.
    """
    # Probes past the block size, so the blocked temporaries are what they will be at 10M.
    base = max(probe_users, 2 * (user_block or 0))
    sizes = (base, 2 * base)
    totals = []
    for n in sizes:
        m = memory_per_pair(n, TARGET_INTERESTS, TARGET_WINDOWS, user_block)
        totals.append(m["argument"] + m["output"] - m["alias"] + m["temp"])
    slope = (totals[1] - totals[0]) / (sizes[1] - sizes[0])
    projected = totals[0] + slope * (TARGET_USERS - sizes[0])
    return {
        "users": TARGET_USERS,
        "interests": TARGET_INTERESTS,
        "buffer_windows": TARGET_WINDOWS,
        "user_block": user_block,
        "probe_users": list(sizes),
        "bytes_per_user": slope,
        "projected_bytes": projected,
        "fits_80GB": bool(projected < CARD_BYTES),
    }


def build_parser() -> argparse.ArgumentParser:
    p = _report.suite_parser("python -m bench detector_update", __doc__.split("\n\n")[0])
    p.add_argument("--users", type=_report.int_list, default=None, help="comma-separated N (users); default by --scale")
    p.add_argument("--interests", type=int, default=None, help="K (default 32; 4 at --scale smoke)")
    p.add_argument("--buffer-windows", type=int, default=None, help="T, windows in the ring buffer (default 64; 8 at smoke)")
    p.add_argument("--user-block", type=int, default=None,
                   help="users judged at a time; 0 = all at once (default 65536; 128 at smoke)")
    p.add_argument("--period-every", type=_report.int_list, default=None,
                   help="comma-separated windows between a user's periodograms, each timed side by side "
                        "(default 1,4: every window, and the analysis default; 4 alone at --scale smoke, "
                        "which only checks that everything runs)")
    p.add_argument("--seen", type=float, default=1.0,
                   help="share of the (user, interest) pairs that ever have events (default 1: all)")
    p.add_argument("--rate", type=float, default=1.0, help="Poisson mean of a seen pair's count a window (default 1)")
    p.add_argument("--count-arrays", type=int, default=1,
                   help="count draws used in turn (default 1: the same every window; 8: interests fall silent "
                        "and return as in an analysis)")
    p.add_argument("--history", type=int, default=3, help="windows before the timed ones (default 3)")
    p.add_argument("--hold-outputs", action="store_true",
                   help="keep each window's outputs until the next window's are made, as the analysis does")
    p.add_argument("--verdict", action="store_true",
                   help="also time the update followed by the learned verdict, side by side")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min-time", type=float, default=0.05)
    p.add_argument("--probe-users", type=int, default=None,
                   help="N of the compiled probes for the 10M projection (default 8192; 256 at smoke)")
    p.set_defaults(out=DEFAULT_OUT)
    return p


COLUMNS = [
    ("users", "N", ",d"),
    ("period_every", "periodogram every", "d"),
    ("update_ms", "update ms", ".2f"),
    ("ns_per_pair", "ns/(user,interest)", ".2f"),
    ("update_gbps", "update GB/s", ".2f"),
    ("copy_gbps", "copy GB/s", ".2f"),
    ("update_vs_copy_bandwidth", "update/copy", ".2f"),
    ("vs_every_window", "time vs every window", ".2f"),
    ("verdict_vs_update", "with verdict / update", ".2f"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    repeats = args.repeats or 3
    shape = dict(zip(("interests", "buffer_windows", "user_block", "probe_users"), SHAPES[args.scale]))
    for name, value in shape.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.interests < 1 or args.buffer_windows < 3 or repeats < 1 or args.user_block < 0:
        raise SystemExit("detector_update: --interests >= 1, --buffer-windows >= 3, --repeats >= 1, --user-block >= 0")
    if not 0 < args.seen <= 1 or args.rate <= 0 or args.count_arrays < 1 or args.history < 0:
        raise SystemExit("detector_update: 0 < --seen <= 1, --rate > 0, --count-arrays >= 1, --history >= 0")
    users = args.users or SIZES[args.scale]
    args.period_every = args.period_every or ([4] if args.scale == "smoke" else [1, 4])
    block = args.user_block or None
    payload: dict[str, Any] = {
        "benchmark": "detector_update",
        **_report.environment(),
        "config": {
            "users": users, "interests": args.interests, "buffer_windows": args.buffer_windows, "scale": args.scale,
            "user_block": block, "period_every": args.period_every, "repeats": repeats, "warmup": args.warmup, "min_time_s": args.min_time,
            "seed": args.seed, "seen": args.seen, "rate": args.rate, "count_arrays": args.count_arrays,
            "history": args.history, "hold_outputs": args.hold_outputs, "verdict": args.verdict,
        },
        "notes": "update GB/s = (compiled argument + output bytes) / median time; copy = donated x + 1 over the "
                 "argument bytes, at most 4 GB (read + write). No NumPy or PyTorch peer: no such detector exists "
                 "there to compare with.",
        "results": [],
    }
    print(f"detector_update on {payload['device']}, K={args.interests}, T={args.buffer_windows}, "
          f"user_block={block}, jax {payload['versions']['jax']}", flush=True)

    def measure(n: int) -> list[dict[str, Any]]:
        rows = [bench_one(n, args.interests, args.buffer_windows, block, repeats=repeats, warmup=args.warmup,
                          min_time=args.min_time, seed=args.seed, period_every=every, seen=args.seen, rate=args.rate,
                          count_arrays=args.count_arrays, history=args.history, hold_outputs=args.hold_outputs,
                          verdict=args.verdict)
                for every in args.period_every]
        base = next((r["update_ms"] for r in rows if r["period_every"] == 1), None)
        for r in rows:  # the ratio to taking every periodogram every window, measured in this run
            r["vs_every_window"] = r["update_ms"] / base if base else None
            # Each row as it completes: a run stopped at its limit still shows the sizes it finished.
            print(_report.format_table([r], COLUMNS).splitlines()[-1], flush=True)
        return rows

    for rows in _report.each_size_that_fits(users, measure, payload):
        payload["results"].extend(rows)
    payload["projection"] = projection(args.interests, args.buffer_windows, block, args.probe_users)
    p = payload["projection"]
    last = payload["results"][-1]
    payload["summary"] = {
        "users": last["users"], "update_vs_copy": last["update_vs_copy_bandwidth"],
        "projected_10M_GB": p["projected_bytes"] / 1e9, "fits_80GB": p["fits_80GB"],
        "period_every": last["period_every"], "vs_every_window": last["vs_every_window"],
    }
    plots = _report.plots_dir(args)
    if plots:
        shown = [r for r in payload["results"] if r["period_every"] == args.period_every[-1]]
        xs = [r["users"] for r in shown]
        payload["plots"] = [str(_report.plot_scaling(
            plots / "detector_update.png", xs,
            {"update (ms/window)": [r["update_ms"] for r in shown],
             "copy of the same bytes (ms)": [r["timings"]["copy_inplace"]["median_s"] * 1e3
                                             * r["memory"]["argument"] * 2 / r["timings"]["copy_inplace"]["bytes"]
                                             for r in shown]},
            xlabel="users N", ylabel="ms",
            title=f"detector update, K={args.interests}, T={args.buffer_windows}, "
                  f"periodogram every {args.period_every[-1]}"))]
    out = _report.finish(payload, args, payload["results"], COLUMNS)
    print(f"projected footprint of {p['users']:,} users x {p['interests']} x T={p['buffer_windows']}: "
          f"{p['projected_bytes'] / 1e9:.1f} GB ({p['bytes_per_user']:.0f} B/user); fits 80 GB: {p['fits_80GB']}")
    return out


if __name__ == "__main__":
    main()
