"""fgjax.kernels: pure ``jax.numpy``/``lax`` kernels (no Flax, no I/O).

Shapes use ``(...)`` for any leading batch shape and ``K`` for interests.
Imported as ``fgjax.kernels``; this package imports nothing from ``fgjax``.
"""

from ._forgetting import (
    MODE_CHOICES,
    NORMALIZE_CHOICES,
    forgetting_degree,
    interest_forgetting,
    interest_probs,
    recommendation_score,
)
from ._metrics import METRIC_NAMES, hit_matrix, mean_metrics, ranking_metrics
from ._state import (
    InterestState,
    WindowEvents,
    decay_factors,
    interest_state_apply,
    interest_state_init,
    interest_state_update,
    window_contributions,
)
from ._states import (
    ACTIVE,
    DECLINING,
    FORGOTTEN,
    NEW,
    NONE,
    REACTIVATED,
    STATE_NAMES,
    threshold_states,
)
from ._topk import TOPK_METHODS, blocked_top_k, masked_top_k, matmul_top_k

__all__ = [
    "ACTIVE", "DECLINING", "TOPK_METHODS", "blocked_top_k", "matmul_top_k", "FORGOTTEN", "InterestState", "METRIC_NAMES", "MODE_CHOICES", "NEW",
    "NONE", "NORMALIZE_CHOICES", "REACTIVATED", "STATE_NAMES", "WindowEvents", "decay_factors",
    "forgetting_degree", "hit_matrix", "interest_forgetting", "interest_probs", "interest_state_apply", "interest_state_init",
    "interest_state_update", "masked_top_k", "mean_metrics", "ranking_metrics", "recommendation_score",
    "threshold_states", "window_contributions",
]
