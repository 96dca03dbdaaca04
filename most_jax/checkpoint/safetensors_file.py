"""safetensors files without torch (bfloat16 through ml_dtypes): a reader and a streaming writer.

Layout of a file: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
to {dtype, shape, data_offsets: [begin, end]} (plus an optional "__metadata__" entry), then the raw
little-endian tensor bytes, offsets counted from the end of the header.

Reading uses positioned reads (pread) into fresh arrays rather than a memory map: pages of a mapped
file count towards the process's resident memory until the kernel reclaims them, so converting a
checkpoint larger than RAM through a map looks (and, under pressure, behaves) like holding it all.
Writing knows every tensor's name, dtype and shape up front, writes the header first and then each
tensor as it is produced, so a writer holds one tensor at a time; bytes go to the disk around the
page cache (direct_file.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

from most_jax.checkpoint.direct_file import DirectFile

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_HEADER_LIMIT = 100 * 2**20  # the format's own bound on the JSON header
_ALIGN = 8  # the header is padded with spaces so tensor data starts 8-byte aligned


class SafetensorsError(ValueError):
    """A safetensors file is malformed, truncated or lacks a tensor."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


class SafetensorsFile:
    """One file's tensor directory (validated on open) and reads of single tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors = _read_directory(self.path)
        self._fd: int | None = None

    def read(self, name: str) -> np.ndarray:
        """The tensor as a new array (read from the file, not mapped)."""
        info = self._info(name)
        return self.read_into(name, np.empty(info.shape, info.dtype))

    def read_into(self, name: str, out: np.ndarray, start: int = 0) -> np.ndarray:
        """Reads rows `start .. start + len(out)` (along the leading axis) of the tensor into `out`, a
        C-contiguous array of the tensor's dtype (a reused buffer saves faulting in fresh pages)."""
        info = self._info(name)
        rows = out.shape[0] if out.ndim else 1
        if (out.dtype != info.dtype or tuple(out.shape[1:]) != info.shape[1:] or not out.flags.c_contiguous
                or not 0 <= start <= start + rows <= (info.shape[0] if info.shape else 1)):
            raise SafetensorsError(f"{self.path}: cannot read rows {start}..{start + rows} of tensor {name!r} "
                                   f"({info.dtype} {list(info.shape)}) into {out.dtype} {list(out.shape)}")
        begin = info.begin + start * int(np.prod(info.shape[1:], dtype=np.int64)) * info.dtype.itemsize
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], begin + done)
            if got == 0:
                raise SafetensorsError(f"{self.path}: truncated while reading tensor {name!r} "
                                       f"(bytes {info.begin}..{info.end} of a file now {os.fstat(self._fd).st_size})")
            done += got
        return out

    def _info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise SafetensorsError(f"{self.path}: no tensor named {name!r}")
        return info

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_directory(path: Path) -> dict[str, TensorInfo]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path}: truncated (shorter than the 8-byte header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_HEADER_LIMIT, size - 8):
                raise SafetensorsError(f"{path}: header length {header_len} exceeds the file ({size} bytes); "
                                       "truncated or not a safetensors file")
            header = json.loads(f.read(header_len))
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read ({e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON ({e}); not a safetensors file?") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header must be a JSON object")
    data_start = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, (begin, end) = entry["dtype"], entry["data_offsets"]
            shape = tuple(int(d) for d in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}") from None
        if dtype_name not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
        dtype = DTYPES[dtype_name]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected or begin < 0:
            raise SafetensorsError(f"{path}: tensor {name!r} spans bytes {begin}..{end}, but shape {list(shape)} "
                                   f"of {dtype_name} needs {expected}")
        if data_start + end > size:
            raise SafetensorsError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, "
                                   f"the file has {size}")
        tensors[name] = TensorInfo(name, path, dtype, shape, data_start + begin, data_start + end)
    return tensors


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, dtype and shape, known before its data."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class SafetensorsWriter:
    """Writes the tensors `specs` (in that order) to `path`: header at once, data by `write`."""

    def __init__(self, path: str | Path, specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        self._specs = list(specs)
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for spec in self._specs:
            header[spec.name] = {"dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                                 "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-(8 + len(encoded)) % _ALIGN)
        self._file = DirectFile(self.path)
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._next = 0

    def write(self, value: np.ndarray) -> None:
        """The data of the next tensor; its dtype and shape must be those announced. The bytes are
        copied before this returns, so the caller may reuse `value`."""
        spec = self._specs[self._next]
        if value.dtype != spec.dtype or tuple(value.shape) != spec.shape:
            raise SafetensorsError(f"{self.path}: tensor {spec.name!r} was announced as {DTYPE_NAMES[spec.dtype]} "
                                   f"{list(spec.shape)}, got {value.dtype} {list(value.shape)}")
        self._file.write(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
        self._next += 1

    def close(self) -> None:
        """Finishes the file (synced to the device); every announced tensor must have been written."""
        if self._next != len(self._specs):
            self._file.abort()
            raise SafetensorsError(f"{self.path}: {len(self._specs) - self._next} announced tensors were never "
                                   f"written, the first {self._specs[self._next].name!r}")
        self._file.close()

    def abort(self) -> None:
        """Gives up on the file (the caller removes it)."""
        self._file.abort()
