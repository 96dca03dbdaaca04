"""Raw zarr chunk files written around TensorStore (zarr_chunks.py) against TensorStore's own writes;
the shared staging and the one-pass durability that the import's writes rely on."""

import os

import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts

from most_jax import atomic
from most_jax.checkpoint import direct_file, zarr_chunks
from most_jax.checkpoint.buffers import Buffers
from most_jax.checkpoint.direct_file import DirectFile, Staging
from most_jax.checkpoint.params_io import load_checkpoint, save_params
from most_jax.checkpoint.streamed import StreamedArray
from most_jax.checkpoint.zarr_chunks import ChunkFiles


def _store(path, shape, chunks, dtype, compressor=None):
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {"shape": list(shape), "chunks": list(chunks), "dtype": dtype, "compressor": compressor}}
    return ts.open(spec, create=True).result()


def _files(path):
    return {p.name: p.read_bytes() for p in path.iterdir() if p.name != ".zarray"}


@pytest.mark.parametrize("shape, chunks", [
    ((4, 6, 8), (1, 3, 8)),  # whole trailing rows: each chunk a contiguous block of the slice
    ((3, 7, 5), (1, 3, 2)),  # edges that do not divide, trailing axis split: padded, gathered copies
    ((10,), (4,)),
    ((5, 6), (2, 6)),  # leading chunks deeper than one index: only whole-array writes
])
@pytest.mark.parametrize("dtype", ["bfloat16", "<f4"])
def test_chunk_files_equal_tensorstore_writes(tmp_path, shape, chunks, dtype):
    data = np.random.default_rng(0).standard_normal(shape).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    reference = _store(tmp_path / "ts", shape, chunks, dtype)
    reference.write(data).result()
    ours = _store(tmp_path / "ours", shape, chunks, dtype)
    files = ChunkFiles.of(ours)
    with Staging(4096) as staging:
        if files.can_write_slices():
            for i in range(shape[0]):
                files.write(np.ascontiguousarray(data[i]), staging, Buffers(), leading=i)
        else:
            files.write(data, staging, Buffers())
    assert _files(tmp_path / "ours") == _files(tmp_path / "ts")
    np.testing.assert_array_equal(ours.read().result(), data)


def test_layouts_that_are_not_raw_chunks_are_left_to_tensorstore(tmp_path):
    assert ChunkFiles.of(_store(tmp_path / "z", (4, 4), (2, 2), "<f4", {"id": "zstd", "level": 1})) is None
    plain = _store(tmp_path / "p", (4, 4), (2, 2), "<f4")
    assert ChunkFiles.of(plain[1:]) is None  # a view of part of the array
    assert ChunkFiles.of(plain) is not None and not ChunkFiles.of(plain).can_write_slices()
    ocdbt = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{tmp_path / 'o'}"},
                     "metadata": {"shape": [4], "chunks": [2], "dtype": "<f4", "compressor": None}}, create=True).result()
    assert ChunkFiles.of(ocdbt) is None


def test_block_of_the_wrong_shape_is_refused(tmp_path):
    files = ChunkFiles.of(_store(tmp_path / "p", (2, 4), (1, 4), "<f4"))
    with Staging(4096) as staging, pytest.raises(ValueError, match=r"block float32 \[3\] does not match .* \[4\]"):
        files.write(np.zeros(3, np.float32), staging, Buffers(), leading=0)


def test_files_share_one_staging_and_skip_the_sync_when_asked(tmp_path, monkeypatch):
    def no_sync(fd):
        raise AssertionError("fdatasync called for a file written with sync=False")

    monkeypatch.setattr(direct_file.os, "fdatasync", no_sync)
    rng = np.random.default_rng(1)
    contents = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (5000, 0, 12289, 4096)]
    with Staging(8192) as staging:
        for k, content in enumerate(contents):
            out = DirectFile(tmp_path / f"f{k}", staging=staging, sync=False)
            out.write(content)
            out.close()
    assert [(tmp_path / f"f{k}").read_bytes() for k in range(len(contents))] == contents


def test_aligned_buffers_are_written_straight_and_exactly(tmp_path, monkeypatch):
    """Whole blocks of a block-aligned buffer bypass the staging copy; the bytes stay the same
    whatever precedes or follows them."""
    rng = np.random.default_rng(2)
    buffers = Buffers()
    first, second = buffers.alternate("x", (3 * 4096 + 100,), np.uint8), buffers.alternate("x", (8192,), np.uint8)
    assert first.ctypes.data % 4096 == 0 and second.ctypes.data % 4096 == 0
    assert np.shares_memory(first, buffers.alternate("x", (10,), np.uint8))  # the third call reuses the first
    first[...] = rng.integers(0, 256, first.size)
    second[...] = rng.integers(0, 256, second.size)
    staged = []
    real_write_all = DirectFile._write_all
    monkeypatch.setattr(DirectFile, "_write_all", lambda self, view, offset: (staged.append(
        view.ctypes.data in (first.ctypes.data, second.ctypes.data)), real_write_all(self, view, offset)))
    for pieces in ([first, second], [b"abc", first, second], [second, b"xy", first[:4096]]):
        out = DirectFile(tmp_path / "f", stage_bytes=8192)
        for piece in pieces:
            out.write(piece)
        out.close()
        assert (tmp_path / "f").read_bytes() == b"".join(bytes(p) for p in pieces)
    probe = DirectFile(tmp_path / "g")
    probe.close()
    if probe.direct:
        assert any(staged)  # some writes went out from the buffers themselves


def test_sync_tree_syncs_every_file_and_each_directory_after_its_contents(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x", "a/y", "a/b/z"):
        (tmp_path / name).write_text(name)
    synced = []
    real = atomic._fsync
    monkeypatch.setattr(atomic, "_fsync", lambda path, flags: (synced.append(str(path)), real(path, flags)))
    atomic.sync_tree(tmp_path)
    expected = {str(tmp_path / p) for p in ("x", "a/y", "a/b/z", "a", "a/b")} | {str(tmp_path)}
    assert set(synced) == expected and len(synced) == len(expected)
    assert synced.index(str(tmp_path / "a/b/z")) < synced.index(str(tmp_path / "a/b")) < \
        synced.index(str(tmp_path / "a")) < synced.index(str(tmp_path))


def test_uncompressed_save_writes_raw_chunks_and_restores(tmp_path, monkeypatch):
    """save_params without compression: StreamedArrays go out as chunk files (no OCDBT), every
    file is synced before the rename, and the checkpoint restores to the streamed values."""
    from flax import nnx

    from most_jax.checkpoint.param_tree import flatten, unflatten
    from most_jax.config import load_config
    from most_jax.models.most import MoST

    cfg = load_config("configs/most_tiny.yaml")
    values = {p: np.asarray(v) for p, v in flatten(nnx.to_pure_dict(nnx.state(MoST(cfg.model, rngs=nnx.Rngs(3)),
                                                                             nnx.Param)))}
    stacked = {p for p in values if p[0] in ("dense_layers", "moe_layers")}
    shared = Buffers()  # every read reuses the buffer of the read before the last, as the contract allows

    def source(p):
        v = values[p]

        def read(i):
            out = shared.alternate("out", v.shape[1:] if p in stacked else v.shape, v.dtype)
            out[...] = v[i] if p in stacked else v
            return out
        return StreamedArray(v.shape, v.dtype, read, stacked=p in stacked)

    chunk_writes, synced = [], []
    real_write, real_sync = ChunkFiles.write, atomic.sync_tree
    monkeypatch.setattr(ChunkFiles, "write", lambda self, *a, **k: (chunk_writes.append(self), real_write(self, *a, **k)))
    monkeypatch.setattr("most_jax.checkpoint.params_io.sync_tree",
                        lambda root: (synced.append(os.listdir(root)), real_sync(root)))
    out = save_params(tmp_path / "ck", cfg, unflatten({p: source(p) for p in values}), compress=False)
    assert len({id(f) for f in chunk_writes}) == len(values) and synced and "params" in synced[0]
    assert not list(out.rglob("*ocdbt*"))
    _, restored = load_checkpoint(out)
    for p, v in flatten(restored):
        np.testing.assert_array_equal(np.asarray(v), values[p], err_msg=".".join(p))


def test_uncompressed_layout_trains_with_init_from(tmp_path, monkeypatch):
    """`most train --init-from` reads the layout import-hf writes by default (zarr, no OCDBT), as it
    reads init-most's compressed OCDBT: init-most's own training test, saving uncompressed."""
    import functools

    import test_ckpt_init_most
    from most_jax.checkpoint import init_most, params_io

    monkeypatch.setattr(init_most, "save_params", functools.partial(params_io.save_params, compress=False))
    test_ckpt_init_most.test_result_trains_with_init_from(tmp_path)
    assert list((tmp_path / "ck" / "params").glob("*/.zarray")) and not list((tmp_path / "ck").rglob("*ocdbt*"))
