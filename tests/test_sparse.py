"""Row optimizers and the sparse, row-sharded train step against simple dense references."""

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
import optax
import pytest
from flax import nnx

from fgjax.config import Config, ModelConfig, load_config
from fgjax.data.split import leave_last_out
from fgjax.models import build_model, split_params
from fgjax.training.loop import (
    bce_loss, epoch_order, init_state, make_mesh, make_train_step, pair_examples, state_shardings, train,
)
from fgjax.training.sparse import lazy_adam, row_adagrad, table_optimizer


def _batches(rng, num_rows, d, steps, n=12):
    for _ in range(steps):
        rows = rng.integers(0, num_rows + 3, n)  # repeats, and padding rows >= num_rows
        yield rows.astype(np.int32), rng.normal(size=(n, d)).astype(np.float32)


def _dense_grad(rows, grads, num_rows):
    out = np.zeros((num_rows, grads.shape[1]))
    for r, g in zip(rows, grads):
        if r < num_rows:
            out[r] += g
    return out


def test_row_adagrad_equals_dense_row_adagrad():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(20, 4)).astype(np.float32)
    opt = row_adagrad(0.3, initial_accumulator=0.1)
    state = opt.init(jnp.asarray(table))
    update = jax.jit(opt.update)
    got = jnp.asarray(table)
    ref, acc = table.astype(np.float64), np.full(20, 0.1)
    for rows, grads in _batches(rng, 20, 4, 6):
        got, state = update(got, state, rows, grads)
        g = _dense_grad(rows, grads, 20)  # zero rows: no change, exactly as dense row-wise Adagrad
        acc += np.mean(g * g, axis=1)
        ref -= 0.3 * g / (np.sqrt(acc)[:, None] + 1e-10)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.accum), acc, rtol=1e-5)


def test_lazy_adam_equals_adam_on_the_touched_rows():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(15, 3)).astype(np.float32)
    opt = lazy_adam(0.05)
    state = opt.init(jnp.asarray(table))
    update = jax.jit(opt.update)
    got = jnp.asarray(table)
    ref = table.astype(np.float64)
    mu, nu, count = np.zeros((15, 3)), np.zeros((15, 3)), np.zeros(15)
    untouched = np.ones(15, bool)
    for rows, grads in _batches(rng, 15, 3, 5, n=6):
        got, state = update(got, state, rows, grads)
        g = _dense_grad(rows, grads, 15)
        used = np.isin(np.arange(15), rows)
        untouched &= ~used
        count[used] += 1
        mu[used] = 0.9 * mu[used] + 0.1 * g[used]
        nu[used] = 0.999 * nu[used] + 0.001 * g[used] ** 2
        c = count[used][:, None]
        ref[used] -= 0.05 * (mu[used] / (1 - 0.9**c)) / (np.sqrt(nu[used] / (1 - 0.999**c)) + 1e-8)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.count), count)
    assert untouched.any()  # some rows never used: bit-identical to the start
    np.testing.assert_array_equal(np.asarray(got)[untouched], table[untouched])
    with pytest.raises(ValueError, match="table optimizer"):
        table_optimizer("sgd", 0.1)


def _dense_reference(graphdef, params, batches, *, lr, negatives, seed, num_items, num_users):
    """Full-gradient step: Adam on the MLP layers, dense row-wise Adagrad on the tables."""
    adam = optax.adam(lr)
    dense = {k: v for k, v in params.items() if k not in ("user_embed", "item_embed")}
    opt_state = adam.init(dense)
    acc = {"user_embed": np.full(num_users, 0.1), "item_embed": np.full(num_items, 0.1)}
    params = jax.tree.map(np.asarray, params)
    losses = []
    grad_fn = jax.jit(jax.value_and_grad(lambda p, u, i, n: bce_loss(graphdef, p, u, i, n)))
    for step, (users, items) in enumerate(batches):
        key = jax.random.fold_in(jax.random.key(seed), step)
        negs = jax.random.randint(key, (len(users), negatives), 0, num_items, dtype=jnp.int32)
        loss, grads = grad_fn(params, users, items, negs)
        losses.append(float(loss))
        g_dense = {k: v for k, v in grads.items() if k in dense}
        updates, opt_state = adam.update(g_dense, opt_state, {k: params[k] for k in dense})
        new = dict(optax.apply_updates({k: params[k] for k in dense}, updates))
        for name in ("user_embed", "item_embed"):
            g = np.asarray(grads[name]["embedding"], np.float64)
            acc[name] += np.mean(g * g, axis=1)
            table = np.asarray(params[name]["embedding"], np.float64) - lr * g / (np.sqrt(acc[name])[:, None] + 1e-10)
            new[name] = {"embedding": table.astype(np.float32)}
        params = jax.tree.map(np.asarray, new)
    return params, losses


def _sparse_run(graphdef, params, batches, *, lr, negatives, seed, num_items, num_devices):
    """The loop's row-sparse step (``train.table_optimizer: row_adagrad``); negatives per positive are the model's."""
    assert nnx.merge(graphdef, params).negatives == negatives
    mesh = make_mesh(num_devices)
    params = jax.tree.map(np.array, params)  # host copies: the state is donated step after step
    adam, rows = optax.adam(lr), row_adagrad(lr)
    state = init_state(params, adam, rows)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    step = make_train_step(graphdef, adam, mesh, shardings, seed=seed, table_opt=rows)
    losses = []
    for users, items in batches:
        state, loss = step(state, {"user": users, "item": items})
        losses.append(float(loss))
    return state, losses


def _problem(num_users=64, num_items=40, batch=32, steps=4, seed=0, negatives=2):
    config = dataclasses.replace(Config(), model=ModelConfig(embed_dim=8, hidden_dim=16),
                                 train=dataclasses.replace(Config().train, negatives=negatives))
    model = build_model(config, num_users, num_items, seed=seed)
    graphdef, params = split_params(model)
    rng = np.random.default_rng(seed)
    batches = [(rng.integers(0, num_users, batch).astype(np.int32), rng.integers(0, num_items, batch).astype(np.int32))
               for _ in range(steps)]
    return graphdef, params, batches


@pytest.mark.slow
def test_sparse_step_equals_the_dense_reference():
    graphdef, params, batches = _problem()
    kw = dict(lr=0.05, negatives=2, seed=3, num_items=40)
    want, want_losses = _dense_reference(graphdef, params, batches, num_users=64, **kw)
    state, losses = _sparse_run(graphdef, params, batches, num_devices=1, **kw)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-4, atol=1e-5)


def test_row_adagrad_option_of_the_loop_equals_the_dense_reference(tmp_path, small_log):
    """``train.table_optimizer=row_adagrad`` through ``fgjax.training.train`` = Adam + dense row-wise Adagrad."""
    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    overrides = ["model.embed_dim=8", "model.hidden_dim=16", "train.batch_size=32", "train.negatives=2",
                 "train.learning_rate=0.05", "train.seed=3", "train.max_steps=5", "train.epochs=3"]
    config = load_config(None, overrides + ["train.table_optimizer=row_adagrad"])
    result = train(config, small_log, split, tmp_path / "ck", progress=False)
    assert result.steps == 5 and result.best_epoch == 0  # stopped before the first validation: the last params
    graphdef, params = split_params(build_model(config, small_log.num_users, small_log.num_items, seed=3))
    pairs = pair_examples(split)
    order = epoch_order(3, 0, len(pairs["user"]))
    batches = [(pairs["user"][order[s * 32 : (s + 1) * 32]], pairs["item"][order[s * 32 : (s + 1) * 32]])
               for s in range(5)]
    want, want_losses = _dense_reference(graphdef, params, batches, lr=0.05, negatives=2, seed=3,
                                         num_items=small_log.num_items, num_users=small_log.num_users)
    np.testing.assert_allclose(result.step_losses, want_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(result.params)):
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-4, atol=1e-5)
    # The dense run of the same config differs (Adam on the tables), and lazy_adam trains too.
    dense = train(load_config(None, overrides), small_log, split, tmp_path / "dense", progress=False)
    assert not np.allclose(dense.params["user_embed"]["embedding"], result.params["user_embed"]["embedding"])
    lazy = train(load_config(None, overrides + ["train.table_optimizer=lazy_adam", "train.max_steps=0"]), small_log,
                 split, tmp_path / "lazy", progress=False)
    assert lazy.history[-1]["train_loss"] < lazy.history[0]["train_loss"]


EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_sparse import _problem, _sparse_run
    graphdef, params, batches = _problem()
    kw = dict(lr=0.05, negatives=2, seed=3, num_items=40)
    out = {"devices": len(jax.devices())}
    for n in (1, 8):
        state, losses = _sparse_run(graphdef, params, batches, num_devices=n, **kw)
        t = state.params["user_embed"]["embedding"]
        out[n] = {"losses": losses, "user": np.asarray(t).tolist(),
                  "item": np.asarray(state.params["item_embed"]["embedding"]).tolist(),
                  "shards": len(t.addressable_shards), "shard_rows": t.addressable_shards[0].data.shape[0],
                  "accum_shard_rows": state.opt_state.tables["user"].accum.addressable_shards[0].data.shape[0]}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_row_sharded_tables_on_eight_devices_equal_one_device():
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 8
    one, eight = out["1"], out["8"]
    assert eight["shards"] == 8 and eight["shard_rows"] == 64 // 8 and eight["accum_shard_rows"] == 8
    assert one["shard_rows"] == 64
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-5)
    np.testing.assert_allclose(eight["user"], one["user"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eight["item"], one["item"], rtol=1e-4, atol=1e-5)
