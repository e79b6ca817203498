"""Raw-ID <-> dense-index vocabularies that travel with checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fgjax.errors import DataError


class Vocabulary:
    """A sorted set of raw IDs (int64 or string); index i <-> ``values[i]``.

    Sorting makes the mapping independent of shard order, so two readers of the
    same data agree on every index.
    """

    def __init__(self, values: pa.Array):
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        self.values: pa.Array = values

    @classmethod
    def from_values(cls, values: pa.Array | pa.ChunkedArray) -> "Vocabulary":
        """Build from raw IDs (duplicates and nulls allowed; nulls are dropped)."""
        uniq = pc.unique(pc.drop_null(values))
        if isinstance(uniq, pa.ChunkedArray):
            uniq = uniq.combine_chunks()
        return cls(pc.take(uniq, pc.sort_indices(uniq)))

    def __len__(self) -> int:
        return len(self.values)

    @property
    def type(self) -> pa.DataType:
        return self.values.type

    def encode(self, raw) -> np.ndarray:
        """Raw IDs -> int32 indices, shape of ``raw``; -1 where unknown."""
        arr = raw if isinstance(raw, (pa.Array, pa.ChunkedArray)) else pa.array(raw)
        if arr.type != self.values.type:
            try:
                arr = arr.cast(self.values.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(
                    f"IDs of type {arr.type} cannot be matched against a vocabulary of {self.values.type}"
                ) from None
        idx = pc.index_in(arr, value_set=self.values)
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int32)

    def decode(self, indices) -> pa.Array:
        """int indices -> raw IDs (an Arrow array)."""
        return pc.take(self.values, pa.array(np.asarray(indices, dtype=np.int64).ravel()))

    def save(self, path: str | Path) -> None:
        pq.write_table(pa.table({"id": self.values}), str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"vocabulary file '{path}' does not exist")
        return cls(pq.read_table(str(path)).column("id"))


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit moves every output bit."""
    h = np.asarray(h, np.uint64)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def id_hashes(values: pa.Array) -> np.ndarray:
    """``(n,)`` uint64 hash of each raw ID (int64 or string), the same in every process and run: IDs are
    compared across processes by it (a chance collision is about ``n**2 / 2**64``)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type):
        return _mix(values.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64))
    arr = values.cast(pa.large_binary())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    # A polynomial hash of the bytes (each byte + 1, so zeros count) by a vectorized sum per ID.
    position = np.arange(len(raw)) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(int(lengths.max(initial=0)), 0x100000001B3, np.uint64))
        terms = (raw.astype(np.uint64) + np.uint64(1)) * powers[position]
    sums = np.zeros(n, np.uint64)
    filled = lengths > 0
    if filled.any():
        sums[filled] = np.add.reduceat(terms, starts[filled])
    return _mix(sums ^ _mix(lengths.astype(np.uint64)))
