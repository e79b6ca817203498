"""Does an interest's silence say on a real log what it says on ours? (issue 10: data we did not generate)

    python -m bench.silences --dataset configs/ml_latest_small.yaml=path/to/ml-latest-small-2016 \\
        --dataset configs/ml100k.yaml=path/to/ml-100k --synthetic classic --out bench/results/silences

Real logs have no ground truth of forgetting, so this asks what a log can answer by itself: of the
silences of an interest that have lasted ``--age-days`` (the interest had ``--min-events`` events or more
before it), which ones last ``--horizon-days`` from their start although the user was still seen afterwards
("gone"), and which end sooner ("back")? Silences that neither end within the horizon nor have the user
seen after it cannot be told apart and are left out. Per data set, in windows of ``--window-days``:

- **base rate**: the share gone. It is the precision of "forgotten after N silent windows" at N = the age;
- **the detector** (``analysis.detector`` of the data set's config, through the analysis' own step,
  ``fgjax.evaluation.detection.detect_series``): the share of these silences it calls forgotten by that age,
  and the share gone among those (its precision, beside the base rate);
- **what tells gone from back** (ROC AUC, ties counted half; above 0.5: higher means gone): the interest's
  events per window before the silence (at a fixed age it ranks silences as the expected events they missed,
  what the detector's silence test weighs), its active windows before it, its share of the user's events
  before it, and the user's events in other interests during the silence.

On the project's own generator (``--synthetic STORY``, a log of ``--synthetic-days`` days generated here)
a busy interest's silence is the evidence the detector is built on; the report shows whether a real log agrees.
Writes ``OUT/silences.json`` (device, date, versions, every figure) and ``OUT/silences.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import _report
from bench.quality import dataset_overrides
from fgjax.evaluation.log_verdict import Silences, log_counts, outcomes, roc_auc, silences, user_last_windows

DAY = 86400.0


def features(counts: np.ndarray, found: Silences, age: int) -> dict[str, np.ndarray]:
    """What each silence looked like at its age: ``(n,)`` per feature."""
    total = np.cumsum(counts, axis=0)  # (windows, users, interests)
    user_total = total.sum(axis=2)  # (windows, users)
    active = counts > 0
    first = active.argmax(axis=0)  # (users, interests)
    last_active = found.start - 1
    events = total[last_active, found.user, found.interest]
    exposure = (found.start - first[found.user, found.interest]).astype(np.float64)
    rate = events / np.maximum(exposure, 1.0)
    at_age = found.start + age - 1
    elsewhere = (user_total[at_age, found.user] - user_total[last_active, found.user]
                 - (total[at_age, found.user, found.interest] - events))
    return {
        "events per window before": rate,  # at a fixed age, ranks as the expected events the silence missed
        "active windows before": np.cumsum(active, axis=0)[last_active, found.user, found.interest].astype(np.float64),
        "share of the user's events before": events / np.maximum(user_total[last_active, found.user], 1.0),
        "user's events elsewhere during it": elsewhere,
    }


def judged_series(config, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(windows, users, interests)`` states of the detector alone and of the product path, and the learned
    verdict's log-odds (NaN where it judges nothing; None without a verdict), with the config's knobs, over
    ``log_counts`` (``analysis.window_seconds`` windows).

    The product path is what ``fgjax analyze`` decides: the detector, and over its evidence the learned verdict of
    ``analysis.detector.verdict_file`` (``auto`` by default: the shipped fit for the log's span), through the
    analysis' own functions (``detector_step``, ``verdict_log_odds``, ``learned_states``). Without a verdict both
    states are the detector's.
    """
    import jax
    import jax.numpy as jnp

    from fgjax import kernels
    from fgjax.analysis import detector_step, learned_states, window_params, window_spec
    from fgjax.analysis.window import verdict_log_odds

    params, spec = window_params(config.analysis, counts.shape[0]), window_spec(config.analysis, counts.shape[2])

    def step(state, window_counts):
        state, out = detector_step(state, window_counts, None, params, spec)
        if not spec.verdict_recent_windows:
            return state, (out.state, out.state, None)
        log_odds = verdict_log_odds(state, out, params, spec)
        return state, (out.state, learned_states(state, out, params, spec, log_odds), log_odds)

    init = kernels.detector_init(counts.shape[1], counts.shape[2], spec.buffer_windows)
    own, product, log_odds = jax.jit(lambda c: jax.lax.scan(step, init, c)[1])(jnp.asarray(counts, jnp.float32))
    return np.asarray(own), np.asarray(product), None if log_odds is None else np.asarray(log_odds)


def study(name: str, config, log, args) -> dict[str, Any]:
    """One data set's row of the report."""
    from fgjax import kernels

    window_seconds = args.window_days * DAY
    age = max(int(round(args.age_days / args.window_days)), 1)
    horizon = max(int(round(args.horizon_days / args.window_days)), age + 1)
    # fgjax analyze's windows (from the log's first window since 1970), so its states are the ones read here.
    config = dataclasses.replace(config, analysis=dataclasses.replace(config.analysis, window_seconds=window_seconds))
    counts = log_counts(config, log)
    found = silences(counts, args.min_events, age)
    gone, decided = outcomes(found, user_last_windows(counts), horizon)
    found = Silences(*(c[decided] for c in found))
    gone = gone[decided]
    own, product, log_odds = judged_series(config, counts)
    at_age = (found.start + age - 1, found.user, found.interest)
    flagged = own[at_age] == kernels.FORGOTTEN
    product_flagged = product[at_age] == kernels.FORGOTTEN
    aucs = {key: roc_auc(value, gone) for key, value in features(counts, found, age).items()}
    if log_odds is not None:  # every judged silence is silent at its age, so the verdict has a log-odds for it
        aucs["learned verdict's log-odds"] = roc_auc(log_odds[at_age], gone)
    report = log.report
    return {
        "name": name, "users": int(log.num_users), "interests": int(counts.shape[2]), "events": int(len(log.user)),
        "rows_read": int(report.rows_read), "rows_rejected": dict(report.rejected),
        "windows": int(counts.shape[0]), "window_days": args.window_days, "age_windows": age,
        "horizon_windows": horizon, "silences": int(len(gone)), "gone": int(gone.sum()),
        "base_rate": float(gone.mean()) if len(gone) else None,
        "detector_flagged": float(flagged.mean()) if len(gone) else None,
        "detector_precision": float(gone[flagged].mean()) if flagged.any() else None,
        "verdict": log_odds is not None,
        "product_flagged": float(product_flagged.mean()) if len(gone) else None,
        "product_precision": float(gone[product_flagged].mean()) if product_flagged.any() else None,
        "auc": aucs,
    }


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["datasets"]
    if not rows:
        return "no data sets"
    keys = list(dict.fromkeys(k for r in rows for k in r["auc"]))  # the verdict's AUC only where one judged
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    a = payload["setup"]
    lines = [f"Silences of {a['age_days']:g} days (interests with {a['min_events']:g}+ events before), windows of "
             f"{a['window_days']:g} days; gone = silent {a['horizon_days']:g} days from the start while the user "
             "was seen after. The product path: the detector and the learned verdict, as `fgjax analyze` decides.",
             "",
             "| data set | silences decided | gone (= the rule's precision at N = age) | detector: flagged by then "
             "| detector: precision | product path: flagged | product path: precision | "
             + " | ".join(f"AUC: {k}" for k in keys) + " |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in keys) + " |"]
    for r in rows:
        product = (f"{fmt(r['product_flagged'])} | {fmt(r['product_precision'])}" if r["verdict"]
                   else "no verdict | -")
        lines.append(f"| {r['name']} | {r['silences']:,} | {fmt(r['base_rate'])} | {fmt(r['detector_flagged'])} "
                     f"| {fmt(r['detector_precision'])} | {product} | "
                     + " | ".join(fmt(r["auc"].get(k)) for k in keys) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from bench.quality import dataset_arguments

    p = argparse.ArgumentParser(prog="python -m bench.silences", description=__doc__.split("\n\n")[0])
    dataset_arguments(p)
    p.add_argument("--synthetic", action="append", default=[], metavar="STORY",
                   help="also a log of this synthetic.story, generated here (repeatable)")
    p.add_argument("--synthetic-days", type=int, default=364)
    p.add_argument("--synthetic-users", type=int, default=2000)
    p.add_argument("--window-days", type=float, default=7.0)
    p.add_argument("--age-days", type=float, default=28.0, help="silences that lasted this long are judged")
    p.add_argument("--horizon-days", type=float, default=91.0, help="gone: silent this long from the start")
    p.add_argument("--min-events", type=float, default=3.0, help="events of the interest before the silence")
    p.add_argument("--out", default="bench/results/silences", help="output folder")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from fgjax.config import load_config
    from fgjax.data.reader import read_events
    from fgjax.data.synthetic import generate
    from fgjax.errors import FgjaxError

    out, suite_json = _report.report_folder(args.out, "silences")  # the suite passes DIR/silences.json
    t0 = time.perf_counter()
    rows = []
    try:
        for spec in args.dataset:
            path, _, folder = spec.partition("=")
            config = load_config(path, dataset_overrides(path, folder or None) + args.overrides)
            rows.append(study(Path(path).stem, config, read_events(config.data), args))
            print(f"{rows[-1]['name']}: {rows[-1]['rows_read']:,} rows read, rejected {rows[-1]['rows_rejected'] or 0}; "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        for story in args.synthetic:
            config = load_config(None, [f"synthetic.story={story}", f"synthetic.num_days={args.synthetic_days}",
                                        f"synthetic.num_users={args.synthetic_users}", "synthetic.bad_row_fraction=0",
                                        *args.overrides])
            with tempfile.TemporaryDirectory() as tmp:
                paths = generate(config.synthetic, tmp)
                log = read_events(config.data, path=str(paths.events_dir), items_path=paths.items_path)
            rows.append(study(f"synthetic {story}", config, log, args))
            print(f"{rows[-1]['name']}: {time.perf_counter() - t0:.0f}s", flush=True)
    except FgjaxError as exc:
        print(f"fgjax: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup = {k: getattr(args, k) for k in ("window_days", "age_days", "horizon_days", "min_events")}
    payload = _report.study_payload("silences", t0, argv, setup=setup, datasets=rows)
    text = markdown(payload)
    _report.write_study(out, "silences", payload, text, suite_json)
    print(text)
    return payload


if __name__ == "__main__":
    main()
