"""Seed replicates: is a difference between sequence models larger than what a training seed moves?

    python -m bench.seeds --dataset configs/ml100k.yaml=path/to/ml-100k \
        --dataset configs/ml_latest_small.yaml=path/to/ml-latest-small-2016 \
        --seeds 0,1,2 --out bench/results/seeds --results-md bench/RESULTS.md

The quality report (``bench.quality``) trains each model once: its paired
tests resample users, so their intervals say nothing about the randomness of
training (initialization, dropout masks, the order of the examples), which
moves a sequence model's test NDCG@10 by about 0.01 on MovieLens. Here each
row of ``--rows`` (default: time_sasrec, forgetting_sasrec and its no-decay
ablation) trains once per ``sequence.seed`` in ``--seeds``, as configured
(the configs' defaults are the trials the report chooses), under
leave-last-out (``--protocol``), and is scored without re-ranking. For every
comparison the report names among these rows:

- per seed: the paired mean difference over users with its bootstrap 95 % CI
  (as the report gives it);
- across seeds: the mean of the per-seed differences, their standard
  deviation and a t interval (seeds as the replicates), and how many seeds
  put the treatment ahead (an exact sign test);
- seeds and users resampled together (a two-level bootstrap): the interval
  that covers both the training randomness and the test sample, the primary
  measure of whether a difference is real;
- on the seed-averaged scores: each user's NDCG@10 averaged over the seeds,
  then the report's paired test (bootstrap CI over users, Wilcoxon). Only
  users are resampled, so this interval is conditional on these seeds: the
  training noise is averaged (smaller), not accounted for.

Writes ``OUT/seeds.json`` (device, date, versions, every figure),
``OUT/seeds.md`` and ``OUT/<data set>/per_user_ndcg.npz`` (every row's test
NDCG@10 per user and seed, with a fingerprint of what they depend on: a
later run with ``--reuse OUT`` takes them instead of training again, so seeds
can be added to a run); with ``--results-md`` also replaces, in the seeds section
of that file, the subsection of each data set run (each with its command and
date; the other data sets' subsections stay as they are).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import _report

SECTION_START = "<!-- seeds:start -->"
SECTION_END = "<!-- seeds:end -->"
DEFAULT_ROWS = ("time_sasrec", "forgetting_sasrec", "forgetting_sasrec_nodecay")


def across_seeds(differences: list[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, standard deviation and a t interval of per-seed differences (the seeds are the replicates)."""
    from scipy import stats

    d = np.asarray(differences, np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("across_seeds: no seeds")
    mean = float(d.mean())
    if n < 2:
        return {"seeds": n, "mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return {"seeds": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def two_level_bootstrap(differences: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, float]:
    """Percentile interval of the mean of ``(seeds, users)`` paired differences with seeds *and* users resampled.

    Each resample draws the seeds with replacement (the training randomness) and, independently, the users with
    replacement (the test sample), and takes the mean difference over both: the interval covers both sources of
    noise, which the per-seed intervals (users only) and the t interval (seeds only) each leave out. With few
    seeds it is coarse (S seeds give at most C(2S - 1, S) distinct seed draws). ``share_at_or_below_zero``: the
    resamples whose mean is <= 0.
    """
    d = np.asarray(differences, np.float64)
    if d.ndim != 2 or 0 in d.shape:
        raise ValueError(f"two_level_bootstrap: expected (seeds, users) differences, got shape {d.shape}")
    num_seeds, num_users = d.shape
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, num_seeds, size=(resamples, num_seeds))
    # A resample's seeds as weights: the mean over the drawn seeds of each user's difference.
    weights = np.stack([np.bincount(row, minlength=num_seeds) for row in picked]) / num_seeds
    users = rng.integers(0, num_users, size=(resamples, num_users))
    means = np.take_along_axis(weights @ d, users, axis=1).mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {"mean_difference": float(d.mean()), "ci_low": float(low), "ci_high": float(high),
            "confidence": confidence, "share_at_or_below_zero": float(np.mean(means <= 0.0)),
            "resamples": resamples, "seed": seed}


def sign_test(differences: list[float]) -> dict[str, float | int]:
    """How many seeds put the treatment ahead, behind or level, and the exact two-sided sign test's p (ties
    dropped): with 5 seeds, 5 of 5 ahead gives p = 0.0625, the least 5 seeds can give."""
    from scipy import stats

    ahead = sum(v > 0 for v in differences)
    behind = sum(v < 0 for v in differences)
    n = ahead + behind
    p = float(stats.binomtest(ahead, n, 0.5).pvalue) if n else 1.0
    return {"ahead": int(ahead), "behind": int(behind), "level": len(differences) - n, "p": p}


def seed_comparisons(per_seed: dict[int, dict[str, np.ndarray]], plan, config) -> list[dict[str, Any]]:
    """Each planned comparison ``(label, treatment, baseline)`` whose rows were trained: per seed (users resampled),
    across seeds (t interval, sign test), with seeds and users resampled together (``two_level_bootstrap``) and on
    the per-user scores averaged over the seeds (users resampled)."""
    from fgjax.evaluation.metrics import paired_comparison

    seeds = sorted(per_seed)
    out = []
    for label, a, b in plan:
        if not all(a in per_seed[s] and b in per_seed[s] for s in seeds):
            continue
        kw = {"seed": config.evaluate.bootstrap_seed, "resamples": config.evaluate.bootstrap_resamples}
        each = {s: paired_comparison(per_seed[s][a], per_seed[s][b], **kw) for s in seeds}
        mean_a = np.mean([per_seed[s][a] for s in seeds], axis=0)
        mean_b = np.mean([per_seed[s][b] for s in seeds], axis=0)
        averaged = paired_comparison(mean_a, mean_b, **kw)
        differences = np.stack([per_seed[s][a] - per_seed[s][b] for s in seeds])
        means = [each[s]["mean_difference"] for s in seeds]
        out.append({"comparison": label, "treatment": a, "baseline": b,
                    "per_seed": {str(s): each[s] for s in seeds},
                    "across_seeds": across_seeds(means) | {"sign_test": sign_test(means)},
                    "seeds_and_users": two_level_bootstrap(differences, **kw),
                    "seed_averaged": averaged})
    return out


def fingerprint(config, protocol_name: str, log) -> str:
    """What a row's scores at a seed depend on besides that seed: the configuration (its seeds left out), the
    protocol, the events (a hash), the library versions and the device (float32 sums in another order on
    another instruction set can move a model). Two runs of the same code with equal fingerprints train the same
    networks at the same seed (training is deterministic given its seed)."""
    from fgjax.config import to_dict

    cfg = to_dict(config)
    for section in ("sequence", "train", "bpr"):
        cfg.get(section, {}).pop("seed", None)
    events = hashlib.sha256()
    for column in (log.user, log.item, log.timestamp):
        events.update(np.ascontiguousarray(column).tobytes())
    environment = _report.environment()
    return json.dumps({"config": cfg, "protocol": protocol_name, "events": events.hexdigest(),
                       "versions": environment["versions"], "device": environment["device"]},
                      sort_keys=True, default=str)


def reused_runs(folder: Path, name: str, expected: str) -> dict[tuple[int, str], tuple[np.ndarray, dict[str, Any]]]:
    """``(seed, row) -> (per-user test NDCG, run record)`` of a folder an earlier ``--out`` wrote for data set
    ``name``; exits with a one-line error when it is missing or was made from another configuration or data."""
    scores, meta = folder / name / "per_user_ndcg.npz", folder / "seeds.json"
    if not scores.is_file() or not meta.is_file():
        raise SystemExit(f"fgjax: error: --reuse {folder}: expected {meta} and {scores} (a folder written by "
                         f"python -m bench.seeds --out) for data set {name}")
    saved = np.load(scores)
    if "fingerprint" not in saved.files or str(saved["fingerprint"]) != expected:
        raise SystemExit(f"fgjax: error: --reuse {scores}: made with another configuration, protocol, data, "
                         "library versions or device than this run (seeds aside); run without --reuse")
    runs = [r for d in json.loads(meta.read_text())["datasets"] if d["name"] == name for r in d["runs"]]
    return {(r["seed"], r["row"]): (saved[f"{r['row']}/seed{r['seed']}"], r) for r in runs
            if f"{r['row']}/seed{r['seed']}" in saved.files}


def run_dataset(config_path: str, overrides: list[str], seeds: list[int], rows: list[str], protocol_name: str,
                out: Path, report, reuse: Path | None = None) -> dict[str, Any]:
    """Every row x seed of one data set -> its part of ``seeds.json``. ``reuse``: an earlier ``--out`` folder
    whose (row, seed) scores are taken instead of training again (``reused_runs``)."""
    from bench.quality import _protocol, fit_row, planned_comparisons, protocol_inputs, row_models
    from fgjax.config import load_config, override
    from fgjax.evaluation import quality as Q
    from fgjax.evaluation.metrics import per_user_ndcg
    from fgjax.pipeline import read

    t0 = time.perf_counter()
    config = load_config(config_path, overrides)
    name = Path(config_path).stem
    log = read(config, out / name, report)  # rejected rows, if any, to OUT/<data set>/rejects.parquet
    if log.categories is None or len(log.categories) == 0:
        raise SystemExit(f"fgjax: error: {config_path}: seed replicates need item categories (an items table)")
    known = row_models(override(config, ("quality.baselines=true", "quality.sasrec_baseline=true",
                                         "quality.in_model_forgetting=true")))
    unknown = sorted(set(rows) - set(known))
    if unknown:
        raise SystemExit(f"fgjax: error: --rows: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")
    protocol = _protocol(protocol_name, log, config)
    test = protocol.test
    exclude = Q.exclusion_matrix(test, log.num_items)
    cut = sorted(config.evaluate.ks)[0]
    inputs = protocol_inputs(config, log, protocol, [known[r][0] for r in rows])
    per_seed: dict[int, dict[str, np.ndarray]] = {}
    runs = []
    stamp = fingerprint(config, protocol_name, log)
    earlier = reused_runs(reuse, name, stamp) if reuse is not None else {}
    for seed in seeds:
        seeded = override(config, (f"sequence.seed={seed}", f"train.seed={seed}", f"bpr.seed={seed}"))
        per_seed[seed] = {}
        for row in rows:
            if (seed, row) in earlier:
                per_seed[seed][row], run = earlier[seed, row]
                runs.append(run | {"reused": True})
                report(f"[{name} seed {seed}] {row}: test ndcg@{cut} {per_seed[seed][row].mean():.4f} (reused)")
                continue
            model_name, changes = known[row]
            fitted = fit_row(seeded, log, protocol, row, model_name, changes, inputs, report, carried=())
            ranked = Q.top_k(fitted["scores"]["test"], exclude, cut)
            per_seed[seed][row] = per_user_ndcg(ranked, test.targets, cut)
            val_ndcg = max((h.get("val_ndcg@10", -1.0) for h in fitted["history"]), default=-1.0)
            first_loss = fitted["history"][0].get("train_loss") if fitted["history"] else None
            runs.append({"seed": seed, "row": row, "val_ndcg@10": val_ndcg, "first_epoch_loss": first_loss,
                         f"test_ndcg@{cut}": float(per_seed[seed][row].mean()), **fitted["training"],
                         "reused": False})
            report(f"[{name} seed {seed}] {row}: test ndcg@{cut} {per_seed[seed][row].mean():.4f}")
    # Every per-user score, so other comparisons can be drawn later without training again.
    (out / name).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / name / "per_user_ndcg.npz",
                        **{f"{row}/seed{s}": per_seed[s][row] for s in seeds for row in rows},
                        test_users=np.asarray(test.users), fingerprint=np.array(stamp))
    summary = {}
    for row in rows:
        values = [float(per_seed[s][row].mean()) for s in seeds]
        summary[row] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1
                        else math.nan, "min": min(values), "max": max(values)}
    plan = [p for p in planned_comparisons(rows) if "+rerank" not in p[1] + p[2]]
    return {"name": name, "config_path": config_path, "protocol": protocol_name, "test_users": int(len(test.users)),
            "cut": cut, "seeds": seeds, "rows": rows, "runs": runs, "summary": summary,
            "comparisons": seed_comparisons(per_seed, plan, config), "seconds": round(time.perf_counter() - t0, 1)}


def dataset_markdown(d: dict[str, Any], payload: dict[str, Any]) -> str:
    """One data set's subsection: what was run, when and where, its rows per seed and its comparisons."""
    versions = ", ".join(f"{k} {v}" for k, v in payload.get("versions", {}).items() if v)
    cut, seeds = d["cut"], d["seeds"]
    lines = [f"### {d['name']} ({d['protocol']}, {d['test_users']} test users, seeds {', '.join(map(str, seeds))})",
             "", f"Measured {payload['date']} on {payload['device']} ({versions}); {d['seconds']:.0f} s for this "
             "data set, by:", "", f"```bash\n{payload['command']}\n```", "",
             "| row | " + " | ".join(f"seed {s}: val NDCG@10 / test NDCG@{cut}" for s in seeds)
             + " | test mean | test sd |",
             "| --- | " + " | ".join("---" for _ in seeds) + " | ---: | ---: |"]
    for row in d["rows"]:
        cells = []
        for s in seeds:
            run = next(r for r in d["runs"] if r["seed"] == s and r["row"] == row)
            cells.append(f"{run['val_ndcg@10']:.4f} / {run[f'test_ndcg@{cut}']:.4f} ({run['epochs']} ep, "
                         f"best {run['best_epoch']}{', reused' if run.get('reused') else ''})")
        sm = d["summary"][row]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {sm['mean']:.4f} | {sm['sd']:.4f} |")
    lines += ["", "| comparison | per seed: Δ (95 % CI over users) | across seeds: mean Δ ± sd (95 % t CI over "
              "seeds); seeds ahead / behind (sign test p) | seeds and users resampled: 95 % CI (share of resamples "
              "<= 0) | seed-averaged scores: Δ (95 % CI over users, given these seeds), Wilcoxon p, better / "
              "worse / tied |",
              "| --- | --- | --- | --- | --- |"]
    for c in d["comparisons"]:
        each = "; ".join(f"{v['mean_difference']:+.4f} ({v['ci_low']:+.4f} .. {v['ci_high']:+.4f})"
                         for v in c["per_seed"].values())
        a, m, both, sign = c["across_seeds"], c["seed_averaged"], c["seeds_and_users"], c["across_seeds"]["sign_test"]
        lines.append(f"| {c['comparison']} ({c['treatment']} - {c['baseline']}) | {each} | "
                     f"{a['mean']:+.4f} ± {a['sd']:.4f} ({a['ci_low']:+.4f} .. {a['ci_high']:+.4f}); "
                     f"{sign['ahead']} / {sign['behind']} (p {sign['p']:.3g}) | "
                     f"{both['ci_low']:+.4f} .. {both['ci_high']:+.4f} ({both['share_at_or_below_zero']:.3f}) | "
                     f"{m['mean_difference']:+.4f} ({m['ci_low']:+.4f} .. {m['ci_high']:+.4f}), p "
                     f"{m['wilcoxon_p']:.3g}, {m['better']} / {m['worse']} / {m['tied']} |")
    return "\n".join(lines)


def markdown(payload: dict[str, Any]) -> str:
    """The whole run: every data set's subsection."""
    return "\n\n".join(dataset_markdown(d, payload) for d in payload["datasets"]) + "\n"


SECTION_TITLE = "## Seed replicates — sequence models, one configuration trained with several seeds"


def update_results(path: Path, payload: dict[str, Any]) -> None:
    """Replace (or add) each of the payload's data sets' subsections in the seeds section of ``path``, each between
    its own markers: a run over one data set leaves the others' subsections (and their commands) as they are."""
    for d in payload["datasets"]:
        start, end = f"<!-- seeds:{d['name']}:start -->", f"<!-- seeds:{d['name']}:end -->"
        block = f"{start}\n{dataset_markdown(d, payload)}\n{end}"
        text = path.read_text() if path.is_file() else "# Benchmark results\n"
        if SECTION_START not in text or SECTION_END not in text:
            _report.replace_section(path, SECTION_START, SECTION_END, f"{SECTION_TITLE}\n\n{block}\n")
        elif start in text and end in text:
            _report.replace_section(path, start, end, dataset_markdown(d, payload))
        else:  # a data set new to the section: last in it
            head, rest = text.split(SECTION_END, 1)
            path.write_text(f"{head.rstrip()}\n\n{block}\n\n{SECTION_END}{rest}")


def build_parser() -> argparse.ArgumentParser:
    from bench.quality import dataset_arguments

    p = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__.split("\n\n")[0])
    dataset_arguments(p)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (sequence.seed)")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated rows of the quality report")
    p.add_argument("--protocol", default="leave_last_out", choices=("leave_last_out", "time_cutoff"))
    p.add_argument("--out", default="bench/results/seeds", help="output folder (JSON, Markdown)")
    p.add_argument("--results-md", default=None,
                   help="also replace, in the seeds section of this Markdown file, the subsection of each data set run")
    p.add_argument("--reuse", default=None, type=Path,
                   help="an earlier --out folder: its (row, seed) scores are taken instead of training again, when "
                        "it was made from the same configuration, data, library versions and device (add seeds to a run)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.quality import dataset_overrides
    from fgjax.cli import use_compile_cache
    from fgjax.errors import FgjaxError

    args = build_parser().parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"fgjax: error: --seeds: expected comma-separated integers, got {args.seeds!r}") from None
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not seeds or not rows:
        raise SystemExit("fgjax: error: --seeds and --rows need at least one value each")
    for flag, values in (("--seeds", seeds), ("--rows", rows)):
        if len(set(values)) != len(values):
            raise SystemExit(f"fgjax: error: {flag}: each value once, got {','.join(map(str, values))}")
    use_compile_cache()
    report = (lambda _: None) if args.quiet else (lambda msg: print(msg, flush=True))
    out, suite_json = _report.report_folder(args.out, "seeds")  # the suite passes DIR/seeds.json
    specs = [(spec.partition("=")[0], spec.partition("=")[2] or None) for spec in args.dataset] or [(args.config, None)]
    t0 = time.perf_counter()
    try:
        datasets = [run_dataset(path, dataset_overrides(path, folder) + args.overrides, seeds, rows, args.protocol,
                                out, report, args.reuse) for path, folder in specs]
    except FgjaxError as exc:
        print(f"fgjax: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    payload = _report.study_payload("seeds", t0, argv, datasets=datasets)
    text = markdown(payload)
    _report.write_study(out, "seeds", payload, text, suite_json)
    if args.results_md:
        update_results(Path(args.results_md), payload)
    report(text)
    return payload


if __name__ == "__main__":
    main()
