"""Quality evaluation: dense re-ranking, the validation-only sweep, the report script."""

from __future__ import annotations

import dataclasses
import json
import time
import types
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from fgjax.evaluation import quality as Q
from fgjax.config import Config, load_config
from fgjax.data.protocol import from_split
from fgjax.data.split import leave_last_out

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def test_top_k_masks_and_reweights_like_numpy():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.1, 1, (6, 20)).astype(np.float32)
    exclude = rng.uniform(size=(6, 20)) < 0.3
    ui = rng.uniform(0.01, 1, (6, 4)).astype(np.float32)
    column = rng.integers(0, 4, 20).astype(np.int32)
    for strength in (0.0, 0.5, 1.0):
        got = Q.top_k(scores, exclude, 5, ui, column, strength)
        want_scores = np.where(exclude, -np.inf, scores * ui[:, column] ** strength)
        np.testing.assert_array_equal(got, np.argsort(-want_scores, axis=1, kind="stable")[:, :5])
    np.testing.assert_array_equal(Q.top_k(scores, exclude, 5, ui, column, 0.0), Q.top_k(scores, exclude, 5))


def test_sweep_uses_validation_only_and_off_wins_ties(small_log):
    log = small_log
    split = leave_last_out(log.user, log.item, log.timestamp, log.num_users)
    p = from_split(split, log.user, log.item, log.timestamp)
    config = dataclasses.replace(Config(), quality=dataclasses.replace(
        Config().quality, sweep_alpha=[0.0, 2.0], sweep_half_life_windows=[4.0], sweep_strength=[0.0, 1.0]))
    analyses = {4.0: Q.stage_forgetting(config, log, p.validation, 4.0)}
    exclude = Q.exclusion_matrix(p.validation, log.num_items)
    flat = np.ones((len(p.validation.users), log.num_items), np.float32)  # no model signal at all
    sweep = Q.sweep_forgetting(config, log, flat, exclude, p.validation, analyses)
    assert len(sweep.rows) == 1 + 2  # off, then alpha 0/2 at strength 1
    # Users stick to one category here, so re-ranking by interest must beat a flat model on validation.
    assert sweep.best["strength"] == 1.0 and sweep.best["ndcg@10"] > sweep.rows[0]["ndcg@10"]
    # A stage whose targets cannot be found by any re-ranking keeps "off" (the first maximum).
    hopeless = dataclasses.replace(p.validation, targets=np.full_like(p.validation.targets, log.num_items + 5))
    assert Q.sweep_forgetting(config, log, flat, exclude, hopeless, analyses).best["strength"] == 0.0
    states = Q.target_interest_states(analyses[4.0], log, p.validation)
    assert math.isclose(sum(states["share_by_state"].values()), 1.0, abs_tol=1e-3)
    assert states["share_in_top_interest"] > 0.5


@pytest.mark.slow
def test_quality_report_end_to_end(tmp_path):
    from bench import quality
    from fgjax.data.synthetic import generate

    cfg = load_config(None, ["synthetic.num_users=60", "synthetic.num_items=60", "synthetic.num_days=30",
                             "synthetic.bad_row_fraction=0"])
    paths = generate(cfg.synthetic, tmp_path / "data")
    out = tmp_path / "q"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nold text\n")
    payload = quality.main([
        "--config", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--results-md", str(md), "--quiet",
        "--set", f"data.path={paths.events_dir}", "--set", f"data.items_path={tmp_path / 'data' / 'items.parquet'}",
        "--set", "data.format=parquet", "--set", "train.epochs=1", "--set", "train.batch_size=64",
        "--set", "sequence.epochs=2", "--set", "sequence.dim=8", "--set", "sequence.layers=1",
        "--set", "sequence.batch_size=16", "--set", "sequence.max_len=8",
        "--set", "quality.sweep_alpha=[0,2]", "--set", "quality.sweep_half_life_windows=[4]",
        "--set", "quality.sweep_strength=[0,1]", "--set", "bpr.epochs=2", "--set", "bpr.batch_size=64",
        "--set", "bpr.dim=8", "--set", "knn.neighbors=10", "--set", "quality.tuning_trials=2",
        "--set", "quality.tuning={bpr: [bpr.learning_rate=0.001, bpr.learning_rate=0.01], "
                 "forgetting_sasrec: [sequence.dropout=0.1, sequence.dropout=0.3]}",
        "--set", "analysis.detector.kind=level",  # the harness is under test here, not the detector (tested apart)
        # One protocol: the time cut-off's stages are tested in test_protocol, its header below.
        "--set", "quality.protocols=[leave_last_out]",
    ])
    data = json.loads((out / "quality.json").read_text())
    assert data["benchmark"] == "quality" and data["device"] and data["versions"]["jax"]
    (dataset,) = data["datasets"]
    assert dataset["name"] == "quickstart" and dataset["categories"] > 0
    assert [r["protocol"] for r in dataset["protocols"]] == ["leave_last_out"]
    assert quality.protocol_choices("time_cutoff", load_config(None)).startswith("global time cut-offs at the 0.8 / 0.9")
    for result in dataset["protocols"]:
        models = {(r["model"], r["forgetting"]) for r in result["rows"]}
        names = ("popularity", "bpr", "itemknn", "itemknn_last5", "embedding_mlp", "time_sasrec", "sasrec",
                 "forgetting_sasrec", "forgetting_sasrec_nodecay")
        assert models == {(m, f) for m in names for f in ("off", "on")}
        # The tuned row tried both trials and kept one; the others ran as configured.
        bpr = next(r for r in result["rows"] if r["model"] == "bpr" and r["forgetting"] == "off")
        assert bpr["trials"] == 2 and bpr["chosen"] in ("bpr.learning_rate=0.001", "bpr.learning_rate=0.01")
        assert bpr["tuning_seconds"] >= bpr["train_seconds"] > 0  # every trial's time, the kept one's included
        assert bpr["pruned_trials"] in (0, 1)  # only a later trial can be pruned
        # The no-decay ablation trains once, with the trial forgetting_sasrec chose: one change at a time.
        off = {r["model"]: r for r in result["rows"] if r["forgetting"] == "off"}
        ablation, ablated = off["forgetting_sasrec_nodecay"], off["forgetting_sasrec"]
        assert ablated["trials"] == 2 and not ablated["carried"]
        assert ablation["trials"] == 1 and ablation["carried"] and ablation["carried_from"] == "forgetting_sasrec"
        assert ablation["chosen"] == ablated["chosen"] in ("sequence.dropout=0.1", "sequence.dropout=0.3")
        assert f"| forgetting_sasrec_nodecay | off | 1, as forgetting_sasrec: {ablated['chosen']} |" in md.read_text()
        # Every planned comparison is reported on all users, with a CI around its mean difference.
        labels = [c["comparison"] for c in result["comparisons"]["all"]]
        assert "re-ranking: time_sasrec" in labels and "session recency: last items vs whole history" in labels
        assert {"in-model forgetting vs none", "in-model forgetting vs re-ranking",
                "learned day-scale decay vs interest presence"} <= set(labels)
        for c in result["comparisons"]["all"]:
            assert c["ci_low"] <= c["mean_difference"] <= c["ci_high"] and c["users"] == result["test_users"]
            assert c["better"] + c["worse"] + c["tied"] == c["users"] and c["detectable_difference"] >= 0
        assert result["choices"].startswith("leave-last-out" if result["protocol"] == "leave_last_out" else "global")
        for r in result["rows"]:
            for k in (10, 20):
                for m in ("precision", "recall", "f1", "ndcg", "hit_rate", "mrr", "map"):
                    assert 0.0 <= r[f"{m}@{k}"] <= 1.0
        assert (out / "quickstart" / f"training_curves_{result['protocol']}.png").stat().st_size > 1000
    text = md.read_text()
    assert "old text" in text and text.count(quality.SECTION_START) == 1 and "| time_sasrec | off |" in text and "| sasrec | off |" in text
    assert "| train s | all trials s | epochs |" in text
    assert "| itemknn_last5 | off |" in text and "Protocol: leave-last-out per user: events at the same timestamp in input order" in text
    quality.update_results(md, "second", "cmd")  # replaced, not appended
    assert md.read_text().count(quality.SECTION_START) == 1 and "second" in md.read_text()
    assert payload["seconds"] > 0


def test_later_protocols_train_the_trial_the_first_one_chose(tmp_path, monkeypatch):
    from bench import quality
    from fgjax.data.synthetic import generate

    cfg = load_config(None, ["synthetic.num_users=50", "synthetic.num_items=40", "synthetic.num_days=30",
                             "synthetic.bad_row_fraction=0"])
    paths = generate(cfg.synthetic, tmp_path / "data")
    overrides = [
        f"data.path={paths.events_dir}", f"data.items_path={tmp_path / 'data' / 'items.parquet'}",
        "data.format=parquet", "train.epochs=2", "train.batch_size=64", "sequence.epochs=1", "sequence.dim=8",
        "sequence.layers=1", "sequence.batch_size=16", "sequence.max_len=8", "quality.baselines=false",
        "quality.sasrec_baseline=false", "quality.in_model_forgetting=false", "quality.sweep_alpha=[0]",
        "quality.sweep_half_life_windows=[4]", "quality.sweep_strength=[0,1]", "analysis.detector.kind=level",
        "quality.tuning_trials=2", "quality.prune_after_epochs=0",
        "quality.tuning={embedding_mlp: [train.learning_rate=0.001, train.learning_rate=0.05]}",
    ]
    data = quality.run_dataset(str(ROOT / "configs" / "quickstart.yaml"), overrides, tmp_path / "q", None,
                               lambda _: None)
    first, second = data["protocols"]
    assert "tuned_on" not in first and second["tuned_on"] == "leave_last_out"

    def row(result):
        return next(r for r in result["rows"] if r["model"] == "embedding_mlp" and r["forgetting"] == "off")

    tuned, carried = row(first), row(second)
    assert tuned["trials"] == 2 and not tuned["carried"]
    assert carried["trials"] == 1 and carried["carried"] and carried["chosen"] == tuned["chosen"]
    assert carried["tuning_seconds"] == carried["train_seconds"]  # one trial: nothing else was trained
    assert "trains once with the trial its tuning under leave_last_out chose" in "\n".join(
        quality._protocol_markdown(second, [10, 20]))
    assert "| embedding_mlp | off | 1, carried: train.learning_rate=" in "\n".join(
        quality._protocol_markdown(second, [10, 20]))
    # retune_per_protocol: every protocol is asked to tune (no trials handed over), and none is marked carried.
    asked = []

    def record(config, log, name, out, peer, report, trials=None):
        asked.append((name, trials))
        return {"protocol": name}

    monkeypatch.setattr(quality, "run_protocol", record)
    again = quality.run_dataset(str(ROOT / "configs" / "quickstart.yaml"),
                                overrides + ["quality.retune_per_protocol=true"], tmp_path / "q2", None, lambda _: None)
    assert asked == [("leave_last_out", None), ("time_cutoff", None)]
    assert all("tuned_on" not in r for r in again["protocols"])


def test_a_failing_report_cancels_its_queued_forgetting_analyses(tmp_path, monkeypatch):
    import threading

    from bench import quality
    from fgjax.data.synthetic import generate
    from fgjax.evaluation import quality as Q

    cfg = load_config(None, ["synthetic.num_users=40", "synthetic.num_items=30", "synthetic.num_days=20",
                             "synthetic.bad_row_fraction=0"])
    paths = generate(cfg.synthetic, tmp_path / "data")
    overrides = [
        f"data.path={paths.events_dir}", f"data.items_path={tmp_path / 'data' / 'items.parquet'}",
        "data.format=parquet", "train.epochs=1", "train.batch_size=32", "quality.baselines=false",
        "quality.sasrec_baseline=false", "sequence.batch_size=8",
        "quality.in_model_forgetting=false", "sequence.epochs=1", "sequence.dim=8", "sequence.layers=1",
        "sequence.max_len=8", "quality.protocols=[leave_last_out]", "quality.sweep_half_life_windows=[1, 2, 4, 8]",
    ]
    ran, release = [], threading.Event()

    def slow_analysis(*args):
        ran.append(args[-1])
        release.wait(5)  # the two workers hold here until the sweep has failed
        raise RuntimeError("not read")

    def failing_sweep(*args, **kwargs):
        raise RuntimeError("sweep failed")

    monkeypatch.setattr(Q, "stage_forgetting", slow_analysis)
    monkeypatch.setattr(Q, "sweep_forgetting", failing_sweep)
    monkeypatch.setattr(quality.concurrent.futures.ThreadPoolExecutor, "shutdown",
                        _releasing(quality.concurrent.futures.ThreadPoolExecutor.shutdown, release))
    with pytest.raises(RuntimeError, match="sweep failed"):
        quality.run_dataset(str(ROOT / "configs" / "quickstart.yaml"), overrides, tmp_path / "q", None,
                            lambda _: None)
    release.set()  # were any queued analysis left, the freed workers would now run it
    time.sleep(0.5)
    assert len(ran) == 2  # 8 analyses queued (4 half-lives x 2 stages), 2 running: the other 6 cancelled


def _releasing(shutdown, event):
    # The caller's own cancel_futures (the behavior under test) empties the queue first, without waiting; only then
    # are the workers freed (were they freed first, one could take a queued analysis before the cancel), then the
    # caller's shutdown as called.
    def wrapped(self, *args, **kwargs):
        shutdown(self, wait=False, cancel_futures=kwargs.get("cancel_futures", False))
        event.set()
        return shutdown(self, *args, **kwargs)

    return wrapped


def test_ablation_rows_train_under_the_first_protocol_unless_asked():
    from bench.quality import ABLATION_OF, row_models

    config = load_config(None)
    assert "forgetting_sasrec_nodecay" in row_models(config)
    later = row_models(config, first_protocol=False)
    assert not set(ABLATION_OF) & set(later) and "forgetting_sasrec" in later
    every = load_config(None, ["quality.ablations_every_protocol=true"])
    assert "forgetting_sasrec_nodecay" in row_models(every, first_protocol=False)


def test_long_history_users_match_a_loop():
    from bench.quality import long_history_users
    from fgjax.data.protocol import Stage
    from fgjax.data.split import ItemSets

    rng = np.random.default_rng(7)
    n, users = 300, 12
    user = rng.integers(0, users, n)
    ts = rng.uniform(0, 400 * 86400.0, n)
    known = rng.random(n) < 0.7
    log = types.SimpleNamespace(user=user, timestamp=ts, num_users=users)
    judged = np.array([0, 3, 5, 11], np.int32)
    stage = Stage(judged, np.zeros((4, 1), np.int32), known, ItemSets(np.zeros(users + 1, np.int64),
                                                                      np.zeros(0, np.int32)), np.zeros(users))
    expect = []
    for u in judged:
        t = [ts[i] for i in range(n) if known[i] and user[i] == u]
        expect.append(bool(t) and max(t) - min(t) >= 180 * 86400.0)
    assert long_history_users(log, stage, 180.0).tolist() == expect


def test_comparisons_are_paired_and_state_the_detectable_difference():
    from bench.quality import compare, planned_comparisons

    rows = ["bpr", "itemknn", "itemknn_last5", "time_sasrec", "sasrec", "forgetting_sasrec",
            "forgetting_sasrec_nodecay"]
    plan = planned_comparisons(rows)
    labels = [p[0] for p in plan]
    assert "re-ranking: forgetting_sasrec_nodecay" not in labels and len(labels) == len(set(labels))
    assert ("in-model forgetting vs re-ranking", "forgetting_sasrec", "time_sasrec+rerank") in plan
    rng = np.random.default_rng(0)
    per_user = {name: rng.random(50) for name in rows + [f"{r}+rerank" for r in rows]}
    config = types.SimpleNamespace(evaluate=types.SimpleNamespace(bootstrap_seed=0, bootstrap_resamples=500))
    mask = np.arange(50) < 30
    out = compare(per_user, plan, mask, config)
    assert len(out) == len(plan)
    for c, (_, a, b) in zip(out, plan):
        diff = per_user[a][mask] - per_user[b][mask]
        assert c["users"] == 30 and np.isclose(c["mean_difference"], diff.mean())
        assert np.isclose(c["detectable_difference"], 2.8 * diff.std(ddof=1) / np.sqrt(30))
    assert compare(per_user, plan, np.zeros(50, bool), config) == []


def test_tuning_budget_is_the_same_for_every_model():
    from bench.quality import trial_overrides
    from fgjax.errors import ConfigError

    config = load_config(None, ["quality.tuning_trials=2",
                                "quality.tuning={bpr: ['bpr.learning_rate=0.01; bpr.dim=8', bpr.dim=16]}"])
    assert trial_overrides(config, "bpr") == [("bpr.learning_rate=0.01", "bpr.dim=8"), ("bpr.dim=16",)]
    assert trial_overrides(config, "itemknn") == [()]
    with pytest.raises(ConfigError, match="quality.tuning.bpr: 3 trials, expected 1 to quality.tuning_trials=2"):
        load_config(None, ["quality.tuning_trials=2", "quality.tuning={bpr: [bpr.dim=8, bpr.dim=9, bpr.dim=10]}"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["quality.tuning={bpr: [nonsense]}"])


def test_a_trial_is_pruned_when_behind_the_leader_at_the_same_epoch():
    from bench.quality import Pruner

    # The leader: 0.02 at epoch 2, 0.05 at 4, 0.07 at 6, then no better.
    leader = [{"epoch": e, "val_ndcg@10": v} for e, v in ((2, 0.02), (4, 0.05), (6, 0.07), (8, 0.06), (10, 0.07))]
    leader.insert(1, {"epoch": 3, "train_loss": 1.0})  # epochs without validation are skipped

    def run(curve, after=4):
        pruner = Pruner(leader, after)
        for epoch, value in curve:
            if pruner({"epoch": epoch, "val_ndcg@10": value}):
                break
        return pruner.pruned_at

    # Level with the leader's curve all along (its best so far counts, not its last value): never pruned.
    assert run([(2, 0.0), (4, 0.05), (6, 0.07), (8, 0.0), (30, 0.0)]) is None
    assert run([(2, 0.0), (4, 0.049)]) == 4  # behind the leader's 0.05 at epoch 4
    assert run([(2, 0.0), (4, 0.0), (6, 0.07)], after=6) is None  # the grace: a slow starter judged from epoch 6
    assert run([(2, 0.0), (4, 0.05), (6, 0.069)]) == 6
    assert run([(5, 0.05), (7, 0.06)]) == 7  # other epochs: the leader's best up to that epoch (0.05, then 0.07)
    # The grace is also a third of the epochs the leader needed: a leader at its best in epoch 42 judges from 14.
    late = [{"epoch": e, "val_ndcg@10": e / 1000} for e in range(2, 43, 2)]
    pruner = Pruner(late, 4)
    assert not any(pruner({"epoch": e, "val_ndcg@10": 0.0}) for e in range(2, 14, 2)) and pruner.grace == 14
    assert pruner({"epoch": 14, "val_ndcg@10": 0.0}) and pruner.pruned_at == 14
    assert run([(2, 0.0), (4, 0.05), (6, 0.07), (40, 0.07)]) is None  # past the leader's end: its best
    assert run([(2, 0.0), (4, 0.0), (6, 0.0)], after=0) is None  # 0: never
    assert Pruner([], 4)({"epoch": 50, "val_ndcg@10": 0.0}) is False  # a leader without validations: never


def test_dataset_folder_points_the_config_at_its_files(tmp_path):
    from bench.quality import dataset_overrides

    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
    assert dataset_overrides(str(ROOT / "configs" / "ml_latest_small.yaml"), str(tmp_path)) == [
        f"data.path={tmp_path / 'ratings.csv'}", f"data.items_path={tmp_path / 'movies.csv'}"]
    assert dataset_overrides(str(ROOT / "configs" / "ml100k.yaml"), str(tmp_path)) == [f"data.path={tmp_path}"]
    assert dataset_overrides(str(ROOT / "configs" / "ml100k.yaml"), None) == []
