"""The time-aware sequence model: sequences, attention semantics, loss, training, ranking."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fgjax.config import Config, ModelConfig, SequenceConfig, load_config
from fgjax.data.sequences import build_sequences
from fgjax.data.split import ItemSets, leave_last_out
from fgjax.errors import CheckpointError, ConfigError
from fgjax.models import build_model, split_params
from fgjax.models.sequence import TimeAwareSASRec, count_params, time_buckets
from fgjax.data.sequences import relative_times
from fgjax.ranking.topk import query_inputs, rank_items
from fgjax.training.loop import run_fingerprint, train_examples, validation_from, window_examples


def build_sequence_model(seq: SequenceConfig, num_items: int, *, seed: int):
    return build_model(dataclasses.replace(Config(), model=ModelConfig(name="time_sasrec"), sequence=seq), 0,
                       num_items, seed=seed)


def train_sequence(config, sequences, num_items, *, val_users, val_targets, val_seen, checkpoint_dir=None,
                   progress=False, name="time_sasrec"):
    """The loop on next-item windows, validated from the training sequences (as bench.quality trains)."""
    config = dataclasses.replace(config, model=ModelConfig(name=name))
    return train_examples(config, window_examples(sequences, config.sequence.max_len, num_items),
                          validation_from(val_users, val_targets, val_seen, sequences, num_items=num_items),
                          num_users=sequences.num_users, num_items=num_items, checkpoint_dir=checkpoint_dir,
                          progress=progress)


# The network's methods compiled once per shape: called eagerly, each of their ~100 ops would compile alone.
_hidden_states = nnx.jit(lambda model, items, times: model.hidden_states(items, times))
_user_state = nnx.jit(lambda model, items, times: model.user_state(items, times))
_loss = nnx.jit(lambda model, batch, key: model.loss(batch, key))
_logits = nnx.jit(lambda model, items, times: model(items, times))


def _model(encoding="interval", **kw):
    return TimeAwareSASRec(12, max_len=6, dim=8, heads=2, layers=2, time_encoding=encoding, dropout=0.0,
                           rngs=nnx.Rngs(0), **kw)


def test_sequences_order_ties_and_first_interactions():
    user = np.array([0, 0, 0, 0, 1, 1])
    item = np.array([5, 4, 5, 3, 2, 1])
    ts = np.array([10.0, 20.0, 5.0, 20.0, 1.0, 1.0])
    seqs = build_sequences(user, item, ts, 3)
    assert seqs.lengths().tolist() == [3, 2, 0]
    # Item 5 counts once at its first time; the tie at t=20 keeps the input order (4 before 3).
    assert seqs.items[:3].tolist() == [5, 4, 3] and seqs.times[:3].tolist() == [5.0, 20.0, 20.0]
    assert seqs.items[3:].tolist() == [2, 1]
    # The option: ties by item index.
    assert build_sequences(user, item, ts, 3, ties="item").items.tolist() == [5, 3, 4, 1, 2]
    masked = build_sequences(user, item, ts, 3, events=ts < 15)
    assert masked.items.tolist() == [5, 2, 1]
    items, times = seqs.last(np.array([0, 1, 2]), 2, pad_item=99)
    assert items.tolist() == [[4, 3], [2, 1], [99, 99]]
    assert times.tolist() == [[20.0, 20.0], [1.0, 1.0], [0.0, 0.0]]


def test_training_windows_use_every_target_once():
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(5), [1, 2, 7, 11, 4])
    item = rng.permutation(40)[: len(user)]  # distinct items: each tells its user and position
    ts = np.arange(len(user), dtype=float)
    seqs = build_sequences(user, item, ts, 5)
    inputs, times, targets = seqs.training_windows(3, pad_item=40)
    got = sorted(targets[targets >= 0].tolist())
    want = sorted(np.concatenate([seqs.items[seqs.indptr[u] + 1 : seqs.indptr[u + 1]] for u in range(5)]).tolist())
    assert got == want  # each (input, target) position exactly once
    for row_in, row_t, row_tg in zip(inputs, times, targets):
        valid = row_tg >= 0
        assert np.all((row_in != 40) == valid)  # padding aligned on both
        assert valid[-1] and np.all(np.diff(valid.astype(int)) >= 0)  # left-padded
        # Each target is the item that follows its input in the user's sequence.
        for a, b in zip(row_in[valid], row_tg[valid]):
            pos = np.flatnonzero(seqs.items == a)[0]
            assert seqs.items[pos + 1] == b
        assert np.all(np.diff(row_t[valid]) >= 0)


@pytest.mark.parametrize("ties", ["input", "item"])
def test_sequences_agree_with_leave_last_out(ties):
    rng = np.random.default_rng(1)
    user = rng.integers(0, 20, 400)
    item = rng.integers(0, 50, 400)
    ts = rng.integers(0, 30, 400).astype(float)  # many ties
    split = leave_last_out(user, item, ts, 20, ties=ties)
    full = build_sequences(user, item, ts, 20, ties=ties)
    hist = build_sequences(user, item, ts, 20, split.history_events, ties=ties)
    train = build_sequences(user, item, ts, 20, split.train_events, ties=ties)
    for u in np.flatnonzero(split.test_target >= 0):
        assert full.items[full.indptr[u + 1] - 1] == split.test_target[u]
        assert hist.items[hist.indptr[u + 1] - 1] == split.val_target[u]
        got = set(train.items[train.indptr[u] : train.indptr[u + 1]].tolist())
        assert got == set(split.train_items.items[split.train_items.indptr[u] : split.train_items.indptr[u + 1]].tolist())


def test_time_buckets_match_numpy():
    gaps = np.array([0.0, 30.0, 60.0, 61.0, 3600.0, 86400.0, 1e9, -120.0])
    want = np.clip(np.floor(np.log2(1 + np.abs(gaps) / 60.0)), 0, 15)
    np.testing.assert_array_equal(np.asarray(time_buckets(jnp.asarray(gaps), time_unit=60.0, num_buckets=16)), want)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["none", "decay"])
def test_attention_is_causal_and_ignores_padding(encoding):
    model = _model(encoding)
    rng = np.random.default_rng(0)
    items = rng.integers(0, 12, (3, 6)).astype(np.int32)
    times = np.cumsum(rng.uniform(0, 1e5, (3, 6)), axis=1).astype(np.float32)
    base = np.asarray(_hidden_states(model, jnp.asarray(items), jnp.asarray(times)))
    changed = items.copy()
    changed[:, 4] = (changed[:, 4] + 1) % 12
    out = np.asarray(_hidden_states(model, jnp.asarray(changed), jnp.asarray(times)))
    np.testing.assert_allclose(out[:, :4], base[:, :4], atol=1e-5)  # the past never sees the future
    assert not np.allclose(out[:, 4:], base[:, 4:], atol=1e-4)
    # More left padding (and arbitrary times there) leaves the state of the real items unchanged.
    padded = items.copy()
    padded[:, :2] = 12
    ptimes = times.copy()
    ptimes[:, :2] = rng.uniform(-1e7, 1e7, (3, 2))
    a = np.asarray(_user_state(model, jnp.asarray(padded), jnp.asarray(ptimes)))
    b = np.asarray(_user_state(model, jnp.asarray(padded[:, 2:]), jnp.asarray(times[:, 2:])))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(_hidden_states(model, jnp.full((2, 6), 12), jnp.zeros((2, 6))))))


def test_time_encodings_use_the_gaps():
    items = jnp.asarray(np.arange(6, dtype=np.int32)[None])
    t1 = jnp.asarray(np.array([[0, 60, 120, 180, 240, 300]], np.float32))
    t2 = jnp.asarray(np.array([[0, 1e5, 2e5, 3e5, 4e5, 5e5]], np.float32))
    plain = _model("none")
    np.testing.assert_allclose(_user_state(plain, items, t1), _user_state(plain, items, t2), atol=1e-6)
    decay = _model("decay")
    assert not np.allclose(_user_state(decay, items, t1), _user_state(decay, items, t2), atol=1e-4)
    interval = _model("interval")
    for block in interval.blocks:
        block.time_bias[...] = jnp.asarray(np.random.default_rng(0).normal(size=block.time_bias.shape), jnp.float32)
    assert not np.allclose(_user_state(interval, items, t1), _user_state(interval, items, t2), atol=1e-4)
    # The decay bias is -softplus(r) * log(1 + gap / unit) per head, exactly.
    block = decay.blocks[0]
    gaps = np.abs(np.asarray(t2)[0][:, None] - np.asarray(t2)[0][None, :])
    got = np.asarray(block.attention_bias(None, jnp.log1p(jnp.asarray(gaps) / 60.0)[None]))
    rate = np.log1p(np.exp(np.asarray(block.decay_rate[...], np.float64)))
    np.testing.assert_allclose(got[0], -rate[:, None, None] * np.log1p(gaps / 60.0)[None], rtol=1e-5)


@pytest.mark.slow
def test_full_softmax_loss_matches_numpy_and_dropout_needs_a_key():
    model = _model("interval")
    graphdef, params = split_params(model)
    rng = np.random.default_rng(3)
    inputs = rng.integers(0, 12, (4, 6)).astype(np.int32)
    inputs[0, :3] = 12
    targets = rng.integers(0, 12, (4, 6)).astype(np.int32)
    targets[0, :3] = -1
    times = np.cumsum(rng.uniform(0, 1e4, (4, 6)), axis=1).astype(np.float32)
    key = jax.random.key(0)
    batch = {"items": jnp.asarray(inputs), "times": jnp.asarray(times), "targets": jnp.asarray(targets)}
    loss = float(_loss(model, batch, key))
    logits = np.asarray(_logits(model, jnp.asarray(inputs), jnp.asarray(times)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    valid = targets >= 0
    want = -np.mean(np.take_along_axis(logp, np.maximum(targets, 0)[..., None], -1)[..., 0][valid])
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    sampled_model = nnx.merge(graphdef, params)
    sampled_model.loss_kind, sampled_model.sampled_negatives = "sampled_softmax", 6
    sampled = float(_loss(sampled_model, batch, key))
    assert np.isfinite(sampled) and 0 < sampled < loss + 5
    dropped = TimeAwareSASRec(12, max_len=6, dim=8, heads=2, layers=1, dropout=0.5, rngs=nnx.Rngs(0))
    a = dropped.hidden_states(jnp.asarray(inputs), jnp.asarray(times))
    np.testing.assert_array_equal(a, dropped.hidden_states(jnp.asarray(inputs), jnp.asarray(times)))
    assert not np.allclose(a, dropped.hidden_states(jnp.asarray(inputs), jnp.asarray(times), jax.random.key(1)))


def _known_masked_reference(logits, inputs, targets, pad):
    """float64 mean cross-entropy with each position's known items (distinct earlier inputs, not the target) left out."""
    losses = []
    for b, t in zip(*np.nonzero(targets >= 0)):
        known = {int(i) for i in inputs[b, : t + 1] if i != pad} - {int(targets[b, t])}
        keep = np.ones(logits.shape[-1], bool)
        keep[sorted(known)] = False
        row = logits[b, t]
        top = row[keep].max()
        losses.append(top + np.log(np.exp(row[keep] - top).sum()) - row[targets[b, t]])
    return np.mean(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_known_loss_matches_numpy(seed):
    """Padding, a repeated input, a target that is among its position's inputs: each as the float64 reference."""
    rng = np.random.default_rng(seed)
    model = _model("interval", mask_known=True)
    inputs = rng.integers(0, 12, (4, 6)).astype(np.int32)
    inputs[0, :2] = 12  # padding
    targets = rng.integers(0, 12, (4, 6)).astype(np.int32)
    targets[0, :2] = -1
    inputs[1, 4] = inputs[1, 1]  # a repeat counts once
    targets[2, 3] = inputs[2, 1]  # a known item as the target stays in its softmax
    times = np.cumsum(rng.uniform(0, 1e4, (4, 6)), axis=1).astype(np.float32)
    batch = {"items": jnp.asarray(inputs), "times": jnp.asarray(times), "targets": jnp.asarray(targets)}
    loss = float(_loss(model, batch, jax.random.key(0)))
    logits = np.asarray(_logits(model, jnp.asarray(inputs), jnp.asarray(times)), np.float64)
    np.testing.assert_allclose(loss, _known_masked_reference(logits, inputs, targets, 12), rtol=1e-5)
    plain = _model("interval")  # the same draws: masking only removes terms from each log-sum-exp
    assert loss < float(_loss(plain, batch, jax.random.key(0)))


def test_mask_known_gradients_match_autodiff_of_dense_logits():
    """The chunked masked loss differentiates like the same loss on the dense (B, L, items) logits."""
    rng = np.random.default_rng(7)
    model = _model("interval", mask_known=True)
    inputs = rng.integers(0, 12, (3, 6)).astype(np.int32)
    inputs[0, :3] = 12
    targets = rng.integers(0, 12, (3, 6)).astype(np.int32)
    targets[0, :3] = -1
    times = np.cumsum(rng.uniform(0, 1e4, (3, 6)), axis=1).astype(np.float32)
    batch = {"items": jnp.asarray(inputs), "times": jnp.asarray(times), "targets": jnp.asarray(targets)}
    earlier = np.tril(np.ones((6, 6), bool))
    first = np.array([[row[s] not in row[:s] for s in range(6)] for row in inputs])
    known = np.zeros((3, 6, 12), bool)
    for b in range(3):
        for t in range(6):
            for s in range(6):
                if earlier[t, s] and first[b, s] and inputs[b, s] != 12 and inputs[b, s] != targets[b, t]:
                    known[b, t, inputs[b, s]] = True
    valid = targets >= 0

    def dense(m):
        logits = jnp.where(known, -jnp.inf, m(batch["items"], batch["times"]))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(batch["targets"], 0))
        return jnp.sum(jnp.where(valid, ce, 0.0)) / valid.sum()

    got = nnx.jit(nnx.grad(lambda m: m.loss(batch, jax.random.key(0))))(model)
    want = nnx.jit(nnx.grad(dense))(model)
    for a, b in zip(jax.tree.leaves(nnx.state(got)), jax.tree.leaves(nnx.state(want))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_mask_known_needs_the_full_softmax():
    with pytest.raises(ValueError, match="mask_known needs loss='full_softmax'"):
        _model("interval", mask_known=True, loss="sampled_softmax")
    with pytest.raises(ConfigError, match="sequence.mask_known=true: expected sequence.loss=full_softmax"):
        load_config(overrides=["sequence.mask_known=true", "sequence.loss=sampled_softmax"])


def test_relative_times_are_float32_safe():
    items = np.array([[9, 1, 2], [9, 9, 9]])
    times = np.array([[0.0, 1.7e9, 1.7e9 + 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(relative_times(times, items, 9), [[0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])


def test_size_scales_with_config():
    small = build_sequence_model(SequenceConfig(dim=16, layers=1, heads=2, max_len=10), 100, seed=0)
    big = build_sequence_model(SequenceConfig(dim=32, layers=3, heads=4, max_len=20), 1000, seed=0)
    n_small, n_big = count_params(split_params(small)[1]), count_params(split_params(big)[1])
    assert n_small < n_big
    assert (1000 + 1) * 32 + 20 * 32 < n_big  # item table + positions are part of it


def _cyclic_data(num_users=48, num_items=16, length=12, seed=0):
    """Each user walks the catalog in order from a random start: the next item is predictable."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, num_items, num_users)
    user = np.repeat(np.arange(num_users), length)
    item = (start[:, None] + np.arange(length)[None]) % num_items
    ts = 1.7e9 + np.arange(length)[None] * 3600.0 + rng.uniform(0, 1e5, (num_users, 1))
    return user, item.ravel(), ts.ravel()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["full_softmax", "sampled_softmax"])
def test_training_learns_a_predictable_order_and_ranks_with_masks(loss):
    user, item, ts = _cyclic_data()
    split = leave_last_out(user, item, ts, 48)
    train = build_sequences(user, item, ts, 48, split.train_events)
    users = np.flatnonzero(split.val_target >= 0)
    seq = SequenceConfig(max_len=8, dim=16, heads=2, layers=1, dropout=0.0, epochs=40, batch_size=16,
                         learning_rate=1e-2, patience=5, loss=loss, sampled_negatives=6)
    config = dataclasses.replace(Config(), sequence=seq)
    result = train_sequence(config, train, 16, val_users=users, val_targets=split.val_target[users][:, None],
                            val_seen=ItemSets.from_pairs(np.zeros(0, int), np.zeros(0, int), 48), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert max(h["val_hit_rate@10"] for h in result.history) == 1.0  # next item of the cycle is in the top 10
    best = [h for h in result.history if h["epoch"] == result.best_epoch][0]
    assert best["val_ndcg@10"] == max(h["val_ndcg@10"] for h in result.history)
    assert result.stopped_early == (result.epochs < 40)
    hist = build_sequences(user, item, ts, 48, split.history_events)
    inputs = query_inputs(result.graphdef, result.params, users, hist, num_items=16)
    _, top = rank_items(result.graphdef, result.params, users, k=5, num_items=16, inputs=inputs,
                        seen=split.history_items)
    assert np.mean(top[:, 0] == split.test_target[users]) > 0.5
    seen = split.history_items
    for row, u in zip(top, users):
        assert not set(row.tolist()) & set(seen.items[seen.indptr[u] : seen.indptr[u + 1]].tolist())


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    user, item, ts = _cyclic_data(num_users=24, length=8)
    split = leave_last_out(user, item, ts, 24)
    train = build_sequences(user, item, ts, 24, split.train_events)
    users = np.flatnonzero(split.val_target >= 0)
    seq = SequenceConfig(max_len=6, dim=8, heads=2, layers=1, dropout=0.1, epochs=4, batch_size=8, patience=0)
    kw = dict(val_users=users, val_targets=split.val_target[users][:, None], val_seen=split.train_items, progress=False)
    full = train_sequence(dataclasses.replace(Config(), sequence=seq), train, 16, **kw)
    short = dataclasses.replace(Config(), sequence=dataclasses.replace(seq, epochs=2))
    train_sequence(short, train, 16, checkpoint_dir=tmp_path / "ck", **kw)
    resumed = train_sequence(dataclasses.replace(Config(), sequence=seq), train, 16, checkpoint_dir=tmp_path / "ck", **kw)
    assert resumed.resumed_from == 2 * (full.steps // 4) and len(resumed.history) == 4
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history], rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), resumed.params, full.params)
    other = dataclasses.replace(Config(), sequence=dataclasses.replace(seq, dim=16))
    with pytest.raises(CheckpointError, match="other data or settings .*architecture"):
        train_sequence(other, train, 16, checkpoint_dir=tmp_path / "ck", **kw)


MULTI_DEVICE_SCRIPT = """
import dataclasses, json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from test_models_sequence import _cyclic_data
from fgjax.config import Config, SequenceConfig
from fgjax.data.sequences import build_sequences
from fgjax.data.split import leave_last_out
from test_models_sequence import train_sequence
user, item, ts = _cyclic_data(num_users=32, length=8)
split = leave_last_out(user, item, ts, 32)
train = build_sequences(user, item, ts, 32, split.train_events)
users = np.flatnonzero(split.val_target >= 0)
out = {"devices": len(jax.devices())}
for n in (1, 8):
    seq = SequenceConfig(max_len=6, dim=8, heads=2, layers=1, dropout=0.0, epochs=3, batch_size=16, patience=0)
    config = dataclasses.replace(Config(), sequence=seq, train=dataclasses.replace(Config().train, num_devices=n))
    r = train_sequence(config, train, 16, val_users=users, val_targets=split.val_target[users][:, None],
                       val_seen=split.train_items, progress=False)
    out[n] = {"losses": [h["train_loss"] for h in r.history],
              "params": [np.asarray(x).ravel()[:50].tolist() for x in jax.tree.leaves(r.params)]}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_eight_devices_train_like_one(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT, str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 8
    np.testing.assert_allclose(out["8"]["losses"], out["1"]["losses"], rtol=2e-5, atol=1e-6)
    # Adam turns reduction-order noise in near-zero gradients (e.g. time buckets a
    # batch barely uses) into steps of up to lr = 1e-3, so params agree to ~lr.
    for a, b in zip(out["1"]["params"], out["8"]["params"]):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=5e-3)


def test_mask_known_enters_the_run_fingerprint_only_when_on():
    """Checkpoints written before the setting existed keep their fingerprint; a masked run is another run."""
    examples = {"items": np.zeros((2, 3), np.int32)}
    config = dataclasses.replace(Config(), model=ModelConfig(name="time_sasrec"))
    off = run_fingerprint(config, examples, 4, 5)
    on = run_fingerprint(dataclasses.replace(config, sequence=SequenceConfig(mask_known=True)), examples, 4, 5)
    assert "mask_known" not in off["architecture"]
    assert on["architecture"]["mask_known"] is True
    assert {k: v for k, v in on["architecture"].items() if k != "mask_known"} == off["architecture"]
