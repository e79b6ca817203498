"""fgjax: model how users forget their interests, at scale, in JAX.

Public API (imported lazily, so a service that only calls ``fgjax.load`` never
imports the training code):

- ``fgjax.load(path)`` -> a ``ServingModel`` with ``.recommend(raw_user_ids, k)``.
- ``fgjax.quickstart``, ``fgjax.prepare`` (read + split), ``fgjax.fit`` (train +
  analyze + serving state), ``fgjax.analyze``, ``fgjax.evaluate_checkpoint``:
  the library functions behind the CLI (modules ``fgjax.training.loop``,
  ``fgjax.evaluation.metrics`` ... hold the lower-level pieces).
- ``fgjax.kernels``: pure JAX kernels.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType

__version__ = "0.1.0"

_LAZY = MappingProxyType({
    "load": ("fgjax.serving.model", "load"),
    "ServingModel": ("fgjax.serving.model", "ServingModel"),
    "Config": ("fgjax.config", "Config"),
    "load_config": ("fgjax.config", "load_config"),
    # No name here may equal a submodule's (train, evaluate, recommend, ...):
    # importing the submodule would silently replace the attribute.
    "analyze": ("fgjax.analysis", "analyze"),
    "quickstart": ("fgjax.pipeline", "quickstart"),
    "prepare": ("fgjax.pipeline", "prepare"),
    "fit": ("fgjax.pipeline", "fit"),
    "evaluate_checkpoint": ("fgjax.pipeline", "evaluate_checkpoint"),
    "read_events": ("fgjax.data.reader", "read_events"),
    "FgjaxError": ("fgjax.errors", "FgjaxError"),
})

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fgjax' has no attribute {name!r}")
