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

with ``initialize()`` called before any other JAX call in ``train_script.py``
(``initialize`` and ``process_files`` live in ``fgjax.processes``, which the analysis shares).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fgjax.processes import initialize, process_files

__all__ = ["global_batch", "initialize", "process_files"]


def global_batch(mesh: jax.sharding.Mesh, *local: np.ndarray, axis: str = "data") -> list[jax.Array]:
    """Per-process ``(local_batch, ...)`` arrays -> global arrays sharded along ``axis``.

    The global batch is the processes' local batches concatenated in process order.
    """
    sharding = NamedSharding(mesh, P(axis))
    return [jax.make_array_from_process_local_data(sharding, np.asarray(x)) for x in local]
