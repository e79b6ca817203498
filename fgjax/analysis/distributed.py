"""The forgetting analysis with the users split between devices: several devices of one process
(``analysis.devices``), several ``jax.distributed`` processes (users partitioned by process), or both.

Each process scans its own shards (``fgjax.data.stream.scan_log(shard=...)``); the
shards must be partitioned by user (every user's events in one process's files),
which ``agree_scanned`` checks, exactly, by comparing 64-bit hashes of the user IDs
across processes. It also makes every process step the same windows: the range from
the earliest first window to the latest last one over all processes. One process
alone needs none of this: its layout is its own users.

A window then runs in two halves (``fgjax.analysis.window``):

- ``event_sums``: each process turns its own events into ``(rows, K)`` sums for its
  own users, on its own devices (a local jit, split by user). Every process has
  ``rows`` rows, the most users any process has padded to ``fgjax.shapes.user_rows``
  and rounded up to a multiple of its devices; the padding users never have events.
- ``close_window``: one SPMD program (``shard_map`` under ``jit``) over a mesh of the
  same number of devices of each process, its ``(users, ...)`` arrays sharded along
  the ``users`` axis in process order (process ``i`` holds global rows ``i * rows
  ...``). Each device closes the window for its own rows, as one device would for all (so
  ``detector.user_block`` bounds the temporaries per device); every value is per
  user but the adaptive detector's calibration histogram, whose window increment is
  summed over the devices (``psum``, exact: counts; so are the completed silences' totals
  behind the window model's prior), so every device judges with
  the population's calibration and the states equal one device's (tested). The
  population's dispersion (``kernels.population_dispersion``: a histogram of counts) is
  summed too, exactly. The
  detector takes a user's periodogram in turn by its row on its device (every
  ``period_every`` windows): each device's rows are a multiple of ``period_every``, so
  one process's users keep their turns on any number of its devices; across processes a
  user keeps the turn it has in one process when its row there is the same modulo
  ``period_every`` (not in general: a period may then be refreshed up to
  ``period_every - 1`` windows apart from one process's, and a state may differ).

Each process then reads its own rows of the outputs from its devices' shards (no
transfer) and gathers and writes its own changed rows.

On a CPU, several devices of one process are the CPU split in parts (``jax_num_cpu_devices``,
set by ``fgjax analyze`` from ``analysis.cpu_devices``): each runs its own loop over user
blocks, which keeps both cores of a 2-core machine busier than one loop's operations do.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fgjax import kernels
from fgjax.analysis.window import (
    AnalysisCarry,
    WindowDetail,
    WindowOutput,
    WindowParams,
    WindowSpec,
    close_window,
    cpu_tuned_jit,
    event_sums,
    init_carry,
)
from fgjax.data.stream import ScannedLog
from fgjax.data.vocab import id_hashes
from fgjax.errors import ConfigError, DataError
from fgjax.processes import allgather, allgather_ragged
from fgjax.shapes import user_rows

AXIS = "users"
# User-ID hashes compared per exchange (8 bytes each, gathered by every process): more users take several.
CHECK_CHUNK = 1 << 23
SHARD_RULE = ("with analysis.distributed every user's events must be in the files of one process (process i of N "
              "reads every N-th file of data.path's sorted list, from the i-th): write the shards partitioned by user")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the users are split between processes (``agree_scanned``).

    Attributes:
      users: this process's users.
      rows: rows per process: the most users any process has, padded to ``fgjax.shapes.user_rows`` (the
        padding rows never have events).
      process_users: ``(processes,)`` users of each process.
      first_group, last_group: the epoch-aligned window numbers every process steps.
    """

    users: int
    rows: int
    process_users: tuple[int, ...]
    first_group: int
    last_group: int

    @property
    def processes(self) -> int:
        return len(self.process_users)


def _fingerprint(values: pa.Array) -> np.ndarray:
    """``(2,)`` int64: how many values and one hash of them in order (equal lists give equal fingerprints)."""
    h = id_hashes(values)
    with np.errstate(over="ignore"):
        keyed = h ^ (np.arange(len(h), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    folded = np.bitwise_xor.reduce(id_hashes(pa.array(keyed.view(np.int64))), initial=np.uint64(0))
    return np.array([len(h), np.asarray(folded, np.uint64).view(np.int64)], np.int64)


def check_disjoint_users(users) -> None:
    """Raise ``DataError`` in every process if a user ID is in more than one process's shards.

    ``users``: this process's user IDs (an Arrow array, distinct). Every process calls it. The hashes
    travel in rounds of at most ``CHECK_CHUNK`` in all (split by hash), so memory stays bounded.
    """
    hashes = id_hashes(users)
    total = int(allgather(np.asarray(len(hashes), np.int64)).sum())
    rounds = max(1, -(-total // CHECK_CHUNK))
    bucket = hashes % np.uint64(rounds)
    for r in range(rounds):
        mine = hashes[bucket == r]
        every = allgather_ragged(mine.view(np.int64))
        owner = np.repeat(np.arange(len(every)), [len(e) for e in every])
        found, inverse, counts = np.unique(np.concatenate(every), return_inverse=True, return_counts=True)
        shared = counts[inverse] > 1
        if not shared.any():
            continue
        where = ", ".join(str(p) for p in np.unique(owner[shared]).tolist())
        number = int(np.sum(counts > 1))
        here = np.isin(hashes.view(np.int64), found[counts > 1])
        if here.any():
            example = users[int(np.flatnonzero(here)[0])].as_py()
            raise DataError(f"user {example!r} of this process's shards{f' and {number - 1:,} more' if number > 1 else ''}"
                            f" also appear in another process's shards (processes {where}): {SHARD_RULE}")
        raise DataError(f"{number:,} user(s) appear in the shards of several processes ({where}): {SHARD_RULE}")


def agree_scanned(scanned: ScannedLog) -> Layout:
    """Every process after its pass 1: check that the processes can run as one (the same categories,
    users partitioned by process), align every ``scanned`` to the windows of all, and return the layout.

    Raises ``DataError`` in every process alike.
    """
    categories = scanned.categories.values if scanned.categories is not None else None
    mine = np.concatenate([
        np.array([scanned.num_users, scanned.first_group, scanned.last_group,
                  pa.types.is_integer(scanned.users.type)], np.int64),
        _fingerprint(categories) if categories is not None else np.array([-1, 0], np.int64),
    ])
    every = allgather(mine)
    if len({tuple(row[4:]) for row in every.tolist()}) > 1:
        raise DataError("the processes read different item categories (data.items_path): every process must read "
                        "the same items table")
    if len(set(every[:, 3].tolist())) > 1:
        ints = ", ".join(str(i) for i in np.flatnonzero(every[:, 3]).tolist())
        raise DataError(f"user IDs are integers in the shards of process {ints} and strings in the others': the "
                        "shards must agree (one process would refuse the mix too)")
    check_disjoint_users(scanned.users.values)
    first, last = int(every[:, 1].min()), int(every[:, 2].max())
    scanned.align(first, last)
    users = tuple(int(u) for u in every[:, 0])
    # Rows padded to a shared size (``user_rows``): a rerun whose processes hold a few more users compiles nothing.
    return Layout(users=scanned.num_users, rows=user_rows(max(users)), process_users=users, first_group=first,
                  last_group=last)


def user_mesh(devices_per_process: int = 1) -> Mesh:
    """A 1-D mesh over ``devices_per_process`` devices of each process (its first ones by id; 0 = as many as
    the process with the fewest has), in process order: process ``i``'s rows are the mesh's ``i``-th group.

    Raises ``ConfigError`` when a process has fewer devices than asked for.
    """
    by_process: dict[int, list[jax.Device]] = {}
    for device in sorted(jax.devices(), key=lambda d: d.id):
        by_process.setdefault(device.process_index, []).append(device)
    fewest = min(len(d) for d in by_process.values())
    per = devices_per_process or fewest
    if per > fewest:
        raise ConfigError(f"analysis.devices={devices_per_process}, but a process has only {fewest} "
                          f"{jax.devices()[0].platform} device(s) (0 = all of them)")
    return Mesh(np.array([d for p in range(jax.process_count()) for d in by_process[p][:per]]), (AXIS,))


def _specs(make: Callable[[int], Any]) -> Any:
    """Partition specs of the pytree ``make(users)`` builds: leaves whose first axis is the users' along
    ``users``, the rest replicated (found by building it for two user counts)."""
    a, b = jax.eval_shape(lambda: make(2)), jax.eval_shape(lambda: make(3))
    return jax.tree.map(lambda x, y: P(AXIS) if x.shape[:1] != y.shape[:1] else P(), a, b)


def _close_shard(carry: AnalysisCarry, added: jax.Array, counts: jax.Array, params: WindowParams, *,
                 spec: WindowSpec) -> tuple[AnalysisCarry, WindowOutput, WindowDetail]:
    """``close_window`` on one process's rows, with the population's increments (the calibration histogram,
    the completed silences' totals) summed over all."""
    new, out, detail = close_window(carry, added, counts, params, spec)
    if spec.detector == "adaptive":
        summed = {}
        for name in ("calibration", "silence_totals"):
            before = getattr(carry.detector, name)
            summed[name] = before + jax.lax.psum(getattr(new.detector, name) - before, AXIS)
        # This window's population dispersion replaces the last (not an increment): summed as it is.
        summed["dispersion_histogram"] = jax.lax.psum(new.detector.dispersion_histogram, AXIS)
        new = new._replace(detector=new.detector._replace(**summed))
    return new, out, detail


class ShardedStep:
    """The window step over the users split between devices, for ``fgjax.analysis.run.run_windows(step=...)``:
    one or several devices of each of one or several processes (``user_mesh``).

    ``step(carry, events, params, spec)`` takes this process's padded window events (user indices into its
    own users) and the global carry, and returns the new global carry with this process's rows of the
    output, of the detail (``changed`` counted on them) and of the detector (``local``).

    Attributes:
      rows: this process's rows: ``layout.rows`` (the most users any process has, padded), rounded up so that
        each of its devices has a multiple of ``spec.period_every`` (the padding users never have events).
      num_users: the rows of every process (``rows`` x processes).
    """

    def __init__(self, spec: WindowSpec, params: WindowParams, layout: Layout, mesh: Mesh | None = None):
        self.spec, self.layout = spec, layout
        self.mesh = mesh or user_mesh()
        per = self.mesh.size // layout.processes
        # Each device's rows a multiple of period_every: the detector takes a user's periodogram in turn by its
        # row on the device (kernels.detector_update), so a process's rows keep their turns on any of its devices.
        device_rows = -(-layout.rows // (per * spec.period_every)) * spec.period_every
        self.rows = device_rows * per
        self.num_users = self.rows * layout.processes
        k = spec.num_interests
        self.user_sharding = NamedSharding(self.mesh, P(AXIS))
        mine = [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        self.local_sharding = NamedSharding(Mesh(np.array(mine), (AXIS,)), P(AXIS))
        replicated = NamedSharding(self.mesh, P())
        carry_specs = _specs(lambda n: init_carry(spec, n))
        self.carry_sharding = jax.tree.map(lambda p: NamedSharding(self.mesh, p), carry_specs)

        def outputs(n: int):
            carry = jax.eval_shape(lambda: init_carry(spec, n))
            sums = jax.ShapeDtypeStruct((n, k), jnp.float32)
            return jax.eval_shape(lambda c, a, b: close_window(c, a, b, params, spec), carry, sums, sums)

        carry_out, out_specs, detail_specs = _specs(outputs)
        # Replicated whatever their shape: the knobs are scalars, a learned verdict's vectors are (features,).
        self._params = jax.tree.map(
            lambda v: jax.make_array_from_callback(np.shape(v), replicated, lambda i, v=v: np.asarray(v)[i]), params)
        # This process's sums on its own devices, split by user as the step reads them (no transfer between
        # processes: each scatters its own events).
        self._sums = cpu_tuned_jit(functools.partial(event_sums, num_users=self.rows, num_interests=k),
                             out_shardings=(self.local_sharding, self.local_sharding))
        body = jax.shard_map(functools.partial(_close_shard, spec=spec), mesh=self.mesh,
                             in_specs=(carry_specs, P(AXIS), P(AXIS), jax.tree.map(lambda _: P(), params)),
                             out_specs=(carry_out, out_specs, detail_specs))

        def sharded_window_step(carry, added, counts, params):  # the name XLA's compile events report
            return body(carry, added, counts, params)

        self._step = cpu_tuned_jit(sharded_window_step, donate_argnums=(0,))

    def init_carry(self) -> AnalysisCarry:
        """The global state before any window, each process's rows on its devices."""

        def sharded_init_carry():
            return init_carry(self.spec, self.num_users)

        return jax.jit(sharded_init_carry, out_shardings=self.carry_sharding)()

    def _shards(self, x: jax.Array) -> list[jax.Array]:
        at = {s.device: s.data for s in x.addressable_shards}
        return [at[d] for d in self.local_sharding.mesh.devices.flat]

    def _global(self, x: jax.Array) -> jax.Array:
        return jax.make_array_from_single_device_arrays((self.num_users, *x.shape[1:]), self.user_sharding,
                                                        self._shards(x))

    def local(self, tree: Any) -> Any:
        """This process's part of each array of ``tree``, on its devices alone (no copy): its own rows of an
        array split by user, a replicated one whole."""

        replicated = NamedSharding(self.local_sharding.mesh, P())

        def part(x: jax.Array) -> jax.Array:
            if isinstance(x.sharding, NamedSharding) and x.sharding.spec[:1] == (AXIS,):
                return jax.make_array_from_single_device_arrays((self.rows, *x.shape[1:]), self.local_sharding,
                                                                self._shards(x))
            return jax.make_array_from_single_device_arrays(x.shape, replicated, self._shards(x))

        return jax.tree.map(part, tree)

    def __call__(self, carry: AnalysisCarry, events: kernels.WindowEvents, params: WindowParams, spec: WindowSpec
                 ) -> tuple[AnalysisCarry, WindowOutput, WindowDetail, kernels.DetectorState]:
        added, counts = self._sums(events, params)
        carry, out, detail = self._step(carry, self._global(added), self._global(counts), self._params)
        return carry, self.local(out), self.local(detail), self.local(carry.detector)
