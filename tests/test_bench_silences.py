"""bench/silences.py: the features of a silence and the report on a small generated log (the silences, their
outcomes and ROC AUC: tests/test_log_verdict.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import silences as S


def test_features_read_the_history_before_the_silence_and_the_user_during_it():
    counts = np.zeros((12, 1, 2), np.float32)
    counts[[0, 1, 2, 3], 0, 0] = [2, 0, 1, 3]  # 6 events in 4 windows, 3 of them active; silent from 4
    counts[[1, 5, 6, 9], 0, 1] = [4, 1, 2, 7]  # the user's other interest
    found = S.silences(counts, 1.0, 3)
    first = [i for i in range(len(found.user)) if found.interest[i] == 0 and found.start[i] == 4]
    assert len(first) == 1
    row = {key: value[first[0]] for key, value in S.features(counts, found, 3).items()}
    assert row["events per window before"] == pytest.approx(6 / 4)
    assert row["active windows before"] == 3
    assert row["share of the user's events before"] == pytest.approx(6 / 10)
    assert row["user's events elsewhere during it"] == 3  # windows 4-6: 1 + 2


@pytest.mark.slow
def test_the_report_on_a_generated_log(tmp_path, capsys):
    payload = S.main(["--synthetic", "classic", "--synthetic-days", "140", "--synthetic-users", "80",
                      "--set", "synthetic.users_per_shard=80", "--out", str(tmp_path)])
    (row,) = payload["datasets"]
    assert row["name"] == "synthetic classic" and row["silences"] > 0 and row["age_windows"] == 4
    assert row["rows_read"] == row["events"] + sum(row["rows_rejected"].values())  # no row lost unseen
    assert 0 <= row["base_rate"] <= 1 and 0 <= row["detector_flagged"] <= 1
    assert set(row["auc"]) == {"events per window before", "active windows before",
                               "share of the user's events before", "user's events elsewhere during it",
                               "learned verdict's log-odds"}  # weekly windows: the shipped verdict judges
    assert row["verdict"] and 0 <= row["product_flagged"] <= 1
    written = json.loads((tmp_path / "silences.json").read_text())
    assert written["datasets"][0]["silences"] == row["silences"] and written["device"]
    assert "| synthetic classic |" in (tmp_path / "silences.md").read_text() and "| synthetic classic |" in capsys.readouterr().out


def test_the_product_path_it_reads_is_what_fgjax_analyze_decides(tmp_path):
    """``judged_series`` over ``log_counts`` gives the states ``analyze`` writes, window by window, with the shipped
    verdict deciding (weekly windows, ``verdict_file: auto``) and with the detector alone."""
    from fgjax.analysis import analyze, state_series
    from fgjax.config import load_config
    from fgjax.data.reader import read_events
    from fgjax.data.synthetic import generate
    from fgjax.evaluation.log_verdict import log_counts

    base = ["synthetic.num_users=40", "synthetic.num_days=120", "synthetic.bad_row_fraction=0",
            "analysis.window_seconds=604800"]
    config = load_config(None, base)
    paths = generate(config.synthetic, tmp_path)
    log = read_events(config.data, path=str(paths.events_dir), items_path=paths.items_path)
    counts = log_counts(config, log)
    for verdict_file in ("auto", ""):
        run = load_config(None, [*base, f"analysis.detector.verdict_file={verdict_file}"])
        own, product, log_odds = S.judged_series(run, counts)
        result = analyze(run, log, progress=False)
        written = state_series(result.changes, result.num_windows, log.num_users, len(log.categories))
        assert written.shape == product.shape and (log_odds is not None) == bool(verdict_file)
        np.testing.assert_array_equal(product, written)
        if verdict_file:
            assert (own != product).any()  # the verdict overruled the detector somewhere
        else:
            np.testing.assert_array_equal(own, product)
