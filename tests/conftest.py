"""Shared test fixtures: small structured event logs built in memory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest

# Compiled executables are shared through JAX's persistent cache: between the
# test workers and with the subprocesses tests start (CLI runs, a second
# process, 8 CPU devices), which inherit these variables. Set before jax is
# imported anywhere; the cache is keyed by the program, flags and versions.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"fgjax-tests-jax-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite runs on the CPU (multi-device tests ask for host devices): naming the platform spares every
# worker and subprocess the probe for accelerator plugins (about 0.4 s a start on this machine).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Most of a cold run is XLA compiling small CPU programs; the tests check values, not speed, so the
# compiler skips LLVM's expensive passes (about a quarter off each compilation; IEEE semantics unchanged)
# and emits fusions with XLA's loop emitters instead of the MLIR fusion emitters (about a third less
# compile time again on the analysis and sequence-model tests). An XLA that does not know a flag aborts
# the process, so the optional flags are tried once in a subprocess; workers and subprocesses inherit
# the result through the environment.
_FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_OPTIONAL_FAST_COMPILE_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)


def _fast_compile_xla_flags(current: str) -> str:
    flags = [current, *_FAST_COMPILE_FLAGS]
    probe = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"],
        env=dict(os.environ, XLA_FLAGS=" ".join([*flags, *_OPTIONAL_FAST_COMPILE_FLAGS]), JAX_PLATFORMS="cpu"),
        capture_output=True,
        timeout=120,
    )
    if probe.returncode == 0:
        flags.extend(_OPTIONAL_FAST_COMPILE_FLAGS)
    return " ".join(flags).strip()


if "FGJAX_TESTS_XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = os.environ["FGJAX_TESTS_XLA_FLAGS"] = _fast_compile_xla_flags(os.environ.get("XLA_FLAGS", ""))


def pytest_configure(config):
    """One CPU device in pytest's processes, whatever ran first: `fgjax analyze` run in process (tests of the
    CLI) would otherwise split the CPU (analysis.cpu_devices) for every test after it in that worker. A hook,
    not an import-time call: subprocesses that import this module (for make_log) choose their own devices."""
    import jax

    jax.config.update("jax_num_cpu_devices", 1)


def make_log(num_users: int = 64, num_items: int = 40, num_categories: int = 4, events_per_user: int = 30, seed: int = 0):
    """An ``EventLog`` where each user sticks to one category (so a model can learn it).

    User u prefers category ``u % num_categories``; items are assigned to
    categories round-robin; timestamps spread over 20 days.
    """
    from fgjax.data.reader import EventLog, ReadReport
    from fgjax.data.vocab import Vocabulary

    rng = np.random.default_rng(seed)
    item_category = (np.arange(num_items) % num_categories).astype(np.int32)
    user = np.repeat(np.arange(num_users, dtype=np.int32), events_per_user)
    pref = user % num_categories
    per_cat = num_items // num_categories
    item = (pref + num_categories * rng.integers(0, per_cat, len(user))).astype(np.int32)
    ts = 1.7e9 + rng.uniform(0, 20 * 86400, len(user))
    order = np.lexsort((item, user, ts))
    n = len(user)
    report = ReadReport(rows_read=n, rows_used=n, rejected={}, rejects_path=None, files=0)
    return EventLog(
        user=user[order],
        item=item[order],
        timestamp=ts[order],
        weight=np.ones(n, np.float32),
        users=Vocabulary(pa.array(np.arange(num_users, dtype=np.int64) + 1000)),
        items=Vocabulary(pa.array(np.arange(num_items, dtype=np.int64) + 5000)),
        item_category=item_category,
        categories=Vocabulary(pa.array([f"c{k}" for k in range(num_categories)])),
        report=report,
    )


@pytest.fixture
def small_log():
    return make_log()
