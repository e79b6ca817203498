"""The windowed forgetting pipeline against a float64 NumPy recomputation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fgjax import kernels
from fgjax.analysis import analyze, forgetting_table
from fgjax.ranking.strategy import forgetting_weights
from fgjax.config import load_config
from fgjax.errors import DataError

from conftest import make_log


def reference_states(log, config):
    """Float64 loops: I(u,t) per window, F per window, f and p after the last window."""
    acfg = config.analysis
    K = len(log.categories)
    origin = np.floor(log.timestamp.min() / acfg.window_seconds) * acfg.window_seconds
    win = np.floor((log.timestamp - origin) / acfg.window_seconds).astype(int)
    T = win.max() + 1
    inv_tau = np.log(2) / acfg.half_life_windows
    g = np.exp(-inv_tau)
    I = np.zeros((log.num_users, K))
    degrees = []
    prev = I
    for t in range(T):
        end = origin + (t + 1) * acfg.window_seconds
        prev = I
        I = g * I
        for e in np.flatnonzero(win == t):
            age = (end - log.timestamp[e]) / acfg.window_seconds
            I[log.user[e], log.item_category[log.item[e]]] += log.weight[e] * np.exp(-inv_tau * age)
        dn = np.linalg.norm(I - prev, axis=1)
        cn = np.linalg.norm(I, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            degrees.append(np.where(cn > 0, dn / cn, np.where(dn > 0, np.inf, 0.0)))
    return I, prev, np.array(degrees)


def test_a_window_count_past_max_windows_is_refused_before_anything_is_allocated():
    from fgjax.config import load_config
    from fgjax.data.stream import check_window_count
    from fgjax.errors import ConfigError

    log = make_log(num_users=4, events_per_user=5)  # events over 19.9 of 20 days
    with pytest.raises(ConfigError, match=r"window_seconds=1 gives 1,7\d\d,\d\d\d windows over the log's 19\.9 days, "
                                          r"more than analysis.max_windows=100,000"):
        analyze(load_config(None, ["analysis.window_seconds=1"]), log, progress=False)
    with pytest.raises(ConfigError, match="max_windows=400"):
        analyze(load_config(None, ["analysis.window_seconds=3600", "analysis.max_windows=400"]), log, progress=False)
    # The limit is inclusive: the count from the first window to the last is returned up to it.
    assert check_window_count(10, 509, 3600.0, 500) == 500 and check_window_count(10, 10**9, 1.0, None) == 10**9 - 9
    with pytest.raises(ConfigError, match="gives 501 windows over the log's 20.9 days, more than analysis.max_windows=500"):
        check_window_count(10, 510, 3600.0, 500)


def test_matches_numpy_reference():
    log = make_log(num_users=12, num_items=20, events_per_user=25, seed=4)
    # Make user 0 stop its interest after day 8 so states and F move.
    keep = ~((log.user == 0) & (log.timestamp > log.timestamp.min() + 8 * 86400))
    log = dataclasses.replace(log, user=log.user[keep], item=log.item[keep], timestamp=log.timestamp[keep],
                              weight=log.weight[keep])
    # The detector's own verdict: what the reference below states (the shipped learned verdict is its own test).
    config = load_config(None, ["analysis.half_life_windows=3", "analysis.detector.verdict_file="])
    result = analyze(config, log, progress=False)
    I, prev, degrees = reference_states(log, config)
    np.testing.assert_allclose(result.current, I, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.previous, prev, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.degree, degrees, rtol=1e-4, atol=1e-5)
    f = np.maximum(prev - I, 0) / np.linalg.norm(I, axis=1, keepdims=True)
    np.testing.assert_allclose(result.f, f, rtol=1e-4, atol=1e-6)
    ever = result.ever
    logits = np.where(ever, -config.analysis.alpha * f, -np.inf)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(result.p, p, rtol=1e-4, atol=1e-6)
    # user 0 stopped its only interest 12 windows before the end, after a
    # sparse week (active on 4 of 8 days): with the life budget spread over
    # this 20-window log (not 200 days) the adaptive detector calls it forgotten.
    assert result.evidence["silence"][0, 0] == 12 and result.evidence["last_active"][0, 0] == 8
    assert result.state[0, 0] == kernels.FORGOTTEN
    assert result.evidence["silence_limit"][0, 0] <= 12
    # Users that kept their interest until the end have not forgotten it.
    assert all(result.state[u, u % 4] in (kernels.ACTIVE, kernels.DECLINING) for u in range(1, 12))
    assert (result.state[np.arange(1, 12), np.arange(1, 12) % 4] == kernels.ACTIVE).sum() >= 6
    # The level rule (I_k against its peak) calls it forgotten.
    level = analyze(load_config(None, ["analysis.half_life_windows=3", "analysis.detector.kind=level"]), log,
                    progress=False)
    assert level.state[0, 0] == kernels.FORGOTTEN
    assert all(level.state[u, u % 4] in (kernels.ACTIVE, kernels.DECLINING) for u in range(1, 12))


def test_forgetting_table_rows_and_columns():
    log = make_log(num_users=8, num_items=12, events_per_user=10, seed=1)
    config = load_config(None, ["analysis.top_interests=2"])
    result = analyze(config, log, progress=False)
    table = forgetting_table(result, log)
    assert table.column_names == ["user_id", "window", "window_start", "F", "top_interests", "top_p"]
    # One row per (user, window) from the user's first active window on.
    first = {}
    for u, t in zip(log.user, np.floor((log.timestamp - result.window_start[0]) / 86400).astype(int)):
        first[u] = min(first.get(u, 10**9), t)
    expected = sum(result.num_windows - first[u] for u in first)
    assert table.num_rows == expected
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["top_interests"]) == 2 and row["top_interests"][0].startswith("c")
    assert row["top_p"][0] >= row["top_p"][1]
    assert pa.types.is_timestamp(table.schema.field("window_start").type)


def test_weights_follow_state_weights():
    log = make_log(num_users=6, num_items=8, events_per_user=10)
    config = load_config(None, ["recommend.state_weights.active=0.25", "recommend.interest_floor=0.001"])
    result = analyze(config, log, progress=False)
    weights = forgetting_weights(result, config, log)
    K = len(log.categories)
    assert weights.user_interest.shape == (log.num_users, K + 1)
    expected = np.maximum(result.p * np.array([1, 1, 0.25, 0.5, 0.05, 1.0])[result.state], 0.001)
    np.testing.assert_allclose(weights.user_interest[:, :K], expected, rtol=1e-6)
    # Items without a category weigh the mean over the interests the user has had.
    m = result.p * np.array([1, 1, 0.25, 0.5, 0.05, 1.0])[result.state]
    np.testing.assert_allclose(weights.user_interest[:, K],
                               np.maximum((m * result.ever).sum(1) / result.ever.sum(1), 0.001), rtol=1e-6)
    # A user with no interest at all: everything at the floor, the model alone ranks.
    empty = dataclasses.replace(result, p=result.p * 0, ever=result.ever & False)
    np.testing.assert_allclose(forgetting_weights(empty, config, log).user_interest, 0.001)
    np.testing.assert_array_equal(weights.item_interest, log.item_category)


def test_snapshot_reads_each_user_at_its_own_time():
    log = make_log(num_users=6, num_items=8, events_per_user=20, seed=2)
    config = load_config()
    full = analyze(config, log, progress=False)
    day = 86400.0
    cutoff = np.full(log.num_users, np.inf)
    cutoff[2] = full.window_start[5] + 0.5 * day  # user 2 is read at the end of window 5
    snap = analyze(config, log, snapshot_before=cutoff, progress=False)
    early = dataclasses.replace(log, user=log.user[log.timestamp < full.window_start[6]],
                                item=log.item[log.timestamp < full.window_start[6]],
                                timestamp=log.timestamp[log.timestamp < full.window_start[6]],
                                weight=log.weight[log.timestamp < full.window_start[6]])
    upto = analyze(config, early, progress=False)
    assert upto.num_windows == 6
    np.testing.assert_allclose(snap.p[2], upto.p[2], rtol=1e-6)
    np.testing.assert_array_equal(snap.state[2], upto.state[2])
    np.testing.assert_array_equal(snap.ever[2], upto.ever[2])
    others = np.arange(log.num_users) != 2
    np.testing.assert_array_equal(snap.state[others], full.state[others])
    np.testing.assert_allclose(snap.f[others], full.f[others])
    # Times past the log read the last window, times before it the first.
    outside = np.where(others, np.inf, full.window_start[0] + 1e9)
    np.testing.assert_allclose(analyze(config, log, snapshot_before=outside, progress=False).p, full.p)


def test_reactivation_is_measured_against_the_new_level():
    """Busy, long silence (forgotten), one small event: reactivated, then not forgotten at once."""
    from fgjax.data.reader import EventLog

    base = make_log(num_users=1, num_items=4, events_per_user=1)
    day = 86400.0
    t0 = 1.7e9
    ts = np.concatenate([t0 + np.arange(10) * day + 100, [t0 + 50 * day + 100], [t0 + 52 * day + 100]])
    weight = np.concatenate([np.full(10, 4.0), [0.5], [0.0]]).astype(np.float32)  # last event only extends the log
    log = dataclasses.replace(base, user=np.zeros(12, np.int32), item=np.zeros(12, np.int32), timestamp=ts,
                              weight=weight)
    assert isinstance(log, EventLog)
    result = analyze(load_config(), log, progress=False)
    history = [kernels.STATE_NAMES[s] for s in _state_history(load_config(), log)]
    assert history[49] == "forgotten" and history[50] == "reactivated"
    assert history[51] != "forgotten"
    assert result.num_windows == 53


def _state_history(config, log):
    """State of (user 0, interest 0) after each window, rebuilt from the analysis's change rows (that these
    equal the window-by-window monitor is pinned by test_monitor_update_window_by_window_equals_the_batch_analysis)."""
    from fgjax.analysis import state_series

    full = analyze(config, log, progress=False)
    return state_series(full.changes, full.num_windows, log.num_users, len(log.categories))[:, 0, 0].tolist()


def test_padding_users_to_a_shared_size_changes_nothing(monkeypatch):
    """The state's rows are padded (``user_rows``: 13 users run as 64); the padding rows have no events, so every
    output equals an unpadded run's (floats to rounding): F, top interests, snapshot values, evidence, changed rows
    (the population's terms, the calibration and the learned verdict count seen interests only)."""
    from fgjax.analysis import run as run_module

    log = make_log(num_users=13, num_items=20, events_per_user=60, seed=3)
    day, start = 86400.0, log.timestamp.min()
    # Stops (users 0, 5), a pause (user 7): forgotten, reactivated and the verdict's rows, not only active ones.
    stop = ((np.isin(log.user, [0, 5]) & (log.timestamp > start + 7 * day))
            | ((log.user == 7) & (log.timestamp > start + 6 * day) & (log.timestamp < start + 12 * day)))
    log = dataclasses.replace(log, user=log.user[~stop], item=log.item[~stop], timestamp=log.timestamp[~stop],
                              weight=log.weight[~stop])
    config = load_config(None, ["analysis.top_interests=2"])
    snapshot = start + np.random.default_rng(0).uniform(0, 21, log.num_users) * day
    assert run_module.user_rows(log.num_users) == 64
    padded = analyze(config, log, snapshot_before=snapshot, progress=False)
    monkeypatch.setattr(run_module, "user_rows", lambda n: n)
    exact = analyze(config, log, snapshot_before=snapshot, progress=False)
    assert {kernels.FORGOTTEN, kernels.REACTIVATED} <= set(exact.changes["state"].tolist())
    for field in dataclasses.fields(exact):
        got, want = getattr(padded, field.name), getattr(exact, field.name)
        for name in want if isinstance(want, dict) else [None]:
            a, b = (got, want) if name is None else (got[name], want[name])
            if np.issubdtype(np.asarray(b).dtype, np.floating):
                # Sums over the users (the population's terms) may round in another order with more rows.
                np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=f"{field.name} {name or ''}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{field.name} {name or ''}")
    assert padded.evidence.keys() == exact.evidence.keys() and padded.changes.keys() == exact.changes.keys()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1 << 26))
def test_user_rows_pad_less_than_a_quarter_and_fewer_than_4096_rows_past_32768_users(n):
    from fgjax.analysis.run import run_size
    from fgjax.shapes import MIN_USER_ROWS, USER_ROWS_STEP, user_rows

    rows = user_rows(n)
    assert rows >= max(n, MIN_USER_ROWS) and user_rows(rows) == rows
    assert rows - n < 0.25 * n or rows == MIN_USER_ROWS
    if n > 32_768:
        assert rows % USER_ROWS_STEP == 0 and rows - n < USER_ROWS_STEP
    elif n >= 1024:  # the events' grid above MIN_BUCKET: 2^j x (1, 1.25, 1.5, 1.75)
        assert rows == run_size(n)


def test_needs_categories():
    log = dataclasses.replace(make_log(), item_category=None, categories=None)
    with pytest.raises(DataError, match="items_path"):
        analyze(load_config(), log, progress=False)


def test_monitor_update_refuses_events_outside_its_ranges():
    from fgjax.analysis import monitor_init, monitor_update
    from fgjax.config import load_config
    from fgjax.errors import DataError

    config = load_config(None, [])

    def events(user=0, interest=0, weight=1.0, age=0.5):
        return kernels.WindowEvents(np.array([0, user], np.int32), np.array([1, interest], np.int32),
                                    np.array([1.0, weight], np.float32), np.array([0.5, age], np.float32))

    # The padding user (== users) and the no-interest index (== K) are accepted, and change nothing.
    state, out, _ = monitor_update(monitor_init(4, 3, config), events(user=0, interest=3), config)
    reference, ref_out, _ = monitor_update(monitor_init(4, 3, config), events(user=4), config)
    np.testing.assert_array_equal(np.asarray(state.interest.current), np.asarray(reference.interest.current))
    np.testing.assert_array_equal(np.asarray(state.ever), np.asarray(reference.ever))
    np.testing.assert_array_equal(np.asarray(out.degree), np.asarray(ref_out.degree))
    for bad, message in [
        (dict(user=-1), r"events.user\[1\] = -1, expected a dense user index in \[0, 4\]"),
        (dict(user=5), r"events.user\[1\] = 5"),
        (dict(interest=-1), r"events.interest\[1\] = -1, expected an interest index in \[0, 3\]"),
        (dict(interest=4), r"events.interest\[1\] = 4"),
        (dict(weight=np.nan), r"events.weight\[1\] = nan, expected a finite weight >= 0"),
        (dict(weight=-1.0), r"events.weight\[1\] = -1.0"),
        (dict(age=-0.5), r"events.age\[1\] = -0.5, expected a finite age >= 0"),
        (dict(age=np.inf), r"events.age\[1\] = inf"),
    ]:
        with pytest.raises(DataError, match=message):
            monitor_update(monitor_init(4, 3, config), events(**bad), config)


def test_monitor_update_window_by_window_equals_the_batch_analysis():
    """A service calling monitor_update as each window closes gets what analyze computes over the whole log."""
    from fgjax.analysis import monitor_init, monitor_update, pad_events, state_series, window_index
    from fgjax.analysis.run import padded_size

    log = make_log(num_users=10, num_items=16, events_per_user=30, seed=7)
    # The monitor's log has no end, so its life budget is life_days; the batch caps it at the log's windows (20):
    # a life shorter than the log makes both the same.
    config = load_config(None, ["analysis.half_life_windows=4", "analysis.detector.buffer_windows=8",
                                "analysis.detector.life_days=15"])
    batch = analyze(config, log, progress=False)
    assert batch.num_windows > 15
    K, ws = len(log.categories), config.analysis.window_seconds
    origin = float(batch.window_start[0])
    win = window_index(log.timestamp, ws, origin)
    state = monitor_init(log.num_users, K, config)
    codes, degrees = [], []
    for t in range(batch.num_windows):
        sel = np.nonzero(win == t)[0]
        end = origin + (t + 1) * ws
        events = kernels.WindowEvents(
            log.user[sel].astype(np.int32), log.item_category[log.item[sel]].astype(np.int32),
            log.weight[sel].astype(np.float32), ((end - log.timestamp[sel]) / ws).astype(np.float32),
        )
        # Any padding size: the service pads to what it likes (here off the power-of-two buckets, few shapes).
        state, out, detail = monitor_update(state, pad_events(events, padded_size(len(sel)) + 3, log.num_users), config)
        codes.append(np.asarray(detail.state))
        degrees.append(np.asarray(out.degree))
    np.testing.assert_array_equal(np.stack(codes), state_series(batch.changes, batch.num_windows, log.num_users, K))
    np.testing.assert_allclose(np.stack(degrees), batch.degree, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(detail.detection.last_active), batch.evidence["last_active"])
    # s* is computed only where it is written; from the monitor's counters it is the same.
    from fgjax.analysis import window_params

    params = window_params(config.analysis).detector
    d, o = state.detector, detail.detection
    kappa = kernels.pair_kappa(o.kappa, np.maximum(np.asarray(d.alive) - np.asarray(o.silence) - 1, 0))
    alive_before = np.asarray(d.alive) - np.asarray(o.silence)
    _, own_steps = kernels.history_dispersion(d.total, d.sum_sq, d.sum_lag, alive_before)
    strength, _, pull_steps = kernels.dispersion_prior(params, o.population_dispersion)
    steps = kernels.shrink_dispersion(own_steps, np.maximum(alive_before - 1, 0), strength, pull_steps)
    model = kernels.silence_model(d.total, d.alive, o.silence, d.active_windows, d.gaps, d.longest_gap, o.period,
                                  o.period_strength, o.dispersion, kappa, params,
                                  config.analysis.detector.buffer_windows, steps,
                                  kernels.window_model_prior(params, o.stay_share))
    limit = np.where(np.asarray(d.alive) > 0, np.asarray(kernels.model_silence_limit(model, params)), 0)
    np.testing.assert_array_equal(limit, batch.evidence["silence_limit"])
    assert detail.detection.silence_limit is None  # not computed in the hot loop


def test_states_table_has_one_row_per_change_with_its_evidence():
    from fgjax.analysis import STATE_COLUMNS, state_series, states_table

    log = make_log(num_users=12, num_items=20, events_per_user=25, seed=4)
    result = analyze(load_config(None, []), log, progress=False)
    table = states_table(result, log)
    assert tuple(table.column_names) == STATE_COLUMNS
    rows = table.to_pylist()
    assert all(r["state"] != r["previous_state"] for r in rows)
    codes = state_series(result.changes, result.num_windows, log.num_users, len(log.categories))
    for r in rows:
        u = log.users.encode([r["user_id"]])[0]
        k = log.categories.encode([r["interest"]])[0]
        t = r["window"]
        assert kernels.STATE_NAMES[codes[t, u, k]] == r["state"]
        assert kernels.STATE_NAMES[codes[t - 1, u, k] if t else 0] == r["previous_state"]
        assert r["F"] == pytest.approx(float(result.degree[t, u]))
    # Every change of the series is a row, and nothing else.
    changed = np.count_nonzero(np.diff(np.concatenate([np.zeros_like(codes[:1]), codes]), axis=0))
    assert changed == len(rows)
    # The final states equal the analysis' own.
    np.testing.assert_array_equal(codes[-1], result.state)


def test_states_parquet_reads_back_as_the_states_table(tmp_path):
    """Written with dictionary-encoded names and no stored Arrow schema, the file reads back as the in-memory
    table: plain strings (sortable), UTC timestamps, the same values; statistics only on the key columns."""
    import pyarrow.parquet as pq

    from fgjax.analysis import states_table, write_states
    from fgjax.analysis.tables import STATISTICS_COLUMNS

    log = make_log(num_users=12, num_items=20, events_per_user=25, seed=4)
    result = analyze(load_config(None, []), log, progress=False)
    rows = write_states(result, log, tmp_path / "states.parquet")
    back, table = pq.read_table(tmp_path / "states.parquet"), states_table(result, log)
    assert rows == table.num_rows > 0
    assert back.schema.equals(table.schema), (back.schema, table.schema)
    assert back.equals(table)
    assert back.sort_by([("state", "ascending"), ("interest", "ascending")]).num_rows == rows
    assert str(back.schema.field("window_start").type) == "timestamp[us, tz=UTC]"
    group = pq.ParquetFile(tmp_path / "states.parquet").metadata.row_group(0)
    with_stats = {group.column(i).path_in_schema for i in range(group.num_columns) if group.column(i).is_stats_set}
    assert with_stats == set(STATISTICS_COLUMNS["states"])


def test_priorities_and_exploration_follow_the_strategy():
    from fgjax.ranking.strategy import exploration_mask, interest_priorities

    log = make_log(num_users=40, num_items=20, events_per_user=25, seed=4)
    cut = log.timestamp.min() + 10 * 86400
    keep = ~((log.user % 2 == 0) & (log.timestamp > cut))  # even users stop everything after day 10
    log = dataclasses.replace(log, user=log.user[keep], item=log.item[keep], timestamp=log.timestamp[keep],
                              weight=log.weight[keep])
    # The detector's own verdict, at a budget that calls the stopped interests forgotten.
    overrides = ["analysis.detector.false_alarm=0.05", "analysis.detector.verdict_file=",
                 "recommend.state_weights.forgotten=0"]
    result = analyze(load_config(None, overrides), log, progress=False)
    forgotten = result.state == kernels.FORGOTTEN
    assert forgotten.sum() >= 10
    off = load_config(None, overrides)
    assert not exploration_mask(result, off).any()
    order, priority = interest_priorities(result, off)
    assert np.all(np.diff(priority, axis=1) <= 0)
    # Suppressed (weight 0) forgotten interests rank with zero priority.
    assert np.all(np.take_along_axis(forgotten, order, axis=1)[priority > 0] == False)  # noqa: E712
    always = load_config(None, overrides + ["recommend.explore_probability=1.0"])
    np.testing.assert_array_equal(exploration_mask(result, always), forgotten)
    half = load_config(None, overrides + ["recommend.explore_probability=0.5", "recommend.explore_seed=3"])
    mask = exploration_mask(result, half)
    assert mask[~forgotten].sum() == 0 and 0 < mask.sum() < forgotten.sum()
    np.testing.assert_array_equal(mask, exploration_mask(result, half))  # the seed fixes the draw
    weights = forgetting_weights(result, always, log).user_interest[:, :-1]
    per_state = always.recommend.state_weights
    np.testing.assert_allclose(weights[forgotten], np.maximum(result.p[forgotten] * per_state["active"],
                                                              always.recommend.interest_floor), rtol=1e-6)


def test_sweeping_alpha_and_half_life_compiles_nothing_again():
    """3 half-lives x 2 alphas: the window step compiles once (every window padded to the largest one's bucket),
    and nothing else compiles again."""
    import jax

    from fgjax.analysis import window_step

    # 7 interests: shapes no other test in this process uses (users are padded to a shared size, interests
    # are not), so every compilation counted here is ours.
    log = make_log(num_users=11, num_items=14, num_categories=7, events_per_user=14, seed=5)
    # Every third event on a random item: users with several interests, so alpha matters.
    item = log.item.copy()
    item[::3] = np.random.default_rng(5).integers(0, 14, len(item[::3]))
    log = dataclasses.replace(log, item=item)
    compiled = []

    def listen(event, _secs, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    before = window_step._cache_size()
    results, step_compiles, all_compiles = {}, [], []
    try:
        for half_life in ("2", "7", ".inf"):
            for alpha in (0.5, 4.0):
                config = load_config(None, [f"analysis.half_life_windows={half_life}", f"analysis.alpha={alpha}"])
                results[half_life, alpha] = analyze(config, log, progress=False)
                step_compiles.append(window_step._cache_size() - before)
                all_compiles.append(len(compiled))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert step_compiles == [1] * 6
    assert all_compiles[0] > 0 and all_compiles[1:] == [all_compiles[0]] * 5
    # The knobs did act: F follows the half-life, p follows alpha.
    assert not np.allclose(results["2", 0.5].degree, results[".inf", 0.5].degree)
    assert not np.allclose(results["2", 0.5].p, results["2", 4.0].p)
    # ... and each run equals a fresh reference of its own knobs (here: no decay means I is the running sum).
    sums = np.zeros((log.num_users, len(log.categories)))
    np.add.at(sums, (log.user, log.item_category[log.item]), log.weight)
    np.testing.assert_allclose(results[".inf", 4.0].current, sums, rtol=1e-6)


def test_reset_each_window_without_decay_is_the_seeds_per_window_indicator():
    """decay 0 and inv_tau 0 are traced values like any other: I(u, t) is window t's weights alone."""
    log = make_log(num_users=12, num_items=20, events_per_user=25, seed=4)
    config = load_config(None, ["analysis.reset_each_window=true", "analysis.half_life_windows=.inf"])
    result = analyze(config, log, progress=False)
    win = np.floor((log.timestamp - result.window_start[0]) / config.analysis.window_seconds).astype(int)
    counts = np.zeros((result.num_windows, log.num_users, len(log.categories)))
    np.add.at(counts, (win, log.user, log.item_category[log.item]), log.weight.astype(np.float64))
    prev = np.concatenate([np.zeros_like(counts[:1]), counts[:-1]])
    diff, norm = np.linalg.norm(counts - prev, axis=-1), np.linalg.norm(counts, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        seed_f = np.where(norm > 0, diff / norm, np.where(diff > 0, np.inf, 0.0))
    np.testing.assert_allclose(result.degree, seed_f, rtol=1e-6)
    np.testing.assert_allclose(result.current, counts[-1], rtol=1e-6)
    np.testing.assert_allclose(result.previous, counts[-2], rtol=1e-6)


def test_window_shapes_in_memory_and_streamed_and_one_gather_size_per_run(tmp_path):
    """Windows of 3,000 and 10 events are padded alike (one step compilation per run); the changed-row
    gather has one size per run, from the number of (user, interest) pairs."""
    from fgjax.analysis.run import MIN_BUCKET, gather_size, log_windows, run_size

    counts = [3000, 10, 0, 700]
    timestamp = np.concatenate([np.full(n, 86400.0 * w + 10.0) for w, n in enumerate(counts)])
    n = len(timestamp)
    windows = list(log_windows(np.zeros(n, np.int32), np.zeros(n, np.int32), np.ones(n, np.float32), timestamp,
                               origin=0.0, window_seconds=86400.0, num_windows=4, num_users=5))
    # Sizes known up front: every window padded to the largest one's run size (3,000 -> 3,072, not 4,096).
    assert {len(w.events.user) for w in windows} == {run_size(3000)} == {3072}
    for w, count in zip(windows, counts):  # the real rows first, then padding rows of user num_users
        assert (w.events.user[:count] == 0).all() and (w.events.user[count:] == 5).all()
        assert (w.events.weight[count:] == 0).all()
    # A stream cannot know its sizes up front: it pads to the largest bucket seen so far, never shrinking.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fgjax.analysis.run import parquet_windows

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user": np.zeros(n, np.int64), "item": np.zeros(n, np.int64), "timestamp": timestamp,
                             "weight": np.ones(n, np.float32)}), path)
    streamed = list(parquet_windows([path], item_category=np.zeros(1, np.int32), num_users=5, window_seconds=86400.0))
    assert [len(w.events.user) for w in streamed] == [4096] * 4
    pq.write_table(pa.table({"user": np.zeros(n, np.int64), "item": np.zeros(n, np.int64),
                             "timestamp": timestamp[::-1] * -1 + timestamp.max(), "weight": np.ones(n, np.float32)}),
                   path)  # the same windows in reverse: small ones first, so the size grows once
    streamed = list(parquet_windows([path], item_category=np.zeros(1, np.int32), num_users=5, window_seconds=86400.0))
    assert [len(w.events.user) for w in streamed] == [1024, 1024, 1024, 4096]
    # 1/64 of the pairs, a power of two, at least MIN_BUCKET but never past the pairs' own bucket.
    assert [gather_size(p) for p in (1, 100, 16_384, 20_000 * 16, 10**6 * 32)] == [1, 128, MIN_BUCKET, 8_192,
                                                                                     524_288]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1 << 27))
def test_run_size_pads_at_most_a_quarter_with_four_shapes_per_octave(n):
    from fgjax.analysis.run import MIN_BUCKET, run_size

    size = run_size(n)
    assert size >= max(n, MIN_BUCKET) and size <= max(1.25 * n, MIN_BUCKET)
    # 2^j x (1, 1.25, 1.5, 1.75): few distinct shapes for the compilation cache to share between runs.
    j = size.bit_length() - 1
    assert size in {(1 << j) * m // 4 for m in (4, 5, 6, 7)} or size == MIN_BUCKET
    assert run_size(size) == size  # a size is its own run size


def test_the_level_rule_carries_no_per_pair_detector_state():
    """Under the level rule the detector never runs: its carry holds no bytes per user (the adaptive one's ring
    buffer and counters are about 100 bytes a (user, interest) pair at T = 64), and the structure is the same."""
    import jax

    from fgjax.analysis.window import init_carry, window_spec

    config = load_config(None, [])
    sizes = {}
    for kind in ("level", "adaptive"):
        analysis = dataclasses.replace(config.analysis, detector=dataclasses.replace(config.analysis.detector,
                                                                                      kind=kind))
        spec = window_spec(analysis, 8)
        carries = [jax.eval_shape(lambda n=n: init_carry(spec, n)) for n in (100, 200)]
        detector_bytes = [sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(c.detector)) for c in carries]
        sizes[kind] = (detector_bytes[1] - detector_bytes[0]) / (100 * 8)  # bytes per added (user, interest)
        assert jax.tree.structure(carries[0]) == jax.tree.structure(
            jax.eval_shape(lambda: init_carry(window_spec(config.analysis, 8), 100)))
    assert sizes["level"] == 0
    assert sizes["adaptive"] >= 64 + 40  # the uint8 ring of T = 64 windows and the float32/int32 counters


def test_cpu_tuned_jit_compiles_with_its_options_on_a_cpu_and_equals_jax_jit(monkeypatch):
    import jax
    import jax.numpy as jnp

    from fgjax.analysis import window

    def scaled(x, *, times):
        return jnp.log1p(x) * times

    tuned = window.cpu_tuned_jit(scaled, static_argnames=("times",))
    x = jnp.asarray(np.random.default_rng(0).random(1000), jnp.float32)
    # The same arithmetic, compiled otherwise: equal to rounding (log1p differed by an ulp in 1 of these 1,000).
    np.testing.assert_allclose(tuned(x, times=3), jax.jit(scaled, static_argnames=("times",))(x, times=3),
                               rtol=2e-7, atol=0)
    assert tuned.__name__ == "scaled" and tuned._cache_size() == 1  # the jitted function's attributes
    assert window.window_step.__name__ == "window_step"
    # The options reach XLA on a CPU: an unknown one fails the compilation (the backend and XLA_FLAGS are read
    # at the first call).
    monkeypatch.setattr(window, "CPU_COMPILER_OPTIONS", {"xla_no_such_option": 2})
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")  # the suite's own setting (conftest)
    leveled = window.cpu_tuned_jit(scaled, static_argnames=("times",))
    np.testing.assert_allclose(leveled(x, times=3), tuned(x, times=3), rtol=2e-7, atol=0)  # the flags' level wins
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")  # flags that leave the level alone
    fresh = window.cpu_tuned_jit(scaled, static_argnames=("times",))
    if jax.default_backend() == "cpu":
        with pytest.raises(Exception, match="xla_no_such_option"):
            fresh(x, times=3)
    else:
        np.testing.assert_allclose(fresh(x, times=3), tuned(x, times=3), rtol=2e-7, atol=0)


def test_cpu_tuned_jit_runs_inside_other_transforms():
    # JAX refuses compiler options on a jit inside another trace: there it is the plain jax.jit.
    import jax
    import jax.numpy as jnp

    from fgjax.analysis import window

    tuned = window.cpu_tuned_jit(lambda x: jnp.log1p(x) * 2.0)
    x = jnp.arange(5, dtype=jnp.float32)
    np.testing.assert_allclose(jax.jit(lambda v: tuned(v) + 1.0)(x), tuned(x) + 1.0, rtol=2e-7)
    assert jax.eval_shape(tuned, x).shape == (5,)
    _, ys = jax.lax.scan(lambda c, v: (c, tuned(v)), 0.0, x)
    np.testing.assert_allclose(ys, tuned(x), rtol=2e-7)
