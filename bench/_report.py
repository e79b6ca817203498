"""Helpers shared by the benchmarks: environment, timing, tables, JSON.

Every benchmark records where it ran (device, host, library versions, date)
next to its figures, so a results file can be compared with another one
without guessing.
"""

from __future__ import annotations

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
