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
from fgjax.serving import ServingState

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
    "training_modules": sorted(m for m in sys.modules if m in ("fgjax.training.loop", "fgjax.pipeline", "fgjax.analysis", "fgjax.evaluation.metrics", "tqdm")),
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


def test_recommend_refuses_ids_it_would_serve_as_someone_else(fitted):
    from fgjax.errors import ConfigError, DataError

    out, _, result = fitted
    model = fgjax.load(out / "checkpoint")
    for bad, message in [
        ("1000", r"got the single str '1000': pass \['1000'\]"),  # was served as users 1, 0, 0, 0
        (b"1000", "got the single bytes"),
        ([1000.0], "user IDs of type double, the checkpoint's are int64"),  # was served as user 1000
        ([True], "user IDs of type bool"),  # was served as user 1
        ([1000, None], "1 null user IDs"),
        ([2**64], "past int64"),  # was a bare OverflowError
    ]:
        with pytest.raises(DataError, match=message):
            model.recommend(bad, k=3)
    empty = model.recommend([], k=3)
    assert empty.num_rows == 0 and empty.schema.field("user_id").type == pa.int64()
    # Unknown users: the most popular items, scored by the share of training users who had them.
    unknown = model.recommend([424242], k=3, use_forgetting=False)
    popularity = model.state.popularity
    np.testing.assert_allclose(np.array(unknown["score"]), np.sort(popularity)[::-1][:3] / len(model.users), rtol=1e-6)
    # rank() takes dense indices: out of range is a typed error, not an IndexError.
    n_users, n_items = len(model.users), len(model.items)
    for users in ([-1], [n_users], [0.5]):
        with pytest.raises(DataError, match=rf"rank: users are dense indices in \[0, {n_users}\)"):
            model.rank(np.array(users), 3)
    for k in (0, n_items + 1, True):
        with pytest.raises(ConfigError, match=rf"rank: k={k!r}, expected an integer in \[1, {n_items}\]"):
            model.rank(np.array([0]), k)
    assert model.rank(np.array([0, n_users - 1]), n_items)[1].shape == (2, n_items)


def test_serving_state_covers_every_event(fitted):
    """What a service loads is the state after the whole log, not the evaluation history."""
    from fgjax.analysis import analyze

    out, config, result = fitted
    log = result.prepared.log
    state = ServingState.load(out / "checkpoint")
    full = analyze(config, log, progress=False)
    np.testing.assert_array_equal(state.state, full.state)
    np.testing.assert_allclose(state.f, full.f)
    assert state.history is None  # EmbeddingMLP queries by user index
    assert state.window_origin == full.window_start[0] and state.window_seconds == config.analysis.window_seconds
    seen = state.seen
    for u in range(log.num_users):
        assert set(seen.items[seen.indptr[u] : seen.indptr[u + 1]].tolist()) == set(log.item[log.user == u].tolist())


def test_refuses_what_is_not_a_checkpoint(tmp_path, fitted):
    with pytest.raises(CheckpointError, match="not an fgjax checkpoint"):
        fgjax.load(tmp_path)
    (tmp_path / "a.py").write_text("")
    with pytest.raises(CheckpointError, match="a.py' is a file, not an fgjax checkpoint folder"):
        fgjax.load(tmp_path / "a.py")
    with pytest.raises(CheckpointError, match="a checkpoint is a folder path"):
        fgjax.load(None)
    out, _, _ = fitted
    for step in ("1", 1.0, True):  # were a lookup of another step's name or a missing folder
        with pytest.raises(CheckpointError, match=rf"step={step!r}: a training step is an integer"):
            fgjax.load(out / "checkpoint", step=step)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out / "checkpoint", copy)
    (copy / "fgjax.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        fgjax.load(copy)


def _state_with_everything(users=5, items=7, interests=3, seed=0):
    from fgjax.data.sequences import Sequences
    from fgjax.ranking.strategy import ForgettingWeights

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(indptr[-1])
    # Epoch seconds with sub-second parts: float32 would lose them (1.7e9 has a 128 s float32 spacing).
    times = 1.7e9 + rng.uniform(0, 1e6, n) + 0.123456789
    last_active = np.where(rng.uniform(size=(users, interests)) < 0.3, np.nan, 1.7e9 + rng.uniform(0, 1e6, (users, interests)))
    # forgetting_sasrec's interest ages: +inf = an interest the user has not had yet.
    ages = np.where(rng.uniform(size=(n, interests)) < 0.3, np.inf, rng.uniform(0, 1e6, (n, interests))).astype(np.float32)
    return ServingState(
        popularity=rng.uniform(0, 9, items).astype(np.float32),
        seen=ItemSets(indptr, rng.integers(0, items, n).astype(np.int32)),
        forgetting=ForgettingWeights(rng.uniform(size=(users, interests + 1)).astype(np.float32),
                                     rng.integers(-1, interests, items).astype(np.int32), np.ones(items, np.float32)),
        state=rng.integers(0, 6, (users, interests)).astype(np.int8),
        f=rng.normal(size=(users, interests)).astype(np.float32),
        trend=rng.normal(size=(users, interests)).astype(np.float32),
        period=rng.integers(0, 9, (users, interests)).astype(np.float32),
        explore=rng.uniform(size=(users, interests)) < 0.5,
        last_active=last_active,
        window_origin=1.7e9 + 0.5, window_seconds=86400.0,
        history=Sequences(indptr.copy(), rng.integers(0, items, n).astype(np.int32), times, ages),
    )


def _assert_same_state(got, want):
    import dataclasses

    for field in dataclasses.fields(ServingState):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if b is None or isinstance(b, float):
            assert a == b, field.name
            continue
        parts = dataclasses.fields(b) if dataclasses.is_dataclass(b) else None
        pairs = [(getattr(a, p.name), getattr(b, p.name)) for p in parts] if parts else [(a, b)]
        for x, y in pairs:
            assert isinstance(x, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, field.name
            np.testing.assert_array_equal(x, y, err_msg=field.name)  # exact, NaN == NaN


def test_serving_state_round_trips_exactly(tmp_path):
    from fgjax.data.sequences import Sequences
    from fgjax.ranking.strategy import ForgettingWeights

    want = _state_with_everything()
    want.save(tmp_path)
    got = ServingState.load(tmp_path)
    assert isinstance(got.seen, ItemSets) and isinstance(got.history, Sequences)
    assert isinstance(got.forgetting, ForgettingWeights)
    _assert_same_state(got, want)
    assert got.history.times.dtype == np.float64 and got.history.indptr.dtype == np.int64
    assert not np.array_equal(got.history.times.astype(np.float32).astype(np.float64), got.history.times)
    # A state without the optional parts (no categories, a model that queries by user), with an empty user.
    bare = ServingState(popularity=np.zeros(4, np.float32),
                        seen=ItemSets(np.array([0, 0, 2], np.int64), np.array([1, 3], np.int32)))
    bare.save(tmp_path / "bare")
    _assert_same_state(ServingState.load(tmp_path / "bare"), bare)
    # Saving again replaces the old state (no leftovers of the richer one).
    bare.save(tmp_path)
    _assert_same_state(ServingState.load(tmp_path), bare)


def test_missing_or_damaged_serving_state_names_the_file(tmp_path, fitted):
    import shutil

    from fgjax.checkpoint import forget, record

    out, _, _ = fitted
    copy = tmp_path / "ckpt"
    shutil.copytree(out / "checkpoint", copy)
    meta = copy / "serving.json"
    text = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="serving.json' is damaged: 9 bytes, the checkpoint manifest lists"):
        fgjax.load(copy)
    # Contents the manifest vouches for (as a buggy writer would leave them) are still checked.
    record(copy, "serving.json")
    with pytest.raises(CheckpointError, match="serving.json': unreadable serving metadata"):
        fgjax.load(copy)
    meta.write_text(json.dumps({**json.loads(text), "serving_version": 1}))
    record(copy, "serving.json")
    with pytest.raises(CheckpointError, match="serving state version 1"):
        fgjax.load(copy)
    meta.write_text(json.dumps({**json.loads(text), "arrays": json.loads(text)["arrays"] + ["history_items"]}))
    record(copy, "serving.json")
    with pytest.raises(CheckpointError, match="serving arrays history_items are missing"):
        fgjax.load(copy)
    meta.write_text(text)
    record(copy, "serving.json")
    shutil.rmtree(copy / "serving")
    with pytest.raises(CheckpointError, match=r"serving' is missing \(the checkpoint manifest lists \d+ files in it\)"):
        fgjax.load(copy)
    forget(copy, "serving")
    with pytest.raises(CheckpointError, match=r"serving': unreadable serving arrays"):
        fgjax.load(copy)
    forget(copy, "serving.json")
    with pytest.raises(CheckpointError, match=r"has no serving state \(serving.json and serving/"):
        fgjax.load(copy)
    # Arrays that do not fit together, or not the checkpoint's users.
    state = _state_with_everything()
    import dataclasses

    dataclasses.replace(state, f=state.f[:, :2]).save(tmp_path / "bad")
    with pytest.raises(CheckpointError, match=r"damaged serving state: f has shape \(5, 2\)"):
        ServingState.load(tmp_path / "bad")
    dataclasses.replace(state, popularity=np.full_like(state.popularity, np.nan)).save(tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"damaged serving state: popularity holds 7 NaN or infinite values"):
        ServingState.load(tmp_path / "nan")
    # f_k is +inf for an interest that changed while the user's whole state decayed to nothing (years of
    # silence on real logs): a legitimate value that loads; NaN in f is damage.
    gone = state.f.copy()
    gone[0, 1] = np.inf
    dataclasses.replace(state, f=gone).save(tmp_path / "inf")
    assert np.isinf(ServingState.load(tmp_path / "inf").f[0, 1])
    gone[0, 1] = np.nan
    dataclasses.replace(state, f=gone).save(tmp_path / "fnan")
    with pytest.raises(CheckpointError, match=r"damaged serving state: f holds 1 NaN values"):
        ServingState.load(tmp_path / "fnan")
    # Interest ages (forgetting_sasrec): +inf loads (never seen), NaN, negative or misshapen ages do not.
    ages = state.history.interest_ages
    for name, bad, match in (("agenan", np.where(np.isinf(ages), np.nan, ages), "history interest ages holds"),
                             ("ageneg", -ages - 1, "history interest ages hold negative values"),
                             ("ageshape", ages[1:], r"history interest ages have shape")):
        dataclasses.replace(state, history=dataclasses.replace(state.history, interest_ages=bad)).save(tmp_path / name)
        with pytest.raises(CheckpointError, match=match):
            ServingState.load(tmp_path / name)
    state.save(copy)
    with pytest.raises(CheckpointError, match="serving state for 5 users and 7 items, expected"):
        fgjax.load(copy)


SEQUENCE_SERVICE = """
import json, sys
import fgjax
model = fgjax.load(sys.argv[1])
table = model.recommend(json.loads(sys.argv[2]), k=int(sys.argv[3]))
print("RESULT" + json.dumps({
    "model": model.config.model.name,
    "rows": table.drop_columns(["last_active"]).to_pylist(),
    "has_last_active": "last_active" in table.column_names,
    # optax comes with flax.nnx itself; fgjax's own training code must not.
    "training_modules": sorted(m for m in sys.modules if m.startswith("fgjax.training") or m in (
        "fgjax.pipeline", "fgjax.analysis", "fgjax.evaluation.metrics", "tqdm")),
}))
"""

SEQUENCE_SMALL = ["--set", "sequence.epochs=2", "--set", "sequence.dim=8", "--set", "sequence.heads=2",
                  "--set", "sequence.layers=1", "--set", "sequence.max_len=8", "--set", "sequence.batch_size=16",
                  "--set", "sequence.patience=0", "--set", "train.epochs=2", "--set", "train.batch_size=64",
                  "--no-progress"]


@pytest.mark.slow
def test_cli_trains_time_sasrec_and_another_process_serves_it(tmp_path, capsys):
    """The acceptance test of issue 9: `fgjax train` trains the time-aware model; another process serves it."""
    from pathlib import Path

    from fgjax import kernels
    from fgjax.cli import main
    from fgjax.config import SyntheticConfig
    from fgjax.data.reader import read_events
    from fgjax.data.sequences import build_sequences, relative_times
    from fgjax.data.synthetic import generate

    paths = generate(SyntheticConfig(num_users=60, num_items=50, num_categories=4, num_days=28, users_per_shard=60,
                                     bad_row_fraction=0.0), tmp_path / "data")
    out = tmp_path / "run"
    data = ["--set", f"data.path={paths.events_dir}", "--set", f"data.items_path={paths.items_path}",
            "--set", "data.format=parquet"]
    config_file = Path(__file__).resolve().parents[1] / "configs" / "time_sasrec.yaml"
    code = main(["train", "--config", str(config_file), "--out", str(out), *data, "--set", "model.name=time_sasrec",
                 *SEQUENCE_SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    checkpoint = out / "checkpoint"

    model = fgjax.load(checkpoint)
    assert model.config.model.name == "time_sasrec" and model.has_forgetting
    log = read_events(model.config.data)
    # The saved history is every user's chronological items over the whole log, times exact (float64).
    want = build_sequences(log.user, log.item, log.timestamp, log.num_users)
    for name in ("indptr", "items", "times"):
        got = getattr(model.state.history, name)
        assert got.dtype == getattr(want, name).dtype
        np.testing.assert_array_equal(got, getattr(want, name))

    k, users = 5, np.array([0, 7, 23])
    raw = model.users.decode(users).to_pylist()
    proc = subprocess.run([sys.executable, "-c", SEQUENCE_SERVICE, str(checkpoint), json.dumps(raw + [-12345]), str(k)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert got["model"] == "time_sasrec" and got["training_modules"] == [] and got["has_last_active"]
    rows = got["rows"]
    assert [r["user_id"] for r in rows] == [u for u in raw for _ in range(k)] + [-12345] * k
    assert [r["rank"] for r in rows] == list(range(1, k + 1)) * 4

    # Reference: the model's next-item probabilities from the user's last max_len items, times m(u, k(i)),
    # seen items removed, in float64 NumPy.
    net = nnx_merge(model)
    items, times = model.state.history.last(users, net.max_len, pad_item=len(model.items))
    logits = np.asarray(net.score_all_items(items, relative_times(times, items, len(model.items))), np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    fw = model.state.forgetting
    column = np.where(fw.item_interest >= 0, fw.item_interest, fw.user_interest.shape[1] - 1)
    reference = probs * fw.user_interest[users][:, column]
    for row, u in enumerate(users):
        seen = set(log.item[log.user == u].tolist())
        mine = rows[row * k : (row + 1) * k]
        picked = model.items.encode([r["item_id"] for r in mine])
        assert not set(picked.tolist()) & seen
        allowed = np.array([i not in seen for i in range(len(model.items))])
        kth_best = np.sort(reference[row][allowed])[::-1][k - 1]
        assert (reference[row, picked] >= kth_best * (1 - 1e-4)).all()  # a true top-k (up to float ties)
        np.testing.assert_allclose([r["score"] for r in mine], reference[row, picked], rtol=1e-4)
        for r, i in zip(mine, picked):  # explanations: the user's state of the item's interest
            interest = fw.item_interest[i]
            if interest < 0:
                assert r["interest"] is None
                continue
            assert r["interest"] == model.categories.decode([interest])[0].as_py()
            assert r["interest_state"] == kernels.STATE_NAMES[model.state.state[u, interest]]
            assert r["f_k"] == pytest.approx(float(model.state.f[u, interest]))
            assert r["trend"] is not None and r["period"] is not None and r["explore"] is False
    popularity = model.state.popularity
    # Unknown users: the most popular items, scored by the share of training users who had them.
    assert [r["score"] for r in rows[3 * k :]] == pytest.approx(np.sort(popularity)[::-1][:k] / len(model.users))

    # The product path around it: evaluate and recommend through the CLI.
    # (config.model of the command line is ignored: the results are named after the checkpoint's model.)
    code = main(["evaluate", "--out", str(tmp_path / "ev"), "--checkpoint", str(checkpoint), *data, "--no-progress"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "ev" / "metrics.json").read_text())["evaluation"]["results"]
    assert set(results) == {"popularity", "time_sasrec", "time_sasrec+forgetting"}
    assert all(0 <= v <= 1 for r in results.values() for v in r.values())
    code = main(["recommend", "--checkpoint", str(checkpoint), "--users", ",".join(map(str, raw)), "--k", "3",
                 "--out", str(tmp_path / "r.parquet")])
    assert code == 0, capsys.readouterr().err
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "r.parquet").num_rows == 9


def nnx_merge(model):
    from flax import nnx

    return nnx.merge(model.graphdef, model.params)
