"""``jax.distributed`` processes: start them, split the shards between them, exchange small host arrays.

The low layer both multi-process jobs share (training: ``fgjax.training.distributed``;
the analysis: ``fgjax.analysis.distributed``), so ``fgjax analyze`` starts several
processes without importing any training code.

One process per accelerator (or per machine on CPUs), started with the same command and
these variables (``jax.distributed`` also reads SLURM / Open MPI environments when they
are left out)::

    FGJAX_COORDINATOR=host0:12345 FGJAX_NUM_PROCESSES=4 FGJAX_PROCESS_ID=$i fgjax ...

``initialize`` must come before any other JAX call of the process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from fgjax.errors import FgjaxError


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, cpu_collectives: str = "gloo") -> None:
    """``jax.distributed.initialize`` from arguments or ``FGJAX_COORDINATOR`` / ``FGJAX_NUM_PROCESSES`` /
    ``FGJAX_PROCESS_ID``; on CPU, cross-process collectives use ``cpu_collectives`` (gloo).
    Does nothing when ``jax.distributed`` is already initialized."""
    if jax.distributed.is_initialized():
        return
    coordinator = coordinator or os.environ.get("FGJAX_COORDINATOR")
    if num_processes is None and "FGJAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["FGJAX_NUM_PROCESSES"])
    if process_id is None and "FGJAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["FGJAX_PROCESS_ID"])
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def process_files(files: Sequence[str | Path], process_index: int | None = None,
                  process_count: int | None = None) -> list[str | Path]:
    """This process's shards: every ``process_count``-th file of the sorted list, from ``process_index``."""
    i = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    return sorted(files, key=str)[i::n]


def allgather(x: np.ndarray) -> np.ndarray:
    """``(processes, *x.shape)``: every process's ``x`` (same shape and dtype everywhere), in process order.

    64-bit integers travel as pairs of 32-bit words (JAX runs without x64), so they come back exact.
    """
    from jax.experimental import multihost_utils

    x = np.ascontiguousarray(x).reshape(np.shape(x))  # (ascontiguousarray makes a scalar 1-D)
    if x.dtype.itemsize == 8 and x.dtype.kind in "iu":
        words = multihost_utils.process_allgather(x.reshape(-1).view(np.uint32))
        return np.asarray(words).reshape(-1, *x.shape, 2).view(x.dtype)[..., 0]
    return np.asarray(multihost_utils.process_allgather(x))


def allgather_ragged(x: np.ndarray) -> list[np.ndarray]:
    """Every process's 1-D ``x`` (lengths may differ), in process order."""
    lengths = allgather(np.asarray(len(x), np.int64))
    padded = np.zeros(int(lengths.max(initial=0)), x.dtype)
    padded[:len(x)] = x
    every = allgather(padded)
    return [every[i, :n] for i, n in enumerate(lengths.tolist())]


class ProcessFailed(FgjaxError):
    """Another process of the job stopped at a point where every process checks in (its own output says why)."""


def agree(error: BaseException | None, what: str) -> None:
    """Every process calls this at the same point: each learns whether any failed ``what``.

    Raises ``error`` in the process that had it, ``ProcessFailed`` naming the failed processes in the
    others; returns when every process succeeded. Without it, one process's error leaves the others
    waiting in their next collective.
    """
    failed = np.flatnonzero(allgather(np.asarray(error is not None, np.int32)))
    if error is not None:
        raise error
    if len(failed):
        names = ", ".join(str(i) for i in failed.tolist())
        raise ProcessFailed(f"process {names} of {jax.process_count()} failed {what} (its output says why); "
                            "this process stops too")
