"""A most_jax parameter checkpoint -> Hugging Face safetensors (release layout), streaming.

Tensors are written in the order of `hf_layout.release_layout` (per-expert names, as the
DeepSeek-V2-Lite and MoST releases store them) into shards of at most `max_shard_size` bytes
(`model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`, or one
`model.safetensors`), with a `config.json` in the release spelling. Each stacked leaf is read one
layer slice at a time straight from the Orbax arrays (stored_params.py), the next slice read while
the current one is written, so memory stays near two slices whatever the model size. Everything goes to a temporary sibling directory, renamed to
OUT_DIR only once complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from most_jax.atomic import partial_directory
from most_jax.checkpoint.buffers import Buffers
from most_jax.checkpoint.hf_config import hf_config_from_model
from most_jax.checkpoint.hf_layout import TensorMap, release_layout
from most_jax.checkpoint.param_tree import abstract_params
from most_jax.checkpoint.params_io import PARAMS_ITEM, CheckpointError, check_tree, load_config, step_dir
from most_jax.checkpoint.safetensors_file import SafetensorsWriter, TensorSpec
from most_jax.checkpoint.stored_params import StoredParams
from most_jax.checkpoint.transpose import swapped_shape, transpose_into
from most_jax.nn.params import DTYPES

MAX_SHARD_BYTES = 5 * 10**9  # the Hugging Face Hub's default shard bound
INDEX_FILE = "model.safetensors.index.json"


def plan_shards(specs: list[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Consecutive groups of `specs` of at most `max_shard_size` bytes (a larger tensor goes alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


class _SliceReader:
    """Hands out the tensors of `maps` in order from one stacked slice (or top-level leaf) at a time,
    reading the next slice in the background while the current one is converted and written."""

    def __init__(self, stored: StoredParams, maps: list[TensorMap], dtype: np.dtype):
        self.stored, self.maps, self.dtype = stored, maps, dtype
        self.buffers = Buffers()  # the writer copies each tensor before the next is asked for
        self.keys = list(dict.fromkeys((m.path, m.layer) for m in maps))
        self.position = -1
        self.value: np.ndarray | None = None
        self.next = stored.read_async(*self.keys[0]) if self.keys else None

    def tensor(self, i: int) -> np.ndarray:
        m = self.maps[i]
        if self.position < 0 or self.keys[self.position] != (m.path, m.layer):
            self.position += 1
            assert self.keys[self.position] == (m.path, m.layer), "tensors must be asked for in order"
            self.value = None  # drop the previous slice before the next one lands
            self.value = np.asarray(self.next.result())
            more = self.position + 1 < len(self.keys)
            self.next = self.stored.read_async(*self.keys[self.position + 1]) if more else None
        value = self.value if m.expert is None else self.value[m.expert]
        if not m.transpose:
            return value.astype(self.dtype, copy=False)
        out = self.buffers.get("out", swapped_shape(value.shape), value.dtype)
        transpose_into(value, out)
        return out.astype(self.dtype, copy=False)


def export_hf(checkpoint: str | Path, out_dir: str | Path, model_type: str | None = None, dtype: str | None = None,
              max_shard_size: int = MAX_SHARD_BYTES, progress: Callable[[str], None] | None = None) -> Path:
    """Writes checkpoint (a params checkpoint, a training run, a manager root or a step directory) to
    `out_dir` as a Hugging Face directory; returns `out_dir`.

    model_type: "MoST" or "deepseek_v2"; default MoST when the model routes by modality.
    dtype: "bfloat16" or "float32"; default the checkpoint's parameter dtype."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise CheckpointError(f"{out_dir}: already exists; choose a new output directory")
    if max_shard_size <= 0:
        raise CheckpointError(f"--max-shard-size: must be positive, got {max_shard_size}")
    cfg = load_config(checkpoint).model
    if cfg.family != "most":
        raise CheckpointError(f"{checkpoint}: a {cfg.family} checkpoint; Hugging Face export is for MoST "
                              "(deepseek_v2 / MoST) checkpoints only")
    dtype = dtype or cfg.param_dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    model_type = model_type or ("MoST" if (cfg.moe.modality_groups and cfg.num_moe_layers) or cfg.continuous_input_dim
                                else "deepseek_v2")
    hf_config = {**hf_config_from_model(cfg, model_type), "torch_dtype": dtype}
    step = step_dir(checkpoint)
    stored = StoredParams(step / PARAMS_ITEM)
    expected = abstract_params(cfg)
    check_tree(expected, stored.leaves, f"checkpoint {step / PARAMS_ITEM}",
               check_dtype=False)
    out_dtype = np.dtype(DTYPES[dtype])
    maps = release_layout(cfg, expected)
    specs = [TensorSpec(m.hf, out_dtype, m.hf_shape) for m in maps]
    return write_hf_dir(out_dir, specs, _SliceReader(stored, maps, out_dtype).tensor, hf_config, max_shard_size,
                        progress)


def write_hf_dir(out_dir: Path, specs: list[TensorSpec], tensor: Callable[[int], np.ndarray], hf_config: dict,
                 max_shard_size: int, progress: Callable[[str], None] | None = None) -> Path:
    """A Hugging Face directory at `out_dir` (via a temporary sibling renamed when complete) holding
    tensors `specs`, the i-th produced by `tensor(i)` in order, sharded, and `hf_config`."""
    shards = plan_shards(specs, max_shard_size)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_directory(out_dir, progress)
    partial.mkdir()
    try:
        index = 0
        for name, shard in zip(names, shards):
            writer = SafetensorsWriter(partial / name, shard, metadata={"format": "pt"})
            try:
                for _ in shard:
                    writer.write(tensor(index))
                    index += 1
            except BaseException:
                writer.abort()
                raise
            writer.close()
            if progress is not None:
                progress(f"wrote {name} ({len(shard)} tensors)")
        if len(shards) > 1:
            weight_map = {spec.name: name for name, shard in zip(names, shards) for spec in shard}
            (partial / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": sum(s.nbytes for s in specs)},
                                                          "weight_map": weight_map}, indent=2))
        (partial / "config.json").write_text(json.dumps(hf_config, indent=2))
        partial.rename(out_dir)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return out_dir
