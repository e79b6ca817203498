"""PNG plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class _Figures:
    """The two pyplot calls the plots use, on ``matplotlib.figure.Figure`` (saved with the Agg renderer):
    importing pyplot (its backends and state machine) costs about half a second more, and a figure that
    no pyplot registry holds needs no closing."""

    @staticmethod
    def subplots(*args, figsize=None, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig) -> None:
        fig.clear()


def _pyplot() -> _Figures:
    return _Figures()


def import_in_background() -> threading.Thread:
    """Import matplotlib's figure module in a daemon thread, for a job that plots at its end: the import (about
    half a second) then runs while the job's main thread mostly waits on its device work. A plot that comes
    first waits for it (Python's import lock)."""
    thread = threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), name="fgjax-plots-import",
                              daemon=True)
    thread.start()
    return thread


def _save(plt, fig, axes, path: str | Path, *, margins: dict[str, float] | None = None) -> Path:
    """Grid, layout and write. ``margins``: fixed ``Figure.subplots_adjust`` fractions instead of
    ``tight_layout``, which measures every text and costs about 0.3 s a figure (felt by a run that plots)."""
    for ax in axes:
        ax.grid(alpha=0.3)
    if margins is None:
        fig.tight_layout()
    else:
        fig.subplots_adjust(**margins)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training loss and every validation metric per epoch (the article's section 5.4)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    val_keys = sorted({k for h in history for k in h if k.startswith("val_")})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    # A closed-form model (ItemKNN) has no training loss.
    axes[0].plot(epochs, [h.get("train_loss", np.nan) for h in history], marker="o")
    axes[0].set(title="training loss", xlabel="epoch", ylabel="loss")
    for key in val_keys:
        axes[1].plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key[4:])
    axes[1].set(title="validation (full ranking)", xlabel="epoch", ylabel="metric")
    if val_keys:
        axes[1].legend()
    return _save(plt, fig, axes, path)


def plot_forgetting(degree: np.ndarray, window_start: np.ndarray, path: str | Path, *, sample_note: str = "") -> Path:
    """Distribution of finite F over (user, window) and the median F per window.

    Args:
      degree: ``(windows, users)`` F (users with no history yet are NaN).
      sample_note: said in the titles when ``degree`` holds a sample of the users (e.g. "50,000 sampled users").
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    finite = degree[np.isfinite(degree)]
    axes[0].hist(finite, bins=50)
    note = f"; {sample_note}" if sample_note else ""
    axes[0].set(title=f"F over (user, window), {np.isinf(degree).sum()} infinite{note}", xlabel="F", ylabel="count",
                yscale="log")
    days = (window_start - window_start[0]) / 86400.0
    masked = np.where(np.isfinite(degree), degree, np.nan)
    with np.errstate(all="ignore"):
        median = np.nanmedian(masked, axis=1)
        q90 = np.nanquantile(masked, 0.9, axis=1)
    axes[1].plot(days, median, label="median")
    axes[1].plot(days, q90, label="90th percentile")
    axes[1].set(title="forgetting degree per window", xlabel="days since first window", ylabel="F")
    axes[1].legend()
    for ax in axes:
        ax.title.set_fontsize("medium")
    # Fixed margins for the two panels (tight_layout's text measuring is most of the plot's cost in a run).
    return _save(plt, fig, axes, path, margins={"left": 0.07, "right": 0.985, "bottom": 0.13, "top": 0.91,
                                                "wspace": 0.22})


def plot_detection_pr(curves: dict[str, list[dict[str, Any]]], chosen: dict[str, Any], path: str | Path) -> Path:
    """Precision-recall of forgetting detection over each detector's knob.

    Args:
      curves: ``{detector: [{"knob", "precision", "recall", ...}, ...]}``.
      chosen: the configured detector's overall scores (marked with a star).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, points in curves.items():
        pts = [(p["recall"] or 0.0, p["precision"] or 0.0, p["knob"]) for p in points]
        ax.plot([r for r, _, _ in pts], [pr for _, pr, _ in pts], marker="o", label=name)
        for r, pr, knob in pts:
            ax.annotate(f"{knob:g}", (r, pr), fontsize=6, alpha=0.7)
    if chosen.get("recall") is not None and chosen.get("precision") is not None:
        ax.plot([chosen["recall"]], [chosen["precision"]], marker="*", markersize=15, color="k", linestyle="",
                label="fgjax adaptive (configured)")
    ax.set(title="forgetting detection vs ground truth", xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(plt, fig, [ax], path)


def plot_interest_timeline(log, result, codes: np.ndarray, truth, path: str | Path, *, user: int | None = None) -> Path:
    """One user's interests over time: events per window, detected states, true changes.

    Args:
      log: the ``EventLog``; result: the ``ForgettingResult``.
      codes: ``(windows, users, K)`` int8 detected states.
      truth: ``detection.Truth``; by default the user is the first with both a
        stopped or paused interest and a periodic or fading one, else the
        first with a change.
    """
    from fgjax import kernels
    from fgjax.data.synthetic import KINDS

    plt = _pyplot()
    if user is None:
        changed = set(truth.user[truth.onset >= 0].tolist())
        rich = [u for u in changed if len(set(truth.kind[truth.user == u].tolist())) >= 2]
        user = min(rich) if rich else (min(changed) if changed else 0)
    mine = np.nonzero(truth.user == user)[0]
    interests = truth.interest[mine]
    num_windows = codes.shape[0]
    interest = log.item_category[log.item]
    win = np.floor((log.timestamp - result.window_start[0]) / (result.window_start[1] - result.window_start[0])
                   if num_windows > 1 else 0).astype(int)
    colors = {kernels.NEW: "tab:blue", kernels.ACTIVE: "tab:green", kernels.DECLINING: "tab:orange",
              kernels.FORGOTTEN: "tab:red", kernels.REACTIVATED: "tab:purple"}
    fig, axes = plt.subplots(len(mine), 1, figsize=(10, 1.8 * len(mine) + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, pair, k in zip(axes, mine, interests):
        sel = (log.user == user) & (interest == k)
        counts = np.bincount(win[sel], minlength=num_windows)[:num_windows]
        ax.bar(np.arange(num_windows), counts, color="0.4", width=0.8)
        top = max(counts.max(), 1) * 1.1
        for t in range(num_windows):
            code = int(codes[t, user, k])
            if code in colors:
                ax.axvspan(t - 0.5, t + 0.5, ymin=0.9, ymax=1.0, color=colors[code], lw=0)
        for t, style in ((truth.onset[pair], "--"), (truth.forgotten[pair], "-"), (truth.resume[pair], ":")):
            if t >= 0:
                ax.axvline(t, color="k", linestyle=style, lw=1)
        ax.set_ylim(0, top / 0.9)
        ax.set_ylabel(f"{log.categories.decode(np.array([k]))[0].as_py()}\n{KINDS[truth.kind[pair]]}", fontsize=8)
    from matplotlib.patches import Rectangle

    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    names = [kernels.STATE_NAMES[c] for c in colors]
    axes[0].legend(handles, names, fontsize=7, ncol=5, loc="upper left")
    raw = log.users.decode(np.array([user]))[0].as_py()
    axes[0].set_title(f"user {raw}: events per window, detected state (top band); true change --, forgotten |, return :")
    axes[-1].set_xlabel("window")
    return _save(plt, fig, axes, path)

