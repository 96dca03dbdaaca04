"""Compute accounting of a MoST config: parameters (total, active per token, embeddings apart) and
forward / training FLOPs per token, layer part by layer part.

Conventions (SPEC section 7): a matmul of an [n, k] input by a [k, m] weight costs 2 n k m FLOPs;
elementwise work (norms, activations, softmax, RoPE) is not counted. Attention scores and values
count the full T x T square at the configured sequence length (our kernel computes it, masked).
A token uses its top_k routed experts, the shared experts and the router; the input embedding is a
lookup (no FLOPs) and is reported apart from the other parameters. Training = 3 x forward
(backward = 2 x forward); rematerialisation's extra forward is not counted (the MFU convention).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from most_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of the network: its parameters, those a token uses, and its forward FLOPs per token."""

    name: str
    params: int
    params_active: int
    flops_per_token: float


@dataclasses.dataclass(frozen=True)
class Budget:
    """The accounting of one config at sequence length `seq_len`."""

    parts: tuple[Part, ...]
    seq_len: int
    embedding_params: int  # the input embedding table (a lookup: no FLOPs, not "active")

    @property
    def params(self) -> int:
        """Every parameter, embedding table included (= the built model's count)."""
        return self.embedding_params + sum(p.params for p in self.parts)

    @property
    def params_non_embedding(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def params_active(self) -> int:
        """Parameters one token's forward pass uses, the input embedding table excluded."""
        return sum(p.params_active for p in self.parts)

    @property
    def forward_flops_per_token(self) -> float:
        return sum(p.flops_per_token for p in self.parts)

    @property
    def train_flops_per_token(self) -> float:
        return 3.0 * self.forward_flops_per_token

    def as_json(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "unit": "per token", "params": self.params,
                "params_embedding": self.embedding_params, "params_non_embedding": self.params_non_embedding,
                "params_active": self.params_active, "forward_flops_per_token": self.forward_flops_per_token,
                "train_flops_per_token": self.train_flops_per_token,
                "parts": [dataclasses.asdict(p) for p in self.parts]}


def _mla(model: ModelConfig, seq_len: int) -> tuple[Part, Part]:
    """Multi-head latent attention of one layer: its projections, and the T x T score/value matmuls."""
    a, d = model.attention, model.hidden_size
    q_dim = a.qk_nope_head_dim + a.qk_rope_head_dim
    if a.q_lora_rank is None:
        q = d * a.num_heads * q_dim
    else:  # down-projection, its RMSNorm, up-projection
        q = d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * a.num_heads * q_dim
    kv = (d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
          + a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim))
    o = a.num_heads * a.v_head_dim * d
    norm_params = 0 if a.q_lora_rank is None else a.q_lora_rank
    norm_params += a.kv_lora_rank
    params = q + kv + o
    projections = Part("attention_proj", params, params, 2.0 * (params - norm_params))
    scores = Part("attention_scores", 0, 0, 2.0 * seq_len * a.num_heads * (q_dim + a.v_head_dim))
    return projections, scores


def _scaled(part: Part, n: int, name: str | None = None) -> Part:
    return Part(name or part.name, part.params * n, part.params_active * n, part.flops_per_token * n)


def most_budget(model: ModelConfig, seq_len: int) -> Budget:
    """The accounting of a MoST decoder at `seq_len` tokens per row."""
    d, moe = model.hidden_size, model.moe
    proj, scores = _mla(model, seq_len)
    layers = model.num_layers
    norms = 2 * d  # attention and FFN RMSNorm of every layer
    dense = 3 * d * model.dense_ffn_dim
    f = moe.expert_ffn_dim
    expert = 3 * d * f if moe.expert == "swiglu" else 2 * d * f
    expert_bias = f + d if moe.expert == "ffn" and moe.expert_bias else 0
    shared = moe.num_shared_experts * 3 * d * f  # shared experts are one SwiGLU
    router = d * moe.num_experts
    n_moe = model.num_moe_layers
    parts = (
        _scaled(proj, layers),
        _scaled(scores, layers),
        Part("layer_norms", layers * norms + d, layers * norms + d, 0.0),  # + the final norm
        Part("dense_ffn", model.first_k_dense_replace * dense, model.first_k_dense_replace * dense,
             2.0 * model.first_k_dense_replace * dense),
        Part("routed_experts", n_moe * moe.num_experts * (expert + expert_bias),
             n_moe * moe.top_k * (expert + expert_bias),
             2.0 * n_moe * moe.top_k * expert),
        Part("shared_experts", n_moe * shared, n_moe * shared, 2.0 * n_moe * shared),
        Part("router", n_moe * router, n_moe * router, 2.0 * n_moe * router),
        Part("lm_head", d * model.vocab_size, d * model.vocab_size, 2.0 * d * model.vocab_size),
    )
    return Budget(parts=parts, seq_len=seq_len, embedding_params=model.vocab_size * d)
