"""Hugging Face `config.json` <-> most_jax `ModelConfig`, for model_type `deepseek_v2` and `MoST`.

Spellings accepted on import:

* DeepSeek-V2 release (remote code) and MoST: top-level `rope_theta` and a `rope_scaling` dict
  (`{"type": "yarn", "factor": 40, ...}`); keys absent from it take the remote code's defaults
  (original_max_position_embeddings 4096, beta 32/1, mscale 1, mscale_all_dim 0).
* transformers 5.x: a `rope_parameters` dict (`rope_type`, `rope_theta` inside it); absent keys take
  transformers' defaults, and transformers' cos/sin magnitude rule (it ignores `mscale` unless
  `mscale_all_dim` is also set, and honours an explicit `attention_factor`) is converted into the
  equivalent `mscale` of our RopeConfig, so logits match the implementation that wrote the file.
* MoST adds `use_modality_aware_routing`, `text_expert_indices`, `audio_expert_indices`: each index
  list must be a contiguous range and becomes a modality group (text = modality 0, audio = 1).
  Token ids map to modalities with the original MoST vocabulary layout (`VocabConfig` defaults).
* MoST-C (`use_continuous_audio: true`) adds `hubert_hidden_size` (-> `continuous_input_dim`) and
  its waveform markers `begin/end_audio_wave_token_id` (100504/100505 in the original layout);
  its HuBERT is a checkpoint of its own (`most hubert import-hf`), not part of this one.
* `norm_topk_prob` is read as the code that runs the checkpoint reads it (SPEC section 1):
  MoST's code divides then scales; a deepseek_v2 config with DeepSeek's `auto_map` runs the remote
  code, which divides or scales; any other deepseek_v2 config runs transformers' class, which only
  scales. Import records that as `MoEConfig.norm_topk_reading` (norm_topk_reading_of).

Export writes the release spelling (what DeepSeek-V2-Lite and MoST ship), which reads back to the
same ModelConfig (for MoST, with the vocabulary layout in our own field `most_jax_vocab`), up to
the top-k weight rule: the exported norm_topk_prob / routed_scaling_factor are those for which the
reader (MoST's code, or transformers for deepseek_v2) computes our weights, and a model whose
weights transformers cannot compute (one that divides) is refused for deepseek_v2. Fields that would change the computation in ways we do not implement (another
activation, biases, `moe_layer_freq != 1`, sigmoid scoring, other rope types...) are errors naming
the field and the file.
"""

from __future__ import annotations

import dataclasses

import json
import math
from pathlib import Path
from typing import Any, Mapping

from most_jax.config import (AttentionConfig, ConfigError, ModalityGroup, ModelConfig, MoEConfig, RopeConfig,
                             VocabConfig, from_dict, to_dict)
from most_jax.nn.rope import yarn_mscale
from most_jax.vocab import AUDIO, TEXT

MODEL_TYPES = ("deepseek_v2", "MoST")
# Our own config.json field (MoST exports only): the token id layout, so modality ids derived from
# token ids survive an export -> import round trip for vocabularies other than the original one.
VOCAB_FIELD = "most_jax_vocab"

_REMOTE_CODE_YARN_DEFAULTS = {"original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
                              "mscale": 1.0, "mscale_all_dim": 0.0}


class HFConfig:
    """A parsed config.json: the raw mapping plus where it came from, for error messages."""

    def __init__(self, data: Mapping[str, Any], source: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: top level must be a JSON object")
        self.data = dict(data)
        self.source = source

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: field {field!r}: {message}")

    def has(self, field: str) -> bool:
        return self.data.get(field) is not None

    def get(self, field: str, default: Any) -> Any:
        """The value, or `default` where the field is absent or null (HF configs write null for unset)."""
        value = self.data.get(field)
        return default if value is None else value

    def require(self, field: str) -> Any:
        if not self.has(field):
            raise self.error(field, "is required")
        return self.data[field]

    def expect(self, field: str, allowed: tuple, default: Any) -> None:
        value = self.get(field, default)
        if value not in allowed:
            raise self.error(field, f"value {value!r} is not supported (supported: {', '.join(map(repr, allowed))})")


def read_hf_config(hf_dir: str | Path) -> HFConfig:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no config.json in the Hugging Face directory {hf_dir}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return HFConfig(data, str(path))


def model_config_from_hf(hf: HFConfig) -> ModelConfig:
    """Validated ModelConfig equivalent to `hf` (a deepseek_v2 or MoST config.json)."""
    model_type = hf.require("model_type")
    if model_type not in MODEL_TYPES:
        raise hf.error("model_type", f"unknown model_type {model_type!r} (supported: {', '.join(MODEL_TYPES)})")
    hf.expect("hidden_act", ("silu",), "silu")
    hf.expect("attention_bias", (False,), False)
    hf.expect("mlp_bias", (False,), False)
    hf.expect("moe_layer_freq", (1,), 1)
    hf.expect("scoring_func", ("softmax",), "softmax")
    hf.expect("use_continuous_audio", (False, True), False)
    heads = int(hf.require("num_attention_heads"))
    if hf.get("num_key_value_heads", heads) != heads:
        raise hf.error("num_key_value_heads", f"MLA needs num_key_value_heads == num_attention_heads ({heads}), "
                                              f"got {hf.data['num_key_value_heads']}")
    num_layers = int(hf.require("num_hidden_layers"))
    vocab_size = int(hf.require("vocab_size"))
    dense_model = not hf.has("n_routed_experts")  # remote-code convention: no experts -> all layers dense
    cfg = ModelConfig(
        vocab_size=vocab_size,
        hidden_size=int(hf.require("hidden_size")),
        num_layers=num_layers,
        dense_ffn_dim=int(hf.require("intermediate_size")),
        first_k_dense_replace=num_layers if dense_model else int(hf.get("first_k_dense_replace", 0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        init_std=float(hf.get("initializer_range", 0.02)),
        attention=AttentionConfig(
            num_heads=heads,
            q_lora_rank=None if hf.get("q_lora_rank", None) is None else int(hf.data["q_lora_rank"]),
            kv_lora_rank=int(hf.require("kv_lora_rank")),
            qk_nope_head_dim=int(hf.require("qk_nope_head_dim")),
            qk_rope_head_dim=int(hf.require("qk_rope_head_dim")),
            v_head_dim=int(hf.require("v_head_dim")),
        ),
        rope=_rope_from_hf(hf),
        moe=MoEConfig() if dense_model else _moe_from_hf(hf),
        vocab=_most_vocab(hf),
        continuous_input_dim=_continuous_input_dim(hf),
    )
    try:
        cfg.validate("model")
    except ConfigError as e:
        raise ConfigError(f"{hf.source}: the converted config is inconsistent: {e}") from None
    return cfg


def _moe_from_hf(hf: HFConfig) -> MoEConfig:
    method = hf.get("topk_method", "greedy")
    # "gready" is the default spelling in the DeepSeek-V2 and MoST remote-code configs.
    methods = {"greedy": "greedy", "gready": "greedy", "group_limited_greedy": "group_limited_greedy"}
    if method not in methods:
        raise hf.error("topk_method", f"unsupported top-k method {method!r} (supported: {', '.join(methods)})")
    num_experts = int(hf.require("n_routed_experts"))
    return MoEConfig(
        num_experts=num_experts,
        top_k=int(hf.require("num_experts_per_tok")),
        expert_ffn_dim=int(hf.require("moe_intermediate_size")),
        num_shared_experts=int(hf.get("n_shared_experts", 0)),
        scoring="softmax",
        topk_method=methods[method],
        n_group=int(hf.get("n_group", 1)),
        topk_group=int(hf.get("topk_group", 1)),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        norm_topk_reading=norm_topk_reading_of(hf)[0],
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        modality_groups=_modality_groups(hf, num_experts),
        aux_loss_alpha=float(hf.get("aux_loss_alpha", 0.001)),
        seq_aux=bool(hf.get("seq_aux", True)),
    )


def norm_topk_reading_of(hf: HFConfig) -> tuple[str, str]:
    """(MoEConfig.norm_topk_reading, why): how the implementation that wrote `hf` reads norm_topk_prob.
    MoST's config is MoST's reading; a deepseek_v2 config with an `auto_map` is run by DeepSeek's
    remote code; any other deepseek_v2 config by transformers' own class."""
    if hf.data.get("model_type") == "MoST":
        return "divide_then_scale", "model_type MoST"
    auto_map = hf.get("auto_map", {})
    if auto_map:
        if not isinstance(auto_map, Mapping):
            raise hf.error("auto_map", f"expected an object naming the remote code's classes, got {auto_map!r}")
        return "divide_or_scale", f"auto_map names DeepSeek's remote code ({', '.join(sorted(map(str, auto_map)))})"
    return "scale_only", "deepseek_v2 without auto_map: transformers' DeepseekV2 class"


def _modality_groups(hf: HFConfig, num_experts: int) -> tuple[ModalityGroup, ...]:
    if hf.data["model_type"] != "MoST" or not hf.get("use_modality_aware_routing", False):
        return ()
    groups = []
    for field, name, modality in (("text_expert_indices", "text", TEXT), ("audio_expert_indices", "audio", AUDIO)):
        indices = hf.require(field)
        if not isinstance(indices, list) or not indices or not all(isinstance(i, int) for i in indices):
            raise hf.error(field, f"expected a non-empty list of expert indices, got {indices!r}")
        first = indices[0]
        if indices != list(range(first, first + len(indices))):
            raise hf.error(field, f"must be a contiguous ascending range of expert indices, got {indices}")
        if first < 0 or first + len(indices) > num_experts:
            raise hf.error(field, f"indices {first}..{first + len(indices) - 1} fall outside the "
                                  f"{num_experts} routed experts")
        groups.append(ModalityGroup(name=name, modality=modality, first_expert=first, num_experts=len(indices)))
    return tuple(groups)


# MoST-C's config.json (`use_continuous_audio: true`): HuBERT's width and the waveform markers.
WAVE_ID_FIELDS = {"begin_audio_wave_token_id": "begin_wave_id", "end_audio_wave_token_id": "end_wave_id"}


def _continuous_input_dim(hf: HFConfig) -> int:
    if not hf.get("use_continuous_audio", False):
        return 0
    if hf.data["model_type"] != "MoST":
        raise hf.error("use_continuous_audio", "continuous audio input is a MoST-C field (model_type MoST)")
    dim = hf.require("hubert_hidden_size")
    if not isinstance(dim, int) or dim <= 0:
        raise hf.error("hubert_hidden_size", f"expected a positive integer, got {dim!r}")
    return dim


def _most_vocab(hf: HFConfig) -> VocabConfig:
    vocab = _declared_vocab(hf)
    if not hf.get("use_continuous_audio", False):
        return vocab
    # MoST-C names its waveform markers; our own exports carry them in the layout too, and must agree.
    for field, ours in WAVE_ID_FIELDS.items():
        value = hf.get(field, getattr(vocab, ours))
        if not isinstance(value, int) or value < 0:
            raise hf.error(field, f"expected a token id, got {value!r}")
        if hf.has(VOCAB_FIELD) and value != getattr(vocab, ours):
            raise hf.error(field, f"{value} differs from {VOCAB_FIELD}.{ours}={getattr(vocab, ours)}")
        vocab = dataclasses.replace(vocab, **{ours: value})
    return vocab


def _declared_vocab(hf: HFConfig) -> VocabConfig:
    """The `most_jax_vocab` layout when the file carries one (our exports of MoST do), else the
    original MoST layout (fixed id thresholds, whatever the vocabulary size: every id of a small
    vocabulary is text, as in the original) with bos/eos/pad as the checkpoint declares them."""
    if hf.has(VOCAB_FIELD):
        try:
            return from_dict(VocabConfig, hf.data[VOCAB_FIELD], f"{VOCAB_FIELD}.")
        except ConfigError as e:
            raise hf.error(VOCAB_FIELD, str(e)) from None
    default = VocabConfig()

    def token_id(field: str, fallback: int) -> int:
        value = hf.get(field, fallback)
        return value if isinstance(value, int) and value >= 0 else fallback

    eos = token_id("eos_token_id", default.eos_id)
    return dataclasses.replace(default, bos_id=token_id("bos_token_id", default.bos_id), eos_id=eos,
                               pad_id=token_id("pad_token_id", eos))


def _rope_from_hf(hf: HFConfig) -> RopeConfig:
    if hf.has("rope_parameters"):
        field, params, transformers_rules = "rope_parameters", hf.data["rope_parameters"], True
    else:
        field, params, transformers_rules = "rope_scaling", hf.get("rope_scaling", {}), False
    if not isinstance(params, Mapping):
        raise hf.error(field, f"expected a JSON object, got {params!r}")
    theta = float(params.get("rope_theta") or hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise hf.error(f"{field}.partial_rotary_factor", "partial rotary embedding is not supported")
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind != "yarn":
        raise hf.error(f"{field}.rope_type", f"rope type {kind!r} is not supported (supported: 'default', 'yarn')")
    if transformers_rules:
        return _yarn_transformers_rules(hf, field, params, theta)
    values = {**_REMOTE_CODE_YARN_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if "factor" not in params:
        raise hf.error(f"{field}.factor", "is required for yarn")
    return RopeConfig(theta=theta, type="yarn", factor=float(values["factor"]),
                      original_max_position_embeddings=int(values["original_max_position_embeddings"]),
                      beta_fast=float(values["beta_fast"]), beta_slow=float(values["beta_slow"]),
                      mscale=float(values["mscale"]), mscale_all_dim=float(values["mscale_all_dim"]))


def _yarn_transformers_rules(hf: HFConfig, field: str, params: Mapping[str, Any], theta: float) -> RopeConfig:
    if not params.get("truncate", True):
        raise hf.error(f"{field}.truncate", "only the truncated (DeepSeek) YaRN correction range is supported")
    original = int(params.get("original_max_position_embeddings") or hf.get("max_position_embeddings", 2048))
    factor = params.get("factor")
    factor = float(factor) if factor is not None else hf.get("max_position_embeddings", 2048) / original
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    attention_factor = params.get("attention_factor")
    if attention_factor is None and mscale and mscale_all_dim:
        equivalent_mscale = float(mscale)
    elif attention_factor is None:
        # transformers then scales cos/sin by mscale(factor, 1), whatever `mscale` says.
        equivalent_mscale = 1.0 if not mscale_all_dim else _mscale_giving(
            yarn_mscale(factor, 1.0), factor, float(mscale_all_dim), hf, field)
    else:
        equivalent_mscale = _mscale_giving(float(attention_factor), factor, float(mscale_all_dim or 0.0), hf, field)
    return RopeConfig(theta=theta, type="yarn", factor=factor, original_max_position_embeddings=original,
                      beta_fast=float(params.get("beta_fast") or 32.0), beta_slow=float(params.get("beta_slow") or 1.0),
                      mscale=equivalent_mscale, mscale_all_dim=float(mscale_all_dim or 0.0))


def _mscale_giving(cos_sin_scale: float, factor: float, mscale_all_dim: float, hf: HFConfig, field: str) -> float:
    """The `mscale` for which yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim) == cos_sin_scale."""
    if factor <= 1.0:
        if not math.isclose(cos_sin_scale, 1.0):
            raise hf.error(f"{field}.attention_factor", f"a cos/sin scale of {cos_sin_scale} needs factor > 1")
        return 1.0
    return (cos_sin_scale * yarn_mscale(factor, mscale_all_dim) - 1.0) / (0.1 * math.log(factor))


def hf_config_from_model(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
    """config.json contents (release spelling) describing `cfg`; reads back to an equal ModelConfig
    through model_config_from_hf (for deepseek_v2, apart from a non-default VocabConfig)."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type: unknown {model_type!r} (supported: {', '.join(MODEL_TYPES)})")
    a, moe, rope = cfg.attention, cfg.moe, cfg.rope
    dense_model = cfg.num_moe_layers == 0
    out: dict[str, Any] = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.dense_ffn_dim,
        "num_hidden_layers": cfg.num_layers,
        "first_k_dense_replace": 0 if dense_model else cfg.first_k_dense_replace,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": a.num_heads,
        "q_lora_rank": a.q_lora_rank,
        "kv_lora_rank": a.kv_lora_rank,
        "qk_nope_head_dim": a.qk_nope_head_dim,
        "qk_rope_head_dim": a.qk_rope_head_dim,
        "v_head_dim": a.v_head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "initializer_range": cfg.init_std,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": cfg.vocab.bos_id,
        "eos_token_id": cfg.vocab.eos_id,
        "rope_theta": rope.theta,
        "rope_scaling": None if rope.type == "default" else {
            "type": "yarn", "factor": rope.factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
            "beta_fast": rope.beta_fast, "beta_slow": rope.beta_slow,
            "mscale": rope.mscale, "mscale_all_dim": rope.mscale_all_dim},
    }
    if not dense_model:
        if moe.scoring != "softmax":
            raise ConfigError(f"model.moe.scoring: {moe.scoring!r} has no Hugging Face DeepSeek-V2 equivalent")
        norm_topk_prob, routed_scaling_factor = _exported_topk_weights(moe, model_type)
        out.update({
            "n_routed_experts": moe.num_experts,
            "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": moe.expert_ffn_dim,
            "n_shared_experts": moe.num_shared_experts,
            "moe_layer_freq": 1,
            "scoring_func": "softmax",
            "topk_method": moe.topk_method,
            "n_group": moe.n_group,
            "topk_group": moe.topk_group,
            "norm_topk_prob": norm_topk_prob,
            "routed_scaling_factor": routed_scaling_factor,
            "aux_loss_alpha": moe.aux_loss_alpha,
            "seq_aux": moe.seq_aux,
        })
    if cfg.continuous_input_dim:
        if model_type != "MoST":
            raise ConfigError("model.continuous_input_dim: continuous audio input (MoST-C) has no deepseek_v2 "
                              "equivalent; export as MoST")
        out.update({"use_continuous_audio": True, "hubert_hidden_size": cfg.continuous_input_dim,
                    **{field: getattr(cfg.vocab, ours) for field, ours in WAVE_ID_FIELDS.items()}})
    if model_type == "MoST":
        out.update(_most_routing_fields(moe, dense_model))
        out[VOCAB_FIELD] = to_dict(cfg.vocab)
    elif moe.modality_groups and not dense_model:
        raise ConfigError("model.moe.modality_groups: deepseek_v2 has no modality routing; export as MoST")
    return out


def _exported_topk_weights(moe: MoEConfig, model_type: str) -> tuple[bool, float]:
    """(norm_topk_prob, routed_scaling_factor) for which the reader of `model_type` computes the
    routing weights of `moe`: MoST's code divides then scales; transformers' deepseek_v2 (what reads
    an export without auto_map) only scales, so a model that divides cannot be written for it."""
    divide, scale = moe.topk_weight_rule()
    if model_type == "MoST":
        return divide, scale
    if divide:
        raise ConfigError(
            f"model.moe.norm_topk_prob: this model divides its top-k weights by their sum "
            f"(norm_topk_reading {moe.norm_topk_reading!r}), which transformers' deepseek_v2 ignores, so its "
            f"logits would differ; export as MoST, or set model.moe.norm_topk_reading=scale_only if that is "
            f"the model you mean")
    if moe.norm_topk_reading == "scale_only":
        return moe.norm_topk_prob, scale  # transformers ignores the flag: keep what the checkpoint said
    return False, scale


def _most_routing_fields(moe: MoEConfig, dense_model: bool) -> dict[str, Any]:
    if dense_model or not moe.modality_groups:
        return {"use_modality_aware_routing": False, "text_expert_indices": None, "audio_expert_indices": None}
    by_modality = {g.modality: g for g in moe.modality_groups}
    if set(by_modality) != {TEXT, AUDIO}:
        raise ConfigError(f"model.moe.modality_groups: MoST config.json holds exactly a text ({TEXT}) and an "
                          f"audio ({AUDIO}) group, got modalities {sorted(by_modality)}")
    fields = {"use_modality_aware_routing": True}
    for field, modality in (("text_expert_indices", TEXT), ("audio_expert_indices", AUDIO)):
        g = by_modality[modality]
        fields[field] = list(range(g.first_expert, g.first_expert + g.num_experts))
    return fields
