"""Helpers shared by the benchmarks: environment, timing, tables, JSON.

Every benchmark records where it ran (device, host, library versions, date)
next to its figures, so a results file can be compared with another one
without guessing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions are recorded (None when not installed).
LIBRARIES = ("jax", "jaxlib", "numpy", "flax", "optax", "pyarrow", "torch")


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    # Accelerator plugins (jax-cuda12-plugin, jax-cuda13-plugin, libtpu, ...).
    for dist in metadata.distributions():
        dist_name = (dist.metadata["Name"] or "").lower()
        if dist_name.startswith(("jax-cuda", "jax_cuda", "jax-rocm", "libtpu")):
            out[dist_name] = dist.version
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    """The default JAX device and the host."""
    import jax

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "host_cpu": _cpu_model(),
        "host_cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def device_name() -> str:
    """A one-line name, e.g. ``cpu (2 cores, Intel Xeon ...)`` or ``gpu NVIDIA H200``."""
    info = device_info()
    if info["platform"] == "cpu":
        return f"cpu ({info['host_cpu_count']} cores, {info['host_cpu']})"
    return f"{info['platform']} {info['device_kind']} x{info['device_count']}"


def today() -> str:
    """UTC date and time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def environment() -> dict[str, Any]:
    return {"date": today(), "device": device_name(), "device_info": device_info(), "versions": library_versions()}


def _block(result: Any) -> None:
    import jax

    jax.block_until_ready(result)


def time_call(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 5,
    warmup: int = 1,
    min_time: float = 0.0,
    sync: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Seconds per call of ``fn(*args)``, after ``warmup`` calls (at least one: compilation).

    Each of ``repeats`` measurements runs ``number`` back-to-back calls and
    waits for the last result (``jax.block_until_ready`` by default, or
    ``sync(result)``, e.g. a CUDA synchronize for torch); ``number`` grows
    until one measurement takes at least ``min_time`` seconds, so that tiny
    inputs are not all dispatch noise. Returns min/median/mean seconds per call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = sync or _block
    for _ in range(max(warmup, 1)):
        sync(fn(*args))

    def measure(number: int) -> float:
        start = time.perf_counter()
        out = None
        for _ in range(number):
            out = fn(*args)
        sync(out)
        return (time.perf_counter() - start) / number

    number = 1
    per_call = measure(number)
    while min_time > 0 and per_call * number < min_time and number < 1_000_000:
        number = max(number * 2, int(math.ceil(min_time / max(per_call, 1e-9))))
        per_call = measure(number)
    times = [per_call] + [measure(number) for _ in range(repeats - 1)]
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "repeats": repeats,
        "calls_per_repeat": number,
        "times_s": times,
    }


def gbps(num_bytes: float, seconds: float) -> float:
    """Effective bandwidth in GB/s (1e9 bytes per second)."""
    return num_bytes / seconds / 1e9 if seconds > 0 else math.inf


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / jax scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no inf/NaN
    return value


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented, strict JSON (inf/NaN become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def report_folder(out: str | os.PathLike[str], name: str) -> tuple[Path, Path | None]:
    """A study's ``--out``: a folder, or as the suite passes it ``DIR/NAME.json`` (then the folder ``DIR/NAME``
    and that file, which gets the payload too). Returns ``(folder, suite_json or None)``."""
    out = Path(out)
    if out.suffix == ".json":
        return out.parent / name, out
    return out, None


def study_payload(name: str, started: float, argv: Sequence[str] | None, **fields: Any) -> dict[str, Any]:
    """A study's JSON: its name, where it ran (``environment``), its seconds since ``started`` (perf_counter), the
    command that ran it (``python -m bench.NAME`` and ``argv``, or the process's own arguments) and ``fields``."""
    import sys

    args = list(argv) if argv is not None else sys.argv[1:]
    return {"benchmark": name, **environment(), "seconds": round(time.perf_counter() - started, 1),
            "command": f"python -m bench.{name} " + " ".join(args), **fields}


def write_study(folder: Path, name: str, payload: dict[str, Any], text: str, suite_json: Path | None) -> None:
    """``folder/NAME.json`` (and ``suite_json``) with ``payload``, ``folder/NAME.md`` with ``text``."""
    write_json(folder / f"{name}.json", payload)
    if suite_json is not None:
        write_json(suite_json, payload)
    (folder / f"{name}.md").write_text(text if text.endswith("\n") else text + "\n")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are ``(key, header, format spec)``."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, spec) if spec else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


#: Suite sizes: ``smoke`` checks that everything runs and agrees (the test suite; one size per benchmark
#: where a trend is not the point, so it compiles little);
#: ``small`` runs in seconds on a CPU; ``large`` fills an H100.
SCALES = ("smoke", "small", "large")


def int_list(text: str) -> list[int]:
    """``argparse`` type: comma-separated positive integers (``1e6`` allowed)."""
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def suite_parser(prog: str, description: str):
    """An argparse parser with the flags every suite benchmark takes (``--scale``, ``--out``, ...)."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--scale", choices=SCALES, default="small", help="problem sizes (small: seconds on a CPU)")
    p.add_argument("--out", default="", help="JSON results file ('' = do not write)")
    p.add_argument("--plots", default="", help="folder for PNG plots ('' = next to --out, or none)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default by scale)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it imports")
    p.add_argument("--seed", type=int, default=0)
    return p


def plots_dir(args) -> Path | None:
    if args.plots:
        return Path(args.plots)
    if args.out:
        return Path(args.out).parent / "plots"
    return None


def import_torch():
    """``torch`` or None (not installed, or broken)."""
    try:
        import torch
    except Exception:
        return None
    return torch


def torch_device(torch) -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync(torch):
    def sync(_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return sync


def torch_compiled(torch, fn):
    """``(torch.compile(fn), None)`` if compiling works on a first call, else ``(None, reason)``."""
    try:
        return torch.compile(fn), None
    except Exception as exc:  # pragma: no cover - depends on the toolchain
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def time_torch_compile(torch, fn, *args, timing: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Time ``torch.compile(fn)(*args)``; ``(None, reason)`` when inductor cannot compile here."""
    compiled, error = torch_compiled(torch, fn)
    if compiled is None:
        return None, error
    try:
        with torch.no_grad():
            return time_call(compiled, *args, sync=torch_sync(torch), **timing), None
    except Exception as exc:  # inductor needs a C++ compiler / triton; report why not
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def peak_host_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def device_memory() -> dict[str, int] | None:
    """``bytes_in_use`` / ``peak_bytes_in_use`` of the default device, None where JAX does not report them (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {k: int(v) for k, v in stats.items() if k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")}


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation the device or host could not make: XLA's ``RESOURCE_EXHAUSTED`` (also as the text of a
    probe process's error), or ``MemoryError``."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


def each_size_that_fits(sizes: Sequence[int], measure: Callable[[int], Any], payload: dict[str, Any]) -> list[Any]:
    """``measure(n)`` for each of ``sizes`` (ascending) until one runs out of memory.

    The sizes after it are not tried (they need more); the one that did not fit, its error and those left out go
    to ``payload["out_of_memory"]``, so a card smaller than the scale was made for still reports the sizes it
    holds. Out of memory at the first size, or any other error, is raised.
    """
    done: list[Any] = []
    for i, n in enumerate(sizes):
        try:
            done.append(measure(n))
        except Exception as error:  # noqa: BLE001 - re-raised unless it is out of memory past the first size
            if not done or not is_out_of_memory(error):
                raise
            first = next((line for line in str(error).splitlines() if "RESOURCE_EXHAUSTED" in line),
                         str(error).splitlines()[0] if str(error) else type(error).__name__)
            payload["out_of_memory"] = {"users": n, "error": first.strip()[:300], "not_tried": list(sizes[i + 1:])}
            print(f"!! {n:,} users do not fit in memory ({first.strip()[:160]}); not tried: "
                  f"{', '.join(f'{m:,}' for m in sizes[i + 1:]) or 'none'}", flush=True)
            break
    return done


def fit_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Least-squares slope of log(seconds) against log(size): 1.0 = linear growth."""
    import numpy as np

    if len(sizes) < 2:
        return None
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float))
    return float(np.polyfit(x, y, 1)[0])


def plot_scaling(path: str | Path, x: Sequence[float], series: dict[str, Sequence[float | None]], *,
                 xlabel: str, ylabel: str, title: str) -> Path:
    """A log-log PNG of one or more curves over ``x`` (None points are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        pts = [(a, b) for a, b in zip(x, ys) if b is not None and b > 0]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish(payload: dict[str, Any], args, rows: Sequence[dict[str, Any]], columns) -> dict[str, Any]:
    """Print the table, write the JSON (when ``--out``), return the payload."""
    if "out_of_memory" in payload and isinstance(payload.get("summary"), dict):  # each_size_that_fits stopped
        payload["summary"]["out_of_memory_at_users"] = payload["out_of_memory"]["users"]
    print(format_table(rows, columns), flush=True)
    if args.out:
        print(f"wrote {write_json(args.out, payload)}")
    return payload


def replace_section(path: Path, start: str, end: str, body: str) -> None:
    """Replace the text between the markers ``start`` and ``end`` of the Markdown file ``path`` (markers kept) with
    ``body``; append it, with its markers, when they are absent (or the file is)."""
    section = f"{start}\n{body}\n{end}"
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + section + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)
