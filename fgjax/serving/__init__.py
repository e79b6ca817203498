"""Serving: load a checkpoint in another service and recommend by raw IDs (no training code)."""

from fgjax.serving.model import ServingModel, load
from fgjax.serving.state import ServingState

__all__ = ["ServingModel", "ServingState", "load"]
