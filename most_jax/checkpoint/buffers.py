"""Reusable arrays for converters.

A conversion produces the same few shapes over and over (one expert, one layer's stack of experts,
the embedding), and memory the process has not touched yet costs a page fault per 4 KB: on the
2-core VM, filling fresh memory ran at 0.3-2 GB/s against about 15 GB/s for memory already touched
(measured). So converters fill buffers kept by role instead of allocating a new array each time.
Buffers start on a 4 KB boundary, so whole blocks of them can be written with O_DIRECT as they are.
"""

from __future__ import annotations

import numpy as np

ALIGN = 4096  # covers 512-byte and 4 KB logical blocks (O_DIRECT's alignment)


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of `nbytes` starting on an ALIGN boundary."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip:skip + nbytes]


class Buffers:
    """One flat buffer per role, grown to the largest request, handed out as an array of the shape
    asked for. An array stays valid until the next `get` of the same role."""

    def __init__(self):
        self._flat: dict[str, np.ndarray] = {}
        self._turn: dict[str, int] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        flat = self._flat.get(role)
        if flat is None or flat.size < nbytes:
            self._flat.pop(role, None)  # the old buffer goes before the larger one is allocated
            flat = self._flat[role] = aligned_empty(nbytes)
        return flat[:nbytes].view(dtype).reshape(shape)

    def alternate(self, role: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """Like `get`, from two buffers of `role` in turn: an array stays valid until the second
        next `alternate` of the role (so one can be consumed while the next is filled)."""
        turn = self._turn[role] = 1 - self._turn.get(role, 1)
        return self.get(f"{role}#{turn}", shape, dtype)
