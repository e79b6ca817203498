"""Checkpoints loaded by another service: separate process, raw IDs, no training code."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import fgjax
from fgjax.checkpoint import FORMAT_VERSION
from fgjax.config import load_config
from fgjax.errors import CheckpointError
from fgjax.pipeline import fit, split_log
from fgjax.data.split import ItemSets
from fgjax.ranking.topk import rank_items

from conftest import make_log

SERVICE_SCRIPT = """
import json, sys
import fgjax
model = fgjax.load(sys.argv[1])
table = model.recommend([1003, 1010, 999999], k=5)
print("RESULT" + json.dumps({
    "rows": table.drop_columns(["last_active"]).to_pylist(),
    "last_active_us": [None if v is None else v.value for v in table["last_active"]],
    # optax comes with flax.nnx itself; fgjax's own training code must not.
    "training_modules": sorted(m for m in sys.modules if m in ("fgjax.training.loop", "fgjax.pipeline", "fgjax.analysis.loop", "fgjax.evaluation.metrics", "tqdm")),
    "step": model.step,
}))
"""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    log = make_log()
    config = load_config(None, ["train.batch_size=64", "train.epochs=2", "train.negatives=2"])
    return out, config, fit(config, split_log(log), out, progress=False)


@pytest.mark.slow
def test_separate_process_loads_and_recommends_by_raw_ids(fitted):
    out, config, result = fitted
    proc = subprocess.run([sys.executable, "-c", SERVICE_SCRIPT, str(out / "checkpoint")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert got["training_modules"] == []
    assert got["step"] == result.trained.steps
    rows = got["rows"]
    assert [r["user_id"] for r in rows] == [1003] * 5 + [1010] * 5 + [999999] * 5
    assert [r["rank"] for r in rows[:5]] == [1, 2, 3, 4, 5]
    # The service's lists equal the in-process forgetting-aware ranking.
    log, split = result.prepared.log, result.prepared.split
    from fgjax.ranking.strategy import forgetting_weights

    _, items = rank_items(result.trained.graphdef, result.trained.params, np.array([3, 10]), k=5,
                          num_items=log.num_items, seen=result.prepared.seen,
                          forgetting=forgetting_weights(result.forgetting, config, log))
    assert [r["item_id"] for r in rows[:10]] == (items.ravel() + 5000).tolist()
    from fgjax.kernels import STATE_NAMES

    assert all(r["interest"] is not None and r["interest_state"] in STATE_NAMES and r["f_k"] is not None
               for r in rows[:10])
    # Each explanation is the user's state and f_k of the item's interest.
    for r in rows[:10]:
        u, k = r["user_id"] - 1000, log.categories.encode([r["interest"]])[0]
        assert k == log.item_category[r["item_id"] - 5000]
        assert r["interest_state"] == STATE_NAMES[result.forgetting.state[u, k]]
        assert r["f_k"] == pytest.approx(float(result.forgetting.f[u, k]))
        evidence = result.forgetting.evidence
        assert r["trend"] == pytest.approx(float(evidence["trend"][u, k]))
        assert r["period"] == pytest.approx(float(evidence["period"][u, k]))
        assert r["explore"] is False  # exploration is off by default
    # last_active is the start of the last window with activity of that interest.
    for r, us in zip(rows[:10], got["last_active_us"][:10]):
        u, k = r["user_id"] - 1000, log.categories.encode([r["interest"]])[0]
        last = int(result.forgetting.evidence["last_active"][u, k])
        assert us == (None if last < 0 else int(round(result.forgetting.window_start[last] * 1e6)))
    assert any(us is not None for us in got["last_active_us"][:10])
    # Unknown users get the most popular items and no explanation.
    assert all(r["interest"] is None for r in rows[10:])
    popularity = np.bincount(split.train_items.items, minlength=log.num_items)
    assert popularity[np.array([r["item_id"] for r in rows[10:]]) - 5000].tolist() == sorted(popularity, reverse=True)[:5]


def test_in_process_load_matches_and_excludes_seen(fitted):
    out, _, result = fitted
    model = fgjax.load(out / "checkpoint")
    table = model.recommend(pa.array([1000, 1001], pa.int64()), k=8, use_forgetting=False)
    assert table.column_names[:4] == ["user_id", "rank", "item_id", "score"]
    log = result.prepared.log
    for user in (0, 1):
        recs = set(np.array(table.filter(pa.compute.equal(table["user_id"], 1000 + user))["item_id"]) - 5000)
        # A service never recommends what the user already had, test items included.
        seen = set(log.item[log.user == user].tolist())
        assert len(recs) == 8 and not recs & seen
    scores = np.array(table["score"]).reshape(2, 8)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_serving_state_covers_every_event(fitted):
    """What a service loads is the state after the whole log, not the evaluation history."""
    from fgjax.analysis.loop import analyze
    from fgjax.checkpoint import load_serving

    out, config, result = fitted
    log = result.prepared.log
    arrays, _ = load_serving(out / "checkpoint")
    full = analyze(config, log, progress=False)
    np.testing.assert_array_equal(arrays["state"], full.state)
    np.testing.assert_allclose(arrays["f"], full.f)
    seen = ItemSets(arrays["seen_indptr"], arrays["seen_items"])
    for u in range(log.num_users):
        assert set(seen.items[seen.indptr[u] : seen.indptr[u + 1]].tolist()) == set(log.item[log.user == u].tolist())


def test_refuses_what_is_not_a_checkpoint(tmp_path, fitted):
    with pytest.raises(CheckpointError, match="not an fgjax checkpoint"):
        fgjax.load(tmp_path)
    out, _, _ = fitted
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out / "checkpoint", copy)
    (copy / "fgjax.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        fgjax.load(copy)
