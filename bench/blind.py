"""Forgetting detection on a log we did not write: ``python -m bench.blind`` (issue 10)

    python -m bench.blind --out bench/results/blind [--verdict runs/detection/verdict.json]

The stories of the detection matrix (``fgjax evaluate --detection``) were written by the engineers who tuned
the detector, so leaving one story out still leaves their ideas in. ``bench/blind_story.py`` was written from
issue 10's prose description of the generator its filer used (120 daily windows, 3,000 users, 3-6 interests
among 24 categories; steady, periodic, stopped, fading, late and paused interests) by a helper that did not
read the project's generators or detector; no knob of fgjax is chosen on it. ``bench/blind_story2.py``
(``--story blind_story2``) was written the same way from another description (a shopping app: heavy-tailed users,
weekday rhythms, sessions, whole-user vacations; its docstring) after the verdict's 90-day span had been chosen
with the first log's help, to check that choice; the 140-day span was then judged on both logs at 120 days
(bench/RESULTS.md), so neither is fully blind to the span ladder any more. ``bench/blind_story3.py`` (``--story
blind_story3``: a streaming service; over-dispersed counts, a population-wide holiday, slow drift, user absences and
churn, binges, linear fades to floors) was written the same way after the second log had shown that whole-user
vacations cost loyal interests, to judge what would be done about it (bench/RESULTS.md: a training story with
vacations, tried and not kept); its description was the project's, its code the helper's. This script:

1. generates it as Parquet shards, an items table and the truth (``--users`` x ``--days``, ``--seed``);
2. runs ``fgjax analyze`` on it as a user would (a subprocess: the CLI reads the shards, windows of 1 and 7
   days, writes ``states.parquet``), once per window length and fade definition
   (``analysis.detector.fade_share`` 25 % and 5 %, as the matrix does): at the config's
   ``analysis.detector.verdict_file`` (``auto``: the shipped verdict in weekly windows), with the detector's own
   verdict (``verdict_file`` empty; the same run where the default uses no verdict), and with ``--verdict`` (a
   ``verdict.json`` that ``fgjax evaluate --detection`` writes) when given;
3. scores what ``states.parquet`` says against the truth with the matrix's definitions
   (``fgjax.evaluation.matrix.story_truth`` and ``cell_metrics``: changes judged at least
   ``evaluate.matrix_margin_days`` before the end whose former rate predicts ``evaluate.min_expected_events``
   events after them; loyal = steady, periodic and late), beside "forgotten after N silent windows" at its best
   N on this log itself (a favor to the rule), the rule at the detector's share of loyal interests flagged,
   and the detector (the same kernels in process, ``evaluate.false_alarm_sweep``) at the rule's.

Writes ``OUT/blind.json`` (device, date, versions, every figure) and ``OUT/blind.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench import _report

DAY = 86400.0
# The blind story's kinds as the matrix's (fgjax.data.synthetic.KINDS); a late interest is a loyal one that
# starts late, as in the matrix's stories.
KIND_NAMES = {"steady": "stable", "late": "stable", "periodic": "periodic", "stop": "stopped", "fade": "fading",
              "pause": "reactivated"}
# The generators written blind (bench/NAME.py: generate(out_dir, users, days, seed), START_EPOCH_S, those kinds).
STORIES = ("blind_story", "blind_story2", "blind_story3")


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that say which blind log is written and which of its cells are scored (every study of one)."""
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--story", choices=STORIES, default=STORIES[0], help="the generator: bench/STORY.py")
    p.add_argument("--windows", type=_report.int_list, default=[1, 7], help="window lengths in days (1,7)")
    p.add_argument("--shares", type=lambda t: [float(v) for v in t.split(",")], default=[0.25, 0.05],
                   help="fade definitions: shares of the former rate (0.25,0.05)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.blind", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/blind", help="output folder")
    add_log_arguments(p)
    p.add_argument("--verdict", default="", help="verdict.json of `fgjax evaluate --detection` ('' = detector only)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every fgjax analyze run and the scoring (repeatable)")
    return p


def pair_slots(truth: Any) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The truth table's pairs as dense indices: ``(users, categories, user, slot, slot_of)``, ``users`` the sorted
    user IDs, ``categories`` the sorted interest names, ``user`` / ``slot`` each row's user index and slot (a user's
    k-th row is slot k) and ``slot_of`` ``(users, categories)`` the slot of each pair (-1: none)."""
    users = np.unique(truth["user_id"].to_numpy())
    user = np.searchsorted(users, truth["user_id"].to_numpy())
    order = np.argsort(user, kind="stable")
    slot = np.empty_like(user)
    slot[order] = np.arange(len(user)) - np.searchsorted(user[order], user[order], side="left")
    names = truth["interest"].to_pylist()
    categories = sorted(set(names))
    slot_of = np.full((len(users), len(categories)), -1, np.int64)
    slot_of[user, np.searchsorted(categories, names)] = slot
    return users, categories, user, slot, slot_of


def load_story(data: Path, origin: float, start_epoch_s: float) -> Any:
    """The generated log as ``fgjax.evaluation.matrix.StoryDays``, day 0 the day that starts at ``origin``;
    ``start_epoch_s`` is the generator's day 0 (its ``START_EPOCH_S``).

    Pairs are the truth's rows; a user's k-th row is slot k. Events of a (user, category) the truth does not
    name are an error (the generator and this reading disagree).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fgjax.data import synthetic
    from fgjax.evaluation.matrix import StoryDays

    truth = pq.read_table(data / "truth.parquet")
    users, categories, user, slot, slot_of = pair_slots(truth)

    items = pq.read_table(data / "items.parquet")
    events = pq.read_table(data / "events", columns=["user_id", "item_id", "timestamp"])
    item_index = pc.index_in(events["item_id"], items["item_id"]).to_numpy(zero_copy_only=False)
    item_category = np.array([categories.index(c) if c in categories else -1 for c in items["category"].to_pylist()])
    ev_category = item_category[item_index]
    ev_user = np.searchsorted(users, events["user_id"].to_numpy())
    ev_slot = slot_of[ev_user, np.maximum(ev_category, 0)]
    if np.any(ev_category < 0) or np.any(ev_slot < 0):
        raise SystemExit(f"{data}: events in a (user, category) the truth does not name")
    seconds = events["timestamp"].cast("int64").to_numpy() / _unit_per_second(events.schema.field("timestamp").type)
    day = np.floor((seconds - origin) / DAY).astype(np.int64)
    kind = np.array([synthetic.KINDS.index(KIND_NAMES[k]) for k in truth["kind"].to_pylist()])
    num_days = int(day.max()) + 1
    counts = np.zeros((num_days, len(users), int(slot.max()) + 1), np.float32)
    np.add.at(counts, (day, ev_user, ev_slot), 1.0)

    shift = int(round((start_epoch_s - origin) / DAY))  # the truth's day 0 as a day of this log

    def days_of(column: str, missing: float) -> np.ndarray:
        v = truth[column].to_numpy(zero_copy_only=False).astype(np.float64)
        return np.where(np.isfinite(v), v + shift, missing)

    never = float(num_days)
    change = days_of("change_day", never)
    return StoryDays(
        story="blind", counts=counts, user=user, slot=slot, kind=kind,
        start=truth["start_day"].to_numpy().astype(np.int64) + shift,
        change=change.astype(np.int64), resume=days_of("return_day", -1.0).astype(np.int64),
        fade_floor=np.zeros(len(user)), fade_half_life=truth["half_life_days"].to_numpy(zero_copy_only=False))


def fades_at_share(data: Path, days: Any, share: float) -> Any:
    """``days`` (``load_story``'s) with its fades forgotten on the right days at ``share`` where the truth's fades
    are linear (columns ``fade_floor`` and ``fade_days``: the rate falls from the former rate to ``fade_floor`` of
    it over ``fade_days`` days, below ``share`` of it after ``fade_days (1 - share) / (1 - fade_floor)`` days, never
    when ``fade_floor >= share``); as given otherwise (the exponential fades of the first two stories, half-life
    ``half_life_days``, to zero).

    The matrix's scoring reads a fade as exponential (``fgjax.evaluation.detection.fade_forgotten_days``); a
    linear one is put as the exponential fade forgotten on the same day at this share: floor 0 and half-life
    ``day / log2(1 / share)``, or floor 1 (never forgotten).
    """
    import pyarrow.parquet as pq

    truth = pq.read_table(data / "truth.parquet")
    if "fade_days" not in truth.column_names:
        return days
    floor = truth["fade_floor"].to_numpy(zero_copy_only=False).astype(np.float64)
    length = truth["fade_days"].to_numpy(zero_copy_only=False).astype(np.float64)
    linear = np.isfinite(length)
    below = linear & (floor < share)
    day = np.where(below, length * (1.0 - share) / np.where(below, 1.0 - floor, 1.0), np.inf)
    half_life = np.where(below, day / np.log2(1.0 / share), np.asarray(days.fade_half_life, np.float64))
    return dataclasses.replace(days, fade_floor=np.where(linear & ~below, 1.0, 0.0), fade_half_life=half_life)


def story_cells(data: Path, start_epoch_s: float, windows: list[int],
                shares: list[float]) -> Iterator[tuple[int, float, Any]]:
    """``(window_days, share, days)`` per scored cell of the log at ``data``, windows outer: ``days`` is
    ``load_story``'s, day 0 on ``fgjax analyze``'s window grid (its first window starts at the first event's time
    floored to a whole window since 1970), with the fades at ``share`` (``fades_at_share``)."""
    for window_days in windows:
        origin = np.floor(start_epoch_s / (window_days * DAY)) * window_days * DAY
        days = load_story(data, origin, start_epoch_s)
        for share in shares:
            yield window_days, share, fades_at_share(data, days, share)


def _unit_per_second(arrow_type: Any) -> float:
    return {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[arrow_type.unit]


def run_analyze(data: Path, out: Path, window_days: int, share: float, verdict: str | None,
                overrides: list[str]) -> float:
    """``fgjax analyze`` on the generated log, as a user runs it; returns its wall seconds.

    ``verdict``: None leaves ``analysis.detector.verdict_file`` at the config's (the product's default, ``auto``);
    "" is the detector's own verdict; a path is that file.
    """
    sets = [f"analysis.detector.fade_share={share}", *overrides]
    if verdict is not None:
        sets.append(f"analysis.detector.verdict_file={verdict}")
    cmd = [sys.executable, "-m", "fgjax.cli", "analyze", "--events", str(data / "events"),
           "--items", str(data / "items.parquet"), "--window", f"{window_days}d", "--out", str(out),
           "--no-progress", "--overwrite", *[a for s in sets for a in ("--set", s)]]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fgjax analyze failed ({' '.join(cmd)}):\n{done.stderr.strip()}")
    return time.perf_counter() - t0


def states_forgotten(path: Path, days: Any, data: Path, num_windows: int) -> np.ndarray:
    """``(windows, users, slots)`` bool: the pair's state in ``states.parquet`` is ``forgotten``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fgjax import kernels
    from fgjax.analysis.tables import state_series

    users, categories, _, _, slot_of = pair_slots(pq.read_table(data / "truth.parquet", columns=["user_id", "interest"]))
    table = pq.read_table(path, columns=["user_id", "interest", "window", "state"])
    window = table["window"].to_numpy()
    keep = window < num_windows
    user = np.searchsorted(users, table["user_id"].to_numpy())
    slot = slot_of[user, np.searchsorted(categories, table["interest"].to_pylist())]
    state = pc.index_in(table["state"], value_set=pa.array(kernels.STATE_NAMES)).to_numpy(zero_copy_only=False)
    state = state.astype(np.int8)
    changes = {"user": user[keep], "interest": slot[keep], "window": window[keep], "state": state[keep]}
    codes = state_series(changes, num_windows, days.counts.shape[1], days.counts.shape[2])
    return codes == kernels.FORGOTTEN


def _metrics(flags: np.ndarray, truth: Any, early: int) -> dict[str, Any]:
    from fgjax.evaluation.matrix import cell_metrics

    m = cell_metrics(flags, truth, early)
    m.pop("errors")
    return m


def _best(points: list[dict[str, Any]], cap: float | None = None) -> dict[str, Any] | None:
    """The best-F1 point, with ``cap`` among those flagging at most that share of loyal interests (the matrix's
    ``detection.best_index``)."""
    from fgjax.evaluation.detection import best_index

    i = best_index(points, cap, "loyal_ever_flagged")
    return None if i is None else points[i]


def score_cell(config: Any, days: Any, data: Path, out: Path, window_days: int, share: float,
               verdict: str, overrides: list[str]) -> dict[str, Any]:
    """One (window length, fade share) cell: the product path's answers and the rule's beside them."""
    from fgjax.analysis import verdict_file
    from fgjax.evaluation.detection import silence_alarms
    from fgjax.evaluation.matrix import method_alarms, story_truth, windowed

    e = config.evaluate
    counts = windowed(days, window_days)
    truth = story_truth(days, counts, window_days, share, e.matrix_margin_days, e.min_expected_events)
    early = e.detection_early_windows
    cell: dict[str, Any] = {"window_days": window_days, "share": share, "windows": int(counts.shape[0]),
                            "judged_pairs": int(truth.judged.sum()),
                            "positives": int((truth.judged & truth.positive).sum())}
    # The product as a user runs it (verdict_file as configured: auto lends weekly windows the shipped fit), the
    # detector's own verdict, and the --verdict file. Where the default resolves to no verdict it is the detector.
    analysis = dataclasses.replace(config.analysis, window_seconds=window_days * DAY,
                                   detector=dataclasses.replace(config.analysis.detector, fade_share=share))
    default_file = verdict_file(analysis)
    cell["default_verdict"] = "" if not default_file else config.analysis.detector.verdict_file
    runs: dict[str, str | None] = {"detector": ""} | ({"default": None} if default_file else {})
    runs |= {"learned": verdict} if verdict else {}
    for name, vfile in runs.items():
        folder = out / f"analyze_{name}_{window_days}d_{int(share * 100)}"
        seconds = run_analyze(data, folder, window_days, share, vfile, overrides)
        flags = states_forgotten(folder / "states.parquet", days, data, counts.shape[0])
        cell[name] = {**_metrics(flags, truth, early), "analyze_seconds": round(seconds, 1)}
    cell.setdefault("default", cell["detector"])
    # The detector in process over every window fgjax analyze saw (a last, partial window included: the life
    # budget is capped at the log's windows), scored on the whole ones.
    whole = counts.shape[0]
    days_seen = -(-days.counts.shape[0] // window_days) * window_days
    seen = np.zeros((days_seen, *days.counts.shape[1:]), np.float32)
    seen[: days.counts.shape[0]] = days.counts
    methods = method_alarms(config, seen.reshape(-1, window_days, *seen.shape[1:]).sum(axis=1), share, window_days)
    rule = [{"knob": n, **_metrics(silence_alarms(counts, n), truth, early)} for n in e.silence_sweep]
    detector = [{"knob": q, **_metrics(methods["detector"](q)[:whole], truth, early)} for q in e.false_alarm_sweep]
    # The in-process kernels at the product's budget: the same answers as fgjax analyze (a check of this script).
    in_process = _metrics(methods["detector"](config.analysis.detector.false_alarm)[:whole], truth, early)
    cell["in_process_matches_analyze"] = all(in_process[k] == cell["detector"][k]
                                             for k in ("true_positives", "false_positives", "loyal_ever_flagged"))
    cell["silence_best"] = _best(rule)
    cell["silence_at_detector_loyal"] = _best(rule, cell["detector"]["loyal_ever_flagged"])
    cell["detector_at_silence_loyal"] = _best(detector, cell["silence_best"]["loyal_ever_flagged"])
    cell["detector_sweep"] = detector
    cell["silence_sweep"] = rule
    return cell


def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(payload: dict[str, Any]) -> str:
    lines = ["| windows | share | judged (positives) | fgjax analyze as run (verdict): F1, loyal, again "
             "| the detector alone: F1, P, R, delay, loyal, again | --verdict: F1, loyal, again "
             "| rule at its best N: N, F1, delay, loyal | rule at the detector's loyal share: N, F1 "
             "| detector at the rule's loyal share: false_alarm, F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def short(m: dict[str, Any] | None) -> str:
        if m is None:
            return "-"
        return ", ".join([_f(m["f1"]), _f(m["loyal_ever_flagged"]), _f(m["reactivated_flagged_again"])])

    for c in payload["cells"]:
        d, s = c["detector"], c["silence_best"]
        sm, dm = c["silence_at_detector_loyal"], c["detector_at_silence_loyal"]
        window = "daily" if c["window_days"] == 1 else "%d-day" % c["window_days"]
        default = "%s (%s)" % (short(c["default"]), c["default_verdict"] or "the detector")
        detector = ", ".join([_f(d["f1"]), _f(d["precision"]), _f(d["recall"]), _f(d["median_delay"], ".0f"),
                              _f(d["loyal_ever_flagged"]), _f(d["reactivated_flagged_again"])])
        rule = ", ".join([str(s["knob"]), _f(s["f1"]), _f(s["median_delay"], ".0f"), _f(s["loyal_ever_flagged"])])
        rule_matched = "none" if sm is None else "%s, %s" % (sm["knob"], _f(sm["f1"]))
        detector_matched = "none" if dm is None else "%g, %s" % (dm["knob"], _f(dm["f1"]))
        lines.append(f"| {window} | {c['share']:.0%} | {c['judged_pairs']:,} ({c['positives']:,}) | {default} "
                     f"| {detector} | {short(c.get('learned'))} | {rule} | {rule_matched} | {detector_matched} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    import importlib

    from fgjax.config import load_config

    story = importlib.import_module(f"bench.{args.story}")

    out, suite_json = _report.report_folder(args.out, "blind")  # the suite passes DIR/blind.json
    t0 = time.perf_counter()
    data = out / "data"
    generated = story.generate(data, users=args.users, days=args.days, seed=args.seed)
    config = load_config(None, list(args.overrides))
    cells = []
    for window_days, share, days in story_cells(data, story.START_EPOCH_S, args.windows, args.shares):
        cells.append(score_cell(config, days, data, out, window_days, share, args.verdict, args.overrides))
        c = cells[-1]
        print(f"{window_days}d {share:.0%}: as run F1 {_f(c['default']['f1'])}, detector alone "
              f"{_f(c['detector']['f1'])}, rule best "
              f"N={c['silence_best']['knob']} F1 {_f(c['silence_best']['f1'])}; "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    setup = {"story": args.story, "users": args.users, "days": args.days, "seed": args.seed, "verdict": args.verdict,
             "windows": args.windows, "shares": args.shares, "overrides": args.overrides,
             "events": generated.get("n_events"), "evaluate": dataclasses.asdict(config.evaluate)}
    payload = _report.study_payload("blind", t0, argv, setup=setup, cells=cells)
    text = markdown(payload)
    _report.write_study(out, "blind", payload, text, suite_json)
    print(text)
    return payload


if __name__ == "__main__":
    main()
