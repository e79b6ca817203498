"""Quality evaluation: dense re-ranking, the validation-only sweep, the report script."""

from __future__ import annotations

import dataclasses
import json
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
        "--set", "bpr.dim=8", "--set", "knn.neighbors=10",
    ])
    data = json.loads((out / "quality.json").read_text())
    assert data["benchmark"] == "quality" and data["device"] and data["versions"]["jax"]
    assert [r["protocol"] for r in data["protocols"]] == ["leave_last_out", "time_cutoff"]
    for result in data["protocols"]:
        models = {(r["model"], r["forgetting"]) for r in result["rows"]}
        names = ("popularity", "bpr", "itemknn", "itemknn_last5", "embedding_mlp", "time_sasrec", "sasrec")
        assert models == {(m, f) for m in names for f in ("off", "on")}
        assert result["choices"].startswith("leave-last-out" if result["protocol"] == "leave_last_out" else "global")
        for r in result["rows"]:
            for k in (10, 20):
                for m in ("precision", "recall", "f1", "ndcg", "hit_rate", "mrr", "map"):
                    assert 0.0 <= r[f"{m}@{k}"] <= 1.0
        assert (out / f"training_curves_{result['protocol']}.png").stat().st_size > 1000
    text = md.read_text()
    assert "old text" in text and text.count(quality.SECTION_START) == 1 and "| time_sasrec | off |" in text and "| sasrec | off |" in text
    assert "| itemknn_last5 | off |" in text and "Protocol: leave-last-out per user: events at the same timestamp in input order" in text
    quality.update_results(md, "second", "cmd")  # replaced, not appended
    assert md.read_text().count(quality.SECTION_START) == 1 and "second" in md.read_text()
    assert payload["seconds"] > 0
