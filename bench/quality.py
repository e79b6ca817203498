"""Recommendation quality on real data: every model x forgetting (off, re-ranked, in the model) x metric.

    python -m bench.quality --dataset configs/ml100k.yaml=path/to/ml-100k \
        --dataset configs/ml_latest_small.yaml=path/to/ml-latest-small-2016 \
        --out bench/results/quality --results-md bench/RESULTS.md

(``--config CONFIG --set data.path=...`` runs one data set.) For each data set
(``--dataset CONFIG=FOLDER``: the config's data files are looked up in FOLDER by
their names) and each protocol of ``quality.protocols`` (leave-last-out per
user; a global time cut-off), with full ranking over the catalog and the items
known before each stage masked:

- rows: popularity; with ``quality.baselines`` BPR matrix factorization and
  cosine ItemKNN from the whole history and from the last
  ``quality.knn_last_items`` items; the article's EmbeddingMLP; the
  time-aware sequence model and (``quality.sasrec_baseline``) plain SASRec;
  with ``quality.in_model_forgetting`` ``forgetting_sasrec`` (the time-aware
  model with the user's day-scale interest ages as input and a learned decay per
  interest) and its ablation without decay (``sequence.interest_decay: none``:
  only which interests the user ever had; trained once with the trial
  ``forgetting_sasrec`` chose, and under the first protocol only unless
  ``quality.ablations_every_protocol``). All train in the one loop;
- the same tuning budget for every row: at most ``quality.tuning_trials``
  trials from ``quality.tuning``, the trial with the best validation NDCG@10 kept;
  a later trial whose best so far is behind the leading trial's at the same
  epoch is stopped there, after a grace of ``quality.prune_after_epochs``
  (``Pruner``). The trials run under the data set's first protocol; the
  others train the trial it chose once (``quality.retune_per_protocol``);
- each row without and with forgetting-aware re-ranking, whose alpha,
  half-life and strength are swept on the validation stage only
  (``fgjax.evaluation.quality``);
- Precision, Recall, F1, NDCG, HitRate, MRR, MAP at ``evaluate.ks`` on the
  test stage, for every test user and NDCG for the users whose known history spans
  ``quality.long_history_days`` or more;
- the comparisons named before any run (``planned_comparisons``): re-ranking
  vs none per row; session recency (ItemKNN from the last items vs the whole
  history); time encodings (time_sasrec vs sasrec); in-model forgetting vs
  none, vs re-ranking, and learned day-scale decay vs interest presence. Each
  is paired per user: a bootstrap 95 % CI of the mean NDCG difference, the
  Wilcoxon signed-rank p (zero differences dropped), win/loss/tie counts, and
  the smallest difference the users could show (80 % power);
- an ablation of the chosen re-ranking (no interest states, alpha 0, no
  decay) and the interest states of the test targets (why it helps or not);
- with ``--peer DIR`` (see ``bench/recbole_peer.py``), RecBole's SASRec's
  top-20 lists scored by the same metric code (leave-last-out only).

Writes ``OUT/quality.json`` (device, date, versions, configs, everything),
``OUT/quality.md`` and ``OUT/<data set>/training_curves_<protocol>.png``; with
``--results-md`` also replaces the quality section of that file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import _report

SECTION_START = "<!-- quality:start -->"
SECTION_END = "<!-- quality:end -->"
METRICS = ("precision", "recall", "f1", "ndcg", "hit_rate", "mrr", "map")


def _protocol(name: str, log, config):
    from fgjax.data.protocol import leave_last_out_protocol, time_cutoff_protocol

    if name == "leave_last_out":
        return leave_last_out_protocol(log.user, log.item, log.timestamp, log.num_users, ties=config.data.tie_order)
    return time_cutoff_protocol(log.user, log.item, log.timestamp, log.num_users, tuple(config.quality.cutoff_quantiles),
                                ties=config.data.tie_order)


def protocol_choices(name: str, config) -> str:
    """The protocol's choices in words, for the table header."""
    ties = {"input": "events at the same timestamp in input order (a stable sort by time)",
            "item": "events at the same timestamp by item index"}[config.data.tie_order]
    if name == "leave_last_out":
        return (f"leave-last-out per user: {ties}; the last new item is the test target, the one before it the "
                "validation target; every item had before the target in that order (same timestamp included) is "
                "known and masked")
    q = config.quality.cutoff_quantiles
    return (f"global time cut-offs at the {q[0]:g} / {q[1]:g} quantiles of event time: new items after a cut are the "
            f"targets, every item had before it is known and masked; sequences with {ties}")


#: The rows of the report and what each trains: (model.name, dotted overrides of the run's config).
#: ``itemknn_last`` takes its n from ``quality.knn_last_items``; the forgetting_sasrec rows need item categories.
#: Ablation row -> the row it ablates: it trains once with the trial that row chose (one change at a time).
ABLATION_OF = {"forgetting_sasrec_nodecay": "forgetting_sasrec"}


def row_models(config, *, first_protocol: bool = True) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Row name -> (model name, config overrides). The ablation rows (``ABLATION_OF``) are trained under the
    first protocol only, unless ``quality.ablations_every_protocol``."""
    q = config.quality
    rows = {}
    if q.baselines:
        rows |= {"bpr": ("bpr", ()), "itemknn": ("itemknn", ()),
                 f"itemknn_last{q.knn_last_items}": ("itemknn", (f"knn.history={q.knn_last_items}",))}
    rows["embedding_mlp"] = ("embedding_mlp", ())
    rows["time_sasrec"] = ("time_sasrec", ())
    if q.sasrec_baseline:
        rows["sasrec"] = ("sasrec", ())
    if q.in_model_forgetting:
        rows["forgetting_sasrec"] = ("forgetting_sasrec", ())
        if first_protocol or q.ablations_every_protocol:
            rows["forgetting_sasrec_nodecay"] = ("forgetting_sasrec", ("sequence.interest_decay=none",))
    return rows


def trial_overrides(config, row: str) -> list[tuple[str, ...]]:
    """The row's tuning trials (``quality.tuning``), each a tuple of dotted overrides; one empty trial if none."""
    trials = config.quality.tuning.get(row) or [""]
    return [tuple(t.strip() for t in trial.split(";") if t.strip()) for trial in trials]


class Pruner:
    """An epoch hook that stops a later trial once it is behind the leading trial at the same epoch.

    The median stopping rule (Golovin et al. 2017, Google Vizier) with one finished trial: at a validation at epoch
    ``e``, the trial stops when its best validation NDCG@10 so far is below the leader's best up to epoch ``e`` (past
    the leader's last validation: the leader's best). A slow starter gets a grace: no trial is judged before
    ``after_epochs`` nor before a third of the epochs the leader needed for its best (a model that peaks after 40
    cheap epochs is not judged on its first 4). ``after_epochs`` 0 = never prune. ``pruned_at``: the epoch the trial stopped at, or None.
    """

    KEY = "val_ndcg@10"

    def __init__(self, leader: list[dict[str, Any]], after_epochs: int):
        self.leader = sorted((h["epoch"], h[self.KEY]) for h in leader if self.KEY in h)
        self.after_epochs = after_epochs
        best = max((v for _, v in self.leader), default=-math.inf)
        best_epoch = min((e for e, v in self.leader if v == best), default=0)  # the first epoch at its best
        self.grace = max(after_epochs, -(-best_epoch // 3))
        self.best = -math.inf
        self.pruned_at: int | None = None

    def leader_best(self, epoch: int) -> float:
        """The leader's best validation NDCG@10 up to ``epoch`` (-inf before its first validation)."""
        return max((v for e, v in self.leader if e <= epoch), default=-math.inf)

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.KEY not in record:
            return False
        self.best = max(self.best, record[self.KEY])
        epoch = record["epoch"]
        if not self.after_epochs or not self.leader or epoch < self.grace:
            return False
        if self.best >= self.leader_best(epoch):
            return False
        self.pruned_at = epoch
        return True


def fit_row(config, log, protocol, row: str, model_name: str, changes: tuple[str, ...], inputs: dict,
            report, carried: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Train (or fit) one row's model on the protocol's training stage once per tuning trial; keep the trial with the
    best validation NDCG@10 -> ``{"scores": {"val", "test"}, "training", "history", "trial"}``.

    ``carried``: the trial another protocol (or, for an ablation, the ablated row) chose, trained once instead of
    the tuning trials.
    """
    from fgjax.config import override
    from fgjax.evaluation import quality as Q
    from fgjax.models import HISTORY_MODELS, SEQUENCE_MODELS
    from fgjax.training.loop import train_examples, validation_from

    val, test = protocol.validation, protocol.test
    sequences = inputs["categorized" if model_name == "forgetting_sasrec" else "plain"]
    best = None
    trials = trial_overrides(config, row) if carried is None else [carried]
    spent = 0.0
    pruned = 0
    for trial in trials:
        cfg = override(config, (f"model.name={model_name}", *changes, *trial))
        history_model = model_name in HISTORY_MODELS
        if model_name in SEQUENCE_MODELS:
            from fgjax.training.loop import window_examples

            examples = window_examples(sequences["train"], cfg.sequence.max_len, log.num_items)
        else:
            examples = inputs["pairs"]
        validation = validation_from(val.users, val.targets, val.seen, sequences["train"] if history_model else None,
                                     num_items=log.num_items)
        pruner = None if best is None else Pruner(best[2].history, config.quality.prune_after_epochs)
        result = train_examples(cfg, examples, validation, num_users=log.num_users, num_items=log.num_items,
                                progress=False, on_epoch_end=[pruner] if pruner else [])
        spent += result.seconds
        val_ndcg = max((h.get("val_ndcg@10", -1.0) for h in result.history), default=-1.0)
        report(f"[{protocol.name}] {row} {'; '.join(trial) or '(as configured)'}: {result.epochs} epochs "
               f"(best {result.best_epoch}) in {result.seconds:.1f} s, val ndcg@10 {val_ndcg:.4f}"
               + (" (pruned: behind the leading trial)" if pruner and pruner.pruned_at else ""))
        pruned += bool(pruner and pruner.pruned_at)
        if best is None or val_ndcg > best[0]:
            best = (val_ndcg, trial, result)
    _, trial, result = best
    if model_name in HISTORY_MODELS:
        score = {stage: Q.sequence_scores(result.graphdef, result.params, sequences[stage], st.users, log.num_items)
                 for stage, st in (("val", val), ("test", test))}
    else:
        score = {stage: Q.mlp_scores(result.graphdef, result.params, st.users) for stage, st in (("val", val),
                                                                                                ("test", test))}
    training = {"train_seconds": round(result.seconds, 1), "epochs": result.epochs, "best_epoch": result.best_epoch,
                "trials": len(trials), "chosen": "; ".join(trial), "tuning_seconds": round(spent, 1),
                "pruned_trials": pruned, "carried": carried is not None}
    if model_name in SEQUENCE_MODELS:
        from fgjax.models.sequence import count_params

        training["parameters"] = count_params(result.params)
        training["stopped_early"] = result.stopped_early
    return {"scores": score, "training": training, "history": result.history, "trial": trial}


def long_history_users(log, stage, days: float) -> np.ndarray:
    """``(n,)`` bool: the stage's users whose known events span at least ``days`` days."""
    user, ts = log.user[stage.known_events], log.timestamp[stage.known_events]
    first = np.full(log.num_users, np.inf)
    last = np.full(log.num_users, -np.inf)
    np.minimum.at(first, user, ts)
    np.maximum.at(last, user, ts)
    return (last - first)[stage.users] >= days * 86400.0


#: The paired comparisons the report makes, named before any run: (label, treatment, baseline).
#: ``X+rerank`` is row X with the forgetting re-ranking chosen on validation.
def planned_comparisons(rows: list[str]) -> list[tuple[str, str, str]]:
    plan = [(f"re-ranking: {r}", f"{r}+rerank", r) for r in rows if r != "forgetting_sasrec_nodecay"]
    last = [r for r in rows if r.startswith("itemknn_last")]
    if last and "itemknn" in rows:
        plan.append(("session recency: last items vs whole history", last[0], "itemknn"))
    if "sasrec" in rows:
        plan.append(("time encodings: time_sasrec vs sasrec", "time_sasrec", "sasrec"))
    if "forgetting_sasrec" in rows:
        plan += [("in-model forgetting vs none", "forgetting_sasrec", "time_sasrec"),
                 ("in-model forgetting vs re-ranking", "forgetting_sasrec", "time_sasrec+rerank"),
                 ("learned day-scale decay vs interest presence", "forgetting_sasrec", "forgetting_sasrec_nodecay")]
    return plan


def compare(per_user: dict[str, np.ndarray], plan, mask: np.ndarray, config) -> list[dict[str, Any]]:
    """Each planned comparison on the users in ``mask``: paired bootstrap CI, Wilcoxon p, and the smallest
    difference this many users could show (80 % power, two-sided 5 %: 2.8 standard errors of the paired mean)."""
    from fgjax.evaluation.metrics import paired_comparison

    out = []
    for label, a, b in plan:
        if a not in per_user or b not in per_user or not mask.any():
            continue
        diff = per_user[a][mask] - per_user[b][mask]
        c = paired_comparison(per_user[a][mask], per_user[b][mask], seed=config.evaluate.bootstrap_seed,
                              resamples=config.evaluate.bootstrap_resamples)
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        out.append({"comparison": label, "treatment": a, "baseline": b, **c,
                    "detectable_difference": 2.8 * sd / math.sqrt(len(diff))})
    return out


def protocol_inputs(config, log, protocol, model_names: list[str]) -> dict[str, Any]:
    """What ``fit_row`` trains on under ``protocol``: the stages' sequences (``"plain"``; ``"categorized"`` with the
    items' interests, when a ``forgetting_sasrec`` is among ``model_names``) and the training (user, item) pairs."""
    from fgjax.data.sequences import build_sequences

    def sequences(**categories):
        return {stage: build_sequences(log.user, log.item, log.timestamp, log.num_users, events, ties=protocol.ties,
                                       **categories)
                for stage, events in (("train", protocol.train_events), ("val", protocol.validation.known_events),
                                      ("test", protocol.test.known_events))}

    sets = protocol.train_items
    inputs = {"plain": sequences(),
              "pairs": {"user": np.repeat(np.arange(sets.num_users, dtype=np.int32), sets.counts()),
                        "item": sets.items.astype(np.int32)}}
    if "forgetting_sasrec" in model_names:
        inputs["categorized"] = sequences(item_category=log.item_category, num_categories=len(log.categories))
    return inputs


def run_protocol(config, log, name: str, out: Path, peer: Path | None, report,
                 trials: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """One protocol's rows, comparisons and ablations. ``trials``: row -> the trial to train once instead of tuning
    (another protocol's choice); an empty dict is filled with this protocol's choices; None: tune, keep nothing."""
    from fgjax.evaluation import quality as Q
    from fgjax.evaluation.metrics import metrics_at, per_user_ndcg

    ks = sorted(config.evaluate.ks)
    t0 = time.perf_counter()
    protocol = _protocol(name, log, config)
    val, test = protocol.validation, protocol.test
    report(f"[{name}] {len(val.users)} validation users, {len(test.users)} test users, "
           f"{int(protocol.train_events.sum()):,} training events")
    exclude = {"val": Q.exclusion_matrix(val, log.num_items), "test": Q.exclusion_matrix(test, log.num_items)}
    scores: dict[str, dict[str, np.ndarray]] = {}
    training: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}

    scores["popularity"] = {
        "val": Q.popularity_scores(protocol.train_items, val.users, log.num_items),
        "test": Q.popularity_scores(protocol.train_items, test.users, log.num_items),
    }
    training["popularity"] = {"train_seconds": 0.0, "epochs": 0, "trials": 1, "chosen": ""}

    carry = dict(trials) if trials else None
    rows = row_models(config, first_protocol=name == config.quality.protocols[0])
    inputs = protocol_inputs(config, log, protocol, [m for m, _ in rows.values()])
    chosen_trials: dict[str, tuple[str, ...]] = {}
    for row, (model_name, changes) in rows.items():
        if carry is not None:
            carried = carry.get(row, ())
        else:
            carried = chosen_trials.get(ABLATION_OF.get(row, ""))  # an ablation: its row's trial; else None: tune
        fitted = fit_row(config, log, protocol, row, model_name, changes, inputs, report, carried=carried)
        chosen_trials[row] = fitted["trial"]
        if trials is not None and carry is None:
            trials[row] = fitted["trial"]
        scores[row], training[row], histories[row] = fitted["scores"], fitted["training"], fitted["history"]
        training[row]["carried_from"] = ABLATION_OF[row] if row in ABLATION_OF and carry is None else None

    # Forgetting analyses: one per half-life and stage (alpha only changes p, recomputed from f). Each runs a
    # window at a time, mostly one core's dispatch work: two run side by side on a 2-core machine.
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="quality-analysis")
    analyses = {stage: _Analyses(functools.partial(Q.stage_forgetting, config, log, st), pool)
                for stage, st in (("val", val), ("test", test))}
    try:  # a failure cancels the queued analyses instead of running them before the error surfaces
        for stage_analyses in analyses.values():
            stage_analyses.start(config.quality.sweep_half_life_windows)
        columns = Q.item_columns(log.item_category, len(log.categories))
        long_users = long_history_users(log, test, config.quality.long_history_days)
        cut = ks[0]

        def judge(ranked: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
            per_user = per_user_ndcg(ranked, test.targets, cut)
            metrics = metrics_at(ranked, test.targets, ks)
            metrics[f"ndcg@{cut}_long"] = float(per_user[long_users].mean()) if long_users.any() else math.nan
            return metrics, per_user

        rows_out, sweeps, ablations, diagnostics, per_user = [], {}, {}, {}, {}
        k = max(ks)
        for model, s in scores.items():
            sweep = Q.sweep_forgetting(config, log, s["val"], exclude["val"], val, analyses["val"])
            sweeps[model] = {"best": sweep.best, "grid": sweep.rows}
            off_test, per_user[model] = judge(Q.top_k(s["test"], exclude["test"], k))
            rows_out.append({"model": model, "forgetting": "off", **training[model],
                             "val_ndcg@10": sweep.rows[0]["ndcg@10"], **off_test})
            best = sweep.best
            chosen = best if best["strength"] > 0 else max(sweep.rows[1:], key=lambda r: r["ndcg@10"])
            hl, alpha, strength = chosen["half_life_windows"], chosen["alpha"], chosen["strength"]

            def weights(stage_name, *, alpha=alpha, hl=hl, state_weights=True):
                return Q.interest_weights(analyses[stage_name][hl], config, log, alpha, state_weights=state_weights)

            def rerank(stage_name, stage, **change):
                return Q.evaluate_stage(s[stage_name], exclude[stage_name], stage, ks, user_interest=weights(
                    stage_name, **change), item_column=columns, strength=strength)

            on_test, per_user[f"{model}+rerank"] = judge(Q.top_k(s["test"], exclude["test"], k,
                                                                 weights("test")[test.users], columns, strength))
            rows_out.append({"model": model, "forgetting": "on", **training[model], "val_ndcg@10": chosen["ndcg@10"],
                             "half_life_windows": hl, "alpha": alpha, "strength": strength,
                             "sweep_chose_off": best["strength"] == 0, **on_test})
            variants = {"chosen": {}, "no interest states": {"state_weights": False}, "alpha 0 (no forgetting in p)":
                        {"alpha": 0.0}, "no decay (half-life inf)": {"hl": math.inf}}
            ablations[model] = {}
            for label, change in variants.items():
                ablations[model][label] = {"val_ndcg@10": rerank("val", val, **change)["ndcg@10"],
                                           "test_ndcg@10": rerank("test", test, **change)["ndcg@10"]}
            diagnostics[model] = Q.target_interest_states(analyses["test"][hl], log, test)

    finally:
        pool.shutdown(cancel_futures=True)
    if peer is not None and name == "leave_last_out":
        rows_out.extend(_peer_rows(peer, val, test, ks, report))
    plan = planned_comparisons(list(scores))
    everyone = np.ones(len(test.users), bool)
    _plot_curves(histories, out / f"training_curves_{name}.png", name)
    return {"protocol": name, "choices": protocol_choices(name, config), "val_users": int(len(val.users)),
            "test_users": int(len(test.users)), "long_history_days": config.quality.long_history_days,
            "long_history_users": int(long_users.sum()),
            "rows": rows_out, "sweeps": sweeps, "ablation": ablations, "target_states": diagnostics,
            "comparisons": {"all": compare(per_user, plan, everyone, config),
                            "long": compare(per_user, plan, long_users, config)},
            "histories": histories, "seconds": round(time.perf_counter() - t0, 1)}


class _Analyses(dict):
    """half-life -> one stage's forgetting analysis (``run(half_life)``), started ahead on ``pool`` or run when
    first read."""

    def __init__(self, run, pool: concurrent.futures.Executor | None = None):
        super().__init__()
        self._run = run
        self._pool = pool
        self._futures: dict[float, concurrent.futures.Future] = {}

    def start(self, half_lives) -> None:
        """Run these half-lives' analyses on the pool, ahead of their first read."""
        for half_life in half_lives:
            if self._pool is not None and half_life not in self and half_life not in self._futures:
                self._futures[half_life] = self._pool.submit(self._run, half_life)

    def __missing__(self, half_life: float):
        future = self._futures.pop(half_life, None)
        self[half_life] = result = future.result() if future is not None else self._run(half_life)
        return result


def _peer_rows(peer: Path, val, test, ks, report) -> list[dict[str, Any]]:
    from fgjax.evaluation.metrics import metrics_at

    arrays, info = np.load(peer / "topk.npz"), json.loads((peer / "peer.json").read_text())
    exported = np.load(peer / "inputs.npz")["users"]
    if not np.array_equal(exported, test.users):
        raise SystemExit(f"--peer {peer}: exported for other users than this run's test users; re-export it")
    row = {"model": "recbole_sasrec (peer)", "forgetting": "off", "train_seconds": info["train_seconds"],
           "epochs": info["epochs"], "peer": info["peer"],
           "val_ndcg@10": metrics_at(arrays["val_top"], val.targets, [10])["ndcg@10"],
           **metrics_at(arrays["test_top"], test.targets, ks)}
    report(f"peer: {info['peer']}: test ndcg@10 {row['ndcg@10']:.4f}")
    return [row]


def _plot_curves(histories: dict[str, list[dict[str, Any]]], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model, history in histories.items():
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h.get("train_loss", math.nan) for h in history], label=model)
        val = [(h["epoch"], h["val_ndcg@10"]) for h in history if "val_ndcg@10" in h]
        if val:
            axes[1].plot(*zip(*val), marker=".", label=model)
    axes[0].set(title=f"training loss ({name})", xlabel="epoch",
                ylabel="loss (BCE: MLP; BPR; softmax CE: sequence)",
                yscale="log")
    axes[1].set(title="validation NDCG@10 (full ranking)", xlabel="epoch", ylabel="NDCG@10")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _protocol_markdown(result: dict[str, Any], ks: list[int]) -> list[str]:
    long_days = result.get("long_history_days", 180)
    lines = [f"#### {result['protocol']} ({result['test_users']} test users, {result.get('long_history_users', 0)} "
             f"with a history of {long_days:g}+ days; full ranking, known items masked)", ""]
    if "choices" in result:
        tuning = ("Every model is tuned with the same budget (trials) and selected by validation NDCG@10."
                  if not result.get("tuned_on") else
                  f"Every model trains once with the trial its tuning under {result['tuned_on']} chose (the same "
                  "budget for every model there); epochs are selected by this protocol's validation NDCG@10.")
        lines += [f"Protocol: {result['choices']}. MAP as trec_eval (average precision over the first k ranks "
                  f"divided by the number of relevant items). {tuning}", ""]
    head = (["model", "forgetting", "trials", "val NDCG@10"] + [f"{m}@{k}" for k in ks for m in METRICS]
            + [f"NDCG@{ks[0]} {long_days:g}d+", "train s", "all trials s", "epochs"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("| --- | --- | " + " | ".join("---:" for _ in head[2:]) + " |")
    for r in result["rows"]:
        label = r["forgetting"]
        if r["forgetting"] == "on":
            label = f"on (hl {r['half_life_windows']:g}, α {r['alpha']:g}, s {r['strength']:g})"
        epochs = str(r["epochs"]) + (f" (best {r['best_epoch']})" if r.get("best_epoch") and r["epochs"] > 1 else "")
        trials = str(r.get("trials", 1)) + (f" ({r['pruned_trials']} pruned)" if r.get("pruned_trials") else "")
        if r.get("carried"):
            trials = f"1, as {r['carried_from']}" if r.get("carried_from") else "1, carried"
        trials += f": {r['chosen']}" if r.get("chosen") and r["forgetting"] == "off" else ""
        cells = [r["model"], label, trials, f"{r['val_ndcg@10']:.4f}"]
        cells += [f"{r[f'{m}@{k}']:.4f}" for k in ks for m in METRICS]
        cells += [f"{r.get(f'ndcg@{ks[0]}_long', math.nan):.4f}", f"{r['train_seconds']:.1f}",
                  f"{r.get('tuning_seconds', r['train_seconds']):.1f}", epochs]
        lines.append("| " + " | ".join(cells) + " |")
    for subset, title in (("all", "all test users"), ("long", f"users with a history of {long_days:g}+ days")):
        rows = result.get("comparisons", {}).get(subset, [])
        if not rows:
            continue
        lines += ["", f"Paired comparisons, test NDCG@{ks[0]}, {title} (named before the run; bootstrap 95 % CI of the "
                  "mean difference, users resampled; Wilcoxon signed-rank with zero differences dropped; "
                  "detectable = the smallest difference these users show with 80 % power):", "",
                  "| comparison | treatment | baseline | users | Δ NDCG | 95 % CI | Wilcoxon p | better / worse / tied "
                  "| detectable |", "| --- | --- | --- | ---: | ---: | --- | ---: | --- | ---: |"]
        for c in rows:
            lines.append(f"| {c['comparison']} | {c['treatment']} | {c['baseline']} | {c['users']} | "
                         f"{c['mean_difference']:+.4f} | {c['ci_low']:+.4f} .. {c['ci_high']:+.4f} | "
                         f"{c['wilcoxon_p']:.3g} | {c['better']} / {c['worse']} / {c['tied']} | "
                         f"{c['detectable_difference']:.4f} |")
    lines += ["", "Re-ranking ablation (NDCG@10, validation / test), at each model's chosen values:", ""]
    labels = list(next(iter(result["ablation"].values())))
    lines.append("| model | sweep chose | " + " | ".join(labels) + " |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in labels) + " |")
    for model, variants in result["ablation"].items():
        best = result["sweeps"][model]["best"]
        chose = "off" if best["strength"] == 0 else "on"
        cells = [f"{v['val_ndcg@10']:.4f} / {v['test_ndcg@10']:.4f}" for v in variants.values()]
        lines.append(f"| {model} | {chose} | " + " | ".join(cells) + " |")
    lines += ["", "Interest state of each test target's genre when judged (time_sasrec's chosen half-life):", ""]
    states = result["target_states"]["time_sasrec"]
    lines.append(", ".join(f"{k} {v:.1%}" for k, v in sorted(states["share_by_state"].items()))
                 + f"; in the user's most probable interest: {states['share_in_top_interest']:.1%}.")
    lines.append("")
    return lines


def markdown(payload: dict[str, Any]) -> str:
    """The report's Markdown: per dataset and protocol a table of every model, the paired comparisons (all users
    and long histories), the re-ranking ablation and the target states."""
    versions = ", ".join(f"{k} {v}" for k, v in payload.get("versions", {}).items() if v)
    lines = [f"Measured {payload['date']} on {payload['device']} ({versions}); whole report "
             f"{payload['seconds']:.0f} s wall.", ""]
    for dataset in payload["datasets"]:
        ks = dataset["config"]["evaluate"]["ks"]
        data = dataset["data"]
        lines += [f"### {dataset['name']}", "",
                  f"{data.get('rows_used', 0):,} events of {dataset['users']:,} users on {dataset['items']:,} items "
                  f"({dataset['categories']} interests); config `{dataset['config_path']}`; {dataset['seconds']:.0f} s.",
                  ""]
        for result in dataset["protocols"]:
            lines += _protocol_markdown(result, ks)
    return "\n".join(lines)


def update_results(path: Path, text: str, command: str) -> None:
    """Replace (or append) the quality section of ``path``."""
    _report.replace_section(path, SECTION_START, SECTION_END,
                            "## quality — MovieLens, every model x forgetting (off, re-ranked, in the model)\n\n"
                            f"```bash\n{command}\n```\n\n{text}")


def dataset_overrides(config_path: str, folder: str | None) -> list[str]:
    """Point the config's data files into ``folder``: each of ``data.path`` / ``data.items_path`` is looked up in
    it by its file name, else the folder itself is the path (a MovieLens or RecBole folder)."""
    if folder is None:
        return []
    from fgjax.config import load_config

    data = load_config(config_path).data
    out = []
    for key in ("path", "items_path"):
        value = getattr(data, key)
        if not value:
            continue
        inside = Path(folder) / Path(value).name
        if inside.exists():
            out.append(f"data.{key}={inside}")
        elif key == "path":
            out.append(f"data.path={folder}")
    return out


def run_dataset(config_path: str, overrides: list[str], out: Path, peer: Path | None, report) -> dict[str, Any]:
    """Every protocol of one data set -> its part of ``quality.json``."""
    from fgjax.config import load_config, to_dict
    from fgjax.pipeline import read

    t0 = time.perf_counter()
    config = load_config(config_path, overrides)
    name = Path(config_path).stem
    log = read(config, out / name, report)
    if log.categories is None or len(log.categories) == 0:
        raise SystemExit(f"fgjax: error: {config_path}: the quality report needs item categories (an items table)")
    trials: dict[str, tuple[str, ...]] | None = None if config.quality.retune_per_protocol else {}
    protocols = []
    for p in config.quality.protocols:
        protocols.append(run_protocol(config, log, p, out / name, peer, report, trials))
        if trials is not None and len(protocols) > 1:
            protocols[-1]["tuned_on"] = config.quality.protocols[0]
    return {"name": name, "config_path": config_path, "data": dataclasses.asdict(log.report),
            "users": int(log.num_users), "items": int(log.num_items), "categories": len(log.categories),
            "config": to_dict(config), "protocols": protocols, "seconds": round(time.perf_counter() - t0, 1)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    dataset_arguments(p)
    p.add_argument("--out", default="bench/results/quality", help="output folder (JSON, Markdown, PNG)")
    p.add_argument("--peer", default=None, help="folder written by bench/recbole_peer.py (export + run)")
    p.add_argument("--results-md", default=None, help="also replace the quality section of this Markdown file")
    p.add_argument("--quiet", action="store_true")
    return p


def dataset_arguments(p: argparse.ArgumentParser) -> None:
    """The data-set flags of the MovieLens reports (this one and ``bench.seeds``), and the suite's own flags."""
    p.add_argument("--dataset", action="append", default=[], metavar="CONFIG[=FOLDER]",
                   help="a data set: its YAML config, and the folder holding its files (repeatable; the report "
                        "covers every one). Without it: --config")
    p.add_argument("--config", default="configs/ml100k.yaml", help="YAML config of one data set (without --dataset)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override for every data set, repeatable (e.g. sequence.epochs=20)")
    # Accepted so that the suite (python -m bench NAME) can call the report like any benchmark;
    # the report has its own sizes (the data sets), draws into --out and uses no torch.
    p.add_argument("--scale", choices=("smoke", "small", "large"), default="small", help=argparse.SUPPRESS)
    p.add_argument("--plots", default="", help=argparse.SUPPRESS)
    p.add_argument("--no-torch", action="store_true", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from fgjax.cli import use_compile_cache
    from fgjax.errors import FgjaxError

    # As the CLI does (FGJAX_COMPILE_CACHE): the trials and protocols of a data set share their step's shapes, so
    # a program compiled once is loaded after (a fresh cache folder measures a first run).
    use_compile_cache()

    report = (lambda _: None) if args.quiet else (lambda msg: print(msg, flush=True))
    out, suite_json = _report.report_folder(args.out, "quality")  # the suite passes DIR/quality.json
    specs = [(spec.partition("=")[0], spec.partition("=")[2] or None) for spec in args.dataset] or [(args.config, None)]
    t0 = time.perf_counter()
    try:
        datasets = [run_dataset(path, dataset_overrides(path, folder) + args.overrides, out,
                                Path(args.peer) if args.peer else None, report) for path, folder in specs]
    except FgjaxError as exc:
        print(f"fgjax: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    payload = _report.study_payload("quality", t0, argv, datasets=datasets)
    text = markdown(payload)
    _report.write_study(out, "quality", payload, text, suite_json)
    if args.results_md:
        update_results(Path(args.results_md), text, payload["command"])
    report(text)
    report(f"wrote {out}/quality.json, quality.md, */training_curves_*.png ({payload['seconds']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
