"""What a verdict could reach on a blind log had it seen that log's truth: ``python -m bench.blind_ceiling`` (issue 10)

    python -m bench.blind_ceiling --story blind_story3 --out bench/results/ceiling3 [--data DIR] [--trees]

The shipped verdict is fitted on our own stories and scored on logs written blind (``bench.blind``). Where it falls
short there, two things can be to blame: the shift between our stories and the log (fixable by better training
stories, or by fitting on the log itself), or what its model and features can say at all (fixable only by new
features or another model). This study separates them. On each (window length, fade share) cell of one blind log
it scores, against the log's truth, in process (the same kernels as ``fgjax analyze``):

- ``shipped``: the verdict ``analysis.detector.verdict_file: auto`` reads for the log (what ``bench.blind`` calls
  the product as run; the same figures);
- ``rule``: "forgotten after N silent windows" at its best N on the cell;
- ``linear_on_truth``: the shipped verdict's model (the logistic fit of ``fgjax.evaluation.verdict``, its threshold
  chosen the same way) fitted on the log's own truth, in two folds by user: fitted and thresholded on one half of
  the users, scored on the other, and the two halves' flags scored together. No user is scored by a fit that saw
  it; every user is from the very log, which no real log's owner has the truth of;
- with ``--trees`` (needs scikit-learn, not a dependency of fgjax): gradient-boosted trees in the same two folds,
  on the verdict's 16 features (``trees_on_truth``: what a more flexible model adds) and on those plus the pair's
  and its user's counts in 8 bins back in time, the pair's age and its events so far (``trees_raw_on_truth``: what
  the features leave out).

So ``linear_on_truth`` is the most the shipped model could gain from better training stories, and the tree columns
say how far the model or the features limit it: estimates from a fit, not bounds (the Bayes ceiling of
``fgjax.evaluation.oracle`` needs the generator's rates, which the blind logs do not expose).

Writes ``OUT/blind_ceiling.json`` (device, date, versions, every figure) and ``OUT/blind_ceiling.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import _report, blind

#: Count bins back from a window, in windows ``(nearest, farthest)``, of ``raw_features``.
RAW_BINS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127))
#: Log-odds thresholds the trees' fits choose from (on their own fold's F1).
TREE_THRESHOLDS = tuple(float(t) for t in np.arange(-3.0, 6.01, 0.25))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.blind_ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/blind_ceiling", help="output folder")
    p.add_argument("--data", default="", help="a log the story wrote before (bench.blind's OUT/data); '' = write one")
    blind.add_log_arguments(p)
    p.add_argument("--trees", action="store_true", help="also gradient-boosted trees (needs scikit-learn)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable)")
    return p


def raw_features(counts: np.ndarray, user: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """``(windows, pairs, 2 * len(RAW_BINS) + 2)`` float32 for ``(windows, users, slots)`` counts and the pairs'
    ``user`` / ``slot``: at each window, log(1 + the pair's events) in each of ``RAW_BINS`` back from it (the
    window itself included), the same for its user's events in every slot, log(1 + windows since the pair's first
    event) (0 before it) and log(1 + the pair's events so far). Causal: window t reads nothing after t."""
    windows = counts.shape[0]
    pair = counts[:, user, slot].astype(np.float64)
    user_total = counts.sum(axis=2)[:, user].astype(np.float64)
    t = np.arange(windows)

    def binned(x: np.ndarray) -> list[np.ndarray]:
        through = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # through[i]: windows < i
        return [np.log1p(through[np.clip(t - lo + 1, 0, None)] - through[np.clip(t - hi, 0, None)])
                for lo, hi in RAW_BINS]

    first = np.where(pair.sum(axis=0) > 0, np.argmax(pair > 0, axis=0), windows)
    age = np.log1p(np.clip(t[:, None] - first[None, :], 0, None))
    so_far = np.log1p(np.cumsum(pair, axis=0))
    return np.stack(binned(pair) + binned(user_total) + [age, so_far], axis=-1).astype(np.float32)


def subset(rows: Any, keep: np.ndarray) -> Any:
    """``fgjax.evaluation.verdict.VerdictRows`` of the pairs where ``keep`` (``(pairs,)`` bool) holds."""
    truth = dataclasses.replace(rows.truth, **{f.name: getattr(rows.truth, f.name)[keep]
                                               for f in dataclasses.fields(rows.truth)})
    return dataclasses.replace(rows, features=rows.features[:, keep], silent=rows.silent[:, keep], truth=truth)


def two_fold(rows: Any, fit: Callable[[Any], Callable[[Any], np.ndarray]]) -> np.ndarray:
    """``(windows, users, slots)`` flags: each half of the users (by index parity) flagged by ``fit(the other
    half's rows)``, a function from rows to their flags."""
    odd = (rows.truth.user % 2).astype(bool)
    flags = np.zeros(rows.shape, bool)
    for half in (False, True):
        flags |= fit(subset(rows, odd != half))(subset(rows, odd == half))
    return flags


def linear_fit(config: Any) -> Callable[[Any], Callable[[Any], np.ndarray]]:
    """The shipped verdict's fit (``verdict.fit_and_threshold``) as ``two_fold`` takes it."""
    from fgjax.evaluation import verdict

    def fit(train: Any) -> Callable[[Any], np.ndarray]:
        params, chosen = verdict.fit_and_threshold(config, [train], 0)
        threshold = config.evaluate.verdict_threshold_sweep[chosen]
        return lambda rows: verdict.verdict_flags(rows, params, threshold)

    return fit


def trees_fit(config: Any) -> Callable[[Any], Callable[[Any], np.ndarray]]:
    """Gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``) on the training half's rows as the
    linear fit weighs them (``verdict.training_set``, drawn down to 400,000 rows, not the linear fit's
    ``evaluate.verdict_rows_per_story``: the trees have more to learn), the threshold the best F1 of
    ``TREE_THRESHOLDS`` on the training half's own predictions (no loyal cap: ``evaluate.verdict_loyal_cap`` is the
    linear fit's). The trees fit those rows more closely than the rows they score, so the threshold may sit off
    its held-out best; the scores stay held out."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ModuleNotFoundError:
        raise SystemExit("python -m bench.blind_ceiling: --trees needs scikit-learn (pip install scikit-learn)") from None
    from fgjax.evaluation import verdict
    from fgjax.evaluation.matrix import cell_metrics

    e = config.evaluate

    def fit(train: Any) -> Callable[[Any], np.ndarray]:
        x, y, w = verdict.training_set([train], e.detection_early_windows, 400_000, np.random.default_rng(0))
        model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, max_leaf_nodes=31,
                                               l2_regularization=1.0, random_state=0).fit(x, y, sample_weight=w)

        def log_odds(rows: Any) -> np.ndarray:
            p = model.predict_proba(rows.features.reshape(-1, rows.features.shape[-1]))[:, 1]
            p = np.clip(p, 1e-7, 1 - 1e-7)
            return np.log(p / (1 - p)).reshape(rows.features.shape[:2])

        train_odds = log_odds(train)
        f1 = [cell_metrics(verdict.log_odds_flags(train, train_odds, th), train.truth,
                           e.detection_early_windows)["f1"] or 0.0 for th in TREE_THRESHOLDS]
        threshold = TREE_THRESHOLDS[int(np.argmax(f1))]
        return lambda rows: verdict.log_odds_flags(rows, log_odds(rows), threshold)

    return fit


def _sklearn_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        return None


def score_cell(config: Any, days: Any, window_days: int, share: float, trees: bool) -> dict[str, Any]:
    """One (window length, fade share) cell: each method's ``matrix.cell_metrics``, headline figures only."""
    from fgjax.analysis.verdict import load_verdict, verdict_path
    from fgjax.evaluation import verdict
    from fgjax.evaluation.detection import silence_alarms
    from fgjax.evaluation.matrix import cell_metrics, story_truth, windowed

    e, detector = config.evaluate, config.analysis.detector
    counts = windowed(days, window_days)
    truth = story_truth(days, counts, window_days, share, e.matrix_margin_days, e.min_expected_events)

    def metrics(flags: np.ndarray) -> dict[str, Any]:
        m = cell_metrics(flags, truth, e.detection_early_windows)
        return {k: m[k] for k in ("f1", "precision", "recall", "median_delay", "loyal_ever_flagged",
                                  "reactivated_flagged_again")}

    rows = verdict.verdict_rows(config, counts, truth, share, window_days)
    shipped = load_verdict(verdict_path("auto", float(window_days), share, detector.verdict_recent_windows),
                           float(window_days), share, detector.verdict_recent_windows, counts.shape[0])
    rule = max(({"knob": n, **metrics(silence_alarms(counts, n))} for n in e.silence_sweep), key=lambda m: m["f1"] or 0)
    cell = {"window_days": window_days, "share": share, "windows": int(counts.shape[0]),
            "judged_pairs": int(truth.judged.sum()), "positives": int((truth.judged & truth.positive).sum()),
            "rule": rule, "shipped": metrics(verdict.verdict_flags(rows, shipped.params, shipped.threshold)),
            "linear_on_truth": metrics(two_fold(rows, linear_fit(config)))}
    if trees:
        cell["trees_on_truth"] = metrics(two_fold(rows, trees_fit(config)))
        extra = raw_features(counts, truth.user, truth.interest)
        wide = dataclasses.replace(rows, features=np.concatenate([rows.features, extra], axis=-1))
        cell["trees_raw_on_truth"] = metrics(two_fold(wide, trees_fit(config)))
    return cell


METHODS = (("rule", "rule at its best N"), ("shipped", "shipped verdict"), ("linear_on_truth", "linear, on truth"),
           ("trees_on_truth", "trees, on truth"), ("trees_raw_on_truth", "trees + counts, on truth"))


def markdown(payload: dict[str, Any]) -> str:
    methods = [(k, name) for k, name in METHODS if any(k in c for c in payload["cells"])]
    lines = [f"{payload['setup']['story']}, {payload['setup']['days']} days: F1 (loyal interests ever flagged)", "",
             "| windows | share | judged (positives) | " + " | ".join(name for _, name in methods) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for c in payload["cells"]:
        window = "daily" if c["window_days"] == 1 else "%d-day" % c["window_days"]
        parts = [f"{blind._f(c[k]['f1'])} ({blind._f(c[k]['loyal_ever_flagged'])})" for k, _ in methods]
        parts[0] = f"N={c['rule']['knob']}: " + parts[0]
        lines.append(f"| {window} | {c['share']:.0%} | {c['judged_pairs']:,} ({c['positives']:,}) | "
                     + " | ".join(parts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from fgjax.config import load_config

    story = importlib.import_module(f"bench.{args.story}")
    out, suite_json = _report.report_folder(args.out, "blind_ceiling")
    t0 = time.perf_counter()
    data = Path(args.data) if args.data else out / "data"
    if args.data:
        if not (data / "truth.parquet").is_file():
            raise SystemExit(f"python -m bench.blind_ceiling: --data {data}: no truth.parquet (expected a log "
                             f"that bench/{args.story}.py wrote)")
    else:
        story.generate(data, users=args.users, days=args.days, seed=args.seed)
    config = load_config(None, list(args.overrides))
    cells = []
    log_shape = (args.days, args.users)  # (days, users) of the log as read: a --data log's, not the flags' defaults
    for window_days, share, days in blind.story_cells(data, story.START_EPOCH_S, args.windows, args.shares):
        log_shape = days.counts.shape[:2]
        cells.append(score_cell(config, days, window_days, share, args.trees))
        summary = ", ".join(f"{k} {blind._f(cells[-1][k]['f1'])}" for k, _ in METHODS if k in cells[-1])
        print(f"{window_days}d {share:.0%}: {summary}; {time.perf_counter() - t0:.0f}s", flush=True)
    setup = {"story": args.story, "data": str(args.data) if args.data else "written",
             "users": int(log_shape[1]), "days": int(log_shape[0]), "seed": None if args.data else args.seed, "windows": args.windows, "shares": args.shares,
             "trees": args.trees, "scikit_learn": _sklearn_version() if args.trees else None,
             "overrides": args.overrides}
    payload = _report.study_payload("blind_ceiling", t0, argv, setup=setup, cells=cells)
    text = markdown(payload)
    _report.write_study(out, "blind_ceiling", payload, text, suite_json)
    print(text)
    return payload


if __name__ == "__main__":
    main()
