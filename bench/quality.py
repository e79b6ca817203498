"""Recommendation quality on real data: every model x forgetting on/off x metric.

    python -m bench.quality --config configs/ml100k.yaml --out bench/results/quality \
        [--peer runs/peer] [--results-md bench/RESULTS.md]

For each protocol of ``quality.protocols`` (leave-last-out per user; a
global time cut-off), with full ranking over the catalog and the items known
before each stage masked:

- models: popularity; with ``quality.baselines`` BPR matrix factorization
  (``bpr`` section, ``train`` settings, the best validated epoch) and cosine
  ItemKNN (``knn`` section) from the whole history and from the last
  ``quality.knn_last_items`` items, all in the one loop; the article's
  EmbeddingMLP (``model``/``train`` sections); the time-aware sequence model
  (``sequence`` section, early stopping on validation NDCG@10);
- each without and with forgetting-aware re-ranking, whose alpha, half-life
  and strength are swept on the validation stage only (``fgjax.evaluation.quality``);
- Precision, Recall, F1, NDCG, HitRate, MRR, MAP at ``evaluate.ks`` on the
  test stage, training time and epochs;
- an ablation of the chosen re-ranking (no interest states, alpha 0, no
  decay) and the interest states of the test targets (why it helps or not);
- with ``--peer DIR`` (see ``bench/recbole_peer.py``), RecBole's SASRec's
  top-20 lists scored by the same metric code (leave-last-out only).

Writes ``OUT/quality.json`` (device, date, versions, config, everything),
``OUT/quality.md`` and ``OUT/training_curves_<protocol>.png``; with
``--results-md`` also replaces the quality section of that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
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


def _mlp_split(protocol, log):
    """The ``TemporalSplit`` ``fgjax.training.loop.train`` expects; under a time cut-off its
    validation target (selects the served epoch; no early stopping unless ``train.patience``)
    is the user's first validation item."""
    from fgjax.data.split import TemporalSplit

    val_target = np.full(log.num_users, -1, np.int32)
    val_target[protocol.validation.users] = protocol.validation.targets[:, 0]
    test_target = np.full(log.num_users, -1, np.int32)
    test_target[protocol.test.users] = protocol.test.targets[:, 0]
    return TemporalSplit(protocol.train_events, protocol.test.known_events, val_target, test_target,
                         protocol.test.at_time, protocol.train_items, protocol.test.seen, protocol.ties)


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


def run_baselines(config, log, protocol, train_seq, test_seq, report) -> tuple[dict, dict, dict]:
    """BPR-MF and ItemKNN (whole history, last ``quality.knn_last_items``) in the one loop on the protocol's
    training pairs, validated on its validation stage -> ``(scores, training, histories)`` keyed by row name."""
    from fgjax.evaluation import quality as Q
    from fgjax.training.loop import train_examples, validation_from

    val, test = protocol.validation, protocol.test
    sets = protocol.train_items
    pairs = {"user": np.repeat(np.arange(sets.num_users, dtype=np.int32), sets.counts()),
             "item": sets.items.astype(np.int32)}
    knn = config.knn
    variants = {
        "bpr": ("bpr", config),
        "itemknn": ("itemknn", config),
        f"itemknn_last{config.quality.knn_last_items}": (
            "itemknn", dataclasses.replace(config, knn=dataclasses.replace(knn, history=config.quality.knn_last_items))),
    }
    scores, training, histories = {}, {}, {}
    for row, (model_name, cfg) in variants.items():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=model_name))
        history_model = model_name == "itemknn"
        validation = validation_from(val.users, val.targets, val.seen, train_seq if history_model else None,
                                     num_items=log.num_items)
        result = train_examples(cfg, pairs, validation, num_users=log.num_users, num_items=log.num_items,
                                progress=False)
        training[row] = {"train_seconds": round(result.seconds, 1), "epochs": result.epochs,
                         "best_epoch": result.best_epoch}
        if not history_model:
            histories[row] = result.history
            scores[row] = {"val": Q.mlp_scores(result.graphdef, result.params, val.users),
                           "test": Q.mlp_scores(result.graphdef, result.params, test.users)}
        else:
            scores[row] = {
                "val": Q.sequence_scores(result.graphdef, result.params, train_seq, val.users, log.num_items),
                "test": Q.sequence_scores(result.graphdef, result.params, test_seq, test.users, log.num_items),
            }
        report(f"[{protocol.name}] {row}: {result.epochs} epochs (best {result.best_epoch}) in {result.seconds:.1f} s, "
               f"val ndcg@10 {max(h.get('val_ndcg@10', 0.0) for h in result.history):.4f}")
    return scores, training, histories


def run_protocol(config, log, name: str, out: Path, peer: Path | None, report) -> dict[str, Any]:
    from fgjax.evaluation import quality as Q
    from fgjax.data.sequences import build_sequences
    from fgjax.training.loop import train, train_examples, validation_from, window_examples

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
    training["popularity"] = {"train_seconds": 0.0, "epochs": 0}
    train_seq = build_sequences(log.user, log.item, log.timestamp, log.num_users, protocol.train_events,
                                ties=protocol.ties)
    test_seq = build_sequences(log.user, log.item, log.timestamp, log.num_users, test.known_events, ties=protocol.ties)
    if config.quality.baselines:
        more = run_baselines(config, log, protocol, train_seq, test_seq, report)
        for into, new in zip((scores, training, histories), more):
            into.update(new)

    t = time.perf_counter()
    mlp_config = dataclasses.replace(config, model=dataclasses.replace(config.model, name="embedding_mlp"))
    with tempfile.TemporaryDirectory() as tmp:
        mlp = train(mlp_config, log, _mlp_split(protocol, log), Path(tmp) / "ckpt", progress=False)
    training["embedding_mlp"] = {"train_seconds": round(time.perf_counter() - t, 1), "epochs": len(mlp.history)}
    histories["embedding_mlp"] = mlp.history
    scores["embedding_mlp"] = {"val": Q.mlp_scores(mlp.graphdef, mlp.params, val.users),
                               "test": Q.mlp_scores(mlp.graphdef, mlp.params, test.users)}
    report(f"[{name}] embedding_mlp: {len(mlp.history)} epochs in {training['embedding_mlp']['train_seconds']} s")

    from fgjax.models.sequence import count_params

    # The time-aware model, and (quality.sasrec_baseline) the same network without
    # time encodings: plain SASRec, the established architecture, under this protocol.
    # Both train in the one loop on this stage's windows, validated (early stopping) on its validation stage.
    windows = window_examples(train_seq, config.sequence.max_len, log.num_items)
    validation = validation_from(val.users, val.targets, val.seen, train_seq, num_items=log.num_items)
    for model_name in ("time_sasrec", "sasrec") if config.quality.sasrec_baseline else ("time_sasrec",):
        model_config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=model_name))
        seq = train_examples(model_config, windows, validation, num_users=log.num_users, num_items=log.num_items,
                             progress=False)
        training[model_name] = {"train_seconds": round(seq.seconds, 1), "epochs": seq.epochs,
                                "best_epoch": seq.best_epoch, "stopped_early": seq.stopped_early,
                                "parameters": count_params(seq.params)}
        histories[model_name] = seq.history
        scores[model_name] = {
            "val": Q.sequence_scores(seq.graphdef, seq.params, train_seq, val.users, log.num_items),
            "test": Q.sequence_scores(seq.graphdef, seq.params, test_seq, test.users, log.num_items),
        }
        report(f"[{name}] {model_name}: {seq.epochs} epochs (best {seq.best_epoch}) in {seq.seconds:.1f} s")

    # Forgetting analyses: one per half-life and stage (alpha only changes p, recomputed from f).
    analyses = {stage: {hl: Q.stage_forgetting(config, log, st, hl) for hl in config.quality.sweep_half_life_windows}
                for stage, st in (("val", val), ("test", test))}
    columns = Q.item_columns(log.item_category, len(log.categories))
    rows, sweeps, ablations, diagnostics = [], {}, {}, {}
    for model, s in scores.items():
        sweep = Q.sweep_forgetting(config, log, s["val"], exclude["val"], val, analyses["val"])
        sweeps[model] = {"best": sweep.best, "grid": sweep.rows}
        off_test = Q.evaluate_stage(s["test"], exclude["test"], test, ks)
        rows.append({"model": model, "forgetting": "off", **training[model], "val_ndcg@10": sweep.rows[0]["ndcg@10"],
                     **off_test})
        best = sweep.best
        chosen = best if best["strength"] > 0 else max(sweep.rows[1:], key=lambda r: r["ndcg@10"])
        hl, alpha, strength = chosen["half_life_windows"], chosen["alpha"], chosen["strength"]

        def rerank(stage_name, stage, *, alpha=alpha, hl=hl, state_weights=True):
            weights = Q.interest_weights(analyses[stage_name][hl], config, log, alpha, state_weights=state_weights)
            return Q.evaluate_stage(s[stage_name], exclude[stage_name], stage, ks, user_interest=weights,
                                    item_column=columns, strength=strength)

        on_test = rerank("test", test)
        rows.append({"model": model, "forgetting": "on", **training[model], "val_ndcg@10": chosen["ndcg@10"],
                     "half_life_windows": hl, "alpha": alpha, "strength": strength,
                     "sweep_chose_off": best["strength"] == 0, **on_test})
        variants = {"chosen": {}, "no interest states": {"state_weights": False}, "alpha 0 (no forgetting in p)":
                    {"alpha": 0.0}, "no decay (half-life inf)": {"hl": math.inf}}
        ablations[model] = {}
        for label, change in variants.items():
            if change.get("hl") is not None and change["hl"] not in analyses["val"]:
                for stage_name, st in (("val", val), ("test", test)):
                    analyses[stage_name][change["hl"]] = Q.stage_forgetting(config, log, st, change["hl"])
            ablations[model][label] = {"val_ndcg@10": rerank("val", val, **change)["ndcg@10"],
                                       "test_ndcg@10": rerank("test", test, **change)["ndcg@10"]}
        diagnostics[model] = Q.target_interest_states(analyses["test"][hl], log, test)

    if peer is not None and name == "leave_last_out":
        rows.extend(_peer_rows(peer, val, test, ks, report))
    _plot_curves(histories, out / f"training_curves_{name}.png", name)
    return {"protocol": name, "choices": protocol_choices(name, config), "val_users": int(len(val.users)),
            "test_users": int(len(test.users)),
            "rows": rows, "sweeps": sweeps, "ablation": ablations, "target_states": diagnostics,
            "histories": histories, "seconds": round(time.perf_counter() - t0, 1)}


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


def markdown(payload: dict[str, Any]) -> str:
    """The report's Markdown: one table per protocol, then sweeps, ablations and target states."""
    ks = payload["config"]["evaluate"]["ks"]
    lines = [f"Measured {payload['date']} on {payload['device']}; whole report {payload['seconds']:.0f} s wall.", ""]
    for result in payload["protocols"]:
        lines += [f"#### {result['protocol']} ({result['test_users']} test users, full ranking, known items masked)", ""]
        if "choices" in result:
            lines += [f"Protocol: {result['choices']}. MAP as trec_eval (average precision over the first k ranks "
                      "divided by the number of relevant items).", ""]
        head = ["model", "forgetting", "val NDCG@10"] + [f"{m}@{k}" for k in ks for m in METRICS] + ["train s", "epochs"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("| --- | --- | " + " | ".join("---:" for _ in head[2:]) + " |")
        for r in result["rows"]:
            label = r["forgetting"]
            if r["forgetting"] == "on":
                label = f"on (hl {r['half_life_windows']:g}, α {r['alpha']:g}, s {r['strength']:g})"
            epochs = str(r["epochs"]) + (f" (best {r['best_epoch']})" if r.get("best_epoch") and r["epochs"] > 1 else "")
            cells = [r["model"], label, f"{r['val_ndcg@10']:.4f}"] + [f"{r[f'{m}@{k}']:.4f}" for k in ks for m in METRICS]
            cells += [f"{r['train_seconds']:.1f}", epochs]
            lines.append("| " + " | ".join(cells) + " |")
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
    return "\n".join(lines)


def update_results(path: Path, text: str, command: str) -> None:
    """Replace (or append) the quality section of ``path``."""
    section = (f"{SECTION_START}\n## quality — MovieLens-100K, every model x forgetting on/off\n\n```bash\n{command}\n```\n\n"
               f"{text}\n{SECTION_END}")
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    if SECTION_START in old and SECTION_END in old:
        head, rest = old.split(SECTION_START, 1)
        new = head + section + rest.split(SECTION_END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/ml100k.yaml", help="YAML config (data, model, train, sequence, quality)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override, repeatable (e.g. data.path=/data/ml-100k)")
    p.add_argument("--out", default="bench/results/quality", help="output folder (JSON, Markdown, PNG)")
    p.add_argument("--peer", default=None, help="folder written by bench/recbole_peer.py (export + run)")
    p.add_argument("--results-md", default=None, help="also replace the quality section of this Markdown file")
    p.add_argument("--quiet", action="store_true")
    # Accepted so that the suite (python -m bench quality) can call it like any benchmark;
    # the report has one size (MovieLens-100K), draws its curves into --out and uses no torch.
    p.add_argument("--scale", choices=("smoke", "small", "large"), default="small", help=argparse.SUPPRESS)
    p.add_argument("--plots", default="", help=argparse.SUPPRESS)
    p.add_argument("--no-torch", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from fgjax.config import load_config, to_dict
    from fgjax.errors import FgjaxError
    from fgjax.pipeline import read

    report = (lambda _: None) if args.quiet else (lambda msg: print(msg, flush=True))
    out = Path(args.out)
    suite_json = None
    if out.suffix == ".json":  # called by the suite: --out DIR/quality.json
        suite_json, out = out, out.parent / "quality"
    t0 = time.perf_counter()
    try:
        config = load_config(args.config, args.overrides)
        log = read(config, out, report)
        if log.categories is None or len(log.categories) == 0:
            raise SystemExit("fgjax: error: the quality report needs item categories (an items table)")
        protocols = [run_protocol(config, log, name, out, Path(args.peer) if args.peer else None, report)
                     for name in config.quality.protocols]
    except FgjaxError as exc:
        print(f"fgjax: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    payload = {"benchmark": "quality", **_report.environment(), "seconds": round(time.perf_counter() - t0, 1),
               "command": "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
               "data": dataclasses.asdict(log.report), "config": to_dict(config), "protocols": protocols}
    _report.write_json(out / "quality.json", payload)
    if suite_json is not None:
        _report.write_json(suite_json, payload)
    text = markdown(payload)
    (out / "quality.md").write_text(text + "\n")
    if args.results_md:
        update_results(Path(args.results_md), text, payload["command"])
    report(text)
    report(f"wrote {out}/quality.json, quality.md, training_curves_*.png ({payload['seconds']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
