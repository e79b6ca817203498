"""The benchmarks run (tiny sizes) and write the JSON they promise."""

from __future__ import annotations

import json
import os
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a repo folder, not part of the installed package
    sys.path.insert(0, str(ROOT))

from bench import _report  # noqa: E402
from bench import forgetting_degree as fd_bench  # noqa: E402


def test_forgetting_degree_benchmark_writes_json(tmp_path, capsys):
    out = tmp_path / "results" / "fd.json"
    payload = fd_bench.main(
        ["--users", "64,1000", "--interests", "8", "--repeats", "2", "--min-time", "0", "--no-torch", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "kernel GB/s" in printed and str(out) in printed
    data = json.loads(out.read_text())
    assert data["date"] == payload["date"] and len(data["results"]) == len(payload["results"])
    for key in ("benchmark", "date", "device", "device_info", "versions", "config", "results"):
        assert key in data, key
    assert data["benchmark"] == "forgetting_degree"
    assert data["versions"]["jax"] and data["versions"]["numpy"]
    assert "torch" in data["versions"]  # None when not installed
    assert data["config"]["users"] == [64, 1000] and data["config"]["interests"] == 8
    assert [r["users"] for r in data["results"]] == [64, 1000]
    for r in data["results"]:
        assert r["copy_verified"] is True
        assert r["copy_inplace_verified"] is True
        assert r["inf_matches_numpy"] is True and r["max_abs_diff_vs_numpy"] < 1e-5
        assert r["kernel_bytes"] == 2 * r["users"] * 8 * 4 + r["users"] * 4
        assert r["copy_bytes"] == 2 * 2 * r["users"] * 8 * 4
        for name in ("kernel", "copy", "copy_inplace", "reduce", "numpy"):
            t = r["timings"][name]
            assert 0 < t["min_s"] <= t["median_s"], name
            assert t["gbps"] > 0 and len(t["times_s"]) == 2, name
        for key in ("kernel_gbps", "copy_gbps", "kernel_vs_copy_bandwidth", "kernel_vs_reduce_bandwidth", "speedup_vs_numpy"):
            assert r[key] > 0 and math.isfinite(r[key]), key
        assert "torch" not in r["timings"]


def test_bad_flags():
    with pytest.raises(SystemExit):
        fd_bench.main(["--users", "ten", "--out", ""])
    with pytest.raises(SystemExit):
        fd_bench.main(["--users", "0"])


def test_report_helpers(tmp_path):
    calls = []
    t = _report.time_call(lambda x: calls.append(x) or x, 3, repeats=3, warmup=2, sync=lambda _: None)
    assert t["repeats"] == 3 and len(t["times_s"]) == 3 and t["min_s"] <= t["median_s"]
    assert len(calls) == 2 + 3 * t["calls_per_repeat"]
    t = _report.time_call(lambda: None, repeats=1, min_time=0.005, sync=lambda _: None)
    assert t["calls_per_repeat"] > 1
    assert _report.gbps(2e9, 0.5) == pytest.approx(4.0)
    versions = _report.library_versions()
    assert set(_report.LIBRARIES) <= set(versions)
    path = _report.write_json(tmp_path / "a" / "b.json", {"x": float("inf"), "y": [1.5, float("nan")]})
    assert json.loads(path.read_text()) == {"x": None, "y": [1.5, None]}
    table = _report.format_table([{"n": 1000, "v": 1.23456}, {"n": 2}], [("n", "N", ",d"), ("v", "value", ".2f")])
    assert "1,000" in table and "1.23" in table and "-" in table.splitlines()[-1]



# ---------------------------------------------------------------------------
# The suite: python -m bench runs every benchmark at the smoke scale (small and large differ only in sizes).
# ---------------------------------------------------------------------------

import types  # noqa: E402

from bench import __main__ as suite  # noqa: E402


def test_suite_dispatches_by_module_name_and_rejects_unknown(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("bench.quality")
    fake.main = lambda argv: calls.append(argv) or {"benchmark": "quality", "summary": {"ndcg": 0.5}}
    monkeypatch.setitem(sys.modules, "bench.quality", fake)
    data = suite.main(["quality", "--scale", "small", "--out", str(tmp_path)])
    assert calls == [["--scale", "small", "--out", str(tmp_path / "quality.json"), "--plots", str(tmp_path / "plots")]]
    assert data["benchmarks"]["quality"]["summary"] == {"ndcg": 0.5} and not data["skipped"]
    calls.clear()
    suite.main(["quality", "--out", str(tmp_path), "--data", "d/ml-100k"])  # its own flags pass through
    assert calls[0][-2:] == ["--data", "d/ml-100k"]
    with pytest.raises(SystemExit):
        suite.main(["--data", "d/ml-100k", "--out", str(tmp_path)])  # not without the benchmark's name
    # --out '' writes nothing (no suite.json in the working folder), as a benchmark's own --out ''.
    calls.clear()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    suite.main(["quality", "--out", ""])
    assert calls == [["--scale", "small", "--out", "", "--plots", ""]] and not list(Path.cwd().iterdir())
    monkeypatch.delitem(sys.modules, "bench.quality")
    with pytest.raises(SystemExit) as exc:
        suite.main(["no_such_benchmark", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "no benchmark 'no_such_benchmark'" in capsys.readouterr().err


def test_fgjax_bench_runs_the_suite(capsys):
    from fgjax.cli import main as cli_main

    assert cli_main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert set(suite.BENCHMARKS) <= set(listed)



@pytest.mark.slow
def test_rerun_runs_each_kind_twice_in_fresh_processes_with_one_cache(tmp_path):
    """``bench.rerun``: per kind a first run and a rerun on the log less a few users, each in a fresh process;
    without the padding (``unpadded``) the rerun's new user count compiles programs the padded rerun loads from
    the cache; both reruns write the same states; the JSON names the device and versions."""
    from bench import rerun

    # The level detector: a few programs, cheap to compile; the adaptive one is what --scale small runs. Every
    # program cached (--min-compile-s 0): at the CLI's 0.2 s, which are cached depends on the machine's load.
    # One device: split between two, the rows are also rounded to the devices' periodogram turns, which at 70
    # users hides 2 users fewer even without the padding.
    sets = ["analysis.detector.kind=level", "analysis.cpu_devices=0"]
    data = rerun.main(["--scale", "smoke", "--users", "70", "--days", "7", "--fewer", "2", "--min-compile-s", "0",
                       *(arg for kv in sets for arg in ("--set", kv)), "--out", str(tmp_path / "rerun.json")])
    padded, unpadded = data["results"]
    assert (padded["kind"], unpadded["kind"]) == rerun.KINDS
    for r in data["results"]:
        assert r["first_wall_s"] > r["first_compile_s"] > 0 and r["rerun_wall_s"] > r["rerun_compile_s"] > 0
        assert r["first_programs_compiled"] > 0 and r["rerun_rows"][0] > 0
    # The padded rerun's shapes are the first run's: it loads every program; the unpadded one's are new.
    assert padded["rerun_programs_compiled"] == 0 < padded["rerun_programs_loaded"]
    assert unpadded["rerun_programs_loaded"] == 0 < unpadded["rerun_programs_compiled"]
    assert data["summary"]["same_states"] is True
    saved = json.loads((tmp_path / "rerun.json").read_text())
    assert saved["benchmark"] == "rerun" and saved["device"] and saved["versions"]["jax"]
    assert saved["config"]["overrides"] == sets and saved["config"]["min_compile_s"] == 0
    with pytest.raises(SystemExit):
        rerun.main(["--scale", "smoke", "--users", "5", "--fewer", "5"])

def test_cli_scale_runs_fresh_processes_and_reports_a_killed_run(tmp_path, capsys):
    from bench import cli_scale

    out = tmp_path / "cli_scale.json"
    data = cli_scale.main(["--scale", "smoke", "--kinds", "level,numpy", "--limit", "300", "--out", str(out),
                           "--data", str(tmp_path / "shards"), "--grow", "2"])
    level, numpy_run = data["runs"]["level"], data["runs"]["numpy"]
    assert level["finished"] and numpy_run["finished"]
    # --grow 2: the level run again on twice the events for the same users (its own shards), the RSS growth
    grown = data["grown"]
    assert set(grown) == {"level"} and grown["level"]["finished"]
    assert json.loads((tmp_path / "shards_x2" / "meta.json").read_text())["events"] == 2 * 20_000
    assert data["summary"]["level_rss_growth_x2"] == pytest.approx(
        grown["level"]["peak_rss_bytes"] / level["peak_rss_bytes"] - 1.0)
    printed = capsys.readouterr().out
    assert "level at 2x the events:" in printed and "RSS at 2x events" in printed
    # Both write one row per (user, window) from the user's first event, on the same shards.
    assert level["rows"][0] == numpy_run["rows"] > 0
    assert level["cpu_s"] > 0 and numpy_run["cpu_s"] > 0  # the process's CPU seconds, beside its wall
    # The step: window_step on one device, sharded_window_step with the users split between CPU devices (the
    # default on 2 cores or more: analysis.cpu_devices).
    step = "sharded_window_step" if (os.cpu_count() or 1) > 1 else "window_step"
    assert set(level["stages"]) >= {"pass1_s", "pass2_s", "compile_s", "write_s", f"compile:jit({step})"}
    slowest = {k: v for k, v in level["stages"].items() if k.startswith("compile:")}
    assert 0 < len(slowest) <= 3 and 0 < sum(slowest.values()) <= level["stages"]["compile_s"]
    assert f"slowest to compile: jit({step})" in printed
    assert data["summary"]["level_vs_numpy"] == pytest.approx(level["wall_s"] / numpy_run["wall_s"])
    assert json.loads(out.read_text())["benchmark"] == "cli_scale"
    # The shards are reused, and a run past its limit is reported as not finished, not dropped.
    killed = cli_scale.main(["--scale", "smoke", "--kinds", "level", "--limit", "0.2", "--data",
                             str(tmp_path / "shards")])
    assert killed["runs"]["level"] == {"finished": False, "wall_s": None, "limit_s": 0.2}
    assert killed["generate_s"] < data["generate_s"] and "not finished" in capsys.readouterr().out
    assert killed["reused"] and not data["reused"] and killed["events"] == data["events"] == 20_000
    with pytest.raises(SystemExit):
        cli_scale.main(["--kinds", "level,gpu"])
    # Shards of other sizes are refused, not analyzed as if they were the ones asked for.
    with pytest.raises(SystemExit):
        cli_scale.main(["--scale", "smoke", "--users", "3000", "--kinds", "numpy", "--data", str(tmp_path / "shards")])
    assert "holds shards of other sizes: users 2000 (asked 3000)" in capsys.readouterr().err
    # Rounds in turn: each row is its median run, every round kept.
    again = cli_scale.main(["--scale", "smoke", "--kinds", "numpy", "--repeat", "2", "--data", str(tmp_path / "shards"),
                            "--out", str(tmp_path / "repeat.json")])
    walls = sorted(r["wall_s"] for r in again["rounds"]["numpy"])
    assert len(walls) == 2 and again["runs"]["numpy"]["wall_s"] == walls[0]  # the lower middle of two
    with pytest.raises(SystemExit):
        cli_scale.main(["--scale", "smoke", "--kinds", "numpy", "--repeat", "0"])


@pytest.mark.parametrize("name", ["kernels", "analysis_pass"])
def test_users_flag_chooses_the_sizes(name):
    """``--users`` replaces the scale's sizes (gpu_check.sh keeps the GPU runs at 100k and 1M users)."""
    import importlib

    module = importlib.import_module(f"bench.{name}")
    payload = module.main(["--scale", "smoke", "--users", "300", "--no-torch", "--repeats", "1"])
    assert [r["users"] for r in payload["results"]] == [300]
    with pytest.raises(SystemExit):
        module.main(["--users", "0"])


def test_detector_update_refuses_histories_it_cannot_draw():
    from bench import detector_update

    for flags in (["--seen", "0"], ["--seen", "1.5"], ["--rate", "0"], ["--count-arrays", "0"], ["--history", "-1"]):
        with pytest.raises(SystemExit) as exc:
            detector_update.main([*flags, "--out", ""])
        assert "0 < --seen <= 1, --rate > 0, --count-arrays >= 1, --history >= 0" in str(exc.value), flags


def test_detector_update_draws_counts_on_a_fixed_share_of_the_pairs():
    from bench.detector_update import draw_counts

    draws = draw_counts(np.random.default_rng(0), (4000, 8), seen=0.2, rate=3.0, count_arrays=4)
    assert len(draws) == 4 and all(d.dtype == np.float32 and d.shape == (4000, 8) for d in draws)
    ever = np.any(np.stack(draws) > 0, axis=0)
    # One mask for every draw: the pairs ever active are the mask (a masked pair is silent in every draw, an
    # unmasked one silent in all four with chance e^-12 at rate 3), about a fifth of them.
    assert 0.18 < ever.mean() < 0.22
    assert all(np.all((d > 0) <= ever) for d in draws)
    assert abs(np.mean([d[ever].mean() for d in draws]) - 3.0) < 0.1
    # seen = 1 draws no mask: the same stream as the benchmark's single draw before the flag existed.
    (one,) = draw_counts(np.random.default_rng(5), (50, 3))
    np.testing.assert_array_equal(one, np.random.default_rng(5).poisson(1.0, size=(50, 3)).astype(np.float32))


def test_each_size_that_fits_stops_at_the_first_size_out_of_memory(capsys):
    """A card smaller than the scale was made for (10M users on an 80 GB H100) reports the sizes it holds."""
    import jax

    def measure(n):
        if n >= 300:
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 13.76GiB with allocator GPU_0_bfc")
        return {"users": n, "ms": n / 100}

    payload = {"summary": {"users": 200}}
    rows = _report.each_size_that_fits([100, 200, 300, 400], measure, payload)
    assert rows == [{"users": 100, "ms": 1.0}, {"users": 200, "ms": 2.0}]
    assert payload["out_of_memory"]["users"] == 300 and payload["out_of_memory"]["not_tried"] == [400]
    assert payload["out_of_memory"]["error"].startswith("RESOURCE_EXHAUSTED: Out of memory")
    assert "300 users do not fit in memory" in capsys.readouterr().out
    # The probe processes' errors arrive as text (bench.memory's RuntimeError holds their stderr).
    def probe_process(n):
        if n == 2:
            raise RuntimeError("memory probe failed: Traceback ...\njax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out")
        return n

    probe = {}
    assert _report.each_size_that_fits([1, 2], probe_process, probe) == [1]
    assert probe["out_of_memory"]["error"].startswith("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED")
    # The summary names where the sizes stopped.
    _report.finish(payload, types.SimpleNamespace(out=None), rows, [("users", "N", ",d")])
    assert payload["summary"]["out_of_memory_at_users"] == 300


def test_each_size_that_fits_raises_what_is_not_a_later_size_out_of_memory():
    def out_of_memory(n):
        raise MemoryError("host")

    with pytest.raises(MemoryError):  # nothing measured: the benchmark fails, as before
        _report.each_size_that_fits([1, 2], out_of_memory, {})

    def broken(n):
        if n == 2:
            raise ValueError("a bug, not a size")
        return n

    payload = {}
    with pytest.raises(ValueError, match="a bug"):
        _report.each_size_that_fits([1, 2, 3], broken, payload)
    assert "out_of_memory" not in payload


def test_detector_update_times_the_learned_verdict_beside_the_update(capsys):
    from bench import detector_update

    payload = detector_update.main(["--scale", "smoke", "--verdict", "--repeats", "1", "--min-time", "0",
                                    "--out", ""])
    r = payload["results"][0]
    assert payload["config"]["verdict"] is True
    assert r["timings"]["update_with_verdict"]["median_s"] > 0 and r["verdict_vs_update"] > 0
    assert "with verdict / update" in capsys.readouterr().out
