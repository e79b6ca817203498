"""One training loop for every model: a pure jitted, data-parallel step over a mesh; selection; exact resume.

The model is split into a static graph and a pure dict of params; everything
a step changes is a frozen ``TrainState``. One step computes the model's own
``loss(batch, key)`` (``fgjax.models.interface.Recommender``: BCE with sampled
negatives for EmbeddingMLP, next-item softmax for the sequence models) and
applies the optimizer chain of the config. It is jitted over a 1-D
``("data",)`` mesh with explicit shardings: the batch is split along
``data``, params and optimizer state are replicated (XLA inserts the gradient
all-reduce), except that with ``train.table_optimizer`` ``row_adagrad`` or
``lazy_adam`` the embedding tables and their row states are split by rows
(``fgjax.training.sparse``); the state is donated.

What differs between models is only: the examples (``pair_examples`` or
``window_examples``), the model's loss and the optimizer chain
(``make_optimizer``). A closed-form model (ItemKNN, ``CLOSED_FORM_MODELS``)
is fitted by its own ``fit`` on the examples in place of the steps, as one
epoch; validation, the metrics file, checkpoints and resume are the same.
The rest is shared:

- the data order is a pure function of ``(seed, epoch)`` and a step's key is
  ``fold_in(key(seed), step)``, so a run restored from its checkpoint at step
  s continues with exactly the batches and randomness of an uninterrupted run;
- a run fingerprint (the examples' content hash and the settings that fix the
  batches and the update rule) refuses to resume another run;
- validation NDCG@10 / HitRate@10 through ``fgjax.ranking.rank_items`` (full
  catalog, known items masked) every ``eval_every`` epochs; the best epoch's
  params are the ones served (with ``sequence.params_ema``, the params'
  moving average at that epoch, ``averaging``); ``patience`` validations without improvement
  stop the run (0 = run every epoch);
- Orbax checkpoints (``DIR/train/<step>``: ``params`` = the params to serve,
  ``state`` = the ``TrainState`` to resume, ``meta``), one JSON line per epoch
  in the metrics file, a tqdm bar, and ``on_epoch_end`` hooks;
- ``train.distributed``: ``jax.distributed`` over processes; each process
  takes its share of every global batch (``fgjax.training.distributed``);
- ``train.privacy``: user-level DP-SGD (``fgjax.training.privacy``): each
  step's batch is a Poisson sample of users with a few examples each, the
  gradient is clipped per user and noised before the optimizer, an epoch is
  ``users / users_per_step`` steps, the epsilon spent is logged per epoch,
  and the last params are served (no selection, no early stopping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from fgjax import kernels
from fgjax.checkpoint import FORMAT_VERSION, TrainCheckpoints, atomic_write_text, save_vocabularies
from fgjax.config import Config, to_dict
from fgjax.data.reader import EventLog
from fgjax.data.sequences import Sequences, build_sequences, category_arguments, relative_times
from fgjax.data.split import ItemSets, TemporalSplit
from fgjax.errors import CheckpointError, ConfigError
from fgjax.models import (CLOSED_FORM_MODELS, HISTORY_MODELS, INTEREST_MODELS, SEQUENCE_MODELS, Params, build_model,
                          split_params)
from fgjax.ranking.topk import query_inputs, rank_items
from fgjax.training import averaging, distributed, privacy, sparse

DATA_AXIS = "data"
#: Validation ranks this many items (capped at the catalog): NDCG@10 selects the model.
VAL_K = 10

Batch = Mapping[str, np.ndarray]
#: Called with each epoch's record; returning True stops the run after that epoch, as patience running out does
#: (``stopped_early``): how a tuner prunes a trial that falls behind (bench.quality).
EpochHook = Callable[[dict[str, Any]], "bool | None"]


class TrainState(NamedTuple):
    """Everything a step changes. ``step``: ``()`` int32."""

    params: Params
    opt_state: Any
    step: jax.Array


class Validation(NamedTuple):
    """What a run is validated on.

    Attributes:
      users: ``(n,)`` dense user indices (rows of ``seen``).
      targets: ``(n, T)`` int held-out items, -1 padded.
      seen: items masked when ranking, or None.
      inputs: the model's query arrays, each ``(n, ...)`` (``rank_items``); None = ``{"user": users}``.
    """

    users: np.ndarray
    targets: np.ndarray
    seen: ItemSets | None
    inputs: Mapping[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The per-model training settings: from ``train`` for embedding_mlp, from ``sequence`` (epochs,
    batch_size, learning_rate, weight_decay, seed, patience, eval_every) for sequence models, from ``bpr`` for bpr."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    patience: int
    eval_every: int


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns.

    Attributes:
      graphdef, params: the model to serve: the params of the best validated
        epoch (the last params if never validated), on the host; with
        ``sequence.params_ema``, their moving average at that epoch.
      history: one dict per epoch (also written as JSONL).
      step_losses: ``(steps run in this call,)`` float32 training losses.
      steps: global step count reached.
      resumed_from: step restored from a checkpoint, or None.
      best_epoch: epoch of ``params`` (0 if never validated).
      epochs: epochs completed in total; stopped_early: patience ran out (or an epoch hook stopped the run).
      seconds: wall time of this call.
      privacy: under ``train.privacy``, the ``PrivacyPlan`` (``to_json``) and ``epsilon`` spent; else None.
    """

    graphdef: nnx.GraphDef
    params: Params
    history: list[dict[str, Any]]
    step_losses: np.ndarray
    steps: int
    resumed_from: int | None
    best_epoch: int = 0
    epochs: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    privacy: dict[str, Any] | None = None


def loop_settings(config: Config) -> LoopSettings:
    if config.model.name in SEQUENCE_MODELS:
        s = config.sequence
        return LoopSettings(s.epochs, s.batch_size, s.learning_rate, s.weight_decay, s.seed, s.patience, s.eval_every)
    if config.model.name == "bpr":
        b = config.bpr
        return LoopSettings(b.epochs, b.batch_size, b.learning_rate, 0.0, b.seed, b.patience, b.eval_every)
    t = config.train
    return LoopSettings(t.epochs, t.batch_size, t.learning_rate, 0.0, t.seed, t.patience, 1)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0 = all, of every process)."""
    available = jax.devices()
    n = len(available) if num_devices == 0 else num_devices
    if not 1 <= n <= len(available):
        raise ConfigError(f"train.num_devices={num_devices}: only {len(available)} devices are available")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=available[:n])


def make_optimizer(config: Config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """The optimizer chain of the config's model (for embedding_mlp with a table optimizer: of the dense layers).

    embedding_mlp, bpr: Adam (``train.learning_rate``, ``bpr.learning_rate``). Sequence models: global-norm
    clipping at 5 then AdamW (``sequence.learning_rate``, ``weight_decay``), at a constant rate or, with
    ``sequence.lr_schedule: cosine``, warmed up linearly over the first epoch and decayed along a cosine to 0 at
    the last of ``sequence.epochs`` (``steps_per_epoch`` steps each); with ``sequence.params_ema`` last an average
    of the params (``averaging.params_ema``), which validation, selection and serving then use (``served_params``).
    """
    s = loop_settings(config)
    if config.model.name in SEQUENCE_MODELS:
        rate: float | optax.Schedule = s.learning_rate
        if config.sequence.lr_schedule == "cosine":
            total = max(s.epochs * steps_per_epoch, 2)
            rate = optax.warmup_cosine_decay_schedule(0.0, s.learning_rate, warmup_steps=min(steps_per_epoch,
                                                                                              total - 1),
                                                      decay_steps=total, end_value=0.0)
        chain = [optax.clip_by_global_norm(5.0), optax.adamw(rate, weight_decay=s.weight_decay)]
        if config.sequence.params_ema:
            chain.append(averaging.params_ema(config.sequence.params_ema))
        return optax.chain(*chain)
    return optax.adam(s.learning_rate)


def table_optimizer(config: Config) -> sparse.SparseRowOptimizer | None:
    """The row optimizer of ``train.table_optimizer``, or None for ``dense``."""
    name = config.train.table_optimizer
    if name == "dense":
        return None
    if config.model.name != "embedding_mlp":
        raise ConfigError(f"train.table_optimizer={name!r} applies to model.name=embedding_mlp only; "
                          f"use dense for {config.model.name}")
    return sparse.table_optimizer(name, config.train.learning_rate)


def init_state(params: Params, optimizer: optax.GradientTransformation,
               table_opt: sparse.SparseRowOptimizer | None = None, step: int = 0) -> TrainState:
    """A fresh ``TrainState`` (row-sparse optimizer state when ``table_opt`` is given)."""
    opt_state = optimizer.init(params) if table_opt is None else sparse.init_sparse_opt(params, optimizer, table_opt)
    return TrainState(params, opt_state, jnp.asarray(step, jnp.int32))


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Shardings of ``state`` (arrays or ``ShapeDtypeStruct``): replicated, except row-sparse tables split by rows."""
    replicated = NamedSharding(mesh, P())
    if isinstance(state.opt_state, sparse.SparseOptState):
        params, opt = sparse.table_shardings(state.params, state.opt_state, mesh, DATA_AXIS)
        return TrainState(params, opt, replicated)
    return jax.tree.map(lambda _: replicated, state)


def dense_update(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation):
    """``update(state, batch, key) -> (state, loss)``: the model's loss, full gradients, ``optimizer``."""

    def update(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch, key))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss

    return update


def private_update(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, plan: privacy.PrivacyPlan):
    """``update(state, batch, key) -> (state, loss)``: per-user clipped, noised gradients
    (``privacy.private_gradient``; ``batch`` fields ``(capacity, examples_per_user, ...)`` and ``mask``), then
    ``optimizer``."""

    def user_loss(params: Params, user_batch: Batch, key: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params).loss(user_batch, key)

    def update(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, jax.Array]:
        loss, grads = privacy.private_gradient(user_loss, state.params, batch, key, clip_norm=plan.clip_norm,
                                               noise_multiplier=plan.noise_multiplier,
                                               expected_users=plan.expected_users)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss

    return update


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    state_sharding: TrainState,
    *,
    seed: int,
    table_opt: sparse.SparseRowOptimizer | None = None,
    privacy_plan: privacy.PrivacyPlan | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, jax.Array]]:
    """The jitted step ``(state, batch) -> (state, loss)``; ``batch`` holds the model's ``batch_fields``
    (with ``privacy_plan``: each ``(capacity, examples_per_user, ...)``, and ``mask``).

    The step's key is ``fold_in(key(seed), state.step)``. ``in_shardings`` /
    ``out_shardings`` pin the layout (batch split along ``data``, the state
    as ``state_sharding``); ``state`` is donated.
    """
    if privacy_plan is not None:
        update = private_update(graphdef, optimizer, privacy_plan)
    elif table_opt is None:
        update = dense_update(graphdef, optimizer)
    else:
        update = sparse.sparse_update(graphdef, optimizer, table_opt)
    base_key = jax.random.key(seed)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, jax.Array]:
        return update(state, batch, jax.random.fold_in(base_key, state.step))

    return jax.jit(step, in_shardings=(state_sharding, NamedSharding(mesh, P(DATA_AXIS))),
                   out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=(0,))


def bce_loss(graphdef: nnx.GraphDef, params: Params, users: jax.Array, items: jax.Array, negatives: jax.Array) -> jax.Array:
    """EmbeddingMLP's mean binary cross-entropy of positives ``(batch,)`` and given negatives ``(batch, n)``."""
    model = nnx.merge(graphdef, params)
    batch, n = negatives.shape
    logits = model(jnp.concatenate([users, jnp.repeat(users, n)]), jnp.concatenate([items, negatives.reshape(-1)]))
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.concatenate([jnp.ones(batch), jnp.zeros(batch * n)])))


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """``(num_examples,)`` permutation for an epoch; a pure function of its arguments."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def pair_examples(split: TemporalSplit) -> dict[str, np.ndarray]:
    """EmbeddingMLP's examples: the split's training ``(user, item)`` pairs, ``{"user", "item"}`` ``(pairs,)``."""
    users, items = split.train_pairs()
    return {"user": np.asarray(users, np.int32), "item": np.asarray(items, np.int32)}


def window_examples(sequences: Sequences, max_len: int, num_items: int) -> dict[str, np.ndarray]:
    """Sequence models' examples: next-item windows ``{"items", "times", "targets"}``, each ``(windows, max_len)``
    (times in seconds relative to each window's latest item), and ``"interest_ages"`` ``(windows, max_len, K)``
    when the sequences carry them (built with item categories)."""
    items, times, targets = sequences.training_windows(max_len, pad_item=num_items)
    out = {"items": items, "times": relative_times(times, items, num_items), "targets": targets}
    if sequences.interest_ages is not None:
        out["interest_ages"] = sequences.window_interest_ages(max_len)
    return out


def history_categories(model_name: str, log: EventLog) -> dict[str, Any]:
    """``build_sequences``' category arguments for the model ``model_name``: ``{}`` unless it reads interest ages.

    Raises:
      DataError: the model reads interest ages and the log has no item categories.
    """
    if model_name not in INTEREST_MODELS:
        return {}
    return category_arguments(log.item_category, log.categories, model_name=model_name)


def validate(graphdef: nnx.GraphDef, params: Params, validation: Validation, num_items: int) -> dict[str, float]:
    """``val_ndcg@10`` and ``val_hit_rate@10`` (k capped at the catalog) of ``validation``, full ranking."""
    if len(validation.users) == 0:
        return {}
    k = min(VAL_K, num_items)
    _, top = rank_items(graphdef, params, validation.users, k=k, num_items=num_items, inputs=validation.inputs,
                        seen=validation.seen)
    means = kernels.mean_metrics(kernels.ranking_metrics(top, validation.targets, k), validation.targets)
    return {f"val_ndcg@{k}": float(means["ndcg"]), f"val_hit_rate@{k}": float(means["hit_rate"])}


def run_fingerprint(config: Config, examples: Batch, num_users: int, num_items: int) -> dict[str, Any]:
    """What must not change for a resumed run to continue the same run exactly:
    the examples (by content) and the settings that fix the model, the batches,
    the randomness and the update rule. ``epochs``, ``patience`` and
    ``eval_every`` may change (e.g. to train longer)."""
    digest = hashlib.sha256()
    for name in sorted(examples):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(examples[name]).tobytes())
    s = loop_settings(config)
    if config.model.name in SEQUENCE_MODELS:
        architecture = {k: v for k, v in to_dict(config.sequence).items()
                        if k not in ("epochs", "patience", "eval_every", "batch_size", "learning_rate",
                                     "weight_decay", "seed", "params_ema")}
        if not config.sequence.mask_known:  # only when on: older checkpoints keep their fingerprint
            architecture.pop("mask_known")
        if config.model.name not in INTEREST_MODELS:  # the other models' fingerprints stay as they were
            architecture = {k: v for k, v in architecture.items() if not k.startswith("interest_")}
    elif config.model.name == "itemknn":
        architecture = {"name": "itemknn", **to_dict(config.knn)}
    elif config.model.name == "bpr":
        architecture = {"name": "bpr", "dim": config.bpr.dim, "l2": config.bpr.l2, "negatives": config.bpr.negatives}
    else:
        architecture = {**to_dict(config.model), "negatives": config.train.negatives}
    fingerprint = {
        "model": config.model.name,
        "num_users": num_users,
        "num_items": num_items,
        "num_examples": int(len(next(iter(examples.values())))),
        "examples_sha256": digest.hexdigest()[:16],
        "batch_size": s.batch_size,
        "seed": s.seed,
        "learning_rate": s.learning_rate,
        "weight_decay": s.weight_decay,
        "table_optimizer": config.train.table_optimizer,
        "architecture": architecture,
    }
    if config.model.name in SEQUENCE_MODELS and config.sequence.params_ema:  # only then, as privacy below
        fingerprint["params_ema"] = config.sequence.params_ema
    if config.train.privacy.enabled:  # only then: non-private checkpoints keep their fingerprint
        fingerprint["privacy"] = to_dict(config.train.privacy)
    return fingerprint


def served_params(state: TrainState) -> Params:
    """The params a state validates and serves: the ``params_ema`` average when the optimizer keeps one, else
    the last step's."""
    averaged = averaging.averaged_params(state.opt_state, state.params)
    return state.params if averaged is None else averaged


def _to_host(tree: Any) -> Any:
    """NumPy copies of (possibly sharded, possibly multi-process) arrays."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def validation_from(users: np.ndarray, targets: np.ndarray, seen: ItemSets | None,
                    sequences: Sequences | None = None, *, num_items: int) -> Callable[[nnx.GraphDef, Params], Validation]:
    """A ``train_examples`` validation: ``users`` ``(n,)`` ranked against ``targets`` ``(n, T)`` (-1 padded),
    ``seen`` masked; sequence models query from the users' ``sequences`` (``query_inputs``)."""
    users = np.asarray(users, np.int32)

    def build(graphdef: nnx.GraphDef, params: Params) -> Validation:
        return Validation(users, targets, seen, query_inputs(graphdef, params, users, sequences, num_items=num_items))

    return build


def _scalars(values: list[jax.Array]) -> np.ndarray:
    """``(n,)`` float32 host values of replicated scalars (local copies: also across processes)."""
    return np.array([np.asarray(v.addressable_data(0)) for v in values], np.float32).reshape(len(values))


def train(
    config: Config,
    log: EventLog,
    split: TemporalSplit,
    checkpoint_dir: str | Path,
    *,
    metrics_path: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Sequence[EpochHook] = (),
) -> TrainResult:
    """Train the model ``config.model.name`` names on the split's training events, resuming if a checkpoint exists.

    embedding_mlp and bpr train on the training ``(user, item)`` pairs (itemknn
    is fitted on them in closed form); time_sasrec / sasrec / forgetting_sasrec on next-item
    windows of the users' training sequences (forgetting_sasrec: with their interest ages, from the
    log's item categories). All are validated on
    ``split.val_target`` (the training items masked; models that query
    histories read the training sequences, in the split's tie order). The checkpoint directory also gets
    the manifest and the vocabularies, so ``fgjax.load`` serves it. With
    ``train.distributed``, ``jax.distributed`` is initialized (from the
    ``FGJAX_*`` environment; see ``fgjax.training.distributed``) before the
    loop's first JAX call.
    """
    sequences = None
    if config.model.name in HISTORY_MODELS:
        sequences = build_sequences(log.user, log.item, log.timestamp, log.num_users, split.train_events,
                                    ties=split.ties, **history_categories(config.model.name, log))
    if config.model.name in SEQUENCE_MODELS:
        examples = window_examples(sequences, config.sequence.max_len, log.num_items)
        owners = sequences.window_owners(config.sequence.max_len)
    else:
        examples = pair_examples(split)
        owners = examples["user"]
    users = np.flatnonzero(split.val_target >= 0)
    if config.train.eval_users and len(users) > config.train.eval_users:
        rng = np.random.default_rng(loop_settings(config).seed)
        users = np.sort(rng.choice(users, config.train.eval_users, replace=False))
    validation = validation_from(users, split.val_target[users][:, None], split.train_items, sequences,
                                 num_items=log.num_items)

    def on_ready() -> None:
        # Once the directory is known to hold this run; one process writes (after jax.distributed starts).
        if jax.process_index() == 0:
            save_vocabularies(checkpoint_dir, log.users, log.items, log.categories)

    return train_examples(config, examples, validation, num_users=log.num_users, num_items=log.num_items,
                          checkpoint_dir=checkpoint_dir, metrics_path=metrics_path, progress=progress,
                          on_epoch_end=on_epoch_end, on_ready=on_ready, owners=owners)


def train_examples(
    config: Config,
    examples: Batch,
    validation: Validation | Callable[[nnx.GraphDef, Params], Validation] | None,
    *,
    num_users: int,
    num_items: int,
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Sequence[EpochHook] = (),
    on_ready: Callable[[], None] | None = None,
    owners: np.ndarray | None = None,
) -> TrainResult:
    """The loop on prepared examples (``train`` builds them from a log and split; benchmarks bring their own).

    Args:
      examples: ``(n, ...)`` arrays keyed by the model's ``batch_fields``
        (``pair_examples`` / ``window_examples``), the same on every process.
      validation: a ``Validation``, a function of ``(graphdef, params)`` giving
        one (query inputs need the model), or None (no validation, no selection).
      checkpoint_dir: Orbax checkpoints (resumes if present); None = none.
      on_epoch_end: called with each epoch's record (a dict) after it is logged; one that returns True stops
        the run there (``stopped_early``, as when patience runs out).
      on_ready: called once the checkpoint directory is known to hold this run.
      owners: ``(n,)`` the user of each example; needed by ``train.privacy`` (the unit of privacy).

    The number of item categories a model reads (``forgetting_sasrec``) is the last axis of ``interest_ages``.
    """
    t0 = time.perf_counter()
    if config.train.distributed:
        distributed.initialize()  # a no-op when the caller initialized it already
    if config.model.name in CLOSED_FORM_MODELS:
        if config.train.privacy.enabled:
            raise ConfigError(f"train.privacy.enabled applies to gradient-trained models, not the closed-form "
                              f"{config.model.name!r}")
        return _fit_closed_form(config, examples, validation, num_users=num_users, num_items=num_items,
                                checkpoint_dir=checkpoint_dir, metrics_path=metrics_path, on_epoch_end=on_epoch_end,
                                on_ready=on_ready, t0=t0)
    settings = loop_settings(config)
    tcfg = config.train
    fields = {name: np.asarray(x) for name, x in examples.items()}
    num_examples = len(next(iter(fields.values())))
    mesh = make_mesh(tcfg.num_devices)
    n_dev = mesh.devices.size
    section = "sequence" if config.model.name in SEQUENCE_MODELS else "bpr" if config.model.name == "bpr" else "train"
    sampler = plan = None
    if tcfg.privacy.enabled:
        _check_private(config, settings, section, owners, num_examples)
        private_users = int(np.unique(owners).size)
        # An epoch: as many steps as it takes to expect every user once.
        steps_per_epoch = max(1, -(-private_users // tcfg.privacy.users_per_step))
    else:
        if settings.batch_size % n_dev:
            raise ConfigError(f"{section}.batch_size={settings.batch_size} must be divisible by the {n_dev} "
                              "devices of the mesh")
        if num_examples < settings.batch_size:
            raise ConfigError(f"{section}.batch_size={settings.batch_size} exceeds the {num_examples} training "
                              f"{'windows' if section == 'sequence' else 'pairs'}")
        steps_per_epoch = num_examples // settings.batch_size
    total_steps = settings.epochs * steps_per_epoch
    stop_at = min(total_steps, tcfg.max_steps) if tcfg.max_steps else total_steps
    if tcfg.privacy.enabled:
        # The noise is calibrated for the steps this run plans (a longer run is another run: the fingerprint).
        plan = privacy.plan_privacy(tcfg.privacy, private_users, stop_at, num_devices=n_dev)
        sampler = privacy.UserSampler(owners, sampling_rate=plan.sampling_rate, capacity=plan.capacity,
                                      examples_per_user=plan.examples_per_user, seed=settings.seed)

    optimizer = make_optimizer(config, steps_per_epoch)
    table_opt = table_optimizer(config)
    fingerprint = run_fingerprint(config, fields, num_users, num_items)
    if plan is not None:  # the noise depends on the planned steps, which epochs and max_steps change
        fingerprint["privacy_plan"] = {"steps": plan.steps, "noise_multiplier": plan.noise_multiplier}
    num_categories = fields["interest_ages"].shape[-1] if "interest_ages" in fields else 0
    model = nnx.eval_shape(lambda: build_model(config, num_users, num_items, seed=settings.seed,
                                               num_categories=num_categories))
    graphdef, abstract = split_params(model)
    abstract_state = jax.eval_shape(lambda p: init_state(p, optimizer, table_opt), abstract)
    sharding = state_shardings(abstract_state, mesh)
    with_sharding = lambda tree, shard: jax.tree.map(  # noqa: E731
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shard)

    store = TrainCheckpoints(checkpoint_dir, max_to_keep=tcfg.max_to_keep) if checkpoint_dir is not None else None
    history: list[dict[str, Any]] = []
    epoch_loss = [0.0, 0]  # running (sum, count) of the current epoch, saved for exact logs
    best: dict[str, Any] = {"ndcg": -1.0, "epoch": 0, "since": 0}
    best_params = None  # device copy of the best validated params
    stopped_early = False
    resumed_from = None
    start = 0
    if store is not None and store.latest_step() is not None:
        meta = store.restore_meta()
        if "run" not in meta or "best" not in meta:
            store.close()
            raise CheckpointError(f"'{store.directory}' was written by an older fgjax: use a new output directory "
                                  "(or --overwrite)")
        if meta["run"] != fingerprint:
            changed = sorted(k for k in fingerprint if meta["run"].get(k) != fingerprint[k])
            store.close()
            raise CheckpointError(
                f"'{store.directory}' holds a run with other data or settings (differs in: {', '.join(changed)}); "
                "resuming would not continue it exactly: use a new output directory (or --overwrite to replace it)"
            )
        served, state, meta = store.restore(with_sharding(abstract, sharding.params),
                                            with_sharding(abstract_state, sharding))
        state = TrainState(*state)
        start = resumed_from = int(meta["step"])
        history, epoch_loss, best = list(meta["history"]), list(meta["epoch_loss"]), dict(meta["best"])
        stopped_early = bool(meta["stopped_early"])
        best_params = served if best["epoch"] > 0 else None
    else:
        params = split_params(build_model(config, num_users, num_items, seed=settings.seed,
                                          num_categories=num_categories))[1]
        state = jax.device_put(init_state(params, optimizer, table_opt), sharding)
    if on_ready is not None:
        on_ready()
    if callable(validation):
        validation = validation(graphdef, abstract)
    step_fn = make_train_step(graphdef, optimizer, mesh, sharding, seed=settings.seed, table_opt=table_opt,
                              privacy_plan=plan)
    copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=sharding.params)
    processes, me = jax.process_count(), jax.process_index()

    def save(step: int) -> None:
        meta = {"format_version": FORMAT_VERSION, "config": to_dict(config), "model": config.model.name,
                "step": step, "epoch": step // steps_per_epoch, "batch_in_epoch": step % steps_per_epoch,
                "steps_per_epoch": steps_per_epoch, "run": fingerprint, "history": history,
                "epoch_loss": epoch_loss, "best": best, "stopped_early": stopped_early}
        store.save(step, served_params(state) if best_params is None else best_params, state, meta)

    metrics_file = None
    if metrics_path and me == 0:
        # The file holds exactly the epochs of the state the run starts from (none, or the checkpoint's
        # history), never an epoch a killed run logged after its last checkpoint: rewritten, then appended.
        atomic_write_text(metrics_path, "".join(json.dumps(record) + "\n" for record in history))
        metrics_file = open(metrics_path, "a")
    losses: list[jax.Array] = []
    pending: list[jax.Array] = []
    t_epoch = time.perf_counter()
    order_epoch, order = -1, None
    bar = tqdm(total=stop_at, initial=start, desc=f"train {config.model.name}", unit="step",
               disable=not progress or me != 0, leave=False)
    done = start
    try:
        for step in range(start, stop_at):
            if stopped_early:
                break
            epoch, offset = divmod(step, steps_per_epoch)
            if sampler is not None:  # a Poisson sample of users, a few examples each (train.privacy)
                idx, mask = sampler.indices(step)
                batch = {name: x[idx] for name, x in fields.items()} | {"mask": mask}
            else:
                if epoch != order_epoch:
                    order_epoch, order = epoch, epoch_order(settings.seed, epoch, num_examples)
                idx = order[offset * settings.batch_size : (offset + 1) * settings.batch_size]
                if processes > 1:  # each process holds its share of the global batch
                    idx = idx.reshape(processes, -1)[me]
                    names = sorted(fields)
                    batch = dict(zip(names, distributed.global_batch(mesh, *(fields[n][idx] for n in names),
                                                                     axis=DATA_AXIS)))
                else:
                    batch = {name: x[idx] for name, x in fields.items()}
            state, loss = step_fn(state, batch)
            losses.append(loss)
            pending.append(loss)
            bar.update(1)
            done = step + 1
            end_of_epoch = done % steps_per_epoch == 0
            every = tcfg.checkpoint_every_steps
            checkpoint_now = end_of_epoch or done == stop_at or bool(every and done % every == 0)
            if checkpoint_now:
                # One host sync per checkpoint, not per step.
                epoch_loss = [epoch_loss[0] + float(np.sum(_scalars(pending))), epoch_loss[1] + len(pending)]
                pending = []
            if end_of_epoch:
                record: dict[str, Any] = {"epoch": epoch + 1, "step": done,
                                          "train_loss": epoch_loss[0] / max(epoch_loss[1], 1)}
                if validation is not None and ((epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs):
                    ranked = served_params(state) if processes == 1 else _to_host(served_params(state))
                    record.update(validate(graphdef, ranked, validation, num_items))
                    score = record.get(f"val_ndcg@{min(VAL_K, num_items)}")
                    select = plan is None and score is not None  # private: the last params are served
                    if select and score > best["ndcg"]:
                        best = {"ndcg": score, "epoch": epoch + 1, "since": 0}
                        best_params = copy_params(served_params(state))
                    elif select:
                        best["since"] += 1
                    stopped_early = bool(settings.patience and best["since"] >= settings.patience)
                if plan is not None:
                    record["epsilon"] = plan.epsilon(done)
                record["seconds"] = round(time.perf_counter() - t_epoch, 3)
                history.append(record)
                epoch_loss = [0.0, 0]
                t_epoch = time.perf_counter()
                bar.set_postfix({k: round(v, 4) for k, v in record.items() if k.startswith(("train_loss", "val_"))})
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if any([hook(record) for hook in on_epoch_end]):  # a list: every hook sees the record
                    stopped_early = True
            if store is not None and (checkpoint_now or stopped_early):
                save(done)
    finally:
        bar.close()
        if store is not None:
            store.close()
        if metrics_file:
            metrics_file.close()
    params = _to_host(served_params(state) if best_params is None else best_params)
    step_losses = _scalars(losses)
    spent = None if plan is None else {**plan.to_json(), "steps_run": int(done), "epsilon": plan.epsilon(int(done))}
    return TrainResult(graphdef, params, history, step_losses, int(done), resumed_from, int(best["epoch"]),
                       len(history), stopped_early, time.perf_counter() - t0, spent)


def _check_private(config: Config, settings: LoopSettings, section: str, owners: np.ndarray | None,
                   num_examples: int) -> None:
    """Refuse ``train.privacy`` where its guarantee or its batches would not hold."""
    if owners is None or len(owners) != num_examples:
        raise ConfigError("train.privacy.enabled: the examples' users are unknown (pass owners= to train_examples)")
    if config.train.table_optimizer != "dense":
        raise ConfigError(f"train.privacy.enabled needs train.table_optimizer=dense (row-sparse updates would "
                          f"skip the noise on untouched rows), got {config.train.table_optimizer!r}")
    if config.train.distributed:
        raise ConfigError("train.privacy.enabled does not run with train.distributed yet")
    if settings.patience:
        raise ConfigError(f"train.privacy.enabled needs {section}.patience=0: early stopping on validation is a "
                          "data-dependent choice the accountant does not cover")
    if section == "sequence" and config.sequence.params_ema:
        raise ConfigError(f"train.privacy.enabled serves the last step's params: set sequence.params_ema=0 "
                          f"(got {config.sequence.params_ema})")


def _fit_closed_form(
    config: Config,
    examples: Batch,
    validation: Validation | Callable[[nnx.GraphDef, Params], Validation] | None,
    *,
    num_users: int,
    num_items: int,
    checkpoint_dir: str | Path | None,
    metrics_path: str | Path | None,
    on_epoch_end: Sequence[EpochHook],
    on_ready: Callable[[], None] | None,
    t0: float,
) -> TrainResult:
    """``train_examples`` for a closed-form model: ``model.fit(examples)`` as the one epoch (step 1), then the
    same validation, metrics line, hooks and checkpoint; a checkpoint of the same run is restored, not refitted."""
    fields = {name: np.asarray(x) for name, x in examples.items()}
    fingerprint = run_fingerprint(config, fields, num_users, num_items)
    store = TrainCheckpoints(checkpoint_dir, max_to_keep=config.train.max_to_keep) if checkpoint_dir is not None else None
    try:
        if store is not None and store.latest_step() is not None:
            meta = store.restore_meta()
            if meta.get("run") != fingerprint:
                raise CheckpointError(f"'{store.directory}' holds a run with other data or settings; refitting would "
                                      "not continue it: use a new output directory")
            graphdef, abstract = split_params(nnx.eval_shape(lambda: build_model(config, num_users, num_items,
                                                                                 seed=0)))
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            params, _, meta = store.restore(abstract, None, sharding=device)
            if on_ready is not None:
                on_ready()
            history = list(meta["history"])
            return TrainResult(graphdef, jax.device_get(params), history, np.zeros(0, np.float32), int(meta["step"]),
                               int(meta["step"]), int(meta["best"]["epoch"]), len(history), False,
                               time.perf_counter() - t0)
        model = build_model(config, num_users, num_items, seed=0)
        model.fit(fields, num_users)
        graphdef, params = split_params(model)
        params = jax.device_get(params)
        if on_ready is not None:
            on_ready()
        record: dict[str, Any] = {"epoch": 1, "step": 1}
        if callable(validation):
            validation = validation(graphdef, params)
        if validation is not None:
            record.update(validate(graphdef, params, validation, num_items))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        history = [record]
        if metrics_path and jax.process_index() == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        for hook in on_epoch_end:
            hook(record)
        best_epoch = 1 if validation is not None else 0
        if store is not None:
            meta = {"format_version": FORMAT_VERSION, "config": to_dict(config), "model": config.model.name,
                    "step": 1, "epoch": 1, "batch_in_epoch": 0, "steps_per_epoch": 1, "run": fingerprint,
                    "history": history, "epoch_loss": [0.0, 0],
                    "best": {"ndcg": record.get(f"val_ndcg@{min(VAL_K, num_items)}", -1.0), "epoch": best_epoch,
                             "since": 0},
                    "stopped_early": False}
            store.save(1, params, {"step": np.asarray(1, np.int32)}, meta)
    finally:
        if store is not None:
            store.close()
    return TrainResult(graphdef, params, history, np.zeros(0, np.float32), 1, None, best_epoch, 1, False,
                       time.perf_counter() - t0)
