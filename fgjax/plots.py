"""PNG plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, axes, path: str | Path) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
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
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    axes[0].set(title="training loss (BCE)", xlabel="epoch", ylabel="loss")
    for key in val_keys:
        axes[1].plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key[4:])
    axes[1].set(title="validation (full ranking)", xlabel="epoch", ylabel="metric")
    if val_keys:
        axes[1].legend()
    return _save(plt, fig, axes, path)


def plot_forgetting(degree: np.ndarray, window_start: np.ndarray, path: str | Path) -> Path:
    """Distribution of finite F over (user, window) and the median F per window.

    Args:
      degree: ``(windows, users)`` F (users with no history yet are NaN).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    finite = degree[np.isfinite(degree)]
    axes[0].hist(finite, bins=50)
    axes[0].set(title=f"F over (user, window), {np.isinf(degree).sum()} infinite", xlabel="F", ylabel="count", yscale="log")
    days = (window_start - window_start[0]) / 86400.0
    masked = np.where(np.isfinite(degree), degree, np.nan)
    with np.errstate(all="ignore"):
        median = np.nanmedian(masked, axis=1)
        q90 = np.nanquantile(masked, 0.9, axis=1)
    axes[1].plot(days, median, label="median")
    axes[1].plot(days, q90, label="90th percentile")
    axes[1].set(title="forgetting degree per window", xlabel="days since first window", ylabel="F")
    axes[1].legend()
    return _save(plt, fig, axes, path)
