"""fgjax.plots: the figures a run writes, and matplotlib imported off the main thread."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from fgjax.plots import plot_forgetting


def test_matplotlib_is_imported_in_the_background_before_a_plot_needs_it():
    code = ("import sys; from fgjax.plots import import_in_background\n"
            "assert 'matplotlib.figure' not in sys.modules\n"
            "thread = import_in_background(); thread.join(60)\n"
            "assert thread.daemon and not thread.is_alive() and 'matplotlib.figure' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plot_forgetting_writes_a_png_of_the_finite_degrees(tmp_path):
    rng = np.random.default_rng(0)
    degree = rng.exponential(0.3, (12, 500))
    degree[0, :250] = np.nan  # users without history yet
    degree[3, :7] = np.inf
    path = plot_forgetting(degree, np.arange(12) * 86400.0, tmp_path / "f.png", sample_note="500 sampled users")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
