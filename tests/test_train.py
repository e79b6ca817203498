"""Training: loss against NumPy, learning, exact resume, data-parallel equality."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.config import Config, load_config
from fgjax.data.split import leave_last_out
from fgjax.errors import CheckpointError, ConfigError
from fgjax.models import build_model, split_params
from fgjax.training.loop import bce_loss, epoch_order, train

from conftest import make_log


def config_for(**overrides) -> Config:
    base = {"train.batch_size": 64, "train.epochs": 3, "train.learning_rate": 0.01, "train.negatives": 2}
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_bce_loss_matches_numpy():
    model = build_model(Config().model, 6, 9, seed=0)
    graphdef, params = split_params(model)
    users = jnp.array([0, 3, 5])
    items = jnp.array([1, 8, 2])
    negatives = jnp.array([[4, 5], [0, 1], [7, 3]])
    got = float(bce_loss(graphdef, params, users, items, negatives))
    pos = np.asarray(model(users, items), np.float64)
    neg = np.asarray(model(jnp.repeat(users, 2), negatives.reshape(-1)), np.float64)
    expected = np.mean(np.concatenate([np.log1p(np.exp(-pos)), np.log1p(np.exp(neg))]))
    assert got == pytest.approx(expected, rel=1e-5)


def test_epoch_order_is_a_pure_permutation():
    a = epoch_order(0, 3, 100)
    assert sorted(a.tolist()) == list(range(100))
    assert np.array_equal(a, epoch_order(0, 3, 100))
    assert not np.array_equal(a, epoch_order(0, 4, 100))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_sequence_learning_rate_schedule(schedule):
    from fgjax.training.loop import make_optimizer

    steps_per_epoch, epochs, peak = 5, 4, 0.01
    config = load_config(None, ["model.name=time_sasrec", f"sequence.lr_schedule={schedule}",
                                f"sequence.epochs={epochs}", f"sequence.learning_rate={peak}"])
    opt = make_optimizer(config, steps_per_epoch)
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    sizes = []
    for _ in range(epochs * steps_per_epoch):
        # A constant gradient: Adam's step is the learning rate itself (m / sqrt(v) = 1).
        updates, state = opt.update({"w": jnp.ones(3)}, state, params)
        sizes.append(float(-updates["w"][0]))
    total = epochs * steps_per_epoch
    if schedule == "constant":
        want = [peak] * total
    else:  # linear warm-up over the first epoch, then half a cosine to 0 at the last step
        warm = [peak * t / steps_per_epoch for t in range(steps_per_epoch)]
        decay = [peak * 0.5 * (1 + np.cos(np.pi * t / (total - steps_per_epoch))) for t in range(total - steps_per_epoch)]
        want = warm + decay
    np.testing.assert_allclose(sizes, want, rtol=1e-4, atol=1e-7)


def test_training_learns_the_users_category(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    result = train(config_for(**{"train.epochs": 8}), small_log, split, tmp_path / "ck",
                   metrics_path=tmp_path / "m.jsonl", progress=False)
    losses = result.step_losses
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # The model ranks items of the user's own category above the others.
    model = __import__("flax").nnx.merge(result.graphdef, result.params)
    scores = np.asarray(model.score_all_items(jnp.arange(small_log.num_users)))
    own = small_log.item_category[None, :] == (np.arange(small_log.num_users) % 4)[:, None]
    assert scores[own].mean() > scores[~own].mean() + 1.0
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 9))
    assert lines[-1]["val_hit_rate@10"] > lines[0]["val_hit_rate@10"] or lines[-1]["val_hit_rate@10"] > 0.5


def test_resume_after_stop_gives_identical_parameters(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    full = train(config_for(), small_log, split, tmp_path / "full", progress=False)
    # Stop mid-epoch (not at an epoch boundary), then run again: it resumes.
    steps_per_epoch = full.steps // 3
    stop = steps_per_epoch + 2
    first = train(config_for(**{"train.max_steps": stop}), small_log, split, tmp_path / "resumed", progress=False)
    assert first.steps == stop and first.resumed_from is None
    second = train(config_for(), small_log, split, tmp_path / "resumed", progress=False)
    assert second.resumed_from == stop and second.steps == full.steps
    np.testing.assert_array_equal(np.concatenate([first.step_losses, second.step_losses]), full.step_losses)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-6)


def test_checkpoint_from_other_data_is_refused(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    train(config_for(**{"train.max_steps": 2}), small_log, split, tmp_path / "ck", progress=False)
    other = make_log(num_users=50)
    other_split = leave_last_out(other.user, other.item, other.timestamp, other.num_users)
    with pytest.raises(CheckpointError, match="other data or settings .*num_users"):
        train(config_for(), other, other_split, tmp_path / "ck", progress=False)
    # Same data, settings that change the batches: refused too, naming them.
    with pytest.raises(CheckpointError, match="differs in: batch_size, seed"):
        train(config_for(**{"train.batch_size": 32, "train.seed": 3}), small_log, split, tmp_path / "ck", progress=False)
    # Same sizes, other pairs (items relabeled one-to-one): refused by the content hash.
    relabeled = dataclasses.replace(small_log, item=(small_log.item + 1) % small_log.num_items)
    relabeled_split = leave_last_out(relabeled.user, relabeled.item, relabeled.timestamp, relabeled.num_users)
    assert len(relabeled_split.train_pairs()[0]) == len(split.train_pairs()[0])
    with pytest.raises(CheckpointError, match="differs in: examples_sha256\\)"):
        train(config_for(), relabeled, relabeled_split, tmp_path / "ck", progress=False)
    # More epochs is fine: the run continues.
    result = train(config_for(**{"train.epochs": 4}), small_log, split, tmp_path / "ck", progress=False)
    assert result.resumed_from == 2


def test_bad_batch_settings_are_config_errors(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    with pytest.raises(ConfigError, match="exceeds the .* training pairs"):
        train(config_for(**{"train.batch_size": 10**6}), small_log, split, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="devices are available"):
        train(config_for(**{"train.num_devices": 64}), small_log, split, tmp_path / "b", progress=False)


def sequence_config(**overrides) -> Config:
    base = {"model.name": "time_sasrec", "sequence.max_len": 6, "sequence.dim": 8, "sequence.heads": 2,
            "sequence.layers": 1, "sequence.dropout": 0.1, "sequence.batch_size": 16, "sequence.epochs": 3,
            "sequence.learning_rate": 0.01, "sequence.patience": 0}
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_sequence_model_trains_through_train_and_its_checkpoint_restores(tmp_path, small_log):
    """model.name=time_sasrec through the same ``train``: windows, loss, validation, checkpoint any service reads."""
    from fgjax.checkpoint import TrainCheckpoints
    from fgjax.config import from_dict
    from fgjax.models import TimeAwareSASRec, abstract_params

    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    result = train(sequence_config(**{"sequence.epochs": 5}), small_log, split, tmp_path / "ck",
                   metrics_path=tmp_path / "m.jsonl", progress=False)
    assert isinstance(__import__("flax").nnx.merge(result.graphdef, result.params), TimeAwareSASRec)
    assert result.history[-1]["train_loss"] < 0.9 * result.history[0]["train_loss"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5] and "val_ndcg@10" in result.history[0]
    best = max(result.history, key=lambda h: h["val_ndcg@10"])
    assert result.best_epoch == best["epoch"]
    # The registry rebuilds the model from the checkpoint's config alone; the served params are the best ones.
    with TrainCheckpoints(tmp_path / "ck", read_only=True) as store:
        meta = store.restore_meta()
        assert meta["model"] == "time_sasrec" and meta["best"]["epoch"] == result.best_epoch
        graphdef, abstract = abstract_params(from_dict(meta["config"]), small_log.num_users, small_log.num_items)
        assert graphdef == result.graphdef
        served, _, _ = store.restore(abstract, None, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    for a, b in zip(jax.tree.leaves(served), jax.tree.leaves(result.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # sasrec = the same network without time encodings.
    plain = abstract_params(sequence_config(**{"model.name": "sasrec"}), 5, 9)[1]
    assert "time_bias" not in plain["blocks"][0] and "time_bias" in abstract["blocks"][0]


def test_selection_serves_the_best_epoch_and_patience_stops(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    overrides = {"train.epochs": 10, "train.learning_rate": 0.05, "train.batch_size": 32}
    seen_records = []
    full = train(config_for(**overrides), small_log, split, tmp_path / "full", progress=False,
                 on_epoch_end=[seen_records.append])
    assert seen_records == full.history
    ndcg = [h["val_ndcg@10"] for h in full.history]
    assert full.best_epoch == int(np.argmax(ndcg)) + 1 < 10  # an earlier epoch validated best
    # Its params are the ones that run had at the end of that epoch (the same run, stopped there).
    upto = train(config_for(**{**overrides, "train.epochs": full.best_epoch}), small_log, split, tmp_path / "upto",
                 progress=False)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(upto.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # patience 1: stop at the first validation that does not improve.
    first_drop = next(i for i in range(1, 10) if ndcg[i] <= max(ndcg[:i])) + 1
    stopped = train(config_for(**{**overrides, "train.patience": 1}), small_log, split, tmp_path / "stop",
                    progress=False)
    assert stopped.stopped_early and stopped.epochs == first_drop
    assert [h["val_ndcg@10"] for h in stopped.history] == pytest.approx(ndcg[:first_drop], abs=1e-6)
    # Rerunning a stopped run resumes into the stop: nothing more is trained.
    again = train(config_for(**{**overrides, "train.patience": 1}), small_log, split, tmp_path / "stop",
                  progress=False)
    assert again.resumed_from == stopped.steps and len(again.step_losses) == 0 and again.epochs == first_drop


def test_an_epoch_hook_that_returns_true_stops_the_run(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    overrides = {"train.epochs": 6, "train.learning_rate": 0.05, "train.batch_size": 32}
    seen = []
    stopped = train(config_for(**overrides), small_log, split, tmp_path / "hooked", progress=False,
                    on_epoch_end=[seen.append, lambda record: record["epoch"] == 3])
    assert stopped.stopped_early and stopped.epochs == 3 and [h["epoch"] for h in seen] == [1, 2, 3]
    full = train(config_for(**overrides), small_log, split, tmp_path / "full", progress=False)
    assert not full.stopped_early and full.epochs == 6
    assert full.history[:3] == [{**h, "seconds": f["seconds"]} for h, f in zip(stopped.history, full.history)]


def test_sparse_tables_are_for_the_embedding_mlp(tmp_path, small_log):
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    with pytest.raises(ConfigError, match="train.table_optimizer='row_adagrad' applies to model.name=embedding_mlp"):
        train(sequence_config(**{"train.table_optimizer": "row_adagrad"}), small_log, split, tmp_path / "a",
              progress=False)
    with pytest.raises(ConfigError, match="model.name: expected one of embedding_mlp, time_sasrec, sasrec"):
        config_for(**{"model.name": "bert4rec"})


MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[2])
    from conftest import make_log
    from fgjax.config import load_config
    from fgjax.data.split import leave_last_out
    from fgjax.training.loop import train
    log = make_log()
    split = leave_last_out(log.user, log.item, log.timestamp, log.num_users)
    out = {"devices": len(jax.devices())}
    for n in (1, 8):
        cfg = load_config(None, ["train.batch_size=64", "train.epochs=2", "train.learning_rate=0.01",
                                 "train.negatives=2", f"train.num_devices={n}"])
        result = train(cfg, log, split, f"{sys.argv[1]}/ck{n}", progress=False)
        out[n] = {"losses": result.step_losses.tolist(),
                  "params": [np.asarray(x).ravel()[:50].tolist() for x in jax.tree.leaves(result.params)]}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_eight_devices_give_the_same_losses_as_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 8
    one, eight = out["1"], out["8"]
    assert len(one["losses"]) == len(eight["losses"]) > 4
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-5, atol=1e-6)
    for a, b in zip(one["params"], eight["params"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_same_parameters(tmp_path):
    """SIGKILL a real `fgjax train` after its first checkpoint; the rerun ends where an uninterrupted run does."""
    import signal
    import time

    import fgjax
    from fgjax.config import SyntheticConfig
    from fgjax.data.synthetic import generate

    paths = generate(SyntheticConfig(num_users=300, num_items=150, num_days=20, users_per_shard=150), tmp_path / "data")
    args = ["--set", f"data.path={paths.events_dir}", "--set", f"data.items_path={paths.items_path}",
            "--set", "train.batch_size=128", "--set", "train.epochs=4", "--set", "train.checkpoint_every_steps=20",
            "--set", "train.max_to_keep=2", "--set", "analysis.detector.kind=level", "--no-progress"]
    # (The level rule: this test is about training; the detector's compilation would only cost time.)

    def command(out):
        return [sys.executable, "-m", "fgjax.cli", "train", "--out", str(out), *args]

    from fgjax.cli import main as cli_main

    # The uninterrupted reference runs in this process (the same CLI entry point, without a second start-up).
    assert cli_main(["train", "--out", str(tmp_path / "whole"), *args]) == 0
    victim = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = tmp_path / ".killed.fgjax-staging" / "checkpoint" / "fgjax.json"  # a run stages beside --out
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:  # until a step is complete: in the manifest
        if manifest.is_file() and '"train/' in manifest.read_text():
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    rerun = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    import re

    resumed_at = int(re.search(r"resumed training from step (\d+)", rerun.stdout).group(1))
    whole = fgjax.load(tmp_path / "whole" / "checkpoint")
    resumed = fgjax.load(tmp_path / "killed" / "checkpoint")
    assert 0 < resumed_at < whole.step  # killed mid-run, not after it ended
    assert resumed.step == whole.step
    assert "resuming the checkpoint of a run" in rerun.stdout
    # One line per epoch, none twice: the log holds exactly the history of the state the rerun resumed from.
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 5))
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
