"""User-level differentially private training (``train.privacy``): DP-SGD over users.

One user may have many examples, so the unit of privacy is the user: a step

1. samples users by Poisson sampling: each of the ``N`` users with training
   examples joins independently with rate ``q = users_per_step / N``
   (``UserSampler``; a pure function of ``(seed, step)``, so a resumed run
   draws exactly what an uninterrupted one would);
2. draws ``examples_per_user`` of each sampled user's examples (uniformly,
   with replacement) and takes the gradient of the model's mean loss over
   them, one gradient per user, vectorized with ``jax.vmap``;
3. clips each user's gradient to L2 norm ``clip_norm`` (over every
   parameter), sums, adds ``N(0, (noise_multiplier * clip_norm)^2)`` to every
   coordinate and divides by the expected number of users ``q * N``
   (``optax.contrib.differentially_private_aggregate`` does the clipping and
   the noise; ``private_gradient``);
4. hands the result to the model's usual optimizer (post-processing).

The accountant (dp-accounting's RDP or PLD accountant) sees exactly this
mechanism: ``steps`` compositions of a Poisson-subsampled Gaussian with rate
``q`` under add/remove-one-user neighbouring datasets. A step holds at most
``capacity`` users (the rest padded and masked, so the step compiles once);
``capacity`` is the ``1 - OVERFLOW_PROBABILITY`` quantile of the binomial
count, and a step that draws more (probability at most ``OVERFLOW_PROBABILITY``
per step) drops the surplus, a deviation from the accounted mechanism that
small. ``calibrate_noise`` finds the smallest noise multiplier whose planned
steps spend at most ``target_epsilon`` at ``delta``.

What is covered: the model's parameters (every checkpointed step, the served
params). Not covered: the serving state saved beside them (each user's seen
items, popularity, forgetting analysis, histories: what serving needs) and
the training loss and validation metrics logged per epoch. Under privacy the
loop serves the last step's params (no best-epoch selection, no early
stopping: both would choose by data outside the accountant).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from fgjax.config import PrivacyConfig
from fgjax.errors import ConfigError, FgjaxWarning

#: Chance per step that Poisson sampling draws more users than a step holds (the surplus is then dropped).
OVERFLOW_PROBABILITY = 1e-12


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError:  # an optional dependency: only private training needs it
        raise ConfigError("train.privacy.enabled needs the dp-accounting package: pip install 'fgjax[privacy]'") \
            from None
    return dp_accounting


def dp_event(sampling_rate: float, noise_multiplier: float, steps: int):
    """The mechanism of ``steps`` private steps as a ``dp_accounting.DpEvent``."""
    dpa = _dp_accounting()
    step = dpa.PoissonSampledDpEvent(sampling_rate, dpa.GaussianDpEvent(noise_multiplier))
    return dpa.SelfComposedDpEvent(step, steps)


def make_accountant(name: str):
    """A fresh dp-accounting accountant: ``rdp`` (``RdpAccountant``) or ``pld`` (``PLDAccountant``), both with
    add/remove-one neighbouring datasets (here: one user and all of their examples)."""
    dpa = _dp_accounting()
    if name == "rdp":
        return dpa.rdp.RdpAccountant()
    if name == "pld":
        return dpa.pld.PLDAccountant()
    raise ConfigError(f"train.privacy.accountant: expected rdp or pld, got {name!r}")


def epsilon_spent(accountant: str, sampling_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` steps (0 before the first; inf without noise)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    with _quiet_absl():
        return float(make_accountant(accountant).compose(dp_event(sampling_rate, noise_multiplier, steps))
                     .get_epsilon(delta))


# Pure in its arguments and about a second per call: a resumed or re-planned run asks the same question again.
@functools.lru_cache(maxsize=64)
def calibrate_noise(accountant: str, target_epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to 1e-4) whose ``steps`` steps spend at most ``target_epsilon`` at ``delta``
    (``dp_accounting.mechanism_calibration``); 0 for an infinite target."""
    if math.isinf(target_epsilon) or steps <= 0:
        return 0.0
    calibration = _dp_accounting().mechanism_calibration

    def calibrate(name: str, bracket) -> float:
        with _quiet_absl():
            return float(calibration.calibrate_dp_mechanism(
                lambda: make_accountant(name), lambda sigma: dp_event(sampling_rate, sigma, steps),
                target_epsilon, delta, bracket_interval=bracket, tol=1e-4))

    # The search starts above 0: without noise epsilon is infinite, which the root finder cannot bracket.
    sigma = calibrate("rdp", calibration.LowerEndpointAndGuess(1e-3, 1.0))
    if accountant == "rdp":
        return sigma
    # PLD is tighter than RDP (its sigma is at most RDP's), and its tables grow without bound as sigma -> 0:
    # search below RDP's answer only, from a quarter of it.
    low = sigma / 4
    with _quiet_absl():
        low_epsilon = epsilon_spent("pld", sampling_rate, low, steps, delta)
    if low_epsilon <= target_epsilon:
        return low
    return calibrate("pld", calibration.ExplicitBracketInterval(low, sigma))


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs a warning through absl for every RDP order it drops (harmless): keep them off the
    console while calibrating."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - absl comes with dp-accounting
        yield
        return
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """A private run's mechanism, fixed before its first step.

    Attributes:
      users: ``N``, the users with training examples (the population sampled from).
      sampling_rate: ``q``, each user's chance to be in a step.
      expected_users: ``q * N``, what the noised sum is divided by.
      capacity: users a step holds (padded, masked); a multiple of the devices.
      steps: the planned steps the noise is calibrated for.
      noise_multiplier: ``sigma``; the noise std on the sum is ``sigma * clip_norm``.
    """

    users: int
    sampling_rate: float
    expected_users: float
    capacity: int
    examples_per_user: int
    steps: int
    noise_multiplier: float
    clip_norm: float
    delta: float
    target_epsilon: float
    accountant: str

    def epsilon(self, steps: int) -> float:
        """Epsilon spent after ``steps`` steps."""
        return epsilon_spent(self.accountant, self.sampling_rate, self.noise_multiplier, steps, self.delta)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_privacy(privacy: PrivacyConfig, users: int, steps: int, *, num_devices: int = 1) -> PrivacyPlan:
    """The plan for ``steps`` steps over ``users`` users, the noise calibrated to ``privacy.target_epsilon``."""
    if users < 1:
        raise ConfigError("train.privacy: no user has a training example")
    if privacy.delta >= 1.0 / users:
        # delta is the chance the guarantee fails; at 1 / users or more, one whole user could leak outright.
        warnings.warn(f"train.privacy.delta={privacy.delta:g} is not below 1 / users = {1.0 / users:.3g}: the "
                      "guarantee allows one user's data to leak with that chance; choose a smaller delta",
                      FgjaxWarning, stacklevel=2)
    rate = min(1.0, privacy.users_per_step / users)
    capacity = min(users, int(stats.binom.isf(OVERFLOW_PROBABILITY, users, rate)) + 1)
    capacity = -(-capacity // num_devices) * num_devices
    noise = calibrate_noise(privacy.accountant, privacy.target_epsilon, privacy.delta, rate, steps)
    return PrivacyPlan(users, rate, rate * users, capacity, privacy.examples_per_user, steps, noise,
                       privacy.clip_norm, privacy.delta, privacy.target_epsilon, privacy.accountant)


class UserSampler:
    """Each step's users (Poisson sampling) and their examples, as indices into the examples.

    Args:
      owners: ``(examples,)`` int, the user of each example.
      sampling_rate, capacity, examples_per_user: from the ``PrivacyPlan``.
      seed: with the step, all the randomness of ``indices``.
    """

    def __init__(self, owners: np.ndarray, *, sampling_rate: float, capacity: int, examples_per_user: int, seed: int):
        owners = np.asarray(owners)
        self._order = np.argsort(owners, kind="stable")  # examples grouped by user
        _, self._starts, self._counts = np.unique(owners[self._order], return_index=True, return_counts=True)
        self.sampling_rate, self.capacity, self.examples_per_user, self.seed = (
            sampling_rate, capacity, examples_per_user, seed)

    @property
    def num_users(self) -> int:
        """Users with at least one example."""
        return len(self._counts)

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(capacity, examples_per_user)`` int64 example indices and ``(capacity,)`` float32 mask (1 = a sampled
        user; padding rows repeat example 0 and are masked)."""
        # Three words: never the stream of fgjax.training.loop.epoch_order's [seed, epoch].
        rng = np.random.default_rng([self.seed, step, 1])
        # Poisson sampling = a binomial count, then that many users uniformly without replacement.
        count = min(int(rng.binomial(self.num_users, self.sampling_rate)), self.capacity)
        chosen = rng.choice(self.num_users, size=count, replace=False)
        picks = rng.integers(0, self._counts[chosen][:, None], size=(count, self.examples_per_user))
        idx = np.zeros((self.capacity, self.examples_per_user), np.int64)
        idx[:count] = self._order[self._starts[chosen][:, None] + picks]
        mask = np.zeros(self.capacity, np.float32)
        mask[:count] = 1.0
        return idx, mask


def private_gradient(
    loss_fn: Callable[[Any, Mapping[str, jax.Array], jax.Array], jax.Array],
    params: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_users: float,
) -> tuple[jax.Array, Any]:
    """The mean sampled users' loss and the privatized gradient of one step.

    Args:
      loss_fn: ``(params, user_batch, key) -> ()``, the loss over one user's examples (each field
        ``(examples_per_user, ...)``).
      batch: the model's fields, each ``(capacity, examples_per_user, ...)``, and ``mask`` ``(capacity,)``.
      key: this step's key (split into the noise key and one key per user).

    Returns:
      ``(loss, grads)``: the masked mean of the users' losses (not privatized: for logs) and
      ``(sum_u clip(g_u) + N(0, (noise_multiplier * clip_norm)^2 I)) / expected_users``.
    """
    mask = batch["mask"]
    fields = {name: x for name, x in batch.items() if name != "mask"}
    capacity = mask.shape[0]
    noise_key, user_key = jax.random.split(key)
    losses, grads = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0, 0))(
        params, fields, jax.random.split(user_key, capacity))
    grads = jax.tree.map(lambda g: g * mask.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads)
    aggregate = optax.contrib.differentially_private_aggregate(clip_norm, noise_multiplier, key=noise_key)
    noised, _ = aggregate.update(grads, aggregate.init(params))
    # optax divides by the rows it was given (capacity, padding included); Poisson sampling's estimate
    # divides by the expected count instead (never the realized one, which would reveal it).
    noised = jax.tree.map(lambda g: g * (capacity / expected_users), noised)
    loss = jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, noised
