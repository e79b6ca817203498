"""The built wheel ships kernels/ as fgjax.kernels (and no top-level kernels)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_wheel_ships_fgjax_kernels(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = tmp_path.glob("fgjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fgjax/kernels/__init__.py" in names and "fgjax/kernels/_forgetting.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
    assert "fgjax/analysis/verdict_builtin.json" in names  # the shipped verdict (analysis.detector.verdict_file: auto)
    # Install the wheel (not the source tree) into its own folder and import from there.
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    assert not (target / "kernels").exists() and (target / "fgjax" / "kernels" / "__init__.py").is_file()
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, "-c", "import fgjax.kernels as k; print(k.__file__); print(float(k.forgetting_degree([1.,1,0],[1.,0,1])))"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, value = proc.stdout.split()
    assert path.startswith(str(target)) and float(value) == pytest.approx(1.0)
