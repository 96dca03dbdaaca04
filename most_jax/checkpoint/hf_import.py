"""Hugging Face DeepSeek-V2 / MoST safetensors -> a most_jax parameter checkpoint, streaming.

Weights come from `model.safetensors` or from the shards listed in `model.safetensors.index.json`;
routed experts either per expert (the release layout, hf_layout.py) or fused
(`mlp.experts.gate_up_proj` [E, 2F, D] and `mlp.experts.down_proj` [E, D, F], transformers'
in-memory layout). The expected name, shape and place of every tensor come from the model itself
(`nnx.eval_shape`). Every tensor header is checked before anything is written: a tensor missing,
unexpected, misshapen or not floating point is an error naming the tensor and its file.

Conversion streams: each parameter is a `StreamedArray` (streamed.py) whose layer slices are read
from the files only when Orbax writes them, so memory stays near one layer's stacked experts
whatever the model size.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from most_jax import config as config_lib
from most_jax.checkpoint.buffers import Buffers
from most_jax.checkpoint.hf_config import HFConfig, model_config_from_hf, read_hf_config
from most_jax.checkpoint.hf_layout import EXPERT_PATHS, Path_, TensorMap, release_layout
from most_jax.checkpoint.param_tree import abstract_params, shard_shapes, unflatten
from most_jax.checkpoint.params_io import CheckpointError, save_params
from most_jax.checkpoint.safetensors_file import DTYPES as FILE_DTYPES, SafetensorsError, SafetensorsFile
from most_jax.checkpoint.streamed import StreamedArray
from most_jax.checkpoint.transpose import transpose_into, transposed
from most_jax.nn.params import DTYPES

# Non-persistent buffers that some exporters still write; they are derived from the config.
_DERIVED_BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOAT_DTYPES = tuple(FILE_DTYPES[k] for k in ("F64", "F32", "F16", "BF16"))


class HFImportError(ValueError):
    """A Hugging Face checkpoint does not match its config or the model (names tensor and file)."""


class HFTensors:
    """Every tensor of a Hugging Face directory, looked up by name; remembers which were checked."""

    def __init__(self, hf_dir: str | Path):
        hf_dir = Path(hf_dir)
        index_path, single_path = hf_dir / "model.safetensors.index.json", hf_dir / "model.safetensors"
        self._where: dict[str, SafetensorsFile] = {}
        try:
            if index_path.is_file():
                self._open_sharded(index_path)
            elif single_path.is_file():
                f = SafetensorsFile(single_path)
                self._where = {name: f for name in f.tensors}
            else:
                present = sorted(p.name for p in hf_dir.iterdir()) if hf_dir.is_dir() else []
                raise HFImportError(f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json "
                                    f"(found: {', '.join(present) or 'nothing'}); only safetensors weights are read")
        except SafetensorsError as e:
            raise HFImportError(str(e)) from None
        self._taken: set[str] = set()

    def _open_sharded(self, index_path: Path) -> None:
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("'weight_map' is not an object")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFImportError(f"{index_path}: not a safetensors index (needs a 'weight_map' object): {e}") from None
        files: dict[str, SafetensorsFile] = {}
        for name, file_name in weight_map.items():
            if file_name not in files:
                shard = index_path.parent / file_name
                if not shard.is_file():
                    raise HFImportError(f"{index_path}: tensor {name!r} is in shard {file_name}, which does not exist")
                files[file_name] = SafetensorsFile(shard)
            if name not in files[file_name].tensors:
                raise HFImportError(f"{index_path}: tensor {name!r} is listed in shard {file_name}, "
                                    f"but {files[file_name].path} does not hold it")
            self._where[name] = files[file_name]
        for f in files.values():
            unlisted = sorted(set(f.tensors) - set(weight_map))
            if unlisted:
                raise HFImportError(f"{f.path}: tensors missing from {index_path.name}: {', '.join(unlisted[:10])}")

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> set[str]:
        return set(self._where)

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """`name` exists, has `shape` and a floating dtype; marks it as used."""
        if name not in self._where:
            files = sorted({str(f.path) for f in self._where.values()})
            raise HFImportError(f"missing tensor {name!r} (not in {', '.join(files)})")
        f = self._where[name]
        info = f.tensors[name]
        if info.shape != tuple(shape):
            raise HFImportError(f"{f.path}: tensor {name!r} has shape {list(info.shape)}, "
                                f"the config needs {list(shape)}")
        if info.dtype not in _FLOAT_DTYPES:
            raise HFImportError(f"{f.path}: tensor {name!r} has dtype {info.dtype}, expected a floating type")
        self._taken.add(name)

    def skip(self, name: str) -> None:
        """Marks `name` as used without reading it (a derived buffer such as a step counter)."""
        self._taken.add(name)

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        info = self._where[name].tensors[name]
        return info.dtype, info.shape

    def read(self, name: str) -> np.ndarray:
        try:
            return self._where[name].read(name)
        except SafetensorsError as e:
            raise HFImportError(str(e)) from None

    def read_into(self, name: str, out: np.ndarray, start: int = 0) -> np.ndarray:
        """Rows `start .. start + len(out)` of tensor `name` into `out` (of the tensor's dtype)."""
        try:
            return self._where[name].read_into(name, out, start)
        except SafetensorsError as e:
            raise HFImportError(str(e)) from None

    def check_all_taken(self) -> None:
        left = sorted(n for n in set(self._where) - self._taken if not n.endswith(_DERIVED_BUFFER_SUFFIXES))
        if left:
            shown = ", ".join(f"{n!r} ({self._where[n].path})" for n in left[:10])
            more = f" and {len(left) - 10} more" if len(left) > 10 else ""
            raise HFImportError(f"unexpected tensors, not part of the configured model: {shown}{more}")

    def close(self) -> None:
        for f in set(self._where.values()):
            f.close()


def hf_sources(cfg: config_lib.ModelConfig, tensors: HFTensors, dtype: str, *,
               tied_embeddings: bool = False) -> dict[Path_, StreamedArray]:
    """{parameter path: StreamedArray reading it from `tensors` in `dtype`}, after checking every
    tensor header against the model of `cfg` (and that no tensor is left over)."""
    target = np.dtype(DTYPES[dtype])
    expected = abstract_params(cfg)
    maps = release_layout(cfg, expected)
    fused_layers = {m.layer for m in maps if m.expert is not None
                    and f"model.layers.{_layer_of(cfg, m)}.mlp.experts.gate_up_proj" in tensors}
    by_path: dict[Path_, list[TensorMap]] = {}
    for m in maps:
        if m.path == ("lm_head",) and tied_embeddings:
            continue
        if m.expert is not None and m.layer in fused_layers:
            continue
        tensors.check(m.hf, m.hf_shape)
        by_path.setdefault(m.path, []).append(m)
    for index in sorted(fused_layers):
        _check_fused(cfg, tensors, index, expected)
    if tied_embeddings and "lm_head.weight" in tensors:
        tensors.check("lm_head.weight", expected[("lm_head",)].shape[::-1])
    tensors.check_all_taken()

    sources = {}
    buffers = Buffers()  # shared by every leaf: a slice is written before the second next read
    for path, shape_dtype in expected.items():
        shape = tuple(shape_dtype.shape)
        if path == ("lm_head",) and tied_embeddings:
            read = _tied_head_reader(tensors, target)
        elif path[0] in ("dense_layers", "moe_layers"):
            read = _layer_reader(cfg, tensors, by_path.get(path, []), path, shape, target, fused_layers, buffers)
        else:
            (m,) = by_path[path]
            read = _top_reader(tensors, m, shape, target, buffers)
        sources[path] = StreamedArray(shape, target, read, stacked=path[0] in ("dense_layers", "moe_layers"))
    return sources


def _layer_of(cfg: config_lib.ModelConfig, m: TensorMap) -> int:
    return m.layer + (cfg.first_k_dense_replace if m.path[0] == "moe_layers" else 0)


def _fused_names(cfg: config_lib.ModelConfig, index: int) -> tuple[str, str]:
    prefix = f"model.layers.{index + cfg.first_k_dense_replace}.mlp.experts"
    return f"{prefix}.gate_up_proj", f"{prefix}.down_proj"


def _check_fused(cfg: config_lib.ModelConfig, tensors: HFTensors, index: int, expected: dict) -> None:
    e, d, f = expected[("moe_layers",) + EXPERT_PATHS["gate_proj"]].shape[1:]
    gate_up, down = _fused_names(cfg, index)
    tensors.check(gate_up, (e, 2 * f, d))
    tensors.check(down, (e, d, f))


# Rows of a source tensor read at once when it is transposed or cast on the way in: a bounded
# scratch whatever the tensor (the 102400-row embedding and head included).
_BLOCK_BYTES = 32 * 2**20


def _load(tensors: HFTensors, name: str, dst: np.ndarray, transpose: bool, buffers: Buffers) -> None:
    """Tensor `name` (its transpose when `transpose`) into `dst`, cast to dst's dtype."""
    dtype, shape = tensors.info(name)
    if not transpose and dtype == dst.dtype and dst.flags.c_contiguous:
        tensors.read_into(name, dst)
        return
    rows = shape[0]
    step = max(1, _BLOCK_BYTES // max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize))
    for start in range(0, rows, step):
        block = tensors.read_into(name, buffers.get("block", (min(step, rows - start),) + shape[1:], dtype), start)
        stop = start + block.shape[0]
        _put(block, dst[..., start:stop] if transpose else dst[start:stop], transpose, buffers)


def _put(part: np.ndarray, dst: np.ndarray, transpose: bool, buffers: Buffers) -> None:
    """`part` (its transpose when `transpose`) into `dst`, cast to dst's dtype."""
    if not transpose:
        np.copyto(dst, part)
    elif part.dtype == dst.dtype:
        transpose_into(part, dst)
    else:  # transpose in the source dtype, then cast contiguous rows (NumPy's casting copy is slow strided)
        swapped = buffers.get("swapped", dst.shape, part.dtype)
        transpose_into(part, swapped)
        np.copyto(dst, swapped)


def _top_reader(tensors: HFTensors, m: TensorMap, shape: tuple[int, ...], target: np.dtype,
                buffers: Buffers) -> Callable[[int], np.ndarray]:
    def read(_: int) -> np.ndarray:
        out = buffers.alternate("out", shape, target)
        _load(tensors, m.hf, out, m.transpose, buffers)
        return out
    return read


def _tied_head_reader(tensors: HFTensors, target: np.dtype) -> Callable[[int], np.ndarray]:
    def read(_: int) -> np.ndarray:
        embedding = tensors.read("model.embed_tokens.weight")
        if "lm_head.weight" in tensors and not np.array_equal(tensors.read("lm_head.weight"), embedding):
            raise HFImportError("tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight")
        return transposed(embedding, target)
    return read


def _layer_reader(cfg: config_lib.ModelConfig, tensors: HFTensors, maps: list[TensorMap], path: Path_,
                  shape: tuple[int, ...], target: np.dtype, fused_layers: set[int],
                  buffers: Buffers) -> Callable[[int], np.ndarray]:
    by_layer: dict[int, list[TensorMap]] = {}
    for m in maps:
        by_layer.setdefault(m.layer, []).append(m)
    kind = next((k for k, leaf in EXPERT_PATHS.items() if path[1:] == leaf), None)

    def read(index: int) -> np.ndarray:
        out = buffers.alternate("out", shape[1:], target)
        if kind is not None and index in fused_layers:
            _load_fused(cfg, tensors, index, kind, out, buffers)
        else:
            for m in by_layer[index]:  # one expert at a time, straight into its row of the stack
                _load(tensors, m.hf, out if m.expert is None else out[m.expert], m.transpose, buffers)
        return out
    return read


def _load_fused(cfg: config_lib.ModelConfig, tensors: HFTensors, index: int, kind: str, out: np.ndarray,
                buffers: Buffers) -> None:
    """Leaf `kind` of layer `index` from the fused expert tensors, one expert at a time."""
    gate_up_name, down_name = _fused_names(cfg, index)
    name = down_name if kind == "down_proj" else gate_up_name
    dtype, shape = tensors.info(name)
    f = out.shape[2]
    for e in range(shape[0]):
        (value,) = tensors.read_into(name, buffers.get("block", (1,) + shape[1:], dtype), e)
        # transformers computes gate, up = chunk(x @ gate_up^T, 2): the first F rows are the gate.
        part = value if kind == "down_proj" else value[:f] if kind == "gate_proj" else value[f:]
        _put(part, out[e], True, buffers)


def hf_model_config(hf: HFConfig, dtype: str) -> config_lib.ModelConfig:
    if dtype not in DTYPES:
        raise HFImportError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return dataclasses.replace(model_config_from_hf(hf), dtype=dtype, param_dtype=dtype)


def open_hf(hf_dir: str | Path, dtype: str) -> tuple[config_lib.Config, dict[Path_, StreamedArray], HFTensors]:
    """(Config, checked streamed parameters, the open files) of a Hugging Face directory."""
    hf = read_hf_config(hf_dir)
    cfg = config_lib.Config(model=hf_model_config(hf, dtype))
    tensors = HFTensors(hf_dir)
    try:
        sources = hf_sources(cfg.model, tensors, dtype, tied_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except BaseException:
        tensors.close()
        raise
    return cfg, sources, tensors


def materialize(sources: dict[Path_, StreamedArray]) -> dict:
    """The nested parameter dict of NumPy arrays (for small models and tests)."""
    flat = {}
    for path, source in sources.items():
        flat[path] = value = np.empty(source.shape, source.dtype)
        for i in range(source.shape[0] if source.stacked else 1):  # each read may reuse the last one's buffer
            value[i if source.stacked else ...] = source.read(i)
    return unflatten(flat)


def read_hf(hf_dir: str | Path, dtype: str = "float32") -> tuple[config_lib.Config, dict]:
    """(Config, nested parameter dict of NumPy arrays) of a Hugging Face DeepSeek-V2 / MoST directory;
    `dtype` ("float32" or "bfloat16") is the parameter and compute dtype. Holds the whole model."""
    cfg, sources, tensors = open_hf(hf_dir, dtype)
    try:
        return cfg, materialize(sources)
    finally:
        tensors.close()


def import_hf(hf_dir: str | Path, out_dir: str | Path, dtype: str = "float32",
              progress: Callable[[str], None] | None = None,
              mesh_sizes: dict[str, int] | None = None, compress: bool = False) -> config_lib.Config:
    """Converts a Hugging Face directory into a parameter checkpoint at `out_dir` (see params_io),
    streaming. With `mesh_sizes` (mesh axis -> size), each parameter is stored in chunks of one
    device's shard under that mesh, so the devices of a pod each read exactly their own chunks.
    `compress`: store the arrays zstd-compressed in one OCDBT database through TensorStore (about
    0.7x the bytes of bf16 weights, but compressing, not the disk, then limits the conversion's
    speed); by default, uncompressed zarr arrays whose chunk files bypass the page cache
    (streamed.py), synced in one pass before the checkpoint is renamed into place."""
    if Path(out_dir).exists():
        raise CheckpointError(f"{out_dir}: already exists; choose a new output directory")
    cfg, sources, tensors = open_hf(hf_dir, dtype)
    try:
        if mesh_sizes is not None:
            blocks = shard_shapes(cfg.model, mesh_sizes)
            sources = {p: dataclasses.replace(s, write_shape=blocks[p]) for p, s in sources.items()}
        save_params(out_dir, cfg, unflatten(sources), progress, compress)
    finally:
        tensors.close()
    return cfg


__all__ = ["HFImportError", "HFTensors", "hf_sources", "open_hf", "read_hf", "import_hf", "materialize"]
