"""forgetting_sasrec (issue 15): interest ages, the gated logits, gradients, the CLI round trip, clear errors."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fgjax
from fgjax.config import Config, ModelConfig, SequenceConfig
from fgjax.data.sequences import Sequences, build_sequences, relative_times
from fgjax.errors import ConfigError, DataError
from fgjax.models import ForgettingSASRec, build_model, split_params
from fgjax.ranking.topk import query_inputs, rank_items
from fgjax.training.loop import train_examples, window_examples

DAY = 86400.0


def _random_log(seed: int = 0):
    """Users with ties in time, a user with one event, empty users, items without a category, repeats."""
    rng = np.random.default_rng(seed)
    num_users, num_items, k = 9, 20, 4
    item_category = rng.integers(-1, k, num_items)  # -1: no category
    item_category[:k] = np.arange(k)  # every interest has items
    user = np.concatenate([rng.integers(0, 6, 150), [6]])  # users 7, 8: no events; user 6: one
    item = rng.integers(0, num_items, len(user))
    ts = 1.7e9 + rng.integers(0, 40, len(user)) * 0.5 * DAY  # many ties
    return user, item, ts, num_users, num_items, item_category, k


def _reference_ages(seqs: Sequences, item_category: np.ndarray, k: int) -> np.ndarray:
    """Plain loops, float64: seconds since the latest event in each interest at or before each position."""
    out = np.full((len(seqs.items), k), np.inf)
    for u in range(seqs.num_users):
        for i in range(seqs.indptr[u], seqs.indptr[u + 1]):
            for c in range(k):
                for j in range(i, seqs.indptr[u] - 1, -1):
                    if item_category[seqs.items[j]] == c:
                        out[i, c] = seqs.times[i] - seqs.times[j]
                        break
    return out


@pytest.mark.parametrize("ties", ["input", "item"])
def test_interest_ages_match_a_python_loop(ties):
    user, item, ts, num_users, num_items, item_category, k = _random_log()
    mask = np.random.default_rng(1).random(len(user)) < 0.7
    mask[-1] = True  # user 6's one event
    for events in (None, mask):
        seqs = build_sequences(user, item, ts, num_users, events, ties=ties, item_category=item_category,
                               num_categories=k)
        plain = build_sequences(user, item, ts, num_users, events, ties=ties)
        for name in ("indptr", "items", "times"):  # categories change nothing else
            np.testing.assert_array_equal(getattr(seqs, name), getattr(plain, name))
        assert plain.interest_ages is None and seqs.interest_ages.dtype == np.float32
        want = _reference_ages(seqs, item_category, k)
        np.testing.assert_array_equal(np.isinf(seqs.interest_ages), np.isinf(want))
        np.testing.assert_allclose(seqs.interest_ages[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)
        assert seqs.lengths()[6] == 1 and seqs.lengths()[7:].tolist() == [0, 0]
        own = item_category[seqs.items]
        assert np.all(seqs.interest_ages[own >= 0, own[own >= 0]] == 0)  # an event's own interest: age 0

    # The windows and the last items read the ages of their own positions (items = event ids tell which).
    n = len(seqs.items)
    ids = Sequences(seqs.indptr, np.arange(n, dtype=np.int32), seqs.times, seqs.interest_ages)
    inputs, _, _ = ids.training_windows(3, pad_item=n)
    got = ids.window_interest_ages(3)
    pad = inputs == n
    np.testing.assert_array_equal(got[~pad], seqs.interest_ages[inputs[~pad]])
    assert np.all(np.isinf(got[pad]))
    users = np.arange(num_users)
    last, _ = ids.last(users, 4, pad_item=n)
    got = ids.last_interest_ages(users, 4)
    assert got.shape == (num_users, 4, k)
    np.testing.assert_array_equal(got[last != n], seqs.interest_ages[last[last != n]])
    assert np.all(np.isinf(got[last == n]))
    examples = window_examples(seqs, 3, num_items)
    assert examples["interest_ages"].shape == (*examples["items"].shape, k)
    with pytest.raises(DataError, match="no interest ages"):
        plain.last_interest_ages(users, 4)


def _model(decay="learned", k=3, num_items=12, **kw):
    return ForgettingSASRec(num_items, num_interests=k, interest_decay=decay, max_len=5, dim=8, heads=2, layers=1,
                            dropout=0.0, rngs=nnx.Rngs(0), **kw)


_logits = nnx.jit(lambda model, items, times, ages: model(items, times, ages))
_hidden = nnx.jit(lambda model, items, times: model.hidden_states(items, times))
_query = nnx.jit(lambda model, inputs: model.score(model.query(inputs), model.item_rows()[None]))
_loss = nnx.jit(lambda model, batch, key: model.loss(batch, key))


def _inputs(num_items=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, num_items, (4, 5)).astype(np.int32)
    items[0, :2] = num_items  # padding
    times = relative_times(np.sort(rng.uniform(0, 30 * DAY, (4, 5)), axis=1), items, num_items)
    ages = rng.uniform(0, 60 * DAY, (4, 5, k)).astype(np.float32)
    ages[1, :, 0] = np.inf  # never seen
    ages[2, :, 1] = 1e12  # seen ~30,000 years ago: g -> 0
    ages[3, -1, 2] = 0.0
    return items, times, ages


@pytest.mark.parametrize("decay", ["learned", "none"])
def test_logits_are_h_dot_e_plus_g_dot_a(decay):
    model = _model(decay)
    if decay == "learned":
        model.interest_rate[...] = jnp.asarray([-1.0, 0.3, 2.0])
    items, times, ages = _inputs()
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), split_params(model)[1])
    h = np.asarray(_hidden(model, jnp.asarray(items), jnp.asarray(times)), np.float64)
    table, affinity = params["item_embed"]["embedding"][:12], params["interest_affinity"]
    if decay == "learned":
        rate = np.log1p(np.exp(params["interest_rate"]))
        assert "interest_rate" in params
    else:
        rate = np.zeros(3)
        assert "interest_rate" not in params  # no unused parameter in the checkpoint
    a = ages.astype(np.float64)
    seen = np.isfinite(a)
    g = np.where(seen, (1.0 + np.where(seen, a, 0.0) / DAY) ** -rate, 0.0)
    if decay == "none":
        np.testing.assert_array_equal(g, seen)
    assert np.all(g[1, :, 0] == 0) and np.all(g[3, -1, 2] == 1)  # never seen; seen just now
    assert np.all(g[2, :, 1] < 1e-3) if decay == "learned" else np.all(g[2, :, 1] == 1)  # seen long ago
    want = h @ table.T + g @ affinity.T
    got = np.asarray(_logits(model, jnp.asarray(items), jnp.asarray(times), jnp.asarray(ages)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The ranking path: query [h_last, g_last], rows [E, A], one dot product.
    inputs = {"items": jnp.asarray(items), "times": jnp.asarray(times), "interest_ages": jnp.asarray(ages)}
    np.testing.assert_allclose(np.asarray(_query(model, inputs)), want[:, -1], rtol=1e-4, atol=1e-5)
    # The training loss: cross-entropy of the same logits at every non-padding position.
    targets = np.random.default_rng(3).integers(0, 12, items.shape).astype(np.int32)
    targets[items == 12] = -1
    loss = float(_loss(model, {**inputs, "targets": jnp.asarray(targets)}, jax.random.key(0)))
    log_p = want - np.log(np.sum(np.exp(want - want.max(-1, keepdims=True)), -1, keepdims=True)) - want.max(-1, keepdims=True)
    valid = targets >= 0
    assert loss == pytest.approx(-np.mean(np.take_along_axis(log_p, np.where(valid, targets, 0)[..., None], -1)[..., 0][valid]),
                                 rel=1e-4)
    # Known items out of the softmax (sequence.mask_known): the same gated logits, each position's distinct
    # earlier inputs other than its target left out of its log-sum-exp.
    model.mask_known = True
    masked = float(_loss(model, {**inputs, "targets": jnp.asarray(targets)}, jax.random.key(0)))
    want_masked = []
    for b, t in zip(*np.nonzero(valid)):
        known = sorted({int(i) for i in items[b, : t + 1] if i != 12} - {int(targets[b, t])})
        row = np.delete(want[b, t], known)
        top = row.max()
        want_masked.append(top + np.log(np.exp(row - top).sum()) - want[b, t, targets[b, t]])
    assert masked == pytest.approx(np.mean(want_masked), rel=1e-4)
    assert masked < loss


def test_initial_rate_is_one_half():
    model = _model()
    np.testing.assert_allclose(np.asarray(jax.nn.softplus(model.interest_rate[...])), 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="interest_decay='fast'"):
        _model("fast")


def _interest_log(num_users=40, seed=0):
    """Each user switches between two interests for a few days each; within a run of days the next item is
    the next one of the interest active most recently (K = 4 interests of 4 items each)."""
    rng = np.random.default_rng(seed)
    user, item, ts = [], [], []
    for u in range(num_users):
        t = 1.7e9 + rng.uniform(0, DAY)
        interests = rng.choice(4, 2, replace=False)
        for run in range(4):
            c = interests[run % 2]
            for step in range(3):
                user.append(u)
                item.append(4 * c + (run + step) % 4)
                ts.append(t)
                t += DAY * rng.uniform(0.5, 1.5)
    return np.array(user), np.array(item), np.array(ts), np.repeat(np.arange(4), 4)


def test_gradients_reach_the_rates_and_affinities_and_training_lowers_the_loss():
    user, item, ts, item_category = _interest_log()
    seqs = build_sequences(user, item, ts, 40, item_category=item_category, num_categories=4)
    examples = window_examples(seqs, 6, 16)
    seq = SequenceConfig(max_len=6, dim=8, heads=2, layers=1, dropout=0.0, epochs=6, batch_size=16,
                         learning_rate=1e-2, patience=0)
    config = dataclasses.replace(Config(), model=ModelConfig(name="forgetting_sasrec"), sequence=seq)
    model = build_model(config, 40, 16, seed=0, num_categories=4)
    graphdef, params = split_params(model)
    batch = {name: jnp.asarray(x[:16]) for name, x in examples.items()}
    grads = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p).loss(batch, jax.random.key(0))))(params)
    assert np.abs(np.asarray(grads["interest_rate"])).sum() > 0
    assert np.abs(np.asarray(grads["interest_affinity"])).sum() > 0
    result = train_examples(config, examples, None, num_users=40, num_items=16, progress=False)
    assert set(result.params) >= {"interest_rate", "interest_affinity"}
    assert result.history[-1]["train_loss"] < 0.8 * result.history[0]["train_loss"]
    assert not np.allclose(result.params["interest_rate"], params["interest_rate"])


def _synthetic(tmp_path):
    from fgjax.config import SyntheticConfig
    from fgjax.data.synthetic import generate

    return generate(SyntheticConfig(num_users=40, num_items=30, num_categories=3, num_days=21, users_per_shard=40,
                                    bad_row_fraction=0.0), tmp_path / "data")


SMALL = ["--set", "model.name=forgetting_sasrec", "--set", "sequence.epochs=2", "--set", "sequence.dim=8",
         "--set", "sequence.heads=2", "--set", "sequence.layers=1", "--set", "sequence.max_len=6",
         "--set", "sequence.batch_size=16", "--set", "sequence.patience=0",
         "--set", "analysis.detector.kind=level", "--no-progress"]  # the level rule: the detector is not tested here


@pytest.mark.slow
def test_cli_trains_forgetting_sasrec_and_load_serves_it(tmp_path, capsys):
    """`fgjax train` -> checkpoint -> `fgjax.load` recommends from the saved histories -> `fgjax evaluate`."""
    import pyarrow.parquet as pq

    from fgjax.cli import main
    from fgjax.data.reader import read_events

    paths = _synthetic(tmp_path)
    out = tmp_path / "run"
    data = ["--set", f"data.path={paths.events_dir}", "--set", f"data.items_path={paths.items_path}",
            "--set", "data.format=parquet"]
    assert main(["train", "--out", str(out), *data, *SMALL]) == 0, capsys.readouterr().err
    model = fgjax.load(out / "checkpoint")
    assert model.config.model.name == "forgetting_sasrec" and model.has_forgetting
    assert "interest_rate" in model.params and model.params["interest_affinity"].shape == (30, 3)
    log = read_events(model.config.data)
    want = build_sequences(log.user, log.item, log.timestamp, log.num_users, item_category=log.item_category,
                           num_categories=3)
    np.testing.assert_array_equal(model.state.history.interest_ages, want.interest_ages)  # saved, exact
    users = np.array([0, 5, 17])
    table = model.recommend(model.users.decode(users), k=4, use_forgetting=False)
    inputs = query_inputs(model.graphdef, model.params, users, want, num_items=30)
    _, top = rank_items(model.graphdef, model.params, users, k=4, num_items=30, inputs=inputs, seen=model.state.seen)
    assert table.column("item_id").to_pylist() == model.items.decode(top.ravel()).to_pylist()
    # `fgjax recommend` serves the same lists (every user; here with the forgetting re-weighting too).
    assert main(["recommend", "--checkpoint", str(out / "checkpoint"), "--k", "4", "--no-forgetting",
                 "--out", str(tmp_path / "rec.parquet")]) == 0, capsys.readouterr().err
    served = pq.read_table(tmp_path / "rec.parquet").to_pylist()
    by_user = {u: [r["item_id"] for r in served if r["user_id"] == u] for u in table.column("user_id").to_pylist()}
    assert [i for u in dict.fromkeys(table.column("user_id").to_pylist()) for i in by_user[u]] \
        == table.column("item_id").to_pylist()
    assert model.recommend(model.users.decode(users), k=4).num_rows == 12
    # The checkpoint evaluates like any other (its histories rebuilt with the categories).
    assert main(["evaluate", "--out", str(tmp_path / "eval"), "--checkpoint", str(out / "checkpoint"), *data,
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert "test forgetting_sasrec:" in capsys.readouterr().out


def test_without_categories_is_one_clear_error(tmp_path, capsys):
    from fgjax.cli import main

    paths = _synthetic(tmp_path)
    code = main(["train", "--out", str(tmp_path / "run"), "--set", f"data.path={paths.events_dir}",
                 "--set", "data.format=parquet", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "fgjax: error: model.name=forgetting_sasrec: forgetting_sasrec needs item categories (data.items_path)"]
    # Histories without interest ages, and a model built without categories.
    config = dataclasses.replace(Config(), model=ModelConfig(name="forgetting_sasrec"),
                                 sequence=SequenceConfig(max_len=4, dim=8, heads=2, layers=1))
    graphdef, params = split_params(build_model(config, 2, 5, seed=0, num_categories=2))
    plain = build_sequences(np.array([0, 0, 1]), np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]), 2)
    with pytest.raises(DataError, match=r"forgetting_sasrec needs item categories \(data.items_path\)"):
        query_inputs(graphdef, params, np.array([0, 1]), plain, num_items=5)
    with pytest.raises(ConfigError, match=r"needs item categories \(data.items_path\)"):
        build_model(config, 2, 5, seed=0)


def test_interest_time_unit_and_decay_are_checked_settings():
    from fgjax.config import load_config

    config = load_config(None, ["model.name=forgetting_sasrec", "sequence.interest_decay=none",
                                "sequence.interest_time_unit_seconds=3600"])
    assert config.sequence.interest_decay == "none" and config.sequence.interest_time_unit_seconds == 3600
    model = build_model(dataclasses.replace(config, sequence=dataclasses.replace(
        config.sequence, max_len=4, dim=8, heads=2, layers=1)), 0, 5, seed=0, num_categories=2)
    assert model.interest_time_unit == 3600 and model.interest_decay == "none"
    with pytest.raises(ConfigError, match="interest_decay"):
        load_config(None, ["sequence.interest_decay=fast"])
    with pytest.raises(ConfigError, match="interest_time_unit_seconds"):
        load_config(None, ["sequence.interest_time_unit_seconds=0"])
    assert math.isclose(Config().sequence.interest_time_unit_seconds, 86400.0)
