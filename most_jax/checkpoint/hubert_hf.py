"""transformers HubertModel directories (config.json + safetensors) -> a most_jax HuBERT checkpoint.

The name table maps every HubertModel tensor to one parameter (or one layer's slice of a stacked
one): Linear weights [out, in] become kernels [in, out]; Conv1d weights [O, I, K] become [K, I, O];
LayerNorm/GroupNorm/BatchNorm weight -> scale. The positional conv's weight norm is read in both
spellings transformers has written: `conv.parametrizations.weight.original0/1` (torch's
parametrizations) and `conv.weight_g/weight_v` (the older weight_norm hook); g [1, 1, K] becomes
[K]. BatchNorm's `num_batches_tracked` counter is accepted and dropped (evaluation mode never
reads it). Every tensor is checked before anything is written: a missing, unexpected, misshapen or
non-float tensor is an error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from most_jax import config as config_lib
from most_jax.checkpoint.hf_import import HFImportError, HFTensors

Path_ = tuple[str, ...]

# HubertConfig fields copied as they are (transformers' names are ours).
_SAME_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "conv_bias", "feat_extract_norm", "feat_extract_activation", "feat_proj_layer_norm",
                "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "conv_pos_batch_norm",
                "do_stable_layer_norm", "layer_norm_eps", "hidden_dropout", "attention_dropout",
                "activation_dropout", "feat_proj_dropout")
_TUPLE_FIELDS = ("conv_dim", "conv_kernel", "conv_stride")

_LAYER_LINEARS = {"attention.q_proj": "attention/linear_q", "attention.k_proj": "attention/linear_k",
                  "attention.v_proj": "attention/linear_v", "attention.out_proj": "attention/linear_out",
                  "feed_forward.intermediate_dense": "feed_forward/w_1",
                  "feed_forward.output_dense": "feed_forward/w_2"}
_LAYER_NORMS = ("layer_norm", "final_layer_norm")
_G_NAMES = ("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv_embed.conv.weight_g")
_V_NAMES = ("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv_embed.conv.weight_v")


def config_from_hf(hf: dict, where: str = "config.json") -> config_lib.HubertConfig:
    """HubertConfig from a transformers config.json (as a dict); what HuBERT here lacks is refused by name."""
    if hf.get("model_type") != "hubert":
        raise HFImportError(f"{where}: model_type is {hf.get('model_type')!r}, not 'hubert'")
    if hf.get("adapter_attn_dim") is not None:
        raise HFImportError(f"{where}: adapter_attn_dim: attention adapters are not supported")
    data: dict = {"family": "hubert"}
    for name in _SAME_FIELDS:
        if name in hf:
            data[name] = hf[name]
    for name in _TUPLE_FIELDS:
        if name in hf:
            data[name] = list(hf[name])
    layers = hf.get("num_feat_extract_layers", len(data.get("conv_dim", config_lib.HubertConfig.conv_dim)))
    if layers != len(data.get("conv_dim", config_lib.HubertConfig.conv_dim)):
        raise HFImportError(f"{where}: num_feat_extract_layers is {layers}, but conv_dim has "
                            f"{len(data['conv_dim'])} entries")
    # HubertModel holds the mask vector only when it can mask (transformers' rule)
    data["masked_spec_embed"] = hf.get("mask_time_prob", 0.05) > 0 or hf.get("mask_feature_prob", 0.0) > 0
    try:
        cfg = config_lib.from_dict(config_lib.HubertConfig, data)
        cfg.validate()
    except config_lib.ConfigError as e:
        raise HFImportError(f"{where}: {e}") from None
    return cfg


def _transpose(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w))  # [out, in] -> [in, out]; [O, I, K] -> [K, I, O]


def _table(cfg: config_lib.HubertConfig) -> list[tuple[str, Path_, int | None, bool]]:
    """(HF name, our path, layer index in the stack or None, transpose) for every plain tensor."""
    rows: list[tuple[str, Path_, int | None, bool]] = []

    def norm(hf: str, ours: Path_, layer: int | None = None) -> None:
        rows.extend([(f"{hf}.weight", ours + ("scale",), layer, False), (f"{hf}.bias", ours + ("bias",), layer, False)])

    def linear(hf: str, ours: Path_, layer: int | None = None) -> None:
        rows.extend([(f"{hf}.weight", ours + ("kernel",), layer, True), (f"{hf}.bias", ours + ("bias",), layer, False)])

    for i in range(len(cfg.conv_dim)):
        hf, ours = f"feature_extractor.conv_layers.{i}", ("feature_extractor", "conv_layers", str(i))
        rows.append((f"{hf}.conv.weight", ours + ("conv", "kernel"), None, True))
        if cfg.conv_bias:
            rows.append((f"{hf}.conv.bias", ours + ("conv", "bias"), None, False))
        if cfg.feat_extract_norm == "layer" or i == 0:
            norm(f"{hf}.layer_norm", ours + ("layer_norm",))
    if cfg.feat_proj_layer_norm:
        norm("feature_projection.layer_norm", ("feature_projection", "layer_norm"))
    linear("feature_projection.projection", ("feature_projection", "projection"))
    if cfg.masked_spec_embed:
        rows.append(("masked_spec_embed", ("masked_spec_embed",), None, False))
    pos = ("encoder", "pos_conv_embed")
    rows.append(("encoder.pos_conv_embed.conv.bias", pos + ("conv", "bias"), None, False))
    if cfg.conv_pos_batch_norm:
        rows.append(("encoder.pos_conv_embed.conv.weight", pos + ("conv", "kernel"), None, True))
        norm("encoder.pos_conv_embed.batch_norm", pos + ("batch_norm",))
        for stat in ("running_mean", "running_var"):
            rows.append((f"encoder.pos_conv_embed.batch_norm.{stat}", pos + ("batch_norm", stat), None, False))
    norm("encoder.layer_norm", ("encoder", "layer_norm"))
    for i in range(cfg.num_hidden_layers):
        for hf, ours in _LAYER_LINEARS.items():
            linear(f"encoder.layers.{i}.{hf}", ("encoder", "layers") + tuple(ours.split("/")), i)
        for name in _LAYER_NORMS:
            norm(f"encoder.layers.{i}.{name}", ("encoder", "layers", name), i)
    return rows


def _weight_norm_names(tensors: HFTensors) -> tuple[str, str]:
    for g, v in zip(_G_NAMES, _V_NAMES):
        if g in tensors and v in tensors:
            return g, v
    raise HFImportError(f"missing tensors: the positional conv's weight norm needs {_G_NAMES[0]!r} and "
                        f"{_V_NAMES[0]!r} (or the older {_G_NAMES[1]!r} and {_V_NAMES[1]!r})")


def params_from_hf(tensors: HFTensors, cfg: config_lib.HubertConfig,
                   expected: dict[Path_, tuple[int, ...]], dtype: np.dtype) -> dict[Path_, np.ndarray]:
    """Flat {path: array} of the model's parameters from the tensors of a HubertModel."""
    out = {p: np.zeros(shape, dtype) for p, shape in expected.items()}
    filled: set[Path_] = set()

    def put(name: str, path: Path_, layer: int | None, value: np.ndarray) -> None:
        if path not in out:
            raise HFImportError(f"tensor {name!r} maps to {'/'.join(path)}, which the model does not have")
        target = out[path] if layer is None else out[path][layer]
        if value.shape != target.shape:
            raise HFImportError(f"tensor {name!r} gives shape {list(value.shape)}, the model needs {list(target.shape)}")
        target[...] = value.astype(dtype)
        filled.add(path)

    def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
        tensors.check(name, shape)
        return tensors.read(name).astype(np.float32)

    for name, path, layer, transpose in _table(cfg):
        shape = expected[path] if layer is None else expected[path][1:]
        hf_shape = tuple(reversed(shape)) if transpose else shape
        value = read(name, hf_shape)
        put(name, path, layer, _transpose(value) if transpose else value)
    if cfg.conv_pos_batch_norm:
        counter = "encoder.pos_conv_embed.batch_norm.num_batches_tracked"
        if counter in tensors:
            tensors.skip(counter)
    else:
        g_name, v_name = _weight_norm_names(tensors)
        pos = ("encoder", "pos_conv_embed", "conv")
        k, i, o = expected[pos + ("weight_v",)]
        put(g_name, pos + ("weight_g",), None, read(g_name, (1, 1, k)).reshape(k))
        put(v_name, pos + ("weight_v",), None, _transpose(read(v_name, (o, i, k))))
    tensors.check_all_taken()
    left = sorted("/".join(p) for p in set(out) - filled)
    if left:
        raise HFImportError(f"no HubertModel tensor gives the parameters {', '.join(left)}")
    return out


def read_hf_config(hf_dir: Path) -> config_lib.HubertConfig:
    path = hf_dir / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HFImportError(f"{path}: no such file (a transformers HubertModel directory holds config.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise HFImportError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise HFImportError(f"{path}: expected a JSON object")
    return config_from_hf(data, str(path))


def import_hubert(hf_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> config_lib.Config:
    """A transformers HubertModel directory -> a most_jax parameter checkpoint at `out_dir`."""
    import dataclasses

    from most_jax.checkpoint.param_tree import abstract_params, unflatten
    from most_jax.checkpoint.params_io import save_params
    from most_jax.nn.params import DTYPES

    hf_dir = Path(hf_dir)
    cfg = dataclasses.replace(read_hf_config(hf_dir), dtype=dtype, param_dtype=dtype)
    tensors = HFTensors(hf_dir)
    try:
        expected = {p: tuple(s.shape) for p, s in abstract_params(cfg).items()}
        params = params_from_hf(tensors, cfg, expected, np.dtype(DTYPES[dtype]))
    finally:
        tensors.close()
    full = config_lib.Config(model=cfg)
    save_params(Path(out_dir).absolute(), full, unflatten(params))  # Orbax writes absolute paths only
    return full


__all__ = ["config_from_hf", "params_from_hf", "read_hf_config", "import_hubert"]
