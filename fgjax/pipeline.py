"""The jobs behind the CLI, as library functions (tests call them directly).

``quickstart`` runs everything on the built-in synthetic log:
generate -> read and validate -> temporal split -> train -> forgetting analysis
-> save serving state -> recommend -> evaluate -> plots.

The jobs (``quickstart``, ``train_model``, ``analyze_only``,
``evaluate_checkpoint``, ``evaluate_detection``, ``fit_log_verdict``, ``generate_data``) write
through a staging folder beside ``out`` and move their files into it only when
they succeed (``fgjax.outputs``); ``out`` then holds ``fgjax-run.json``. The
building blocks (``read``, ``prepare``, ``fit``) write straight into the folder
they are given.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from fgjax import kernels
from fgjax.analysis import (
    ForgettingResult,
    analyze,
    degree_since_first_activity,
    write_forgetting,
    write_states,
)
from fgjax.analysis_job import analyze_log, learned_verdict_note
from fgjax.config import Config, to_dict
from fgjax.data.reader import EventLog, read_events
from fgjax.data.sequences import Sequences, build_sequences, category_arguments
from fgjax.data.split import ItemSets, TemporalSplit, leave_last_out
from fgjax.data.synthetic import SyntheticPaths, generate
from fgjax.errors import ConfigError, DataError
from fgjax.evaluation.metrics import evaluate, item_popularity
from fgjax.outputs import run_folder, shown_as_final
from fgjax.plots import plot_forgetting, plot_training_curves
from fgjax.ranking.explain import Explanations
from fgjax.ranking.strategy import ForgettingWeights, exploration_mask, forgetting_weights
from fgjax.serving.model import ServingModel, load
from fgjax.serving.state import ServingState, queries_history, queries_interest_ages
from fgjax.training import TrainResult, train

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Data read, validated and split.

    Attributes:
      seen: every item each user has had (what serving excludes).
    """

    log: EventLog
    split: TemporalSplit
    seen: ItemSets


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A trained model with the forgetting analysis behind its recommendations.

    ``forgetting`` covers every event: it is the state a service recommends
    from (None without item categories); ``serving`` is what was saved beside
    the checkpoint. Evaluation uses its own analysis (``evaluation_weights``).
    """

    prepared: Prepared
    trained: TrainResult
    forgetting: ForgettingResult | None
    serving: ServingState

    @property
    def weights(self) -> ForgettingWeights | None:
        """The forgetting weights recommendations use (None without categories)."""
        return self.serving.forgetting

    def model(self, config: Config) -> ServingModel:
        """The trained model with its serving state, as a service would load it."""
        log = self.prepared.log
        return ServingModel(self.trained.graphdef, self.trained.params, log.users, log.items, log.categories, config,
                            self.trained.steps, self.serving)


def with_generated_data(config: Config, out: Path) -> Config:
    """Point ``config.data`` at the synthetic log written under ``out/data``."""
    data = dataclasses.replace(
        config.data, path=str(out / "data" / "events"), items_path=str(out / "data" / "items.parquet"), format="parquet"
    )
    return dataclasses.replace(config, data=data)


def read(config: Config, out: Path, report: Reporter = _quiet) -> EventLog:
    """Read and validate the events of ``config.data``; rejected rows go to ``out/rejects.parquet``."""
    if not config.data.path:
        raise ConfigError("data.path is empty: set it with --set data.path=EVENTS (file, directory or glob)")
    out.mkdir(parents=True, exist_ok=True)
    log = read_events(config.data, rejects_path=out / "rejects.parquet")
    report(log.report.summary())
    return log


def prepare(config: Config, out: Path, report: Reporter = _quiet) -> Prepared:
    """``read`` the events, then ``split_log`` them."""
    return split_log(read(config, out, report), report, ties=config.data.tie_order)


def split_log(log: EventLog, report: Reporter = _quiet, *, ties: str = "input") -> Prepared:
    """Split an event log by time (leave-last-out, same-timestamp events in ``ties`` order) and collect
    every user's items."""
    split = leave_last_out(log.user, log.item, log.timestamp, log.num_users, ties=ties)
    evaluated = int((split.test_target >= 0).sum())
    if evaluated == 0:
        raise DataError(
            f"no user of the {log.num_users:,} has 3 or more distinct items: leave-last-out needs them "
            "(one for training, one for validation, one for test)"
        )
    # Positional cuts: a user with a validation item always has an earlier item to train on.
    training = int(split.train_events.sum())
    report(f"split: {evaluated:,} users with validation and test items, {training:,} training events")
    return Prepared(log, split, ItemSets.from_pairs(log.user, log.item, log.num_users))


def fit(config: Config, prepared: Prepared, out: Path, report: Reporter = _quiet, progress: bool = True) -> Fitted:
    """Train (resuming from ``out/checkpoint``), analyze forgetting over every event, save the serving state.

    Without item categories (no items table) there is no forgetting analysis:
    the serving state then holds the seen items and popularity only. For
    sequence models it also holds every user's history (their queries).
    """
    log, split = prepared.log, prepared.split
    checkpoint = out / "checkpoint"
    t0 = time.perf_counter()
    trained = train(config, log, split, checkpoint, metrics_path=out / "metrics.jsonl", progress=progress)
    if trained.resumed_from is not None:
        report(f"resumed training from step {trained.resumed_from}")
    if trained.history:
        last = trained.history[-1]
        scores = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith(("train_loss", "val_")))
        report(f"trained {trained.steps} steps ({len(trained.history)} epochs) in {time.perf_counter() - t0:.1f}s: {scores}")
    if trained.privacy is not None:
        report(privacy_summary(trained.privacy))
    forgetting = weights = explanations = origin = None
    if has_categories(log):
        forgetting = analyze(config, log, progress=progress)
        if forgetting.events_without_interest:
            report(f"analysis: {forgetting.events_without_interest:,} events skipped, their items have no category")
        weights = forgetting_weights(forgetting, config, log)
        explanations = Explanations.from_analysis(
            forgetting, log.item_category, log.categories, exploration_mask(forgetting, config)
        )
        origin = float(forgetting.window_start[0])
    else:
        report("no item categories (data.items_path): recommendations rank by the model alone")
    history = None
    if queries_history(trained.graphdef, trained.params):
        # Every event: serve what comes next.
        history = build_sequences(log.user, log.item, log.timestamp, log.num_users, ties=split.ties,
                                  **_history_categories(trained.graphdef, trained.params, log))
    serving = ServingState.create(
        item_popularity(split, log.num_items), prepared.seen, forgetting=weights, explanations=explanations,
        window_origin=origin, window_seconds=None if origin is None else config.analysis.window_seconds,
        history=history,
    )
    serving.save(checkpoint)
    return Fitted(prepared, trained, forgetting, serving)


def privacy_summary(spent: dict[str, Any]) -> str:
    """One line on a private run (``TrainResult.privacy``): the epsilon spent and the mechanism behind it."""
    return (f"privacy: epsilon {spent['epsilon']:.4g} spent at delta {spent['delta']:g} (target "
            f"{spent['target_epsilon']:g}, {spent['accountant']} accountant) over {spent['steps_run']:,} steps: "
            f"noise multiplier {spent['noise_multiplier']:.4g}, clip norm {spent['clip_norm']:g}, Poisson sampling "
            f"of {spent['users']:,} users at rate {spent['sampling_rate']:.4g}, {spent['examples_per_user']} "
            f"examples per sampled user")


def has_categories(log: EventLog) -> bool:
    """Whether the log's items have interest categories (an items table was given)."""
    return log.item_category is not None and log.categories is not None and len(log.categories) > 0


def evaluation_weights(config: Config, prepared: Prepared, progress: bool = True) -> ForgettingWeights | None:
    """Forgetting weights as each user stood just before its test item (None without categories).

    The analysis sees only events before each user's test item, and each user
    is read at the window holding its test time, not at the end of the log
    (where removed later events would look like silence).
    """
    if not has_categories(prepared.log):
        return None
    split = prepared.split
    forgetting = analyze(config, prepared.log, events=split.history_events, snapshot_before=split.test_time,
                         progress=progress)
    return forgetting_weights(forgetting, config, prepared.log)


def evaluation_history(graphdef, params, prepared: Prepared) -> Sequences | None:
    """Each user's items before its test item: the queries of sequence models (None for the others)."""
    if not queries_history(graphdef, params):
        return None
    log = prepared.log
    return build_sequences(log.user, log.item, log.timestamp, log.num_users, events=prepared.split.history_events,
                           ties=prepared.split.ties, **_history_categories(graphdef, params, log))


def _history_categories(graphdef, params, log: EventLog) -> dict[str, Any]:
    """``build_sequences``' category arguments when the model reads interest ages (forgetting_sasrec), else ``{}``."""
    if not queries_interest_ages(graphdef, params):
        return {}
    return category_arguments(log.item_category, log.categories)


def report_evaluation(report: Reporter, evaluation: dict[str, Any]) -> None:
    k = evaluation["ks"][0]
    for name, values in evaluation["results"].items():
        report(f"test {name}: " + ", ".join(f"{m}@{k} {values[f'{m}@{k}']:.4f}" for m in ("ndcg", "hit_rate", "recall")))
    for pair, c in evaluation.get("comparisons", {}).items():
        report(f"test {pair}: {c['metric']} {c['mean_difference']:+.4f} ({c['confidence']:.0%} bootstrap CI "
               f"{c['ci_low']:+.4f} .. {c['ci_high']:+.4f}, Wilcoxon p {c['wilcoxon_p']:.3g}; users better "
               f"{c['better']:,}, worse {c['worse']:,}, tied {c['tied']:,})")


def state_counts(forgetting: ForgettingResult) -> dict[str, int]:
    """How many (user, interest) pairs end in each state."""
    counts = np.bincount(forgetting.state.ravel(), minlength=len(kernels.STATE_NAMES))
    return {name: int(c) for name, c in zip(kernels.STATE_NAMES, counts) if name != "none"}


def write_recommendations(config: Config, fitted: Fitted, path: Path) -> int:
    """Forgetting-aware top-K for every user from the full-log state -> ``path``; returns rows written.

    The same ranking as a service that loads the checkpoint (``ServingModel.recommend``).
    """
    rcfg = config.recommend
    # The vocabulary's own IDs: already pseudonyms under data.pseudonymize (no secret needed to serve them).
    table = fitted.model(config).recommend(fitted.prepared.log.users.values, k=rcfg.k,
                                           use_forgetting=rcfg.use_forgetting, exclude_seen=rcfg.exclude_seen,
                                           pseudonyms=True)
    pq.write_table(table, str(path))
    return table.num_rows


_shown = shown_as_final


def _relocated(value: Any, stage: Path, out: Path) -> Any:
    """A JSON-like value with every string path under the staging folder moved to ``out``."""
    if isinstance(value, dict):
        return {k: _relocated(v, stage, out) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relocated(v, stage, out) for v in value]
    if isinstance(value, str):
        return value.replace(str(stage), str(out))
    return value


def quickstart(config: Config, out: str | Path, report: Reporter = print, progress: bool = True, *,
               overwrite: bool = False) -> dict[str, Any]:
    """Generate the synthetic log and run the whole pipeline into ``out``; returns metrics.json's content.

    Rerunning it into its own folder resumes from the checkpoint there; the
    data is generated anew into the staging folder, never read from ``out``.

    Raises:
      OutputError: ``out`` is not empty and not a quickstart folder (unless ``overwrite``).
    """
    out = Path(out).absolute()
    with run_folder(out, "quickstart", to_dict(config), overwrite=overwrite, resume_checkpoint=True,
                    report=report) as stage:
        metrics = _quickstart(config, out, stage, _shown(report, stage, out), progress)
    report(f"wrote {out}/: recommendations.parquet forgetting.parquet states.parquet metrics.json plots/ checkpoint/")
    return metrics


def _quickstart(config: Config, out: Path, stage: Path, report: Reporter, progress: bool) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    paths = generate(config.synthetic, stage / "data")
    timings["generate_s"] = time.perf_counter() - t
    report(f"generated {config.synthetic.num_users:,} users x {config.synthetic.num_days} days into {paths.events_dir}")
    # Read this run's own data from the staging folder; record (and checkpoint) the paths it ends up at.
    t = time.perf_counter()
    prepared = prepare(with_generated_data(config, stage), stage, report)
    config = with_generated_data(config, out)
    timings["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fitted = fit(config, prepared, stage, report, progress)
    timings["train_and_analyze_s"] = time.perf_counter() - t
    rows = write_forgetting(fitted.forgetting, prepared.log, stage / "forgetting.parquet")
    changes = write_states(fitted.forgetting, prepared.log, stage / "states.parquet")
    counts = state_counts(fitted.forgetting)
    report(f"forgetting: {fitted.forgetting.num_windows} windows, {rows:,} (user, window) rows, {changes:,} state "
           f"changes; final states {counts}")
    if verdict := learned_verdict_note(config, fitted.forgetting.num_windows):  # who called interests forgotten
        report(verdict)
    t = time.perf_counter()
    rec_rows = write_recommendations(config, fitted, stage / "recommendations.parquet")
    timings["recommend_s"] = time.perf_counter() - t
    report(f"recommendations: {rec_rows:,} rows for {prepared.log.num_users:,} users")
    t = time.perf_counter()
    graphdef, params = fitted.trained.graphdef, fitted.trained.params
    evaluation = evaluate(config, graphdef, params, prepared.split, prepared.log.num_items,
                          evaluation_weights(config, prepared, progress),
                          history=evaluation_history(graphdef, params, prepared))
    timings["evaluate_s"] = time.perf_counter() - t
    report_evaluation(report, evaluation)
    plots = stage / "plots"
    plots.mkdir(exist_ok=True)
    if fitted.trained.history:
        plot_training_curves(fitted.trained.history, plots / "training_curves.png")
    plot_forgetting(degree_since_first_activity(fitted.forgetting), fitted.forgetting.window_start,
                    plots / "forgetting.png")
    metrics = {
        "data": _relocated(dataclasses.asdict(prepared.log.report), stage, out),
        "train": {"steps": fitted.trained.steps, "history": fitted.trained.history,
                  **({"privacy": fitted.trained.privacy} if fitted.trained.privacy is not None else {})},
        "forgetting": {"windows": fitted.forgetting.num_windows, "rows": rows, "final_states": counts},
        "evaluation": evaluation,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "config": to_dict(config),
    }
    (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    return metrics


def train_model(config: Config, out: str | Path, report: Reporter = print, progress: bool = True, *,
                overwrite: bool = False) -> Fitted:
    """``fgjax train``: read ``config.data``, split, train (resuming from ``out/checkpoint``), analyze,
    save the serving state and training curves into ``out``.

    Raises:
      OutputError: ``out`` is not empty and not a train folder (unless ``overwrite``).
      CheckpointError: ``out/checkpoint`` holds a run with other data or settings.
    """
    out = Path(out).absolute()
    with run_folder(out, "train", to_dict(config), overwrite=overwrite, resume_checkpoint=True,
                    report=report) as stage:
        shown = _shown(report, stage, out)
        prepared = prepare(config, stage, shown)
        fitted = fit(config, prepared, stage, shown, progress)
        if fitted.trained.history:
            (stage / "plots").mkdir(exist_ok=True)
            plot_training_curves(fitted.trained.history, stage / "plots" / "training_curves.png")
    return fitted


def generate_data(config: Config, out: str | Path, *, overwrite: bool = False) -> SyntheticPaths:
    """``fgjax generate``: the synthetic log (``config.synthetic``) into ``out``; returns where its files are."""
    out = Path(out).absolute()
    with run_folder(out, "generate", to_dict(config.synthetic), overwrite=overwrite) as stage:
        generate(config.synthetic, stage)
    return SyntheticPaths(out / "events", out / "items.parquet", out / "ground_truth.parquet")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def analyze_only(
    config: Config, out: str | Path, report: Reporter = _quiet, progress: bool = True, *, overwrite: bool = False
) -> tuple[int, int]:
    """Forgetting analysis of every event of ``config.data``, streamed (``fgjax.analysis_job.analyze_log``).

    Writes ``out/forgetting.parquet`` (per user and window), ``out/states.parquet``
    (per state change, with evidence), ``out/rejects.parquet`` and a plot;
    returns both row counts.
    """
    return analyze_log(config, out, report, progress, overwrite=overwrite)


def evaluate_checkpoint(config: Config, out: str | Path, checkpoint: str | Path, report: Reporter = _quiet,
                        progress: bool = True, *, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate a saved model on ``config.data`` under the temporal protocol -> ``out/metrics.json``.

    ``out`` may be the folder of the train or quickstart run that wrote the checkpoint.
    """
    out = Path(out).absolute()
    model = load(checkpoint)
    with run_folder(out, "evaluate", to_dict(config), overwrite=overwrite) as stage:
        prepared = prepare(config, stage, _shown(report, stage, out))
        log = prepared.log
        # Dense indices mean something only under the checkpoint's vocabularies.
        if not (model.users.values.equals(log.users.values) and model.items.values.equals(log.items.values)):
            raise DataError(
                f"checkpoint '{checkpoint}' was trained on other users or items ({len(model.users):,} users, "
                f"{len(model.items):,} items) than data.path ({log.num_users:,}, {log.num_items:,}): "
                "evaluate on the data it was trained on"
            )
        # Results are named after the model the checkpoint holds, whatever config.model says.
        config = dataclasses.replace(config, model=model.config.model)
        evaluation = evaluate(config, model.graphdef, model.params, prepared.split, log.num_items,
                              evaluation_weights(config, prepared, progress),
                              history=evaluation_history(model.graphdef, model.params, prepared))
        report_evaluation(report, evaluation)
        (stage / "metrics.json").write_text(json.dumps({"evaluation": evaluation, "config": to_dict(config)},
                                                       indent=2) + "\n")
    return evaluation


def evaluate_detection(config: Config, out: str | Path, report: Reporter = _quiet, progress: bool = True, *,
                       overwrite: bool = False) -> dict[str, Any]:
    """The story x window matrix, then the whole path on ``synthetic.story`` -> ``out/matrix.json``, ``detection.json``.

    The matrix (``fgjax.evaluation.matrix``; skipped when ``evaluate.detection_stories`` is empty)
    scores the detector, its anchors and the silence rule on every story and window length, with
    the detector's knob chosen leave-one-story-out (``out/matrix.json``, ``out/matrix.md``). Then
    the synthetic log of ``synthetic.story`` is generated, read and analyzed in ``analysis``'s
    windows as a user would, and scored from the ``states.parquet`` it writes (``detection.json``,
    ``detection.md`` and the plots ``out/plots/{detection_pr,forgetting,interest_timeline}.png``).
    """
    from fgjax.evaluation.detection import evaluate_detection_on, format_report, write_report
    from fgjax.evaluation.matrix import (evaluate_matrix, format_short, format_summary, format_targets,
                                        learned_target_checks, target_checks, write_matrix)
    from fgjax.plots import plot_detection_pr, plot_interest_timeline

    out = Path(out).absolute()
    verdict = learned_verdict_note(config)  # a bad verdict_file fails now, not after the matrix
    with run_folder(out, "detection", to_dict(config), overwrite=overwrite) as stage:
        shown = _shown(report, stage, out)
        matrix = None
        if config.evaluate.detection_stories:
            e = config.evaluate
            shown(f"detection matrix: stories {', '.join(e.detection_stories)} x windows of "
                  f"{', '.join(f'{d:g}' for d in e.detection_window_days)} days, {e.matrix_users:,} users x "
                  f"{e.matrix_days} days each")
            matrix = evaluate_matrix(config, shown)
            shown(format_summary(matrix))
            shown(format_targets(target_checks(matrix)))
            learned = learned_target_checks(matrix)
            if learned:
                shown(format_targets(learned))
            if matrix.short:
                shown(format_short(matrix))
            write_matrix(matrix, config, stage)
            written = ["matrix.json", "matrix.md"] + (["verdict.json"] if matrix.verdicts else [])
            shown(f"wrote {', '.join(str(out / name) for name in written)} ({matrix.setup['seconds']:.0f}s)")
        paths = generate(config.synthetic, stage / "data")
        log = read(with_generated_data(config, stage), stage, shown)
        config = with_generated_data(config, out)
        started = time.perf_counter()
        detection, result, codes, truth = evaluate_detection_on(config, log, paths.truth_path, stage,
                                                                progress=progress)
        if verdict:  # the fit for this log's span
            shown(learned_verdict_note(config, detection.setup["windows"]))
        shown(f"detection: {detection.setup['windows']} windows of {config.analysis.window_seconds / 86400:g} days, "
              f"{detection.setup['pairs_judged']:,} (user, interest) pairs judged, {time.perf_counter() - started:.1f}s")
        shown(format_report(detection))
        write_report(detection, config, stage)
        plots = stage / "plots"
        plots.mkdir(exist_ok=True)
        plot_detection_pr(detection.curves, detection.detector["overall"], plots / "detection_pr.png")
        plot_forgetting(degree_since_first_activity(result), result.window_start, plots / "forgetting.png")
        plot_interest_timeline(log, result, codes, truth, plots / "interest_timeline.png")
    report(f"wrote {out / 'detection.json'}, {out / 'states.parquet'} and plots in {out / 'plots'}")
    return detection.to_json() | ({"matrix": matrix.to_json()} if matrix else {})


def fit_log_verdict(config: Config, out: str | Path, report: Reporter = _quiet, *,
                    overwrite: bool = False) -> dict[str, Any]:
    """Fit the learned verdict on ``config.data``'s own silences (``fgjax.evaluation.log_verdict``) ->
    ``out/verdict.json`` (what ``analysis.detector.verdict_file`` reads), ``out/verdict_report.json`` and
    ``verdict_report.md`` (the fit held out beside the silence rule), ``out/rejects.parquet``; returns the report.
    """
    from fgjax.analysis import save_verdicts
    from fgjax.evaluation.log_verdict import fit_log_verdict as fit_on_log
    from fgjax.evaluation.log_verdict import format_report, log_counts

    out = Path(out).absolute()
    with run_folder(out, "fit-verdict", to_dict(config), overwrite=overwrite) as stage:
        shown = _shown(report, stage, out)
        log = read(config, stage, shown)
        started = time.perf_counter()
        result = fit_on_log(config, log_counts(config, log))
        save_verdicts([result.fit], stage / "verdict.json")
        text = format_report(result)
        (stage / "verdict_report.md").write_text(text + "\n")
        (stage / "verdict_report.json").write_text(json.dumps({"report": result.report, "config": to_dict(config)},
                                                              indent=2, default=_json_default) + "\n")
        shown(text)
        shown(f"fitted in {time.perf_counter() - started:.1f}s; wrote {stage / 'verdict.json'} "
              f"(--set analysis.detector.verdict_file={out / 'verdict.json'} for fgjax analyze) and "
              f"{stage / 'verdict_report.md'}")
    return result.report
