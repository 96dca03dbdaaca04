"""Memory-mapped reading of safetensors files, without torch (bfloat16 through ml_dtypes).

Layout of a file: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
to {dtype, shape, data_offsets: [begin, end]} (plus an optional "__metadata__" entry), then the raw
little-endian tensor bytes, offsets counted from the end of the header. Reading maps the file once
and returns zero-copy views, so a caller converting one tensor at a time holds one tensor in memory.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_HEADER_LIMIT = 100 * 2**20  # the format's own bound on the JSON header


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
    """One file's tensor directory (validated on open) and zero-copy reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors = _read_directory(self.path)
        self._buffer: np.memmap | None = None

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only array view into the mapped file."""
        info = self.tensors.get(name)
        if info is None:
            raise SafetensorsError(f"{self.path}: no tensor named {name!r}")
        if info.begin == info.end:
            return np.zeros(info.shape, info.dtype)
        if self._buffer is None:
            self._buffer = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._buffer[info.begin:info.end].view(info.dtype).reshape(info.shape)


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
