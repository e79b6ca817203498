"""Multi-process data-parallel training with ``jax.distributed``.

Each process reads its own shards (``process_files``), builds its local
share of every global batch, and ``global_batch`` assembles the per-process
arrays into one ``jax.Array`` sharded along the ``data`` axis of a mesh over
all processes' devices; the jitted step of ``fgjax.training.loop`` (``train.distributed: true``) is
the same as on one machine, and XLA's all-reduce of the gradients crosses
processes (NCCL on GPUs, gloo on CPUs).

Launch (one command per process, e.g. one per GPU host; ``jax.distributed``
also reads SLURM / Open MPI environments itself when the arguments are left out)::

    FGJAX_COORDINATOR=host0:12345 FGJAX_NUM_PROCESSES=4 FGJAX_PROCESS_ID=$i python train_script.py

with ``initialize()`` called before any other JAX call in ``train_script.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


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


def global_batch(mesh: jax.sharding.Mesh, *local: np.ndarray, axis: str = "data") -> list[jax.Array]:
    """Per-process ``(local_batch, ...)`` arrays -> global arrays sharded along ``axis``.

    The global batch is the processes' local batches concatenated in process order.
    """
    sharding = NamedSharding(mesh, P(axis))
    return [jax.make_array_from_process_local_data(sharding, np.asarray(x)) for x in local]
