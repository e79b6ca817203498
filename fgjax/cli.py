"""``fgjax`` command line: thin wrappers over ``fgjax.pipeline`` and friends.

Every subcommand reads an optional YAML config (``--config``) with dotted
``--set key=value`` overrides. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Sequence

from fgjax.errors import ConfigError, DataError, FgjaxError, FgjaxWarning

EPILOG = """examples:
  fgjax quickstart --out runs/quickstart
  fgjax generate --out runs/gen --set synthetic.num_users=10000
  fgjax train --out runs/ml100k --set data.format=recbole --set data.path=path/to/ml-100k
  fgjax train --out runs/time_sasrec --config configs/time_sasrec.yaml --set data.path=path/to/ml-100k
  fgjax analyze --out runs/a --set data.path=events/ --set data.items_path=items.parquet
  fgjax fit-verdict --out runs/v --events events/ --items items.parquet --window 7d
  fgjax analyze --out runs/a --events events/ --items items.parquet --window 7d \
      --set analysis.detector.verdict_file=runs/v/verdict.json
  fgjax recommend --checkpoint runs/quickstart/checkpoint --users 10000001,10000002 --out recs.parquet
  fgjax bench kernels topk --scale small --out bench/results
  fgjax evaluate --out runs/eval --checkpoint runs/quickstart/checkpoint \
      --set data.path=runs/quickstart/data/events --set data.items_path=runs/quickstart/data/items.parquet
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other fgjax error."""

    def error(self, message: str):
        self.exit(2, f"fgjax: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser, *, out_help: str) -> None:
    p.add_argument("--out", required=True, type=Path, help=out_help)
    p.add_argument("--config", type=Path, default=None, help="YAML config (see configs/); defaults = the quickstart run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that is not this command's output folder, replacing an "
                        "earlier run's outputs (files fgjax did not write are left in place)")


def _add_log_flags(p: argparse.ArgumentParser) -> None:
    """The shorthands of the commands that read a log in windows (analyze, fit-verdict)."""
    p.add_argument("--events", default=None, help="events (file, directory or glob); same as --set data.path=...")
    p.add_argument("--items", default=None, help="items table with item_id and category; same as --set data.items_path=...")
    p.add_argument("--window", type=_duration, default=None, metavar="LENGTH",
                   help="window length, e.g. 1d, 7d, 12h, 3600s or seconds; same as --set analysis.window_seconds=...")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fgjax",
        description="Model how users forget their interests: train, analyze forgetting, recommend, evaluate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("quickstart", help="generate a synthetic log and run the whole pipeline on it")
    _add_common(p, out_help="output directory (data, checkpoint, parquet outputs, metrics.json, plots)")
    p = sub.add_parser("generate", help="write the synthetic behavior log (sharded Parquet + ground truth)")
    _add_common(p, out_help="output directory")
    p = sub.add_parser("train", help="read events (data.path), split by time, train the model model.name names "
                                     "(embedding_mlp, time_sasrec, sasrec, forgetting_sasrec, bpr, itemknn), save a "
                                     "servable checkpoint")
    _add_common(p, out_help="output directory (checkpoint/, metrics.jsonl, plots/)")
    p = sub.add_parser("analyze", help="windowed forgetting analysis of data.path -> forgetting.parquet, states.parquet")
    _add_common(p, out_help="output directory")
    _add_log_flags(p)
    p = sub.add_parser("fit-verdict", help="fit the learned verdict on data.path's own silences (gone for "
                                           "log_verdict.horizon_days, or back sooner) -> verdict.json for analyze")
    _add_common(p, out_help="output directory (verdict.json, verdict_report.md, rejects.parquet)")
    _add_log_flags(p)
    p = sub.add_parser("recommend", help="top-K recommendations from a checkpoint, by raw user IDs")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory written by train/quickstart")
    p.add_argument("--users", default=None,
                   help="comma-separated raw user IDs, or a Parquet/CSV file with a user_id column (default: all users)")
    p.add_argument("--k", type=_positive_int, default=10, help="items per user")
    p.add_argument("--no-forgetting", action="store_true", help="rank by the model alone")
    p.add_argument("--pseudonyms", action="store_true",
                   help="the --users IDs are pseudonyms (a checkpoint trained with data.pseudonymize): no secret "
                        "needed; without it raw IDs are mapped with the secret its config names")
    p.add_argument("--out", required=True, type=Path, help="output Parquet file")
    p = sub.add_parser("evaluate", help="temporal leave-last-out evaluation of a checkpoint -> metrics.json; "
                                        "--detection: forgetting detection against synthetic ground truth")
    _add_common(p, out_help="output directory (reads OUT/checkpoint unless --checkpoint)")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory (default OUT/checkpoint)")
    p.add_argument("--detection", action="store_true",
                   help="forgetting detection against synthetic ground truth: the matrix story x window (detector "
                        "with its knob chosen leave-one-story-out, BOCPD, CUSUM, the silence rule at its best N) "
                        "-> OUT/matrix.json, matrix.md; then the whole path on synthetic.story -> "
                        "OUT/detection.json, detection.md, states.parquet, plots/")
    p = sub.add_parser("bench", help="run the benchmark suite (python -m bench; from a source checkout)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of python -m bench (see fgjax bench --help)")
    return parser


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _duration(text: str) -> float:
    """``"7d"`` -> 604800.0 seconds (units s, m, h, d, w; a bare number is seconds)."""
    value, unit = (text[:-1], text[-1]) if text and text[-1] in _DURATION_UNITS else (text, "s")
    try:
        seconds = float(value) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive length such as 1d, 7d, 12h or 3600, got {text!r}")
    return seconds


def _run_bench(bench_args) -> int:
    """``python -m bench ARGS`` in a subprocess, from the checkout this fgjax was installed from.

    bench/ is not packaged and nothing in fgjax imports it; its output is
    passed through line by line. Returns its exit status.
    """
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "__main__.py").is_file():
        raise ConfigError(f"the benchmark suite runs from a source checkout: no bench/ next to '{root / 'fgjax'}'")
    # The checkout on the child's path, the caller's working directory kept (relative --out paths).
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    with subprocess.Popen([sys.executable, "-m", "bench", *bench_args], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": path}) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
    return proc.returncode


def _config(args):
    from fgjax.config import load_config

    overrides = list(args.overrides)
    # Flags are shorthands for overrides, applied last; YAML-quoted so paths stay strings.
    for flag, key in (("events", "data.path"), ("items", "data.items_path"), ("window", "analysis.window_seconds")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return load_config(args.config, overrides)


def _progress(args) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _read_user_ids(spec: str | None, model):
    import pyarrow as pa
    import pyarrow.compute as pc

    from fgjax.serving.model import check_id_type

    if spec is None:
        return model.users.values
    path = Path(spec)
    if path.suffix.lower() in (".parquet", ".csv") or os.sep in spec:
        if not path.is_file():
            raise ConfigError(f"--users file '{path}' does not exist (pass a .parquet/.csv file with a user_id "
                              "column, or comma-separated IDs)")
        if path.suffix.lower() not in (".parquet", ".csv"):
            raise ConfigError(f"--users file '{path}': expected a .parquet or .csv file with a user_id column")
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        # Read CSV IDs as the vocabulary's type: inference would turn "007" into 7.
        convert = pcsv.ConvertOptions(column_types={"user_id": model.users.type})
        try:
            reader = pq.read_table if path.suffix.lower() == ".parquet" else \
                (lambda p: pcsv.read_csv(p, convert_options=convert))
            table = reader(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"--users file '{path}': {str(exc).splitlines()[0]}") from None
        if "user_id" not in table.column_names:
            raise ConfigError(f"--users file '{path}': no user_id column (columns: {', '.join(table.column_names)})")
        ids = table.column("user_id").combine_chunks()
        if len(ids) == 0:
            raise ConfigError(f"--users file '{path}': no user IDs")
        try:  # nulls; 1.0 or True would otherwise be served as user 1, under a user_id of their own type
            check_id_type(ids, model.users.type, what=f"--users file '{path}'")
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        try:
            return pc.unique(ids.cast(model.users.type))  # each user once, in the order first given
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ConfigError(f"--users file '{path}': user_id values of type {ids.type} that are not the "
                              f"checkpoint's {model.users.type} user IDs") from None
    raw = [s.strip() for s in spec.split(",") if s.strip()]
    if not raw:
        raise ConfigError(f"--users: no user IDs in {spec!r} (comma-separated IDs or a .parquet/.csv file)")
    raw = list(dict.fromkeys(raw))  # each user once, in the order first given
    if pa.types.is_integer(model.users.type):
        try:
            return pa.array([int(s) for s in raw], model.users.type)
        except ValueError:
            bad = next(s for s in raw if not s.lstrip("+-").isdigit())
            raise ConfigError(f"--users: {bad!r} is not an integer, and the checkpoint's user IDs are integers "
                              "(pass comma-separated IDs, or a .parquet/.csv file with a user_id column)") from None
        except (OverflowError, pa.ArrowInvalid):  # no user of an integer vocabulary can have it
            import numpy as np

            info = np.iinfo(model.users.type.to_pandas_dtype())
            bad = next(s for s in raw if not info.min <= int(s) <= info.max)
            raise ConfigError(f"--users: {bad} is outside the checkpoint's {model.users.type} user IDs "
                              f"({info.min:,} to {info.max:,})") from None
    return pa.array(raw, model.users.type)


def run(args) -> int:
    if args.command == "analyze":  # imports no training code: starts about 2 s sooner
        from fgjax import analysis_job
    else:
        from fgjax import pipeline

    overwrite = getattr(args, "overwrite", False)
    if args.command == "quickstart":
        pipeline.quickstart(_config(args), args.out, progress=_progress(args), overwrite=overwrite)
    elif args.command == "generate":
        paths = pipeline.generate_data(_config(args), args.out, overwrite=overwrite)
        print(f"wrote {paths.events_dir}, {paths.items_path}, {paths.truth_path}")
    elif args.command == "train":
        pipeline.train_model(_config(args), args.out, print, _progress(args), overwrite=overwrite)
        print(f"checkpoint: {args.out / 'checkpoint'}")
    elif args.command == "analyze":
        config = _config(args)
        analysis_job.split_cpu(config.analysis.cpu_devices)  # before JAX starts
        rows, changes = analysis_job.analyze_log(config, args.out, print, _progress(args), overwrite=overwrite)
        print(f"wrote {args.out / 'forgetting.parquet'} ({rows:,} rows), {args.out / 'states.parquet'} "
              f"({changes:,} state changes) and {args.out / 'plots' / 'forgetting.png'}")
    elif args.command == "recommend":
        import pyarrow.parquet as pq

        from fgjax.serving.model import load

        model = load(args.checkpoint)
        user_ids = _read_user_ids(args.users, model)
        given_pseudonyms = args.pseudonyms or args.users is None  # all users: the vocabulary's own IDs
        if not given_pseudonyms:
            user_ids = model.pseudonyms(user_ids)  # raw -> pseudonyms (unchanged unless data.pseudonymize)
        table = model.recommend(user_ids, k=args.k, use_forgetting=not args.no_forgetting, pseudonyms=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.is_dir():
            raise ConfigError(f"--out '{args.out}' is a folder, expected a .parquet file to write")
        tmp = args.out.with_name(f".{args.out.name}.tmp-{os.getpid()}")  # never a half-written file at --out
        try:
            pq.write_table(table, str(tmp))
            os.replace(tmp, args.out)
        finally:
            tmp.unlink(missing_ok=True)
        unknown = int((model.users.encode(user_ids) < 0).sum())
        note = f"; {unknown:,} unknown users got the most popular items" if unknown else ""
        print(f"wrote {args.out}: {table.num_rows:,} rows for {len(user_ids):,} users{note}")
    elif args.command == "fit-verdict":
        pipeline.fit_log_verdict(_config(args), args.out, print, overwrite=overwrite)
    elif args.command == "evaluate" and args.detection:
        pipeline.evaluate_detection(_config(args), args.out, print, _progress(args), overwrite=overwrite)
    elif args.command == "bench":
        return _run_bench(args.bench_args)
    elif args.command == "evaluate":
        config = _config(args)
        metrics = pipeline.evaluate_checkpoint(config, args.out, args.checkpoint or args.out / "checkpoint", print,
                                               _progress(args), overwrite=overwrite)
        print(json.dumps(metrics["results"], indent=2))
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """fgjax's own warnings as one line, ``fgjax: warning: ...``; others as Python prints them."""
    if issubclass(category, FgjaxWarning):
        print(f"fgjax: warning: {message}", file=sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def compile_cache_dir(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """Where the CLI keeps compiled XLA programs between runs, or None.

    ``FGJAX_COMPILE_CACHE`` (a folder, or ``off``); by default
    ``$XDG_CACHE_HOME/fgjax/xla`` (``~/.cache/fgjax/xla``). None when the
    user set JAX's own ``JAX_COMPILATION_CACHE_DIR`` (JAX then uses it) or
    turned the cache off.
    """
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    default = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fgjax" / "xla"
    where = environ.get("FGJAX_COMPILE_CACHE", str(default))
    return None if where.strip().lower() in ("", "off", "0", "none", "false") else where


def use_compile_cache() -> None:
    """Point JAX's persistent compilation cache at ``compile_cache_dir()`` (no-op when that is None)."""
    # A repeated run (same shapes, config, versions and device) loads its programs instead of compiling them:
    # most of a small run's time (8 of 19 s of fgjax analyze over 1M events on 2 CPU cores).
    where = compile_cache_dir()
    if where is not None:
        import jax

        jax.config.update("jax_compilation_cache_dir", where)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


# glibc returns a freed block to the system only above its mmap threshold, and raises that threshold to the
# size of each such block freed (up to 32 MB), so the windows' host arrays of a long run end up kept in its
# heaps for the process's life: 0.2-0.6 GB of `fgjax analyze`'s peak RSS with the detector at 100k users
# (1.52-1.88 GB against 1.29-1.36 GB with these fixed thresholds, no change in time; bench/RESULTS.md).
# 2 MB, not 4: with the users split between two CPU devices a (users, K) float32 output at 100k x 16 is two
# 3.2 MB shards, which below the threshold stayed in the heaps (+0.16-0.21 GB of peak RSS).
MALLOC_MMAP_THRESHOLD = 2 << 20  # blocks of 2 MB and more come from mmap and go back when freed
MALLOC_TRIM_THRESHOLD = 64 << 20  # free memory at the top of a heap beyond this goes back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def return_freed_memory() -> bool:
    """Fix glibc's malloc thresholds (``MALLOC_MMAP_THRESHOLD``, ``MALLOC_TRIM_THRESHOLD``) so that freed large
    blocks go back to the system; returns False (and does nothing) where the C library is not glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


# What lowers a run's memory, by command (the rest: the generic advice).
_MEMORY_ADVICE = {
    "analyze": "split the users over more devices or processes (analysis.devices, analysis.distributed), keep fewer "
               "windows per interest (analysis.detector.buffer_windows) or analyze fewer users per run",
}


def out_of_memory_message(exc: BaseException, command: str | None = None) -> str | None:
    """The one-line error for an allocation the device or host could not make (XLA's ``RESOURCE_EXHAUSTED``,
    ``MemoryError``), here or in what caused it; None for any other error."""
    seen: BaseException | None = exc
    chain: set[int] = set()  # a chain of causes can loop back (an exception raised again while handled)
    while seen is not None and id(seen) not in chain:
        chain.add(id(seen))
        text = str(seen)
        if "RESOURCE_EXHAUSTED" in text:
            line = next(line for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line).strip()
            what = line[line.index("RESOURCE_EXHAUSTED"):].split("[", 1)[0].strip().rstrip(".")
            break
        if isinstance(seen, MemoryError):
            what = f"out of host memory{': ' + text if text else ''}"
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    advice = _MEMORY_ADVICE.get(command or "", "give the run fewer users or items, or a device with more memory")
    return f"{what}: this run does not fit in memory; {advice}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to python -m bench (flags included)
        args = argparse.Namespace(command="bench", bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    if args.command != "bench":
        use_compile_cache()
        return_freed_memory()
    try:
        return run(args)
    except FgjaxError as exc:
        print(f"fgjax: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing files, permissions, a file where a folder should be, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fgjax: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fgjax: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = out_of_memory_message(exc, args.command)
        if message is None:
            raise
        print(f"fgjax: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = _python_show_warning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
