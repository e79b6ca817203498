"""EmbeddingMLP against a float64 NumPy forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.config import ModelConfig
from fgjax.models import EmbeddingMLP, abstract_params, build_model, split_params


def numpy_forward(params, users, items):
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    x = np.concatenate([p["user_embed"]["embedding"][users], p["item_embed"]["embedding"][items]], axis=-1)
    h = np.maximum(x @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0.0)
    return (h @ p["out"]["kernel"] + p["out"]["bias"])[..., 0]


@pytest.mark.parametrize("embed_dim, hidden_dim", [(32, 64), (4, 3)])
def test_forward_matches_numpy(embed_dim, hidden_dim):
    model = build_model(ModelConfig(embed_dim=embed_dim, hidden_dim=hidden_dim), 11, 13, seed=3)
    _, params = split_params(model)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 11, 50), rng.integers(0, 13, 50)
    got = np.asarray(model(jnp.asarray(users), jnp.asarray(items)))
    np.testing.assert_allclose(got, numpy_forward(params, users, items), rtol=1e-5, atol=1e-6)


def test_full_catalog_scores_equal_pairwise_scores():
    model = build_model(ModelConfig(), 7, 29, seed=1)
    _, params = split_params(model)
    users = np.array([6, 0, 3])
    full = np.asarray(model.score_all_items(jnp.asarray(users)))
    assert full.shape == (3, 29)
    uu, ii = np.meshgrid(users, np.arange(29), indexing="ij")
    np.testing.assert_allclose(full, numpy_forward(params, uu, ii), rtol=1e-5, atol=1e-6)


def test_article_sizes_and_seeded_init():
    a = split_params(build_model(ModelConfig(), 5, 6, seed=0))[1]
    b = split_params(build_model(ModelConfig(), 5, 6, seed=0))[1]
    c = split_params(build_model(ModelConfig(), 5, 6, seed=1))[1]
    assert a["user_embed"]["embedding"].shape == (5, 32)
    assert a["hidden"]["kernel"].shape == (64, 64) and a["out"]["kernel"].shape == (64, 1)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not np.array_equal(a["user_embed"]["embedding"], c["user_embed"]["embedding"])


def test_abstract_params_allocate_nothing_and_match_shapes():
    _, abstract = abstract_params(ModelConfig(), 5, 6)
    _, real = split_params(build_model(ModelConfig(), 5, 6, seed=0))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(lambda x: (x.shape, x.dtype), real)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert isinstance(build_model(ModelConfig(), 2, 2, seed=0), EmbeddingMLP)
