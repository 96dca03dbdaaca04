"""Test-only references for the Hugging Face import: tiny transformers DeepSeek-V2 models with large
random weights, checkpoints hand-written in the release layouts, a torch transcription of the SPEC
MAMoE gate (MoST has no transformers class), and the import -> `most logits` path through the CLI.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

from most_jax.cli import main

# Odd sizes where transformers allows them. Its rope code views k_rope/q_rope as complex numbers,
# which needs even strides: kv_lora_rank + rope dim and nope + rope dim must be even.
BASE = dict(vocab_size=101, hidden_size=15, intermediate_size=21, moe_intermediate_size=9, num_hidden_layers=3,
            num_attention_heads=3, n_routed_experts=6, n_shared_experts=1, num_experts_per_tok=2,
            first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=6, qk_nope_head_dim=4, qk_rope_head_dim=6,
            v_head_dim=5, max_position_embeddings=2048, rope_parameters={"rope_type": "default", "rope_theta": 500.0})

# The original MoST thresholds on token ids: <= 100001 text, 100002..100503 audio, above: no group.
MOST_VOCAB = 100600


def tiny_model(seed: int = 0, **overrides) -> DeepseekV2ForCausalLM:
    """A transformers DeepSeek-V2 with weights large enough that routing, rope and every
    transposition change the logits (HF's init std 0.02 would leave them near-uniform)."""
    cfg = DeepseekV2Config(**{**BASE, **overrides}, experts_implementation="eager", attn_implementation="eager")
    torch.manual_seed(seed)
    model = DeepseekV2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight") or "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


def hf_logits(model: DeepseekV2ForCausalLM, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def original_most_modality(tokens: np.ndarray) -> np.ndarray:
    return np.where(tokens <= 100001, 0, np.where(tokens <= 100503, 1, -1)).astype(np.int32)


def install_spec_gates(model: DeepseekV2ForCausalLM, groups: list[tuple[int, int, int]], norm_topk_prob: bool,
                       modality: dict, divide_or_scale: bool = False) -> None:
    """Replaces every MoE router's forward by the SPEC MAMoE gate: softmax over all experts, scores
    outside the token's modality group zeroed (no renormalisation), group-limited selection over the
    masked scores, top-k, weights divided by their sum if norm_topk_prob, times routed_scaling_factor
    (with `divide_or_scale`, DeepSeek-V2's remote code: times routed_scaling_factor only if not divided).
    `groups` holds (modality, first_expert, num_experts); empty means every expert for every token.
    `modality["ids"]` ([B, T]) is read at each forward."""

    def forward(gate, hidden_states):
        x_ND = hidden_states.reshape(-1, gate.hidden_dim).float()
        logits_NE = x_ND @ gate.weight.float().T
        scores_NE = logits_NE.softmax(dim=-1)
        n, e = scores_NE.shape
        if groups:
            ids_N = torch.as_tensor(modality["ids"]).reshape(-1)
            allowed_NE = torch.zeros(n, e, dtype=torch.bool)
            for m, first, count in groups:
                allowed_NE[ids_N == m, first:first + count] = True
            scores_NE = scores_NE * allowed_NE
        if gate.topk_method == "group_limited_greedy":
            group_NG = scores_NE.view(n, gate.num_group, -1).max(dim=-1).values
            keep_NG = torch.zeros_like(group_NG).scatter_(1, group_NG.topk(gate.topk_group, dim=-1)[1], 1.0)
            scores_NE = scores_NE * keep_NG.repeat_interleave(e // gate.num_group, dim=1)
        weight_NK, expert_NK = scores_NE.topk(gate.top_k, dim=-1)
        if norm_topk_prob:
            weight_NK = weight_NK / (weight_NK.sum(dim=-1, keepdim=True) + 1e-20)
        if not (norm_topk_prob and divide_or_scale):
            weight_NK = weight_NK * gate.routed_scaling_factor
        return logits_NE, weight_NK, expert_NK

    for layer in model.model.layers:
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.forward = types.MethodType(forward, layer.mlp.gate)


def release_tensors(model: DeepseekV2ForCausalLM, fused: bool) -> dict[str, torch.Tensor]:
    """The model's tensors named as the DeepSeek-V2-Lite / MoST release stores them (per-expert
    mlp.experts.{j}.*_proj.weight), or fused as transformers holds them in memory."""
    out = {}
    for name, t in model.state_dict().items():
        if name.endswith("experts.gate_up_proj") and not fused:
            f = t.shape[1] // 2
            for j in range(t.shape[0]):
                out[name.replace("gate_up_proj", f"{j}.gate_proj.weight")] = t[j, :f].clone()
                out[name.replace("gate_up_proj", f"{j}.up_proj.weight")] = t[j, f:].clone()
        elif name.endswith("experts.down_proj") and not fused:
            for j in range(t.shape[0]):
                out[name.replace("down_proj", f"{j}.down_proj.weight")] = t[j].clone()
        else:
            out[name] = t.clone().contiguous()
    return out


def release_config(model: DeepseekV2ForCausalLM, model_type: str = "deepseek_v2", **extra) -> dict:
    """config.json in the release spelling (rope_theta + rope_scaling), as DeepSeek-V2-Lite and MoST ship it."""
    c = model.config
    rope = dict(c.rope_parameters)
    theta = rope.pop("rope_theta")
    kind = rope.pop("rope_type")
    data = {k: getattr(c, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts",
        "num_experts_per_tok", "first_k_dense_replace", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
        "qk_rope_head_dim", "v_head_dim", "max_position_embeddings", "rms_norm_eps", "topk_method", "n_group",
        "topk_group", "norm_topk_prob", "routed_scaling_factor", "tie_word_embeddings")}
    data.update(model_type=model_type, hidden_act="silu", moe_layer_freq=1, scoring_func="softmax",
                aux_loss_alpha=0.001, seq_aux=True, rope_theta=theta,
                rope_scaling=None if kind == "default" else {"type": kind, **rope}, **extra)
    return data


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    save_file(tensors, str(path / "model.safetensors"))
    return path


def cli_logits(hf_dir: Path, work: Path, tokens: np.ndarray, modality: np.ndarray | None = None,
               dtype: str = "float32") -> np.ndarray:
    """`most import-hf` then `most logits`, as a user runs them; returns the logits."""
    ckpt = work / "ckpt"
    assert main(["import-hf", str(hf_dir), str(ckpt), "--dtype", dtype]) == 0
    inputs = {"tokens": tokens.astype(np.int32)}
    if modality is not None:
        inputs["modality"] = modality.astype(np.int32)
    np.savez(work / "in.npz", **inputs)
    assert main(["logits", str(ckpt), "--input", str(work / "in.npz"), "--output", str(work / "out.npz")]) == 0
    with np.load(work / "out.npz") as out:
        return out["logits"]
