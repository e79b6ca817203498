"""The fgjax command line: help, one-line errors with exit 2, and the quickstart end to end."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fgjax
from fgjax.cli import main

SMALL = ["--set", "synthetic.num_users=300", "--set", "synthetic.num_items=200", "--set", "synthetic.num_days=30",
         "--set", "synthetic.users_per_shard=100", "--set", "train.epochs=2", "--set", "train.batch_size=256",
         "--no-progress"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("quickstart", "generate", "train", "analyze", "fit-verdict", "recommend", "evaluate"):
        assert command in out


def test_console_script_is_installed():
    exe = shutil.which("fgjax")
    assert exe, "the fgjax console script is not on PATH"
    proc = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--set" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--out", "{tmp}/o"], "data.path is empty"),
        (["train", "--out", "{tmp}/o", "--set", "train.epoch=2"], "unknown config key 'train.epoch'"),
        (["train", "--out", "{tmp}/o", "--config", "{tmp}/missing.yaml"], "config file"),
        (["train", "--out", "{tmp}/o", "--set", "data.path={tmp}/nothing_here"], "nothing_here"),
        (["recommend", "--checkpoint", "{tmp}", "--out", "{tmp}/r.parquet"], "not an fgjax checkpoint"),
        (["analyze", "--out", "{tmp}/o", "--set", "analysis.alpha=high"], "analysis.alpha: expected a number"),
        (["analyze", "--out", "{tmp}/o", "--set", "analysis.window_seconds=0"], "analysis.window_seconds: expected a value > 0"),
        (["train", "--out", "{tmp}/o", "--set", "data.path={tmp}/few.parquet"], "no user of the 2 has 3 or more distinct items"),
        (["analyze", "--out", "{tmp}/o", "--set", "data.path={tmp}/few.parquet", "--set", "data.items_path={tmp}/items.parquet"],
         "none of the 4 events has an item with a category"),
        (["train", "--out", "{tmp}/afile/o", "--set", "data.path={tmp}/few.parquet"],
         "afile' is a file, so no folder can be made under it"),
        (["analyze", "--out", "{tmp}/o", "--set", "data.path={tmp}/few.parquet"],
         "the forgetting analysis needs item categories: set data.items_path"),
        (["analyze", "--out", "{tmp}/o", "--set", "data.path={tmp}/few.parquet", "--set",
          "data.items_path={tmp}/items0.csv"], "items0.csv': the table has no rows"),
        (["analyze", "--out", "{tmp}/o", "--set", "data.path={tmp}/few.parquet", "--set",
          "data.items_path={tmp}/items.parquet", "--window", "1e-4"],
         "analysis.window_seconds=0.0001 gives 200,001 windows over the log's 20 seconds, more than analysis.max_windows"),
        (["analyze", "--out", "{tmp}/o", "--set", "data.path={tmp}/few.parquet", "--set",
          "data.items_path={tmp}/items_ok.parquet", "--set", "analysis.detector.verdict_file={tmp}/none.json"],
         "none.json': no such file (`fgjax evaluate --detection` writes verdict.json)"),
        (["analyze", "--out", "{tmp}/o", "--set", "data.path={tmp}/few.parquet", "--set",
          "data.items_path={tmp}/items_ok.parquet", "--set", "analysis.detector.verdict_file={tmp}/weekly.json"],
         "no fit for windows of 1 days and fade_share 0.25 (it has: 7 d at 0.25)"),
    ],
)
def test_errors_are_one_line_with_exit_2(tmp_path, capsys, args, message):
    from fgjax.analysis.verdict import VerdictFit, save_verdicts
    from fgjax.kernels import VERDICT_FEATURES, VerdictParams

    n = len(VERDICT_FEATURES)
    weekly = VerdictParams(np.zeros(n, np.float32), np.ones(n, np.float32), np.zeros(n, np.float32), np.float32(0))
    save_verdicts([VerdictFit(7.0, 0.25, 16, weekly, 0.0)], tmp_path / "weekly.json")
    pq.write_table(pa.table({"item_id": [1, 2, 3], "category": ["a", "b", "a"]}), tmp_path / "items_ok.parquet")
    pq.write_table(pa.table({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 3],
                             "timestamp": [1.7e9, 1.7e9 + 5, 1.7e9 + 9, 1.7e9 + 20]}), tmp_path / "few.parquet")
    pq.write_table(pa.table({"item_id": [100, 200], "category": ["a", "b"]}), tmp_path / "items.parquet")
    (tmp_path / "items0.csv").write_text("item_id,category\n")
    (tmp_path / "afile").write_text("a file where a folder is expected")
    code, out, err = run_cli([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    assert err.startswith("fgjax: error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_a_bad_verdict_file_fails_before_the_detection_matrix_runs(tmp_path, capsys):
    code, out, err = run_cli(["evaluate", "--detection", "--out", tmp_path / "o", "--set", "evaluate.matrix_users=20",
                              "--set", "evaluate.detection_stories=[classic]", "--set", "synthetic.num_users=20",
                              "--set", f"analysis.detector.verdict_file={tmp_path / 'none.json'}"], capsys)
    assert code == 2 and err.count("\n") == 1 and "none.json': no such file" in err
    assert "detection matrix" not in out and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["recommend", "--checkpoint", "x", "--k", "-3", "--out", "y"], "argument --k: expected a positive integer"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["train"], "the following arguments are required: --out"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fgjax: error: ") and err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_quickstart_then_every_subcommand(tmp_path, capsys):
    out = tmp_path / "qs"
    code, stdout, err = run_cli(["quickstart", "--out", out, *SMALL], capsys)
    assert code == 0, err
    assert "rejected" in stdout and "test embedding_mlp+forgetting" in stdout
    # Daily windows: the shipped verdict decides (auto), and the run says which fit: a 30-day log, the 30-day one.
    assert "learned verdict: the built-in fit (auto), its fit for 1-day windows of logs of 30 windows" in stdout
    recs = pq.read_table(out / "recommendations.parquet")
    assert recs.column_names == ["user_id", "rank", "item_id", "score", "interest", "interest_state", "f_k",
                                 "last_active", "trend", "period", "explore"]
    assert recs.num_rows == 10 * len(set(recs["user_id"].to_pylist()))
    forgetting = pq.read_table(out / "forgetting.parquet")
    assert forgetting.column_names == ["user_id", "window", "window_start", "F", "top_interests", "top_p"]
    assert not np.isnan(np.array(forgetting["F"])).any()
    metrics = json.loads((out / "metrics.json").read_text())
    data = metrics["data"]
    assert data["rows_read"] == data["rows_used"] + sum(data["rejected"].values()) and data["rejected"]
    assert pq.read_table(out / "rejects.parquet").num_rows == sum(data["rejected"].values())
    results = metrics["evaluation"]["results"]
    assert set(results) == {"popularity", "embedding_mlp", "embedding_mlp+forgetting"}
    assert all(0 <= v <= 1 for r in results.values() for v in r.values())
    assert len(metrics["train"]["history"]) == 2
    for png in ("training_curves.png", "forgetting.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = fgjax.load(out / "checkpoint")
    assert model.has_forgetting

    # recommend by raw IDs from the checkpoint
    some = recs["user_id"].to_pylist()[:1] + recs["user_id"].to_pylist()[10:11]
    code, stdout, err = run_cli(["recommend", "--checkpoint", out / "checkpoint", "--users", ",".join(map(str, some)),
                                 "--k", 3, "--out", tmp_path / "r.parquet"], capsys)
    assert code == 0, err
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 6
    # A user given twice is served once, from a list or a file; a file of another ID type is refused.
    code, stdout, err = run_cli(["recommend", "--checkpoint", out / "checkpoint", "--users", f"{some[0]},{some[0]}",
                                 "--k", 3, "--out", tmp_path / "r1.parquet"], capsys)
    assert code == 0 and pq.read_table(tmp_path / "r1.parquet").num_rows == 3, err
    pq.write_table(pa.table({"user_id": pa.array([some[1], some[0], some[1]], pa.int32())}), tmp_path / "u.parquet")
    code, stdout, err = run_cli(["recommend", "--checkpoint", out / "checkpoint", "--users", tmp_path / "u.parquet",
                                 "--k", 3, "--out", tmp_path / "r1.parquet"], capsys)
    assert code == 0, err
    assert pq.read_table(tmp_path / "r1.parquet")["user_id"].to_pylist() == [some[1]] * 3 + [some[0]] * 3
    pq.write_table(pa.table({"user_id": [float(some[0])]}), tmp_path / "u.parquet")
    code, stdout, err = run_cli(["recommend", "--checkpoint", out / "checkpoint", "--users", tmp_path / "u.parquet",
                                 "--out", tmp_path / "r1.parquet"], capsys)
    assert code == 2 and "u.parquet': user IDs of type double, the checkpoint's are int64" in err
    pq.write_table(pa.table({"user_id": pa.array([some[0], None], pa.int64())}), tmp_path / "u.parquet")
    code, stdout, err = run_cli(["recommend", "--checkpoint", out / "checkpoint", "--users", tmp_path / "u.parquet",
                                 "--out", tmp_path / "r1.parquet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "u.parquet': 1 null user IDs" in err
    # An ID no int64 user can have is refused in one line (it raised OverflowError before).
    for huge in ("99999999999999999999", "-99999999999999999999"):
        code, stdout, err = run_cli(["recommend", "--checkpoint", out / "checkpoint", f"--users=1,{huge}",
                                     "--out", tmp_path / "r2.parquet"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"--users: {huge} is outside the checkpoint's int64" in err

    # analyze and evaluate the generated data through their own subcommands
    data_args = ["--set", f"data.path={out}/data/events", "--set", f"data.items_path={out}/data/items.parquet", *SMALL]
    code, stdout, err = run_cli(["analyze", "--out", tmp_path / "an", *data_args], capsys)
    assert code == 0, err
    # Both analyze every event of the same log: the same table.
    assert pq.read_table(tmp_path / "an" / "forgetting.parquet").equals(forgetting)
    from fgjax.analysis import STATE_COLUMNS

    states = pq.read_table(tmp_path / "an" / "states.parquet")
    assert tuple(states.column_names) == STATE_COLUMNS and states.num_rows > 0
    assert pq.read_table(out / "states.parquet").equals(states)  # the quickstart wrote the same changes
    # The same data in weekly windows through the shorthand flags.
    code, stdout, err = run_cli(["analyze", "--out", tmp_path / "an7", "--events", f"{out}/data/events", "--items",
                                 f"{out}/data/items.parquet", "--window", "7d", *SMALL], capsys)
    assert code == 0, err
    weekly = pq.read_table(tmp_path / "an7" / "forgetting.parquet")
    starts = np.unique(np.array(weekly["window_start"].cast("int64")))
    assert set(np.diff(starts).tolist()) == {7 * 86400 * 10**6}
    # verdict_file: auto (the default) lends daily and weekly windows the shipped fit for the log's span (a short
    # one here: the fit for 60-day logs) and says so once the log's windows are known.
    from fgjax.analysis import BUILTIN_PATH, load_verdict

    span = load_verdict(BUILTIN_PATH, 7.0, 0.25, 16, len(starts)).log_windows
    assert span == 9 and span != load_verdict(BUILTIN_PATH, 7.0, 0.25, 16, None).log_windows  # 60 days begin 9
    assert (f"learned verdict: the built-in fit (auto), its fit for 7-day windows of logs of {span} windows and "
            "fades below 25%") in stdout
    assert stdout.index(f"{len(starts)} windows\n") < stdout.index("learned verdict:")
    silent = np.asarray(states["silence"].to_pylist()) > 0  # daily: the verdict's log-odds on the silent rows
    assert silent.any() and np.array_equal(np.asarray(states["verdict"].is_valid()), silent)
    # A learned verdict that reads only the silence, through the streamed analysis: its log-odds in states.parquet.
    from fgjax.analysis.verdict import VerdictFit, save_verdicts
    from fgjax.kernels import VERDICT_FEATURES, VerdictParams

    n = len(VERDICT_FEATURES)
    weights = np.zeros(n, np.float32)
    weights[VERDICT_FEATURES.index("log_silence")] = 1.0
    verdict = save_verdicts([VerdictFit(7.0, 0.25, 16, VerdictParams(np.zeros(n, np.float32), np.ones(n, np.float32),
                                                                     weights, np.float32(-1.0)), 0.0)],
                            tmp_path / "silence.json")
    code, stdout, err = run_cli(["analyze", "--out", tmp_path / "an7v", "--events", f"{out}/data/events", "--items",
                                 f"{out}/data/items.parquet", "--window", "7d", *SMALL, "--set",
                                 f"analysis.detector.verdict_file={verdict}"], capsys)
    assert code == 0, err
    assert "log-odds threshold 0, fitted on 0 stories and draws (not named)" in stdout
    shipped = pq.read_table(tmp_path / "an7" / "states.parquet").to_pydict()
    assert all((v is not None) == (s > 0) for v, s in zip(shipped["verdict"], shipped["silence"]))
    judged = pq.read_table(tmp_path / "an7v" / "states.parquet").to_pydict()
    silent = np.array(judged["silence"]) > 0
    assert silent.any() and not silent.all()
    assert all(v is None for v, s in zip(judged["verdict"], silent) if not s)
    np.testing.assert_allclose([v for v, s in zip(judged["verdict"], silent) if s],
                               np.log1p(np.array(judged["silence"])[silent]) - 1.0, atol=1e-5)
    code, stdout, err = run_cli(["evaluate", "--out", tmp_path / "ev", "--checkpoint", out / "checkpoint",
                                 *data_args], capsys)
    assert code == 0, err
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())["evaluation"]["results"]
    assert evaluated.keys() == results.keys()
    for name in results:
        for metric, value in results[name].items():
            assert evaluated[name][metric] == pytest.approx(value, abs=1e-6), (name, metric)

    # rerunning quickstart resumes from the finished checkpoint: nothing retrained, same metrics
    code, stdout, err = run_cli(["quickstart", "--out", out, *SMALL], capsys)
    assert code == 0, err
    assert "resumed training from step" in stdout
    again = json.loads((out / "metrics.json").read_text())["evaluation"]["results"]
    assert again == results


@pytest.mark.slow
def test_evaluate_detection_writes_the_report_and_plots(tmp_path, capsys):
    out = tmp_path / "det"
    small = ["--set", "synthetic.num_users=150", "--set", "synthetic.users_per_shard=75", "--set", "synthetic.num_days=140",
             "--set", "analysis.window_seconds=604800", "--set", "evaluate.false_alarm_sweep=[0.0001,0.002,0.05]",
             "--set", "evaluate.matrix_users=60", "--set", "evaluate.matrix_days=56",
             "--set", "evaluate.detection_stories=[classic,seasonal]", "--set", "evaluate.silence_sweep=[2,4]",
             "--set", "evaluate.verdict_short_days=[]"]  # the spans' fits: tests/test_matrix.py
    code, stdout, err = run_cli(["evaluate", "--detection", "--out", out, *small], capsys)
    assert code == 0, err
    # Weekly windows: the shipped verdict decides the single run's states (verdict_file: auto), and it says so.
    headline = "| fgjax adaptive + learned verdict (auto) |"
    assert headline in stdout and "seed_F_threshold" in stdout and "no_activity_windows" in stdout
    assert "learned verdict: the built-in fit (auto)" in stdout
    # The matrix story x window comes first, and is written beside the single run.
    assert stdout.index("| classic | daily |") < stdout.index(headline)
    assert "| seasonal | weekly |" in stdout and "silence rule: N, F1, delay, loyal" in stdout
    assert stdout.index("| met | | |") < stdout.index(headline)  # the targets, after the matrix
    matrix = json.loads((out / "matrix.json").read_text())["matrix"]
    assert set(matrix["cells"]["0.25"]) == {"classic", "seasonal"}
    assert (out / "matrix.md").read_text().startswith("Fades forgotten below 25% of their former rate")
    report = json.loads((out / "detection.json").read_text())["report"]
    overall = report["detector"]["overall"]
    assert overall["true_positives"] > 0 and 0 <= overall["precision"] <= 1 and 0 <= overall["recall"] <= 1
    assert [p["knob"] for p in report["curves"]["detector"]] == [0.0001, 0.002, 0.05]
    # Each of the detector and the rule at the other's loyal share, when a knob of the sweep flags so few.
    for row in report["matched"].values():
        assert row["knob"] is not None and row["overall"]["pairs"] == overall["pairs"]
    assert set(report["detector"]["cases"]) >= {"stable", "fading", "stopped", "periodic", "reactivated", "bursty", "new"}
    assert (out / "detection.md").read_text().startswith("| detector |")
    assert pq.read_table(out / "states.parquet").num_rows > 0
    for png in ("detection_pr.png", "forgetting.png", "interest_timeline.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The learned verdict: its targets printed, its fit written, and that fit judging the single run's analysis.
    assert "Targets (the learned verdict, fitted leave-one-story-out)" in stdout
    fits = json.loads((out / "verdict.json").read_text())["fits"]
    assert {(f["window_days"], f["fade_share"]) for f in fits} == {(1.0, 0.25), (1.0, 0.05), (7.0, 0.25), (7.0, 0.05)}
    code, stdout, err = run_cli(["evaluate", "--detection", "--out", tmp_path / "det_v", *small, "--set",
                                 "evaluate.detection_stories=[]", "--set",
                                 f"analysis.detector.verdict_file={out / 'verdict.json'}"], capsys)
    assert code == 0, err
    assert (f"learned verdict: {out / 'verdict.json'}, its fit for 7-day windows of logs of 8 windows and fades "
            "below 25%, log-odds threshold ") in stdout and "fitted on 4 stories and draws (classic, seasonal, classic (family" in stdout
    own, learned = (pq.read_table(p / "states.parquet") for p in (out, tmp_path / "det_v"))
    assert "forgotten" in learned["state"].to_pylist() and not learned.equals(own)


@pytest.mark.parametrize("window", ["0d", "-3", "7x", "soon", "inf"])
def test_bad_window_is_one_line(window, capsys):
    with pytest.raises(SystemExit) as info:
        main(["analyze", "--out", "/tmp/never", "--window", window])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fgjax: error: ") and err.count("\n") == 1 and "--window" in err and window in err



def test_the_cli_keeps_compiled_programs_between_runs(tmp_path):
    """FGJAX_COMPILE_CACHE (default ~/.cache/fgjax/xla, 'off' disables) becomes JAX's persistent cache;
    JAX's own JAX_COMPILATION_CACHE_DIR wins."""
    from fgjax.cli import compile_cache_dir

    assert compile_cache_dir({}) == str(Path.home() / ".cache" / "fgjax" / "xla")
    assert compile_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/fgjax/xla"
    assert compile_cache_dir({"FGJAX_COMPILE_CACHE": str(tmp_path)}) == str(tmp_path)
    assert compile_cache_dir({"FGJAX_COMPILE_CACHE": "off"}) is None
    assert compile_cache_dir({"FGJAX_COMPILE_CACHE": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": "/j"}) is None
    probe = ("import jax; from fgjax.cli import use_compile_cache; use_compile_cache(); "
             "print(jax.config.jax_compilation_cache_dir)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    for setting, want in ((str(tmp_path / "xla"), str(tmp_path / "xla")), ("off", "None")):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, "FGJAX_COMPILE_CACHE": setting},
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == want


def test_fgjax_analyze_splits_the_cpu_unless_the_user_chose_or_jax_started():
    """``split_cpu`` (what ``fgjax analyze`` runs before JAX starts): N CPU devices, at most one per core; left
    alone for 0, for the user's JAX_NUM_CPU_DEVICES or XLA flag, and once JAX has run."""
    probe = ("import os, jax; from fgjax.analysis_job import split_cpu\n"
             "set_zero = split_cpu(0)\n"
             "set_many = split_cpu(64)\n"
             "devices = len(jax.devices())\n"
             "print(set_zero, set_many, devices, split_cpu(2), len(jax.devices()), os.cpu_count())\n")
    base = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    flags = base.get("XLA_FLAGS", "")
    runs = {name: subprocess.Popen([sys.executable, "-c", probe], env=env, stdout=subprocess.PIPE, text=True)
            for name, env in (("default", base), ("jax_env", {**base, "JAX_NUM_CPU_DEVICES": "1"}),
                              ("xla_flag", {**base, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=1"}))}
    out = {name: p.communicate(timeout=120)[0].split() for name, p in runs.items()}
    cores = int(out["default"][-1])
    split = cores if cores > 1 else 0
    # 0 leaves it; 64 gives one device per core; once JAX runs, a second call changes nothing.
    assert out["default"][:5] == ["0", str(split), str(max(split, 1)), "0", str(max(split, 1))]
    assert out["jax_env"][:5] == out["xla_flag"][:5] == ["0", "0", "1", "0", "1"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_cli_returns_freed_blocks_to_the_system():
    """Without fixed thresholds glibc keeps a freed 16 MB block in its heap once one was freed (RSS stays up);
    with ``return_freed_memory`` (what ``fgjax`` runs first) it goes back."""
    code = ("import sys, numpy as np\n"
            "from fgjax.cli import return_freed_memory\n"
            "assert return_freed_memory() if sys.argv[1] == 'on' else True\n"
            "def rss():\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) / 1e3\n"
            "base = rss()\n"
            "for _ in range(3):\n"
            "    a = np.ones(16 << 20, np.uint8); del a\n"
            "print(rss() - base)\n")
    kept = {mode: float(subprocess.run([sys.executable, "-c", code, mode], check=True, capture_output=True,
                                       text=True, timeout=120).stdout) for mode in ("off", "on")}
    assert kept["off"] > 8 and kept["on"] < 4, kept


def test_out_of_memory_is_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    """A run too large for the device (10M users x 32 on an 80 GB H100, 2026-12-05) is an error, not a traceback."""
    import jax

    from fgjax import cli

    oom = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 13.76GiB with "
                                     "allocator GPU_0_bfc on device 0. [executable_name='jit_window_step']")

    def raises(error):
        def run(args):
            raise error
        return run

    monkeypatch.setattr(cli, "run", raises(oom))
    assert cli.main(["analyze", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fgjax: error: RESOURCE_EXHAUSTED: Out of memory while trying to "
                                                   "allocate 13.76GiB with allocator GPU_0_bfc on device 0: this run ")
    assert "analysis.devices" in err and "executable_name" not in err
    # Raised while handling it elsewhere (a writer's error, say): the cause is found.
    try:
        raise oom
    except jax.errors.JaxRuntimeError as cause:
        wrapped = RuntimeError("the writer thread failed")
        wrapped.__cause__ = cause
    monkeypatch.setattr(cli, "run", raises(wrapped))
    assert cli.main(["train", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Out of memory" in err and "fewer users or items" in err
    monkeypatch.setattr(cli, "run", raises(MemoryError()))
    assert cli.main(["train", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("fgjax: error: out of host memory: this run does not fit in memory")
    # Any other error is not hidden, also where its chain of causes loops back on itself.
    first, second = ValueError("a"), KeyError("b")
    first.__context__, second.__context__ = second, first
    assert cli.out_of_memory_message(first, "analyze") is None
    monkeypatch.setattr(cli, "run", raises(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["train", "--out", str(tmp_path / "t")])
