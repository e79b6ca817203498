"""``fgjax analyze`` as two ``jax.distributed`` processes on localhost (CPU, gloo) writes, between them,
the tables one process writes; a user in both processes' shards stops both with the rule."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fgjax.analysis_job import analyze_log
from fgjax.config import SyntheticConfig, load_config
from fgjax.data import synthetic
from fgjax.errors import OutputError
from fgjax.outputs import read_run_manifest, run_folder, staging_path

SMALL = SyntheticConfig(num_users=240, num_items=150, num_categories=6, num_days=30, users_per_shard=60, seed=5,
                        bad_row_fraction=0.02)
# Processes 0 and 1 get different numbers of users (shards 0 + 2 and 1 + 3 of 60, 60, 60, 50 users), and
# process 1's first window comes later (its shards lose their first days): padding users and one window
# range for all are exercised.
UNEVEN = SyntheticConfig(num_users=230, num_items=150, num_categories=6, num_days=30, users_per_shard=60, seed=5,
                         bad_row_fraction=0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _settings(events, items, detector: str = "adaptive") -> list[str]:
    # Users judged 32 at a time: each process judges its 110-120 users in several blocks (a fori_loop under
    # shard_map), as a process of a real run does (1,024 users a block on a CPU). The population's dispersion on
    # (off by default), so that its sums across processes count.
    return [f"data.path={events}", f"data.items_path={items}", "data.batch_size=700",
            f"analysis.detector.kind={detector}", "analysis.detector.user_block=32",
            "analysis.detector.dispersion_strength=10"]


def _cli(out, settings: list[str], env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "fgjax.cli", "analyze", "--out", str(out), "--no-progress",
               *(a for s in settings for a in ("--set", s))]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _two_processes(out, settings: list[str], devices: int = 1, beside: list[subprocess.Popen] = ()
                   ) -> list[subprocess.CompletedProcess]:
    """``fgjax analyze`` started twice, as the README says (FGJAX_* variables, analysis.distributed), each
    process with ``devices`` CPU devices; then waited for, with the runs ``beside`` after them."""
    port = _free_port()
    base = dict(os.environ, JAX_PLATFORMS="cpu", FGJAX_COORDINATOR=f"localhost:{port}", FGJAX_NUM_PROCESSES="2",
                XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}")
    procs = [_cli(out, ["analysis.distributed=true", *settings], dict(base, FGJAX_PROCESS_ID=str(i)))
             for i in range(2)]
    done = []
    for p in [*procs, *beside]:
        stdout, stderr = p.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def _skip_without_collectives(done: list[subprocess.CompletedProcess]) -> None:
    err = "\n".join(d.stderr[-1500:] for d in done)
    if any(d.returncode for d in done) and "gloo" in err.lower() and ("not" in err.lower()
                                                                       or "unsupported" in err.lower()):
        pytest.skip(f"this jaxlib has no CPU collectives: {err.splitlines()[-1]}")


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def _same_tables(multi, single, rows: int, changes: int) -> None:
    """The tables of ``multi`` are ``single``'s: the same rows, the floats to float32 rounding (the population's
    dispersion is summed in another order across devices)."""
    for name, keys, count in (("forgetting", ["window", "user_id"], rows),
                              ("states", ["window", "user_id", "interest"], changes)):
        one = pq.read_table(single / f"{name}.parquet")
        two = pq.read_table(multi / f"{name}.parquet")
        assert two.num_rows == one.num_rows == count > 0
        assert two.schema.equals(one.schema)
        a, b = _sorted(two, keys), _sorted(one, keys)
        for column in one.column_names:
            x, y = a.column(column), b.column(column)
            if pa.types.is_floating(y.type) or (pa.types.is_fixed_size_list(y.type)
                                                 and pa.types.is_floating(y.type.value_type)):
                x, y = (np.asarray(pc.list_flatten(c) if pa.types.is_fixed_size_list(c.type) else c,
                                   dtype=np.float64) for c in (x, y))
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"{name}.{column}")
            else:
                assert x.equals(y), f"{name}.{column}"


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["adaptive", "level"])
def test_two_processes_write_the_tables_of_one(tmp_path, detector):
    paths = synthetic.generate(UNEVEN, tmp_path / "data")
    for shard in sorted(paths.events_dir.glob("*.parquet"))[1::2]:
        table = pq.read_table(shard)
        time = table.column("timestamp")
        later = pc.min(time).as_py() + dt.timedelta(days=3)
        pq.write_table(table.filter(pc.or_kleene(pc.is_null(time), pc.greater_equal(time, pa.scalar(later, time.type)))),
                       shard)
    # The level rule's carry holds no per-pair detector state (a users-free stub, replicated across processes).
    settings = _settings(paths.events_dir, paths.items_path, detector)
    # The adaptive detector's processes have two CPU devices each (users split four ways); beside them one
    # process splits its users between the two CPU devices fgjax analyze gives it by default.
    devices = 2 if detector == "adaptive" else 1
    beside = [_cli(tmp_path / "devices", settings, dict(os.environ, JAX_PLATFORMS="cpu"))] if devices > 1 else []
    done = _two_processes(tmp_path / "multi", settings, devices, beside)
    _skip_without_collectives(done)
    assert all(d.returncode == 0 for d in done), "\n".join(d.stderr[-3000:] for d in done)
    assert "process 1 of 2: pass 1" in done[1].stdout
    assert devices == 1 or "users split between 4 cpu devices" in done[0].stdout  # process 0 reports
    assert all("users split between 2 cpu devices" in d.stdout for d in done[2:])

    rows, changes = analyze_log(load_config(None, settings), tmp_path / "single", progress=False)
    single = tmp_path / "single"
    for multi in [tmp_path / "multi", *(tmp_path / "devices" for _ in beside)]:
        _same_tables(multi, single, rows, changes)
    multi = tmp_path / "multi"
    # One table per name from a folder of parts, one part per process.
    assert sorted(p.name for p in (multi / "forgetting.parquet").iterdir()) == ["part-00000.parquet",
                                                                                 "part-00001.parquet"]
    # The detector's states (the adaptive one's calibration included) are those of one process on every user.
    states = pq.read_table(multi / "states.parquet").column("state").to_pylist()
    assert "forgotten" in states
    rejects = pq.read_table(multi / "rejects.parquet")
    assert rejects.num_rows == pq.read_table(single / "rejects.parquet").num_rows > 0
    manifest = read_run_manifest(multi)
    assert manifest["kind"] == "analyze"
    assert {"forgetting.parquet/part-00001.parquet", "states.parquet/part-00000.parquet",
            "rejects.parquet/part-00001.parquet", "plots/forgetting.png"} <= set(manifest["runs"]["analyze"]["files"])
    assert not staging_path(multi).exists()


@pytest.mark.slow
def test_a_user_in_two_processes_shards_stops_both(tmp_path):
    paths = synthetic.generate(SMALL, tmp_path / "data")
    shards = sorted(paths.events_dir.glob("*.parquet"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    # Process 0 reads a.parquet, process 1 b.parquet: b holds a few of a's rows.
    a = pq.read_table(shards[0])
    pq.write_table(a, mixed / "a.parquet")
    pq.write_table(pa.concat_tables([pq.read_table(shards[1]), a.slice(0, 5)]), mixed / "b.parquet")
    out = tmp_path / "out"
    done = _two_processes(out, _settings(mixed, paths.items_path))
    _skip_without_collectives(done)
    assert all(d.returncode != 0 for d in done)
    for d in done:
        assert "partitioned by user" in d.stderr and "processes 0, 1" in d.stderr, d.stderr[-2000:]
    assert not out.exists() and not staging_path(out).exists()


def test_an_output_can_change_from_one_file_to_a_folder_of_parts_and_back(tmp_path):
    """A run by several processes writes forgetting.parquet as a folder of parts where a run by one wrote a
    file (and the reverse): the earlier run's file or folder is replaced; a foreign file in the way is not."""
    out = tmp_path / "out"

    def analyze(*names: str) -> None:
        with run_folder(out, "analyze", {}) as stage:
            for name in names:
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                (stage / name).write_text(name)

    analyze("forgetting.parquet", "plots/forgetting.png")
    analyze("forgetting.parquet/part-00000.parquet", "forgetting.parquet/part-00001.parquet")
    assert sorted(p.name for p in (out / "forgetting.parquet").iterdir()) == ["part-00000.parquet",
                                                                               "part-00001.parquet"]
    assert not (out / "plots").exists()
    analyze("forgetting.parquet")
    assert (out / "forgetting.parquet").read_text() == "forgetting.parquet"
    assert set(read_run_manifest(out)["runs"]["analyze"]["files"]) == {"forgetting.parquet"}
    analyze("forgetting.parquet/part-00000.parquet")
    (out / "forgetting.parquet" / "mine.txt").write_text("not fgjax's")
    with pytest.raises(OutputError, match="is a folder"):
        analyze("forgetting.parquet")
    assert (out / "forgetting.parquet" / "mine.txt").is_file()
    assert (out / "forgetting.parquet" / "part-00000.parquet").is_file()


def test_more_devices_than_a_process_has_is_a_config_error(tmp_path):
    """``analysis.devices`` past the process's devices: one line naming the key and what there is."""
    from fgjax.errors import ConfigError

    paths = synthetic.generate(SMALL, tmp_path / "data")
    settings = [*_settings(paths.events_dir, paths.items_path), "analysis.devices=3"]
    with pytest.raises(ConfigError, match=r"analysis.devices=3, but a process has only 1 cpu device\(s\)"):
        analyze_log(load_config(None, settings), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # said before pass 1 read anything


@pytest.mark.slow
def test_a_learned_verdict_on_two_devices_decides_what_it_does_on_one(tmp_path):
    """The users split over two CPU devices (``analysis.cpu_devices``): the learned verdict's vectors reach the
    sharded step replicated (they were placed as scalars and failed), and its states and log-odds are one
    device's."""
    from fgjax import kernels
    from fgjax.analysis.verdict import VerdictFit, save_verdicts

    paths = synthetic.generate(SMALL, tmp_path / "data")
    n = len(kernels.VERDICT_FEATURES)
    weights = np.zeros(n, np.float32)
    weights[kernels.VERDICT_FEATURES.index("log_silence")] = 1.0
    weights[kernels.VERDICT_FEATURES.index("log_rate")] = 0.5
    params = kernels.VerdictParams(np.zeros(n, np.float32), np.ones(n, np.float32), weights, np.float32(-2.0))
    verdict = save_verdicts([VerdictFit(1.0, 0.25, 16, params, 0.0)], tmp_path / "verdict.json")
    settings = [*_settings(paths.events_dir, paths.items_path), f"analysis.detector.verdict_file={verdict}"]
    analyze_log(load_config(None, settings), tmp_path / "one", progress=False)
    done = subprocess.run([sys.executable, "-m", "fgjax.cli", "analyze", "--out", str(tmp_path / "two"),
                           "--no-progress", *(a for s in [*settings, "analysis.cpu_devices=2", "analysis.devices=2"]
                                              for a in ("--set", s))],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "users split between 2 cpu devices" in done.stdout
    one, two = (pq.read_table(tmp_path / name / "states.parquet") for name in ("one", "two"))
    assert one.num_rows > 0 and "forgotten" in one["state"].to_pylist()
    assert one["verdict"].null_count < one.num_rows
    for column in ("user_id", "interest", "window", "state", "previous_state", "silence", "verdict"):
        assert one[column].equals(two[column]), column
