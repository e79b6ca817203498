"""Flax nnx models."""

from fgjax.models.mlp import EmbeddingMLP, Params, abstract_params, build_model, split_params
from fgjax.models.sequence import TimeAwareSASRec, build_sequence_model

__all__ = ["EmbeddingMLP", "Params", "TimeAwareSASRec", "abstract_params", "build_model", "build_sequence_model",
           "split_params"]
