"""Orbax leaves written piece by piece: a checkpoint larger than memory, saved through Orbax.

A `StreamedArray` announces its shape and dtype and produces its data on demand: a stacked leaf
([L, ...], one slice per layer) one leading-axis slice at a time, any other leaf whole. The
`StreamedArrayHandler` is an Orbax type handler that writes such leaves exactly as Orbax's own
NumPy handler writes an array (same TensorStore spec, same tree metadata, value type
`np.ndarray`), except that each stacked leaf is stored in chunks of one layer (or less) and
written slice by slice, layer-major over all stacked leaves, each slice written while the next is
produced (so a producer may reuse a buffer every second read, not every read).

Two layouts. Uncompressed (import-hf's default): one zarr directory per array, no OCDBT; TensorStore
creates each array and its metadata, and the chunks go straight to their files around the page
cache (zarr_chunks.py), unsynced until save_params syncs the whole checkpoint once. Compressed
(Orbax's defaults: zstd level 1 in one OCDBT database): TensorStore writes every slice, at most one
copied slice still committing while the next is produced. Everything else (the temporary
directory renamed on commit, `_METADATA`, OCDBT merging) is Orbax's, so `orbax.checkpoint`
restores either like any checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from orbax.checkpoint import type_handlers

from most_jax.checkpoint.buffers import Buffers
from most_jax.checkpoint.direct_file import Staging
from most_jax.checkpoint.zarr_chunks import ChunkFiles

# Largest stored chunk: small enough that TensorStore compresses several at once and a reader of
# one layer (or one device's shard) decodes little beyond what it asked for.
CHUNK_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class StreamedArray:
    """An array of `shape` and `dtype` whose data comes from `read`: `read(i)` is slice i along the
    leading (layer) axis when `stacked`, else `read(0)` is the whole array. The array returned may be
    a buffer that `read` reuses, but not before the second next `read` of any leaf: a consumer may
    keep one array while the next is produced, and no more (StreamedArrayHandler writes one slice
    while the next is read; hf_import.materialize copies each). `write_shape` is the block the
    storage chunks must tile (e.g. one device's shard under the target sharding); by
    default one layer of a stacked leaf, the whole of any other."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[int], np.ndarray]
    stacked: bool
    write_shape: tuple[int, ...] | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def block_shape(self) -> tuple[int, ...]:
        block = self.write_shape or self.shape
        return ((1,) + tuple(block[1:])) if self.stacked else tuple(block)


class StreamedArrayHandler(type_handlers.NumpyHandler):
    """Writes StreamedArray leaves; reads back as NumPy / JAX arrays through Orbax's own handlers."""

    def __init__(self, progress: Callable[[str], None] | None = None):
        super().__init__(deepcopy_host_arrays=False)
        self._progress = progress

    async def _background_serialize(self, values: Sequence[StreamedArray], infos, args=None):
        opened = []
        for value, info, arg in zip(values, infos, args):
            await info.await_path_creation()
            spec = type_handlers.get_json_tspec_write(
                info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=value.shape,
                local_shape=value.block_shape(), dtype=value.dtype, process_index=jax.process_index(), arg=arg)
            opened.append(await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context))
        direct = [_chunk_files(value, t) for value, t in zip(values, opened)]
        buffers = Buffers()
        pending = None
        # Raw chunk files are written by one helper thread (the disk works while the next slice is
        # read and transposed); a slice's job must end before its buffer can come back from a read.
        writer = concurrent.futures.ThreadPoolExecutor(1)
        jobs: list[concurrent.futures.Future] = []

        def produce(value: StreamedArray, i: int) -> np.ndarray:
            while len(jobs) > 1:
                jobs.pop(0).result()
            return value.read(i)

        async def write(k: int, index: int | None, data: np.ndarray, what: str):
            nonlocal pending
            target = opened[k] if index is None else opened[k][index]
            if data.shape != tuple(target.shape) or data.dtype != np.dtype(target.dtype.numpy_dtype):
                raise ValueError(f"{what}: produced {data.dtype} {list(data.shape)}, announced "
                                 f"{target.dtype.numpy_dtype} {list(target.shape)}")
            if direct[k] is not None:
                jobs.append(writer.submit(direct[k].write, data, staging, buffers, index))
                return
            future = target.write(data)  # copied before `copy` resolves: the producer may reuse `data`
            await future.copy
            if pending is not None:
                await pending
            pending = future.commit

        with Staging() as staging:
            try:
                for k, (value, info) in enumerate(zip(values, infos)):
                    if not value.stacked:
                        await write(k, None, produce(value, 0), info.name)
                depth = max((v.shape[0] for v in values if v.stacked), default=0)
                for i in range(depth):
                    for k, (value, info) in enumerate(zip(values, infos)):
                        if value.stacked and i < value.shape[0]:
                            await write(k, i, produce(value, i), f"{info.name}[{i}]")
                    if self._progress is not None:
                        self._progress(f"wrote layer slice {i + 1}/{depth}")
            finally:
                writer.shutdown(wait=True)  # nothing may still write when the directory is renamed or removed
            for job in jobs:
                job.result()
        if pending is not None:
            await pending


def _chunk_files(value: StreamedArray, store: ts.TensorStore) -> ChunkFiles | None:
    """Where `value` may be written as raw chunk files around TensorStore (zarr_chunks.py)."""
    files = ChunkFiles.of(store)
    if files is None or (value.stacked and not files.can_write_slices()):
        return None
    return files


def pytree_handler(progress: Callable[[str], None] | None = None, compress: bool = True) -> ocp.PyTreeCheckpointHandler:
    """Orbax's PyTree handler with the default array handlers plus StreamedArray; `compress`: store
    arrays zstd-compressed in one OCDBT database (Orbax's defaults), else uncompressed, one zarr
    directory per array (so StreamedArrays go out as raw chunk files); restoring reads either."""
    handlers = [(t, type_handlers.get_type_handler(t)) for t in (int, float, np.number, np.ndarray, jax.Array)]
    registry = type_handlers.create_type_handler_registry(*handlers, (StreamedArray, StreamedArrayHandler(progress)))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=compress, use_ocdbt=compress)


def save_args_for(value) -> ocp.SaveArgs:
    return ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES) if isinstance(value, StreamedArray) else ocp.SaveArgs()
