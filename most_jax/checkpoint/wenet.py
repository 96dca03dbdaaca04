"""WeNet U2++ checkpoints <-> most_jax U2++ parameters: the name table, the YAML mapping, CMVN.

A WeNet checkpoint is a PyTorch state_dict (`final.pt`) plus the training YAML (`train.yaml`:
encoder_conf, decoder_conf, model_conf, input_dim, output_dim, cmvn_conf). The mapping is NumPy;
only reading and writing the `.pt` file imports torch (lazily, with a clear error when it is absent),
so only `most u2pp import-wenet` / `export-wenet` need it.

The name table. Every WeNet tensor name matches exactly one `Rule` of RULES: a WeNet key pattern
whose `{i}` is the layer index, `{e}` the expert index and `{side}`, `{ffn}`, `{attn}`, `{c}` name
parts copied into the parameter path; the matched tensor goes, through the rule's `Layout`, to one slice
of the parameter (layers stacked on a leading axis, experts on the next). The table is composed of
small per-module tables (attention, FFN, MoE, conv module, norms) placed under each module's prefix,
so no layer or expert is spelled out. Transposes: PyTorch Linear weights [out, in] become kernels
[in, out]; Conv2d [O, I, H, W] become [H, W, I, O]; Conv1d pointwise [O, I, 1] become [I, O] and
depthwise [C, 1, K] become [K, C].

Derived buffers: WeNet stores its sinusoidal tables (`...pos_enc.pe`, `...embed.1.pe`, shape
[1, max_len, d]); they are checked (shape, and that they hold the sinusoids) on import and regenerated
on export, not parameters.
CMVN: `encoder.global_cmvn.mean/istd` of the state_dict, else the YAML's `cmvn_file` (WeNet's
JSON or Kaldi text stats, read as WeNet's load_cmvn does); without either, mean 0 and istd 1
(identity), which export writes back as "no CMVN" so that a model without CMVN round-trips.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from pathlib import Path

import numpy as np

from most_jax import config as config_lib

Path_ = tuple[str, ...]

PE_MAX_LEN = 5000  # WeNet's PositionalEncoding max_len: the length of the stored `pe` buffers
CMVN_KEYS = ("encoder.global_cmvn.mean", "encoder.global_cmvn.istd")


class WenetError(ValueError):
    """A WeNet checkpoint or YAML does not fit the U2++ model (names the tensor or option)."""


# ----------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one WeNet tensor is stored in the parameter: `axes` permutes the WeNet array (after
    `squeeze` drops a WeNet size-1 axis); `to_wenet` undoes it exactly."""

    name: str
    axes: tuple[int, ...] | None = None  # None: copied as is
    squeeze: int | None = None  # WeNet axis of size 1 dropped before permuting

    def to_jax(self, w: np.ndarray) -> np.ndarray:
        if self.squeeze is not None:
            w = np.squeeze(w, self.squeeze)
        return w if self.axes is None else np.transpose(w, self.axes)

    def to_wenet(self, w: np.ndarray) -> np.ndarray:
        if self.axes is not None:
            w = np.transpose(w, np.argsort(self.axes))
        return w if self.squeeze is None else np.expand_dims(w, self.squeeze)

    def jax_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(shape)
        if self.squeeze is not None:
            shape = shape[: self.squeeze] + shape[self.squeeze + 1 :]
        return shape if self.axes is None else tuple(shape[a] for a in self.axes)


COPY = Layout("copy")
LINEAR = Layout("linear", axes=(1, 0))  # [out, in] -> [in, out]
CONV2D = Layout("conv2d", axes=(2, 3, 1, 0))  # [O, I, H, W] -> [H, W, I, O]
POINTWISE = Layout("pointwise", axes=(1, 0), squeeze=2)  # [O, I, 1] -> [I, O]
DEPTHWISE = Layout("depthwise", axes=(1, 0), squeeze=1)  # [C, 1, K] -> [K, C]


@dataclasses.dataclass(frozen=True)
class Rule:
    wenet: str  # key pattern: {i} layer, {e} expert; {side}/{ffn}/{attn}/{c} copied into `path`
    path: str  # parameter path, '/'-separated, with the same named parts
    layout: Layout


_PARTS = {
    "i": r"(?P<i>\d+)",
    "e": r"(?P<e>\d+)",
    "side": r"(?P<side>left|right)",
    "ffn": r"(?P<ffn>feed_forward|feed_forward_macaron)",
    "attn": r"(?P<attn>self_attn|src_attn)",
    "c": r"(?P<c>\d+)",  # nn.Sequential index of a subsampling conv (0, 2, 4)
}
_COPIED = ("side", "ffn", "attn", "c")


def _under(prefix: tuple[str, str], table: tuple[tuple[str, str, Layout], ...]) -> tuple[Rule, ...]:
    wenet, path = prefix
    return tuple(Rule(f"{wenet}.{w}", f"{path}/{p}", layout) for w, p, layout in table)


def _norm(name: str) -> tuple[tuple[str, str, Layout], ...]:
    return ((f"{name}.weight", f"{name}/scale", COPY), (f"{name}.bias", f"{name}/bias", COPY))


def _linear(name: str) -> tuple[tuple[str, str, Layout], ...]:
    return ((f"{name}.weight", f"{name}/kernel", LINEAR), (f"{name}.bias", f"{name}/bias", COPY))


def _conv1d(name: str, layout: Layout) -> tuple[tuple[str, str, Layout], ...]:
    return ((f"{name}.weight", f"{name}/kernel", layout), (f"{name}.bias", f"{name}/bias", COPY))


_ATTENTION = _linear("linear_q") + _linear("linear_k") + _linear("linear_v") + _linear("linear_out")
_REL_POS = (("linear_pos.weight", "linear_pos/kernel", LINEAR), ("pos_bias_u", "pos_bias_u", COPY),
            ("pos_bias_v", "pos_bias_v", COPY))
_DENSE_FFN = _linear("w_1") + _linear("w_2")
_MOE_FFN = (("gate.weight", "gate", LINEAR),
            ("experts.{e}.w_1.weight", "w_1", LINEAR), ("experts.{e}.w_1.bias", "b_1", COPY),
            ("experts.{e}.w_2.weight", "w_2", LINEAR), ("experts.{e}.w_2.bias", "b_2", COPY))
_CONV_MODULE = (_conv1d("pointwise_conv1", POINTWISE) + _conv1d("depthwise_conv", DEPTHWISE)
                + _norm("norm") + _conv1d("pointwise_conv2", POINTWISE))

_ENC_LAYER = ("encoder.encoders.{i}", "encoder/encoders")
_DEC = ("decoder.{side}_decoder", "decoder/{side}_decoder")
_DEC_LAYER = ("decoder.{side}_decoder.decoders.{i}", "decoder/{side}_decoder/decoders")

RULES: tuple[Rule, ...] = (
    Rule("encoder.global_cmvn.mean", "encoder/global_cmvn/mean", COPY),
    Rule("encoder.global_cmvn.istd", "encoder/global_cmvn/istd", COPY),
    Rule("encoder.embed.conv.{c}.weight", "encoder/embed/conv/{c}/kernel", CONV2D),
    Rule("encoder.embed.conv.{c}.bias", "encoder/embed/conv/{c}/bias", COPY),
    # conv2d's output Linear is `out.0`, conv2d6/8's is `linear`: the same parameter
    Rule("encoder.embed.out.0.weight", "encoder/embed/out/kernel", LINEAR),
    Rule("encoder.embed.out.0.bias", "encoder/embed/out/bias", COPY),
    Rule("encoder.embed.linear.weight", "encoder/embed/out/kernel", LINEAR),
    Rule("encoder.embed.linear.bias", "encoder/embed/out/bias", COPY),
    *_under(("encoder", "encoder"), _norm("after_norm")),
    *_under((f"{_ENC_LAYER[0]}.self_attn", f"{_ENC_LAYER[1]}/self_attn"), _ATTENTION + _REL_POS),
    *_under((f"{_ENC_LAYER[0]}.{{ffn}}", f"{_ENC_LAYER[1]}/{{ffn}}"), _DENSE_FFN + _MOE_FFN),
    *_under((f"{_ENC_LAYER[0]}.conv_module", f"{_ENC_LAYER[1]}/conv_module"), _CONV_MODULE),
    *_under(_ENC_LAYER, sum((_norm(n) for n in ("norm_ff", "norm_mha", "norm_ff_macaron", "norm_conv",
                                                  "norm_final")), ())),
    *_under(_DEC, (("embed.0.weight", "embed", COPY),) + _norm("after_norm") + _linear("output_layer")),
    *_under((f"{_DEC_LAYER[0]}.{{attn}}", f"{_DEC_LAYER[1]}/{{attn}}"), _ATTENTION),
    *_under((f"{_DEC_LAYER[0]}.feed_forward", f"{_DEC_LAYER[1]}/feed_forward"), _DENSE_FFN + _MOE_FFN),
    *_under(_DEC_LAYER, _norm("norm1") + _norm("norm2") + _norm("norm3")),
    *_under(("ctc", "ctc"), _linear("ctc_lo")),
)

_DERIVED = re.compile(r"^(encoder\.embed\.pos_enc\.pe|decoder\.(left|right)_decoder\.embed\.1\.pe)$")


def _compile(rule: Rule) -> re.Pattern:
    pattern = re.escape(rule.wenet)
    for name, group in _PARTS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(f"^{pattern}$")


_COMPILED = tuple((_compile(r), r) for r in RULES)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one WeNet tensor goes: parameter `path`, at `index` (layer, then expert) of its stack."""

    path: Path_
    index: tuple[int, ...]
    layout: Layout


def place(key: str) -> Placement | None:
    """The placement of WeNet tensor `key`, or None for a derived buffer; WenetError if unknown."""
    if _DERIVED.match(key):
        return None
    for pattern, rule in _COMPILED:
        m = pattern.match(key)
        if m is None:
            continue
        parts = m.groupdict()
        path = rule.path
        for name in _COPIED:
            if parts.get(name) is not None:
                path = path.replace("{" + name + "}", parts[name])
        index = tuple(int(parts[n]) for n in ("i", "e") if parts.get(n) is not None)
        return Placement(tuple(path.split("/")), index, rule.layout)
    raise WenetError(f"unexpected tensor {key!r}: no part of a U2++ (Conformer + BiTransformer) model")


# ----------------------------------------------------------------------------- WeNet's state_dict


def _wenet_linear(name: str, d_in: int, d_out: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (d_out, d_in), **({f"{name}.bias": (d_out,)} if bias else {})}


def _wenet_norm(name: str, d: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (d,), f"{name}.bias": (d,)}


def _wenet_ffn(name: str, d: int, f: int, mlp_type: str, moe: config_lib.MoEConfig) -> dict[str, tuple[int, ...]]:
    if mlp_type == "position_wise_feed_forward":
        return {**_wenet_linear(f"{name}.w_1", d, f, moe.expert_bias), **_wenet_linear(f"{name}.w_2", f, d, moe.expert_bias)}
    out = {f"{name}.gate.weight": (moe.num_experts, d)}
    for e in range(moe.num_experts):
        out.update(_wenet_linear(f"{name}.experts.{e}.w_1", d, f, moe.expert_bias))
        out.update(_wenet_linear(f"{name}.experts.{e}.w_2", f, d, moe.expert_bias))
    return out


def _wenet_attention(name: str, d: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
        out.update(_wenet_linear(f"{name}.{proj}", d, d))
    return out


def subsample_freq(input_layer: str, idim: int) -> int:
    """Frequency bins left after WeNet's conv2d subsampling of `idim` bins."""
    if input_layer == "conv2d":
        return ((idim - 1) // 2 - 1) // 2
    if input_layer == "conv2d6":
        return ((idim - 1) // 2 - 2) // 3
    return (((idim - 1) // 2 - 1) // 2 - 1) // 2


def wenet_shapes(cfg: config_lib.U2ppConfig, with_cmvn: bool = True) -> dict[str, tuple[int, ...]]:
    """{key: shape} of WeNet's ASRModel(conformer, bitransformer, ctc) state_dict, in its order."""
    enc, dec = cfg.encoder, cfg.decoder
    d, heads, v = enc.output_size, enc.attention_heads, cfg.vocab_size
    out: dict[str, tuple[int, ...]] = {}
    if with_cmvn:
        out.update({CMVN_KEYS[0]: (cfg.input_dim,), CMVN_KEYS[1]: (cfg.input_dim,)})
    kernels = {"conv2d": (3, 3), "conv2d6": (3, 5), "conv2d8": (3, 3, 3)}[enc.input_layer]
    for n, k in enumerate(kernels):
        out[f"encoder.embed.conv.{2 * n}.weight"] = (d, 1 if n == 0 else d, k, k)
        out[f"encoder.embed.conv.{2 * n}.bias"] = (d,)
    out_name = "encoder.embed.out.0" if enc.input_layer == "conv2d" else "encoder.embed.linear"
    out.update(_wenet_linear(out_name, d * subsample_freq(enc.input_layer, cfg.input_dim), d))
    out["encoder.embed.pos_enc.pe"] = (1, PE_MAX_LEN, d)
    out.update(_wenet_norm("encoder.after_norm", d))
    for i in range(enc.num_blocks):
        p = f"encoder.encoders.{i}"
        out[f"{p}.self_attn.pos_bias_u"] = (heads, d // heads)
        out[f"{p}.self_attn.pos_bias_v"] = (heads, d // heads)
        out.update(_wenet_attention(f"{p}.self_attn", d))
        out[f"{p}.self_attn.linear_pos.weight"] = (d, d)
        out.update(_wenet_ffn(f"{p}.feed_forward", d, enc.linear_units, enc.mlp_type, enc.moe))
        out.update(_wenet_ffn(f"{p}.feed_forward_macaron", d, enc.linear_units, enc.mlp_type, enc.moe))
        c = f"{p}.conv_module"
        out.update({f"{c}.pointwise_conv1.weight": (2 * d, d, 1), f"{c}.pointwise_conv1.bias": (2 * d,),
                    f"{c}.depthwise_conv.weight": (d, 1, enc.cnn_module_kernel), f"{c}.depthwise_conv.bias": (d,),
                    **_wenet_norm(f"{c}.norm", d),
                    f"{c}.pointwise_conv2.weight": (d, d, 1), f"{c}.pointwise_conv2.bias": (d,)})
        for norm in ("norm_ff", "norm_mha", "norm_ff_macaron", "norm_conv", "norm_final"):
            out.update(_wenet_norm(f"{p}.{norm}", d))
    for side, blocks in (("left", dec.num_blocks), ("right", dec.r_num_blocks)):
        p = f"decoder.{side}_decoder"
        out[f"{p}.embed.0.weight"] = (v, d)
        out[f"{p}.embed.1.pe"] = (1, PE_MAX_LEN, d)
        out.update(_wenet_norm(f"{p}.after_norm", d))
        out.update(_wenet_linear(f"{p}.output_layer", d, v))
        for i in range(blocks):
            q = f"{p}.decoders.{i}"
            out.update(_wenet_attention(f"{q}.self_attn", d))
            out.update(_wenet_attention(f"{q}.src_attn", d))
            out.update(_wenet_ffn(f"{q}.feed_forward", d, dec.linear_units, dec.mlp_type, dec.moe))
            for norm in ("norm1", "norm2", "norm3"):
                out.update(_wenet_norm(f"{q}.{norm}", d))
    out.update(_wenet_linear("ctc.ctc_lo", d, v))
    return out


def param_shapes(cfg: config_lib.U2ppConfig) -> dict[Path_, tuple[int, ...]]:
    """{parameter path: shape} that the name table gives the WeNet tensors of `cfg` (stacked)."""
    shapes: dict[Path_, tuple[int, ...]] = {}
    counts: dict[Path_, list[int]] = {}
    for key, shape in wenet_shapes(cfg).items():
        pl = place(key)
        if pl is None:
            continue
        item = pl.layout.jax_shape(shape)
        shapes[pl.path] = item
        seen = counts.setdefault(pl.path, [0] * len(pl.index))
        for n, idx in enumerate(pl.index):
            seen[n] = max(seen[n], idx + 1)
    return {p: tuple(counts[p]) + item for p, item in shapes.items()}


def params_from_wenet(state: dict[str, np.ndarray], cfg: config_lib.U2ppConfig,
                      expected: dict[Path_, tuple[int, ...]], dtype: np.dtype) -> dict[Path_, np.ndarray]:
    """Flat {parameter path: array} from WeNet tensors; every tensor of `cfg` must be present with
    WeNet's shape (CMVN may be absent: identity) and nothing else; `expected` are the model's
    parameter shapes, checked against what the table produces."""
    want = wenet_shapes(cfg)
    have_cmvn = [k in state for k in CMVN_KEYS]
    if any(have_cmvn) and not all(have_cmvn):
        raise WenetError(f"missing tensor {CMVN_KEYS[have_cmvn.index(False)]!r} (the other CMVN statistic is present)")
    if not all(have_cmvn):
        want = {k: s for k, s in want.items() if k not in CMVN_KEYS}
    missing = [k for k in want if k not in state]
    if missing:
        raise WenetError(f"missing tensor(s): {', '.join(repr(k) for k in missing[:10])}"
                         + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    unexpected = [k for k in state if k not in want]
    if unexpected:
        for k in unexpected:
            place(k)  # names a tensor no U2++ model has
        raise WenetError(f"unexpected tensor(s) for this config: {', '.join(repr(k) for k in unexpected[:10])} "
                         f"(check encoder_conf/decoder_conf: num_blocks, mlp_type, n_expert, mlp_bias)")
    for key, shape in want.items():
        found = tuple(state[key].shape)
        if found != shape:
            raise WenetError(f"tensor {key!r} has shape {list(found)}, the YAML's config needs {list(shape)}")
        if not np.issubdtype(state[key].dtype, np.floating):
            raise WenetError(f"tensor {key!r} has dtype {state[key].dtype}, expected a floating type")

    shapes = param_shapes(cfg)
    _check_against_model(shapes, expected)
    out = {p: np.zeros(s, dtype) for p, s in shapes.items()}
    if not all(have_cmvn):
        out[("encoder", "global_cmvn", "istd")][...] = 1.0
    for key in want:
        pl = place(key)
        if pl is not None:
            out[pl.path][pl.index] = pl.layout.to_jax(np.asarray(state[key]))
    return out


def wenet_from_params(params: dict[Path_, np.ndarray], cfg: config_lib.U2ppConfig) -> dict[str, np.ndarray]:
    """WeNet's state_dict (as arrays, in WeNet's key order) from flat parameters; the `pe` buffers
    are left out (the caller regenerates them exactly as WeNet does) and an identity CMVN is
    written as none."""
    cmvn = params[("encoder", "global_cmvn", "mean")], params[("encoder", "global_cmvn", "istd")]
    with_cmvn = not (np.all(cmvn[0] == 0) and np.all(cmvn[1] == 1))
    out = {}
    for key, shape in wenet_shapes(cfg, with_cmvn).items():
        pl = place(key)
        if pl is None:
            continue
        w = pl.layout.to_wenet(np.asarray(params[pl.path][pl.index]))
        if w.shape != shape:
            raise WenetError(f"parameter {'/'.join(pl.path)}{list(pl.index)} gives {key!r} shape {list(w.shape)}, "
                             f"WeNet needs {list(shape)}")
        out[key] = np.ascontiguousarray(w)
    return out


def _check_against_model(shapes: dict[Path_, tuple[int, ...]], expected: dict[Path_, tuple[int, ...]]) -> None:
    missing = sorted("/".join(p) for p in set(expected) - set(shapes))
    extra = sorted("/".join(p) for p in set(shapes) - set(expected))
    wrong = [f"{'/'.join(p)}: table gives {list(shapes[p])}, model has {list(expected[p])}"
             for p in sorted(set(shapes) & set(expected)) if tuple(shapes[p]) != tuple(expected[p])]
    if missing or extra or wrong:
        raise WenetError("the WeNet name table does not fit the U2++ model: "
                         + "; ".join(([f"no WeNet tensor for {', '.join(missing)}"] if missing else [])
                                     + ([f"not in the model: {', '.join(extra)}"] if extra else []) + wrong))


def sinusoid_table(d: int, max_len: int = PE_MAX_LEN) -> np.ndarray:
    """WeNet's PositionalEncoding `pe` [1, max_len, d] in float32 (NumPy; export recomputes it with
    torch to match WeNet's bits)."""
    position = np.arange(max_len, dtype=np.float32)[:, None]
    div_term = np.exp(np.arange(0, d, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / d)))
    pe = np.zeros((max_len, d), np.float32)
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term)
    return pe[None]


# ----------------------------------------------------------------------------- YAML <-> config

# WeNet options U2++ MoE fixes: {option: the only accepted value}. A YAML giving another value is refused.
_ENCODER_FIXED = {
    "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn", "activation_type": "swish",
    "normalize_before": True, "macaron_style": True, "use_cnn_module": True, "cnn_module_norm": "layer_norm",
    "query_bias": True, "key_bias": True, "value_bias": True, "conv_bias": True, "use_sdpa": False,
    "layer_norm_type": "layer_norm", "n_kv_head": None, "head_dim": None, "conv_inner_factor": 2,
    "final_norm": True,
}
_DECODER_FIXED = {
    "input_layer": "embed", "use_output_layer": True, "normalize_before": True, "src_attention": True,
    "query_bias": True, "key_bias": True, "value_bias": True, "activation_type": "relu", "use_sdpa": False,
    "layer_norm_type": "layer_norm", "n_kv_head": None, "head_dim": None, "tie_word_embedding": False,
}
# The fixed options export writes (those AISHELL's U2++ recipe spells out); the others are WeNet's defaults.
_ENCODER_FIXED_WRITTEN = ("pos_enc_layer_type", "selfattention_layer_type", "activation_type", "normalize_before",
                          "use_cnn_module", "cnn_module_norm")
# No effect on the numbers: a training-time memory option, and a kernel size WeNet's Conformer ignores.
_IGNORED = {"gradient_checkpointing", "positionwise_conv_kernel_size"}
_ENCODER_FIELDS = ("output_size", "attention_heads", "linear_units", "num_blocks", "dropout_rate",
                   "positional_dropout_rate", "attention_dropout_rate", "input_layer", "cnn_module_kernel",
                   "causal", "use_dynamic_chunk", "use_dynamic_left_chunk", "static_chunk_size", "norm_eps")
_DECODER_FIELDS = ("attention_heads", "linear_units", "num_blocks", "r_num_blocks", "dropout_rate",
                   "positional_dropout_rate", "self_attention_dropout_rate", "src_attention_dropout_rate",
                   "norm_eps")
_MOE_KEYS = ("mlp_type", "mlp_bias", "n_expert", "n_expert_activated")
# WeNet's own defaults where they differ from U2ppConfig's (ConformerEncoder / TransformerDecoder).
_WENET_ENCODER_DEFAULTS = {"num_blocks": 6, "cnn_module_kernel": 15, "causal": False, "use_dynamic_chunk": False,
                           "mlp_type": "position_wise_feed_forward", "cnn_module_norm": "batch_norm"}
_WENET_DECODER_DEFAULTS = {"num_blocks": 6, "r_num_blocks": 0, "mlp_type": "position_wise_feed_forward"}
_WENET_MODEL_DEFAULTS = {"ctc_weight": 0.5, "reverse_weight": 0.0, "lsm_weight": 0.0, "length_normalized_loss": False}


def _section(conf: dict, fixed: dict, fields: tuple[str, ...], defaults: dict, where: str,
             activation: str) -> dict:
    conf = {**defaults, **(conf or {})}
    for key, value in conf.items():
        if key in fixed:
            if value != fixed[key]:
                raise WenetError(f"{where}.{key}: {value!r} is not supported (U2++ MoE uses {fixed[key]!r})")
        elif key == "conv_norm_eps":
            if value != conf.get("norm_eps", 1e-5):
                raise WenetError(f"{where}.conv_norm_eps: {value!r} differs from norm_eps; U2++ here uses one eps")
        elif key not in fields and key not in _MOE_KEYS and key not in _IGNORED:
            raise WenetError(f"{where}.{key}: unknown or unsupported WeNet option")
    mlp_type = conf.get("mlp_type")
    if mlp_type not in ("position_wise_feed_forward", "moe"):
        raise WenetError(f"{where}.mlp_type: {mlp_type!r} is not supported (position_wise_feed_forward or moe)")
    units = conf.get("linear_units", 2048)
    moe = dataclasses.replace(
        config_lib.MoEConfig(), num_experts=int(conf.get("n_expert", 8)), top_k=int(conf.get("n_expert_activated", 2)),
        expert_ffn_dim=int(units), num_shared_experts=0, router="topk_softmax", expert="ffn", activation=activation,
        expert_bias=bool(conf.get("mlp_bias", True)), aux_loss_alpha=0.0)
    out = {k: conf[k] for k in fields if k in conf}
    out["linear_units"] = units
    out["mlp_type"] = mlp_type
    out["moe"] = moe
    return out


def config_from_wenet(train: dict) -> config_lib.U2ppConfig:
    """U2ppConfig from a WeNet training YAML (as a dict); options U2++ MoE does not have are refused
    naming the option."""
    if not isinstance(train, dict):
        raise WenetError("the training YAML is not a mapping")
    for key, want in (("model", "asr_model"), ("encoder", "conformer"), ("decoder", "bitransformer"), ("ctc", "ctc")):
        value = train.get(key, want)
        if value != want:
            raise WenetError(f"{key}: {value!r} is not supported (U2++ MoE is model asr_model, encoder conformer, "
                             f"decoder bitransformer, ctc ctc)")
    for key in ("input_dim", "output_dim", "encoder_conf", "decoder_conf"):
        if key not in train:
            raise WenetError(f"{key}: missing from the training YAML")
    if train.get("ctc_conf", {}).get("ctc_blank_id", 0) != 0:
        raise WenetError(f"ctc_conf.ctc_blank_id: {train['ctc_conf']['ctc_blank_id']!r} is not supported (blank is 0)")
    special = (train.get("tokenizer_conf") or {}).get("special_tokens") or {}
    vocab = int(train["output_dim"])
    for token in ("<sos>", "<eos>"):
        if token in special and special[token] != vocab - 1:
            raise WenetError(f"tokenizer_conf.special_tokens.{token}: {special[token]} is not supported "
                             f"(U2++ here uses output_dim - 1 = {vocab - 1} for sos/eos)")
    model_conf = {**_WENET_MODEL_DEFAULTS, **(train.get("model_conf") or {})}
    for key in model_conf:
        if key not in _WENET_MODEL_DEFAULTS and key != "ignore_id":
            raise WenetError(f"model_conf.{key}: unknown or unsupported WeNet option")
    if model_conf.get("ignore_id", -1) != -1:
        raise WenetError(f"model_conf.ignore_id: {model_conf['ignore_id']!r} is not supported (-1)")
    if int((train["decoder_conf"] or {}).get("r_num_blocks", 0)) < 1:
        raise WenetError("decoder_conf.r_num_blocks: U2++ needs a right-to-left decoder (r_num_blocks >= 1); a "
                         "BiTransformerDecoder without blocks is not supported")
    enc = _section(train["encoder_conf"], _ENCODER_FIXED, _ENCODER_FIELDS, _WENET_ENCODER_DEFAULTS, "encoder_conf", "silu")
    dec = _section(train["decoder_conf"], _DECODER_FIXED, _DECODER_FIELDS, _WENET_DECODER_DEFAULTS, "decoder_conf", "relu")
    data = {"family": "u2pp", "vocab_size": vocab, "input_dim": int(train["input_dim"]), "encoder": enc, "decoder": dec,
            **{k: model_conf[k] for k in _WENET_MODEL_DEFAULTS}}
    try:
        cfg = config_lib.from_dict(config_lib.U2ppConfig, data)
        cfg.validate()
    except config_lib.ConfigError as e:
        raise WenetError(f"the training YAML gives an invalid U2++ config: {e}") from None
    return cfg


def wenet_yaml(cfg: config_lib.U2ppConfig, cmvn_file: str | None) -> dict:
    """A WeNet training YAML dict for `cfg` from which WeNet's init_model builds the same ASRModel."""
    enc, dec = cfg.encoder, cfg.decoder
    for where, section in (("encoder", enc), ("decoder", dec)):
        if section.mlp_type == "moe" and section.moe.expert_ffn_dim != section.linear_units:
            raise WenetError(f"model.{where}.moe.expert_ffn_dim={section.moe.expert_ffn_dim} differs from "
                             f"linear_units={section.linear_units}; WeNet's experts are linear_units wide")

    def ffn(section) -> dict:
        out = {"mlp_type": section.mlp_type, "mlp_bias": section.moe.expert_bias}
        if section.mlp_type == "moe":
            out.update(n_expert=section.moe.num_experts, n_expert_activated=section.moe.top_k)
        return out

    encoder_conf = {**{k: getattr(enc, k) for k in _ENCODER_FIELDS},
                    **{k: _ENCODER_FIXED[k] for k in _ENCODER_FIXED_WRITTEN}, **ffn(enc)}
    decoder_conf = {**{k: getattr(dec, k) for k in _DECODER_FIELDS}, **ffn(dec)}
    out = {
        "input_dim": cfg.input_dim, "output_dim": cfg.vocab_size,
        "encoder": "conformer", "encoder_conf": encoder_conf,
        "decoder": "bitransformer", "decoder_conf": decoder_conf,
        "ctc": "ctc", "ctc_conf": {"ctc_blank_id": 0},
        "model": "asr_model",
        "model_conf": {k: getattr(cfg, k) for k in _WENET_MODEL_DEFAULTS},
    }
    if cmvn_file is not None:
        out["cmvn"] = "global_cmvn"
        out["cmvn_conf"] = {"cmvn_file": cmvn_file, "is_json_cmvn": True}
    return out


# ----------------------------------------------------------------------------- CMVN files


def read_cmvn_json(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, istd) float32 from WeNet's JSON stats (mean_stat, var_stat, frame_num)."""
    try:
        stats = json.loads(Path(path).read_text())
        return _mean_istd(stats["mean_stat"], stats["var_stat"], stats["frame_num"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise WenetError(f"{path}: not WeNet JSON CMVN stats (mean_stat, var_stat, frame_num): {e}") from None


def read_cmvn_kaldi(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, istd) float32 from Kaldi text stats (`compute-cmvn-stats --binary=false`): one
    `[ sums... count  squares... 0 ]` matrix, as WeNet's _load_kaldi_cmvn reads it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise WenetError(f"{path}: not readable: {e}") from None
    if raw.startswith(b"\0B"):
        raise WenetError(f"{path}: binary Kaldi CMVN stats; recompute them with compute-cmvn-stats --binary=false")
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise WenetError(f"{path}: not Kaldi text CMVN stats: {e}") from None
    arr = text.split()
    if len(arr) < 6 or len(arr) % 2 or arr[0] != "[" or arr[-2] != "0" or arr[-1] != "]":
        raise WenetError(f"{path}: not Kaldi text CMVN stats ('[ sums count squares 0 ]')")
    dim = (len(arr) - 4) // 2
    try:
        return _mean_istd([float(x) for x in arr[1:dim + 1]], [float(x) for x in arr[dim + 2:2 * dim + 2]],
                          float(arr[dim + 1]))
    except ValueError as e:
        raise WenetError(f"{path}: not Kaldi text CMVN stats: {e}") from None


def _mean_istd(mean_stat, var_stat, count) -> tuple[np.ndarray, np.ndarray]:
    """WeNet's load_cmvn arithmetic (float64, variance floored at 1e-20), cast to float32."""
    mean = np.asarray(mean_stat, np.float64) / count
    var = np.asarray(var_stat, np.float64) / count - mean * mean
    if mean.ndim != 1 or var.shape != mean.shape:
        raise ValueError(f"mean and variance statistics of shapes {mean.shape} and {var.shape}")
    istd = 1.0 / np.sqrt(np.maximum(var, 1.0e-20))
    return mean.astype(np.float32), istd.astype(np.float32)


def cmvn_stats(mean: np.ndarray, istd: np.ndarray) -> dict:
    """WeNet JSON stats from which read_cmvn_json gives back `mean` and `istd` (frame_num 1)."""
    mean64 = np.asarray(mean, np.float64)
    var = 1.0 / np.square(np.asarray(istd, np.float64))
    return {"mean_stat": mean64.tolist(), "var_stat": (var + mean64 * mean64).tolist(), "frame_num": 1}




# ----------------------------------------------------------------------------- .pt files and checkpoints


def _torch(command: str):
    try:
        import torch
    except ImportError:
        raise WenetError(f"most u2pp {command} reads and writes PyTorch .pt files and needs torch "
                         f"(pip install torch); nothing else in most_jax does") from None
    return torch


def read_pt(path: str | Path) -> dict[str, np.ndarray]:
    """A WeNet state_dict file as {name: array} (bfloat16 kept as ml_dtypes bfloat16)."""
    torch = _torch("import-wenet")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise WenetError(f"{path}: not a readable PyTorch state_dict: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise WenetError(f"{path}: expected a state_dict (a mapping of tensor names to tensors), "
                         f"as WeNet's save_checkpoint writes")
    return {k: _to_numpy(torch, v, k, path) for k, v in state.items()}


def _to_numpy(torch, t, name: str, path) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    try:
        return t.numpy()
    except TypeError as e:
        raise WenetError(f"{path}: tensor {name!r} of dtype {t.dtype} cannot be read: {e}") from None


def write_pt(state: dict[str, np.ndarray], cfg: config_lib.U2ppConfig, path: str | Path) -> None:
    """torch.save of WeNet's full state_dict: `state` plus the `pe` buffers computed as WeNet does."""
    import ml_dtypes

    torch = _torch("export-wenet")
    pe = _torch_sinusoid(torch, cfg.encoder.output_size)
    with_cmvn = CMVN_KEYS[0] in state
    out = {}
    for key in wenet_shapes(cfg, with_cmvn):
        if _DERIVED.match(key):
            out[key] = pe.clone()
        elif state[key].dtype == ml_dtypes.bfloat16:
            out[key] = torch.from_numpy(state[key].view(np.int16).copy()).view(torch.bfloat16)
        else:
            out[key] = torch.from_numpy(np.array(state[key]))
    torch.save(out, str(path))


def _torch_sinusoid(torch, d: int):
    """WeNet's PositionalEncoding.pe, computed with the same torch ops (so the same bits)."""
    pe = torch.zeros(PE_MAX_LEN, d)
    position = torch.arange(0, PE_MAX_LEN, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(0)


def _check_tables(state: dict[str, np.ndarray], d: int) -> None:
    table = sinusoid_table(d)
    for key in state:
        if _DERIVED.match(key) and tuple(state[key].shape) == table.shape:
            # float32 sin of arguments up to 5000 rad differs between libraries by ~5e-4
            if not np.allclose(np.asarray(state[key], np.float32), table, atol=1e-2):
                raise WenetError(f"tensor {key!r} is not WeNet's sinusoidal position table")


def _cmvn_from_yaml(train: dict, yaml_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if train.get("cmvn") is None:
        return None
    if train["cmvn"] != "global_cmvn":
        raise WenetError(f"cmvn: {train['cmvn']!r} is not supported (global_cmvn)")
    conf = train.get("cmvn_conf") or {}
    if "cmvn_file" not in conf:
        raise WenetError("cmvn_conf.cmvn_file: missing (cmvn is global_cmvn)")
    read = read_cmvn_json if conf.get("is_json_cmvn", True) else read_cmvn_kaldi
    given = Path(conf["cmvn_file"])
    for candidate in (given, yaml_path.parent / given):
        if candidate.is_file():
            return read(candidate)
    raise WenetError(f"cmvn_conf.cmvn_file: {given} not found (looked in the working directory and next to "
                     f"{yaml_path}), and the state_dict holds no {CMVN_KEYS[0]!r}")


def read_yaml(path: str | Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise WenetError(f"{path}: not a readable YAML file: {e}") from None
    if not isinstance(data, dict):
        raise WenetError(f"{path}: not a WeNet training YAML (expected a mapping)")
    return data


def import_wenet(pt_path: str | Path, yaml_path: str | Path, out_dir: str | Path,
                 dtype: str = "float32") -> config_lib.Config:
    """WeNet `final.pt` + `train.yaml` -> a most_jax parameter checkpoint at `out_dir`."""
    from most_jax.checkpoint.param_tree import abstract_params, unflatten
    from most_jax.checkpoint.params_io import save_params
    from most_jax.nn.params import DTYPES

    yaml_path = Path(yaml_path)
    train = read_yaml(yaml_path)
    cfg = dataclasses.replace(config_from_wenet(train), dtype=dtype, param_dtype=dtype)
    state = read_pt(pt_path)
    stats = _cmvn_from_yaml(train, yaml_path)
    if stats is None and any(k in state for k in CMVN_KEYS):
        raise WenetError(f"unexpected tensor {CMVN_KEYS[0]!r}: the YAML has no 'cmvn: global_cmvn', so WeNet's "
                         f"model holds no CMVN")
    if stats is not None and not any(k in state for k in CMVN_KEYS):
        state = {**dict(zip(CMVN_KEYS, stats)), **state}
    _check_tables(state, cfg.encoder.output_size)
    full = config_lib.Config(model=cfg)
    expected = {p: tuple(s.shape) for p, s in abstract_params(cfg).items()}
    params = params_from_wenet(state, cfg, expected, np.dtype(DTYPES[dtype]))
    save_params(Path(out_dir).absolute(), full, unflatten(params))  # Orbax writes absolute paths only
    return full


def export_wenet(ckpt: str | Path, out_dir: str | Path) -> list[Path]:
    """A most_jax U2++ checkpoint -> `out_dir`/final.pt (+ train.yaml, + global_cmvn when the model
    normalises its input), which WeNet's init_model + load_state_dict(strict=True) accept.
    `out_dir` must not exist; it appears only once complete."""
    import yaml

    from most_jax.atomic import atomic_directory
    from most_jax.checkpoint.param_tree import flatten
    from most_jax.checkpoint.params_io import load_checkpoint

    _torch("export-wenet")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise WenetError(f"{out_dir}: already exists; choose a new output directory")
    full, tree = load_checkpoint(ckpt)
    cfg = full.model
    if cfg.family != "u2pp":
        raise WenetError(f"{ckpt}: a {cfg.family} checkpoint, not u2pp; only U2++ exports to WeNet")
    state = wenet_from_params({p: np.asarray(v) for p, v in flatten(tree)}, cfg)
    names = ["final.pt", "train.yaml"] + (["global_cmvn"] if CMVN_KEYS[0] in state else [])
    # train.yaml names the CMVN file where it will finally be (WeNet reads the path as written)
    cmvn_file = str(out_dir.absolute() / "global_cmvn") if len(names) == 3 else None
    with atomic_directory(out_dir) as tmp:
        if cmvn_file is not None:
            (tmp / "global_cmvn").write_text(json.dumps(cmvn_stats(state[CMVN_KEYS[0]], state[CMVN_KEYS[1]])))
        write_pt(state, cfg, tmp / "final.pt")
        (tmp / "train.yaml").write_text(yaml.safe_dump(wenet_yaml(cfg, cmvn_file), sort_keys=False))
    return [out_dir / n for n in names]


__all__ = ["WenetError", "Layout", "Rule", "RULES", "Placement", "place", "wenet_shapes", "param_shapes",
           "params_from_wenet", "wenet_from_params", "sinusoid_table", "config_from_wenet", "wenet_yaml",
           "read_cmvn_json", "read_cmvn_kaldi", "cmvn_stats", "subsample_freq", "PE_MAX_LEN", "CMVN_KEYS", "read_pt", "write_pt",
           "read_yaml", "import_wenet", "export_wenet"]
