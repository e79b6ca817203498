"""Privacy (issue 13): pseudonymous user IDs and user-level differentially private training.

Every expectation is computed independently of the code under test: Python's ``hmac`` for the
pseudonyms, NumPy for the clipped sums, dp-accounting called directly for epsilon, and a byte scan
of every file a run writes for the raw IDs and the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fgjax.config import load_config
from fgjax.data.pseudonym import Pseudonymizer, read_secret
from fgjax.errors import CheckpointError, ConfigError

SECRET = "k3y-0f-the-t3st-9f2c1a"
ENV = "FGJAX_TEST_PSEUDONYM_SECRET"
NUM_USERS, NUM_ITEMS, NUM_CATEGORIES = 24, 30, 3


def _raw_id(u: int) -> str:
    return f"user-secret-{u:06d}"


def _reference(raw) -> str:
    data = raw.encode() if isinstance(raw, str) else str(raw).encode()
    return hmac.new(SECRET.encode(), data, hashlib.sha256).hexdigest()


# ------------------------------------------------------------------ pseudonyms


def test_pseudonyms_equal_python_hmac_sha256():
    p = Pseudonymizer(SECRET)
    raw = pa.array([_raw_id(7), None, _raw_id(7), "é-ünïcode", ""], pa.string())
    got = p.apply(raw).to_pylist()
    assert got == [_reference(_raw_id(7)), None, _reference(_raw_id(7)), _reference("é-ünïcode"), _reference("")]
    ints = p.apply(pa.array([7, 123456789012, None], pa.int64())).to_pylist()
    assert ints == [_reference("7"), _reference("123456789012"), None]
    assert p.pseudonym(7) == p.pseudonym("7")  # one ID whether read as an integer or as text
    assert Pseudonymizer("another").pseudonym(_raw_id(7)) != p.pseudonym(_raw_id(7))
    assert SECRET not in repr(p)


def test_missing_or_empty_secret_is_one_line_naming_where(tmp_path):
    with pytest.raises(ConfigError, match=f"environment variable {ENV} .*not set") as exc:
        read_secret(ENV, environ={})
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=f"{ENV} .*is empty"):
        read_secret(ENV, environ={ENV: ""})
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=f"secret file '{missing}'.*does not exist"):
        read_secret(ENV, str(missing), environ={ENV: SECRET})
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(ENV, str(empty))
    key = tmp_path / "s.key"
    key.write_text(SECRET + "\n")  # a file's trailing newline is not part of the secret
    assert read_secret(ENV, str(key), environ={ENV: "ignored: the file wins"}) == SECRET.encode()
    assert read_secret(ENV, environ={ENV: SECRET}) == SECRET.encode()


def _write_log(folder: Path) -> tuple[Path, Path]:
    """Events with distinctive raw user IDs (each user sticks to one category), plus two bad rows that go
    to rejects.parquet with their user ID."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(NUM_USERS):
        for j in range(14):
            item = (u % NUM_CATEGORIES) + NUM_CATEGORIES * int(rng.integers(NUM_ITEMS // NUM_CATEGORIES))
            rows.append((_raw_id(u), item, 1_700_000_000 + 86400 * (j // 2) + 3600 * j + u))
    users = [r[0] for r in rows] + [_raw_id(3), _raw_id(4)]
    items = [r[1] for r in rows] + [None, 2]
    times = [r[2] for r in rows] + [1_700_000_000, -5]  # null item; timestamp out of range
    folder.mkdir(parents=True, exist_ok=True)
    events, items_path = folder / "events.parquet", folder / "items.parquet"
    pq.write_table(pa.table({"user_id": users, "item_id": pa.array(items, pa.int64()),
                             "timestamp": pa.array(times, pa.int64())}), events)
    pq.write_table(pa.table({"item_id": np.arange(NUM_ITEMS), "category": [f"c{i % NUM_CATEGORIES}"
                                                                          for i in range(NUM_ITEMS)]}), items_path)
    return events, items_path


PRIVATE = ["train.epochs=2", "train.privacy.enabled=true", "train.privacy.users_per_step=6",
           "train.privacy.examples_per_user=4", "train.privacy.target_epsilon=4", "model.embed_dim=8",
           "model.hidden_dim=8", "recommend.user_chunk=64",
           "analysis.detector.kind=level"]  # the level rule: the detector's compilation is not what is tested here


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    """``fgjax train`` with pseudonyms and DP on a tiny log, the secret in an environment variable."""
    from fgjax.pipeline import analyze_only, train_model

    root = tmp_path_factory.mktemp("privacy")
    events, items = _write_log(root / "input")
    overrides = [f"data.path={events}", f"data.items_path={items}", "data.pseudonymize=true",
                 f"data.pseudonym_secret_env={ENV}", *PRIVATE]
    config = load_config(None, overrides)
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV, SECRET)
    try:
        lines: list[str] = []
        fitted = train_model(config, root / "train", lines.append, progress=False)
        analyze_only(config, root / "analyze", lines.append, progress=False)
    finally:
        mp.undo()
    return {"root": root, "config": config, "fitted": fitted, "lines": lines}


def test_no_output_byte_holds_a_raw_id_or_the_secret(private_run):
    root = private_run["root"]
    written = [p for folder in ("train", "analyze") for p in (root / folder).rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"rejects.parquet", "metrics.jsonl", "fgjax-run.json", "forgetting.parquet", "states.parquet",
            "users.parquet"} <= names, names
    needles = [SECRET.encode(), b"user-secret-"] + [_raw_id(u).encode() for u in range(NUM_USERS)]
    for path in written:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} in {path}"
    # The bad rows are in the rejects, under their pseudonyms; the logs never print a raw ID either.
    rejects = pq.read_table(root / "train" / "rejects.parquet").column("user_id").to_pylist()
    assert sorted(rejects) == sorted([_reference(_raw_id(3)), _reference(_raw_id(4))])
    assert not any("user-secret" in line or SECRET in line for line in private_run["lines"])
    # Outputs name users by pseudonym: the users' HMACs, each exactly once in the vocabulary.
    vocab = pq.read_table(root / "train" / "checkpoint" / "vocab" / "users.parquet").column("id").to_pylist()
    assert sorted(vocab) == sorted(_reference(_raw_id(u)) for u in range(NUM_USERS))
    states = set(pq.read_table(root / "analyze" / "states.parquet").column("user_id").to_pylist())
    assert states <= set(vocab) and states
    # What the config records is where the secret is, not the secret.
    saved = json.loads((root / "train" / "fgjax-run.json").read_text())["runs"]["train"]["config"]["data"]
    assert saved["pseudonymize"] is True and saved["pseudonym_secret_env"] == ENV


def test_load_recommends_by_raw_ids_with_the_secret_and_refuses_without(private_run, monkeypatch):
    import fgjax

    checkpoint = private_run["root"] / "train" / "checkpoint"
    raw = [_raw_id(5), _raw_id(11), "user-secret-unknown"]
    monkeypatch.delenv(ENV, raising=False)
    model = fgjax.load(checkpoint, pseudonym_secret=SECRET)
    table = model.recommend(raw, k=3)
    expected = [_reference(r) for r in raw]
    assert table.column("user_id").to_pylist() == [u for u in expected for _ in range(3)]
    by_pseudonym = model.recommend(expected[:2], k=3, pseudonyms=True)
    assert by_pseudonym.column("item_id").to_pylist() == table.column("item_id").to_pylist()[:6]
    # Known users rank by the model (their seen items excluded), not by the popularity fallback of the unknown one.
    assert table.column("item_id").to_pylist()[:3] != table.column("item_id").to_pylist()[6:]
    # The env var the checkpoint's config names works as well as the argument.
    monkeypatch.setenv(ENV, SECRET)
    assert fgjax.load(checkpoint).recommend(raw, k=3).equals(table)
    monkeypatch.delenv(ENV)
    model = fgjax.load(checkpoint)
    with pytest.raises(ConfigError, match=f"environment variable {ENV} .*not set"):
        model.recommend(raw, k=3)
    assert model.recommend(expected[:2], k=3, pseudonyms=True).equals(by_pseudonym)  # pseudonyms need no secret
    with pytest.warns(fgjax.errors.FgjaxWarning, match="is the secret the one"):
        fgjax.load(checkpoint, pseudonym_secret="a wrong secret").recommend(raw[:2], k=3)
    with pytest.warns(fgjax.errors.FgjaxWarning, match=r"are they pseudonyms \(pseudonyms=True\)"):
        model.recommend(raw[:2], k=3, pseudonyms=True)  # raw IDs passed as pseudonyms: none known
    with pytest.raises(ConfigError, match="the pseudonym secret is bytes or str, got int"):
        fgjax.load(checkpoint, pseudonym_secret=5)  # bytes(5) would have been five zero bytes


def test_cli_without_the_secret_stops_with_one_line(tmp_path, monkeypatch, capsys):
    from fgjax.cli import main

    events, items = _write_log(tmp_path / "input")
    monkeypatch.delenv(ENV, raising=False)
    code = main(["train", "--out", str(tmp_path / "out"), "--no-progress", "--set", f"data.path={events}",
                 "--set", "data.pseudonymize=true", "--set", f"data.pseudonym_secret_env={ENV}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("fgjax: error: ") and len(err.splitlines()) == 1
    assert ENV in err and "data.pseudonym_secret_env" in err


# ------------------------------------------------------------------ DP-SGD


def _reference_clipped_mean(per_user: np.ndarray, mask: np.ndarray, clip: float, expected: float) -> np.ndarray:
    norms = np.linalg.norm(per_user.reshape(len(per_user), -1), axis=1)
    factors = np.minimum(1.0, clip / np.maximum(norms, 1e-30))
    return (per_user * (factors * mask)[:, None]).sum(0) / expected


def test_private_gradient_clips_each_user_like_numpy():
    from fgjax.training.privacy import private_gradient

    rng = np.random.default_rng(3)
    capacity, examples, dim = 6, 5, 7
    scale = np.array([0.05, 3.0, 0.1, 5.0, 4.0, 0.2])[:, None, None]  # some users above the clip norm, some below
    x = (rng.normal(0, 1.0, (capacity, examples, dim)) * scale).astype(np.float32)
    w = rng.normal(0, 0.05, dim).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)

    def loss_fn(params, user_batch, key):  # one user's mean of 0.5 |w - x_i|^2: gradient w - mean_i x_i
        return 0.5 * jnp.mean(jnp.sum((params["w"] - user_batch["x"]) ** 2, axis=-1))

    per_user = w[None, :] - x.mean(axis=1)  # (capacity, dim)
    clip, expected = 1.5, 4.0
    norms = np.linalg.norm(per_user, axis=1)[mask > 0]
    assert (norms > clip).any() and (norms < clip).any()
    loss, grads = private_gradient(loss_fn, {"w": jnp.asarray(w)}, {"x": jnp.asarray(x), "mask": jnp.asarray(mask)},
                                   jax.random.key(0), clip_norm=clip, noise_multiplier=0.0, expected_users=expected)
    np.testing.assert_allclose(np.asarray(grads["w"]), _reference_clipped_mean(per_user, mask, clip, expected),
                               rtol=1e-5, atol=1e-6)
    losses = 0.5 * np.mean(np.sum((w - x) ** 2, axis=-1), axis=1)
    assert float(loss) == pytest.approx(float((losses * mask).sum() / mask.sum()), rel=1e-5)
    # A clip norm above every user's norm leaves the sum unclipped.
    _, unclipped = private_gradient(loss_fn, {"w": jnp.asarray(w)}, {"x": jnp.asarray(x), "mask": jnp.asarray(mask)},
                                    jax.random.key(0), clip_norm=1e6, noise_multiplier=0.0, expected_users=expected)
    np.testing.assert_allclose(np.asarray(unclipped["w"]), (per_user * mask[:, None]).sum(0) / expected,
                               rtol=1e-5, atol=1e-6)


def test_private_gradient_noise_has_std_sigma_clip_over_expected_users():
    from fgjax.training.privacy import private_gradient

    sigma, clip, expected, size = 2.0, 0.5, 4.0, 40_000
    params = {"a": jnp.zeros((size // 2,)), "b": jnp.zeros((size // 4, 2))}

    def loss_fn(p, user_batch, key):  # zero gradient: what comes out is the noise alone
        return 0.0 * (jnp.sum(p["a"]) + jnp.sum(p["b"])) + jnp.sum(user_batch["x"])

    batch = {"x": jnp.ones((8, 3)), "mask": jnp.ones((8,))}
    _, grads = private_gradient(loss_fn, params, batch, jax.random.key(1), clip_norm=clip, noise_multiplier=sigma,
                                expected_users=expected)
    noise = np.concatenate([np.asarray(g).ravel() for g in jax.tree.leaves(grads)])
    assert noise.std() == pytest.approx(sigma * clip / expected, rel=0.03)
    assert abs(noise.mean()) < 4 * sigma * clip / expected / math.sqrt(size)
    # Another key, other noise; the same key, the same noise.
    _, again = private_gradient(loss_fn, params, batch, jax.random.key(1), clip_norm=clip, noise_multiplier=sigma,
                                expected_users=expected)
    _, other = private_gradient(loss_fn, params, batch, jax.random.key(2), clip_norm=clip, noise_multiplier=sigma,
                                expected_users=expected)
    assert np.array_equal(np.asarray(again["a"]), np.asarray(grads["a"]))
    assert not np.allclose(np.asarray(other["a"]), np.asarray(grads["a"]))


def test_user_sampler_is_poisson_over_users_and_pure():
    from fgjax.training.privacy import UserSampler

    owners = np.repeat(np.arange(50), np.arange(50) % 7 + 1)  # users with 1..7 examples
    rng = np.random.default_rng(0)
    owners = owners[rng.permutation(len(owners))]
    sampler = UserSampler(owners, sampling_rate=0.2, capacity=30, examples_per_user=4, seed=9)
    assert sampler.num_users == 50
    counts = []
    for step in range(400):
        idx, mask = sampler.indices(step)
        assert idx.shape == (30, 4) and mask.shape == (30,)
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        users = owners[idx[:n]]
        assert (users == users[:, :1]).all()  # a row is one user's examples
        assert len(set(users[:, 0])) == n  # without replacement across rows
        counts.append(n)
    assert np.mean(counts) == pytest.approx(0.2 * 50, rel=0.05)
    assert np.var(counts) == pytest.approx(50 * 0.2 * 0.8, rel=0.25)  # binomial, not a fixed size
    a, b = sampler.indices(17), sampler.indices(17)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(sampler.indices(18)[0], a[0])


def test_accountant_matches_dp_accounting_called_directly():
    import dp_accounting

    from fgjax.config import PrivacyConfig
    from fgjax.training.privacy import calibrate_noise, plan_privacy

    q, sigma, steps, delta = 0.05, 1.1, 120, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    direct_rdp = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)
    direct_pld = dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(delta)
    plan = plan_privacy(PrivacyConfig(enabled=True, users_per_step=10, delta=delta), 200, steps)
    assert plan.sampling_rate == pytest.approx(q) and plan.expected_users == pytest.approx(10)
    for name, direct in (("rdp", direct_rdp), ("pld", direct_pld)):
        spent = type(plan)(**{**plan.to_json(), "noise_multiplier": sigma, "accountant": name}).epsilon(steps)
        assert spent == pytest.approx(direct, rel=1e-9)
    assert direct_pld < direct_rdp  # the two accountants really differ
    # The calibrated noise spends the target (from below, within the search's tolerance), and no more.
    for target in (1.0, 8.0):
        noise = calibrate_noise("rdp", target, delta, q, steps)
        at = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise)), steps)).get_epsilon(delta)
        assert target * 0.99 < at <= target
    assert calibrate_noise("rdp", math.inf, delta, q, steps) == 0.0
    # Capacity: a step can hold the binomial count's far tail.
    assert 10 < plan.capacity <= 200
    from fgjax.errors import FgjaxWarning

    with pytest.warns(FgjaxWarning, match="not below 1 / users"):
        plan_privacy(PrivacyConfig(enabled=True, users_per_step=10, delta=0.01), 200, 5)


def test_private_run_logs_the_epsilon_it_spent(private_run):
    from fgjax.training.privacy import epsilon_spent

    trained = private_run["fitted"].trained
    spent = trained.privacy
    assert spent is not None and spent["steps_run"] == trained.steps == spent["steps"]
    users = NUM_USERS
    assert spent["users"] == users and spent["sampling_rate"] == pytest.approx(6 / users)
    assert spent["epsilon"] <= 4.0 and spent["epsilon"] > 3.9  # the planned steps spend the target
    history = [json.loads(line) for line in
               (private_run["root"] / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [4, 8]  # an epoch: users / users_per_step steps
    for record in history:
        assert record["epsilon"] == pytest.approx(epsilon_spent("rdp", 6 / users, spent["noise_multiplier"],
                                                                record["step"], 1e-5))
    assert history[0]["epsilon"] < history[1]["epsilon"]
    assert any(line.startswith("privacy: epsilon 3.9") or line.startswith("privacy: epsilon 4")
               for line in private_run["lines"]), private_run["lines"]


def test_private_training_refuses_what_it_cannot_account(tmp_path):
    from conftest import make_log

    from fgjax.data.split import leave_last_out
    from fgjax.training import train

    log = make_log(num_users=12, num_items=10, events_per_user=6)
    split = leave_last_out(log.user, log.item, log.timestamp, log.num_users)
    for extra, message in ((["train.patience=2"], "patience=0"),
                           (["train.table_optimizer=row_adagrad"], "table_optimizer=dense"),
                           (["model.name=itemknn"], "closed-form")):
        config = load_config(None, ["train.privacy.enabled=true", *extra])
        with pytest.raises(ConfigError, match=message):
            train(config, log, split, tmp_path / "ckpt", progress=False)


def test_config_keys_and_rules():
    config = load_config(None, ["train.privacy.enabled=true", "train.privacy.target_epsilon=.inf",
                                "data.pseudonymize=true", "data.pseudonym_secret_file=/run/secrets/k"])
    assert config.train.privacy.target_epsilon == math.inf and config.data.pseudonym_secret_file == "/run/secrets/k"
    for bad, message in (("train.privacy.delta=1.5", "train.privacy.delta"),
                         ("train.privacy.clip_norm=0", "train.privacy.clip_norm"),
                         ("train.privacy.accountant=moments", "train.privacy.accountant"),
                         ("data.pseudonym_secret=abc", "unknown config key 'data.pseudonym_secret'")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])


@pytest.mark.slow
def test_privacy_benchmark_writes_its_table(tmp_path):
    import sys

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:  # bench/ is a repo folder, not part of the installed package
        sys.path.insert(0, str(root))
    from bench import privacy as bench_privacy

    events, _ = _write_log(tmp_path / "input")
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nkept\n")
    # With early stopping in the config (as configs/ml100k.yaml has): the private runs go without it.
    payload = bench_privacy.main(["--config", "", "--data", str(events), "--scale", "smoke", "--epsilons", "4,inf",
                                  "--set", "train.patience=2",
                                  "--out", str(tmp_path / "privacy.json"), "--results-md", str(md)])
    runs = {r["run"]: r for r in payload["results"]}
    assert list(runs) == ["non-private", "DP eps=4", "DP eps=inf"]
    assert runs["non-private"]["epsilon"] is None and runs["DP eps=inf"]["noise_multiplier"] == 0.0
    assert 3.9 < runs["DP eps=4"]["epsilon"] <= 4.0
    # Only the members are trained on: the private runs sample from them alone.
    assert runs["DP eps=4"]["privacy"]["users"] == payload["setup"]["members"] < NUM_USERS
    for r in runs.values():
        assert 0.0 <= r["ndcg@10"] <= 1.0 and 0.0 <= r["attack_auc"] <= 1.0
        assert r["membership_gap"] == pytest.approx(r["held_out_loss"] - r["member_loss"])
    saved = json.loads((tmp_path / "privacy.json").read_text())
    assert saved["versions"]["dp-accounting"] and saved["date"] and saved["device"]
    text = md.read_text()
    assert "kept" in text and text.count(bench_privacy.SECTION_START) == 1 and "| DP eps=4 |" in text
    bench_privacy._replace_section(md, bench_privacy._markdown(payload))  # a rerun replaces, never appends
    assert md.read_text().count(bench_privacy.SECTION_START) == 1


@pytest.mark.slow
def test_sequence_model_trains_privately_over_its_users_windows(tmp_path):
    from conftest import make_log

    from fgjax.data.sequences import build_sequences
    from fgjax.data.split import leave_last_out
    from fgjax.training import train

    log = make_log(num_users=16, num_items=40, events_per_user=24)
    split = leave_last_out(log.user, log.item, log.timestamp, log.num_users)
    config = load_config(None, ["model.name=sasrec", "sequence.patience=0", "sequence.epochs=2", "sequence.dim=8",
                                "sequence.heads=1", "sequence.layers=1", "sequence.max_len=4",
                                "train.privacy.enabled=true", "train.privacy.users_per_step=4",
                                "train.privacy.examples_per_user=2", "train.privacy.target_epsilon=2"])
    sequences = build_sequences(log.user, log.item, log.timestamp, log.num_users, split.train_events)
    owners = sequences.window_owners(4)
    inputs, _, _ = sequences.training_windows(4, pad_item=log.num_items)
    assert len(owners) == len(inputs) and np.array_equal(np.unique(owners), np.flatnonzero(sequences.lengths() > 1))
    result = train(config, log, split, tmp_path / "ckpt", progress=False)
    users = len(np.unique(owners))
    assert result.steps == 2 * -(-users // 4) and result.privacy["users"] == users
    assert 1.9 < result.privacy["epsilon"] <= 2.0
    assert [r["epsilon"] for r in result.history] == sorted(r["epsilon"] for r in result.history)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


@pytest.mark.slow
def test_private_run_resumes_exactly(tmp_path):
    from conftest import make_log

    from fgjax.data.split import leave_last_out
    from fgjax.training import train

    log = make_log(num_users=20, num_items=16, events_per_user=12)
    split = leave_last_out(log.user, log.item, log.timestamp, log.num_users)
    config = load_config(None, ["train.epochs=3", "train.privacy.enabled=true", "train.privacy.users_per_step=5",
                                "model.embed_dim=4", "model.hidden_dim=4"])
    whole = train(config, log, split, tmp_path / "whole", progress=False)

    def crash(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # after epoch 1's checkpoint, before epoch 2's

    with pytest.raises(KeyboardInterrupt):
        train(config, log, split, tmp_path / "cut", progress=False, on_epoch_end=[crash])
    resumed = train(config, log, split, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == whole.steps == 12
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same users, examples and noise
    assert resumed.privacy["epsilon"] == whole.privacy["epsilon"]
    # A longer run is another mechanism (its noise is calibrated for more steps): not a resume.
    longer = load_config(None, ["train.epochs=4", "train.privacy.enabled=true", "train.privacy.users_per_step=5",
                                "model.embed_dim=4", "model.hidden_dim=4"])
    with pytest.raises(CheckpointError, match="privacy_plan"):
        train(longer, log, split, tmp_path / "cut", progress=False)
