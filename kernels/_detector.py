"""Adaptive forgetting detection per (user, interest): an ``init``/``update`` pair.

Each window, for every (user, interest) at once, the detector asks whether
the interest's current silence or its recent drop is *unusual for this user
and this interest*, and calibrates "unusual" on the population it runs on
(docs/formulas.md, section 7a, states every formula):

- **silence test**: the surprise of the current silence once begun,
  ``log P(1) - log P(s)``, under the larger of two predictives (an events
  model, negative binomial with the counts' dispersion and lag-1
  autocorrelation; a Markov on/off window model once the interest came back
  from ``min_gaps`` silences), against ``kappa * log(life_windows * starts /
  false_alarm)``: ``false_alarm`` is the chance a loyal interest is *ever*
  flagged over its life, spread over the silences it begins. ``kappa`` (>= 1,
  per class of history) is the population's calibration: how much more
  surprising the silences interests came back from were than the model
  said. The silence must also be at least ``gap_factor`` times the longest
  gap the interest came back from (or its period), and the interest needs
  ``min_history`` windows of history.
- **drop test** (fades, and the definition of forgotten for them): in an
  empty window, the recent span's events dropped below the earlier rate's
  prediction (at the window level) and below ``fade_share`` of it (at
  ``fade_confidence``), quasi-Poisson with the window-to-window dispersion.
- **hysteresis**: a return from ``forgotten`` restarts the interest's history
  (counters, sums, the buffer's old windows), so it is judged on what it
  does after the return; only the longest lull it came back from before the
  pause is kept (the gap term), so a usual lull soon after is not unusual.

States (``kernels.STATE_NAMES``): ``new`` for the first ``new_windows``
windows, ``reactivated`` for ``new_windows`` windows after a return,
``forgotten`` when either test fires (until activity), ``declining`` half-way
to the silence threshold or on a sagging trend, else ``active``.

Per user, ``F(u, t)`` is also compared with an adaptive threshold from the
user's own F history (``mean + degree_z * std``), reported as ``degree_alarm``.

Parameters are a ``DetectorParams`` pytree of scalars, so sweeping a knob
(the precision-recall curve) does not recompile.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.scipy.special import gammaincc
from jax.typing import ArrayLike

from ._special import betaln
from ._states import ACTIVE, DECLINING, FORGOTTEN, NEW, NONE, REACTIVATED
from ._timeseries import (
    COUNT_MAX,
    ActivityBuffer,
    RunningMoments,
    activity_buffer_ages,
    activity_buffer_init,
    adaptive_threshold,
    dft_period,
    dominant_period,
    running_moments_init,
    running_moments_update,
)

_NEVER = -1  # last_active before any activity
CAL_BINS = 128  # the calibration histogram: surprise in [0, CAL_BINS * CAL_WIDTH)
CAL_WIDTH = 0.25
CAL_AGES = (4.0, 12.0, 36.0)  # calibration classes by windows of history: young interests are judged apart
# The population's dispersion indices as a histogram of their logs (``population_dispersion``): bin 0 holds the
# interests that read as Poisson (index 1, to _POISSON), bin j >= 1 a log-index in ((j - 1) w, j w], the last bin all
# past it (an index of e ** (62 * 0.0625), about 48, or more).
DISPERSION_BINS = 64
DISPERSION_WIDTH = 0.0625
_POISSON = 1e-4  # a log-index this small reads as 1 (bin 0)
# On a CPU users are judged this many (user, interest, window) cells at a time: 1,024 users x 16 x 64, so the
# ring's bytes of a block (1 MB) and its (B, K) temporaries stay in a core's cache between the passes over them
# (measured on a 2-core EPYC with a 32 MB L3 at 20k users x 16 x 64, in an earlier design that made float32
# (B, K, T) copies: about 2x faster than all at once). The best size depends on the threads a device has. The
# update alone on one device (both cores on each block) was 7 % faster with 4,096-user blocks at 1M users x 16
# on a 2-vCPU Xeon (2 MB L2 a core, 2026-12-05), but `fgjax analyze`, which runs a device per core, was slower
# with them: 21.5 against 19.7 s of window steps at 100k users, 214.3 against 201.6 s in all at 1M.
CPU_CACHE_CELLS = 1 << 20
# Where the DFT product's periodogram is within rounding of a decision, rfft decides (``_series_features``),
# as it did before the DFT product: a tie of two candidate peaks within _TIE of the peak's power, or a strength
# within _NEAR of min_strength. Measured over 3M random series (T = 8, 16, 64; rates 0.1 to 200, periodic,
# masked, rotated), the two differ by at most 1.7e-6 of the peak's power and 3e-7 in strength: 10x margins.
_TIE = 2e-5
_NEAR = 3e-6
# XLA (CPU, jax 0.10) sums a row's periodogram in another order in arrays of fewer than _ROWS rows than in
# larger ones, and on the boundary that rounding is what decides. The rfft that decides ambiguous rows runs
# where the one before ran: on the whole input when it has fewer rows (it is then one block), else on at
# least _ROWS rows: the ambiguous ones alone, gathered into _FEW rows, or the whole block past _FEW of them.
_ROWS = 128
_FEW = 512


class DetectorParams(NamedTuple):
    """Detector knobs (scalars; traced, so sweeps reuse one compilation).

    No defaults here: the one source of them is ``fgjax.config.DetectorConfig``
    (kernels do not depend on the fgjax package); ``DetectorConfig().kernel_params()``
    builds the default knobs.
    """

    false_alarm: ArrayLike  # chance that a loyal interest is ever called forgotten over life_windows windows
    life_windows: ArrayLike  # the life false_alarm covers, in windows
    gap_factor: ArrayLike  # silence limit >= this times the expected gap
    min_strength: ArrayLike  # periodogram peak share that counts as periodic
    recent_windows: ArrayLike  # fewest windows of the drop test and of the trend
    drop_events: ArrayLike  # the recent span covers this many expected events (capped at T // 2 windows)
    fade_share: ArrayLike  # the fade definition: forgotten once the rate is below this share of the former rate
    fade_confidence: ArrayLike  # drop test: recent events this unlikely at fade_share of the earlier rate
    declining_ratio: ArrayLike  # recent below this share with a negative trend: declining
    min_history: ArrayLike  # windows of history before the drop test may fire
    new_windows: ArrayLike  # windows an interest stays new / reactivated
    prior_events: ArrayLike  # Gamma prior on the event rate: events ...
    prior_windows: ArrayLike  # ... over windows
    prior_strength: ArrayLike  # Beta priors of the window model's transitions: pseudo windows each way
    population_strength: ArrayLike  # the silences' continuation prior: pseudo windows at the population's share (0 = prior_strength each way)
    dispersion_strength: ArrayLike  # pseudo windows of the population's dispersion in each interest's (0 = its own alone)
    min_gaps: ArrayLike  # silences the interest came back from before the window model is used
    markov_reach: ArrayLike  # the window model's least reach, in times the longest silence seen (life budget may raise it)
    calibration_share: ArrayLike  # the tail share of the population's completed silences kappa matches
    calibration_prior: ArrayLike  # completed silences the prior kappa = 1 is worth
    degree_z: ArrayLike  # user F alarm: F > mean + degree_z * std of the user's own F
    degree_fallback: ArrayLike  # F alarm threshold before the user has two F values


class DetectorState(NamedTuple):
    """Per-(user, interest) detector state; shapes ``(users, K)`` unless noted.

    Attributes:
      buffer: ring buffer of the last T windows' counts, ``(users, K, T)`` uint8.
      window: ``()`` int32 windows closed so far.
      total: events since first activity (float32; each window's count saturated at 255 like the buffer).
      sum_sq, sum_lag: float32 sums of x_t ** 2 and x_t x_{t-1} over the same windows (``history_dispersion``).
      alive: windows since first activity, this one included (0 = never active).
      active_windows: windows with activity.
      silence: windows without activity since the last active one.
      gaps: silences it came back from (since it started or came back from forgotten).
      longest_gap: longest silence the interest came back from (kept across a return from forgotten).
      surprise: float32 how surprising its current silence is (``silence_surprise``; 0 when active).
      since_return: windows since it came back from forgotten (large if never).
      last_active: index of the last active window (-1 = never).
      state: int8 codes.
      calibration: ``(len(CAL_AGES) + 1, CAL_BINS)`` float32 the population's completed silences by the
        interest's history (``CAL_AGES``) and the surprise they reached.
      silence_totals: ``(2,)`` float32 the population's completed silences: their silent windows followed by
        another silent one, and all their silent windows (``population_stay_share``).
      dispersion_histogram: ``(2, DISPERSION_BINS)`` float32 this window's population of interests with at least
        ``CAL_AGES[0]`` windows of history, counted by their own runs and steps indices (``dispersion_bins``;
        ``population_dispersion``; not cumulative: each window's replaces the one before), of the users whose
        periodogram turn it is (all of them with ``period_every=1``).
      degree_moments: ``(users,)`` running moments of F(u, t) since the user's first activity.
      period_index: int16 the dominant frequency j of the last periodogram taken (period T / j; 0 = none,
        or its strength is below ``min_strength``); period_strength: float32 the peak's strength. Taken
        every window with ``period_every=1``; with ``period_every=P``, a user's at the windows ``w`` with
        ``w % P == user % P``. A return from forgotten resets both.
    """

    buffer: ActivityBuffer
    window: Array
    total: Array
    sum_sq: Array
    sum_lag: Array
    alive: Array
    active_windows: Array
    gaps: Array
    silence: Array
    longest_gap: Array
    surprise: Array
    since_return: Array
    last_active: Array
    state: Array
    calibration: Array
    degree_moments: RunningMoments
    period_index: Array
    period_strength: Array
    silence_totals: Array
    dispersion_histogram: Array


class DetectorOutput(NamedTuple):
    """What one window's update found; the evidence behind each state.

    Attributes (``(users, K)`` unless noted):
      state: int8 codes after the window.
      silence, silence_limit: int32 the current silence and its limit s* (0 if never active;
        None unless asked for with ``with_limits``).
      rate: float32 events per window before the current silence.
      recent: float32 events in the last ``recent_windows`` windows.
      expected_recent: float32 what the earlier rate predicts for them.
      trend: float32 least-squares slope of counts over the recent windows.
      period, period_strength: float32 dominant period (windows; 0 = none: its strength is below
        ``min_strength`` or fewer than three cycles fit in the windows seen) and the periodogram peak's strength.
      last_active: int32 index of the last active window (-1 = never).
      dispersion: float32 var / mean (>= 1) of the counts before the current silence.
      kappa: ``(len(CAL_AGES) + 1,)`` float32 the population's calibration of the silence test per
        class of history (``calibration_scale``).
      stay_share: ``()`` float32 the population's share of silent windows followed by a silent one
        (``population_stay_share``), the window model's prior.
      population_dispersion: ``(2,)`` float32 the population's runs and steps indices (medians,
        ``population_dispersion``) each interest's own are raised toward (``shrink_dispersion``).
      degree_threshold: ``(users,)`` float32 the user's adaptive F threshold.
      degree_alarm: ``(users,)`` bool F(u, t) above it.
    """

    state: Array
    silence: Array
    silence_limit: Array
    rate: Array
    recent: Array
    expected_recent: Array
    trend: Array
    dispersion: Array
    period: Array
    period_strength: Array
    last_active: Array
    kappa: Array
    degree_threshold: Array
    degree_alarm: Array
    stay_share: Array
    population_dispersion: Array


def detector_init(num_users: int, num_interests: int, buffer_windows: int = 64) -> DetectorState:
    """The state before any window: nothing seen, every interest ``none``.

    ``buffer_windows`` (T) must be at least 2: the periodogram needs two windows, and the update reads the
    last window's count from the ring slot beside the one it writes.
    """
    if buffer_windows < 2:
        raise ValueError(f"buffer_windows must be at least 2 (the ring's windows), got {buffer_windows}")
    shape = (num_users, num_interests)
    # Distinct buffers for every field: the state is donated to jitted steps.
    return DetectorState(
        buffer=activity_buffer_init(buffer_windows, shape),
        window=jnp.zeros((), jnp.int32),
        total=jnp.zeros(shape, jnp.float32),
        sum_sq=jnp.zeros(shape, jnp.float32),
        sum_lag=jnp.zeros(shape, jnp.float32),
        alive=jnp.zeros(shape, jnp.int32),
        active_windows=jnp.zeros(shape, jnp.int32),
        gaps=jnp.zeros(shape, jnp.int32),
        silence=jnp.zeros(shape, jnp.int32),
        longest_gap=jnp.zeros(shape, jnp.int32),
        surprise=jnp.zeros(shape, jnp.float32),
        since_return=jnp.full(shape, jnp.iinfo(jnp.int32).max // 2, jnp.int32),
        last_active=jnp.full(shape, _NEVER, jnp.int32),
        state=jnp.zeros(shape, jnp.int8),
        calibration=jnp.zeros((len(CAL_AGES) + 1, CAL_BINS), jnp.float32),
        degree_moments=running_moments_init((num_users,)),
        period_index=jnp.zeros(shape, jnp.int16),
        period_strength=jnp.zeros(shape, jnp.float32),
        silence_totals=jnp.zeros((2,), jnp.float32),
        dispersion_histogram=jnp.zeros((2, DISPERSION_BINS), jnp.float32),
    )


def event_counts(user: ArrayLike, interest: ArrayLike, num_users: int, num_interests: int) -> Array:
    """``(users, K)`` float32 number of events per (user, interest) in a window.

    Rows with ``user >= num_users`` or ``< 0`` (padding) or ``interest >= K``
    or ``< 0`` (no category) are dropped.
    """
    user, interest = jnp.asarray(user), jnp.asarray(interest)
    # Negative indices would wrap around (NumPy style): send them out of range instead.
    user = jnp.where(user < 0, num_users, user)
    interest = jnp.where(interest < 0, num_interests, interest)
    out = jnp.zeros((num_users, num_interests), jnp.float32)
    return out.at[user, interest].add(1.0, mode="drop")


def poisson_cdf(k: ArrayLike, mean: ArrayLike) -> Array:
    """P(X <= k) for X ~ Poisson(mean), elementwise; 1 where mean <= 0."""
    k = jnp.floor(jnp.asarray(k, jnp.float32))
    mean = jnp.asarray(mean, jnp.float32)
    return jnp.where(mean > 0, gammaincc(k + 1.0, jnp.maximum(mean, 1e-30)), 1.0)


def history_dispersion(total: ArrayLike, sum_sq: ArrayLike, sum_lag: ArrayLike, windows: ArrayLike) -> tuple[Array, Array]:
    """How much more an interest's counts vary than Poisson ones, from its running sums (each >= 1).

    ``total``, ``sum_sq`` and ``sum_lag`` are the sums of x_t, x_t ** 2 and
    x_t x_{t-1} over its ``windows`` windows of history (silent windows add
    nothing to them, so the sums at the end of a silence are those before it).

    Returns ``(runs, steps)``:

    - ``runs = D (1 + rho) / (1 - rho)``: the index of dispersion D = var /
      mean, times what a lag-1 autocorrelation rho adds to the spread of a
      sum over many windows (counts that come in runs, sessions or spells,
      leave longer silences than one window's spread says);
    - ``steps = var(x_t - x_{t-1}) / (2 mean)``: the same for Poisson counts,
      but a trend or a level shift (a fade under way) does not pass as noise.

    Each keeps only what noise cannot explain: D and steps less one standard
    error of a Poisson sample's (``sqrt(2 / (n - 1))``), rho less ``1 /
    sqrt(n)``, so a short history reads as Poisson.
    """
    n = jnp.maximum(jnp.asarray(windows, jnp.float32), 1.0)
    total = jnp.asarray(total, jnp.float32)
    mean = total / n
    var = jnp.maximum(jnp.asarray(sum_sq, jnp.float32) - n * mean * mean, 0.0) / jnp.maximum(n - 1.0, 1.0)
    usable = (n >= 2) & (mean > 0)
    noise = jnp.sqrt(2.0 / jnp.maximum(n - 1.0, 1.0))
    d = jnp.where(usable, var / jnp.where(mean > 0, mean, 1.0), 1.0)
    d = 1.0 + jnp.maximum(d - 1.0 - noise, 0.0)
    cov = jnp.asarray(sum_lag, jnp.float32) / jnp.maximum(n - 1.0, 1.0) - mean * mean
    rho = jnp.where(usable & (n >= 3) & (var > 1e-9), cov / jnp.where(var > 1e-9, var, 1.0), 0.0)
    rho = jnp.clip(rho - 1.0 / jnp.sqrt(n), 0.0, 0.9)
    step_var = jnp.maximum(2.0 * jnp.asarray(sum_sq, jnp.float32) - 2.0 * jnp.asarray(sum_lag, jnp.float32), 0.0) / n
    steps = jnp.where(usable, step_var / (2.0 * jnp.where(mean > 0, mean, 1.0)), 1.0)
    steps = 1.0 + jnp.maximum(steps - 1.0 - noise, 0.0)
    return d * (1.0 + rho) / (1.0 - rho), steps


def log_silence_probability(silence: ArrayLike, model: SilenceModel, params: DetectorParams) -> Array:
    """log P(``silence`` empty windows in a row | the interest's history), the larger of two models.

    - Events: the rate is ~ Gamma(prior_events + events / I, prior_windows +
      exposure / I) (quasi-likelihood: counts I times more variable than
      Poisson ones carry 1 / I of the information about the rate; I is
      ``model.information``, the smaller of the runs and steps indices, so a
      fade under way does not widen the posterior). A window
      of counts with mean lam and variance D lam (negative binomial) is
      empty with probability ``exp(-c lam)``, ``c = log(D) / (D - 1)`` (1
      for Poisson counts, less for overdispersed ones),
      so s empty windows have the predictive probability ``(b / (b + c s)) **
      a``: an uncertain rate from a short history makes long silences
      plausible. D is the counts' dispersion times ``(1 + rho) / (1 - rho)``,
      rho their lag-1 autocorrelation: counts that come in runs (sessions,
      spells) leave longer silences than one window's spread says.
    - Windows, once the interest has come back from ``min_gaps`` silences:
      active and silent windows as a two-state Markov chain (trusted for
      silences up to a reach times the longest one seen: ``log(life_windows * starts /
      false_alarm) / log(gaps + 1)``, at least ``markov_reach``). A silence starts
      after an active window with probability ``pi ~ Beta(prior_strength +
      gaps, prior_strength + active -> active)`` and goes on with probability
      ``theta ~ Beta(prior_strength + silent -> silent, prior_strength +
      gaps)``, so ``P(s) = E[pi] E[theta ** (s - 1)]`` (beta-binomial): the
      lengths of the silences the interest came back from say how long its
      silences run (sessions, weekday habits, disengaged spells). With
      ``population_strength`` n > 0, theta's prior is ``Beta(n q, n (1 - q))``
      instead, q the population's share of silent windows followed by a silent
      one (``model.stay_prior``, from ``window_model_prior``): a short history borrows how silences run in
      the population it is judged in (empirical Bayes), rather than a flat
      prior whose heavy tail makes every long silence of a young interest plausible
      and whose mean 1/2 makes it implausible in the same breath.

    1 at s = 0.
    """
    return _log_probability(silence, _silence_terms(model, params))


class _SilenceTerms(NamedTuple):
    """What ``log_silence_probability`` computes from the model alone, for any silence: taken once where it is
    evaluated at many silences (``silence_surprise``, and ``silence_limit``'s bisection, where each betaln
    also scans its whole input), then ``_log_probability`` does the same operations on the same values."""

    a: Array  # the rate's Gamma posterior (events model)
    b: Array
    c: Array
    log_b: Array
    start_share: Array  # log E[pi] (window model)
    stay_on: Array  # theta's Beta posterior
    stay_off: Array
    stay_beta: Array  # betaln(stay_on, stay_off)
    windows_from: Array  # bool: the interest came back from min_gaps silences
    reach: Array  # the window model is trusted up to this silence


def _silence_terms(model: SilenceModel, params: DetectorParams) -> _SilenceTerms:
    d = model.dispersion
    # Quasi-likelihood: counts that vary D times more than Poisson ones carry 1 / D of the
    # information about the rate, so the Gamma posterior is that of events / D over exposure / D
    # (same mean, D times the variance).
    info = d if model.information is None else model.information
    a = params.prior_events + model.events / info
    b = params.prior_windows + model.exposure / info
    c = jnp.where(d > 1.0 + 1e-3, jnp.log(d) / jnp.maximum(d - 1.0, 1e-3), 1.0)
    m = jnp.asarray(params.prior_strength, jnp.float32)
    gaps = model.gaps
    start_on, start_off = m + gaps, m + jnp.maximum(model.active_windows - gaps, 0.0)
    prior_on, prior_off = (m, m) if model.stay_prior is None else model.stay_prior
    stay_on, stay_off = prior_on + jnp.maximum(model.silent_windows - gaps, 0.0), prior_off + gaps
    # Trusted within reach times the longest silence seen; past it the rate decides. The reach is
    # what the life budget needs: were the silences memoryless, one past x times the longest of
    # n seen has a chance of about (n + 1) ** -x, and a loyal interest begins life_windows * starts
    # of them, so x = log(life_windows * starts / false_alarm) / log(n + 1), at least markov_reach.
    reach = jnp.maximum(params.markov_reach, _log_opportunities(model, params) / jnp.log(gaps + 1.0 + 1e-6))
    return _SilenceTerms(a=a, b=b, c=c, log_b=jnp.log(b), start_share=jnp.log(start_on) - jnp.log(start_on + start_off),
                         stay_on=stay_on, stay_off=stay_off, stay_beta=betaln(stay_on, stay_off),
                         windows_from=gaps >= params.min_gaps, reach=reach * jnp.maximum(model.longest_gap, 1.0))


def _log_probability(silence: ArrayLike, terms: _SilenceTerms) -> Array:
    """``log_silence_probability`` from its ``_SilenceTerms``."""
    s = jnp.asarray(silence, jnp.float32)
    by_events = terms.a * (terms.log_b - jnp.log(terms.b + terms.c * s))
    # log B(on + s - 1, off) - log B(on, off); betaln stays accurate in float32 where a
    # difference of four gammaln values of thousands would not.
    by_windows = terms.start_share + betaln(terms.stay_on + jnp.maximum(s - 1.0, 0.0), terms.stay_off) - terms.stay_beta
    by_windows = jnp.where(terms.windows_from & (s <= terms.reach), by_windows, -jnp.inf)
    return jnp.where(s >= 1, jnp.maximum(by_events, by_windows), 0.0)


def _surprise(silence: ArrayLike, terms: _SilenceTerms, one: Array) -> Array:
    """``silence_surprise`` from the ``_SilenceTerms`` and ``one`` = log P(1)."""
    s = jnp.asarray(silence, jnp.float32)
    # 0 at s <= 1 by definition, not by subtraction: ``one`` and log P(s) at s = 1 may be computed by differently
    # compiled code (a scalar and a vectorized loop), and then differ in the last bit (4.8e-7 with XLA's default
    # CPU flags).
    return jnp.where(s > 1, jnp.maximum(one - _log_probability(s, terms), 0.0), 0.0)


def silence_surprise(silence: ArrayLike, model: SilenceModel, params: DetectorParams) -> Array:
    """How surprising a silence is once it has begun: ``log P(1) - log P(silence)`` (>= 0; 0 at s <= 1)."""
    s = jnp.asarray(silence, jnp.float32)
    terms = _silence_terms(model, params)
    return _surprise(s, terms, _log_probability(jnp.ones_like(s), terms))


def silence_threshold(model: SilenceModel, params: DetectorParams) -> Array:
    """The surprise at which a silence is unusual: ``kappa * log(life_windows * starts / false_alarm)``.

    ``starts`` is the interest's rate of silences per window, ``(gaps + 1) /
    (exposure + 2)``: over ``life_windows`` windows a loyal interest begins
    about ``life_windows * starts`` silences, and the test spreads the life's
    ``false_alarm`` over them (an interest that is rarely silent can be
    called forgotten sooner). ``kappa`` is the population's calibration
    (``calibration_scale``): 1 where the model's surprises are what the
    population's completed silences show.
    """
    return model.kappa * _log_opportunities(model, params)


def _log_opportunities(model: SilenceModel, params: DetectorParams) -> Array:
    """``log(life_windows * starts / false_alarm)``: the life budget spread over the silences a loyal
    interest begins (``starts = (gaps + 1) / (exposure + 2)`` per window)."""
    starts = (model.gaps + 1.0) / (model.exposure + 2.0)
    opportunities = jnp.maximum(params.life_windows * starts, 1.0)
    return jnp.log(opportunities) - jnp.log(jnp.asarray(params.false_alarm, jnp.float32))


def silence_limit(model: SilenceModel, params: DetectorParams, *, max_limit: int = 1 << 16) -> Array:
    """``s*``: the fewest silent windows that the silence test calls forgotten (int32, >= 1).

    The smallest s whose surprise reaches ``silence_threshold`` (found by
    bisection: the surprise grows with s), raised to the gap term
    ``model.gap_limit``; capped at ``max_limit``. The bisection starts from the events model's bracket
    (``_limit_bracket``), so it is the full range's wherever the float32 surprise grows with s; with
    extreme histories (hundreds of thousands of gaps) rounding can make it step back, and the two may stop
    at different crossings a window or two apart.
    """
    terms = _silence_terms(model, params)  # once, not in every step of the bisection
    one = _log_probability(jnp.ones(model.events.shape, jnp.float32), terms)
    return _silence_limit(model, params, terms, one, silence_threshold(model, params), max_limit)


def _silence_limit(model: SilenceModel, params: DetectorParams, terms: _SilenceTerms, one: Array, threshold: Array,
                   max_limit: int = 1 << 16) -> Array:
    """``silence_limit`` from the model's ``_SilenceTerms``, ``one`` = log P(1) and its threshold (computed once
    where the surprise is wanted too: each holds betaln, the largest part of the update's program)."""
    top = float(max_limit)

    def unlikely(s):
        return _surprise(s, terms, one) >= threshold

    lo, hi = _limit_bracket(terms, one, threshold, top)
    # Checked, not trusted: a bracket whose ends do not hold (rounding, or a model the bound does not cover) is
    # the whole range, [1, max_limit], as the bisection had before it had brackets.
    held = (lo == 1.0) | ~unlikely(lo)
    held &= (hi == top) | unlikely(hi)
    lo, hi = jnp.where(held, lo, 1.0), jnp.where(held, hi, top)

    def bisect(carry):
        step, lo, hi = carry
        mid = jnp.floor((lo + hi) / 2.0)
        found = unlikely(mid)
        return step + 1, jnp.where(found, lo, mid), jnp.where(found, mid, hi)

    def still_open(carry):
        # Until every bracket is two neighbours (a bracket that is already keeps them: mid = lo is not unlikely),
        # and at most the steps of the whole range (past 2 ** 24 float32 midpoints stop halving a bracket).
        step, lo, hi = carry
        return (step < max_limit.bit_length()) & jnp.any(hi - lo > 1.0)

    _, _, by_chance = lax.while_loop(still_open, bisect, (jnp.int32(0), lo, hi))
    limit = jnp.maximum(jnp.maximum(by_chance, model.gap_limit), 2.0)
    # Too little history for the test to judge: no silence is unusual yet.
    limit = jnp.where(model.exposure >= params.min_history, limit, top)
    return jnp.clip(limit, 1, max_limit).astype(jnp.int32)


def _limit_bracket(terms: _SilenceTerms, one: Array, threshold: Array, top: float) -> tuple[Array, Array]:
    """``(lo, hi)`` float32 around s* before the gap term: ``lo`` not unlikely, ``hi`` unlikely (or ``top``),
    from the events model alone, for ``silence_limit``'s bisection to narrow (3 to 8 steps here, not 17).

    log P(s) is the larger of the two models' (``_log_probability``), so the surprise is at most
    ``one - by_events(s)``, which reaches the threshold at ``s_events = b expm1((threshold - one) / a) / c``:
    no silence shorter than ``s_events`` is unlikely. Past the window model's reach (or where it does not
    speak) the surprise is ``one - by_events(s)``: from ``s_events`` on every silence is. Two windows of margin
    each way cover the rounding of ``s_events``; ``silence_limit`` checks both ends.
    """
    s_events = terms.b * jnp.expm1((threshold - one) / terms.a) / terms.c
    finite = jnp.isfinite(s_events)
    s_events = jnp.where(finite, s_events, 1.0)
    lo = jnp.clip(jnp.floor(s_events) - 2.0, 1.0, top)
    past_reach = jnp.where(terms.windows_from, jnp.floor(terms.reach) + 1.0, 0.0)
    hi = jnp.clip(jnp.maximum(jnp.ceil(s_events) + 2.0, past_reach), lo + 1.0, top)
    return jnp.where(finite, lo, 1.0), jnp.where(finite, hi, top)


class SilenceModel(NamedTuple):
    """The silence test's inputs per (user, interest), from the detector's counters (float32).

    The history runs from the interest's first active window (or its return
    from forgotten) to its last active one; the first active window is given
    (it starts the history), so it is left out of events, exposure and
    active windows.
    """

    events: Array
    exposure: Array  # windows of history
    active_windows: Array
    silent_windows: Array  # empty windows inside the history (the current silence excluded)
    gaps: Array  # silences that ended with activity
    longest_gap: Array  # the longest of them
    dispersion: Array  # var / mean (>= 1) of the counts before the current silence
    gap_limit: Array  # ceil(gap_factor * expected gap): silences shorter than this never fire
    periodic: Array
    kappa: Array  # the population's calibration of surprises (calibration_scale)
    # How much less than Poisson counts the history says about the rate (>= 1; None = dispersion):
    # the smaller of the runs and steps indices (``history_dispersion``), so a fade under way,
    # which inflates the first, does not pass for noise around a stable rate.
    information: Array | None = None
    # theta's Beta prior ``(on, off)`` (``window_model_prior`` of the population's share); None = prior_strength
    # each way. Computed once a window, outside the per-interest arithmetic: as an expression of the knobs in
    # it, XLA recomputed it in every fusion that reads it (the analysis' step 11 % slower, 390 against 350 ms a
    # window at 100k x 16).
    stay_prior: tuple[Array, Array] | None = None


def silence_model(
    total: ArrayLike, alive: ArrayLike, silence: ArrayLike, active_windows: ArrayLike, gaps: ArrayLike,
    longest_gap: ArrayLike, period: ArrayLike, period_strength: ArrayLike, dispersion: ArrayLike,
    kappa: ArrayLike, params: DetectorParams, buffer_windows: int, steps: ArrayLike | None = None,
    stay_prior: tuple[ArrayLike, ArrayLike] | None = None,
) -> SilenceModel:
    """``SilenceModel`` from the counters after a window (elementwise, any shape).

    A period counts when it is strong and at least three cycles fit in the
    windows the periodogram saw (``min(alive, buffer_windows)``): a trend or
    a step (a fade, a pause) would otherwise pass as a cycle of period T or T / 2.
    The expected gap is the longest silence the interest came back from, or
    its period minus one when that is longer. ``dispersion`` and ``steps``
    are ``history_dispersion``'s runs and steps indices; the rate posterior
    uses the smaller (``information``; the runs index alone without ``steps``). ``stay_prior``: theta's
    prior (``window_model_prior``; None = ``prior_strength`` each way).
    """
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    alive = f32(alive)
    alive_before = alive - f32(silence)
    active_windows = f32(active_windows)
    period = f32(period)
    periodic = (
        (period >= 2.0)  # 0 = no period (the evidence reports 0 where the period does not count)
        & (f32(period_strength) >= params.min_strength)
        & (jnp.minimum(alive, buffer_windows) >= 3 * period)
    )
    expected_gap = jnp.maximum(f32(longest_gap), jnp.where(periodic, period - 1.0, 0.0))
    return SilenceModel(
        events=jnp.maximum(f32(total) - 1.0, 0.0),
        exposure=jnp.maximum(alive_before - 1.0, 0.0),
        active_windows=jnp.maximum(active_windows - 1.0, 0.0),
        silent_windows=jnp.maximum(alive_before - active_windows, 0.0),
        gaps=f32(gaps),
        longest_gap=f32(longest_gap),
        dispersion=jnp.maximum(jnp.broadcast_to(f32(dispersion), alive.shape), 1.0),
        gap_limit=jnp.ceil(params.gap_factor * expected_gap - 1e-4),
        periodic=periodic,
        kappa=jnp.broadcast_to(f32(kappa), alive.shape),  # per pair: pair_kappa of the class kappas
        information=None if steps is None else jnp.maximum(
            jnp.minimum(jnp.broadcast_to(f32(dispersion), alive.shape), f32(steps)), 1.0),
        stay_prior=None if stay_prior is None else (f32(stay_prior[0]), f32(stay_prior[1])),
    )


def age_class(exposure: ArrayLike) -> Array:
    """The calibration class (int32) of an interest with ``exposure`` windows of history (``CAL_AGES``):
    ``searchsorted(CAL_AGES, exposure, side="right")`` (NaN past the last), as a count of the ages reached
    (elementwise: a search is a loop per element on a CPU)."""
    exposure = jnp.asarray(exposure, jnp.float32)
    reached = sum((exposure >= np.float32(age)).astype(jnp.int32) for age in CAL_AGES)
    return jnp.where(jnp.isnan(exposure), len(CAL_AGES), reached).astype(jnp.int32)


def pair_kappa(kappa: ArrayLike, exposure: ArrayLike) -> Array:
    """Each interest's calibration: ``kappa`` ``(classes,)`` at its ``age_class``."""
    return jnp.asarray(kappa, jnp.float32)[age_class(exposure)]


def calibration_scale(histogram: ArrayLike, params: DetectorParams) -> Array:
    """``kappa`` per class of history: how much more surprising completed silences are than the model says.

    ``histogram`` ``(classes, CAL_BINS)`` counts the silences that ended
    with activity by the history the interest had (``age_class``) and the
    surprise they had reached (``silence_surprise``, bins of
    ``CAL_WIDTH``). If the model were exact, a share ``q`` of them
    (``calibration_share``) would pass ``log(1 / q)``; kappa is their actual
    ``1 - q`` quantile over ``log(1 / q)``, shrunk toward 1 by
    ``calibration_prior`` silences and kept in [1, 8]. It scales every
    threshold: in data whose silences come in runs the model did not expect
    (sessions, disengaged spells) kappa > 1 and the detector waits longer.
    It never goes below 1: the calibration only ever makes the detector more
    careful, so the life budget ``false_alarm`` of the model stays a bound.
    """
    hist = jnp.asarray(histogram, jnp.float32)
    n = hist.sum(-1)
    share = jnp.asarray(params.calibration_share, jnp.float32)
    # tail[i]: completed silences at or past bin i; the quantile is the first edge whose tail is <= share * n.
    tail = jnp.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    edges = jnp.arange(hist.shape[-1], dtype=jnp.float32) * CAL_WIDTH
    quantile = jnp.min(jnp.where(tail <= share * n[..., None], edges, hist.shape[-1] * CAL_WIDTH), axis=-1)
    raw = quantile / -jnp.log(share)
    prior = jnp.asarray(params.calibration_prior, jnp.float32)
    kappa = (n * raw + prior) / jnp.maximum(n + prior, 1e-6)
    return jnp.clip(kappa, 1.0, 8.0)


def calibration_add(histogram: Array, surprise: ArrayLike, exposure: ArrayLike, done: ArrayLike) -> Array:
    """``histogram`` with the completed silences (``done``) counted at their history class and ``surprise``."""
    index = jnp.clip(jnp.floor(jnp.asarray(surprise, jnp.float32) / CAL_WIDTH), 0, histogram.shape[-1] - 1)
    cls = jnp.broadcast_to(age_class(exposure), index.shape)
    return jnp.asarray(histogram).at[cls.ravel(), index.astype(jnp.int32).ravel()].add(
        jnp.asarray(done, jnp.float32).ravel())


def window_model_prior(params: DetectorParams, stay_share: ArrayLike) -> tuple[Array, Array]:
    """theta's Beta prior ``(on, off)``: ``population_strength * (q, 1 - q)`` for the population's ``stay_share``
    q, or ``prior_strength`` each way when ``population_strength`` is 0 (``SilenceModel.stay_prior``)."""
    n = jnp.asarray(params.population_strength, jnp.float32)
    m = jnp.asarray(params.prior_strength, jnp.float32)
    use = (n > 0).astype(jnp.float32)
    q = jnp.asarray(stay_share, jnp.float32)
    return (1.0 - use) * m + use * n * q, (1.0 - use) * m + use * n * (1.0 - q)


def population_stay_share(totals: ArrayLike) -> Array:
    """The population's share of silent windows followed by another silent one, ``(stays + 1) / (silent + 2)``
    from ``DetectorState.silence_totals`` (1/2 before any silence ended), kept in [0.05, 0.95]."""
    totals = jnp.asarray(totals, jnp.float32)
    return jnp.clip((totals[0] + 1.0) / (totals[1] + 2.0), 0.05, 0.95)


def silence_totals_add(totals: Array, silence: ArrayLike, done: ArrayLike) -> Array:
    """``totals`` with the completed silences (``done``, of ``silence`` windows each) added: ``silence - 1``
    silent windows followed by a silent one, ``silence`` silent windows."""
    # Flat sums (XLA:CPU reduced the (users, K) float32 form about 25x slower inside the update), windows as
    # float32 (an int32 sum could overflow at 10M users), silences counted exactly.
    s = jnp.where(jnp.asarray(done, bool), jnp.asarray(silence, jnp.int32), 0).reshape(-1)
    windows = jnp.sum(s.astype(jnp.float32))
    ended = jnp.sum((s > 0).astype(jnp.int32)).astype(jnp.float32)
    return jnp.asarray(totals, jnp.float32) + jnp.stack([windows - ended, windows])


def population_dispersion(histogram: ArrayLike) -> Array:
    """The population's runs and steps indices ``(2,)``: the medians of the interests' own, from
    ``DetectorState.dispersion_histogram``, with one interest at 1 (Poisson) as a prior (1 before any window).

    A median, not a mean: a population is a mixture (most interests of this project's classic generator
    are steady, with a minority of bursty and periodic ones far above 1), and a young interest is most
    likely a typical one. Where most interests read as Poisson the median is exactly 1 and the prior pulls
    nothing; where most come in sessions (the hawkes story: 98 % above 1) it is their typical index. Within
    a bin the log-index is interpolated linearly, so the median moves continuously with the population.
    """
    hist = jnp.asarray(histogram, jnp.float32).at[..., 0].add(1.0)  # the prior: one Poisson interest
    below = jnp.cumsum(hist, axis=-1) - hist  # interests in the bins before each
    half = 0.5 * jnp.sum(hist, axis=-1, keepdims=True)
    # The bin holding the median: the last whose interests before it are fewer than half.
    j = jnp.sum((below < half).astype(jnp.int32), axis=-1, keepdims=True) - 1
    count = jnp.take_along_axis(hist, j, axis=-1)
    before = jnp.take_along_axis(below, j, axis=-1)
    share = jnp.clip((half - before) / jnp.maximum(count, 1e-6), 0.0, 1.0)
    log_median = jnp.where(j > 0, (j - 1 + share) * DISPERSION_WIDTH, 0.0)
    return jnp.exp(log_median[..., 0])


def dispersion_bins(index: ArrayLike) -> Array:
    """The ``dispersion_histogram`` bin (int32) of a dispersion index (>= 1): 0 for 1 (Poisson, as
    ``history_dispersion`` reads every history whose spread noise explains; to ``_POISSON`` in the log, so that
    float32 rounding of a 1 does not decide), else ``1 + floor(log(index) / DISPERSION_WIDTH)``, the last bin
    holding everything past it."""
    log_index = jnp.log(jnp.maximum(jnp.asarray(index, jnp.float32), 1.0))
    inner = 1 + jnp.floor(log_index / DISPERSION_WIDTH).astype(jnp.int32)
    return jnp.where(log_index > _POISSON, jnp.clip(inner, 1, DISPERSION_BINS - 1), 0)


def dispersion_histogram(runs: ArrayLike, steps: ArrayLike, exposure: ArrayLike) -> Array:
    """``(2, DISPERSION_BINS)`` how many interests with ``exposure >= CAL_AGES[0]`` windows of history have
    their own runs and steps indices (``history_dispersion``) in each bin (``dispersion_bins``):
    ``DetectorState.dispersion_histogram``; ``(users, K)`` each."""
    use = (jnp.asarray(exposure, jnp.float32) >= np.float32(CAL_AGES[0])).astype(jnp.float32)
    return _histogram_add(jnp.zeros((2, DISPERSION_BINS), jnp.float32), dispersion_bins(runs), dispersion_bins(steps),
                          use)


def _histogram_add(histogram: Array, runs_bin: Array, steps_bin: Array, weight: Array) -> Array:
    """``histogram`` ``(2, DISPERSION_BINS)`` with each interest counted (``weight``) at its two bins."""
    w = jnp.asarray(weight, jnp.float32).ravel()
    return histogram.at[0, runs_bin.ravel()].add(w).at[1, steps_bin.ravel()].add(w)


def dispersion_prior(params: DetectorParams, population: ArrayLike) -> tuple[Array, Array, Array]:
    """``(m, m (P_runs - 1), m (P_steps - 1))``: the pseudo windows ``m = dispersion_strength`` and the pull
    of the population's indices ``population`` ``(..., 2)`` (``population_dispersion``), computed once a window
    outside the per-interest arithmetic (``shrink_dispersion``; see ``SilenceModel.stay_prior``)."""
    m = jnp.asarray(params.dispersion_strength, jnp.float32)
    population = jnp.asarray(population, jnp.float32)
    return m, m * (population[..., 0] - 1.0), m * (population[..., 1] - 1.0)


def shrink_dispersion(index: ArrayLike, exposure: ArrayLike, strength: ArrayLike, pull: ArrayLike) -> Array:
    """An interest's dispersion index with the population's worth ``strength`` windows beside its own
    ``exposure``: ``max(I, 1 + (n (I - 1) + m (P - 1)) / (n + m))`` (``pull = m (P - 1)``,
    ``dispersion_prior``); ``index`` itself when ``strength`` is 0.

    A short history reads as Poisson (``history_dispersion`` takes the noise of a short sample off), so
    without the population's an interest of a bursty population is judged as if its lulls were a steady
    rate's until it has lived many of them. The population's only ever raises an interest's index: its own
    is already the least its history allows (the noise is taken off), and pulling a bursty interest of a
    steady population down toward 1 would call its lulls unusual and, through the calibration ``kappa``
    they feed, slow every other interest's verdicts."""
    index = jnp.asarray(index, jnp.float32)
    n = jnp.asarray(exposure, jnp.float32)
    m = jnp.asarray(strength, jnp.float32)
    weight = n + m
    shrunk = 1.0 + (n * (index - 1.0) + pull) / jnp.where(weight > 0, weight, 1.0)
    return jnp.where(m > 0, jnp.maximum(shrunk, index), index)


def window_level(params: DetectorParams) -> Array:
    """The drop test's level: ``false_alarm / life_windows`` (the life's budget spread over its windows)."""
    return jnp.asarray(params.false_alarm, jnp.float32) / jnp.asarray(params.life_windows, jnp.float32)


def silence_is_unusual(silence: ArrayLike, model: SilenceModel, params: DetectorParams) -> Array:
    """``silence >= s*`` without computing s*: one surprise, the gap term and the history it needs.

    A silence is judged once the interest has ``min_history`` windows of
    history before it (a first burst says little about how long its gaps
    run) and is at least 2 windows long (the first empty window is how every
    silence begins).
    """
    s = jnp.asarray(silence, jnp.float32)
    return _is_unusual(s, silence_surprise(s, model, params), silence_threshold(model, params), model, params)


def _is_unusual(silence: Array, surprise: Array, threshold: Array, model: SilenceModel,
                params: DetectorParams) -> Array:
    """``silence_is_unusual`` from the silence's surprise and the threshold."""
    return (silence >= 2) & (surprise >= threshold) & (silence >= model.gap_limit) & (model.exposure >= params.min_history)


def model_silence_limit(model: SilenceModel, params: DetectorParams) -> Array:
    """s* of a ``SilenceModel`` (int32; the bisection of ``silence_limit``)."""
    return silence_limit(model, params)


class _Block(NamedTuple):
    """One block of users' per-(user, interest) inputs to the judgment, ``(B, K)`` each."""

    counts: Array
    alive: Array
    silence: Array
    total: Array
    sum_sq: Array
    sum_lag: Array
    active_windows: Array
    gaps: Array
    longest_gap: Array
    since_return: Array
    previous: Array  # int8 codes before the window
    period_index: Array  # int16 the stored periodogram (DetectorState), reset by a return
    period_strength: Array


# The per-(user, interest) fields of DetectorState but its ring buffer, (users, K) each: the update reads them
# from the state and replaces them in it by name.
_NOT_PER_PAIR = ("buffer", "window", "calibration", "degree_moments", "silence_totals", "dispersion_histogram")
_Pairs = NamedTuple("_Pairs", [(name, Array) for name in DetectorState._fields if name not in _NOT_PER_PAIR])


class _Carry(NamedTuple):
    """What ``detector_update``'s loop over user blocks carries: the ring buffer's counts (this window's slot
    written in place, block by block), the pairs' new state and the window's per-pair outputs (written block by
    block), and the population's increments summed over the blocks."""

    ring: Array
    pairs: _Pairs
    outputs: dict[str, Array]
    calibration: Array
    silence_totals: Array
    dispersion_histogram: Array


def _recent_sums(counts: Array, age: Array, alive: Array, span: Array) -> tuple[Array, Array]:
    """The events of the recent span, and the same weighted by their position (T - 1 - age, oldest first).

    Args:
      counts: ``(B, K, T)`` uint8 ring buffer slots, read as they lie (slot order, ages by index arithmetic).
      age: ``(T,)`` int32 age of each slot (``activity_buffer_ages``).
      alive: ``(B, K)`` int32 windows of history (the ring's lived windows are those of age < alive).
      span: ``(B, K)`` int32 windows of the recent span.

    The sums are of integers below 2 ** 24, so exact in float32 in any order: the same as over an ordered copy.
    They are taken in int32, both in one reduction: XLA:CPU then fuses the mask into one vectorized loop (in
    float32 it wrote each masked (B, K, T) array out and reduced it apart, 7x slower).
    """
    length = counts.shape[-1]
    recent_mask = age < jnp.minimum(alive, span)[..., None]
    y = jnp.where(recent_mask, counts, 0).astype(jnp.int32)
    recent, weighted = lax.reduce((y, y * (length - 1 - age)), (np.int32(0), np.int32(0)),
                                  lambda a, b: (a[0] + b[0], a[1] + b[1]), (counts.ndim - 1,))
    return recent.astype(jnp.float32), weighted.astype(jnp.float32)


def _series_features(
    counts: Array, age: Array, alive: Array, min_strength: ArrayLike, periodogram: str, small: bool,
) -> tuple[Array, Array]:
    """The dominant period of the lived windows of the ring buffer and its strength, read as it lies.

    Args:
      counts: ``(B, K, T)`` uint8 ring buffer slots.
      age: ``(T,)`` int32 age of each slot (``activity_buffer_ages``).
      alive: ``(B, K)`` int32 windows of history (the ring's lived windows are those of age < alive).
      min_strength: the periodogram strength that counts as periodic (``DetectorParams.min_strength``).
      periodogram: ``"fft"``: ``dominant_period`` (``rfft``) of the lived windows in order; ``"dft"``:
        ``dft_period`` of the ring in slot order, and ``"fft"`` for the rows where it is ambiguous
        (two peaks that tie to float32 rounding at a strength that may count, or a strength within
        rounding of ``min_strength``; those rows alone when there are at most ``_FEW`` in the block,
        else the whole block): there ``rfft``'s rounding decided before, so it still does, and the
        decisions are those of ``"fft"``.
      small: the whole input has fewer than ``_ROWS`` rows (and is this block): ambiguous rows are
        decided on the whole block, not gathered (``_ROWS``).

    Returns ``(period, strength)``, ``(B, K)`` float32 each.
    """
    length = counts.shape[-1]
    y = counts.astype(jnp.float32)
    lived = age < alive[..., None]

    def by_fft(y, alive):
        # Oldest first: slot s goes to position T - 1 - age[s] (the newest last), as activity_buffer_ordered.
        ordered = jnp.roll(y, -jnp.argmax(age).astype(jnp.int32), axis=-1)
        return dominant_period(ordered, jnp.arange(length - 1, -1, -1, dtype=jnp.int32) < alive[..., None])

    if periodogram == "fft":
        return by_fft(y, alive)
    period, strength, tied = dft_period(counts, lived, tie=_TIE)  # the bytes: summed exactly in int32
    floor = jnp.asarray(min_strength, jnp.float32)
    ambiguous = ((tied & (strength >= floor - _NEAR)) | (jnp.abs(strength - floor) <= _NEAR)).ravel()
    count = jnp.sum(ambiguous)
    cells = ambiguous.shape[0]
    flat = lambda a: a.reshape(cells, *a.shape[y.ndim - 1:])  # noqa: E731

    def few(_):
        # Only the ambiguous rows (at most _FEW; past the count, indices out of range are dropped).
        rows = jnp.nonzero(ambiguous, size=_FEW, fill_value=cells)[0]
        p, s = by_fft(flat(y).at[rows].get(mode="clip"), flat(alive).at[rows].get(mode="clip"))
        return (flat(period).at[rows].set(p, mode="drop").reshape(period.shape),
                flat(strength).at[rows].set(s, mode="drop").reshape(strength.shape))

    def exact(_):
        if small:
            return by_fft(y, alive)
        if cells <= _FEW:
            return few(None)
        return lax.cond(count > _FEW, lambda _: by_fft(y, alive), few, None)

    return lax.cond(count > 0, exact, lambda _: (period, strength), None)


def _period_from_index(index: Array, length: int) -> Array:
    """``T / j`` float32 (0 where j = 0), the expression ``dominant_period`` and ``dft_period`` compute."""
    return jnp.where(index > 0, length / jnp.maximum(index, 1).astype(jnp.float32), 0.0)


def _periodogram(
    raw: Array, age: Array, b: _Block, window: Array, start: Array, min_strength: ArrayLike, periodogram: str,
    small: bool, period_every: int,
) -> tuple[Array, Array]:
    """``(period_index, period_strength)`` of a block after this window: taken anew for the users whose turn it is.

    Every window with ``period_every=1``. Otherwise only the rows of users ``u`` with ``u % period_every ==
    window % period_every`` (gathered: a 1 / period_every share of the block), the rest keep ``b``'s stored
    values (reset to 0 by a return), so a period is at most ``period_every - 1`` windows old. ``start``: the
    block's first user; ``window``: the windows closed before this one.
    """
    length = raw.shape[-1]

    def index_of(period, strength):
        # j = T / period, exact (period is T / j rounded to float32); 0 below min_strength, where the period does
        # not count and a tie of weak peaks, decided by rounding, would make the state depend on the blocking.
        keep = (period > 0) & (strength >= min_strength)
        return jnp.where(keep, jnp.round(length / jnp.maximum(period, 1e-30)), 0).astype(jnp.int16)

    if period_every == 1:
        period, strength = _series_features(raw, age, b.alive, min_strength, periodogram, small)
        return index_of(period, strength), strength
    rows, interests = b.alive.shape
    taken = -(-rows // period_every)
    phase = (window - start) % period_every  # row i is user start + i: its turn when (start + i) % P == window % P
    at = phase + period_every * jnp.arange(taken, dtype=jnp.int32)  # past the block's end: dropped below
    period, strength = _series_features(raw.at[at].get(mode="clip"), age, b.alive.at[at].get(mode="clip"),
                                        min_strength, periodogram, taken * interests < _ROWS)
    return (b.period_index.at[at].set(index_of(period, strength), mode="drop"),
            b.period_strength.at[at].set(strength, mode="drop"))


# ``_judge``'s flags of the (user, interest) pairs whose state the drop test may change (``_drop_verdicts``).
_MAY_DROP = 1  # the drop test may call it forgotten
_MAY_SAG = 2  # it is active and the looser drop test may call it declining
# ``_drop_verdicts`` takes the Poisson tails of at least this many pairs at a time (and of 1/256 of them).
_TAIL_ROWS = 4096


def _drop_verdicts(code: Array, recent: Array, expected: Array, dispersion: Array, flags: Array,
                   params: DetectorParams, level: Array, *, capacity: int | None = None) -> Array:
    """The states after the drop test, from the states ``code`` that the silence test alone gave.

    The drop test needs two Poisson tails, ``poisson_cdf(k, mean)`` and ``poisson_cdf(k, fade_share *
    mean)`` of ``k = recent / dispersion`` and ``mean = expected / dispersion`` (``gammaincc``,
    iterative: its loop runs until the slowest element converges, over every element), and they decide
    only the pairs ``flags`` marks (``_MAY_DROP``: forgotten when the first is below ``level`` and the
    second below ``fade_confidence``; ``_MAY_SAG``: declining when the first is below ``sqrt(level)``).
    ``_judge`` marks only the pairs where a tail can pass (``_drop_flags``). They are taken for those,
    gathered ``capacity`` pairs at a time (``_TAIL_ROWS``, or 1/256 of the pairs), once a window over all
    users: in the judgment's cache blocks each block paid the loop's iterations for the few of its pairs
    that needed them (about 0.2 % in an analysis; the update was 14 % faster without the loops at 100k
    users x 16). Elementwise, each tail is what it was over every pair.

    Args:
      code: int8 states, any shape; recent, expected, dispersion: float32 the recent span's events, what
        the earlier rate predicts for them, and the counts' dispersion (steps index) both are divided by;
        flags: int8 ``_MAY_DROP | _MAY_SAG`` bits.
    """
    shape = code.shape
    code, recent, expected, dispersion, flags = (jnp.asarray(a).ravel()
                                                 for a in (code, recent, expected, dispersion, flags))
    cells = code.shape[0]
    capacity = min(cells, max(_TAIL_ROWS, cells // 256) if capacity is None else capacity)
    share = jnp.asarray(params.fade_share, jnp.float32)

    def chunk(_, carry):
        # The first `capacity` pairs still needed (past the count, indices out of range: filled, then dropped).
        code, need = carry
        rows = jnp.nonzero(need, size=capacity, fill_value=cells)[0]
        take = lambda a, fill: a.at[rows].get(mode="fill", fill_value=fill)  # noqa: E731
        spread = take(dispersion, 1.0)
        k, mean = take(recent, 0.0) / spread, take(expected, 0.0) / spread  # as _judge divided them
        may = take(flags, 0)
        drop_tail, below_share = poisson_cdf(k, mean), poisson_cdf(k, share * mean)
        dropped = ((may & _MAY_DROP) != 0) & (below_share < params.fade_confidence) & (drop_tail < level)
        sagging = ((may & _MAY_SAG) != 0) & (drop_tail < jnp.sqrt(level))
        before = take(code, 0)
        after = jnp.where(dropped, FORGOTTEN, jnp.where(sagging, DECLINING, before)).astype(code.dtype)
        return code.at[rows].set(after, mode="drop"), need.at[rows].set(False, mode="drop")

    need = flags != 0
    count = jnp.sum(need.astype(jnp.int32))
    code, _ = lax.fori_loop(0, (count + capacity - 1) // capacity, chunk, (code, need))
    return code.reshape(shape)


def _drop_flags(may_drop: Array, may_sag: Array, k: Array, mean: Array, level: Array) -> Array:
    """int8 ``_MAY_DROP | _MAY_SAG`` bits of the pairs whose Poisson tails ``_drop_verdicts`` must take.

    Where ``floor(k) >= mean`` the first tail is at least 1/2 (a Poisson variable's median is below its
    mean + 1/3, Choi 1994), which passes neither test while ``sqrt(level) < 0.45``: those are left out.
    """
    needed = (jnp.floor(k) < mean) | (level >= 0.2)
    bits = may_drop.astype(jnp.int8) * _MAY_DROP + may_sag.astype(jnp.int8) * _MAY_SAG
    return jnp.where(needed, bits, 0).astype(jnp.int8)


def _judge(
    raw: Array, age: Array, b: _Block, kappa: Array, stay_prior: tuple[Array, Array],
    spread_prior: tuple[Array, Array, Array], params: DetectorParams, with_limits: bool, periodogram: str,
    small: bool, window: Array, start: Array, period_every: int,
) -> dict[str, Array]:
    """The time-series features, both tests and the state machine for one block.

    Args:
      raw: ``(B, K, T)`` uint8 the block's ring buffer slots (after this window's write).
      age: ``(T,)`` int32 age of each slot (0 = this window).
      kappa: ``(classes,)`` the population's calibration per class of history.
      stay_prior: theta's prior, two scalars (``window_model_prior``).
      spread_prior: the population's dispersion, three scalars (``dispersion_prior``).
      periodogram, small: how the dominant period is found (``_series_features``).
      window, start, period_every: whose periodogram is taken anew (``_periodogram``).
    """
    length = raw.shape[-1]
    active = b.counts > 0
    alive_before = b.alive - b.silence
    rate = b.total / jnp.maximum(alive_before, 1).astype(jnp.float32)
    # The recent span holds about drop_events expected events at the interest's
    # rate, so the drop test has the same power for rare and frequent interests.
    span = jnp.clip(jnp.ceil(params.drop_events / jnp.maximum(rate, 1e-3)), params.recent_windows, length // 2)
    span = span.astype(jnp.int32)

    recent, weighted = _recent_sums(raw, age, b.alive, span)
    period_index, strength = _periodogram(raw, age, b, window, start, params.min_strength, periodogram, small,
                                          period_every)
    period = _period_from_index(period_index, length)
    # The recent span is the last n windows (of those lived): its positions are consecutive, so the
    # least-squares slope needs only the sums of the counts and of the counts times their positions
    # (exact in float32: counts and positions are integers, the centre a multiple of 1/2).
    n = jnp.clip(jnp.minimum(b.alive, span), 0, length).astype(jnp.float32)
    recent_n = n
    centre = length - (n + 1.0) / 2.0
    spread = n * (n * n - 1.0) / 12.0
    moment = weighted - centre * recent
    trend = jnp.where(n >= 2, moment / jnp.maximum(spread, 1e-6), 0.0)
    # The counts' spread over the history before the current silence (the silence is what is judged).
    own_runs, own_steps = history_dispersion(b.total, b.sum_sq, b.sum_lag, alive_before)
    exposure = jnp.maximum(alive_before - 1, 0)
    # Each interest's indices with the population's beside them (empirical Bayes, ``shrink_dispersion``);
    # the population's are of the interests' own (the next window's prior: ``dispersion_histogram``).
    spread_strength, pull_runs, pull_steps = spread_prior
    silence_dispersion = shrink_dispersion(own_runs, exposure, spread_strength, pull_runs)
    step_spread = shrink_dispersion(own_steps, exposure, spread_strength, pull_steps)
    model = silence_model(b.total, b.alive, b.silence, b.active_windows, b.gaps, b.longest_gap, period, strength,
                          silence_dispersion, pair_kappa(kappa, exposure), params, length, step_spread, stay_prior)
    periodic = model.periodic
    # The model's terms and log P(1) once, for the surprise, the silence test and s* alike (the same values
    # silence_surprise, silence_is_unusual and silence_limit compute, each of which would hold its own betaln).
    silence = jnp.asarray(b.silence, jnp.float32)
    terms = _silence_terms(model, params)
    one = _log_probability(jnp.ones_like(silence), terms)
    threshold = silence_threshold(model, params)
    own_surprise = _surprise(silence, terms, one)
    limit = jnp.where(b.alive > 0, _silence_limit(model, params, terms, one, threshold), 0) if with_limits else None
    surprise = jnp.where(b.alive > 0, own_surprise, 0.0)

    # Drop test: the recent windows against the rate before them.
    # The first event is given (it starts the history) and left out, and the
    # earlier history must be at least as long as the recent span.
    earlier_n = b.alive.astype(jnp.float32) - recent_n
    earlier_rate = jnp.maximum(b.total - recent - 1.0, 0.0) / jnp.maximum(earlier_n, 1.0)
    expected_recent = earlier_rate * recent_n
    enough = (earlier_n >= params.min_history) & (earlier_n >= recent_n)
    # Quasi-Poisson: bursty and periodic counts vary far more than Poisson
    # ones, so both sides are divided by the earlier windows' dispersion (the interest's own: the drop test
    # needs min_history windows, and the population's is for the silence test's short histories).
    dispersion = own_steps
    silent_enough = _is_unusual(silence, own_surprise, threshold, model, params)
    forgotten_now = (b.alive > 0) & silent_enough
    # Declining: half-way to the silence threshold, or (``_drop_verdicts``) a drop at the looser level
    # sqrt(level), so Poisson noise alone rarely flips an interest.
    declining_now = (b.silence > 0) & (surprise >= 0.5 * threshold)

    prev = b.previous
    since_return = jnp.where((prev == FORGOTTEN) & active, 0, b.since_return + 1)
    plain = jnp.where(declining_now, DECLINING, ACTIVE)
    young_new = (prev == NEW) & (b.alive <= params.new_windows)
    young_back = (prev == REACTIVATED) & (since_return < params.new_windows)
    ongoing = jnp.where(
        forgotten_now, FORGOTTEN, jnp.where(young_new, NEW, jnp.where(young_back, REACTIVATED, plain))
    )
    code = jnp.where(
        prev == NONE,
        jnp.where(active, NEW, NONE),
        jnp.where(prev == FORGOTTEN, jnp.where(active, REACTIVATED, FORGOTTEN), ongoing),
    ).astype(jnp.int8)
    # The drop test, decided after the loop over the blocks (``_drop_verdicts``; its Poisson tails are the
    # costly part). Below the definition with confidence: the recent events are unlikely even at fade_share
    # of the earlier rate (a fade still at 40 % is not yet below 25 % by chance alone): forgotten, as an
    # unusual silence would make it (first, over being young or declining). At the looser level: declining,
    # where the state would be active.
    may_drop = (enough & ~periodic & ~active
                & (recent > 0)  # an empty span is a silence: the silence test judges it
                & (prev != NONE) & (prev != FORGOTTEN))
    may_sag = (enough & ~periodic & (trend <= 0) & (recent < params.declining_ratio * expected_recent)
               & (code == ACTIVE))
    drop_flags = _drop_flags(may_drop, may_sag, recent / dispersion, expected_recent / dispersion, window_level(params))
    return {
        "state": code, "since_return": since_return, "rate": rate, "recent": recent,
        "drop_dispersion": dispersion, "drop_flags": drop_flags,
        "expected_recent": expected_recent, "trend": trend, "dispersion": silence_dispersion,
        "surprise": surprise,
        # The period is evidence only where it counts: 0 = none (weak, or fewer than three cycles seen).
        "period": jnp.where(periodic, period, 0.0), "period_strength": strength,
        "period_index": period_index,
        # The interests' own indices and whether they count (4+ windows of history): the population's dispersion.
        "dispersion_own": (own_runs, own_steps, (exposure >= np.float32(CAL_AGES[0])).astype(jnp.float32)),
    } | ({"silence_limit": limit} if with_limits else {})


def detector_update(
    state: DetectorState,
    counts: ArrayLike,
    degree: ArrayLike | None,
    params: DetectorParams,
    *,
    user_block: int | None = None,
    with_limits: bool = True,
    cache_block: int | None = None,
    periodogram: str | None = None,
    period_every: int = 1,
) -> tuple[DetectorState, DetectorOutput]:
    """Close one window for every (user, interest).

    Args:
      state: the detector state after window t-1.
      counts: ``(users, K)`` events of each (user, interest) in window t.
      degree: ``(users,)`` F(u, t) for the per-user F alarm, or None (no alarm).
      params: the knobs (``fgjax.config.DetectorConfig.kernel_params()`` gives the defaults).
      user_block: judge this many users at a time (a ``fori_loop`` over
        blocks) so the temporaries are bounded by a block instead of growing
        with the users; None = all at once. Results do not depend on it.
      cache_block: judge at most this many users at a time, also within a
        user block, so that the temporaries (about 1 KB per (user,
        interest) at T = 64: the ring's features, then the judgment's
        dozens of per-pair values) stay in cache between the passes over
        them; None = cache-sized blocks on a CPU (``CPU_CACHE_CELLS``), no
        limit elsewhere. Results do not depend on it.
      periodogram: how the dominant period is found: ``"dft"`` (a DFT
        product over the ring as it lies, with ``rfft`` where a decision is
        within rounding; the default on a CPU, where it is cheaper) or
        ``"fft"`` (``rfft`` of the lived windows in order; the default
        elsewhere). The same decisions either way (``_series_features``).
      period_every: take each user's periodogram every this many windows
        (at the windows ``w`` with ``w % period_every == user %
        period_every``), keeping it in the state between: the periodogram
        is most of the update's arithmetic (on a CPU about 3/4 of it at
        T = 64), and a period changes slowly. 1 = every window, as before
        (``DetectorState.period_index``). A return from forgotten resets it.
      with_limits: also compute ``silence_limit`` (s*, by bisection in a
        bracket: 2 checks and 3 to 8 steps of surprise evaluations per
        (user, interest), as many steps as its widest bracket needs; a large
        share of the update's arithmetic). The states never need it; without it the output's
        ``silence_limit`` is None, and ``model_silence_limit`` gives it for
        the rows that need it.

    Returns:
      ``(state after window t, DetectorOutput of window t)``.
    """
    counts = jnp.asarray(counts, jnp.float32)
    num_users, num_interests = counts.shape
    length = state.buffer.counts.shape[-1]
    windows = state.buffer.windows
    # The population's calibration from the silences completed before this window, and its priors.
    kappa = calibration_scale(state.calibration, params)
    stay_share = population_stay_share(state.silence_totals)
    stay_prior = window_model_prior(params, stay_share)
    population = population_dispersion(state.dispersion_histogram)
    spread_prior = dispersion_prior(params, population)
    # slot -> windows ago after this window's write: the ring is read as it lies, never rolled
    age = activity_buffer_ages(ActivityBuffer(state.buffer.counts, windows + 1))

    size = num_users if user_block is None else min(user_block, num_users)
    small = size * num_interests < _ROWS  # few rows: one block, never split (see _ROWS)
    if cache_block is None:
        cells = num_interests * length
        cache_block = max(1, CPU_CACHE_CELLS // cells) if jax.default_backend() == "cpu" else size
    size = size if small else min(cache_block, size)
    if periodogram is None:
        periodogram = "dft" if jax.default_backend() == "cpu" else "fft"
    if periodogram not in ("dft", "fft"):
        raise ValueError(f"periodogram must be 'dft' or 'fft', got {periodogram!r}")
    if not isinstance(period_every, int) or period_every < 1:
        raise ValueError(f"period_every must be a positive int, got {period_every!r}")

    def update(carry: _Carry, start, fresh) -> _Carry:
        # One block of users, all of it: the state's update, the judgment and the population's increments, so
        # that each (user, interest)'s state is read from memory once and written once a window (as separate
        # passes over (users, K) arrays, the glue alone cost about 190 ms a window at 100k users x 16 on a
        # 2-core CPU, against 120-400 ms for the judgment). The block is read from the state as it was (the carry is
        # only written: a loop that read its carry too copied every array of it every block); rows not ``fresh``
        # (the last block may overlap the one before) are computed again, the same, and not counted again.
        take = lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=0)  # noqa: E731
        old = jax.tree.map(take, before)
        c = take(counts)
        # This window's slot, written into the ring in place (the same value again on rows not fresh) just
        # before the block is read: the write touches every row's cache line, so it is done while they are
        # read anyway (as a pass of its own over the whole ring, about a tenth of the update, the update took
        # 5 % longer).
        slot = jnp.clip(c, 0, COUNT_MAX).astype(jnp.uint8)[..., None]
        whole = lax.dynamic_update_slice(carry.ring, slot, (start, jnp.int32(0), windows % length))
        ring = take(whole)  # (size, K, T) uint8
        active = c > 0
        was_seen = old.alive > 0
        # A return from forgotten starts the history again: the interest is judged
        # on what it does after the return, and nothing that covers the pause (its
        # rate, its windows in the ring buffer, its gaps) counts any more; only the longest lull it
        # came back from before the pause stays (the pause is no lull), so a usual lull is not unusual.
        back = active & (old.state == FORGOTTEN)
        alive = jnp.where(back, 1, old.alive + (was_seen | active))
        silence = jnp.where(active, 0, old.silence + was_seen)
        came_back = active & (old.silence > 0) & ~back
        longest_gap = jnp.where(came_back, jnp.maximum(old.longest_gap, old.silence), old.longest_gap)
        active_windows = jnp.where(back, 1, old.active_windows + active)
        gaps = jnp.where(back, 0, old.gaps + came_back)
        # Saturated like the ring buffer, so the drop test compares like with like.
        x = jnp.minimum(c, COUNT_MAX)
        total = jnp.where(back, 0.0, old.total) + x
        # Last window's counts (0 before any window, and before a return: it was silent): the slot before this
        # window's, which its write left as it was (T >= 2, as the periodogram needs).
        previous = lax.dynamic_index_in_dim(ring, (windows - 1) % length, axis=-1, keepdims=False)
        previous = jnp.where(windows > 0, previous.astype(jnp.float32), 0.0)
        sum_sq = jnp.where(back, 0.0, old.sum_sq) + x * x
        sum_lag = jnp.where(back, 0.0, old.sum_lag) + x * previous
        last_active = jnp.where(active, state.window, old.last_active)
        # A returned interest's history starts again, and so does its period (a one-window history has none).
        block = _Block(c, alive, silence, total, sum_sq, sum_lag, active_windows, gaps, longest_gap, old.since_return,
                       old.state, jnp.where(back, 0, old.period_index).astype(jnp.int16),
                       jnp.where(back, 0.0, old.period_strength))
        judged = _judge(ring, age, block, kappa, stay_prior, spread_prior, params, with_limits, periodogram, small,
                        state.window, start, period_every)
        pairs = _Pairs(total=total, sum_sq=sum_sq, sum_lag=sum_lag, alive=alive, active_windows=active_windows,
                       gaps=gaps, silence=silence, longest_gap=longest_gap, surprise=judged["surprise"],
                       since_return=judged["since_return"], last_active=last_active, state=judged["state"],
                       period_index=judged["period_index"], period_strength=judged["period_strength"])
        # Every silence the interest came back from, at the surprise it had reached. A return
        # from forgotten is left out: it is a pause (or a fade's trickle), not a loyal silence.
        ended = came_back if fresh is None else came_back & fresh[:, None]
        # This block's part of the population's dispersion: the users whose periodogram turn it is (a rotating
        # 1 / period_every of them, so one process's users count alike on any number of its devices). All of them
        # every window cost the update about a tenth more in one measurement (the histogram's scatter;
        # bench/RESULTS.md), for a median that a quarter of a population estimates as well.
        own_runs, own_steps, counted = judged["dispersion_own"]
        if fresh is not None:
            counted = jnp.where(fresh[:, None], counted, 0.0)
        if period_every > 1:
            rows = counted.shape[0]
            turn = (state.window - start) % period_every + period_every * jnp.arange(-(-rows // period_every))
            inside = (turn < rows).astype(jnp.float32)[:, None]
            turn = jnp.minimum(turn, rows - 1)
            own_runs, own_steps, counted = own_runs[turn], own_steps[turn], counted[turn] * inside
        runs_bin, steps_bin = dispersion_bins(own_runs), dispersion_bins(own_steps)

        put = lambda acc, value: lax.dynamic_update_slice_in_dim(acc, value, start, axis=0)  # noqa: E731
        return _Carry(
            ring=whole,
            pairs=jax.tree.map(put, carry.pairs, pairs),
            outputs={k: put(v, judged[k]) for k, v in carry.outputs.items()},
            calibration=calibration_add(carry.calibration, old.surprise, jnp.maximum(old.alive - old.silence - 1, 0),
                                        ended),
            silence_totals=silence_totals_add(carry.silence_totals, old.silence, ended),
            dispersion_histogram=_histogram_add(carry.dispersion_histogram, runs_bin, steps_bin, counted),
        )

    # Everything the loop carries is made from an input: under shard_map (one process's users of many) it then
    # varies over the users as the blocks written into it do, as a fori_loop's carry must (plain zeros would
    # not, and the loop would not type-check whenever a process judges more than one block).
    vary = lambda a: a + jnp.zeros_like(counts, shape=a.shape, dtype=a.dtype)  # noqa: E731
    output_names = ("rate", "recent", "expected_recent", "trend", "dispersion", "period", "drop_dispersion")
    outputs = {k: jnp.zeros_like(counts) for k in output_names}
    outputs["drop_flags"] = jnp.zeros_like(counts, dtype=jnp.int8)
    if with_limits:
        outputs["silence_limit"] = jnp.zeros_like(counts, dtype=jnp.int32)
    before = _Pairs(*(getattr(state, name) for name in _Pairs._fields))
    carry = _Carry(
        ring=state.buffer.counts,
        pairs=jax.tree.map(lambda a: jnp.zeros_like(counts, shape=a.shape, dtype=a.dtype), before),
        outputs=outputs,
        calibration=vary(jnp.asarray(state.calibration, jnp.float32)),
        silence_totals=vary(jnp.asarray(state.silence_totals, jnp.float32)),
        dispersion_histogram=jnp.zeros_like(counts, shape=(2, DISPERSION_BINS)),
    )
    if size >= num_users:
        carry = update(carry, 0, None)
    else:

        def body(i, carry):
            start = jnp.minimum(i * size, num_users - size)
            return update(carry, start, start + jnp.arange(size, dtype=jnp.int32) >= i * size)

        carry = lax.fori_loop(0, -(-num_users // size), body, carry)
    out = carry.outputs
    pairs = carry.pairs._replace(state=_drop_verdicts(carry.pairs.state, out["recent"], out["expected_recent"],
                                                      out["drop_dispersion"], out["drop_flags"], params,
                                                      window_level(params)))
    buffer = ActivityBuffer(carry.ring, windows + 1)
    alive = pairs.alive

    # Per-user F alarm against the user's own history (before this window).
    started = jnp.any(alive > 0, axis=1)
    if degree is None:
        degree_value = jnp.zeros(started.shape, jnp.float32)
        threshold = jnp.full(started.shape, jnp.inf, jnp.float32)
        moments = state.degree_moments
    else:
        degree_value = jnp.asarray(degree, jnp.float32)
        threshold = adaptive_threshold(state.degree_moments, params.degree_z, fallback=params.degree_fallback)
        moments = running_moments_update(state.degree_moments, degree_value, started)
    alarm = started & (degree_value > threshold)

    new_state = state._replace(
        buffer=buffer, window=state.window + 1, calibration=carry.calibration, degree_moments=moments,
        silence_totals=carry.silence_totals, dispersion_histogram=carry.dispersion_histogram, **pairs._asdict(),
    )
    output = DetectorOutput(
        state=pairs.state,
        silence=pairs.silence,
        silence_limit=out.get("silence_limit"),
        rate=out["rate"],
        recent=out["recent"],
        expected_recent=out["expected_recent"],
        trend=out["trend"],
        dispersion=out["dispersion"],
        period=out["period"],
        period_strength=pairs.period_strength,
        last_active=pairs.last_active,
        kappa=kappa,
        degree_threshold=threshold,
        degree_alarm=alarm,
        stay_share=stay_share,
        population_dispersion=population,
    )
    return new_state, output
