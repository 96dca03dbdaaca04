"""Reusable arrays for converters.

A conversion produces the same few shapes over and over (one expert, one layer's stack of experts,
the embedding), and memory the process has not touched yet costs a page fault per 4 KB: on the
2-core VM, filling fresh memory ran at 0.3-2 GB/s against about 15 GB/s for memory already touched
(measured). So converters fill buffers kept by role instead of allocating a new array each time.
"""

from __future__ import annotations

import numpy as np


class Buffers:
    """One flat buffer per role, grown to the largest request, handed out as an array of the shape
    asked for. An array stays valid until the next `get` of the same role."""

    def __init__(self):
        self._flat: dict[str, np.ndarray] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        flat = self._flat.get(role)
        if flat is None or flat.size < nbytes:
            self._flat.pop(role, None)  # the old buffer goes before the larger one is allocated
            flat = self._flat[role] = np.empty(nbytes, np.uint8)
        return flat[:nbytes].view(dtype).reshape(shape)
