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
import types
import typing
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import yaml

from fgjax.errors import ConfigError

DEFAULT_EVENT_WEIGHTS = MappingProxyType({"view": 0.5, "search": 0.5, "click": 1.0, "cart": 2.0, "purchase": 4.0})
DEFAULT_STATE_WEIGHTS = MappingProxyType(
    {"new": 1.0, "active": 1.0, "declining": 0.5, "forgotten": 0.05, "reactivated": 1.0}
)


@dataclasses.dataclass(frozen=True)
class ColumnsConfig:
    """Names of the event columns in the input files (SPEC.md data contract)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    event_type: str = "event_type"
    weight: str = "weight"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the behavior log is and how to read it."""

    path: str = ""  # file, directory of shards, or glob; "" = the quickstart's generated data
    format: str = "auto"  # auto | parquet | csv | ipc | recbole | movielens
    items_path: str = ""  # optional items table: item_id -> category
    item_category_column: str = "category"
    columns: ColumnsConfig = ColumnsConfig()
    event_weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    default_event_type: str = "click"
    unknown_event_weight: float = 1.0  # weight of user-defined event types not in event_weights
    batch_size: int = 65536  # rows per Arrow record batch while streaming
    min_timestamp: float = 0.0  # epoch seconds; rows outside [min, max] are rejected
    max_timestamp: float = 4102444800.0  # 2100-01-01T00:00:00Z
    drop_duplicates: bool = True  # identical (user, item, timestamp, event_type) rows


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The built-in synthetic behavior log (users with fading interests)."""

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
    """Forgetting detection per (user, interest); see ``fgjax.kernels.DetectorParams``."""

    kind: str = "adaptive"  # adaptive | level (I_k against its peak with analysis.declining_ratio / forgotten_ratio)
    buffer_windows: int = 64  # T: windows of per-interest activity kept for trend and periodicity
    user_block: int = 65536  # users judged at a time: bounds the detector's temporaries (0 = all at once)
    false_alarm: float = 0.002  # per-window chance that a test fires on an interest that is not forgotten
    gap_factor: float = 1.5  # a silence must exceed this times the longest gap / period the interest came back from
    min_strength: float = 0.25  # periodogram peak share that counts as periodic
    recent_windows: int = 3  # fewest windows of the drop test and of the trend
    drop_events: float = 20.0  # the drop test's span covers this many expected events (capped at T // 2 windows)
    forgotten_ratio: float = 0.25  # drop test: recent events <= this share of what the earlier rate predicts
    declining_ratio: float = 0.5  # recent events below this share with a negative trend: declining
    min_history: int = 4  # windows of history before the drop test may fire
    new_windows: int = 2  # windows an interest stays new / reactivated
    prior_events: float = 1.0  # Gamma prior on an interest's event rate: pseudo-events ...
    prior_windows: float = 1.0  # ... over pseudo-windows
    prior_active: float = 1.0  # Beta prior on the share of active windows: pseudo active ...
    prior_silent: float = 1.0  # ... and silent windows
    degree_z: float = 2.0  # per-user F alarm: F > mean + degree_z * std of the user's own F
    degree_fallback: float = 1.0  # F alarm threshold before a user has two F values


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Windowed interest state and forgetting (SPEC.md, 'The seed's model')."""

    window_seconds: float = 86400.0
    half_life_windows: float = 7.0  # decay half-life in windows; .inf = no decay
    reset_each_window: bool = False  # True with half_life .inf = the seed's per-window indicator
    alpha: float = 2.0  # softmax temperature of p(k|u,t) = softmax(-alpha * f_k)
    forgetting_mode: str = "decline"  # decline | change
    normalize: str = "current"  # current (seed formula) | max (bounded in [0, 2])
    eps: float = 1e-8
    declining_ratio: float = 0.3  # I_k below this share of its peak: declining
    forgotten_ratio: float = 0.1  # I_k below this share of its peak, without activity: forgotten
    top_interests: int = 3  # interests written per (user, window) in forgetting.parquet
    detector: DetectorConfig = DetectorConfig()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model ``fgjax train`` trains, and the EmbeddingMLP's sizes (sequence
    models take theirs and their training settings from ``sequence``)."""

    name: str = "embedding_mlp"  # embedding_mlp | time_sasrec | sasrec (time_sasrec with time_encoding none)
    embed_dim: int = 32
    hidden_dim: int = 64


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 1024  # global batch of positives; split over the data axis
    learning_rate: float = 1e-2
    negatives: int = 4  # sampled negatives per positive (uniform over items)
    seed: int = 0
    num_devices: int = 0  # devices on the data axis; 0 = all local devices
    checkpoint_every_steps: int = 0  # 0 = at the end of every epoch
    max_to_keep: int = 2
    max_steps: int = 0  # stop after this many steps in total (0 = run all epochs)
    eval_users: int = 0  # validation users per epoch (0 = all)
    patience: int = 0  # embedding_mlp: validations without a better val NDCG@10 before stopping (0 = all epochs)
    table_optimizer: str = "dense"  # embedding_mlp: dense (Adam) | row_adagrad | lazy_adam (row-sharded tables)
    distributed: bool = False  # jax.distributed over processes (FGJAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID)


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """The sequence models (``model.name`` time_sasrec / sasrec, ``fgjax.models.sequence``)
    and their training settings; mesh, checkpoint, ``max_steps`` and ``eval_users`` come from ``train``."""

    max_len: int = 50  # L: most recent items attended
    dim: int = 64
    heads: int = 2
    layers: int = 2
    ffn_mult: int = 4
    time_encoding: str = "interval"  # none | interval (log2-bucketed gap bias) | decay (learned forgetting rate)
    time_unit_seconds: float = 60.0
    time_buckets: int = 32
    dropout: float = 0.2
    loss: str = "full_softmax"  # full_softmax | sampled_softmax
    sampled_negatives: int = 256  # uniform negatives per batch (sampled_softmax)
    epochs: int = 200  # at most; early stopping usually ends sooner
    batch_size: int = 128  # training windows per step (global; split over the data axis)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # validations without a better val NDCG@10 before stopping (0 = run all epochs)
    eval_every: int = 1  # epochs between validations
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """The model-quality report (``bench/quality.py``): protocols and the forgetting sweep.

    The sweep re-ranks each model's validation lists (never test) over every
    (alpha, half-life, strength) and keeps the best NDCG@10; strength 0 is
    "forgetting off", so the sweep may choose it.
    """

    protocols: list[str] = dataclasses.field(default_factory=lambda: ["leave_last_out", "time_cutoff"])
    cutoff_quantiles: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.9])  # val, test cut
    sweep_alpha: list[float] = dataclasses.field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])
    sweep_half_life_windows: list[float] = dataclasses.field(default_factory=lambda: [1.0, 4.0, 16.0, math.inf])
    sweep_strength: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])
    sasrec_baseline: bool = True  # also train the same network without time encodings (plain SASRec)


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

    k: int = 10
    use_forgetting: bool = True
    exclude_seen: bool = True
    state_weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_STATE_WEIGHTS))
    interest_floor: float = 0.01  # smallest interest multiplier: never-seen interests still rank by the model
    explore_probability: float = 0.0  # chance that a forgotten interest is re-surfaced (weighted as active)
    explore_seed: int = 0
    user_chunk: int = 512  # users scored per device call (at most)
    score_memory_mb: int = 1024  # bound on the (users, items, hidden) scoring intermediate


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    protocol: str = "leave_last_out"
    ks: list[int] = dataclasses.field(default_factory=lambda: [10, 20])
    # Forgetting detection against synthetic ground truth (``fgjax evaluate --detection``).
    fade_forgotten_share: float = 0.25  # a fading interest counts as forgotten once its rate is below this share
    detection_margin_windows: int = 4  # changes this close to the end of the log are not judged
    detection_early_windows: int = 1  # an alarm up to this many windows before the forgotten window still counts
    false_alarm_sweep: list[float] = dataclasses.field(
        default_factory=lambda: [1e-6, 1e-5, 1e-4, 5e-4, 2e-3, 1e-2, 3e-2, 0.1, 0.3]
    )
    seed_threshold_sweep: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0])
    silence_sweep: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8, 10, 14])


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
    quality: QualityConfig = QualityConfig()


_CHOICES = MappingProxyType({
    ("data", "format"): ("auto", "parquet", "csv", "ipc", "recbole", "movielens"),
    ("analysis", "forgetting_mode"): ("decline", "change"),
    ("analysis", "normalize"): ("current", "max"),
    ("analysis.detector", "kind"): ("adaptive", "level"),
    ("model", "name"): ("embedding_mlp", "time_sasrec", "sasrec"),
    ("train", "table_optimizer"): ("dense", "row_adagrad", "lazy_adam"),
    ("evaluate", "protocol"): ("leave_last_out",),
    ("sequence", "time_encoding"): ("none", "interval", "decay"),
    ("sequence", "loss"): ("full_softmax", "sampled_softmax"),
})

# Fields where .inf means something (no decay); every other float must be finite.
_INFINITE_ALLOWED = frozenset({"analysis.half_life_windows", "quality.sweep_half_life_windows"})

# (section, field) -> (lower bound, bound allowed). Lists and mappings are
# checked element by element. (The synthetic section checks itself.)
_LOWER_BOUNDS = MappingProxyType({
    ("data", "batch_size"): (1, True),
    ("data", "event_weights"): (0, True),
    ("data", "unknown_event_weight"): (0, True),
    ("analysis", "window_seconds"): (0, False),
    ("analysis", "half_life_windows"): (0, False),
    ("analysis", "alpha"): (0, True),
    ("analysis", "eps"): (0, False),
    ("analysis", "declining_ratio"): (0, True),
    ("analysis", "forgotten_ratio"): (0, True),
    ("analysis", "top_interests"): (1, True),
    ("analysis.detector", "buffer_windows"): (3, True),
    ("analysis.detector", "user_block"): (0, True),
    ("analysis.detector", "false_alarm"): (0, False),
    ("analysis.detector", "gap_factor"): (0, True),
    ("analysis.detector", "min_strength"): (0, True),
    ("analysis.detector", "recent_windows"): (1, True),
    ("analysis.detector", "drop_events"): (0, True),
    ("analysis.detector", "forgotten_ratio"): (0, True),
    ("analysis.detector", "declining_ratio"): (0, True),
    ("analysis.detector", "min_history"): (0, True),
    ("analysis.detector", "new_windows"): (1, True),
    ("analysis.detector", "prior_events"): (0, False),
    ("analysis.detector", "prior_windows"): (0, False),
    ("analysis.detector", "prior_active"): (0, False),
    ("analysis.detector", "prior_silent"): (0, False),
    ("model", "embed_dim"): (1, True),
    ("model", "hidden_dim"): (1, True),
    ("train", "epochs"): (1, True),
    ("train", "batch_size"): (1, True),
    ("train", "learning_rate"): (0, False),
    ("train", "negatives"): (1, True),
    ("train", "num_devices"): (0, True),
    ("train", "checkpoint_every_steps"): (0, True),
    ("train", "max_to_keep"): (1, True),
    ("train", "max_steps"): (0, True),
    ("train", "eval_users"): (0, True),
    ("train", "patience"): (0, True),
    ("recommend", "k"): (1, True),
    ("recommend", "state_weights"): (0, True),
    ("recommend", "interest_floor"): (0, True),
    ("recommend", "explore_probability"): (0, True),
    ("recommend", "user_chunk"): (1, True),
    ("recommend", "score_memory_mb"): (1, True),
    ("evaluate", "ks"): (1, True),
    ("evaluate", "fade_forgotten_share"): (0, False),
    ("evaluate", "detection_margin_windows"): (0, True),
    ("evaluate", "detection_early_windows"): (0, True),
    ("evaluate", "false_alarm_sweep"): (0, False),
    ("evaluate", "seed_threshold_sweep"): (0, True),
    ("evaluate", "silence_sweep"): (1, True),
    ("sequence", "max_len"): (1, True),
    ("sequence", "dim"): (1, True),
    ("sequence", "heads"): (1, True),
    ("sequence", "layers"): (0, True),
    ("sequence", "ffn_mult"): (1, True),
    ("sequence", "time_unit_seconds"): (0, False),
    ("sequence", "time_buckets"): (1, True),
    ("sequence", "dropout"): (0, True),
    ("sequence", "sampled_negatives"): (1, True),
    ("sequence", "epochs"): (1, True),
    ("sequence", "batch_size"): (1, True),
    ("sequence", "learning_rate"): (0, False),
    ("sequence", "weight_decay"): (0, True),
    ("sequence", "patience"): (0, True),
    ("sequence", "eval_every"): (1, True),
    ("quality", "cutoff_quantiles"): (0, False),
    ("quality", "sweep_alpha"): (0, True),
    ("quality", "sweep_half_life_windows"): (0, False),
    ("quality", "sweep_strength"): (0, True),
})


def _check_bound(value: Any, section: str, name: str, key: str) -> None:
    bound = _LOWER_BOUNDS.get((section, name))
    if bound is None:
        return
    low, inclusive = bound
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else [(None, value)]
    for sub, v in items:
        if v < low or (v == low and not inclusive):
            where = key if sub is None else (f"{key}.{sub}" if isinstance(value, dict) else f"{key}[{sub}]")
            relation = ">=" if inclusive else ">"
            raise ConfigError(f"{where}: expected a value {relation} {low}, got {v!r}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int -> float is allowed."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity"):
            value = math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if math.isnan(value) or (math.isinf(value) and where.split("[")[0] not in _INFINITE_ALLOWED):
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
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no such fields yet
        raise ConfigError(f"{where}: union-typed config fields are not supported")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = f"{where}.{f.name}" if where else f.name
        value = raw[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and value is None:
            continue
        kwargs[f.name] = _coerce(value, hints[f.name], key)
        if typing.get_origin(hints[f.name]) is dict and f.default_factory is not dataclasses.MISSING:
            # Mappings (event and state weights) merge onto the defaults, so one
            # override changes one entry and a config adds user-defined types.
            kwargs[f.name] = {**f.default_factory(), **kwargs[f.name]}
        _check_bound(kwargs[f.name], where, f.name, key)
        choices = _CHOICES.get((where, f.name))
        if choices and kwargs[f.name] not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {kwargs[f.name]!r}")
    built = cls(**kwargs)
    _check_section(where, built)
    return built


def _check_section(section: str, built: Any) -> None:
    """Checks that span fields of one section."""
    if section == "analysis.detector" and not built.false_alarm < 1:
        raise ConfigError(f"analysis.detector.false_alarm: expected a value < 1, got {built.false_alarm!r}")
    if section == "recommend" and not built.explore_probability <= 1:
        raise ConfigError(f"recommend.explore_probability: expected a value <= 1, got {built.explore_probability!r}")
    if section == "sequence":
        if built.dim % built.heads:
            raise ConfigError(f"sequence.dim={built.dim}: expected a multiple of sequence.heads={built.heads}")
        if built.dropout >= 1:
            raise ConfigError(f"sequence.dropout: expected a value < 1, got {built.dropout!r}")
    if section == "quality":
        q = built.cutoff_quantiles
        if len(q) != 2 or not 0 < q[0] < q[1] < 1:
            raise ConfigError(f"quality.cutoff_quantiles: expected [validation, test] with 0 < validation < test < 1, got {q!r}")
        unknown = sorted(set(built.protocols) - {"leave_last_out", "time_cutoff"})
        if unknown or not built.protocols:
            raise ConfigError(f"quality.protocols: expected a non-empty list of leave_last_out, time_cutoff, got {built.protocols!r}")
        for name in ("sweep_alpha", "sweep_half_life_windows", "sweep_strength"):
            if not getattr(built, name):
                raise ConfigError(f"quality.{name}: expected at least one value")
    if section == "evaluate" and not built.ks:
        raise ConfigError("evaluate.ks: expected at least one cut-off, e.g. [10, 20]")
    if section == "data.columns":
        names = [getattr(built, f.name) for f in dataclasses.fields(built)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"data.columns: column '{repeated[0]}' is mapped to more than one field")
    if section == "recommend":
        from fgjax.kernels import STATE_NAMES  # lazily: jax is only needed once a recommend section is built

        unknown = sorted(set(built.state_weights) - set(STATE_NAMES))
        if unknown:
            raise ConfigError(
                f"recommend.state_weights.{unknown[0]}: unknown state; states are {', '.join(STATE_NAMES)}"
            )


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


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for frozen configs."""
    return dataclasses.replace(config, **changes)
