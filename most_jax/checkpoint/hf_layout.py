"""Where each tensor of a Hugging Face DeepSeek-V2 / MoST checkpoint lives in the MoST parameter tree.

HF linear weights are [out, in]; our kernels are [in, out], so those are transposed. Decoder layers
live in two stacks with a leading layer axis: layers 0..first_k_dense_replace-1 in `dense_layers`,
the rest in `moe_layers`. Routed experts are one tensor per expert in the release layout
(`mlp.experts.{j}.{gate,up,down}_proj.weight`, as DeepSeek-V2-Lite, MoST and transformers'
save_pretrained write them) and one stacked [E, ...] leaf per layer on our side.

`release_layout` lists every tensor of that layout, in file order (embedding, layer by layer, final
norm, head), with the leaf, layer and expert it belongs to: export walks it to write, import to
check and read. Both directions share this one table.
"""

from __future__ import annotations

import dataclasses

import jax

from most_jax.config import ModelConfig

Path_ = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF tensor `hf` (relative to its layer) -> our parameter `ours`; `transpose` for [out,in] kernels."""

    hf: str
    ours: Path_
    transpose: bool


def _attention_rules(cfg: ModelConfig) -> list[Rule]:
    if cfg.attention.q_lora_rank is None:
        q = [Rule("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), True)]
    else:
        q = [Rule("self_attn.q_a_proj.weight", ("attn", "q_a_proj", "kernel"), True),
             Rule("self_attn.q_a_layernorm.weight", ("attn", "q_a_norm", "scale"), False),
             Rule("self_attn.q_b_proj.weight", ("attn", "q_b_proj", "kernel"), True)]
    return [
        Rule("input_layernorm.weight", ("attn_norm", "scale"), False),
        *q,
        Rule("self_attn.kv_a_proj_with_mqa.weight", ("attn", "kv_a_proj", "kernel"), True),
        Rule("self_attn.kv_a_layernorm.weight", ("attn", "kv_a_norm", "scale"), False),
        Rule("self_attn.kv_b_proj.weight", ("attn", "kv_b_proj", "kernel"), True),
        Rule("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), True),
        Rule("post_attention_layernorm.weight", ("ffn_norm", "scale"), False),
    ]


def _swiglu_rules(hf_prefix: str, ours: Path_) -> list[Rule]:
    return [Rule(f"{hf_prefix}.{p}.weight", ours + (p, "kernel"), True) for p in ("gate_proj", "up_proj", "down_proj")]


def layer_rules(cfg: ModelConfig, moe: bool) -> list[Rule]:
    """The one-to-one (non-expert) tensors of a decoder layer."""
    rules = _attention_rules(cfg)
    if not moe:
        return rules + _swiglu_rules("mlp", ("mlp",))
    rules.append(Rule("mlp.gate.weight", ("moe", "gate"), True))
    if cfg.moe.num_shared_experts > 0:
        rules += _swiglu_rules("mlp.shared_experts", ("moe", "shared"))
    return rules


EMBED = Rule("model.embed_tokens.weight", ("embed", "embedding"), False)
# MoST-C's projection of continuous speech frames (HF Linear(hubert_hidden_size -> hidden_size)).
# The original release's modeling code was not available to check its tensor names; these are ours.
SPEECH_PROJ = (Rule("model.audio_projection.weight", ("speech_proj", "kernel"), True),
               Rule("model.audio_projection.bias", ("speech_proj", "bias"), False))
HEAD = Rule("lm_head.weight", ("lm_head",), True)
FINAL_NORM = Rule("model.norm.weight", ("final_norm", "scale"), False)
# HF projection name -> our stacked expert leaf ([E, D, F] for gate/up, [E, F, D] for down).
EXPERT_PATHS = {"gate_proj": ("moe", "w_gate"), "up_proj": ("moe", "w_up"), "down_proj": ("moe", "w_down")}


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor and its place in our tree: `path`[layer][expert], transposed if `transpose`."""

    hf: str
    path: Path_
    layer: int | None  # index within the layer stack; None for top-level leaves
    expert: int | None  # index along the expert axis of a stacked expert leaf
    transpose: bool
    hf_shape: tuple[int, ...]


def stack_of(cfg: ModelConfig, layer: int) -> tuple[str, int]:
    """(stack name, index within the stack) of decoder layer `layer`."""
    if layer >= cfg.first_k_dense_replace:
        return "moe_layers", layer - cfg.first_k_dense_replace
    return "dense_layers", layer


def release_layout(cfg: ModelConfig, expected: dict[Path_, jax.ShapeDtypeStruct]) -> list[TensorMap]:
    """Every tensor of the per-expert release layout of `cfg`, in file order; `expected` is
    `abstract_params(cfg)` (our leaf shapes)."""

    def one(rule: Rule, name: str, path: Path_, layer: int | None, expert: int | None = None) -> TensorMap:
        shape = expected[path].shape[(layer is not None) + (expert is not None):]
        return TensorMap(name, path, layer, expert, rule.transpose, tuple(shape[::-1] if rule.transpose else shape))

    out = [one(EMBED, EMBED.hf, EMBED.ours, None)]
    if cfg.continuous_input_dim:
        out += [one(rule, rule.hf, rule.ours, None) for rule in SPEECH_PROJ]
    for layer in range(cfg.num_layers):
        stack, index = stack_of(cfg, layer)
        is_moe = stack == "moe_layers"
        for rule in layer_rules(cfg, is_moe):
            out.append(one(rule, f"model.layers.{layer}.{rule.hf}", (stack,) + rule.ours, index))
        if is_moe:
            # Projection-major, so a writer walking this list needs one stacked leaf's slice at a time.
            for kind, leaf in EXPERT_PATHS.items():
                for j in range(cfg.moe.num_experts):
                    name = f"model.layers.{layer}.mlp.experts.{j}.{kind}.weight"
                    out.append(one(Rule(name, leaf, True), name, (stack,) + leaf, index, j))
    out += [one(FINAL_NORM, FINAL_NORM.hf, FINAL_NORM.ours, None), one(HEAD, HEAD.hf, HEAD.ours, None)]
    return out
