"""Training: one loop for every model (``fgjax.training.loop``), row-sparse tables (``sparse``), multi-process (``distributed``)."""

from fgjax.training.loop import TrainResult, TrainState, Validation, train, train_examples

__all__ = ["TrainResult", "TrainState", "Validation", "train", "train_examples"]
