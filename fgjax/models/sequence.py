"""The time-aware sequence model ("the large model" of SPEC.md), as ``flax.nnx``.

A SASRec-class causal transformer over a user's last ``max_len`` items with
the time between behaviors as an attention bias:

    h_0 = sqrt(d) * E[item] + P[position]          (left-padded, last = most recent)
    h_l = h_{l-1} + MHA(LN(h_{l-1}), bias = b_l(|t_q - t_k|)) ;  h_l += FFN(LN(h_l))
    logits(next item) = LN(h_L) @ E^T              (item table tied with the output)

``time_encoding`` picks the bias ``b`` per layer and head:

- ``interval``: a learned value per log2 bucket of the gap
  (``floor(log2(1 + gap / time_unit))``), TiSASRec-style relative intervals;
- ``decay``: ``-softplus(r_h) * log(1 + gap / time_unit)``, a learned
  forgetting rate per head (attention to an old behavior decays as a power
  of its age, the Ebbinghaus curve in the attention);
- ``none``: plain SASRec.

The hidden state at the last position is the user's state: the embedding
interests I(u, t) of SPEC.md (``user_state``). Size scales with ``dim``,
``layers``, ``heads``, ``max_len`` and the catalog (the item table dominates).

Dropout takes an explicit key; ``key=None`` is the deterministic (eval) pass.

``ForgettingSASRec`` (``forgetting_sasrec``) is the same network with the
user's day-scale interest forgetting as a second input, trained end to end.
For each position and interest (item category) k, ``a_k`` is the seconds
since the user's latest event in k (at or before that position, over the
whole history; ``fgjax.data.sequences``), and

    g_k = [k seen] * (1 + a_k / unit) ** (-softplus(rho_k))
    logit(c) = h . E_c + g . A_c = [h, g] . [E_c, A_c]

with ``unit = interest_time_unit`` (a day by default: within a session
``a_k ~ 0`` and ``g_k ~ 1``, so this is forgetting over days, not session
recency), ``rho_k`` a learned rate per interest (``softplus(rho) = 0.5`` at
init) and ``A`` a learned ``(items, K)`` item-interest affinity. With
``interest_decay: none`` the rate is 0 and ``g_k`` is "interest k ever
seen": the ablation that separates forgetting from genre membership. The
query is ``[h_last, g_last]`` and the item rows ``[E, A]``, so ranking,
serving and the training loss see one dot product.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import Array
from fgjax.kernels import bernoulli_mask, softmax_cross_entropy, weighted_softmax_cross_entropy

TIME_ENCODINGS = ("none", "interval", "decay")
LOSSES = ("full_softmax", "sampled_softmax")
INTEREST_DECAYS = ("learned", "none")
#: softplus(_RATE_INIT) = 0.5: an interest silent for a week (unit a day) weighs (1 + 7) ** -0.5 ~ 0.35.
_RATE_INIT = math.log(math.expm1(0.5))
_NEG = -1e9  # finite: a fully masked row stays finite (never NaN)


def time_buckets(gaps: Array, *, time_unit: float, num_buckets: int) -> Array:
    """``floor(log2(1 + gap / time_unit))`` clipped to ``[0, num_buckets - 1]``, int32."""
    b = jnp.floor(jnp.log2(1.0 + jnp.abs(gaps) / time_unit))
    return jnp.clip(b, 0, num_buckets - 1).astype(jnp.int32)


def _dropout(x: Array, rate: float, key: Array | None) -> Array:
    if key is None or rate == 0.0:
        return x
    # A counter-hash mask (fgjax.kernels.bernoulli_mask): threefry per element was 15 % of a CPU training step.
    keep = bernoulli_mask(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _split(key: Array | None, n: int) -> list[Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


class TimeBiasedBlock(nnx.Module):
    """Pre-LayerNorm causal self-attention + feed-forward block with a time bias."""

    def __init__(self, dim: int, heads: int, *, ffn_mult: int, time_encoding: str, num_buckets: int,
                 dropout: float, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.time_encoding = time_encoding
        self.attn_norm = nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.ffn_norm = nnx.LayerNorm(dim, rngs=rngs)
        self.ffn_in = nnx.Linear(dim, ffn_mult * dim, rngs=rngs)
        self.ffn_out = nnx.Linear(ffn_mult * dim, dim, rngs=rngs)
        if time_encoding == "interval":
            self.time_bias = nnx.Param(jnp.zeros((num_buckets, heads)))
        elif time_encoding == "decay":
            # softplus(-2) ~ 0.13: a mild initial forgetting rate, learned per head.
            self.decay_rate = nnx.Param(jnp.full((heads,), -2.0))

    def attention_bias(self, buckets: Array, log_age: Array) -> Array:
        """``(batch, heads, L, L)`` additive time bias (zeros for ``none``)."""
        if self.time_encoding == "interval":
            return jnp.moveaxis(self.time_bias[...][buckets], -1, 1)
        if self.time_encoding == "decay":
            rate = jax.nn.softplus(self.decay_rate[...])
            return -rate[None, :, None, None] * log_age[:, None]
        return jnp.zeros((), log_age.dtype)

    def __call__(self, x: Array, allowed: Array, buckets: Array, log_age: Array, key: Array | None) -> Array:
        """``x``: ``(batch, L, dim)``; ``allowed``: ``(batch, L, L)`` bool (query, key)."""
        batch, length, dim = x.shape
        k_attn, k_proj, k_ffn = _split(key, 3)
        q, k, v = jnp.split(self.qkv(self.attn_norm(x)), 3, axis=-1)
        shape = (batch, length, self.heads, dim // self.heads)
        q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim // self.heads)
        logits = logits + self.attention_bias(buckets, log_age)
        logits = jnp.where(allowed[:, None], logits, _NEG)
        weights = _dropout(jax.nn.softmax(logits, axis=-1), self.dropout, k_attn)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, dim)
        x = x + _dropout(self.proj(out), self.dropout, k_proj)
        hidden = jax.nn.gelu(self.ffn_in(self.ffn_norm(x)))
        return x + _dropout(self.ffn_out(hidden), self.dropout, k_ffn)


class TimeAwareSASRec(nnx.Module):
    """Causal transformer next-item model with time-interval attention bias.

    Args:
      num_items: catalog size; index ``num_items`` is the padding item.
      max_len: L, positions attended.
      dim, heads, layers, ffn_mult: transformer size.
      time_encoding: ``none`` | ``interval`` | ``decay`` (module docstring).
      time_unit: seconds per unit of gap in the buckets and the decay.
      num_buckets: log2 gap buckets (``interval``).
      dropout: rate on embeddings, attention weights and residual branches.
      loss: ``full_softmax`` | ``sampled_softmax`` (``loss``); sampled_negatives:
        uniform negatives shared by a batch (``sampled_softmax``).
      mask_known: leave each position's known items (the distinct earlier items of its
        window, never its own target) out of the training softmax, as evaluation masks
        a user's known items (``full_softmax`` only; for catalogs consumed once).
    """

    batch_fields = ("items", "times", "targets")
    query_fields = ("items", "times")
    normalization = "softmax"

    def __init__(self, num_items: int, *, max_len: int = 50, dim: int = 64, heads: int = 2, layers: int = 2,
                 ffn_mult: int = 4, time_encoding: str = "interval", time_unit: float = 60.0, num_buckets: int = 32,
                 dropout: float = 0.2, loss: str = "full_softmax", sampled_negatives: int = 256,
                 mask_known: bool = False, rngs: nnx.Rngs):
        if time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"time_encoding={time_encoding!r}: expected one of {', '.join(TIME_ENCODINGS)}")
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {', '.join(LOSSES)}")
        if mask_known and loss != "full_softmax":
            raise ValueError(f"mask_known needs loss='full_softmax', got loss={loss!r}")
        self.num_items = num_items
        self.mask_known = mask_known
        self.loss_kind = loss
        self.sampled_negatives = sampled_negatives
        self.max_len = max_len
        self.time_unit = time_unit
        self.num_buckets = num_buckets
        self.dropout = dropout
        init = nnx.initializers.normal(1.0 / math.sqrt(dim))
        self.item_embed = nnx.Embed(num_items + 1, dim, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Param(init(rngs.params(), (max_len, dim)))
        self.blocks = nnx.List([
            TimeBiasedBlock(dim, heads, ffn_mult=ffn_mult, time_encoding=time_encoding, num_buckets=num_buckets,
                            dropout=dropout, rngs=rngs)
            for _ in range(layers)
        ])
        self.final_norm = nnx.LayerNorm(dim, rngs=rngs)

    def hidden_states(self, items: Array, times: Array, key: Array | None = None) -> Array:
        """``(batch, L)`` left-padded items and their times (seconds) -> ``(batch, L, dim)``."""
        batch, length = items.shape
        valid = items != self.num_items
        causal = jnp.tril(jnp.ones((length, length), bool))
        # A padding query may see itself, so no row is fully masked.
        allowed = causal[None] & (valid[:, None, :] | jnp.eye(length, dtype=bool)[None])
        times = times - jnp.max(times, axis=1, keepdims=True)  # relative times: float32-safe gaps
        gaps = times[:, :, None] - times[:, None, :]  # (batch, query, key) >= 0 where allowed
        buckets = time_buckets(gaps, time_unit=self.time_unit, num_buckets=self.num_buckets)
        log_age = jnp.log1p(jnp.abs(gaps) / self.time_unit)
        keys = _split(key, len(self.blocks) + 1)
        dim = self.item_embed.embedding.shape[-1]
        x = self.item_embed(items) * math.sqrt(dim) + self.pos_embed[...][-length:]
        x = _dropout(x, self.dropout, keys[0]) * valid[..., None]
        for block, k in zip(self.blocks, keys[1:]):
            x = block(x, allowed, buckets, log_age, k)
        return self.final_norm(x)

    def item_table(self) -> Array:
        """``(items, dim)`` output embeddings (the padding row excluded)."""
        return self.item_embed.embedding[...][: self.num_items]

    def user_state(self, items: Array, times: Array) -> Array:
        """``(batch, dim)``: the state after the most recent item (embedding interests I(u, t))."""
        return self.hidden_states(items, times)[:, -1]

    # The model interface (fgjax.models.interface.Recommender).

    def loss(self, batch: Mapping[str, Array], key: Array) -> Array:
        """Mean next-item cross-entropy over the non-padding positions -> ``()``.

        ``batch``: ``items`` ``(B, L)`` left-padded inputs, ``times`` ``(B, L)``
        relative seconds, ``targets`` ``(B, L)`` next items (-1 in the padding)
        (``ForgettingSASRec``: also ``interest_ages`` ``(B, L, K)``). The logits are
        ``position_queries`` against ``item_rows``.
        ``key`` drives dropout and the sampled negatives. ``full_softmax``: over
        the whole catalog. ``sampled_softmax``: over the target and
        ``sampled_negatives`` uniform items shared by the batch (an accidental
        hit of the target is masked out); uniform sampling needs no logQ correction.
        """
        k_drop, k_neg = jax.random.split(key)
        hidden = self.position_queries(batch, k_drop if self.dropout > 0 else None)  # (B, L, h)
        table = self.item_rows()
        targets = batch["targets"]
        valid = targets >= 0
        safe = jnp.where(valid, targets, 0)
        if self.mask_known:
            return jnp.sum(self._known_masked_losses(hidden, table, batch["items"], targets) * valid) / jnp.maximum(
                jnp.sum(valid), 1)
        if self.loss_kind == "full_softmax":
            # Chunked, gradients with the forward: the (B * L, items) logits never sit in memory
            # (fgjax.kernels.weighted_softmax_cross_entropy); the weights are the mean over real positions.
            weights = valid / jnp.maximum(jnp.sum(valid), 1)
            return weighted_softmax_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), table, safe.reshape(-1),
                                                  weights.reshape(-1))
        negs = jax.random.randint(k_neg, (self.sampled_negatives,), 0, table.shape[0])
        positive = jnp.sum(hidden * table[safe], axis=-1, keepdims=True)  # (B, L, 1)
        negative = hidden @ table[negs].T  # (B, L, S)
        negative = jnp.where(negs[None, None, :] == safe[..., None], _NEG, negative)
        logits = jnp.concatenate([positive, negative], axis=-1)
        per_position = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros_like(safe))
        return jnp.sum(per_position * valid) / jnp.maximum(jnp.sum(valid), 1)

    def _known_masked_losses(self, hidden: Array, table: Array, items: Array, targets: Array) -> Array:
        """``(B, L)`` cross-entropies over the catalog less each position's known items.

        The known items of position t are the distinct non-padding inputs at positions <= t other than its
        target. With ``lse`` the full log-sum-exp and ``x`` the share of its mass on the known items,
        ``logsumexp`` over the rest is ``lse + log1p(-x)``: one ``(B, L, L)`` product beside the full loss,
        whose logits stay chunked (``fgjax.kernels.softmax_cross_entropy``).
        """
        batch, length = items.shape
        safe_targets = jnp.maximum(targets, 0)
        full = softmax_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), table,
                                     safe_targets.reshape(-1)).reshape(batch, length)
        lse = full + jnp.sum(hidden * table[safe_targets], axis=-1)  # (B, L)
        real = items != self.num_items
        earlier = jnp.tril(jnp.ones((length, length), bool), -1)  # [s, s'] = s' < s
        repeat = jnp.any((items[:, :, None] == items[:, None, :]) & earlier[None], axis=-1)  # (B, L): seen before
        known = (jnp.tril(jnp.ones((length, length), bool))[None]  # [t, s] = s <= t
                 & (real & ~repeat)[:, None, :] & (items[:, None, :] != targets[:, :, None]))
        rows = table[jnp.where(real, items, 0)]  # (B, L, h)
        prefix = jnp.einsum("btd,bsd->bts", hidden, rows)  # logits of the inputs at every position
        share = jnp.sum(jnp.where(known, jnp.exp(prefix - lse[..., None]), 0.0), axis=-1)
        # The target keeps some mass, so share < 1 up to rounding: the clip keeps log1p finite.
        return full + jnp.log1p(-jnp.minimum(share, 1.0 - 1e-6))

    def position_queries(self, batch: Mapping[str, Array], key: Array | None = None) -> Array:
        """``(B, L, h)``: the query at every position of a batch (what ``loss`` scores against ``item_rows``)."""
        return self.hidden_states(batch["items"], batch["times"], key)

    def item_rows(self) -> Array:
        """``(items, dim)``: the output item table."""
        return self.item_table()

    def query(self, inputs) -> Array:
        """``{"items": (n, L), "times": (n, L)}`` (times relative to the latest, seconds) -> ``(n, dim)``."""
        return self.user_state(inputs["items"], inputs["times"])

    def score(self, query: Array, rows: Array) -> Array:
        """``(n, dim)`` queries and ``(1 | n, C, dim)`` item rows -> ``(n, C)`` logits."""
        if rows.shape[0] == 1:
            return query @ rows[0].T
        return jnp.einsum("nd,ncd->nc", query, rows)

    def score_all_items(self, items: Array, times: Array) -> Array:
        """``(batch, L)`` histories -> ``(batch, items)`` next-item logits."""
        return self.user_state(items, times) @ self.item_table().T

    def __call__(self, items: Array, times: Array, key: Array | None = None) -> Array:
        """``(batch, L, items)`` next-item logits at every position."""
        return self.hidden_states(items, times, key) @ self.item_table().T


def interest_gates(ages: Array, rate: Array | float, unit: float) -> Array:
    """``g = [seen] * (1 + ages / unit) ** (-rate)``, ``(..., K)``; ``ages`` ``+inf`` (or NaN) = never seen -> 0.

    ``rate`` ``(K,)`` (or a scalar; 0 gives the seen indicator). Finite gradients everywhere.
    """
    seen = jnp.isfinite(ages)
    safe = jnp.where(seen, jnp.maximum(ages, 0.0), 0.0)
    return jnp.where(seen, jnp.exp(-rate * jnp.log1p(safe / unit)), 0.0)


class ForgettingSASRec(TimeAwareSASRec):
    """``TimeAwareSASRec`` plus learned per-interest forgetting of the user's interests (module docstring).

    Args (besides ``TimeAwareSASRec``'s):
      num_interests: K, item categories (``interest_ages``' last axis).
      interest_decay: ``learned`` (a rate ``softplus(rho_k)`` per interest) | ``none`` (rate 0: g = seen).
      interest_time_unit: seconds per unit of interest age (a day by default).
    """

    batch_fields = ("items", "times", "interest_ages", "targets")
    query_fields = ("items", "times", "interest_ages")

    def __init__(self, num_items: int, *, num_interests: int, interest_decay: str = "learned",
                 interest_time_unit: float = 86400.0, rngs: nnx.Rngs, **kwargs):
        if num_interests < 1:
            raise ValueError(f"num_interests={num_interests}: forgetting_sasrec needs item categories")
        if interest_decay not in INTEREST_DECAYS:
            raise ValueError(f"interest_decay={interest_decay!r}: expected one of {', '.join(INTEREST_DECAYS)}")
        super().__init__(num_items, rngs=rngs, **kwargs)  # the same draws as TimeAwareSASRec first
        self.num_interests = num_interests
        self.interest_decay = interest_decay
        self.interest_time_unit = interest_time_unit
        if interest_decay == "learned":
            self.interest_rate = nnx.Param(jnp.full((num_interests,), _RATE_INIT))
        self.interest_affinity = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (num_items, num_interests)))

    def rates(self) -> Array:
        """``(K,)`` forgetting rates ``softplus(rho)`` (zeros for ``interest_decay: none``)."""
        if self.interest_decay == "learned":
            return jax.nn.softplus(self.interest_rate[...])
        return jnp.zeros((self.num_interests,))

    def gates(self, interest_ages: Array) -> Array:
        """``(..., K)`` interest ages (seconds) -> ``(..., K)`` gates g."""
        return interest_gates(interest_ages, self.rates(), self.interest_time_unit)

    def position_queries(self, batch: Mapping[str, Array], key: Array | None = None) -> Array:
        """``(B, L, dim + K)``: ``[h, g]`` at every position."""
        hidden = self.hidden_states(batch["items"], batch["times"], key)
        return jnp.concatenate([hidden, self.gates(batch["interest_ages"])], axis=-1)

    def item_rows(self) -> Array:
        """``(items, dim + K)``: ``[E, A]``."""
        return jnp.concatenate([self.item_table(), self.interest_affinity[...]], axis=-1)

    def query(self, inputs) -> Array:
        """``{"items", "times": (n, L), "interest_ages": (n, L, K)}`` -> ``(n, dim + K)``: ``[h_last, g_last]``."""
        return jnp.concatenate([self.user_state(inputs["items"], inputs["times"]),
                                self.gates(inputs["interest_ages"][:, -1])], axis=-1)

    def score_all_items(self, items: Array, times: Array, interest_ages: Array) -> Array:
        """``(batch, L)`` histories and ``(batch, L, K)`` ages -> ``(batch, items)`` next-item logits."""
        return self.query({"items": items, "times": times, "interest_ages": interest_ages}) @ self.item_rows().T

    def __call__(self, items: Array, times: Array, interest_ages: Array, key: Array | None = None) -> Array:
        """``(batch, L, items)`` next-item logits at every position."""
        batch = {"items": items, "times": times, "interest_ages": interest_ages}
        return self.position_queries(batch, key) @ self.item_rows().T


def count_params(params) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
