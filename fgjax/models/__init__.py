"""Flax nnx models."""

from fgjax.models.mlp import EmbeddingMLP, Params, abstract_params, build_model, split_params

__all__ = ["EmbeddingMLP", "Params", "abstract_params", "build_model", "split_params"]
