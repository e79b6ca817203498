"""``python -m bench`` runs every benchmark at the smoke scale and writes what it promises.

Its own module (from tests/test_bench.py), and one test per benchmark (each through the suite's ``main``,
as ``python -m bench NAME --scale smoke`` runs it), so that pytest-xdist's workers share the benchmarks
(about 40 s in all) instead of one worker running them in a row while the other waits at the end. That
one call of the suite runs several benchmarks and collects them all is checked on stand-ins (seconds).
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a repo folder, not part of the installed package
    sys.path.insert(0, str(ROOT))

from bench import __main__ as suite  # noqa: E402

#: The benchmarks that draw a plot (one PNG each under DIR/plots; at least five, as the whole suite promised).
PLOTTED = ("kernels", "analysis_pass", "detector_update", "topk", "memory", "scaling")


def test_one_call_runs_every_named_benchmark_and_collects_them(tmp_path, monkeypatch):
    """The suite's own work, on stand-ins: every name run in order with the suite's flags, each one's payload
    in suite.json (device, date, versions, scale), none failed or skipped. The real benchmarks: below."""
    calls = []
    for name in suite.BENCHMARKS:
        fake = types.ModuleType(f"bench.{name}")
        fake.main = (lambda n: lambda argv: calls.append((n, argv)) or {"benchmark": n, "summary": {"x": 1.0}})(name)
        monkeypatch.setitem(sys.modules, f"bench.{name}", fake)
    out = tmp_path / "results"
    result = suite.main([*suite.BENCHMARKS, "--scale", "smoke", "--no-torch", "--out", str(out)])
    assert [n for n, _ in calls] == list(suite.BENCHMARKS)
    assert all(argv == ["--scale", "smoke", "--out", str(out / f"{n}.json"), "--plots", str(out / "plots"),
                        "--no-torch"] for n, argv in calls)
    data = json.loads((out / "suite.json").read_text())
    assert set(data["benchmarks"]) == set(suite.BENCHMARKS) == set(result["benchmarks"])
    assert not data["failed"] and not data["skipped"]
    for key in ("date", "device", "versions", "scale"):
        assert data[key], key


@pytest.mark.slow
@pytest.mark.parametrize("name", suite.BENCHMARKS)
def test_each_benchmark_at_smoke_scale_writes_what_it_promises(tmp_path, capsys, name):
    out = tmp_path / "results"
    # Each known benchmark; the optional quality report (minutes, on MovieLens) has its own tests.
    result = suite.main([name, "--scale", "smoke", "--no-torch", "--out", str(out)])
    data = json.loads((out / "suite.json").read_text())
    assert set(data["benchmarks"]) == {name} == set(result["benchmarks"])
    assert not data["failed"] and not data["skipped"]
    for key in ("date", "device", "versions", "scale"):
        assert data[key], key
    payload = data["benchmarks"][name]
    assert payload["benchmark"] == name and payload["versions"]["jax"] and payload["date"]
    assert payload["summary"], name
    assert json.loads((out / f"{name}.json").read_text())["benchmark"] == name
    for plot in payload.get("plots", []):
        assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    # The whole suite wrote at least five plots: each plotting benchmark its own.
    assert len(PLOTTED) >= 5 and set(PLOTTED) <= set(suite.BENCHMARKS)
    if name in PLOTTED:
        assert payload["plots"] and {Path(p) for p in payload["plots"]} <= set((out / "plots").glob("*.png"))
    b = data["benchmarks"]
    # Fast paths agree with the simple ones, in the benchmark run itself.
    if name == "topk":
        for r in b["topk"]["results"]:
            assert r["groups_exact_match"] > 0.99 and r["merge_exact_match"] > 0.99 and r["groups_bf16_recall"] > 0.9
    if name == "kernels":
        for r in b["kernels"]["results"]:
            assert all(v < 1e-4 for v in r["checks"].values()), r["checks"]
    if name == "analysis_pass":
        for r in b["analysis_pass"]["results"]:
            assert r["max_abs_diff_F_vs_numpy"] < 1e-4 and r["max_abs_diff_p_vs_numpy"] < 1e-4
    if name == "pipeline":
        assert b["pipeline"]["events"] == b["pipeline"]["config"]["events"]
        assert b["pipeline"]["recommendations_shape"] == [b["pipeline"]["config"]["users"], 10]
        # The product path beside the NumPy script, on the same files: both wrote their per-(user, window) tables.
        pipe = b["pipeline"]
        assert pipe["numpy_script_rows"] > 0 and pipe["numpy_script_s"] > 0
        assert pipe["cli"]["level"]["rows"][0] > 0 and pipe["cli_level_vs_numpy"] > 0
        # The script in its own process and fgjax analyze write one row per (user, window) from the user's first event.
        assert pipe["numpy_process"]["rows"] == pipe["numpy_script_rows"] == pipe["cli"]["level"]["rows"][0]
        assert pipe["numpy_process"]["peak_rss_bytes"] > 0 and pipe["cli_level_rss_vs_numpy"] > 0
    if name == "memory":
        assert b["memory"]["summary"]["growth_with_data"] < 1.5 < b["memory"]["summary"]["parquet_growth"]
    if name == "scaling":
        # Timings on a shared CI machine are noise: the suite test checks that the exponents were fitted, the
        # benchmark reports their values (bench/RESULTS.md), never a timed assertion.
        assert all(math.isfinite(b["scaling"][f"{kind}_exponent"]) for kind in ("analysis", "topk"))
    if name == "detector_update":
        du = b["detector_update"]
        r = du["results"][0]
        assert "update/copy" in capsys.readouterr().out
        assert r["update_gbps"] > 0 and r["copy_gbps"] > 0
        # The update reads at least its ring buffer and writes at least its new slot (N x K x T, N x K floats).
        n, k, t = r["users"], du["config"]["interests"], du["config"]["buffer_windows"]
        assert r["memory"]["argument"] >= n * k * t * 4 and r["memory"]["output"] >= n * k * 4
        p = du["projection"]
        assert p["users"] == 10_000_000 and p["probe_users"][0] >= 256 and p["bytes_per_user"] > 0
        assert p["projected_bytes"] == pytest.approx(p["bytes_per_user"] * 10_000_000, rel=0.05)
        assert (out / "plots" / "detector_update.png").read_bytes()[:4] == b"\x89PNG"
