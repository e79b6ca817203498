"""Typed, frozen configs loaded from YAML with dotted ``key=value`` overrides.

Each section is a frozen dataclass; ``Config`` nests them. ``load_config``
merges a YAML file (optional) and overrides onto the defaults, checking every
key and value type, so a typo stops with a one-line ``ConfigError`` instead of
being ignored. Override values are parsed as YAML scalars/flow collections
(``train.epochs=3``, ``evaluate.ks=[5,10]``), never evaluated as code.

The defaults are the quickstart run: ``fgjax quickstart --out DIR``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import types
import typing
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from fgjax.errors import ConfigError

if TYPE_CHECKING:  # only for the annotation: importing kernels at run time imports jax
    from fgjax import kernels

DEFAULT_EVENT_WEIGHTS = MappingProxyType({"view": 0.5, "search": 0.5, "click": 1.0, "cart": 2.0, "purchase": 4.0})
DEFAULT_STATE_WEIGHTS = MappingProxyType(
    {"new": 1.0, "active": 1.0, "declining": 0.5, "forgotten": 0.05, "reactivated": 1.0}
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a loaded value must satisfy, kept on its field (``setting``).

    Bounds apply to a number, or to every element of a list or value of a
    mapping. Floats must be finite unless ``allow_inf`` (where ``.inf``
    means something, e.g. no decay).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] = ()
    allow_inf: bool = False

    def check(self, value: Any, key: str) -> None:
        """Raise ``ConfigError`` naming ``key`` (or ``key[i]`` / ``key.name``) for a value out of bounds."""
        if isinstance(value, dict):
            items = [(f"{key}.{sub}", v) for sub, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(key, value)]
        bounds = (
            (">=", self.ge, operator.ge), (">", self.gt, operator.gt),
            ("<=", self.le, operator.le), ("<", self.lt, operator.lt),
        )
        for where, v in items:
            for relation, bound, holds in bounds:
                if bound is not None and not holds(v, bound):
                    raise ConfigError(f"{where}: expected a value {relation} {bound}, got {v!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{key}: expected one of {', '.join(self.choices)}, got {value!r}")


_NO_RULE = Rule()


def setting(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] = (),
    allow_inf: bool = False,
) -> Any:
    """A config field with its rule beside it: ``k: int = setting(10, ge=1)``.

    A list or mapping default is copied for each instance (a fresh
    ``default_factory``), so configs never share a mutable default.
    """
    rule = Rule(ge=ge, gt=gt, le=le, lt=lt, choices=tuple(choices), allow_inf=allow_inf)
    metadata = MappingProxyType({"rule": rule})
    if isinstance(default, Mapping):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def rule_of(field: dataclasses.Field) -> Rule:
    """The ``Rule`` of a config field (no constraint if it was declared without ``setting``)."""
    return field.metadata.get("rule", _NO_RULE)


@dataclasses.dataclass(frozen=True)
class ColumnsConfig:
    """Names of the event columns in the input files (docs/data.md)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    event_type: str = "event_type"
    weight: str = "weight"

    def _check(self, where: str) -> None:
        names = [getattr(self, f.name) for f in dataclasses.fields(self)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{where}: column '{repeated[0]}' is mapped to more than one field")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the behavior log is and how to read it."""

    path: str = ""  # file, directory of shards, or glob; "" = the quickstart's generated data
    format: str = setting("auto", choices=("auto", "parquet", "csv", "ipc", "recbole", "movielens"))
    items_path: str = ""  # optional items table: item_id -> category
    item_id_column: str = "item_id"  # the items table's item ID column (MovieLens movies.csv: movieId)
    item_category_column: str = "category"
    # When set, a category cell lists several (MovieLens genres "Adventure|Animation"): the first one is used.
    item_category_separator: str = ""
    columns: ColumnsConfig = ColumnsConfig()
    event_weights: dict[str, float] = setting(DEFAULT_EVENT_WEIGHTS, ge=0)
    default_event_type: str = "click"
    unknown_event_weight: float = setting(1.0, ge=0)  # weight of event types not in event_weights (policy "keep")
    # An event_type that is neither in event_weights nor default_event_type: quarantine = reject the row
    # ("unknown event_type", counted, in rejects.parquet); keep = use it at unknown_event_weight; refuse = stop.
    unknown_event_types: str = setting("quarantine", choices=("quarantine", "keep", "refuse"))
    # Shards whose ID columns disagree in type (integers in some, strings in others): refuse, or read every ID
    # of that column as a string (7 and "7" are then one ID; "s7" another).
    mixed_id_types: str = setting("refuse", choices=("refuse", "string"))
    batch_size: int = setting(65536, ge=1)  # rows per Arrow record batch while streaming
    min_timestamp: float = 0.0  # epoch seconds; rows outside [min, max] are rejected
    max_timestamp: float = 4102444800.0  # 2100-01-01T00:00:00Z
    # Rows whose weight is above this are rejected ("weight too large"): the analysis sums weights and their
    # squares in float32, where weights of 1e20 made F NaN (a weight of 1e9 leaves ten orders of magnitude)
    max_weight: float = setting(1e9, gt=0)
    drop_duplicates: bool = True  # identical (user, item, timestamp, event_type) rows
    # A user's events at the same timestamp: input order (a stable sort by time, RecBole's convention) | item index.
    # Decides the leave-last-out targets, the sequences and the masks (docs/data.md, "Evaluation protocol").
    tie_order: str = setting("input", choices=("input", "item"))
    # Pseudonymous user IDs (fgjax.data.pseudonym): every user ID is replaced at ingest by HMAC-SHA256(secret, ID)
    # (hex), so outputs and checkpoints hold pseudonyms only. The secret is read from pseudonym_secret_file when set,
    # else from the environment variable pseudonym_secret_env; the config records where it is, never the secret.
    pseudonymize: bool = False
    pseudonym_secret_env: str = "FGJAX_PSEUDONYM_SECRET"
    pseudonym_secret_file: str = ""


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The built-in synthetic behavior log (users with fading interests).

    Its rules span fields and are checked by the generator
    (``fgjax.data.synthetic``), which is the one user of this section.
    """

    # classic: fgjax.data.synthetic's kinds; seasonal (heavy-tailed rates, weekday profiles, fades to floors),
    # hawkes (self-exciting sessions), engaged (users drift between engaged and disengaged): fgjax.data.stories
    story: str = setting("classic", choices=("classic", "seasonal", "hawkes", "engaged"))
    num_users: int = 2000
    num_items: int = 1000
    num_categories: int = 16
    num_days: int = 60
    min_interests: int = 2
    max_interests: int = 4
    events_per_interest_per_day: float = 0.6
    fade_fraction: float = 0.25  # share of (user, interest) pairs that fade slowly
    stop_fraction: float = 0.2  # share that stop abruptly
    periodic_fraction: float = 0.15  # share of users whose interests come in periodic bursts
    zipf_exponent: float = 1.1  # item popularity within a category ~ rank^-s
    users_per_shard: int = 500
    start: str = "2026-01-01"  # UTC date of the first window
    seed: int = 0
    bad_row_fraction: float = 0.002  # injected duplicates / null user_id / null timestamp rows (the rejects demo)
    category_zipf_exponent: float = 0.8  # how much more often popular categories are a user's interest
    fade_half_life_days: float = 7.0  # a fading interest's rate halves every this many days after fade start
    new_interest_fraction: float = 0.2  # share of (user, interest) pairs that start after day 0
    reactivate_fraction: float = 0.1  # share of pairs that pause, then come back
    bursty_fraction: float = 0.1  # share of pairs that are stable with noisy bursts
    period_days_min: int = 5  # a periodic interest's period, drawn in [min, max] days
    period_days_max: int = 14
    pause_days_min: int = 14  # a reactivated interest's pause, drawn in [min, max] days
    pause_days_max: int = 35
    burst_multiplier: float = 6.0  # a bursty interest's rate on a burst day
    burst_day_share: float = 0.05  # share of a bursty interest's days that are bursts


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Forgetting detection per (user, interest) (docs/formulas.md, 'The detector').

    The one place for the detector's defaults: ``fgjax.kernels.DetectorParams``
    has none (kernels import nothing from fgjax); ``kernel_params()`` builds
    one from this section.
    """

    kind: str = setting("adaptive", choices=("adaptive", "level"))  # level: analysis.level's rule on I_k alone
    buffer_windows: int = setting(64, ge=3)  # T: windows of per-interest activity kept for trend and periodicity
    user_block: int = setting(65536, ge=0)  # users judged at a time: bounds the temporaries (0 = all at once)
    # Each interest's periodogram (most of the update's arithmetic) is taken every this many windows, a user's
    # turns staggered, and kept between (1 = every window; kernels.detector_update's period_every).
    period_every: int = setting(4, ge=1)
    false_alarm: float = setting(0.01, gt=0, lt=1)  # chance a loyal interest is ever called forgotten in life_days
    # The life false_alarm covers (in windows: life_days / window length), at most the log's span where the run
    # knows it (fgjax analyze, the evaluations; not the window-by-window monitor): in a 60-day log no interest is
    # loyal for 200 days, and a budget spread over 200 cost the 60-day runs 0.08-0.11 F1 (bench/RESULTS.md).
    life_days: float = setting(200.0, gt=0)
    gap_factor: float = setting(1.5, ge=0)  # a silence must exceed this times the longest gap / period it came back from
    min_strength: float = setting(0.25, ge=0)  # periodogram peak share that counts as periodic
    recent_windows: int = setting(3, ge=1)  # fewest windows of the drop test and of the trend
    drop_events: float = setting(20.0, ge=0)  # the drop test's span covers this many expected events (<= T // 2 windows)
    fade_share: float = setting(0.25, gt=0, lt=1)  # forgotten once the rate is below this share of the former rate
    fade_confidence: float = setting(0.01, gt=0, lt=1)  # drop test: recent events this unlikely at fade_share of the rate
    declining_ratio: float = setting(0.5, ge=0)  # recent events below this share with a negative trend: declining
    min_history: int = setting(4, ge=0)  # windows of history before either test may fire
    new_windows: int = setting(2, ge=1)  # windows an interest stays new / reactivated
    prior_events: float = setting(1.0, gt=0)  # Gamma prior on an interest's event rate: pseudo-events ...
    prior_windows: float = setting(1.0, gt=0)  # ... over pseudo-windows
    prior_strength: float = setting(1.0, gt=0)  # Beta priors of the window model's transitions: pseudo windows each way
    # The window model's prior on how silences go on: this many pseudo windows at the population's share of
    # silent windows followed by a silent one (empirical Bayes; 0 = prior_strength each way). Chosen on the
    # classic story alone (4, 10, 30, 100, 300), reported on the others (bench/RESULTS.md, issue 10).
    population_strength: float = setting(30.0, ge=0)
    # The silence test's dispersion indices: each interest's own, raised toward the population's (the median over
    # interests with 4+ windows of history) by this many pseudo windows of it (empirical Bayes; 0 = its own
    # alone). Where most interests read as Poisson the median is 1 and little changes (the classic, seasonal and
    # engaged stories: F1 within 0.006 at every budget); where most come in sessions (hawkes) a young interest is
    # judged as the typical one is. 10: the value the matrix chose most often for the earlier geometric-mean
    # prior (bench/RESULTS.md, issue 10).
    dispersion_strength: float = setting(10.0, ge=0)
    min_gaps: float = setting(3.0, ge=0)  # silences an interest came back from before the window model is used
    # The window model speaks for silences up to max(this, log(life * starts / false_alarm) / log(gaps + 1))
    # times the longest seen (docs/formulas.md). 6 lifts the detection matrix (all 16 cells at least the silence
    # rule) but costs a 60-day run of the classic generator 0.03-0.11 F1 (bench/RESULTS.md, issue 10): 3 stays.
    markov_reach: float = setting(3.0, gt=0)
    calibration_share: float = setting(0.01, gt=0, lt=0.5)  # kappa matches this tail share of completed silences
    calibration_prior: float = setting(1000.0, ge=0)  # completed silences the prior kappa = 1 is worth
    # A learned verdict (fgjax.analysis.verdict; docs/formulas.md section 7d) decides which silent interests are
    # forgotten: the verdict.json that `fgjax evaluate --detection` writes, its fit for this window length,
    # fade_share and the span of the log analyzed. "builtin": the fits fgjax ships (that file at the defaults);
    # "auto": the shipped fits in daily and weekly windows, where they were measured better than the detector
    # (bench/RESULTS.md, issue 10), the detector's own verdict elsewhere; empty: the detector's own everywhere.
    verdict_file: str = "auto"
    verdict_recent_windows: int = setting(16, ge=1)  # span of the verdict's recent-rate feature (fit and use alike)
    degree_z: float = 2.0  # per-user F alarm: F > mean + degree_z * std of the user's own F
    degree_fallback: float = 1.0  # F alarm threshold before a user has two F values

    # The drop test's ratio became the fade definition; the life budget is counted in days.
    _RENAMED = MappingProxyType({"forgotten_ratio": "fade_share"})

    def kernel_params(self, window_seconds: float = 86400.0, log_windows: int | None = None) -> kernels.DetectorParams:
        """These knobs as ``fgjax.kernels.DetectorParams`` of Python scalars for windows of
        ``window_seconds`` (``life_days`` becomes ``life_windows``, at most ``log_windows``, the windows of the
        log analyzed, where it is known; imports jax)."""
        from fgjax.kernels import DetectorParams  # lazily: loading a config must not import jax

        knobs = {name: getattr(self, name) for name in DetectorParams._fields if name != "life_windows"}
        life = self.life_days * 86400.0 / window_seconds
        if log_windows is not None:
            life = min(life, float(log_windows))
        return DetectorParams(**knobs, life_windows=max(life, 1.0))


@dataclasses.dataclass(frozen=True)
class LevelConfig:
    """The ``level`` rule (``analysis.detector.kind: level``): I_k against its own peak."""

    declining_ratio: float = setting(0.3, ge=0)  # I_k below this share of its peak: declining
    forgotten_ratio: float = setting(0.1, ge=0)  # I_k below this share of its peak, without activity: forgotten


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Windowed interest state and forgetting (docs/formulas.md)."""

    window_seconds: float = setting(86400.0, gt=0)
    # More windows than this between the first event and the last is refused before anything is allocated:
    # usually a window given in seconds where days were meant (--window 7 is 7 seconds; 7d is a week)
    max_windows: int = setting(100_000, ge=1)
    half_life_windows: float = setting(7.0, gt=0, allow_inf=True)  # decay half-life in windows; .inf = no decay
    reset_each_window: bool = False  # True with half_life .inf = the seed's per-window indicator
    alpha: float = setting(2.0, ge=0)  # softmax temperature of p(k|u,t) = softmax(-alpha * f_k)
    forgetting_mode: str = setting("decline", choices=("decline", "change"))
    normalize: str = setting("current", choices=("current", "max"))  # current (seed formula) | max (bounded in [0, 2])
    eps: float = setting(1e-8, gt=0)
    top_interests: int = setting(3, ge=1)  # interests written per (user, window) in forgetting.parquet
    # fgjax analyze feeds a window of more events than this (and than 1/8 of the users x interests) to the step
    # in chunks of at most that many (summed on the device), so the events in flight do not grow with the
    # window (0 = whole windows; fgjax.analysis.run.run_chunk)
    window_chunk: int = setting(1 << 18, ge=0)
    level: LevelConfig = LevelConfig()
    detector: DetectorConfig = DetectorConfig()
    # fgjax analyze as jax.distributed processes (FGJAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID), users split by
    # process: each reads every N-th file of data.path (shards by user); fgjax.analysis.distributed
    distributed: bool = False
    # Devices of each process the window step splits the users over (0 = all; fgjax.analysis.distributed). A run
    # whose windows come in chunks (window_chunk) runs on one device of one process.
    devices: int = setting(0, ge=0)
    # fgjax analyze on a CPU: the CPU devices it splits the users over (jax_num_cpu_devices, set before JAX
    # starts; 0 = leave JAX's setting). Each runs its own loop over user blocks: on 2 cores, 2 devices judge a
    # window about 15 % faster than one (bench/RESULTS.md).
    cpu_devices: int = setting(2, ge=0)

    # Keys that moved (old -> new, relative to this section): a config that
    # still uses one stops with the new name instead of "unknown key".
    _RENAMED = MappingProxyType({
        "declining_ratio": "level.declining_ratio",
        "forgotten_ratio": "level.forgotten_ratio",
    })


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model ``fgjax train`` trains, and the EmbeddingMLP's sizes (sequence
    models take theirs and their training settings from ``sequence``, the
    baselines theirs from ``bpr`` and ``knn``)."""

    # embedding_mlp | time_sasrec | sasrec (time_sasrec with time_encoding none) | forgetting_sasrec (time_sasrec
    # plus the user's learned per-interest forgetting; needs item categories) | bpr (BPR matrix factorization)
    # | itemknn (cosine item-item neighbours, closed form)
    name: str = setting("embedding_mlp", choices=("embedding_mlp", "time_sasrec", "sasrec", "bpr", "itemknn",
                                                  "forgetting_sasrec"))
    embed_dim: int = setting(32, ge=1)
    hidden_dim: int = setting(64, ge=1)


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """User-level differentially private training (``train.privacy``; ``fgjax.training.privacy``).

    Each step samples users (Poisson, each user independently with rate
    ``users_per_step / users``), draws ``examples_per_user`` of each sampled
    user's training examples (with replacement), takes each user's gradient of
    the mean loss over them (``jax.vmap`` over users), clips it to
    ``clip_norm``, sums, adds Gaussian noise of std ``noise_multiplier *
    clip_norm`` and divides by ``users_per_step`` (optax's
    ``differentially_private_aggregate``); the model's optimizer then applies
    it. The noise multiplier is calibrated with dp-accounting so that the
    planned steps spend at most ``target_epsilon`` at ``delta``; the epsilon
    spent is logged per epoch. Covers the model's parameters, not the serving
    state (which holds each user's items to serve them).
    """

    enabled: bool = False
    target_epsilon: float = setting(8.0, gt=0, allow_inf=True)  # .inf: the same clipped, sampled steps without noise
    delta: float = setting(1e-5, gt=0, lt=1)  # keep below 1 / users
    clip_norm: float = setting(1.0, gt=0)  # C: bound on each user's gradient (L2 over every parameter)
    users_per_step: int = setting(64, ge=1)  # expected users per step; an epoch = users / users_per_step steps
    examples_per_user: int = setting(8, ge=1)  # a sampled user's examples per step (drawn with replacement)
    accountant: str = setting("rdp", choices=("rdp", "pld"))  # dp-accounting's RDP or PLD accountant


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(10, ge=1)
    batch_size: int = setting(1024, ge=1)  # global batch of positives; split over the data axis
    learning_rate: float = setting(1e-2, gt=0)
    negatives: int = setting(4, ge=1)  # sampled negatives per positive (uniform over items)
    seed: int = 0
    num_devices: int = setting(0, ge=0)  # devices on the data axis; 0 = all local devices
    checkpoint_every_steps: int = setting(0, ge=0)  # 0 = at the end of every epoch
    max_to_keep: int = setting(2, ge=1)
    max_steps: int = setting(0, ge=0)  # stop after this many steps in total (0 = run all epochs)
    eval_users: int = setting(0, ge=0)  # validation users per epoch (0 = all)
    patience: int = setting(0, ge=0)  # embedding_mlp: validations without a better val NDCG@10 before stopping (0 = all epochs)
    # embedding_mlp: dense (Adam) | row_adagrad | lazy_adam (row-sharded tables, row-sparse updates)
    table_optimizer: str = setting("dense", choices=("dense", "row_adagrad", "lazy_adam"))
    distributed: bool = False  # jax.distributed over processes (FGJAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID)
    privacy: PrivacyConfig = PrivacyConfig()  # user-level DP-SGD for every gradient-trained model


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """The sequence models (``model.name`` time_sasrec / sasrec / forgetting_sasrec, ``fgjax.models.sequence``)
    and their training settings; mesh, checkpoint, ``max_steps`` and ``eval_users`` come from ``train``."""

    max_len: int = setting(50, ge=1)  # L: most recent items attended
    dim: int = setting(64, ge=1)
    heads: int = setting(2, ge=1)
    layers: int = setting(2, ge=0)
    ffn_mult: int = setting(4, ge=1)
    # none | interval (log2-bucketed gap bias) | decay (learned forgetting rate)
    time_encoding: str = setting("interval", choices=("none", "interval", "decay"))
    time_unit_seconds: float = setting(60.0, gt=0)
    time_buckets: int = setting(32, ge=1)
    dropout: float = setting(0.2, ge=0, lt=1)
    loss: str = setting("full_softmax", choices=("full_softmax", "sampled_softmax"))
    sampled_negatives: int = setting(256, ge=1)  # uniform negatives per batch (sampled_softmax)
    # Leave each position's known items (the distinct earlier items of its training window, never its target) out
    # of the training softmax, as evaluation masks a user's known items; full_softmax only. For catalogs a user
    # consumes once (ratings); off where users repeat items.
    mask_known: bool = False
    # forgetting_sasrec: g_k = [k seen] * (1 + age_k / unit) ** -rate_k per interest k, logit += g . A_item;
    # learned (rate_k = softplus(rho_k), 0.5 at init) | none (rate 0: g = "interest ever seen", the ablation)
    interest_decay: str = setting("learned", choices=("learned", "none"))
    interest_time_unit_seconds: float = setting(86400.0, gt=0)  # unit of interest ages: a day (not session recency)
    epochs: int = setting(200, ge=1)  # at most; early stopping usually ends sooner
    batch_size: int = setting(128, ge=1)  # training windows per step (global; split over the data axis)
    learning_rate: float = setting(1e-3, gt=0)
    # constant, or cosine: one epoch of linear warm-up, then a cosine decay to 0 at the last of `epochs`
    lr_schedule: str = setting("constant", choices=("constant", "cosine"))
    weight_decay: float = setting(0.0, ge=0)
    # Validate, select and serve an exponential moving average of the params with this decay per step instead of
    # the last step's params (fgjax.training.averaging); 0 = off. Sequence models only (the others ignore it);
    # refused with train.privacy, which serves the last step's params.
    params_ema: float = setting(0.0, ge=0, lt=1)
    patience: int = setting(10, ge=0)  # validations without a better val NDCG@10 before stopping (0 = run all epochs)
    eval_every: int = setting(1, ge=1)  # epochs between validations
    seed: int = 0

    def _check(self, where: str) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"{where}.dim={self.dim}: expected a multiple of {where}.heads={self.heads}")
        if self.mask_known and self.loss != "full_softmax":
            raise ConfigError(f"{where}.mask_known=true: expected {where}.loss=full_softmax, got {self.loss!r}")


@dataclasses.dataclass(frozen=True)
class BPRConfig:
    """BPR matrix factorization (``model.name: bpr``, ``fgjax.models.baselines.BPRMF``) and its training
    settings (Adam; RecBole's defaults); mesh, checkpoint, ``max_steps`` and ``eval_users`` come from ``train``."""

    dim: int = setting(64, ge=1)  # embedding width of users and items
    l2: float = setting(0.0, ge=0)  # weight of the batch's mean squared embedding norms in the loss
    negatives: int = setting(1, ge=1)  # uniform negative items per positive
    epochs: int = setting(300, ge=1)  # at most; early stopping usually ends sooner
    batch_size: int = setting(2048, ge=1)  # positive pairs per step (global; split over the data axis)
    learning_rate: float = setting(1e-3, gt=0)
    patience: int = setting(10, ge=0)  # validations without a better val NDCG@10 before stopping (0 = run all epochs)
    eval_every: int = setting(1, ge=1)  # epochs between validations
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class KNNConfig:
    """ItemKNN (``model.name: itemknn``, ``fgjax.models.baselines.ItemKNN``): cosine similarity of
    items over the training users, each candidate scored by the sum of its similarities to the
    user's items among its ``neighbors`` most similar ones (RecBole's ItemKNN). Closed form: the
    one loop fits it in one pass, validates and checkpoints it like any model."""

    neighbors: int = setting(100, ge=1)  # K most similar items kept per candidate
    shrink: float = setting(0.0, ge=0)  # added to the cosine's denominator
    history: int = setting(0, ge=0)  # score from the user's last n items only (0 = the whole history)


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """The model-quality report (``bench/quality.py``): protocols and the forgetting sweep.

    The sweep re-ranks each model's validation lists (never test) over every
    (alpha, half-life, strength) and keeps the best NDCG@10; strength 0 is
    "forgetting off", so the sweep may choose it.
    """

    protocols: list[str] = setting(["leave_last_out", "time_cutoff"])
    cutoff_quantiles: list[float] = setting([0.8, 0.9], gt=0)  # val, test cut
    sweep_alpha: list[float] = setting([0.0, 1.0, 2.0, 4.0, 8.0], ge=0)
    sweep_half_life_windows: list[float] = setting([1.0, 4.0, 16.0, math.inf], gt=0, allow_inf=True)
    sweep_strength: list[float] = setting([0.0, 0.25, 0.5, 1.0], ge=0)
    sasrec_baseline: bool = True  # also train the same network without time encodings (plain SASRec)
    baselines: bool = True  # also BPR-MF (bpr section) and ItemKNN from the whole history and from the last n items
    knn_last_items: int = setting(5, ge=1)  # n of the last-n-items ItemKNN row
    # The forgetting-aware sequence model (model.name forgetting_sasrec) and its no-decay ablation.
    in_model_forgetting: bool = True
    # Users whose known history spans at least this many days are also reported on their own.
    long_history_days: float = setting(180.0, gt=0)
    # The same tuning budget for every model: at most this many trials each, chosen by validation NDCG@10.
    tuning_trials: int = setting(1, ge=1)
    # Row name -> trials, each "key=value; key=value" (dotted config overrides); rows not named run as configured.
    tuning: dict[str, list[str]] = setting({})
    # Pruning: from this epoch on, a later trial whose best val NDCG@10 so far is below the leading trial's best up
    # to the same epoch stops there (the median stopping rule with one finished trial); 0 = never prune.
    prune_after_epochs: int = setting(4, ge=0)
    # false: the trials run under the first of ``protocols``; the others train the trial it chose, once (knobs
    # chosen on one split, reported on another). true: every protocol tunes anew.
    retune_per_protocol: bool = False
    # The ablation rows (forgetting_sasrec without decay) train with the trial of the row they ablate; false: under
    # the first of ``protocols`` only (where the paired tests have the users to show a difference), true: every one.
    ablations_every_protocol: bool = False

    def _check(self, where: str) -> None:
        q = self.cutoff_quantiles
        if len(q) != 2 or not 0 < q[0] < q[1] < 1:
            raise ConfigError(
                f"{where}.cutoff_quantiles: expected [validation, test] with 0 < validation < test < 1, got {q!r}"
            )
        unknown = sorted(set(self.protocols) - {"leave_last_out", "time_cutoff"})
        if unknown or not self.protocols:
            raise ConfigError(
                f"{where}.protocols: expected a non-empty list of leave_last_out, time_cutoff, got {self.protocols!r}"
            )
        for name in ("sweep_alpha", "sweep_half_life_windows", "sweep_strength"):
            if not getattr(self, name):
                raise ConfigError(f"{where}.{name}: expected at least one value")
        for row, trials in self.tuning.items():
            if not 1 <= len(trials) <= self.tuning_trials:
                raise ConfigError(f"{where}.tuning.{row}: {len(trials)} trials, expected 1 to "
                                  f"{where}.tuning_trials={self.tuning_trials} (the same budget for every model)")
            for trial in trials:
                for text in trial.split(";"):
                    if text.strip():
                        parse_override(text)


@dataclasses.dataclass(frozen=True)
class RecommendConfig:
    """Forgetting-aware ranking and its strategy.

    The strategy is ``state_weights`` (the multiplier of p(k|u,t) per state:
    suppress forgotten with ``forgotten: 0``, damp declining with
    ``declining: 0.5``, boost new with ``new: 1.5``) plus exploration: each
    forgotten (user, interest) is re-surfaced, weighted as if active, with
    probability ``explore_probability``, and its items are flagged
    ``explore`` in the output. The draw is made once per analysis (each fit,
    i.e. each refresh of the serving state) from ``explore_seed``: change the
    seed between refreshes to re-surface other interests; it is not redrawn
    per request.
    """

    k: int = setting(10, ge=1)
    use_forgetting: bool = True
    exclude_seen: bool = True
    state_weights: dict[str, float] = setting(DEFAULT_STATE_WEIGHTS, ge=0)
    interest_floor: float = setting(0.01, ge=0)  # smallest interest multiplier: never-seen interests still rank by the model
    explore_probability: float = setting(0.0, ge=0, le=1)  # chance that a forgotten interest is re-surfaced (as active)
    explore_seed: int = 0
    user_chunk: int = setting(512, ge=1)  # users scored per device call (at most)
    score_memory_mb: int = setting(1024, ge=1)  # bound on the (users, items, hidden) scoring intermediate

    def _check(self, where: str) -> None:
        from fgjax.kernels import STATE_NAMES  # lazily: jax is only needed once a recommend section is built

        unknown = sorted(set(self.state_weights) - set(STATE_NAMES))
        if unknown:
            raise ConfigError(f"{where}.state_weights.{unknown[0]}: unknown state; states are {', '.join(STATE_NAMES)}")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    protocol: str = setting("leave_last_out", choices=("leave_last_out",))
    ks: list[int] = setting([10, 20], ge=1)
    # Paired comparisons of methods on the same test users (bootstrap interval of the mean difference).
    bootstrap_resamples: int = setting(2000, ge=100)
    bootstrap_seed: int = 0
    # Forgetting detection against synthetic ground truth (``fgjax evaluate --detection``).
    fade_forgotten_share: float = setting(0.25, gt=0)  # a fading interest is forgotten once its rate is below this share
    detection_margin_windows: int = setting(4, ge=0)  # changes this close to the end of the log are not judged
    detection_early_windows: int = setting(1, ge=0)  # an alarm this many windows before the forgotten one still counts
    min_expected_events: float = setting(10.0, ge=0)  # a change is judged if its former rate predicts this many events after it
    false_alarm_sweep: list[float] = setting([1e-6, 1e-5, 1e-4, 5e-4, 2e-3, 1e-2, 3e-2, 0.1, 0.3], gt=0)
    seed_threshold_sweep: list[float] = setting([0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0], ge=0)
    # Up to 60 windows: in daily windows the best N reaches 30-40 on some stories (it must lie inside the sweep).
    silence_sweep: list[int] = setting([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 17, 20, 25, 30, 35, 40, 50, 60], ge=1)
    # The ceiling's posterior thresholds (fgjax.evaluation.oracle), the best chosen on each cell.
    oracle_sweep: list[float] = setting([0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999],
                                        gt=0, lt=1)
    # The story x window matrix (fgjax.evaluation.matrix): every story at the same size, knobs chosen
    # leave-one-story-out, the silence rule at its best N per cell.
    detection_stories: list[str] = setting(["classic", "seasonal", "hawkes", "engaged"])  # synthetic.story values
    detection_window_days: list[int] = setting([1, 7], ge=1)  # window lengths of the matrix, in days
    matrix_users: int = setting(2000, ge=1)  # users per story
    matrix_days: int = setting(168, ge=14)  # days per story (24 weeks)
    matrix_margin_days: int = setting(14, ge=0)  # changes this close to the end are not judged (any window length)
    fade_shares: list[float] = setting([0.25, 0.05], gt=0, lt=1)  # fade definitions the matrix is scored at
    bocpd_hazard: float = setting(0.005, gt=0, lt=1)  # BOCPD anchor: prior chance of a change per window
    bocpd_prior_events: float = setting(1.0, gt=0)  # BOCPD: Gamma prior of a new segment's rate: events ...
    bocpd_prior_windows: float = setting(1.0, gt=0)  # ... over windows
    bocpd_run_lengths: int = setting(64, ge=2)  # BOCPD: run lengths kept (the longest absorbs the tail)
    bocpd_threshold_sweep: list[float] = setting([0.5, 0.8, 0.9, 0.95, 0.99, 0.999], gt=0, lt=1)
    cusum_ratio: float = setting(0.1, gt=0, lt=1)  # CUSUM anchor: the drop it looks for, a share of the rate
    cusum_threshold_sweep: list[float] = setting([3.0, 5.0, 8.0, 12.0, 18.0, 27.0, 40.0], gt=0)
    # The learned verdict (fgjax.evaluation.verdict): a logistic model over the detector's evidence, fitted on the
    # other stories of each cell (leave-one-story-out), its log-odds threshold chosen on them too.
    verdict: bool = True  # score the learned verdict in the matrix
    verdict_threshold_sweep: list[float] = setting([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])
    verdict_newton_steps: int = setting(10, ge=1)  # Newton steps of the fit (fgjax.evaluation.verdict.fit_verdict)
    # L2 penalty on the standardized weights, per unit of total row weight: it keeps the optimum finite where a
    # feature separates the labels. 1e-5 / 1e-4 / 1e-3 gave the matrix's verdict a mean F1 of 0.8888 / 0.8925 /
    # 0.8939 on the long logs and 0.8755 / 0.8726 / 0.8690 on the 60-day ones (bench/RESULTS.md): the best sum.
    verdict_ridge: float = setting(1e-4, gt=0)
    verdict_rows_per_story: int = setting(200_000, ge=1)  # silent (window, interest) rows each story lends the fit
    verdict_seed: int = 0  # which rows are drawn when a story has more than verdict_rows_per_story
    # The threshold's choice: the best mean F1 on the stories fitted on, among the thresholds whose mean share of
    # loyal interests ever flagged there is at most this (0 = no cap; fgjax.evaluation.verdict.choose_threshold).
    verdict_loyal_cap: float = setting(0.0, ge=0, lt=1)
    # The fit's family: each story is drawn again this many times (other users) with periods and pauses drawn from
    # the wide ranges below, and those draws join the fit and the threshold's choice (never the scored cells; a
    # held-out story's own draws stay out of its fit). A fitted model knows only the stories it saw: the matrix's
    # draws alone (period_days 5-14) taught it that a busy young interest silent for three weeks is gone, which a
    # monthly shopper is not. 0 = the matrix's draws only.
    verdict_family_draws: int = setting(1, ge=0)
    verdict_period_days: list[int] = setting([2, 42], ge=2)  # [min, max] of a periodic interest's period there
    verdict_pause_days: list[int] = setting([14, 63], ge=1)  # [min, max] of a reactivated interest's pause there
    # More draws of each story at synthetic's own periods and pauses (other users), after the wide ones: the
    # fit then sees the log's own kind of cycle beside the wide family's.
    verdict_own_draws: int = setting(0, ge=0)
    # Days of those draws (0 = matrix_days): shorter logs, younger interests. 60 (beside the wide draw) cost the
    # matrix's verdict 0.8925 -> 0.8664 mean F1 (bench/RESULTS.md): the default stays 0.
    verdict_own_days: int = setting(0, ge=0)
    # Days of the shorter-span verdicts' logs ([] = none; each below matrix_days). One fit cannot serve every span
    # (the verdict_own_days trial above), so the matrix also draws every story (at its own ranges, scored) and its
    # family over each of these spans, fits a verdict per span, window length and share on them alone, and scores
    # it leave-one-story-out beside the long fit and the rule on those logs. verdict.json holds every span's fits;
    # a run reads the shortest whose span covers its log, else the longest (fgjax.analysis.verdict.load_verdict).
    # Spans not below matrix_days are skipped (the matrix's setup lists those it fitted). 112 days: a 90-day log
    # read the 24-week fit, too cautious in weekly windows (bench/RESULTS.md). 30 days: on 30-day logs in daily
    # windows the 60-day fit caught 27-58 % of the changes, below the detector alone on all four stories
    # (bench/RESULTS.md, issue 10). 90 days: on the stories' 90-day draws the 112-day fit scored 0.880 / 0.886
    # mean F1 (daily / weekly, leave-one-story-out) against the 90-day fit's 0.897 / 0.903, and on the log written
    # blind at 75 and 90 days it fell below the rule in three weekly cells that the 90-day fit wins. 140 days: on
    # the 140-day draws the 24-week fit scored 0.893 / 0.908 against the 140-day fit's 0.906 / 0.915, and on both
    # blind logs at 120 days the 140-day fit was better in 7 of 8 cells.
    verdict_short_days: list[int] = setting([30, 60, 90, 112, 140], ge=14)
    # A span is drawn, scored and fitted only at the window lengths where its logs begin at least this many
    # windows (fgjax.evaluation.matrix.short_span_windows): a 30-day log in weekly windows (5) judges almost no
    # change, and its fit flagged 10-14 % of periodic interests; such a log reads the next longer span's fit.
    verdict_min_windows: int = setting(8, ge=2)

    def _check(self, where: str) -> None:
        if not self.ks:
            raise ConfigError(f"{where}.ks: expected at least one cut-off, e.g. [10, 20]")
        if len(set(self.verdict_short_days)) != len(self.verdict_short_days):
            raise ConfigError(f"{where}.verdict_short_days: expected distinct spans, got {self.verdict_short_days}")
        for name in ("verdict_period_days", "verdict_pause_days"):
            span = getattr(self, name)
            if len(span) != 2 or span[0] > span[1]:
                raise ConfigError(f"{where}.{name}: expected [min, max] with min <= max, got {span!r}")


@dataclasses.dataclass(frozen=True)
class LogVerdictConfig:
    """A learned verdict fitted on a log's own silences (``fgjax fit-verdict``; ``fgjax.evaluation.log_verdict``).

    A silence of an interest is "gone" when it lasts ``horizon_days`` while the user is still seen afterwards, and
    "back" when the interest returns sooner; the verdict learns which is which from the detector's evidence, in the
    windows of ``analysis.window_seconds``.
    """

    horizon_days: float = setting(91.0, gt=0)  # a silence this long, the user seen after it, counts as gone
    # Gone relative to the interest's own rate: once the interest, as active as its history says, would show a
    # silence that long under this many times in its life in the log (2 to the horizon's windows; 0 = the horizon
    # alone): a busy interest's short silence is gone, a slow or new one's needs longer (docs/formulas.md 7e).
    rate_surprise: float = setting(0.01, ge=0, lt=1)
    # The threshold also flags at most this share of the pairs the log shows loyal (every silence back) over their
    # whole life (0 = the precision alone).
    loyal_budget: float = setting(0.01, ge=0, lt=1)
    # The log-odds threshold: the lowest at which the fitted silences' first alarms are gone this often.
    precision: float = setting(0.8, gt=0, lt=1)
    min_events: float = setting(3.0, ge=1)  # events of the interest before a silence for it to count
    # The report's held-out share: fitted on the silences that start before the last share of the windows where a
    # silence can start and be decided, scored on the later ones (0 = no held-out report). The fit written is on
    # every decided silence.
    holdout: float = setting(0.3, ge=0, lt=1)
    min_silences: int = setting(20, ge=1)  # gone and back silences each needed to fit
    # Users whose silences the fit reads, drawn with seed where the log has more (memory: windows x users x K).
    max_users: int = setting(50_000, ge=1)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs. Defaults = the quickstart run."""

    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    recommend: RecommendConfig = RecommendConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    sequence: SequenceConfig = SequenceConfig()
    bpr: BPRConfig = BPRConfig()
    knn: KNNConfig = KNNConfig()
    quality: QualityConfig = QualityConfig()
    log_verdict: LogVerdictConfig = LogVerdictConfig()


_YAML11_EXPONENT = re.compile(r"[+-]?[0-9]+[eE][+-]?[0-9]+")


def _coerce(value: Any, tp: Any, where: str, allow_inf: bool = False) -> Any:
    """Check ``value`` against the annotation ``tp``; int -> float is allowed."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity"):
            value = math.inf
        elif isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (no dot in the mantissa) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}", allow_inf) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]", allow_inf) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no such fields yet
        raise ConfigError(f"{where}: union-typed config fields are not supported")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    """One section from a mapping: known keys, typed values, each field's ``Rule``, then the section's ``_check``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    renamed = getattr(cls, "_RENAMED", {})
    moved = sorted(set(raw) & set(renamed))
    if moved:
        raise ConfigError(f"config key '{prefix}{moved[0]}' was renamed: use '{prefix}{renamed[moved[0]]}' instead")
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = f"{prefix}{f.name}"
        value = raw[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and value is None:
            continue
        rule = rule_of(f)
        kwargs[f.name] = _coerce(value, hints[f.name], key, rule.allow_inf)
        if typing.get_origin(hints[f.name]) is dict and f.default_factory is not dataclasses.MISSING:
            # Mappings (event and state weights) merge onto the defaults, so one
            # override changes one entry and a config adds user-defined types.
            kwargs[f.name] = {**f.default_factory(), **kwargs[f.name]}
        rule.check(kwargs[f.name], key)
    built = cls(**kwargs)
    if hasattr(built, "_check"):
        built._check(where)
    return built

def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a config (JSON/YAML serializable)."""
    return dataclasses.asdict(config)


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a ``Config`` from a nested mapping, checking keys and types."""
    return _build(Config, raw, "")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)`` (value parsed as YAML)."""
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc.problem})") from None
    return key, value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file at ``path`` (if any) <- dotted ``overrides``."""
    tree: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file '{path}'{line}: not valid YAML") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}': expected a mapping of sections at top level")
        tree = loaded
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return from_dict(tree)


def override(config: Config, overrides: Sequence[str]) -> Config:
    """``config`` with dotted ``overrides`` (``"sequence.dropout=0.5"``) applied and checked like a file's."""
    tree = to_dict(config)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return from_dict(tree)


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for frozen configs."""
    return dataclasses.replace(config, **changes)
