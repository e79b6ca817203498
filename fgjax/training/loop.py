"""Training: a pure jitted, data-parallel step over a device mesh; exact resume.

The model is split into a static graph and a pure dict of params. One step
(``make_train_step``) samples negatives from a key folded with the step number,
computes binary cross-entropy and applies Adam. It is jitted over a 1-D
``("data",)`` mesh: the batch is sharded along ``data``, params and optimizer
state are replicated (XLA inserts the gradient all-reduce), the state is donated.

The data order is a pure function of ``(seed, epoch)`` and the negatives of
``(seed, step)``, so a run restored from its checkpoint at step s continues
with exactly the batches an uninterrupted run would have used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from fgjax import kernels
from fgjax.checkpoint import FORMAT_VERSION, TrainCheckpoints, save_vocabularies, write_manifest
from fgjax.config import Config, to_dict
from fgjax.data.reader import EventLog
from fgjax.data.split import TemporalSplit
from fgjax.errors import CheckpointError, ConfigError
from fgjax.models import Params, build_model, split_params
from fgjax.ranking.topk import rank_items

DATA_AXIS = "data"


class TrainState(NamedTuple):
    """Everything a step changes. ``step``: ``()`` int32."""

    params: Params
    opt_state: Any
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns.

    Attributes:
      graphdef, params: the trained model (params on the host's default device).
      history: one dict per epoch (also written as JSONL).
      step_losses: ``(steps run in this call,)`` float32 training losses.
      steps: global step count reached.
      resumed_from: step restored from a checkpoint, or None.
    """

    graphdef: nnx.GraphDef
    params: Params
    history: list[dict[str, Any]]
    step_losses: np.ndarray
    steps: int
    resumed_from: int | None


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0 = all)."""
    available = jax.devices()
    n = len(available) if num_devices == 0 else num_devices
    if not 1 <= n <= len(available):
        raise ConfigError(f"train.num_devices={num_devices}: only {len(available)} devices are available")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=available[:n])


def make_optimizer(config: Config) -> optax.GradientTransformation:
    return optax.adam(config.train.learning_rate)


def bce_loss(graphdef: nnx.GraphDef, params: Params, users: jax.Array, items: jax.Array, negatives: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of positives ``(batch,)`` and negatives ``(batch, n)``."""
    model = nnx.merge(graphdef, params)
    batch, n = negatives.shape
    all_users = jnp.concatenate([users, jnp.repeat(users, n)])
    all_items = jnp.concatenate([items, negatives.reshape(-1)])
    labels = jnp.concatenate([jnp.ones(batch), jnp.zeros(batch * n)])
    logits = model(all_users, all_items)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    num_items: int,
    negatives: int,
    seed: int,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """The jitted step ``(state, users (batch,), items (batch,)) -> (state, loss)``.

    ``in_shardings``/``out_shardings`` pin the layout: batch split along
    ``data``, everything else replicated; ``state`` is donated.
    """
    base_key = jax.random.key(seed)

    def step(state: TrainState, users: jax.Array, items: jax.Array) -> tuple[TrainState, jax.Array]:
        key = jax.random.fold_in(base_key, state.step)
        negs = jax.random.randint(key, (users.shape[0], negatives), 0, num_items, dtype=jnp.int32)
        negs = jax.lax.with_sharding_constraint(negs, NamedSharding(mesh, P(DATA_AXIS)))
        loss, grads = jax.value_and_grad(lambda p: bce_loss(graphdef, p, users, items, negs))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), loss

    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(
        step,
        in_shardings=(replicated, batch, batch),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """``(num_examples,)`` permutation for an epoch; a pure function of its arguments."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def validate(
    graphdef: nnx.GraphDef, params: Params, split: TemporalSplit, num_items: int, *, k: int, max_users: int, seed: int
) -> dict[str, float]:
    """NDCG@k and HitRate@k of the validation targets, full ranking, training items masked."""
    users = np.flatnonzero(split.val_target >= 0)
    if max_users and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    if len(users) == 0:
        return {}
    _, top = rank_items(graphdef, params, users, k=k, num_items=num_items, seen=split.train_items)
    targets = split.val_target[users][:, None]
    means = kernels.mean_metrics(kernels.ranking_metrics(top, targets, k), targets)
    return {f"val_ndcg@{k}": float(means["ndcg"]), f"val_hit_rate@{k}": float(means["hit_rate"])}


def run_fingerprint(config: Config, log: EventLog, users: np.ndarray, items: np.ndarray) -> dict[str, Any]:
    """What must not change for a resumed run to continue the same run exactly:
    the training pairs (by content) and the settings that fix the batches, the
    negatives and the update rule. ``epochs`` may change (to train longer)."""
    digest = hashlib.sha256(np.ascontiguousarray(users, np.int64).tobytes())
    digest.update(np.ascontiguousarray(items, np.int64).tobytes())
    tcfg = config.train
    return {
        "num_users": log.num_users,
        "num_items": log.num_items,
        "num_pairs": int(len(users)),
        "pairs_sha256": digest.hexdigest()[:16],
        "batch_size": tcfg.batch_size,
        "seed": tcfg.seed,
        "negatives": tcfg.negatives,
        "learning_rate": tcfg.learning_rate,
        "model": to_dict(config.model),
    }


def train(
    config: Config,
    log: EventLog,
    split: TemporalSplit,
    checkpoint_dir: str | Path,
    *,
    metrics_path: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train EmbeddingMLP on the split's training pairs, resuming if a checkpoint exists.

    Checkpoints (params, Adam state, step, config, data position, vocabularies)
    go to ``checkpoint_dir`` at every epoch end (or every
    ``train.checkpoint_every_steps``) and when ``train.max_steps`` stops the run.
    One JSON line per epoch goes to ``metrics_path``.
    """
    tcfg = config.train
    users, items = split.train_pairs()
    num_pairs = len(users)
    mesh = make_mesh(tcfg.num_devices)
    n_dev = mesh.devices.size
    if tcfg.batch_size % n_dev:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} must be divisible by the {n_dev} devices of the mesh")
    if num_pairs < tcfg.batch_size:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} exceeds the {num_pairs} training pairs")
    steps_per_epoch = num_pairs // tcfg.batch_size
    total_steps = tcfg.epochs * steps_per_epoch
    stop_at = min(total_steps, tcfg.max_steps) if tcfg.max_steps else total_steps

    model = build_model(config.model, log.num_users, log.num_items, seed=tcfg.seed)
    graphdef, params = split_params(model)
    optimizer = make_optimizer(config)
    replicated = NamedSharding(mesh, P())
    fingerprint = run_fingerprint(config, log, users, items)

    store = TrainCheckpoints(checkpoint_dir, max_to_keep=tcfg.max_to_keep)
    history: list[dict[str, Any]] = []
    epoch_loss = [0.0, 0]  # running (sum, count) of the current epoch, saved for exact logs
    resumed_from = None
    start = 0
    if store.latest_step() is not None:
        meta = store.restore_meta()
        if "run" not in meta:
            store.close()
            raise CheckpointError(f"'{store.directory}' was written by an older fgjax: use a new output directory")
        if meta["run"] != fingerprint:
            changed = sorted(k for k in fingerprint if meta["run"].get(k) != fingerprint[k])
            store.close()
            raise CheckpointError(
                f"'{store.directory}' holds a run with other data or settings (differs in: {', '.join(changed)}); "
                "resuming would not continue it exactly: use a new output directory"
            )
        abstract_opt = jax.eval_shape(optimizer.init, params)
        params, opt_state, meta = store.restore(params, abstract_opt, sharding=replicated)
        start = resumed_from = int(meta["step"])
        history = list(meta["history"])
        epoch_loss = list(meta["epoch_loss"])
    else:
        opt_state = optimizer.init(params)
    # Written only once the directory is known to hold this data's checkpoints.
    write_manifest(checkpoint_dir)
    save_vocabularies(checkpoint_dir, log.users, log.items, log.categories)
    state = jax.device_put(TrainState(params, opt_state, jnp.asarray(start, jnp.int32)), replicated)
    step_fn = make_train_step(
        graphdef, optimizer, mesh, num_items=log.num_items, negatives=tcfg.negatives, seed=tcfg.seed
    )

    def save(step: int) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "config": to_dict(config),
            "step": step,
            "epoch": step // steps_per_epoch,
            "batch_in_epoch": step % steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "run": fingerprint,
            "history": history,
            "epoch_loss": epoch_loss,
        }
        store.save(step, state.params, state.opt_state, meta)

    metrics_file = open(metrics_path, "a") if metrics_path else None
    losses: list[jax.Array] = []
    pending: list[jax.Array] = []
    t_epoch = time.perf_counter()
    order_epoch, order = -1, None
    bar = tqdm(total=stop_at, initial=start, desc="train", unit="step", disable=not progress, leave=False)
    try:
        for step in range(start, stop_at):
            epoch, offset = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(tcfg.seed, epoch, num_pairs)
            idx = order[offset * tcfg.batch_size : (offset + 1) * tcfg.batch_size]
            state, loss = step_fn(state, users[idx], items[idx])
            losses.append(loss)
            pending.append(loss)
            bar.update(1)
            done = step + 1
            end_of_epoch = done % steps_per_epoch == 0
            every = tcfg.checkpoint_every_steps
            checkpoint_now = end_of_epoch or done == stop_at or bool(every and done % every == 0)
            if checkpoint_now:
                # One host sync per checkpoint, not per step.
                epoch_loss = [epoch_loss[0] + float(np.sum(jax.device_get(pending))), epoch_loss[1] + len(pending)]
                pending = []
            if end_of_epoch:
                record = {
                    "epoch": epoch + 1,
                    "step": done,
                    "train_loss": epoch_loss[0] / max(epoch_loss[1], 1),
                    **validate(graphdef, state.params, split, log.num_items, k=min(10, log.num_items),
                               max_users=tcfg.eval_users, seed=tcfg.seed),
                    "seconds": round(time.perf_counter() - t_epoch, 3),
                }
                history.append(record)
                epoch_loss = [0.0, 0]
                t_epoch = time.perf_counter()
                bar.set_postfix({k: round(v, 4) for k, v in record.items() if k.startswith(("train_loss", "val_"))})
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
            if checkpoint_now:
                save(done)
    finally:
        bar.close()
        store.close()
        if metrics_file:
            metrics_file.close()
    params = jax.device_get(state.params)
    step_losses = np.asarray(jax.device_get(losses), np.float32) if losses else np.zeros(0, np.float32)
    return TrainResult(graphdef, params, history, step_losses, int(stop_at), resumed_from)
