"""An exponential moving average of the params, kept in the optimizer state (``params_ema``).

A model selected and served from an average of its recent params instead of the last step's: the last
steps of a small data set's training wander around a minimum, and the average sits nearer its middle
(Polyak & Juditsky 1992; the EMA variant of TensorFlow's ``ExponentialMovingAverage``). As an optax
transformation at the end of the chain, its state lives in ``opt_state``: it is sharded, donated,
checkpointed and restored with the rest of the optimizer, and a resumed run continues it exactly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ParamsEmaState(NamedTuple):
    """``count``: steps averaged so far (int32); ``ema``: the average, a tree like the params (float32)."""

    count: jax.Array
    ema: Any


def ema_decay(decay: float, count: jax.Array) -> jax.Array:
    """The decay at step ``count`` (0-based): ``min(decay, (1 + count) / (10 + count))``, so the first steps
    are not averaged with the initialization for long (TensorFlow's ``num_updates`` rule)."""
    count = jnp.asarray(count, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + count) / (10.0 + count))


def params_ema(decay: float) -> optax.GradientTransformation:
    """Keeps ``ema <- d * ema + (1 - d) * (params + updates)`` with ``d = ema_decay(decay, count)``; passes the
    updates through unchanged. Put it last in an ``optax.chain``: ``updates`` are then the final ones, so the
    average is of the params each step leaves. ``decay`` in ``[0, 1)``; 0 keeps the last params."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"params_ema: decay must be in [0, 1), got {decay!r}")

    def init(params):
        # A copy (jnp.array), never the params' own buffers: the state is donated beside the params.
        return ParamsEmaState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.array(p, jnp.float32), params))

    def update(updates, state: ParamsEmaState, params=None):
        if params is None:
            raise ValueError("params_ema needs the params: call update(updates, state, params)")
        d = ema_decay(decay, state.count)
        ema = jax.tree.map(lambda e, p, u: d * e + (1.0 - d) * (p + u).astype(jnp.float32), state.ema, params, updates)
        return updates, ParamsEmaState(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def averaged_params(opt_state: Any, like: Any) -> Any | None:
    """The average kept by a ``params_ema`` in ``opt_state`` (anywhere in a chain's state), cast to the dtypes of
    ``like`` (the params); None when the state holds none."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, ParamsEmaState))
             if isinstance(s, ParamsEmaState)]
    if not found:
        return None
    return jax.tree.map(lambda e, p: e.astype(p.dtype), found[0].ema, like)
