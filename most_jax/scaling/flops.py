"""Compute accounting of a MoST config: parameters (total, active per token, embeddings apart) and
forward / training FLOPs per token, layer part by layer part (U2++ configs: u2pp_flops.py).

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

from most_jax.config import ModelConfig, MoEConfig


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of the network: its parameters, those a token uses, and its forward FLOPs per token."""

    name: str
    params: int
    params_active: int
    flops_per_token: float


@dataclasses.dataclass(frozen=True)
class Budget:
    """The accounting of one config for inputs of `shape` (MoST: seq_len; U2++: frames and tokens);
    FLOPs are per `unit` (MoST: a token of a packed row; U2++: a 10 ms input feature frame)."""

    parts: tuple[Part, ...]
    embedding_params: int  # input embedding tables (lookups: no FLOPs, not "active")
    unit: str
    shape: dict[str, int]

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

    def as_json(self, tokens_per_step: int | None = None) -> dict[str, Any]:
        """One JSON-ready object; per step too when `tokens_per_step` (units of a step batch) is given.
        `flops_per_token_train_6n` is the 6 x active parameters rule, next to the exact count."""
        out = {"unit": self.unit, **self.shape, "params_total": self.params,
               "params_embedding": self.embedding_params, "params_non_embedding": self.params_non_embedding,
               "params_active": self.params_active, "flops_per_token_forward": self.forward_flops_per_token,
               "flops_per_token_train": self.train_flops_per_token,
               "flops_per_token_train_6n": 6.0 * self.params_active,
               "breakdown": {p.name: p.flops_per_token for p in self.parts},
               "parts": [dataclasses.asdict(p) for p in self.parts]}
        if tokens_per_step is not None:
            out |= {"tokens_per_step": tokens_per_step,
                    "flops_per_step_forward": tokens_per_step * self.forward_flops_per_token,
                    "flops_per_step_train": tokens_per_step * self.train_flops_per_token}
        return out


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


def moe_parts(d: int, moe: MoEConfig, layers: int, prefix: str = "") -> tuple[Part, Part, Part]:
    """(routed experts, shared experts, router) of `layers` MoE layers of width d, per token: a token
    runs its top_k routed experts (each moe.expert_ffn_dim wide), the shared ones and the router."""
    f = moe.expert_ffn_dim
    expert = 3 * d * f if moe.expert == "swiglu" else 2 * d * f
    expert_bias = f + d if moe.expert == "ffn" and moe.expert_bias else 0
    shared = moe.num_shared_experts * 3 * d * f  # shared experts are one SwiGLU
    router = d * moe.num_experts
    return (Part(f"{prefix}routed_experts", layers * moe.num_experts * (expert + expert_bias),
                 layers * moe.top_k * (expert + expert_bias), 2.0 * layers * moe.top_k * expert),
            Part(f"{prefix}shared_experts", layers * shared, layers * shared, 2.0 * layers * shared),
            Part(f"{prefix}router", layers * router, layers * router, 2.0 * layers * router))


def most_budget(model: ModelConfig, seq_len: int) -> Budget:
    """The accounting of a MoST decoder at `seq_len` tokens per row."""
    d = model.hidden_size
    proj, scores = _mla(model, seq_len)
    layers = model.num_layers
    norms = 2 * d  # attention and FFN RMSNorm of every layer
    dense = 3 * d * model.dense_ffn_dim
    parts = (
        _scaled(proj, layers),
        _scaled(scores, layers),
        Part("layer_norms", layers * norms + d, layers * norms + d, 0.0),  # + the final norm
        Part("dense_ffn", model.first_k_dense_replace * dense, model.first_k_dense_replace * dense,
             2.0 * model.first_k_dense_replace * dense),
        *moe_parts(d, model.moe, model.num_moe_layers),
        Part("lm_head", d * model.vocab_size, d * model.vocab_size, 2.0 * d * model.vocab_size),
    )
    return Budget(parts=parts, embedding_params=model.vocab_size * d, unit="token", shape={"seq_len": seq_len})
