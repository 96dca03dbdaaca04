"""Uncompressed zarr v2 chunks written straight to their files, around TensorStore.

Orbax stores an array without OCDBT as a zarr v2 directory: `.zarray` (JSON metadata) plus one
file per chunk, named by the chunk's grid indices joined by the dimension separator ("0.3.1").
Without a compressor or filters, a chunk file is exactly the chunk's elements in C order, edge
chunks padded to the full chunk shape. TensorStore writes each chunk through the page cache into
freshly allocated memory, which on the 2-core VM ran at about 0.6 GB/s, below a plain copy
(BENCHMARKS.md); these files go out with O_DIRECT from two reused staging buffers instead
(direct_file.py). TensorStore still creates the array and writes `.zarray`; `ChunkFiles.of`
accepts only a store whose metadata says this byte layout, so anything else (compression, OCDBT,
zarr v3, a cast or a non-file kvstore) is written by TensorStore as before.

Files are not synced one by one: the caller makes the whole checkpoint durable in one pass
(atomic.sync_tree) before renaming it into place.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import tensorstore as ts

from most_jax.checkpoint.buffers import Buffers
from most_jax.checkpoint.direct_file import DirectFile, Staging


class ChunkFiles:
    """The chunk files of one zarr v2 array, written from NumPy blocks of whole chunks."""

    def __init__(self, directory: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
                 separator: str):
        self.directory, self.shape, self.chunks, self.dtype, self.separator = directory, shape, chunks, dtype, separator

    @classmethod
    def of(cls, store: ts.TensorStore) -> ChunkFiles | None:
        """The chunk files behind `store` when its chunks are stored as raw C-order bytes in local
        files and `store` addresses the whole array unchanged; else None."""
        spec = store.spec().to_json()
        meta, kvstore = spec.get("metadata", {}), spec.get("kvstore", {})
        raw = (spec.get("driver") == "zarr" and meta.get("zarr_format") == 2 and kvstore.get("driver") == "file"
               and meta.get("compressor") is None and not meta.get("filters") and meta.get("order") == "C"
               and isinstance(meta.get("dtype"), str) and not meta["dtype"].startswith(">"))
        if not raw:
            return None
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        whole = tuple(store.domain.inclusive_min) == (0,) * len(shape) and tuple(store.shape) == shape \
            and "output" not in spec.get("transform", {})
        if not whole:
            return None
        return cls(Path(kvstore["path"]), shape, chunks, np.dtype(store.dtype.numpy_dtype),
                   meta.get("dimension_separator", "."))

    def can_write_slices(self) -> bool:
        """Whether one index of the leading axis covers whole chunks (chunks of depth 1 there)."""
        return len(self.chunks) > 0 and self.chunks[0] == 1

    def write(self, data: np.ndarray, staging: Staging, buffers: Buffers, leading: int | None = None) -> None:
        """Writes every chunk of the array (`leading` None: `data` is the whole array) or of its
        slice `leading` along the first axis (then `can_write_slices` must hold); not synced."""
        prefix = () if leading is None else (leading,)
        expected = self.shape[len(prefix):]
        if data.shape != expected or data.dtype != self.dtype:
            raise ValueError(f"{self.directory}: block {data.dtype} {list(data.shape)} does not match the array's "
                             f"{self.dtype} {list(expected)}")
        chunks = self.chunks[len(prefix):]
        grid = [range(-(-n // c)) for n, c in zip(expected, chunks)]
        for index in itertools.product(*grid):
            region = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks))]
            if region.shape != chunks or not region.flags.c_contiguous:
                padded = buffers.get("chunk", chunks, self.dtype)
                if region.shape != chunks:
                    padded[...] = 0  # beyond the array's edge: never read; zeros, as TensorStore writes
                padded[tuple(slice(0, n) for n in region.shape)] = region
                region = padded
            path = self.directory / self.separator.join(str(i) for i in prefix + index or (0,))
            file = DirectFile(path, staging=staging, sync=False)
            try:
                file.write(region.reshape(-1).view(np.uint8))
            except BaseException:
                file.abort()
                raise
            file.close()
