"""Training and full-catalog ranking for the time-aware sequence model.

Same conventions as ``fgjax.training.loop``: the model is split into a graph and a
pure params dict; one jitted step over the ``("data",)`` mesh (batch sharded,
state replicated and donated) computes the next-item loss, full softmax over
the catalog or a sampled softmax, and applies AdamW. Dropout keys and sampled
negatives come from ``fold_in(key(seed), step)`` and the window order from
``(seed, epoch)``, so a run resumed from its checkpoint continues exactly.

Early stopping: validation NDCG@10 (full ranking, the user's known items
masked) every ``sequence.eval_every`` epochs; training stops after
``sequence.patience`` validations without a better one and returns the best
params. Checkpoints hold the current and the best params, the optimizer
state and the early-stopping position.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from fgjax import kernels
from fgjax.checkpoint import FORMAT_VERSION, TrainCheckpoints, write_manifest
from fgjax.config import Config, SequenceConfig, to_dict
from fgjax.data.sequences import Sequences, relative_times
from fgjax.data.split import ItemSets
from fgjax.errors import CheckpointError, ConfigError
from fgjax.models.mlp import Params, split_params
from fgjax.models.sequence import build_sequence_model
from fgjax.ranking.strategy import ForgettingWeights
from fgjax.shapes import bucket_size
from fgjax.training.loop import DATA_AXIS, TrainState, epoch_order, make_mesh


@dataclasses.dataclass(frozen=True)
class SequenceTrainResult:
    """What ``train_sequence`` returns.

    Attributes:
      graphdef, params: the model with the best validation params (host arrays).
      history: one dict per epoch (train_loss; val_ndcg@10, val_hit_rate@10 when validated).
      best_epoch: epoch of the returned params (0 if never validated).
      epochs: epochs run in total; stopped_early: patience ran out.
      seconds: wall time of this call.
    """

    graphdef: nnx.GraphDef
    params: Params
    history: list[dict[str, Any]]
    best_epoch: int
    epochs: int
    stopped_early: bool
    seconds: float
    resumed_from: int | None


def next_item_loss(graphdef: nnx.GraphDef, params: Params, inputs: jax.Array, times: jax.Array, targets: jax.Array,
                   key: jax.Array, *, dropout_key: bool, loss: str, negatives: int) -> jax.Array:
    """Mean next-item cross-entropy over the non-padding positions.

    ``full_softmax``: over the whole catalog. ``sampled_softmax``: over the
    target and ``negatives`` uniform items shared by the batch (an accidental
    hit of the target is masked out); uniform sampling needs no logQ correction.
    """
    model = nnx.merge(graphdef, params)
    k_drop, k_neg = jax.random.split(key)
    hidden = model.hidden_states(inputs, times, k_drop if dropout_key else None)  # (B, L, d)
    table = model.item_table()
    valid = targets >= 0
    safe = jnp.where(valid, targets, 0)
    if loss == "full_softmax":
        logits = hidden @ table.T  # (B, L, items)
        per_position = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    else:
        negs = jax.random.randint(k_neg, (negatives,), 0, table.shape[0])
        positive = jnp.sum(hidden * table[safe], axis=-1, keepdims=True)  # (B, L, 1)
        negative = hidden @ table[negs].T  # (B, L, S)
        negative = jnp.where(negs[None, None, :] == safe[..., None], -1e9, negative)
        logits = jnp.concatenate([positive, negative], axis=-1)
        per_position = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros_like(safe))
    return jnp.sum(per_position * valid) / jnp.maximum(jnp.sum(valid), 1)


def make_optimizer(seq: SequenceConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(seq.learning_rate, weight_decay=seq.weight_decay))


def make_sequence_train_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh, seq: SequenceConfig
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """The jitted step ``(state, inputs, times, targets) -> (state, loss)``; inputs ``(batch, L)``."""
    base_key = jax.random.key(seq.seed)
    loss_fn = functools.partial(next_item_loss, graphdef, dropout_key=seq.dropout > 0, loss=seq.loss,
                                negatives=seq.sampled_negatives)

    def step(state: TrainState, inputs, times, targets):
        key = jax.random.fold_in(base_key, state.step)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, inputs, times, targets, key))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss

    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(step, in_shardings=(replicated, batch, batch, batch), out_shardings=(replicated, replicated),
                   donate_argnums=(0,))


@functools.partial(jax.jit, static_argnames=("graphdef", "k", "num_items"))
def _chunk_top_k(graphdef, params, items, times, seen, user_interest, item_interest, *, k, num_items):
    """Top-k of one chunk of histories ``(chunk, L)``; ``seen`` ``(chunk, width)`` padded with ``num_items``."""
    scores = jax.nn.softmax(nnx.merge(graphdef, params).score_all_items(items, times), axis=-1)
    if user_interest is not None:
        column = jnp.where(item_interest >= 0, item_interest, user_interest.shape[1] - 1)
        scores = scores * jnp.take(user_interest, column, axis=1)
    rows = jnp.broadcast_to(jnp.arange(items.shape[0])[:, None], seen.shape)
    exclude = jnp.zeros((items.shape[0], num_items), bool).at[rows, seen].set(True, mode="drop")
    return kernels.masked_top_k(scores, k, exclude=exclude)


def rank_sequence_items(
    graphdef: nnx.GraphDef,
    params: Params,
    sequences: Sequences,
    users: np.ndarray,
    *,
    k: int,
    num_items: int,
    seen: ItemSets | None = None,
    forgetting: ForgettingWeights | None = None,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` next items for each user from its last ``max_len`` items in ``sequences``.

    Scores are the model's next-item probabilities (softmax over the
    catalog), times ``forgetting.user_interest[u, k(i)]`` when given (the
    SPEC.md score with relevance = probability). ``seen`` items are masked.

    Returns:
      ``(scores, items)``, each ``(len(users), k)``.
    """
    model = nnx.merge(graphdef, params)
    max_len = model.max_len
    users = np.asarray(users, np.int32)
    k = min(k, num_items)
    out_scores = np.empty((len(users), k), np.float32)
    out_items = np.empty((len(users), k), np.int32)
    if len(users) == 0:
        return out_scores, out_items
    chunk = min(chunk, bucket_size(len(users)))
    item_interest = None if forgetting is None else jnp.asarray(forgetting.item_interest, jnp.int32)
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        n = len(part)
        padded = np.concatenate([part, np.full(chunk - n, part[0], np.int32)]) if n < chunk else part
        items, times = sequences.last(padded, max_len, pad_item=num_items)
        rel = relative_times(times, items, num_items)
        seen_rows = seen.padded(padded, pad_value=num_items) if seen is not None else np.full((chunk, 1), num_items, np.int32)
        user_interest = None if forgetting is None else jnp.asarray(forgetting.user_interest[padded], jnp.float32)
        values, top = _chunk_top_k(graphdef, params, jnp.asarray(items), jnp.asarray(rel), jnp.asarray(seen_rows),
                                   user_interest, item_interest, k=k, num_items=num_items)
        out_scores[start : start + n] = np.asarray(values)[:n]
        out_items[start : start + n] = np.asarray(top)[:n]
    return out_scores, out_items


def validation_metrics(graphdef, params, sequences: Sequences, users: np.ndarray, targets: np.ndarray,
                       seen: ItemSets, num_items: int, *, k: int = 10) -> dict[str, float]:
    """``val_ndcg@k`` and ``val_hit_rate@k`` of ``targets`` ``(users, T)`` (-1 padded)."""
    if len(users) == 0:
        return {}
    _, top = rank_sequence_items(graphdef, params, sequences, users, k=k, num_items=num_items, seen=seen)
    means = kernels.mean_metrics(kernels.ranking_metrics(top, targets, k), targets)
    return {f"val_ndcg@{k}": float(means["ndcg"]), f"val_hit_rate@{k}": float(means["hit_rate"])}


def _fingerprint(config: Config, inputs: np.ndarray, targets: np.ndarray, num_items: int) -> dict[str, Any]:
    digest = hashlib.sha256(np.ascontiguousarray(inputs).tobytes())
    digest.update(np.ascontiguousarray(targets).tobytes())
    seq = to_dict(config.sequence)
    seq.pop("epochs")
    seq.pop("patience")
    return {"num_items": num_items, "windows_sha256": digest.hexdigest()[:16], "sequence": seq}


def train_sequence(
    config: Config,
    sequences: Sequences,
    num_items: int,
    *,
    val_users: np.ndarray,
    val_targets: np.ndarray,
    val_seen: ItemSets,
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    progress: bool = True,
) -> SequenceTrainResult:
    """Train the time-aware model on ``sequences`` with early stopping on validation NDCG@10.

    Args:
      sequences: training sequences (events before validation); also the
        validation inputs.
      val_users: ``(n,)`` users validated; val_targets ``(n, T)`` their targets
        (-1 padded); val_seen: items masked at validation.
      checkpoint_dir: Orbax checkpoints at every validation (resumes if present); None = none.
    """
    seq = config.sequence
    t0 = time.perf_counter()
    inputs, times, targets = sequences.training_windows(seq.max_len, pad_item=num_items)
    rel = relative_times(times, inputs, num_items)
    mesh = make_mesh(config.train.num_devices)
    n_dev = mesh.devices.size
    if seq.batch_size % n_dev:
        raise ConfigError(f"sequence.batch_size={seq.batch_size} must be divisible by the {n_dev} devices of the mesh")
    if len(inputs) < seq.batch_size:
        raise ConfigError(f"sequence.batch_size={seq.batch_size} exceeds the {len(inputs)} training windows")
    steps_per_epoch = len(inputs) // seq.batch_size
    model = build_sequence_model(seq, num_items, seed=seq.seed)
    graphdef, params = split_params(model)
    optimizer = make_optimizer(seq)
    replicated = NamedSharding(mesh, P())
    fingerprint = _fingerprint(config, inputs, targets, num_items)
    history: list[dict[str, Any]] = []
    best = {"ndcg": -1.0, "epoch": 0, "since": 0}
    best_params = params
    start_epoch, resumed_from = 0, None
    store = TrainCheckpoints(checkpoint_dir, max_to_keep=config.train.max_to_keep) if checkpoint_dir else None
    if store is not None and store.latest_step() is not None:
        meta = store.restore_meta()
        if meta.get("run") != fingerprint:
            store.close()
            raise CheckpointError(f"'{store.directory}' holds another sequence run: use a new output directory")
        abstract_opt = jax.eval_shape(optimizer.init, params)
        both, opt_state, meta = store.restore({"current": params, "best": params}, abstract_opt, sharding=replicated)
        params, best_params = both["current"], jax.device_get(both["best"])
        history, best = list(meta["history"]), dict(meta["best"])
        start_epoch = resumed_from = int(meta["epoch"])
    else:
        opt_state = optimizer.init(params)
    if store is not None:
        write_manifest(checkpoint_dir)
    state = jax.device_put(TrainState(params, opt_state, jnp.asarray(start_epoch * steps_per_epoch, jnp.int32)),
                           replicated)
    step_fn = make_sequence_train_step(graphdef, optimizer, mesh, seq)
    metrics_file = open(metrics_path, "a") if metrics_path else None
    stopped_early = False
    bar = tqdm(total=seq.epochs, initial=start_epoch, desc="train sequence", unit="epoch", disable=not progress,
               leave=False)
    try:
        for epoch in range(start_epoch, seq.epochs):
            if seq.patience and best["since"] >= seq.patience:
                stopped_early = True
                break
            t_epoch = time.perf_counter()
            order = epoch_order(seq.seed, epoch, len(inputs))
            losses = []
            for s in range(steps_per_epoch):
                idx = order[s * seq.batch_size : (s + 1) * seq.batch_size]
                state, loss = step_fn(state, inputs[idx], rel[idx], targets[idx])
                losses.append(loss)
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses)))}
            validated = (epoch + 1) % seq.eval_every == 0 or epoch + 1 == seq.epochs
            if validated:
                record.update(validation_metrics(graphdef, state.params, sequences, val_users, val_targets, val_seen,
                                                 num_items))
                score = record.get("val_ndcg@10", 0.0)
                if score > best["ndcg"]:
                    best = {"ndcg": score, "epoch": epoch + 1, "since": 0}
                    best_params = jax.device_get(state.params)
                else:
                    best["since"] += 1
            record["seconds"] = round(time.perf_counter() - t_epoch, 3)
            history.append(record)
            bar.update(1)
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k.startswith(("train_loss", "val_ndcg"))})
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if store is not None and validated:
                meta = {"format_version": FORMAT_VERSION, "config": to_dict(config), "epoch": epoch + 1,
                        "steps_per_epoch": steps_per_epoch, "run": fingerprint, "history": history, "best": best}
                store.save(int((epoch + 1) * steps_per_epoch), {"current": state.params, "best": best_params},
                           state.opt_state, meta)
    finally:
        bar.close()
        if store is not None:
            store.close()
        if metrics_file:
            metrics_file.close()
    if best["epoch"] == 0:  # never validated: the last params
        best_params = jax.device_get(state.params)
    epochs_run = len(history)
    return SequenceTrainResult(graphdef, best_params, history, int(best["epoch"]), epochs_run, stopped_early,
                               time.perf_counter() - t0, resumed_from)
