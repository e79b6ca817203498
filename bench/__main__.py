"""The benchmark suite: ``python -m bench [NAME ...] --scale small|large --out DIR``.

Each NAME is a module ``bench/NAME.py`` with ``main(argv) -> dict``; the suite
calls it with ``--scale S --out DIR/NAME.json --plots DIR/plots`` (plus
``--no-torch`` when given) and collects what it returns. Without NAMEs it runs
every known benchmark; optional ones (e.g. ``quality``, another engineer's
module) are skipped when their module is absent. Any other module under bench/
that follows the same contract runs by name too.

Flags the suite does not know go to the benchmarks named, e.g.
``python -m bench privacy --data ../shared/data/ml-100k`` (refused without
NAMEs: every benchmark would have to take them).

Writes ``DIR/NAME.json`` per benchmark, ``DIR/suite.json`` (all of them,
with device, date and versions), ``DIR/plots/*.png``, and prints a summary.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from bench import _report

#: Run by default, in this order.
BENCHMARKS = ("kernels", "analysis_pass", "detector_update", "topk", "train", "pipeline", "memory", "scaling")
#: Run when their module exists, skipped (and listed as skipped) otherwise.
OPTIONAL = ("quality", "privacy")
DEFAULT_OUT = "bench/results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"known: {', '.join(BENCHMARKS)}; optional: {', '.join(OPTIONAL)}")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all known)")
    p.add_argument("--scale", choices=_report.SCALES, default="small", help="small: seconds on a CPU; large: an H100")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT}; '' = write nothing)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch references")
    p.add_argument("--keep-going", action="store_true", help="record a failing benchmark and go on")
    p.add_argument("--list", action="store_true", help="list the known benchmarks and exit")
    return p


def _load(name: str):
    """The benchmark module, or None if ``bench/NAME.py`` does not exist."""
    if not name.isidentifier() or name.startswith("_"):
        raise SystemExit(f"bench: error: {name!r} is not a benchmark name")
    try:
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None
        raise


def _headline(payload: dict[str, Any]) -> str:
    summary = payload.get("summary") or {}
    parts = []
    for key, value in summary.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        elif value is not None:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.names:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (flags of a benchmark need its NAME before them)")
    if args.list:
        for name in BENCHMARKS + OPTIONAL:
            state = "" if _load(name) is not None else " (module absent: skipped)"
            print(f"{name}{state}")
        return {}
    names = list(args.names) or list(BENCHMARKS + OPTIONAL)
    out = Path(args.out)
    suite: dict[str, Any] = {"suite": True, **_report.environment(), "scale": args.scale,
                             "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                             "benchmarks": {}, "skipped": {}, "failed": {}, "seconds": {}}
    modules = {name: _load(name) for name in names}
    unknown = [n for n, m in modules.items() if m is None and n not in OPTIONAL]
    if unknown:
        print(f"bench: error: no benchmark {', '.join(map(repr, unknown))} (no bench/NAME.py); "
              f"known: {', '.join(BENCHMARKS + OPTIONAL)}", file=sys.stderr)
        raise SystemExit(2)
    for name in names:
        module = modules[name]
        if module is None:
            if name in OPTIONAL:
                suite["skipped"][name] = f"bench/{name}.py is absent"
                print(f"== {name}: skipped (bench/{name}.py is absent)", flush=True)
                continue
        # --out '' writes nothing, as each benchmark's own --out '' (not files in the working folder).
        sub_argv = ["--scale", args.scale, "--out", str(out / f"{name}.json") if args.out else "",
                    "--plots", str(out / "plots") if args.out else ""]
        if args.no_torch:
            sub_argv.append("--no-torch")
        sub_argv += extra
        print(f"== {name} ({args.scale})", flush=True)
        start = time.perf_counter()
        try:
            suite["benchmarks"][name] = module.main(sub_argv)
        except Exception as exc:
            if not args.keep_going:
                raise
            suite["failed"][name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]
            print(f"!! {name} failed: {suite['failed'][name]}", file=sys.stderr, flush=True)
        suite["seconds"][name] = round(time.perf_counter() - start, 3)
    rows = [{"name": n, "seconds": suite["seconds"][n], "headline": _headline(p)} for n, p in suite["benchmarks"].items()]
    rows += [{"name": n, "seconds": None, "headline": f"skipped: {why}"} for n, why in suite["skipped"].items()]
    rows += [{"name": n, "seconds": suite["seconds"].get(n), "headline": f"FAILED: {why.splitlines()[-1]}"}
             for n, why in suite["failed"].items()]
    print()
    print(_report.format_table(rows, [("name", "benchmark", ""), ("seconds", "s", ".1f"), ("headline", "headline", "")]))
    if args.out:
        path = _report.write_json(out / "suite.json", suite)
        print(f"wrote {path} and {out / 'plots'}")
    return suite


if __name__ == "__main__":
    main()
