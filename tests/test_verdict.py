"""The learned verdict's fit, its rows and labels, and its leave-one-story-out choice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fgjax import kernels
from fgjax.config import load_config
from fgjax.errors import ConfigError
from fgjax.data import synthetic
from fgjax.evaluation import matrix as M
from fgjax.evaluation import verdict as V
from fgjax.evaluation.detection import Truth

F = len(kernels.VERDICT_FEATURES)


def _truth(kind, forgotten, resume, judged=None) -> Truth:
    n = len(kind)
    return Truth(user=np.arange(n), interest=np.zeros(n, np.int64), kind=np.asarray(kind), start=np.zeros(n, np.int64),
                 onset=np.asarray(forgotten), forgotten=np.asarray(forgotten), resume=np.asarray(resume),
                 judged=np.ones(n, bool) if judged is None else np.asarray(judged))


def test_the_fit_recovers_a_logistic_rule_and_leaves_a_constant_feature_alone():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, F)).astype(np.float32) * 2 + 1
    x[:, 5] = 7.0  # constant: standardizes to 0
    logit = 3.0 * (x[:, 0] - 1) / 2 - 2.0 * (x[:, 3] - 1) / 2 + 0.5
    y = (rng.random(4000) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    params = V.fit_verdict(x, y, np.ones(4000, np.float32))
    w = np.asarray(params.weights)
    assert np.asarray(params.scale)[5] == 1.0 and w[5] == 0.0
    assert w[0] == pytest.approx(3.0, abs=0.35) and w[3] == pytest.approx(-2.0, abs=0.35)
    assert np.abs(np.delete(w, [0, 3])).max() < 0.3
    assert float(params.bias) == pytest.approx(0.5, abs=0.25)
    # The kernel's logit with the fitted params is the model's.
    got = np.asarray(kernels.verdict_logit(x, params))
    want = ((x - np.asarray(params.mean)) / np.asarray(params.scale)) @ w + float(params.bias)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_fit_weighs_rows_by_their_weights():
    """Labels that the features do not predict: the fitted log-odds are the weighted share's, log(3 n1 / n0)
    with the positives weighing 3; unweighted they would be log(n1 / n0)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, F)).astype(np.float32)
    y = (rng.random(4000) < 0.3).astype(np.float32)
    w = np.where(y > 0, 3.0, 1.0).astype(np.float32)
    params = V.fit_verdict(x, y, w)
    want = np.log(3 * y.sum() / (len(y) - y.sum()))
    assert float(params.bias) == pytest.approx(want, abs=0.08)
    assert np.abs(np.asarray(params.weights)).max() < 0.15
    with pytest.raises(ValueError, match="no rows"):
        V.fit_verdict(np.zeros((0, F), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="ridge must be > 0"):
        V.fit_verdict(x, y, w, ridge=0.0)


def _newton_reference(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float, steps: int = 50) -> np.ndarray:
    """float64 NumPy Newton's method on standardized features with a ones column: the weights, then the bias."""
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = w / w.sum()
    penalty = np.r_[np.full(x.shape[1] - 1, ridge), 0.0]
    b = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 0.5 * (1 + np.tanh(0.5 * (x @ b)))  # the sigmoid, without overflow where the method diverges
        grad = x.T @ (w * (p - y)) + penalty * b
        hessian = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        b = b - np.linalg.solve(hessian, grad)
    return b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_is_the_penalized_maximum_likelihood_of_a_float64_reference(seed):
    """Fresh random rows, weights and a few collinear features: the fit equals float64 Newton's optimum of the
    weighted log-loss plus ridge / 2 |w|^2, whose gradient vanishes there."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(500, 3000))
    x = rng.normal(size=(n, F)) * rng.uniform(0.1, 5, F) + rng.normal(size=F)
    x[:, 2] = x[:, 1] * 0.9 + rng.normal(size=n) * 0.05  # nearly collinear
    truth = rng.normal(size=F) * 0.7
    y = (rng.random(n) < 1 / (1 + np.exp(-(((x - x.mean(0)) / x.std(0)) @ truth - 1)))).astype(np.float32)
    w = rng.uniform(0.1, 3, n).astype(np.float32)
    ridge = float(rng.choice([1e-5, 1e-3, 1e-1]))
    params = V.fit_verdict(x.astype(np.float32), y, w, steps=12, ridge=ridge)
    x32 = x.astype(np.float32).astype(np.float64)
    standard = (x32 - np.asarray(params.mean, np.float64)) / np.asarray(params.scale, np.float64)
    want = _newton_reference(standard, y.astype(np.float64), w.astype(np.float64), ridge)
    got = np.r_[np.asarray(params.weights, np.float64), float(params.bias)]
    np.testing.assert_allclose(got, want, atol=2e-3 * max(1.0, np.abs(want).max()))
    # The optimum: the penalized gradient at the fit is ~0 (against the gradient at the start, the base rate's).
    xa = np.concatenate([standard, np.ones((n, 1))], axis=1)
    share = w.astype(np.float64) / w.sum(dtype=np.float64)
    penalty = np.r_[np.full(F, ridge), 0.0]

    def gradient(b):
        return xa.T @ (share * (0.5 * (1 + np.tanh(0.5 * (xa @ b))) - y)) + penalty * b

    assert np.abs(gradient(got)).max() < 1e-3 * np.abs(gradient(np.zeros(F + 1))).max()


def test_a_feature_that_separates_the_labels_gets_a_finite_fit_whose_loss_only_falls():
    """Separable labels have no unpenalized maximum (the weight grows without end); the ridge bounds it, and
    every Newton step count gives a loss no higher than fewer steps do (a step that would raise it is halved)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, F)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    w = np.ones(2000, np.float32)

    def loss(params):
        z = np.asarray(kernels.verdict_logit(x, params), np.float64)
        return float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * 1e-3 * np.sum(np.asarray(params.weights) ** 2))

    losses = []
    for steps in (1, 2, 3, 5, 8, 20):
        params = V.fit_verdict(x, y, w, steps=steps, ridge=1e-3)
        assert np.isfinite(np.asarray(params.weights)).all() and np.isfinite(float(params.bias))
        losses.append(loss(params))
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:])), losses
    assert losses[0] == pytest.approx(np.log(2), abs=1e-6)  # one step evaluates the start only
    assert np.asarray(params.weights)[0] > 5 and losses[-1] < 0.12


def test_a_newton_step_that_would_raise_the_loss_is_halved():
    """Heavy-tailed features and weights where plain Newton diverges (its loss climbs from the fourth step):
    the fit's loss stays at or below the best plain Newton reached, and far below where it ends."""
    rng = np.random.default_rng(53)  # found by a search for a diverging case
    n = 200
    x = rng.standard_cauchy(size=(n, 3))
    x = (x - x.mean(0)) / x.std(0)
    y = (rng.random(n) < 0.5 + 0.4 * np.sign(x[:, 0]) * (rng.random(n) < 0.5)).astype(np.float64)
    w = rng.exponential(size=n) ** 3
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)

    def loss(b):
        z = xa @ b
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)) / w.sum() + 0.5 * 1e-5 * np.sum(b[:-1] ** 2))

    plain = [loss(_newton_reference(x, y, w, 1e-5, steps)) for steps in range(10)]
    assert plain[-1] > 10 * min(plain)  # the plain method diverges on this data
    params = V.fit_verdict(x.astype(np.float32), y.astype(np.float32), w.astype(np.float32), steps=10, ridge=1e-5)
    z = np.asarray(kernels.verdict_logit(x.astype(np.float32), params), np.float64)
    got = float(np.sum(w * (np.logaddexp(0, z) - y * z)) / w.sum()
                + 0.5 * 1e-5 * np.sum(np.asarray(params.weights, np.float64) ** 2))
    assert got <= min(plain) + 1e-4


def test_labels_run_from_the_forgotten_window_less_early_until_the_return():
    truth = _truth([synthetic.STABLE, synthetic.STOPPED, synthetic.REACTIVATED], [-1, 4, 2], [-1, -1, 5])
    rows = V.VerdictRows(np.zeros((8, 3, F), np.float32), np.ones((8, 3), bool), truth, (8, 3, 1))
    labels = V.verdict_labels(rows, early=1)
    assert labels[:, 0].tolist() == [False] * 8
    assert labels[:, 1].tolist() == [False, False, False, True, True, True, True, True]
    assert labels[:, 2].tolist() == [False, True, True, True, True, True, False, False]


def test_the_training_set_weighs_each_pair_once_and_draws_a_story_down_keeping_its_weight():
    truth = _truth([synthetic.STABLE, synthetic.STOPPED, synthetic.STABLE], [-1, 3, -1], [-1, -1, -1],
                   judged=[True, True, False])
    silent = np.zeros((10, 3), bool)
    silent[:, 0] = True  # 10 silent rows
    silent[5:, 1] = True  # 5
    silent[:, 2] = True  # not judged: no rows
    features = np.arange(30, dtype=np.float32).reshape(10, 3, 1).repeat(F, axis=2)
    rows = V.VerdictRows(features, silent, truth, (10, 3, 1))
    x, y, w = V.training_set([rows], early=1, rows_per_story=100, rng=np.random.default_rng(0))
    assert len(y) == 15 and w.sum() == pytest.approx(2.0) and y.sum() == 5
    assert set(x[:, 0].astype(int) % 3) == {0, 1}
    x, y, w = V.training_set([rows], early=1, rows_per_story=6, rng=np.random.default_rng(0))
    assert len(y) == 6 and w.sum() == pytest.approx(2.0, rel=0.5)
    assert w.sum() == pytest.approx(np.sum(np.where(x[:, 0] % 3 == 0, 0.1, 0.2)) * 15 / 6)


@pytest.fixture(scope="module")
def two_stories():
    config = load_config(None, ["evaluate.matrix_users=60", "evaluate.matrix_days=70", "synthetic.users_per_shard=60",
                                "evaluate.verdict_newton_steps=6"])
    out = {}
    for story in ("classic", "hawkes", "engaged"):
        days = M.story_days(config, story)
        counts = M.windowed(days, 7)
        truth = M.story_truth(days, counts, 7, 0.25, config.evaluate.matrix_margin_days,
                              config.evaluate.min_expected_events)
        out[story] = V.verdict_rows(config, counts, truth, 0.25, 7)
    return config, out


def test_the_rows_are_the_kernels_features_on_the_pairs_and_silent_where_the_pair_is(two_stories):
    config, by_story = two_stories
    rows = by_story["classic"]
    w, pairs = rows.silent.shape
    assert rows.features.shape == (w, pairs, F) and np.isfinite(rows.features).all()
    counts = M.windowed(M.story_days(config, "classic"), 7)
    series = counts[:, rows.truth.user, rows.truth.interest]
    seen = np.cumsum(series > 0, axis=0) > 0
    np.testing.assert_array_equal(rows.silent, seen & (series == 0))
    run = np.zeros(pairs)
    for t in range(w):  # the silence, from the raw counts
        run = np.where(series[t] > 0, 0, run + seen[t])
        got = np.expm1(rows.features[t, :, kernels.VERDICT_FEATURES.index("log_silence")])
        np.testing.assert_allclose(got, run, rtol=1e-5)


def test_the_held_out_story_never_shapes_its_own_model_or_threshold(two_stories):
    """Replacing the held-out story's rows changes neither its fitted params nor its chosen threshold."""
    config, by_story = two_stories

    def metrics(flags, truth):
        return M.cell_metrics(flags, truth, config.evaluate.detection_early_windows)

    first = V.held_out_verdicts(config, by_story, metrics)
    scrambled = dict(by_story)
    rows = by_story["hawkes"]
    scrambled["hawkes"] = dataclasses.replace(rows, features=rows.features[::-1].copy())
    second = V.held_out_verdicts(config, scrambled, metrics)
    chosen, points, params = first["hawkes"]
    chosen2, points2, params2 = second["hawkes"]
    assert chosen == chosen2
    np.testing.assert_array_equal(np.asarray(params.weights), np.asarray(params2.weights))
    # ... while the other stories' models, which saw it, change.
    assert not np.array_equal(np.asarray(first["classic"][2].weights), np.asarray(second["classic"][2].weights))
    assert len(points) == len(config.evaluate.verdict_threshold_sweep)
    # The chosen threshold is the best mean F1 on the other stories under the held-out model.
    thresholds = config.evaluate.verdict_threshold_sweep
    others = [s for s in by_story if s != "hawkes"]
    means = [np.mean([metrics(V.verdict_flags(by_story[s], params, th), by_story[s].truth)["f1"] or 0.0
                      for s in others]) for th in thresholds]
    assert chosen == int(np.argmax(means))


def test_the_matrix_scores_the_detectors_own_verdict_whatever_verdict_file_the_config_names(two_stories, tmp_path):
    """A config pointing at a verdict file (for its single run) must not change, or break, the matrix's detector."""
    config, by_story = two_stories
    named = load_config(None, ["evaluate.matrix_users=60", "evaluate.matrix_days=70", "synthetic.users_per_shard=60",
                               f"analysis.detector.verdict_file={tmp_path / 'missing.json'}"])
    days = M.story_days(named, "classic")
    counts = M.windowed(days, 7)
    plain = M.method_alarms(config, counts, 0.25, 7)["detector"](0.01)
    np.testing.assert_array_equal(M.method_alarms(named, counts, 0.25, 7)["detector"](0.01), plain)
    rows = V.verdict_rows(named, counts, by_story["classic"].truth, 0.25, 7)
    np.testing.assert_array_equal(rows.features, by_story["classic"].features)


def test_a_storys_family_draws_train_the_other_stories_models_never_its_own(two_stories):
    """``evaluate.verdict_family_draws``: a story's extra draws join every other story's fit and threshold, and
    the fit that verdict.json holds, but never the fit of the story they were drawn from."""
    config, by_story = two_stories

    def metrics(flags, truth):
        return M.cell_metrics(flags, truth, config.evaluate.detection_early_windows)

    def draw(story):
        days = M.story_days(M.family_config(config, 0), story)
        counts = M.windowed(days, 7)
        truth = M.story_truth(days, counts, 7, 0.25, config.evaluate.matrix_margin_days,
                              config.evaluate.min_expected_events)
        return V.verdict_rows(config, counts, truth, 0.25, 7)

    family = {"classic": [draw("classic")], "hawkes": [draw("hawkes")]}
    plain = V.held_out_verdicts(config, by_story, metrics)
    first = V.held_out_verdicts(config, by_story, metrics, family)

    def weights(out, story):
        return np.asarray(out[story][2].weights)

    assert not np.array_equal(weights(plain, "hawkes"), weights(first, "hawkes"))  # classic's draw joined it
    own = dict(family, hawkes=[dataclasses.replace(r, features=r.features[::-1].copy()) for r in family["hawkes"]])
    second = V.held_out_verdicts(config, by_story, metrics, own)
    np.testing.assert_array_equal(weights(first, "hawkes"), weights(second, "hawkes"))
    assert first["hawkes"][0] == second["hawkes"][0]
    assert not np.array_equal(weights(first, "classic"), weights(second, "classic"))
    fit = V.verdict_for_analysis(config, by_story, 7, 0.25, family)
    assert fit.stories == ("classic", "hawkes", "engaged", "classic (family draw 1)", "hawkes (family draw 1)")


def test_the_family_draws_other_users_with_the_wide_periods_and_pauses():
    config = load_config(None, ["evaluate.matrix_users=60", "evaluate.matrix_days=70", "synthetic.users_per_shard=60",
                                "evaluate.verdict_period_days=[20, 30]", "evaluate.verdict_pause_days=[15, 16]"])
    drawn = M.family_config(config, 1)
    syn = drawn.synthetic
    assert (syn.period_days_min, syn.period_days_max, syn.pause_days_min, syn.pause_days_max) == (20, 30, 15, 16)
    assert syn.seed == config.synthetic.seed + 2 * M.FAMILY_SEED_STRIDE and drawn.evaluate == config.evaluate
    days = M.story_days(drawn, "classic")
    reactivated = days.kind == synthetic.REACTIVATED
    assert reactivated.any() and set((days.resume - days.change)[reactivated]) <= {15, 16}
    assert not np.array_equal(days.counts, M.story_days(config, "classic").counts)
    # evaluate.verdict_own_draws: other users again, at synthetic's own periods and pauses.
    own = M.family_config(config, 2, own_ranges=True).synthetic
    assert (own.period_days_min, own.period_days_max, own.pause_days_min, own.pause_days_max) == (
        config.synthetic.period_days_min, config.synthetic.period_days_max, config.synthetic.pause_days_min,
        config.synthetic.pause_days_max)
    assert own.seed == config.synthetic.seed + 3 * M.FAMILY_SEED_STRIDE
    short = load_config(None, ["evaluate.matrix_days=70", "evaluate.verdict_own_days=30"])  # verdict_own_days
    assert M.family_config(short, 0, own_ranges=True).evaluate.matrix_days == 30
    assert M.family_config(short, 0).evaluate.matrix_days == 70  # the wide draws keep the matrix's days
    for bad in ("[30, 20]", "[20]"):
        with pytest.raises(ConfigError, match=r"evaluate\.verdict_period_days: expected \[min, max\]"):
            load_config(None, [f"evaluate.verdict_period_days={bad}"])


def test_the_threshold_choices_scores_are_the_cell_metrics(two_stories):
    """``threshold_scores`` (first alarms per pair, no (windows, users, slots) flags) gives ``cell_metrics``' F1
    and share of loyal pairs ever flagged at every threshold, on every story and under a fit that makes the sweep
    span no flags to many."""
    config, by_story = two_stories
    e = config.evaluate
    x, y, w = V.training_set(list(by_story.values()), e.detection_early_windows, 10_000, np.random.default_rng(0))
    params = V.fit_verdict(x, y, w, steps=6)
    thresholds = [-30.0, *e.verdict_threshold_sweep, 30.0]
    for rows in by_story.values():
        points = V.threshold_points(rows, params, thresholds,
                                    lambda f, t: M.cell_metrics(f, t, e.detection_early_windows))
        got = V.threshold_scores(rows, params, thresholds, e.detection_early_windows)
        assert [f for f, _ in got] == [p["f1"] or 0.0 for p in points]
        assert [q for _, q in got] == pytest.approx([p["loyal_ever_flagged"] for p in points])
        assert len({f for f, _ in got}) > 3 and got[0][1] > got[-1][1] == 0.0  # the sweep moves both


def test_a_loyal_cap_takes_the_best_f1_among_the_thresholds_within_it():
    scores = [[(0.90, 0.040), (0.88, 0.015), (0.80, 0.005), (0.50, 0.0)],
              [(0.94, 0.020), (0.92, 0.005), (0.85, 0.001), (0.60, None)]]  # a story without loyal pairs: 0
    assert V.choose_threshold(scores, 0.0) == 0  # no cap: the best mean F1
    assert V.choose_threshold(scores, 0.01) == 1  # mean loyal 0.010: within
    assert V.choose_threshold(scores, 0.005) == 2
    assert V.choose_threshold([[(0.9, 0.3), (0.8, 0.2)]], 0.01) == 1  # none within: the fewest flagged
