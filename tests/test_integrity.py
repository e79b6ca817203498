"""Nothing lost, nothing served wrong (issue 11): a damage corpus for checkpoints and output folders.

Every file of a small checkpoint is truncated, emptied, bit-flipped and
removed; each case must give one clear ``CheckpointError`` naming the file, or
the documented behaviour (files a service does not read leave what it serves
unchanged and are caught by ``verify`` and by a resumed run, which falls back
to the last intact step). Output folders are tried with foreign files, runs
stopped at several points and reruns with other settings. Everything runs
in-process on a tiny model, plus one CLI subprocess for the exit status.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fgjax
from fgjax import pipeline
from fgjax.checkpoint import TrainCheckpoints, forget, verify
from fgjax.cli import main
from fgjax.config import load_config
from fgjax.errors import CheckpointError, CheckpointWarning, ConfigError, DataError, FgjaxWarning, OutputError
from fgjax.models import abstract_params
from fgjax.outputs import RUN_MANIFEST, staging_path

from conftest import make_log

USERS = [1000, 1001, 1031, 999999]  # three known users and an unknown one
MODES = ("truncate", "empty", "flip", "remove")


def _write_log(log, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    events, items = folder / "events.parquet", folder / "items.parquet"
    pq.write_table(pa.table({"user_id": log.users.decode(log.user), "item_id": log.items.decode(log.item),
                             "timestamp": log.timestamp}), events)
    pq.write_table(pa.table({"item_id": log.items.values, "category": log.categories.decode(log.item_category)}),
                   items)
    return events, items


def _config(events: Path, items: Path, *extra: str):
    return load_config(None, [f"data.path={events}", f"data.items_path={items}", "train.batch_size=64",
                              "train.epochs=2", "train.negatives=2", "model.embed_dim=8", "model.hidden_dim=16",
                              "analysis.detector.kind=level", *extra])  # the level rule: the detector is not tested here


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished ``train`` run (the CLI's job) on a tiny log: (out, config, recommendations)."""
    root = tmp_path_factory.mktemp("integrity")
    events, items = _write_log(make_log(num_users=32, num_items=20, events_per_user=10), root / "data")
    config = _config(events, items)
    out = root / "run"
    pipeline.train_model(config, out, report=lambda _: None, progress=False)
    return out, config, fgjax.load(out / "checkpoint").recommend(USERS, k=3)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _damage(path: Path, mode: str) -> None:
    data = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "empty":
        path.write_bytes(b"")
    elif mode == "flip":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
    else:
        path.unlink()


def _largest(folder: Path) -> Path:
    """The largest file under ``folder`` (an array's data)."""
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _served_parts(ckpt: Path) -> tuple[str, ...]:
    """The files ``fgjax.load`` reads: everything but the optimizer state and the older steps."""
    latest = max(int(p.name) for p in (ckpt / "train").iterdir())
    return ("fgjax.json", "vocab/", "serving.json", "serving/", f"train/{latest}/")


def _is_served(name: str, served: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith("/") and name.startswith(p)) for p in served) and "/state/" not in name


# ---------------------------------------------------------------- checkpoint damage corpus


def test_every_file_damaged_every_way_is_one_clear_error_or_served_intact(run, tmp_path):
    out, _, want = run
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", ckpt)
    files = sorted(_tree(ckpt))
    served = _served_parts(ckpt)
    assert len(files) > 40 and any("/state/" in f for f in files) and any(f.startswith("train/1/") for f in files)
    refused = unread = 0
    for name in files:
        path = ckpt / name
        original = path.read_bytes()
        for mode in MODES:
            _damage(path, mode)
            try:
                if _is_served(name, served):
                    with pytest.raises(CheckpointError) as info:
                        fgjax.load(ckpt).recommend(USERS, k=3)
                    message = str(info.value)
                    assert "\n" not in message and name.split("/")[-1] in message, (name, mode, message)
                    refused += 1
                else:  # not read when serving: the full check names it (and a resumed run sets its step aside)
                    with pytest.raises(CheckpointError, match=f"'{path}' is (damaged|missing)"):
                        verify(ckpt)
                    unread += 1
            finally:
                path.write_bytes(original)
    assert refused > 20 and unread > 20
    # Whole folders removed, and a vocabulary replaced by another valid one (fewer users).
    for folder in ("vocab", "serving", f"train/{max(int(p.name) for p in (ckpt / 'train').iterdir())}",
                   "train/1/params"):
        shutil.move(ckpt / folder, tmp_path / "aside")
        try:
            with pytest.raises(CheckpointError, match=rf"'{ckpt / folder}' is missing \(the checkpoint manifest lists "
                                                      r"\d+ files in it\)"):
                verify(ckpt)
            if folder != "train/1/params":
                with pytest.raises(CheckpointError, match=rf"'{ckpt / folder}/?\S*' is missing"):
                    fgjax.load(ckpt)
        finally:
            shutil.move(tmp_path / "aside", ckpt / folder)
    users = ckpt / "vocab" / "users.parquet"
    original = users.read_bytes()
    pq.write_table(pq.read_table(users).slice(0, 20), users)
    with pytest.raises(CheckpointError, match=rf"'{users}' is damaged"):
        fgjax.load(ckpt)
    users.write_bytes(original)
    # Files a service does not read change nothing it serves, even all of them at once.
    for name in files:
        if not _is_served(name, served):
            _damage(ckpt / name, "truncate")
    assert fgjax.load(ckpt).recommend(USERS, k=3).equals(want)


def test_a_damaged_checkpoint_is_exit_2_one_line_in_the_cli(run, tmp_path):
    """The issue's worst case: a vocabulary with fewer users printed its line, then asyncio tracebacks."""
    out, _, _ = run
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", ckpt)
    users = ckpt / "vocab" / "users.parquet"
    pq.write_table(pq.read_table(users).slice(0, 20), users)
    proc = subprocess.run([sys.executable, "-m", "fgjax.cli", "recommend", "--checkpoint", str(ckpt), "--users",
                           "1000", "--out", str(tmp_path / "r.parquet")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("fgjax: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert f"'{users}' is damaged" in proc.stderr and "Traceback" not in proc.stderr and "Event loop" not in proc.stderr
    assert not (tmp_path / "r.parquet").exists()


def test_non_finite_params_are_refused(run, tmp_path):
    out, config, _ = run
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", ckpt)
    model = fgjax.load(ckpt)
    _, abstract = abstract_params(model.config, len(model.users), len(model.items))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # an intact checkpoint opens without a fallback
        with TrainCheckpoints(ckpt) as store:
            params, _, meta = store.restore(abstract, None, sharding=jax_device())
            params = dict(params, out={**params["out"], "bias": np.full((1,), np.nan, np.float32)})
            store.save(model.step + 1, params, {"any": np.zeros(1)}, {**meta, "step": model.step + 1})
    with pytest.raises(CheckpointError, match=r"params': parameter 'out/bias' holds NaN or infinite values"):
        fgjax.load(ckpt)
    assert fgjax.load(ckpt, step=model.step).step == model.step  # the earlier step still serves


def test_incomplete_checkpoints_are_refused_saying_what_is_missing_and_how_to_rebuild(run, tmp_path):
    out, config, want = run
    ckpt = tmp_path / "run" / "checkpoint"
    shutil.copytree(out / "checkpoint", ckpt)
    # A run stopped after training, before the serving state: refused, not served half-configured.
    shutil.rmtree(ckpt / "serving")
    (ckpt / "serving.json").unlink()
    forget(ckpt, "serving", "serving.json")
    with pytest.raises(CheckpointError, match=r"has no serving state \(serving.json and serving/.*the run stopped "
                                              r"before it\): re-run the command that wrote it"):
        fgjax.load(ckpt)
    # Rebuilt as the message says: the same training run resumes (nothing retrained) and writes it.
    fitted = pipeline.fit(config, pipeline.prepare(config, tmp_path / "run"), tmp_path / "run", progress=False)
    assert fitted.trained.resumed_from == fgjax.load(out / "checkpoint").step
    assert fgjax.load(ckpt).recommend(USERS, k=3).equals(want)
    # Categories gone while the serving state holds a forgetting analysis over them.
    (ckpt / "vocab" / "categories.parquet").unlink()
    with pytest.raises(CheckpointError, match=r"categories.parquet' is missing \(the checkpoint manifest lists it\)"):
        fgjax.load(ckpt)
    forget(ckpt, "vocab/categories.parquet")
    with pytest.raises(CheckpointError, match=r"categories.parquet' is missing: the serving state holds a forgetting "
                                              r"analysis over item categories.*re-run the command"):
        fgjax.load(ckpt)
    # No training step at all (stopped before the first checkpoint).
    forget(ckpt, "train")
    with pytest.raises(CheckpointError, match="holds no completed training step"):
        fgjax.load(ckpt)
    # Not a checkpoint, and a manifest that is damaged itself.
    with pytest.raises(CheckpointError, match="is not an fgjax checkpoint"):
        fgjax.load(tmp_path)
    manifest = json.loads((ckpt / "fgjax.json").read_text())
    manifest["files"]["vocab/users.parquet"]["size"] += 1
    (ckpt / "fgjax.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"fgjax.json' is damaged: its list of files does not match"):
        fgjax.load(ckpt)


def test_resume_falls_back_to_the_last_intact_step_with_a_warning(run, tmp_path):
    out, config, _ = run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    ckpt = folder / "checkpoint"
    whole = fgjax.load(ckpt)
    latest = whole.step
    _damage(_largest(ckpt / "train" / str(latest) / "state"), "flip")
    shutil.copytree(ckpt / "train" / str(latest), ckpt / "train" / str(latest + 7))  # unfinished: not in the manifest
    prepared = pipeline.prepare(config, folder)
    with pytest.warns(CheckpointWarning) as caught:
        fitted = pipeline.fit(config, prepared, folder, progress=False)
    message = str(caught[0].message)
    assert f"step {latest + 7} was not finished" in message and f"step {latest} is damaged" in message
    assert message.endswith(f"resuming from step {latest - 1}") and "damaged/step-" in message
    assert fitted.trained.resumed_from == latest - 1 and fitted.trained.steps == latest
    resumed = fgjax.load(ckpt)
    for a, b in zip(jax_leaves(whole.params), jax_leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)  # the same params as the uninterrupted run
    verify(ckpt)  # every file the manifest lists is intact again
    assert sorted(p.name for p in (ckpt / "damaged").iterdir()) == [f"step-{latest}", f"step-{latest + 7}"]
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # no epoch twice


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def jax_device():
    import jax

    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


# ---------------------------------------------------------------- output folders


def test_foreign_and_other_kind_folders_are_refused_and_left_untouched(run, tmp_path):
    out, config, _ = run
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not fgjax's")
    before = _tree(foreign)
    with pytest.raises(OutputError, match=r"is not empty and is not an fgjax output folder: it holds notes.txt; "
                                          r".*--overwrite"):
        pipeline.analyze_only(config, foreign, progress=False)
    assert _tree(foreign) == before and not staging_path(foreign).exists()
    # A train folder is not an analyze folder; evaluate may write beside the checkpoint it evaluates.
    copy = tmp_path / "train"
    shutil.copytree(out, copy)
    before = _tree(copy)
    with pytest.raises(OutputError, match=r"holds the outputs of fgjax train, not of analyze: .*--overwrite"):
        pipeline.analyze_only(config, copy, progress=False)
    assert _tree(copy) == before
    # --overwrite writes there, keeps files fgjax did not write, and names them.
    with pytest.warns(FgjaxWarning, match=r"also holds files fgjax did not write, left in place: notes.txt"):
        pipeline.analyze_only(config, foreign, progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "not fgjax's" and (foreign / "forgetting.parquet").is_file()
    manifest = json.loads((foreign / RUN_MANIFEST).read_text())
    assert manifest["kind"] == "analyze" and set(manifest["runs"]) == {"analyze"}
    run_record = manifest["runs"]["analyze"]
    assert {"config", "versions", "started", "finished", "files"} <= set(run_record)
    assert set(run_record["files"]) == {"rejects.parquet", "forgetting.parquet", "states.parquet",
                                        "plots/forgetting.png"}
    assert run_record["versions"]["fgjax"] == fgjax.__version__ and "jax" in run_record["versions"]


def test_a_refused_rerun_leaves_the_earlier_run_as_it_was(run, tmp_path):
    out, config, _ = run
    analyzed = tmp_path / "analyzed"
    pipeline.analyze_only(config, analyzed, progress=False)
    before = _tree(analyzed)
    # Rerun with data that has no valid row: refused, the earlier outputs stay whole (no mixing); the rows it
    # rejected, which say why, are kept beside the folder.
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user_id": [1, None], "item_id": [1, 2], "timestamp": [-3.1e8, 1.7e9]}), bad)
    kept = tmp_path / "analyzed.failed-rejects.parquet"
    with pytest.raises(DataError, match=rf"no valid rows .*rejects in '{kept}' \(this failed run's\)"):
        pipeline.analyze_only(dataclasses.replace(config, data=dataclasses.replace(config.data, path=str(bad))),
                              analyzed, progress=False)
    assert _tree(analyzed) == before and not staging_path(analyzed).exists()
    assert pq.read_table(kept).column("reason").to_pylist() == ["timestamp out of range", "null user_id"]
    # A train rerun with other settings into a finished run: refused before anything in it changes.
    copy = tmp_path / "train"
    shutil.copytree(out, copy)
    before = _tree(copy)
    other = load_config(None, [f"data.path={config.data.path}", f"data.items_path={config.data.items_path}",
                               "train.batch_size=32", "train.epochs=2", "train.negatives=2", "model.embed_dim=8",
                               "model.hidden_dim=16"])
    with pytest.raises(CheckpointError, match=rf"'{copy / 'checkpoint'}' holds a run with other data or settings "
                                              r"\(differs in: batch_size\).*--overwrite"):
        pipeline.train_model(other, copy, report=lambda _: None, progress=False)
    assert _tree(copy) == before and not staging_path(copy).exists()


def test_runs_stopped_at_several_points_leave_out_whole_and_resume(run, tmp_path, monkeypatch):
    out, config, want = run
    target = tmp_path / "run"

    def stop(*_, **__):
        raise KeyboardInterrupt  # what a kill leaves: nothing after this point runs

    with monkeypatch.context() as patch:  # stopped while reading: nothing to resume, nothing in OUT
        patch.setattr(pipeline, "split_log", stop)
        with pytest.raises(KeyboardInterrupt):
            pipeline.train_model(config, target, report=lambda _: None, progress=False)
    assert not target.exists()
    with monkeypatch.context() as patch:  # stopped after training, before the serving state
        patch.setattr(pipeline, "analyze", stop)
        with pytest.raises(KeyboardInterrupt):
            pipeline.train_model(config, target, report=lambda _: None, progress=False)
    assert not target.exists() and (staging_path(target) / "checkpoint" / "train").is_dir()
    reports = []
    pipeline.train_model(config, target, report=reports.append, progress=False)
    assert any("resuming the checkpoint of a run" in r for r in reports)
    assert any(r.startswith("resumed training from step") for r in reports)
    assert fgjax.load(target / "checkpoint").recommend(USERS, k=3).equals(want)
    assert _epochs(target) == _epochs(out)  # every epoch once, as the uninterrupted run logged it
    finished = _tree(target)
    with monkeypatch.context() as patch:  # a rerun stopped after its analysis: OUT is the finished run, whole
        patch.setattr(pipeline, "plot_training_curves", stop)
        with pytest.raises(KeyboardInterrupt):
            pipeline.train_model(config, target, report=lambda _: None, progress=False)
    assert _tree(target) == finished
    verify(target / "checkpoint")


def _epochs(folder: Path) -> list[dict]:
    """metrics.jsonl without the wall seconds (the one field two runs may differ in)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_quickstart_never_deletes_or_reads_files_it_did_not_write(tmp_path):
    small = ["synthetic.num_users=60", "synthetic.num_items=40", "synthetic.num_days=14", "synthetic.users_per_shard=20",
             "train.epochs=1", "train.batch_size=128", "model.embed_dim=8", "model.hidden_dim=16",
             "analysis.window_seconds=172800"]
    config = load_config(None, small)
    out = tmp_path / "qs"
    events = out / "data" / "events"
    events.mkdir(parents=True)
    (events / "part-00007.parquet").write_bytes(b"someone else's shard")
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "timestamp": [1.7e9]}), events / "mine.parquet")
    before = _tree(out)
    with pytest.raises(OutputError, match="is not empty and is not an fgjax output folder: it holds data/"):
        pipeline.quickstart(config, out, report=lambda _: None, progress=False)
    assert _tree(out) == before
    with pytest.warns(FgjaxWarning, match=r"left in place: data/events/mine.parquet, data/events/part-00007.parquet"):
        metrics = pipeline.quickstart(config, out, report=lambda _: None, progress=False, overwrite=True)
    assert {k: v for k, v in _tree(out).items() if k in before} == before  # neither deleted nor changed
    own = sorted(events.glob("part-0000[0-2].parquet"))
    assert len(own) == 3 and metrics["data"]["files"] == 3  # nor read: only this run's three shards
    assert metrics["data"]["rows_read"] == sum(pq.read_metadata(p).num_rows for p in own)
    assert metrics["data"]["rejects_path"] == str(out / "rejects.parquet")
    # Other settings into the finished run: refused, and data/ was not rewritten first.
    before = _tree(out)
    with pytest.raises(CheckpointError, match="holds a run with other data or settings"):
        pipeline.quickstart(load_config(None, [*small, "synthetic.seed=5"]), out, report=lambda _: None,
                            progress=False)
    assert _tree(out) == before and not staging_path(out).exists()


# ---------------------------------------------------------------- messages that name the real cause


def test_messages_name_the_real_cause(run, tmp_path, capsys):
    out, config, _ = run
    model = fgjax.load(out / "checkpoint")
    with pytest.raises(ConfigError, match=r"recommend: k=-1, expected a positive integer"):
        model.recommend([1000], k=-1)
    code = main(["recommend", "--checkpoint", str(out / "checkpoint"), "--users", str(tmp_path / "ids.parquet"),
                 "--out", str(tmp_path / "r.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and f"--users file '{tmp_path / 'ids.parquet'}' does not exist" in err
    same_time = tmp_path / "same.parquet"
    pq.write_table(pa.table({"user_id": np.repeat(np.arange(10), 4), "item_id": np.arange(40),
                             "timestamp": np.full(40, 1.7e9)}), same_time)
    flat = dataclasses.replace(config, data=dataclasses.replace(config.data, path=str(same_time), items_path=""))
    # Events that all share one timestamp are ordered by the input (the stable-sort convention), so the
    # log splits: per user the first two items train, the third validates, the fourth is the test target.
    prepared = pipeline.prepare(flat, tmp_path / "flat")
    assert prepared.split.train_events.sum() == 20
    np.testing.assert_array_equal(prepared.log.item[prepared.split.train_events] % 4 < 2, True)
