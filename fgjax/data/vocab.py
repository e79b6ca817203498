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
