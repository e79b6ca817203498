"""The model registry and the Recommender interface: every model name builds, restores abstractly and trains a step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fgjax.config import Config, ModelConfig, SequenceConfig
from fgjax.errors import ConfigError
from fgjax.models import (BPRMF, MODEL_NAMES, SEQUENCE_MODELS, EmbeddingMLP, ForgettingSASRec, ItemKNN, Recommender,
                          TimeAwareSASRec, abstract_params, build_model, split_params)

from test_models_mlp import numpy_forward


def _config(name: str) -> Config:
    return dataclasses.replace(Config(), model=ModelConfig(name=name, embed_dim=4, hidden_dim=8),
                               sequence=SequenceConfig(max_len=4, dim=8, heads=2, layers=1))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_name_builds_a_recommender_and_abstract_params_match(name):
    config = _config(name)
    model = build_model(config, 7, 11, seed=0, num_categories=3)
    assert isinstance(model, Recommender)
    kinds = {"embedding_mlp": EmbeddingMLP, "bpr": BPRMF, "itemknn": ItemKNN, "forgetting_sasrec": ForgettingSASRec}
    assert isinstance(model, kinds.get(name, TimeAwareSASRec))
    graphdef, params = split_params(model)
    abstract_graph, abstract = abstract_params(config, 7, 11, num_categories=3)
    assert abstract_graph == graphdef  # the same static graph: a restored model is the trained one
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(lambda x: (x.shape, x.dtype), params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    # Restoring = merging the graph with arrays of those shapes.
    restored = nnx.merge(abstract_graph, jax.tree.map(np.asarray, params))
    batch = {f: jnp.zeros((2,) + ((4,) if name in SEQUENCE_MODELS else ()), jnp.int32) for f in model.batch_fields}
    if name in SEQUENCE_MODELS:
        batch["times"] = jnp.zeros((2, 4), jnp.float32)
    if "interest_ages" in model.batch_fields:
        batch["interest_ages"] = jnp.zeros((2, 4, 3), jnp.float32)
    key = jax.random.key(0)
    assert float(restored.loss(batch, key)) == pytest.approx(float(model.loss(batch, key)), rel=1e-6)


def test_sasrec_is_the_network_without_time_encodings():
    time_model = build_model(_config("time_sasrec"), 0, 11, seed=0)
    plain = build_model(_config("sasrec"), 0, 11, seed=0)
    assert [b.time_encoding for b in time_model.blocks] == ["interval"]
    assert [b.time_encoding for b in plain.blocks] == ["none"]


def test_bad_names_are_config_errors():
    with pytest.raises(ConfigError, match="model.name='gru4rec': expected one of embedding_mlp, time_sasrec, sasrec, bpr, itemknn"):
        build_model(dataclasses.replace(Config(), model=ModelConfig(name="gru4rec")), 3, 3, seed=0)
    with pytest.raises(ConfigError, match="sized by the sequence section: pass the whole Config"):
        abstract_params(ModelConfig(name="time_sasrec"), 3, 3)
    with pytest.raises(ConfigError, match=r"forgetting_sasrec needs item categories \(data.items_path\)"):
        build_model(_config("forgetting_sasrec"), 3, 3, seed=0)


def test_mlp_loss_is_bce_with_uniform_negatives_from_the_key():
    config = dataclasses.replace(_config("embedding_mlp"), train=dataclasses.replace(Config().train, negatives=3))
    model = build_model(config, 6, 9, seed=1)
    _, params = split_params(model)
    users, items = np.array([0, 5, 2, 2]), np.array([8, 1, 3, 0])
    key = jax.random.key(7)
    got = float(model.loss({"user": jnp.asarray(users), "item": jnp.asarray(items)}, key))
    negs = np.asarray(jax.random.randint(key, (4, 3), 0, 9, dtype=jnp.int32))
    assert negs.min() >= 0 and negs.max() < 9
    pos = numpy_forward(params, users, items)
    neg = numpy_forward(params, np.repeat(users, 3), negs.reshape(-1))
    want = np.mean(np.concatenate([np.log1p(np.exp(-pos)), np.log1p(np.exp(neg))]))
    assert got == pytest.approx(want, rel=1e-5)
