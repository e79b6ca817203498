"""bench.seeds: seed replicates of the sequence models and the comparisons across them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fgjax.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_across_seeds_is_a_t_interval_over_the_seeds():
    from bench.seeds import across_seeds

    rng = np.random.default_rng(3)
    d = rng.normal(0.01, 0.01, size=3)
    got = across_seeds(list(d))
    sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # Student's t, 2 degrees of freedom, 97.5 % (tables)
    assert got["seeds"] == 3
    assert got["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert got["sd"] == pytest.approx(sd, rel=1e-12)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-9, abs=1e-12)
    one = across_seeds([0.02])
    assert one["mean"] == 0.02 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])
    with pytest.raises(ValueError, match="no seeds"):
        across_seeds([])


def test_seed_comparisons_pair_users_per_seed_and_on_the_seed_average():
    from bench.seeds import seed_comparisons

    rng = np.random.default_rng(5)
    users = 200
    per_seed = {s: {"a": rng.random(users) * (rng.random(users) < 0.2), "b": rng.random(users) * (rng.random(users) < 0.2)}
                for s in (0, 1, 2)}
    config = load_config(None, ["evaluate.bootstrap_resamples=200"])
    plan = [("a vs b", "a", "b"), ("a vs missing", "a", "c")]
    (c,) = seed_comparisons(per_seed, plan, config)  # the comparison with an untrained row is left out
    assert (c["comparison"], c["treatment"], c["baseline"]) == ("a vs b", "a", "b")
    for s in (0, 1, 2):
        each = c["per_seed"][str(s)]
        assert each["mean_difference"] == pytest.approx(float(np.mean(per_seed[s]["a"] - per_seed[s]["b"])))
        assert each["ci_low"] <= each["mean_difference"] <= each["ci_high"]
    differences = [float(np.mean(per_seed[s]["a"] - per_seed[s]["b"])) for s in (0, 1, 2)]
    assert c["across_seeds"]["mean"] == pytest.approx(np.mean(differences))
    assert c["across_seeds"]["sd"] == pytest.approx(np.std(differences, ddof=1))
    # On the seed-averaged scores: each user's mean over seeds, then the paired test over users.
    mean_a = sum(per_seed[s]["a"] for s in (0, 1, 2)) / 3
    mean_b = sum(per_seed[s]["b"] for s in (0, 1, 2)) / 3
    averaged = c["seed_averaged"]
    assert averaged["mean_difference"] == pytest.approx(float(np.mean(mean_a - mean_b)))
    assert averaged["better"] == int(np.sum(mean_a > mean_b)) and averaged["worse"] == int(np.sum(mean_a < mean_b))
    assert averaged["users"] == users


def test_two_level_bootstrap_resamples_seeds_and_users_like_a_plain_loop():
    from bench.seeds import two_level_bootstrap

    rng = np.random.default_rng(8)
    d = rng.normal(0.0, 0.05, size=(4, 60)) + rng.normal(0.01, 0.01, size=(4, 1))  # seed effects + user noise
    got = two_level_bootstrap(d, resamples=300, seed=11)
    # The same draws, one resample at a time: seeds with replacement, then users with replacement.
    draw = np.random.default_rng(11)
    picked = draw.integers(0, 4, size=(300, 4))
    users = draw.integers(0, 60, size=(300, 60))
    means = np.array([np.mean([d[s][users[b]].mean() for s in picked[b]]) for b in range(300)])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), rel=1e-12)
    assert got["share_at_or_below_zero"] == pytest.approx(np.mean(means <= 0))
    assert got["mean_difference"] == pytest.approx(d.mean())
    # Wider than resampling users alone on the seed-averaged differences: the seeds' spread is in it.
    avg = d.mean(axis=0)
    users_only = np.percentile(avg[np.random.default_rng(0).integers(0, 60, size=(2000, 60))].mean(axis=1), [2.5, 97.5])
    wide = two_level_bootstrap(d + np.array([[-0.05], [0.05], [-0.05], [0.05]]), resamples=2000)
    assert wide["ci_high"] - wide["ci_low"] > users_only[1] - users_only[0]
    # One seed: the users' bootstrap alone.
    one = two_level_bootstrap(d[:1], resamples=200, seed=1)
    assert one["ci_low"] <= d[0].mean() <= one["ci_high"]
    with pytest.raises(ValueError, match="seeds, users"):
        two_level_bootstrap(np.zeros(5))


def test_sign_test_counts_the_seeds_and_gives_the_exact_binomial_p():
    from bench.seeds import sign_test

    assert sign_test([0.01, 0.02, 0.003, 0.004, 0.005]) == {"ahead": 5, "behind": 0, "level": 0, "p": 0.0625}
    got = sign_test([0.01, -0.02, 0.0, 0.004])
    assert (got["ahead"], got["behind"], got["level"]) == (2, 1, 1) and got["p"] == pytest.approx(1.0)
    assert sign_test([0.0, 0.0])["p"] == 1.0


@pytest.mark.slow
def test_seed_replicates_end_to_end(tmp_path):
    from bench import seeds
    from fgjax.data.synthetic import generate

    cfg = load_config(None, ["synthetic.num_users=60", "synthetic.num_items=60", "synthetic.num_days=30",
                             "synthetic.bad_row_fraction=0"])
    paths = generate(cfg.synthetic, tmp_path / "data")
    out = tmp_path / "s"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nold text\n")
    args = ["--config", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--results-md", str(md),
            "--quiet", "--seeds", "0,1", "--rows", "time_sasrec,forgetting_sasrec",
            "--set", f"data.path={paths.events_dir}", "--set", f"data.items_path={tmp_path / 'data' / 'items.parquet'}",
            "--set", "data.format=parquet", "--set", "sequence.epochs=2", "--set", "sequence.dim=8",
            "--set", "sequence.layers=1", "--set", "sequence.batch_size=16", "--set", "sequence.max_len=8"]
    payload = seeds.main(args)
    data = json.loads((out / "seeds.json").read_text())
    assert data["benchmark"] == "seeds" and data["device"] and data["versions"]["jax"]
    (dataset,) = data["datasets"]
    assert dataset["seeds"] == [0, 1] and dataset["rows"] == ["time_sasrec", "forgetting_sasrec"]
    assert {(r["seed"], r["row"]) for r in dataset["runs"]} == {(s, r) for s in (0, 1) for r in dataset["rows"]}
    assert all(r["trials"] == 1 and r["epochs"] >= 1 for r in dataset["runs"])
    # Each seed trains its own network (initialization, dropout, example order): the first epoch's loss differs.
    losses = {r["seed"]: r["first_epoch_loss"] for r in dataset["runs"] if r["row"] == "time_sasrec"}
    assert set(losses) == {0, 1} and losses[0] != losses[1]
    (c,) = dataset["comparisons"]
    assert c["comparison"] == "in-model forgetting vs none" and set(c["per_seed"]) == {"0", "1"}
    both = c["seeds_and_users"]
    assert both["ci_low"] <= both["mean_difference"] <= both["ci_high"] and 0 <= both["share_at_or_below_zero"] <= 1
    assert c["across_seeds"]["sign_test"]["ahead"] + c["across_seeds"]["sign_test"]["behind"] <= 2
    saved = np.load(out / dataset["name"] / "per_user_ndcg.npz")
    per_user = {r["seed"]: float(saved[f"time_sasrec/seed{r['seed']}"].mean()) for r in dataset["runs"]
                if r["row"] == "time_sasrec"}
    assert per_user == pytest.approx({r["seed"]: r["test_ndcg@10"] for r in dataset["runs"] if r["row"] == "time_sasrec"})
    assert len(saved["test_users"]) == dataset["test_users"]
    # Adding a seed to that run: seeds 0 and 1 are taken from it, only seed 2 trains; a changed configuration
    # is refused.
    grown = seeds.main([*args, "--seeds", "0,1,2", "--reuse", str(out), "--out", str(tmp_path / "grown"),
                        "--results-md", str(tmp_path / "other.md")])
    (g,) = grown["datasets"]
    assert {(r["seed"], r["row"]): r["reused"] for r in g["runs"]} == {
        (s, r): s < 2 for s in (0, 1, 2) for r in dataset["rows"]}
    before = {(r["seed"], r["row"]): r["test_ndcg@10"] for r in dataset["runs"]}
    assert all(r["test_ndcg@10"] == before[r["seed"], r["row"]] for r in g["runs"] if r["reused"])
    assert "reused)" in (tmp_path / "grown" / "seeds.md").read_text()
    with pytest.raises(SystemExit, match="another configuration"):
        seeds.main([*args, "--reuse", str(out), "--out", str(tmp_path / "x"), "--set", "sequence.dim=16"])
    with pytest.raises(SystemExit, match="expected .*seeds.json"):
        seeds.main([*args, "--reuse", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])
    summary = dataset["summary"]["time_sasrec"]
    tests = [r["test_ndcg@10"] for r in dataset["runs"] if r["row"] == "time_sasrec"]
    assert summary["mean"] == pytest.approx(np.mean(tests)) and summary["min"] == min(tests)
    text = md.read_text()
    assert "old text" in text and text.count(seeds.SECTION_START) == 1 and "| time_sasrec |" in text
    assert "| in-model forgetting vs none (forgetting_sasrec - time_sasrec) |" in text
    # Each data set has its own subsection: a run over another one adds its own and keeps this one; a rerun
    # of this one replaces its subsection only.
    other = {**payload, "command": "python -m bench.seeds OTHER", "datasets": [{**dataset, "name": "other"}]}
    seeds.update_results(md, other)
    text = md.read_text()
    assert text.count(seeds.SECTION_START) == 1 and text.count("### other (") == 1
    assert text.count(f"### {dataset['name']} (") == 1 and text.index(f"### {dataset['name']} (") < text.index("### other (")
    rerun = {**payload, "command": "python -m bench.seeds AGAIN"}
    seeds.update_results(md, rerun)
    text = md.read_text()
    assert text.count(f"### {dataset['name']} (") == 1 and "python -m bench.seeds AGAIN" in text
    assert "python -m bench.seeds OTHER" in text and text.index("### other (") < text.index(seeds.SECTION_END)
    assert payload["seconds"] > 0
    with pytest.raises(SystemExit, match="unknown nope"):
        seeds.main([*args, "--rows", "nope"])
    with pytest.raises(SystemExit, match="--seeds: each value once"):
        seeds.main([*args, "--seeds", "0,0"])
