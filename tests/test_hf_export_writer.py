"""The export's file writing: DirectFile (around the page cache) against plain writes, and the
safetensors writer on top of it."""

import errno
import os

import numpy as np
import pytest

from most_jax.checkpoint import direct_file
from most_jax.checkpoint.direct_file import DirectFile
from most_jax.checkpoint.safetensors_file import SafetensorsError, SafetensorsFile, SafetensorsWriter, TensorSpec


def _pieces(seed=0):
    """Byte strings of awkward sizes: empty, below, at and across the 4 KB block and 8 KB stage."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (5, 0, 4091, 4096, 1, 8192, 20000, 3, 12289)]


@pytest.mark.parametrize("pieces", [_pieces(), [b"x"], [], [b"\0" * 8192]])
def test_direct_file_writes_exactly_the_bytes(tmp_path, pieces):
    out = DirectFile(tmp_path / "f", stage_bytes=8192)
    for piece in pieces:
        out.write(piece)
    out.close()
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_falls_back_to_the_page_cache_where_o_direct_is_refused(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")  # what tmpfs answers
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_file.os, "open", refusing_direct)
    out = DirectFile(tmp_path / "f", stage_bytes=4096)
    assert not out.direct
    for piece in _pieces(1):
        out.write(piece)
    out.close()
    assert (tmp_path / "f").read_bytes() == b"".join(_pieces(1))


def test_stage_size_must_be_block_aligned(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4096"):
        DirectFile(tmp_path / "f", stage_bytes=5000)


def test_writer_round_trip_and_reused_source_buffer(tmp_path):
    specs = [TensorSpec("a", np.dtype(np.float32), (3, 1000)), TensorSpec("b", np.dtype(np.float32), (3, 1000)),
             TensorSpec("n", np.dtype(np.float32), (7,))]
    writer = SafetensorsWriter(tmp_path / "x.safetensors", specs, metadata={"format": "pt"})
    buffer = np.empty((3, 1000), np.float32)
    for fill in (1.0, 2.0):  # the same buffer refilled: the writer must have copied the first tensor
        buffer[...] = fill
        writer.write(buffer)
    writer.write(np.arange(7, dtype=np.float32))
    writer.close()
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert (f.read("a") == 1).all() and (f.read("b") == 2).all() and np.array_equal(f.read("n"), np.arange(7))


def test_writer_refuses_wrong_and_missing_tensors(tmp_path):
    specs = [TensorSpec("a", np.dtype(np.float32), (2,)), TensorSpec("b", np.dtype(np.float32), (2,))]
    writer = SafetensorsWriter(tmp_path / "x.safetensors", specs)
    with pytest.raises(SafetensorsError, match="'a' was announced as F32 \\[2\\], got float64"):
        writer.write(np.zeros(2, np.float64))
    writer.write(np.zeros(2, np.float32))
    with pytest.raises(SafetensorsError, match="1 announced tensors were never written, the first 'b'"):
        writer.close()
