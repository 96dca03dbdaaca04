"""Hugging Face DeepSeek-V2 / MoST safetensors -> the MoST parameter tree.

Weights come from `model.safetensors` or from the shards listed in `model.safetensors.index.json`.
HF linear weights are [out, in]; our kernels are [in, out], so they are transposed. Decoder layers
go to two stacks with a leading layer axis: layers 0..first_k_dense_replace-1 to `dense_layers`,
the rest to `moe_layers`. Routed experts are read either per expert
(`mlp.experts.{j}.{gate,up,down}_proj.weight`, the DeepSeek-V2-Lite / MoST release and what
transformers writes) or fused (`mlp.experts.gate_up_proj` [E, 2F, D] and `mlp.experts.down_proj`
[E, D, F], transformers' in-memory layout) and stacked over j.

Tensors are produced one decoder layer at a time (`iter_params`), so a writer that stores each
layer's slice as it arrives keeps memory near one layer. The expected name, shape and place of every
tensor come from the model itself (`nnx.eval_shape`), so a mismatch between file, config and model
is an error naming the tensor and its file; tensors nobody asked for are errors too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np
from most_jax import config as config_lib
from most_jax.checkpoint.hf_config import model_config_from_hf, read_hf_config
from most_jax.checkpoint.safetensors_file import DTYPES as FILE_DTYPES, SafetensorsError, SafetensorsFile
from most_jax.checkpoint.param_tree import Path_, abstract_params, unflatten
from most_jax.checkpoint.params_io import CheckpointError, save_params
from most_jax.nn.params import DTYPES

# Non-persistent buffers that some exporters still write; they are derived from the config.
_DERIVED_BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOAT_DTYPES = tuple(FILE_DTYPES[k] for k in ("F64", "F32", "F16", "BF16"))


class HFImportError(ValueError):
    """A Hugging Face checkpoint does not match its config or the model (names tensor and file)."""


class HFTensors:
    """Every tensor of a Hugging Face directory, looked up by name; remembers which were taken."""

    def __init__(self, hf_dir: str | Path):
        hf_dir = Path(hf_dir)
        index_path, single_path = hf_dir / "model.safetensors.index.json", hf_dir / "model.safetensors"
        files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        try:
            if index_path.is_file():
                self._open_sharded(index_path, files)
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

    def _open_sharded(self, index_path: Path, files: dict[str, SafetensorsFile]) -> None:
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFImportError(f"{index_path}: not a safetensors index (needs a 'weight_map' object): {e}") from None
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

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name`, checked to have `shape` (a zero-copy view into the mapped file)."""
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
        return f.read(name)

    def check_all_taken(self) -> None:
        left = sorted(n for n in set(self._where) - self._taken if not n.endswith(_DERIVED_BUFFER_SUFFIXES))
        if left:
            shown = ", ".join(f"{n!r} ({self._where[n].path})" for n in left[:10])
            more = f" and {len(left) - 10} more" if len(left) > 10 else ""
            raise HFImportError(f"unexpected tensors, not part of the configured model: {shown}{more}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF tensor `hf` (relative to its layer) -> our parameter `ours`; `transpose` for [out,in] kernels."""

    hf: str
    ours: Path_
    transpose: bool


def _attention_rules(cfg: config_lib.ModelConfig) -> list[Rule]:
    if cfg.attention.q_lora_rank is None:
        q = [Rule("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), True)]
    else:
        q = [Rule("self_attn.q_a_proj.weight", ("attn", "q_a_proj", "kernel"), True),
             Rule("self_attn.q_a_layernorm.weight", ("attn", "q_a_norm", "scale"), False),
             Rule("self_attn.q_b_proj.weight", ("attn", "q_b_proj", "kernel"), True)]
    return [
        Rule("input_layernorm.weight", ("attn_norm", "scale"), False),
        Rule("post_attention_layernorm.weight", ("ffn_norm", "scale"), False),
        *q,
        Rule("self_attn.kv_a_proj_with_mqa.weight", ("attn", "kv_a_proj", "kernel"), True),
        Rule("self_attn.kv_a_layernorm.weight", ("attn", "kv_a_norm", "scale"), False),
        Rule("self_attn.kv_b_proj.weight", ("attn", "kv_b_proj", "kernel"), True),
        Rule("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), True),
    ]


def _swiglu_rules(hf_prefix: str, ours: Path_) -> list[Rule]:
    return [Rule(f"{hf_prefix}.{p}.weight", ours + (p, "kernel"), True) for p in ("gate_proj", "up_proj", "down_proj")]


def layer_rules(cfg: config_lib.ModelConfig, moe: bool) -> list[Rule]:
    """The one-to-one (non-expert) tensors of a decoder layer."""
    rules = _attention_rules(cfg)
    if not moe:
        return rules + _swiglu_rules("mlp", ("mlp",))
    rules.append(Rule("mlp.gate.weight", ("moe", "gate"), True))
    if cfg.moe.num_shared_experts > 0:
        rules += _swiglu_rules("mlp.shared_experts", ("moe", "shared"))
    return rules


TOP_RULES = (
    Rule("model.embed_tokens.weight", ("embed", "embedding"), False),
    Rule("model.norm.weight", ("final_norm", "scale"), False),
    Rule("lm_head.weight", ("lm_head",), True),
)
EXPERT_PATHS = {"gate_proj": ("moe", "w_gate"), "up_proj": ("moe", "w_up"), "down_proj": ("moe", "w_down")}


def iter_params(cfg: config_lib.ModelConfig, expected: dict[Path_, jax.ShapeDtypeStruct], tensors: HFTensors,
                dtype: str, *, tied_embeddings: bool = False) -> Iterator[tuple[Path_, int | None, np.ndarray]]:
    """Yields (parameter path, layer index within its stack or None, value in `dtype`), top-level
    tensors first, then decoder layer by decoder layer; `expected` is `abstract_params(cfg)`."""
    target = np.dtype(DTYPES[dtype])

    def convert(rule: Rule, name: str, shape: tuple[int, ...]) -> np.ndarray:
        hf_shape = shape[::-1] if rule.transpose else shape
        value = tensors.take(name, hf_shape)
        return np.ascontiguousarray(value.T if rule.transpose else value).astype(target)

    for rule in TOP_RULES:
        shape = expected[rule.ours].shape
        if rule.ours == ("lm_head",) and tied_embeddings:
            yield rule.ours, None, _tied_head(tensors, shape, target)
        else:
            yield rule.ours, None, convert(rule, rule.hf, shape)
    for layer in range(cfg.num_layers):
        is_moe = layer >= cfg.first_k_dense_replace
        stack = "moe_layers" if is_moe else "dense_layers"
        index = layer - cfg.first_k_dense_replace if is_moe else layer
        for rule in layer_rules(cfg, is_moe):
            shape = expected[(stack,) + rule.ours].shape[1:]
            yield (stack,) + rule.ours, index, convert(rule, f"model.layers.{layer}.{rule.hf}", shape)
        if is_moe:
            shapes = {kind: expected[(stack,) + path].shape[1:] for kind, path in EXPERT_PATHS.items()}
            for kind, value in _experts(tensors, layer, shapes).items():
                yield (stack,) + EXPERT_PATHS[kind], index, value.astype(target)


def _tied_head(tensors: HFTensors, shape: tuple[int, ...], target: np.dtype) -> np.ndarray:
    embedding = tensors.take("model.embed_tokens.weight", shape[::-1])
    if "lm_head.weight" in tensors and not np.array_equal(tensors.take("lm_head.weight", shape[::-1]), embedding):
        raise HFImportError("tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight")
    return np.ascontiguousarray(embedding.T).astype(target)


def _experts(tensors: HFTensors, layer: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """{gate_proj, up_proj: [E, D, F], down_proj: [E, F, D]} for one layer, from either layout."""
    prefix = f"model.layers.{layer}.mlp.experts"
    e, d, f = shapes["gate_proj"]
    if f"{prefix}.gate_up_proj" in tensors:
        gate_up_EFD = tensors.take(f"{prefix}.gate_up_proj", (e, 2 * f, d))
        down_EDF = tensors.take(f"{prefix}.down_proj", (e, d, f))
        # transformers computes gate, up = chunk(x @ gate_up^T, 2): the first F rows are the gate.
        return {"gate_proj": gate_up_EFD[:, :f].transpose(0, 2, 1), "up_proj": gate_up_EFD[:, f:].transpose(0, 2, 1),
                "down_proj": down_EDF.transpose(0, 2, 1)}
    out = {}
    for kind, shape in shapes.items():
        per_expert = [tensors.take(f"{prefix}.{j}.{kind}.weight", shape[1:][::-1]) for j in range(e)]
        out[kind] = np.stack(per_expert).transpose(0, 2, 1)
    return out


def read_hf(hf_dir: str | Path, dtype: str = "float32",
            progress: Callable[[str], None] | None = None) -> tuple[config_lib.Config, dict]:
    """(Config, nested parameter dict of NumPy arrays) for a Hugging Face DeepSeek-V2 / MoST directory.

    `dtype` ("float32" or "bfloat16") is the stored parameter dtype and the compute dtype."""
    if dtype not in DTYPES:
        raise HFImportError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    hf = read_hf_config(hf_dir)
    model_cfg = dataclasses.replace(model_config_from_hf(hf), dtype=dtype, param_dtype=dtype)
    cfg = config_lib.Config(model=model_cfg)
    tensors = HFTensors(hf_dir)
    expected = abstract_params(model_cfg)
    stacks: dict[Path_, np.ndarray] = {}
    flat: dict[Path_, np.ndarray] = {}
    layers_seen: set[tuple[str, int]] = set()
    tied = bool(hf.get("tie_word_embeddings", False))
    for path, index, value in iter_params(model_cfg, expected, tensors, dtype, tied_embeddings=tied):
        if index is None:
            flat[path] = value
            continue
        if path not in stacks:
            stacks[path] = np.empty(expected[path].shape, value.dtype)
        stacks[path][index] = value
        if progress is not None and (path[0], index) not in layers_seen:
            layers_seen.add((path[0], index))
            progress(f"reading decoder layer {len(layers_seen)}/{model_cfg.num_layers}")
    tensors.check_all_taken()
    flat.update(stacks)
    missing = sorted(".".join(p) for p in set(expected) - set(flat))
    if missing:
        raise HFImportError(f"no Hugging Face tensor maps to model parameters {', '.join(missing)}")
    return cfg, unflatten(flat)


def import_hf(hf_dir: str | Path, out_dir: str | Path, dtype: str = "float32",
              progress: Callable[[str], None] | None = None) -> config_lib.Config:
    """Converts a Hugging Face directory into a parameter checkpoint at `out_dir` (see params_io)."""
    if Path(out_dir).exists():
        raise CheckpointError(f"{out_dir}: already exists; choose a new output directory")
    cfg, params = read_hf(hf_dir, dtype, progress)
    save_params(out_dir, cfg, params)
    return cfg
