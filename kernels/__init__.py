"""fgjax.kernels: pure ``jax.numpy``/``lax`` kernels (no Flax, no I/O).

Shapes use ``(...)`` for any leading batch shape and ``K`` for interests.
Imported as ``fgjax.kernels``; this package imports nothing from ``fgjax``.
"""

from ._detector import (
    DetectorOutput,
    DetectorParams,
    DetectorState,
    detector_init,
    detector_update,
    event_counts,
    poisson_cdf,
    silence_limit,
)
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
from ._timeseries import (
    ActivityBuffer,
    RunningMoments,
    activity_buffer_init,
    activity_buffer_ordered,
    activity_buffer_update,
    adaptive_threshold,
    dominant_period,
    running_moments_init,
    running_moments_update,
    trend_slope,
)
from ._topk import TOPK_METHODS, blocked_top_k, masked_top_k, matmul_top_k

__all__ = [
    "ACTIVE",
    "ActivityBuffer",
    "DECLINING",
    "DetectorOutput",
    "DetectorParams",
    "DetectorState",
    "FORGOTTEN",
    "InterestState",
    "METRIC_NAMES",
    "MODE_CHOICES",
    "NEW",
    "NONE",
    "NORMALIZE_CHOICES",
    "REACTIVATED",
    "RunningMoments",
    "STATE_NAMES",
    "TOPK_METHODS",
    "WindowEvents",
    "activity_buffer_init",
    "activity_buffer_ordered",
    "activity_buffer_update",
    "adaptive_threshold",
    "blocked_top_k",
    "decay_factors",
    "detector_init",
    "detector_update",
    "dominant_period",
    "event_counts",
    "forgetting_degree",
    "hit_matrix",
    "interest_forgetting",
    "interest_probs",
    "interest_state_apply",
    "interest_state_init",
    "interest_state_update",
    "masked_top_k",
    "matmul_top_k",
    "mean_metrics",
    "poisson_cdf",
    "ranking_metrics",
    "recommendation_score",
    "running_moments_init",
    "running_moments_update",
    "silence_limit",
    "threshold_states",
    "trend_slope",
    "window_contributions",
]
