"""Pipeline jobs: no leakage into evaluation, vocabulary checks, logs without categories."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fgjax
from fgjax.config import load_config
from fgjax.errors import DataError
from fgjax.pipeline import evaluate_checkpoint, evaluation_weights, fit, prepare, split_log

from conftest import make_log


def test_evaluation_does_not_see_the_test_item_or_what_follows():
    log = make_log(num_users=8, num_items=16, events_per_user=12, seed=3)
    # User 0 (category 0) ends with a new item of category 3, then repeats it.
    new_item = 3  # item i has category i % 4
    end = log.timestamp.max()
    extra_ts = end + np.arange(1, 6) * 3600.0
    log = dataclasses.replace(
        log,
        user=np.concatenate([log.user, np.zeros(5, np.int32)]),
        item=np.concatenate([log.item, np.full(5, new_item, np.int32)]),
        timestamp=np.concatenate([log.timestamp, extra_ts]),
        weight=np.concatenate([log.weight, np.ones(5, np.float32)]),
    )
    prepared = split_log(log)
    assert prepared.split.test_target[0] == new_item
    config = load_config(None, ["recommend.interest_floor=0.001"])
    weights = evaluation_weights(config, prepared, progress=False)
    assert weights.user_interest[0, 3] == pytest.approx(0.001)  # category 3 unknown before the test time
    assert weights.user_interest[0, 0] > 0.1


def _write_events(log, path, *, negate_users=False):
    users = np.asarray(log.users.decode(log.user)) * (-1 if negate_users else 1)
    pq.write_table(
        pa.table({"user_id": users, "item_id": log.items.decode(log.item),
                  "timestamp": log.timestamp, "weight": log.weight}),
        path,
    )


@pytest.mark.slow
def test_without_items_table_and_with_foreign_vocabulary(tmp_path):
    log = make_log(num_users=40, num_items=30, events_per_user=20, seed=1)
    _write_events(log, tmp_path / "events.parquet")
    config = load_config(None, [f"data.path={tmp_path / 'events.parquet'}", "train.batch_size=64", "train.epochs=2",
                                "train.negatives=2"])
    out = tmp_path / "run"
    prepared = prepare(config, out)
    fitted = fit(config, prepared, out, progress=False)
    assert fitted.forgetting is None and fitted.weights is None  # no categories: no analysis
    model = fgjax.load(out / "checkpoint")
    assert not model.has_forgetting
    table = model.recommend(pa.array([1000, 1001], pa.int64()), k=5)
    assert table.column_names == ["user_id", "rank", "item_id", "score"]
    for raw, user in ((1000, 0), (1001, 1)):
        recs = set(np.array(table.filter(pa.compute.equal(table["user_id"], raw))["item_id"]) - 5000)
        assert len(recs) == 5 and not recs & set(log.item[log.user == user].tolist())
    evaluation = evaluate_checkpoint(config, tmp_path / "eval", out / "checkpoint", progress=False)
    assert set(evaluation["results"]) == {"popularity", "embedding_mlp"}
    # Same sizes, other user IDs: the checkpoint's dense indices would mean other users.
    _write_events(log, tmp_path / "other.parquet", negate_users=True)
    other = dataclasses.replace(config, data=dataclasses.replace(config.data, path=str(tmp_path / "other.parquet")))
    with pytest.raises(DataError, match="trained on other users or items"):
        evaluate_checkpoint(other, tmp_path / "eval2", out / "checkpoint", progress=False)


@pytest.mark.slow
def test_sasrec_fit_serves_what_write_recommendations_writes(tmp_path):
    """A sequence model through the product path: fit -> serving state with histories -> the same lists
    in process (write_recommendations) and from the checkpoint; evaluation queries with the history
    before each test item (never the test item itself). Without item categories, so no forgetting
    analysis: tests/test_serving.py covers a sequence model with explanations."""
    from fgjax.evaluation.metrics import evaluate
    from fgjax.pipeline import evaluation_history, write_recommendations

    log = dataclasses.replace(make_log(num_users=24, num_items=20, events_per_user=10, seed=2), item_category=None,
                              categories=None)
    config = load_config(None, ["model.name=sasrec", "sequence.epochs=1", "sequence.dim=8", "sequence.layers=1",
                                "sequence.max_len=6", "sequence.batch_size=16", "recommend.k=4"])
    prepared = split_log(log)
    fitted = fit(config, prepared, tmp_path, progress=False)
    history = fitted.serving.history
    assert history is not None and history.num_users == log.num_users
    rows = write_recommendations(config, fitted, tmp_path / "recs.parquet")
    written = pq.read_table(tmp_path / "recs.parquet")
    assert rows == 4 * log.num_users and written.column_names == ["user_id", "rank", "item_id", "score"]
    model = fgjax.load(tmp_path / "checkpoint")
    assert model.config.model.name == "sasrec" and model.state.history is not None
    assert model.recommend(log.users.values, k=4).equals(written)
    # A sequence model's serving state without the histories its queries need is refused at load.
    from fgjax.errors import CheckpointError

    dataclasses.replace(fitted.serving, history=None).save(tmp_path / "checkpoint")
    with pytest.raises(CheckpointError, match="no user histories, expected them for the sequence model 'sasrec'"):
        fgjax.load(tmp_path / "checkpoint")

    split = prepared.split
    before_test = evaluation_history(fitted.trained.graphdef, fitted.trained.params, prepared)
    users = np.flatnonzero(split.test_target >= 0)
    for u in users:
        items = before_test.items[before_test.indptr[u] : before_test.indptr[u + 1]]
        assert items[-1] == split.val_target[u] and split.test_target[u] not in items
    evaluation = evaluate(config, fitted.trained.graphdef, fitted.trained.params, split, log.num_items,
                          fitted.weights, history=before_test)
    assert set(evaluation["results"]) == {"popularity", "sasrec"}
    assert evaluation["num_test_users"] == len(users)
