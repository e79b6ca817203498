"""The params' moving average (``fgjax.training.averaging``): against a float64 NumPy reference, in the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from fgjax.config import load_config
from fgjax.data.split import leave_last_out
from fgjax.errors import CheckpointError, ConfigError
from fgjax.training.averaging import ParamsEmaState, averaged_params, ema_decay, params_ema
from fgjax.training.loop import TrainState, init_state, make_optimizer, train


def run_chain(decay: float, initial: np.ndarray, gradients: list[np.ndarray], rate: float = 0.1):
    """SGD then ``params_ema``: the params after each step, and the final state."""
    chain = optax.chain(optax.sgd(rate), params_ema(decay))
    params = {"w": jnp.asarray(initial)}
    state = chain.init(params)
    after = []
    for g in gradients:
        updates, state = chain.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        after.append(np.asarray(params["w"], np.float64))
    return after, state


def numpy_average(initial: np.ndarray, after: list[np.ndarray], decay: float) -> np.ndarray:
    ema = np.asarray(initial, np.float64)
    for count, p in enumerate(after):
        d = min(decay, (1.0 + count) / (10.0 + count))
        ema = d * ema + (1.0 - d) * p
    return ema


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.95, 0.999])
def test_average_matches_numpy(decay):
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(7, 3)).astype(np.float32)
    gradients = [rng.normal(size=(7, 3)).astype(np.float32) for _ in range(30)]
    after, state = run_chain(decay, initial, gradients)
    found = averaged_params(state, {"w": jnp.zeros((7, 3), jnp.float32)})
    np.testing.assert_allclose(np.asarray(found["w"]), numpy_average(initial, after, decay), rtol=1e-5, atol=1e-6)
    assert int(state[1].count) == 30
    if decay == 0.0:  # no averaging: the last params
        np.testing.assert_array_equal(np.asarray(found["w"]), after[-1].astype(np.float32))


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 0.9999), st.integers(0, 10**6))
def test_decay_rule(decay, count):
    d = float(ema_decay(decay, count))
    assert d == pytest.approx(min(decay, (1 + count) / (10 + count)), rel=1e-6)
    assert 0.0 <= d < 1.0


def test_constant_params_stay_put_and_dtypes_follow_the_params():
    """Zero gradients: the average is the params at every step (no bias toward zero); bfloat16 params are averaged in
    float32 and handed back in bfloat16."""
    params = {"a": jnp.full((4,), 3.0, jnp.bfloat16), "b": jnp.zeros((2, 2), jnp.float32)}
    chain = optax.chain(optax.sgd(1.0), params_ema(0.9))
    state = chain.init(params)
    for _ in range(5):
        _, state = chain.update(jax.tree.map(jnp.zeros_like, params), state, params)
    found = averaged_params(state, params)
    assert found["a"].dtype == jnp.bfloat16 and state[1].ema["a"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(found["a"], np.float32), 3.0)
    np.testing.assert_array_equal(np.asarray(found["b"]), 0.0)


def test_bad_decay_and_missing_params_are_errors():
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="decay must be in"):
            params_ema(bad)
    transform = params_ema(0.5)
    state = transform.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="needs the params"):
        transform.update({"w": jnp.ones(2)}, state)
    with pytest.raises(ConfigError, match="params_ema"):
        load_config(None, ["sequence.params_ema=1.0"])
    from fgjax.training.loop import LoopSettings, _check_private

    private = load_config(None, ["model.name=time_sasrec", "train.privacy.enabled=true", "sequence.patience=0",
                                 "sequence.params_ema=0.9"])
    with pytest.raises(ConfigError, match="serves the last step's params: set sequence.params_ema=0"):
        _check_private(private, LoopSettings(1, 1, 0.1, 0.0, 0, 0, 1), "sequence", np.zeros(4), 4)
    assert averaged_params(optax.adam(0.1).init({"w": jnp.ones(2)}), {"w": jnp.ones(2)}) is None
    assert isinstance(state, ParamsEmaState)


def sequence_config(**overrides):
    base = {"model.name": "time_sasrec", "sequence.max_len": 6, "sequence.dim": 8, "sequence.heads": 2,
            "sequence.layers": 1, "sequence.dropout": 0.1, "sequence.batch_size": 16, "sequence.epochs": 2,
            "sequence.eval_every": 2, "sequence.learning_rate": 0.01, "sequence.patience": 0,
            "sequence.params_ema": 0.5}
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_the_loop_serves_the_average_and_resumes_it_exactly(tmp_path, small_log):
    from fgjax.checkpoint import TrainCheckpoints
    from fgjax.config import from_dict
    from fgjax.models import abstract_params

    split = leave_last_out(small_log.user, small_log.item, small_log.timestamp, small_log.num_users)
    full = train(sequence_config(), small_log, split, tmp_path / "full", progress=False)
    assert full.best_epoch == 2  # validated once, at the end: the served params are the end's average
    with TrainCheckpoints(tmp_path / "full") as store:
        meta = store.restore_meta()
        assert meta["run"]["params_ema"] == 0.5
        config = from_dict(meta["config"])
        _, abstract = abstract_params(config, small_log.num_users, small_log.num_items)
        abstract_state = jax.eval_shape(lambda p: init_state(p, make_optimizer(config)), abstract)
        served, state, _ = store.restore(abstract, abstract_state,
                                         sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    state = TrainState(*state)
    average = averaged_params(state.opt_state, state.params)
    moved = False
    for a, b, last in zip(jax.tree.leaves(served), jax.tree.leaves(average), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        moved |= not np.array_equal(np.asarray(a), np.asarray(last))
    assert moved  # the average is not the last step's params
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(served)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Stopped mid-epoch and resumed: the same average as the uninterrupted run (it is in the optimizer state).
    stop = full.steps // 2 + 1
    train(sequence_config(**{"train.max_steps": stop}), small_log, split, tmp_path / "resumed", progress=False)
    resumed = train(sequence_config(), small_log, split, tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == stop
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Another decay is another run: refused, by name.
    with pytest.raises(CheckpointError, match="differs in: params_ema"):
        train(sequence_config(**{"sequence.params_ema": 0.9}), small_log, split, tmp_path / "full", progress=False)
