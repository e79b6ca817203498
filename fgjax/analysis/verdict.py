"""The learned verdict's file: fitted ``kernels.VerdictParams`` per window length and fade definition.

``fgjax evaluate --detection`` writes ``verdict.json`` (``save_verdicts``); ``fgjax analyze`` with
``analysis.detector.verdict_file`` set reads the fit for its own window length and ``fade_share``
(``load_verdict``) and lets it decide which silent interests are forgotten (``window.close_window``).
The format (``VERDICT_FORMAT``)::

    {"format": "fgjax-verdict/1", "features": [the kernels.VERDICT_FEATURES names],
     "fits": [{"window_days": 7.0, "fade_share": 0.25, "recent_windows": 16, "mean": [...], "scale": [...],
               "weights": [...], "bias": b, "threshold": t, "stories": [...], "false_alarm": q,
               "log_windows": n}, ...]}

``mean`` / ``scale`` / ``weights`` are in ``features`` order; ``threshold`` is on the log-odds. A fit that
``fgjax fit-verdict`` made on a log's own silences also has ``horizon_windows`` (forgotten = silent that many
windows while the user is seen after), ``precision`` (how often its threshold's first alarms were) and, where its
label was relative to each interest's rate, ``rate_surprise``. ``log_windows``
(optional) is the span, in windows, of the logs a fit was fitted on: a file may hold fits of one window length
and share for logs of different spans (``fgjax evaluate --detection`` writes one for the matrix's logs and one
per span of ``evaluate.verdict_short_days`` whose logs hold ``evaluate.verdict_min_windows`` windows of that
length), and a run reads the shortest one whose span covers its log's
(``load_verdict``).

fgjax ships one (``BUILTIN_PATH``): the ``verdict.json`` of ``fgjax evaluate --detection`` at the default
config (fits for 30-day logs in daily windows, 60-, 90-, 112- and 140-day and 24-week logs). ``verdict_file: builtin``
names it; ``auto`` (the default) uses it only where it was measured better than the detector's own verdict, in
daily and weekly windows (``AUTO_WINDOW_DAYS``; ``verdict_path``). When the detector, the verdict's features or
its fit change, fit it again and replace it (``tests/test_analysis_verdict.py`` checks its spans)::

    fgjax evaluate --detection --out runs/detection
    cp runs/detection/verdict.json fgjax/analysis/verdict_builtin.json
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fgjax import kernels
from fgjax.errors import ConfigError

VERDICT_FORMAT = "fgjax-verdict/1"
_VECTORS = ("mean", "scale", "weights")
BUILTIN = "builtin"  # analysis.detector.verdict_file naming the fit fgjax ships
AUTO = "auto"  # ... the shipped fit in the windows where it was measured better than the detector, else none
BUILTIN_PATH = Path(__file__).with_name("verdict_builtin.json")
# Window lengths (days) where ``auto`` uses the shipped fit, the one for the log's span. Weekly: it beat the
# detector in the matrix (6 of 8 cells), the 30-week single run and the log written blind (bench/RESULTS.md, issue
# 10). Daily: with a fit per span (the long one lost to the detector on 60-day logs, the short one wins there) it
# beat the detector on the 30- and 60-day runs of all four stories, the blind log at 120 days and at 60 days in one of
# two fade definitions (the detector kept 0.969 against 0.956 at 5 %, and flags fewer loyal interests on short logs).
AUTO_WINDOW_DAYS = (1.0, 7.0)


def verdict_path(verdict_file: str, window_days: float, fade_share: float, recent_windows: int) -> str:
    """The verdict file a run reads for ``analysis.detector.verdict_file`` ("" = the detector's own verdict).

    ``builtin`` is ``BUILTIN_PATH``; ``auto`` is ``BUILTIN_PATH`` where ``window_days`` is one of
    ``AUTO_WINDOW_DAYS`` and the shipped file has a fit for ``fade_share`` and ``recent_windows``, and "" elsewhere;
    any other value is a path, returned as given.
    """
    if verdict_file == BUILTIN:
        return str(BUILTIN_PATH)
    if verdict_file != AUTO:
        return verdict_file
    if not any(math.isclose(window_days, d, rel_tol=1e-6) for d in AUTO_WINDOW_DAYS):
        return ""
    return str(BUILTIN_PATH) if _shipped_fit_exists(window_days, fade_share, recent_windows) else ""


@functools.cache  # the shipped file does not change while fgjax runs; a run resolves its verdict a few times
def _shipped_fit_exists(window_days: float, fade_share: float, recent_windows: int) -> bool:
    try:
        load_verdict(BUILTIN_PATH, window_days, fade_share, recent_windows)
    except ConfigError:  # no shipped fit for this share or feature span: the detector decides
        return False
    return True


@dataclasses.dataclass(frozen=True)
class VerdictFit:
    """One fitted verdict: ``kernels.VerdictParams`` and its log-odds ``threshold``, for windows of ``window_days``
    days and fades forgotten below ``fade_share``; ``recent_windows`` is the span its features were computed with."""

    window_days: float
    fade_share: float
    recent_windows: int
    params: kernels.VerdictParams
    threshold: float
    stories: tuple[str, ...] = ()
    false_alarm: float | None = None
    log_windows: int | None = None  # the span of the logs it was fitted on, in windows begun (None: not recorded)
    # A fit on a log's own silences (fgjax fit-verdict): forgotten = silent this many windows, the user seen after
    # (None: a fit on synthetic ground truth); its threshold's first alarms were gone ``precision`` of the time.
    horizon_windows: int | None = None
    precision: float | None = None
    # Such a fit's label when it is relative to each interest's rate (log_verdict.rate_surprise): gone once the
    # interest at its own rate would show a silence that long under this many times in its life, 2 to
    # ``horizon_windows`` windows (fgjax.evaluation.log_verdict.rate_needs).
    rate_surprise: float | None = None

    def to_json(self) -> dict[str, Any]:
        vectors = {name: [float(v) for v in np.asarray(getattr(self.params, name))] for name in _VECTORS}
        return {"window_days": self.window_days, "fade_share": self.fade_share, "recent_windows": self.recent_windows,
                **vectors, "bias": float(np.asarray(self.params.bias)), "threshold": self.threshold,
                "stories": list(self.stories), "false_alarm": self.false_alarm, "log_windows": self.log_windows,
                **({"horizon_windows": self.horizon_windows, "precision": self.precision}
                   if self.horizon_windows is not None else {}),
                **({"rate_surprise": self.rate_surprise} if self.rate_surprise is not None else {})}


def save_verdicts(fits: list[VerdictFit], path: Path) -> Path:
    """Write ``fits`` as a verdict file (the module docstring's format) at ``path``."""
    doc = {"format": VERDICT_FORMAT, "features": list(kernels.VERDICT_FEATURES), "fits": [f.to_json() for f in fits]}
    path = Path(path)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_verdict(path: str | Path, window_days: float, fade_share: float, recent_windows: int,
                 log_windows: int | None = None) -> VerdictFit:
    """The fit in verdict file ``path`` for windows of ``window_days`` days and ``fade_share``.

    Where the file holds several such fits, for logs of different spans, the shortest whose ``log_windows`` covers
    the analyzed log's ``log_windows``, else the longest (``_span_order``); without a span (a live log has no end)
    the longest.

    Raises ``ConfigError`` (one line naming the file) when the file is missing or not a verdict file, its
    features are not this version's, or it has no fit for this window length and share, or one computed
    with another ``recent_windows``.
    """
    where = f"analysis.detector.verdict_file {str(path)!r}"
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file (`fgjax evaluate --detection` writes verdict.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{where}: not a readable JSON verdict file ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != VERDICT_FORMAT:
        raise ConfigError(f"{where}: expected format {VERDICT_FORMAT!r}, got {doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r}")
    if doc.get("features") != list(kernels.VERDICT_FEATURES):
        raise ConfigError(f"{where}: its features {doc.get('features')} are not this version's "
                          f"{list(kernels.VERDICT_FEATURES)}; fit it again with `fgjax evaluate --detection`")
    fits = doc.get("fits") or []
    matching = []
    for i, fit in enumerate(fits):
        try:
            days, share = float(fit["window_days"]), float(fit["fade_share"])
            span = fit.get("log_windows")
            span = None if span is None else int(span)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: fits[{i}] has no numeric window_days and fade_share "
                              "(or a non-integer log_windows)") from None
        if span is not None and span < 1:
            raise ConfigError(f"{where}: fits[{i}].log_windows must be at least 1, got {span}")
        if math.isclose(days, window_days, rel_tol=1e-6) and math.isclose(share, fade_share, rel_tol=1e-6):
            matching.append((i, fit, span))
    if not matching:
        have = ", ".join(f"{float(f.get('window_days', 'nan')):g} d at {float(f.get('fade_share', 'nan')):g}"
                         for f in fits)
        raise ConfigError(f"{where}: no fit for windows of {window_days:g} days and fade_share {fade_share:g} "
                          f"(it has: {have or 'none'})")
    i, fit, _ = min(matching, key=lambda m: _span_order(m[2], log_windows))
    if fit.get("recent_windows") != recent_windows:
        raise ConfigError(f"{where}: fits[{i}] was computed with recent_windows={fit.get('recent_windows')}, "
                          f"analysis.detector.verdict_recent_windows is {recent_windows}")
    return _fit_from_json(fit, where, i)


def _span_order(fit_windows: int | None, log_windows: int | None) -> tuple[int, float]:
    """Sort key of a fit for a log of ``log_windows`` windows: first the fits whose span covers the log, the
    shortest of them (a fit has seen logs up to its span; past it, a short log's fit flags the loyal interests of a
    longer one: bench/RESULTS.md), then the others, the longest first; a fit with no span recorded last. Without
    ``log_windows`` (a live log has no end) the longest fit."""
    if fit_windows is None:
        return (2, 0.0)
    if log_windows is not None and fit_windows >= log_windows:
        return (0, float(fit_windows))
    return (1, -float(fit_windows))


def _fit_from_json(fit: dict[str, Any], where: str, i: int) -> VerdictFit:
    n = len(kernels.VERDICT_FEATURES)
    try:
        vectors = {name: np.asarray(fit[name], np.float32) for name in _VECTORS}
        bias, threshold = float(fit["bias"]), float(fit["threshold"])
        horizon = None if fit.get("horizon_windows") is None else int(fit["horizon_windows"])
        precision = None if fit.get("precision") is None else float(fit["precision"])
        surprise = None if fit.get("rate_surprise") is None else float(fit["rate_surprise"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: fits[{i}] lacks a numeric {err}") from None
    for name, v in vectors.items():
        if v.shape != (n,) or not np.isfinite(v).all():
            raise ConfigError(f"{where}: fits[{i}].{name} must hold {n} finite numbers, got shape {v.shape}")
    if not (vectors["scale"] > 0).all() or not (math.isfinite(bias) and math.isfinite(threshold)):
        raise ConfigError(f"{where}: fits[{i}] needs a positive scale and a finite bias and threshold")
    params = kernels.VerdictParams(mean=vectors["mean"], scale=vectors["scale"], weights=vectors["weights"],
                                   bias=np.float32(bias))
    return VerdictFit(window_days=float(fit["window_days"]), fade_share=float(fit["fade_share"]),
                      recent_windows=fit["recent_windows"], params=params, threshold=threshold,
                      stories=tuple(fit.get("stories") or ()), false_alarm=fit.get("false_alarm"),
                      log_windows=None if fit.get("log_windows") is None else int(fit["log_windows"]),
                      horizon_windows=horizon, precision=precision, rate_surprise=surprise)
