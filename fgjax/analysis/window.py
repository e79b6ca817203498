"""One window of the forgetting analysis: a static spec, traced parameters, the carry and the fused step.

``window_step(carry, events, params, spec)`` closes one window for every
user in one jitted, carry-donating call: state update -> F -> f -> p ->
detection (``kernels.detector_update``) -> states -> the top interests.

What changes shapes or code paths is the hashable ``WindowSpec`` (the jit's
only static argument); every number is a leaf of the ``WindowParams`` pytree,
so sweeping alpha, the half-life or a detector knob reuses one compilation
per event bucket shape. ``window_spec`` and ``window_params`` are the one
place both are built from ``config.analysis``.

Memory on the device is O(users x K x T) for the detector's uint8 ring
buffer of T windows plus O(users x K) for the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fgjax import kernels
from fgjax.analysis.verdict import AUTO, load_verdict, verdict_path
from fgjax.config import AnalysisConfig
from fgjax.errors import ConfigError


# The analysis' per-window programs are compiled by LLVM at -O2 on a CPU, not at XLA's default -O3: the detector's
# update of real counts (100k users x 16, 2-vCPU Xeon, jax 0.10.2, 2026-12-05) took 186-192 against 211-213 ms a
# window, and `fgjax analyze`'s window steps 17.1 against 19.2 s at 100k users, its tables there bit for bit
# the same (-O1: 17.3 s; -O0: 59.8 s). The arithmetic is the same but its code is not, so results may differ in
# the last bit (log1p did in 1 of 1,000 random values). Other backends keep XLA's defaults (not measured there),
# and so does a process whose XLA_FLAGS set the level itself (the test suite compiles at -O0: it checks values).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


class cpu_tuned_jit:  # noqa: N801 - used as jax.jit is
    """``jax.jit(fun, **jit_kwargs)``, with ``CPU_COMPILER_OPTIONS`` when JAX's default backend is a CPU.

    The backend is read at the first call, not at import: a CLI run sets the CPU's devices before JAX starts
    (``fgjax.analysis_job.split_cpu``). Called inside another transform (``jax.jit``, ``lax.scan``,
    ``jax.eval_shape``, ...), where JAX refuses compiler options, it is the plain ``jax.jit``: the caller's
    compilation decides. Attributes (``lower``, ``_cache_size``, ``clear_cache``) are the top-level jitted
    function's. For functions, not methods (no ``__get__``). Where ``XLA_FLAGS`` sets
    ``xla_backend_optimization_level``, that setting wins: the options are not passed.
    """

    def __init__(self, fun, **jit_kwargs):
        functools.update_wrapper(self, fun)
        self._fun, self._jit_kwargs, self._jitted = fun, jit_kwargs, None
        self._plain = jax.jit(fun, **jit_kwargs)

    def _get(self):
        if self._jitted is None:
            level_set = "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "")
            if jax.default_backend() == "cpu" and not level_set:
                self._jitted = jax.jit(self._fun, compiler_options=CPU_COMPILER_OPTIONS, **self._jit_kwargs)
            else:
                self._jitted = self._plain
        return self._jitted

    def __call__(self, *args, **kwargs):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
            return self._plain(*args, **kwargs)
        return self._get()(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """The structure of the window step (static under jit: a new value compiles again).

    Attributes:
      num_interests: K, the interest axis.
      top: interests kept per (user, window), ``1 <= top <= K``.
      detector: ``adaptive`` (``kernels.detector_update``) or ``level`` (I_k against its peak).
      forgetting_mode: ``decline`` | ``change`` (``kernels.interest_forgetting``).
      normalize: ``current`` | ``max`` (``kernels.forgetting_degree``).
      user_block: users judged at a time by the detector; None = all at once.
      buffer_windows: T, windows of per-interest activity the adaptive detector keeps.
      period_every: windows between a user's periodograms (``kernels.detector_update``).
      verdict_recent_windows: the learned verdict's recent span (``kernels.verdict_features``); 0 = no learned
        verdict (``WindowParams.verdict`` is then None).
    """

    num_interests: int
    top: int
    detector: str = "adaptive"
    forgetting_mode: str = "decline"
    normalize: str = "current"
    user_block: int | None = None
    buffer_windows: int = 64
    period_every: int = 1
    verdict_recent_windows: int = 0

    def detector_users(self, num_users: int) -> int:
        """Rows of the carry's detector state: every user's for the adaptive detector; none for the level
        rule, which never reads it but keeps the carry's structure (a per-pair state there would be about
        48 bytes a (user, interest) pair, 3/4 of its carry, copied through every window step)."""
        return num_users if self.detector == "adaptive" else 0


class WindowParams(NamedTuple):
    """The numbers of the window step, scalar float32 arrays (traced: new values do not recompile).

    Attributes:
      alpha: softmax temperature of p(k|u,t).
      eps: norms at or below it count as zero.
      decay: g, the interest state's decay per window (0 = the seed's per-window reset).
      inv_tau: 1 / tau per window, the decay of an event within its window.
      declining_ratio, forgotten_ratio: the level rule's shares of the peak.
      detector: the adaptive detector's knobs.
      verdict, verdict_threshold: the learned verdict's fit and its log-odds threshold (``analysis.detector.
        verdict_file``); None without one.
      verdict_horizon: a fit on a log's own silences (``fgjax fit-verdict``) also calls forgotten every silence of
        this many windows (what it was taught "gone" means); None for a fit on synthetic ground truth.
    """

    alpha: jax.Array
    eps: jax.Array
    decay: jax.Array
    inv_tau: jax.Array
    declining_ratio: jax.Array
    forgotten_ratio: jax.Array
    detector: kernels.DetectorParams
    verdict: kernels.VerdictParams | None = None
    verdict_threshold: jax.Array | None = None
    verdict_horizon: jax.Array | None = None


def window_spec(config: AnalysisConfig, num_interests: int, *, top: int | None = None) -> WindowSpec:
    """The static structure of ``config`` (``analysis``) for K interests; ``top`` defaults to ``top_interests``."""
    return WindowSpec(
        num_interests=num_interests,
        top=min(config.top_interests if top is None else top, num_interests),
        detector=config.detector.kind,
        forgetting_mode=config.forgetting_mode,
        normalize=config.normalize,
        user_block=config.detector.user_block or None,
        buffer_windows=config.detector.buffer_windows,
        period_every=config.detector.period_every,
        verdict_recent_windows=config.detector.verdict_recent_windows if verdict_file(config) else 0,
    )


def verdict_file(config: AnalysisConfig) -> str:
    """The verdict file ``config`` (``analysis``) reads: ``detector.verdict_file`` resolved for its window length
    and fade share (``fgjax.analysis.verdict.verdict_path``; "" = the detector's own verdict)."""
    d = config.detector
    if d.verdict_file == AUTO and d.kind != "adaptive":  # the level rule keeps no state for a verdict to read
        return ""
    return verdict_path(d.verdict_file, config.window_seconds / 86400.0, d.fade_share, d.verdict_recent_windows)


def window_params(config: AnalysisConfig, log_windows: int | None = None) -> WindowParams:
    """The numbers of ``config`` (``analysis``) as a pytree of float32 scalars; ``log_windows``, the windows of the
    log analyzed where known, caps the detector's life budget (``DetectorConfig.kernel_params``) and picks the
    learned verdict's fit for logs of that span (``load_verdict``)."""
    # Python floats on the host (kernels.decay_factors validates the half-life); arrays from here on.
    decay, inv_tau = kernels.decay_factors(1.0, config.half_life_windows, reset_each_window=config.reset_each_window)
    # Device arrays put from NumPy, not made by jnp: each jnp scalar would compile a conversion (a run then
    # compiles only its window step and its gather), and plain NumPy leaves would make a jitted function
    # compile again for a sweep that passes jnp values.

    def scalar(value) -> jax.Array:
        return jax.device_put(np.asarray(value, np.float32))

    d = config.detector
    verdict = threshold = horizon = None
    path = verdict_file(config)
    if path:
        if d.kind != "adaptive":
            raise ConfigError("analysis.detector.verdict_file: the learned verdict reads the adaptive detector's "
                              f"state; analysis.detector.kind is {d.kind!r}")
        fit = load_verdict(path, config.window_seconds / 86400.0, d.fade_share, d.verdict_recent_windows,
                           log_windows)  # the fit for logs of this span, where the file has several
        verdict = kernels.VerdictParams(*(scalar(v) for v in fit.params))
        threshold = scalar(fit.threshold)
        horizon = None if fit.horizon_windows is None else scalar(fit.horizon_windows)
    return WindowParams(
        alpha=scalar(config.alpha),
        eps=scalar(config.eps),
        decay=scalar(decay),
        inv_tau=scalar(inv_tau),
        declining_ratio=scalar(config.level.declining_ratio),
        forgotten_ratio=scalar(config.level.forgotten_ratio),
        detector=kernels.DetectorParams(*(scalar(v) for v in d.kernel_params(config.window_seconds, log_windows))),
        verdict=verdict,
        verdict_threshold=threshold,
        verdict_horizon=horizon,
    )


class AnalysisCarry(NamedTuple):
    """Per-(user, interest) state carried across windows, ``(users, K)`` unless noted.

    This is also the real-time monitor's state (``monitor_init`` / ``monitor_update``).
    """

    interest: kernels.InterestState
    peak: jax.Array  # running max of I
    state: jax.Array  # int8 codes, kernels.STATE_NAMES
    ever: jax.Array  # bool, the user ever had the interest
    detector: kernels.DetectorState  # ring buffer (users, K, T) and counters; no users under the level rule


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_carry(spec: WindowSpec, num_users: int) -> AnalysisCarry:
    """The state before any window (one compiled program, not one per field)."""
    shape = (num_users, spec.num_interests)
    return AnalysisCarry(
        interest=kernels.interest_state_init(*shape),
        peak=jnp.zeros(shape, jnp.float32),
        state=jnp.zeros(shape, jnp.int8),
        ever=jnp.zeros(shape, bool),
        detector=kernels.detector_init(spec.detector_users(num_users), spec.num_interests, spec.buffer_windows),
    )


class WindowOutput(NamedTuple):
    """Per-user results of one window."""

    degree: jax.Array  # (users,) F(u, t)
    top_interests: jax.Array  # (users, top) int32
    top_probs: jax.Array  # (users, top) float32


class WindowDetail(NamedTuple):
    """``(users, K)`` per-interest results of one window."""

    f: jax.Array
    p: jax.Array
    state: jax.Array  # int8 codes after the window
    previous_state: jax.Array  # int8 codes before it
    detection: kernels.DetectorOutput | None  # None under the level rule (no detector runs)
    verdict: jax.Array | None = None  # float32 learned verdict's log-odds (``verdict_log_odds``); None without one


class Evidence(NamedTuple):
    """The detector's evidence per (user, interest) or per row, for explanations and ``states.parquet``.

    ``silence_limit`` (s*, a bisection) is None until ``with_limits`` computes
    it from the ``Counters``, only where it is written.
    """

    silence: jax.Array  # int32 windows without activity
    silence_limit: jax.Array | None  # int32 s*
    rate: jax.Array  # float32 events per window before the silence
    recent: jax.Array
    expected_recent: jax.Array
    trend: jax.Array
    dispersion: jax.Array  # var / mean (>= 1) of the counts before the silence
    period: jax.Array
    period_strength: jax.Array
    last_active: jax.Array  # int32 window index, -1 = never
    verdict: jax.Array | None = None  # float32 learned verdict's log-odds where silent, NaN elsewhere; None without


EVIDENCE_FIELDS = Evidence._fields
_INT_EVIDENCE = ("silence", "last_active")  # and silence_limit


class Counters(NamedTuple):
    """The detector's counters behind s* (``silence_limit``), shaped like the evidence they go with."""

    total: jax.Array
    sum_sq: jax.Array  # with sum_lag: the running sums behind the steps index of the rate posterior
    sum_lag: jax.Array
    alive: jax.Array
    active_windows: jax.Array
    gaps: jax.Array
    longest_gap: jax.Array
    kappa: jax.Array  # each interest's calibration (kernels.pair_kappa of the window's class kappas)
    # The window's population share of silences going on (DetectorOutput.stay_share), ``(users, 1)``: one value a
    # window, kept per user (a snapshot holds each user's own window), not per pair.
    stay_share: jax.Array
    # The window's population steps index (DetectorOutput.population_dispersion's second), ``(users, 1)`` like
    # stay_share: s* needs it to shrink the interest's own steps index as the update did (the runs index comes
    # shrunk, as the evidence's ``dispersion``).
    population_steps: jax.Array


def observed_evidence(detail: WindowDetail) -> Evidence:
    """A window's evidence without s*; defaults (-1 for last_active, else 0) when no detector ran."""
    observed = [name for name in EVIDENCE_FIELDS if name not in ("silence_limit", "verdict")]
    if detail.detection is not None:
        return Evidence(silence_limit=None, verdict=detail.verdict,
                        **{name: getattr(detail.detection, name) for name in observed})
    shape = detail.state.shape
    return Evidence(silence_limit=None, **{
        name: jnp.full(shape, -1 if name == "last_active" else 0, jnp.int32 if name in _INT_EVIDENCE else jnp.float32)
        for name in observed
    })


def counters(detector: kernels.DetectorState, detection: kernels.DetectorOutput) -> Counters:
    """The ``(users, K)`` counters of a detector state, with the window's calibration ``kappa`` and population
    ``stay_share`` and steps index (its output ``detection``'s)."""
    exposure = jnp.maximum(detector.alive - detector.silence - 1, 0)
    per_user = lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float32), (exposure.shape[0], 1))  # noqa: E731
    return Counters(*(getattr(detector, name) for name in Counters._fields[:-3]),
                    kappa=kernels.pair_kappa(detection.kappa, exposure),
                    stay_share=per_user(detection.stay_share),
                    population_steps=per_user(detection.population_dispersion[1]))


def with_limits(evidence: Evidence, counts: Counters | None, params: WindowParams, spec: WindowSpec) -> Evidence:
    """``evidence`` with ``silence_limit`` (s*) from its counters; 0 where never active or without a detector."""
    if counts is None:
        return evidence._replace(silence_limit=jnp.zeros(evidence.silence.shape, jnp.int32))
    alive_before = counts.alive - evidence.silence
    _, own_steps = kernels.history_dispersion(counts.total, counts.sum_sq, counts.sum_lag, alive_before)
    strength = jnp.asarray(params.detector.dispersion_strength, jnp.float32)
    steps = kernels.shrink_dispersion(own_steps, jnp.maximum(alive_before - 1, 0), strength,
                                      strength * (counts.population_steps - 1.0))
    model = kernels.silence_model(
        counts.total, counts.alive, evidence.silence, counts.active_windows, counts.gaps, counts.longest_gap,
        evidence.period, evidence.period_strength, evidence.dispersion, counts.kappa, params.detector,
        spec.buffer_windows, steps, kernels.window_model_prior(params.detector, counts.stay_share),
    )
    return evidence._replace(
        silence_limit=jnp.where(counts.alive > 0, kernels.model_silence_limit(model, params.detector), 0)
    )


def detector_step(
    detector: kernels.DetectorState, counts: jax.Array, degree: jax.Array | None, params: WindowParams, spec: WindowSpec
) -> tuple[kernels.DetectorState, kernels.DetectorOutput]:
    """The adaptive detector's update as the window step runs it (s* left to ``with_limits``).

    Args:
      counts: ``(users, K)`` events per (user, interest) in the window.
      degree: optional ``(users,)`` F(u, t) for the per-user F alarm.
    """
    return kernels.detector_update(
        detector, counts, degree, params.detector, user_block=spec.user_block, with_limits=False,
        period_every=spec.period_every,
    )


@functools.partial(cpu_tuned_jit, static_argnames=("spec",), donate_argnums=(0,))
def window_step(
    carry: AnalysisCarry, events: kernels.WindowEvents, params: WindowParams, spec: WindowSpec
) -> tuple[AnalysisCarry, WindowOutput, WindowDetail]:
    """Close one window for every user: the fused analysis pass.

    Args:
      carry: the state after the previous window (donated: do not reuse it).
      events: the window's events, ``user == users`` for padding rows and
        ``interest == K`` for events without a category (both dropped); ``age``
        in windows (``(window end - timestamp) / window_seconds``).
      params: ``window_params(config.analysis)`` (traced).
      spec: ``window_spec(config.analysis, K)`` (static).

    Returns the new carry, the window's per-user output and its per-interest detail.
    """
    added, counts = _event_sums(events, params, *carry.peak.shape)
    return close_window(carry, added, counts, params, spec)


@functools.partial(cpu_tuned_jit, static_argnames=("spec",), donate_argnums=(0, 1))
def window_step_sums(
    carry: AnalysisCarry, sums: tuple[jax.Array, jax.Array], params: WindowParams, spec: WindowSpec
) -> tuple[AnalysisCarry, WindowOutput, WindowDetail, tuple[jax.Array, jax.Array]]:
    """``window_step`` from a window's ``(users, K)`` sums ``(added, counts)``, its events summed chunk by
    chunk (``add_event_sums``) when it came in chunks.

    Returns what ``window_step`` returns and the sums zeroed for the next window: ``sums`` is donated and
    its buffers come back, so a run holds one pair of sums and no other copy of them (the step reads them
    where ``window_step`` makes its own).
    """
    carry, out, detail = close_window(carry, sums[0], sums[1], params, spec)
    return carry, out, detail, (jnp.zeros_like(sums[0]), jnp.zeros_like(sums[1]))


@functools.partial(cpu_tuned_jit, donate_argnums=(0,))
def add_event_sums(
    sums: tuple[jax.Array, jax.Array], events: kernels.WindowEvents, params: WindowParams
) -> tuple[jax.Array, jax.Array]:
    """``sums`` ``(added, counts)``, each ``(users, K)``, plus one chunk of a window's events (donated: updated
    in place). A window of more events than ``analysis.window_chunk`` comes as chunks of at most that many,
    so the events in flight are bounded by the chunk, not by the window (``fgjax.analysis.run``)."""
    added, counts = _event_sums(events, params, *sums[0].shape)
    return sums[0] + added, sums[1] + counts


def _event_sums(events: kernels.WindowEvents, params: WindowParams, num_users: int,
                num_interests: int) -> tuple[jax.Array, jax.Array]:
    added = kernels.window_contributions(events, num_users, num_interests, inv_tau=params.inv_tau)
    counts = kernels.event_counts(events.user, events.interest, num_users, num_interests)
    return added, counts


@functools.partial(jax.jit, static_argnames=("num_users", "num_interests"))
def event_sums(events: kernels.WindowEvents, params: WindowParams, *, num_users: int,
               num_interests: int) -> tuple[jax.Array, jax.Array]:
    """A window's events as ``(users, K)`` sums: the decayed contributions to I (``window_contributions``)
    and the event counts (``event_counts``); the first half of ``window_step``, per user."""
    return _event_sums(events, params, num_users, num_interests)


def close_window(
    carry: AnalysisCarry, added: jax.Array, counts: jax.Array, params: WindowParams, spec: WindowSpec
) -> tuple[AnalysisCarry, WindowOutput, WindowDetail]:
    """The rest of ``window_step`` from the window's ``(users, K)`` sums (``event_sums``); not jitted.

    Every value is per user but the adaptive detector's calibration (a histogram over every user), so
    under a jit whose ``(users, ...)`` arrays are sharded over processes (``fgjax.analysis.distributed``)
    it gives what one process gives on all users: XLA sums the histogram across processes.
    """
    interest = kernels.interest_state_apply(carry.interest, added, decay=params.decay)
    cur, prev = interest.current, interest.previous
    active_now = counts > 0
    peak = jnp.maximum(carry.peak, cur)
    ever = carry.ever | active_now
    degree = kernels.forgetting_degree(cur, prev, normalize=spec.normalize, eps=params.eps)
    f = kernels.interest_forgetting(cur, prev, mode=spec.forgetting_mode, eps=params.eps)
    p = kernels.interest_probs(f, params.alpha, mask=ever)
    if spec.detector == "adaptive":
        detector, detection = detector_step(carry.detector, counts, degree, params, spec)
        verdict = None
        if spec.verdict_recent_windows:
            verdict = verdict_log_odds(detector, detection, params, spec)
            detection = detection._replace(state=learned_states(detector, detection, params, spec, verdict))
        state = detection.state
    else:
        # The level rule alone: no detector work, and its evidence reads as zeros.
        state = kernels.threshold_states(
            carry.state, active_now, cur, peak,
            declining_ratio=params.declining_ratio, forgotten_ratio=params.forgotten_ratio,
        )
        detector = carry.detector
        detection = verdict = None
    # A reactivated interest is measured against its new level, not the old
    # peak; otherwise one quiet window sends it straight back to forgotten.
    peak = jnp.where(state == kernels.REACTIVATED, cur, peak)
    # lax.top_k's answer as elementwise code, which does not sort each user's row apart: the level rule's step
    # 22.0 -> 18.3 ms a window at 100k users on two CPU devices (the detector's step the same either way).
    top_probs, top_interests = kernels.few_top_k(p, spec.top)
    new_carry = AnalysisCarry(interest, peak, state, ever, detector)
    detail = WindowDetail(f, p, state, carry.state, detection, verdict)
    return new_carry, WindowOutput(degree, top_interests, top_probs), detail


def verdict_log_odds(detector: kernels.DetectorState, detection: kernels.DetectorOutput, params: WindowParams,
                     spec: WindowSpec) -> jax.Array:
    """``(users, K)`` float32 ``kernels.verdict_log_odds`` of the window's state under ``params.verdict``: the
    learned verdict's log-odds of each silent interest, NaN where it judges nothing."""
    features = kernels.verdict_features(detector, detection, spec.verdict_recent_windows)
    return kernels.verdict_log_odds(detector, features, params.verdict)


def learned_states(detector: kernels.DetectorState, detection: kernels.DetectorOutput, params: WindowParams,
                   spec: WindowSpec, log_odds: jax.Array | None = None) -> jax.Array:
    """``(users, K)`` int8 codes with the learned verdict deciding which silent interests are forgotten: those whose
    ``verdict_log_odds`` (computed here unless given) exceed ``params.verdict_threshold``.

    The detector's own forgotten calls the verdict overrules read as declining (silent and suspect); every
    other code is the detector's. The detector's carry keeps its own codes, which its next update and the
    verdict's ``detector_forgotten`` feature read, so the verdict sees what it was fitted on.
    """
    if log_odds is None:
        log_odds = verdict_log_odds(detector, detection, params, spec)
    forgotten = log_odds > params.verdict_threshold  # as kernels.verdict_forgotten: NaN is never above it
    if params.verdict_horizon is not None:  # a fit on the log's own silences: a silence this long is what it calls gone
        forgotten |= kernels.verdict_silent(detector) & (detector.silence >= params.verdict_horizon)
    own = detection.state
    return jnp.where(forgotten, jnp.int8(kernels.FORGOTTEN),
                     jnp.where(own == kernels.FORGOTTEN, jnp.int8(kernels.DECLINING), own)).astype(own.dtype)


def window_index(timestamp: np.ndarray, window_seconds: float, origin: float) -> np.ndarray:
    """``(events,)`` window index of each timestamp, counted from ``origin`` (a multiple of ``window_seconds``).

    Computed as the epoch-aligned window number minus the origin's, so a stream that groups events
    by their window number before it knows the origin (``fgjax.data.stream``) cuts them identically.
    """
    return (np.floor(np.asarray(timestamp) / window_seconds) - np.rint(origin / window_seconds)).astype(np.int64)


def pad_events(events: kernels.WindowEvents, size: int, pad_user: int) -> kernels.WindowEvents:
    """Pad a window's events to ``size`` rows with zero-weight rows of an out-of-range user."""
    pad = size - len(events.user)
    return kernels.WindowEvents(
        user=np.concatenate([events.user, np.full(pad, pad_user, np.int32)]),
        interest=np.concatenate([events.interest, np.zeros(pad, np.int32)]),
        weight=np.concatenate([events.weight, np.zeros(pad, np.float32)]),
        age=np.concatenate([events.age, np.zeros(pad, np.float32)]),
    )
