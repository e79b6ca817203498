"""Large embedding tables: optimizers that touch only the rows a batch uses, row-sharded tables.

A dense optimizer (``optax.adam``, ``train.table_optimizer: dense``) reads and writes every
row of every table every step, and keeps two moments per parameter. For the
tables this module offers ``init``/``update`` pairs over ``(table, state, rows,
row_grads)`` that gather, update and scatter only the batch's rows:

- ``row_adagrad``: one accumulator per row (mean of the squared row gradient),
  ``table[r] -= lr * g_r / (sqrt(acc_r) + eps)``. Rows without gradient are
  left alone by dense row-wise Adagrad too, so it equals the dense update
  exactly (tested).
- ``lazy_adam``: Adam moments per element and a step count per row; a row's
  moments decay only at the steps that use it (as ``tf.keras``/PyTorch
  ``SparseAdam``): equal to dense Adam applied to the touched rows only.

Memory (float32), for 10M users x 64 and 1M items x 64 (``model.embed_dim=64``):

=================  ==============  ==============  ============
                   tables          optimizer state total
=================  ==============  ==============  ============
dense Adam         2.56 + 0.26 GB  2 x 2.82 GB     8.45 GB
row_adagrad        2.82 GB         (10M + 1M) x 4 B = 44 MB  2.86 GB
lazy_adam          2.82 GB         2 x 2.82 GB + 44 MB       8.49 GB
=================  ==============  ==============  ============

and per step dense Adam moves ~ 5 x 2.82 GB of HBM traffic (read table, mu,
nu; write them) while the row optimizers move O(batch x (1 + negatives) x 64)
floats. As ``train.table_optimizer`` of ``fgjax.training.loop`` the tables and their row states are
sharded by rows over the mesh's ``data`` axis (each of n devices holds
1/n of them: 10M x 64 over 8 devices = 320 MB each); the batch is sharded
along the same axis and XLA turns the row gathers and scatters into masked
local ones plus a reduction.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

TABLE_OPTIMIZERS = ("row_adagrad", "lazy_adam")  # train.table_optimizer besides "dense"
#: (model param name, table name) of EmbeddingMLP's embedding tables.
TABLES = (("user_embed", "user"), ("item_embed", "item"))


class SparseRowOptimizer(NamedTuple):
    """``init(table) -> state``; ``update(table, state, rows (n,), row_grads (n, d)) -> (table, state)``.

    ``rows`` may repeat (their gradients are summed) and may hold padding
    ``>= len(table)`` (ignored).
    """

    init: Callable[[jax.Array], Any]
    update: Callable[[jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


class RowAdagradState(NamedTuple):
    accum: jax.Array  # (rows,) float32


class LazyAdamState(NamedTuple):
    mu: jax.Array  # (rows, d)
    nu: jax.Array  # (rows, d)
    count: jax.Array  # (rows,) int32 steps that used the row


def dedupe_rows(rows: jax.Array, grads: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
    """``(ids (n,), summed (n, d))``: distinct rows (padded with ``num_rows``) and their summed gradients."""
    ids, inverse = jnp.unique(rows, size=rows.shape[0], fill_value=num_rows, return_inverse=True)
    summed = jnp.zeros(grads.shape, grads.dtype).at[inverse.reshape(-1)].add(grads)
    return ids, summed


def row_adagrad(learning_rate: float, *, initial_accumulator: float = 0.1, eps: float = 1e-10) -> SparseRowOptimizer:
    """Row-wise Adagrad (one accumulator per row, as in DLRM / TorchRec)."""

    def init(table):
        return RowAdagradState(jnp.full(table.shape[:1], initial_accumulator, jnp.float32))

    def update(table, state, rows, grads):
        ids, g = dedupe_rows(rows, grads, table.shape[0])
        acc = state.accum.at[ids].get(mode="fill", fill_value=0.0) + jnp.mean(g * g, axis=1)
        step = (-learning_rate * g / (jnp.sqrt(acc)[:, None] + eps)).astype(table.dtype)
        return table.at[ids].add(step, mode="drop"), RowAdagradState(state.accum.at[ids].set(acc, mode="drop"))

    return SparseRowOptimizer(init, update)


def lazy_adam(learning_rate: float, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> SparseRowOptimizer:
    """Adam whose moments and bias correction advance only for the rows a step uses."""

    def init(table):
        # Two buffers, not one: the state is donated and a buffer cannot be donated twice.
        return LazyAdamState(jnp.zeros(table.shape, jnp.float32), jnp.zeros(table.shape, jnp.float32),
                             jnp.zeros(table.shape[:1], jnp.int32))

    def update(table, state, rows, grads):
        ids, g = dedupe_rows(rows, grads, table.shape[0])
        count = state.count.at[ids].get(mode="fill", fill_value=0) + 1
        mu = b1 * state.mu.at[ids].get(mode="fill", fill_value=0.0) + (1 - b1) * g
        nu = b2 * state.nu.at[ids].get(mode="fill", fill_value=0.0) + (1 - b2) * g * g
        c = count.astype(jnp.float32)[:, None]
        mu_hat = mu / (1 - b1**c)
        nu_hat = nu / (1 - b2**c)
        step = (-learning_rate * mu_hat / (jnp.sqrt(nu_hat) + eps)).astype(table.dtype)
        new_state = LazyAdamState(state.mu.at[ids].set(mu, mode="drop"), state.nu.at[ids].set(nu, mode="drop"),
                                  state.count.at[ids].set(count, mode="drop"))
        return table.at[ids].add(step, mode="drop"), new_state

    return SparseRowOptimizer(init, update)


def table_optimizer(name: str, learning_rate: float) -> SparseRowOptimizer:
    if name == "row_adagrad":
        return row_adagrad(learning_rate)
    if name == "lazy_adam":
        return lazy_adam(learning_rate)
    raise ValueError(f"table optimizer must be one of {TABLE_OPTIMIZERS}, got {name!r}")


class SparseOptState(NamedTuple):
    """Optimizer state of a row-sparse run: ``dense`` (the dense optimizer's state over the
    non-table params) and ``tables`` (``{"user": row state, "item": row state}``)."""

    dense: Any
    tables: dict[str, Any]


def split_tables(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """EmbeddingMLP params -> ``(dense params, tables)``."""
    dense = {k: v for k, v in params.items() if k not in dict(TABLES)}
    return dense, {name: params[key]["embedding"] for key, name in TABLES}


def join_tables(dense: dict[str, Any], tables: dict[str, jax.Array]) -> dict[str, Any]:
    return {**dense, **{key: {"embedding": tables[name]} for key, name in TABLES}}


def init_sparse_opt(params, dense_optimizer: optax.GradientTransformation,
                    table_opt: SparseRowOptimizer) -> SparseOptState:
    dense, tables = split_tables(params)
    return SparseOptState(dense_optimizer.init(dense), {name: table_opt.init(t) for name, t in tables.items()})


def table_shardings(params, opt_state: SparseOptState, mesh: jax.sharding.Mesh, axis: str = "data"):
    """``(params, opt_state)`` shardings: tables and their row states split by rows over
    ``axis`` (a table whose rows do not divide evenly stays replicated); the rest replicated."""
    replicated = NamedSharding(mesh, P())
    dense, tables = split_tables(params)
    by_rows = {name: NamedSharding(mesh, P(axis)) if t.shape[0] % mesh.shape[axis] == 0 else replicated
               for name, t in tables.items()}
    params_sharding = join_tables(jax.tree.map(lambda _: replicated, dense), by_rows)
    opt_sharding = SparseOptState(
        dense=jax.tree.map(lambda _: replicated, opt_state.dense),
        tables={name: jax.tree.map(lambda _, s=by_rows[name]: s, st) for name, st in opt_state.tables.items()},
    )
    return params_sharding, opt_sharding


def sparse_update(graphdef: nnx.GraphDef, dense_optimizer: optax.GradientTransformation,
                  table_opt: SparseRowOptimizer):
    """``update(state, batch, key) -> (state, loss)`` for EmbeddingMLP with row-sparse tables.

    The state is ``fgjax.training.loop.TrainState`` with a ``SparseOptState``.
    The loss and negatives are the model's own (``EmbeddingMLP.labelled_pairs``,
    ``logits_from_rows``); gradients are taken with respect to the gathered
    rows, so no dense table gradient is ever built.
    """

    def update(state, batch, key):
        dense, tables = split_tables(state.params)
        users, items, labels = nnx.merge(graphdef, state.params).labelled_pairs(batch, key)
        user_rows, item_rows = tables["user"][users], tables["item"][items]

        def loss_fn(d, u, i):
            logits = nnx.merge(graphdef, join_tables(d, tables)).logits_from_rows(u, i)
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))

        loss, (g_dense, g_user, g_item) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(dense, user_rows, item_rows)
        updates, dense_opt = dense_optimizer.update(g_dense, state.opt_state.dense, dense)
        dense = optax.apply_updates(dense, updates)
        new_tables, table_states = {}, {}
        for name, rows, grads in (("user", users, g_user), ("item", items, g_item)):
            new_tables[name], table_states[name] = table_opt.update(tables[name], state.opt_state.tables[name], rows,
                                                                    grads)
        return type(state)(join_tables(dense, new_tables), SparseOptState(dense_opt, table_states), state.step + 1), loss

    return update
