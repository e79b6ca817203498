"""``fgjax analyze`` again on a log with a few users fewer: does the rerun load its programs from the cache?

    python -m bench rerun --scale small --out OUT/rerun.json        # about a minute on a 2-core CPU
    python -m bench rerun --users 100000 --set analysis.detector.kind=level --out OUT/rerun.json

A user reruns ``fgjax analyze`` on tomorrow's log, which holds a few users fewer (or more) than today's. The
analysis state's users are padded to shared sizes (``fgjax.shapes.user_rows``: four sizes an octave, then
multiples of 4,096), so the rerun's programs are the ones the first run left in the CLI's persistent compile
cache (``FGJAX_COMPILE_CACHE``). Each kind runs twice, each time in a fresh process, with a cache folder of its
own, empty at the start: over a synthetic log (``--users`` x ``--days``), then over the same shards less
``--fewer`` users:

- ``padded``: ``fgjax analyze`` as shipped;
- ``unpadded``: the same with ``user_rows`` patched to the identity, so every user count has programs of its own
  (the code before the padding): the baseline the ratios are taken against. With the users split between
  devices (``analysis.cpu_devices``), each device's rows are still rounded up to a multiple of
  ``analysis.detector.period_every`` (as before the padding), so a log of a few users fewer may share programs
  even so: at 5,000 users it did not, at 70 it did.

Reports each run's wall seconds (the fresh process, imports included), the seconds JAX spent tracing,
lowering and compiling in it (``compile_s`` of ``analyze_log``'s timings; loading a cached program counts
there too), the programs XLA compiled and those loaded from the cache (the CLI caches only those that took
0.2 s or more to compile, so a rerun compiles the quick ones again), the ratios padded / unpadded of the
reruns, and whether both kinds' reruns wrote the same ``states.parquet`` rows (user, interest, window and state,
row for row).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import _report
from bench.pipeline import run_probe

SIZES = {
    "smoke": {"users": 200, "days": 14, "fewer": 3},
    "small": {"users": 5_000, "days": 60, "fewer": 10},
    "large": {"users": 100_000, "days": 60, "fewer": 10},
}
KINDS = ("padded", "unpadded")

PROBE = """
import json, sys, time
started = time.perf_counter()
if sys.argv[2] == "unpadded":
    import fgjax.analysis.run
    fgjax.analysis.run.user_rows = lambda n: n  # the name the analysis calls (imported from fgjax.shapes)
from fgjax import analysis_job
from fgjax.cli import return_freed_memory, use_compile_cache
from fgjax.config import load_config
use_compile_cache()  # FGJAX_COMPILE_CACHE, as fgjax analyze does (fgjax.cli.main)
if sys.argv[3]:  # --min-compile-s: which programs the cache keeps (the CLI: those of 0.2 s and more)
    import jax
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(sys.argv[3]))
return_freed_memory()
config = load_config(None, sys.argv[4:])
analysis_job.split_cpu(config.analysis.cpu_devices)  # as fgjax analyze does, before JAX starts
import jax.monitoring
events = []  # JAX's duration events: a backend compile (a compilation or a load) and, for a load, a cache read
jax.monitoring.register_event_duration_secs_listener(lambda event, seconds, **_: events.append(event))
timings = {}
rows = analysis_job.analyze_log(config, sys.argv[1], progress=False, timings=timings)
loaded = events.count("/jax/compilation_cache/cache_retrieval_time_sec")
print("RESULT" + json.dumps({"seconds": time.perf_counter() - started, "rows": list(rows), "stages": timings,
                             "programs_compiled": events.count("/jax/core/compile/backend_compile_duration") - loaded,
                             "programs_loaded": loaded}))
"""


def make_logs(folder: Path, users: int, days: int, fewer: int, seed: int) -> tuple[Path, Path, Path]:
    """A synthetic log's shards, the same shards less the first ``fewer`` users, and its items table."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fgjax.config import SyntheticConfig
    from fgjax.data import synthetic

    shard_users = max(users // 5, 1)
    paths = synthetic.generate(SyntheticConfig(num_users=users, num_days=days, users_per_shard=shard_users,
                                               seed=seed, bad_row_fraction=0.0), folder / "full")
    gone = pq.read_table(paths.events_dir, columns=["user_id"]).column("user_id").unique()[:fewer]
    less = folder / "fewer"
    less.mkdir()
    for shard in sorted(paths.events_dir.glob("*.parquet")):
        table = pq.read_table(shard)
        pq.write_table(table.filter(pc.invert(pc.is_in(table["user_id"], gone))), less / shard.name)
    return paths.events_dir, less, folder / "full" / "items.parquet"


def run_once(kind: str, events: Path, items: Path, out: Path, cache: Path, overrides: list[str],
             min_compile_s: float | None = None) -> dict[str, Any]:
    """``fgjax analyze`` of ``kind`` over ``events`` in a fresh process with the compile cache in ``cache``
    (keeping the programs that took ``min_compile_s`` or more to compile; None: the CLI's threshold)."""
    sets = [f"data.path={events}", f"data.items_path={items}", "data.format=parquet", *overrides]
    threshold = "" if min_compile_s is None else str(min_compile_s)
    run = run_probe(PROBE, [str(out), kind, threshold, *sets], env_vars={"FGJAX_COMPILE_CACHE": str(cache), "JAX_ENABLE_COMPILATION_CACHE": "true"})
    if not run["finished"]:
        raise RuntimeError(f"fgjax analyze ({kind}) failed: {run.get('error') or 'past its limit'}")
    return {"wall_s": run["wall_s"], "compile_s": run["stages"]["compile_s"], "rows": run["rows"],
            "programs_compiled": run["programs_compiled"], "programs_loaded": run["programs_loaded"]}


def same_states(a: Path, b: Path) -> bool:
    """Both runs' ``states.parquet`` hold the same (user, interest, window, state) rows in the same order."""
    import pyarrow.parquet as pq

    columns = ["user_id", "interest", "window", "state"]
    return pq.read_table(a / "states.parquet", columns=columns).equals(pq.read_table(b / "states.parquet",
                                                                                     columns=columns))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _report.suite_parser("python -m bench rerun", __doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=0, help="users of the first log (default by scale)")
    parser.add_argument("--days", type=int, default=0, help="days of the log (default by scale)")
    parser.add_argument("--fewer", type=int, default=0, help="users the rerun's log lacks (default by scale)")
    parser.add_argument("--min-compile-s", type=float, default=None,
                        help="cache the programs that took this long to compile (default: the CLI's 0.2 s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every fgjax analyze run (repeatable)")
    args = parser.parse_args(argv)
    size = {k: getattr(args, k) or v for k, v in SIZES[args.scale].items()}
    if not 0 < size["fewer"] < size["users"]:
        parser.error(f"--fewer must be between 1 and the users less one, got {size['fewer']}")
    payload: dict[str, Any] = {"benchmark": "rerun", **_report.environment(),
                               "config": {**size, "scale": args.scale, "seed": args.seed,
                                          "overrides": args.overrides, "min_compile_s": args.min_compile_s}, "results": []}
    print(f"rerun on {payload['device']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fgjax-rerun-") as tmp:
        work = Path(tmp)
        full, less, items = make_logs(work, size["users"], size["days"], size["fewer"], args.seed)
        for kind in KINDS:
            cache = work / f"cache_{kind}"
            first = run_once(kind, full, items, work / f"{kind}_first", cache, args.overrides, args.min_compile_s)
            again = run_once(kind, less, items, work / f"{kind}_again", cache, args.overrides, args.min_compile_s)
            payload["results"].append({"kind": kind, "first_wall_s": first["wall_s"],
                                       "first_compile_s": first["compile_s"],
                                       "first_programs_compiled": first["programs_compiled"],
                                       "rerun_wall_s": again["wall_s"], "rerun_compile_s": again["compile_s"],
                                       "rerun_programs_compiled": again["programs_compiled"],
                                       "rerun_programs_loaded": again["programs_loaded"],
                                       "rerun_rows": again["rows"]})
            print(f"  {kind}: first {first['wall_s']:.1f} s (compiling {first['compile_s']:.1f} s, "
                  f"{first['programs_compiled']} programs), rerun {again['wall_s']:.1f} s (compiling "
                  f"{again['compile_s']:.1f} s, {again['programs_compiled']} programs, {again['programs_loaded']} loaded)",
                  flush=True)
        same = same_states(work / "padded_again", work / "unpadded_again")
    padded, unpadded = payload["results"]
    payload["summary"] = {"rerun_wall_ratio": padded["rerun_wall_s"] / unpadded["rerun_wall_s"],
                          "rerun_compile_ratio": padded["rerun_compile_s"] / max(unpadded["rerun_compile_s"], 1e-9),
                          "same_states": same}
    cols = [("kind", "kind", ""), ("first_wall_s", "first run s", ".1f"), ("first_compile_s", "compiling s", ".1f"),
            ("first_programs_compiled", "compiled", "d"), ("rerun_wall_s", "rerun s", ".1f"),
            ("rerun_compile_s", "compiling s", ".1f"), ("rerun_programs_compiled", "compiled", "d"),
            ("rerun_programs_loaded", "loaded", "d")]
    return _report.finish(payload, args, payload["results"], cols)


if __name__ == "__main__":
    main()
