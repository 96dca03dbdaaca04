"""WeNet's attention decoders (wenet/models/transformer/{decoder,decoder_layer}.py, commit in
__init__.py): DecoderLayer, TransformerDecoder (with forward_one_step and its per-layer caches) and
BiTransformerDecoder (left_decoder + right_decoder reading the reversed target)."""

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from wenet_ref.modules import (
    ACTIVATIONS,
    EMB_CLASSES,
    MLP_CLASSES,
    KVCache,
    MultiHeadedAttention,
    MultiHeadedCrossAttention,
    make_pad_mask,
    subsequent_mask,
)


class DecoderLayer(nn.Module):
    """Pre-LN: self-attention (norm1), source attention (norm2), FFN (norm3)."""

    def __init__(
        self,
        size: int,
        self_attn: nn.Module,
        src_attn: Optional[nn.Module],
        feed_forward: nn.Module,
        dropout_rate: float,
        normalize_before: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.size = size
        self.self_attn = self_attn
        self.src_attn = src_attn
        self.feed_forward = feed_forward
        self.norm1 = nn.LayerNorm(size, eps=norm_eps)
        self.norm2 = nn.LayerNorm(size, eps=norm_eps)
        self.norm3 = nn.LayerNorm(size, eps=norm_eps)
        self.dropout = nn.Dropout(dropout_rate)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: torch.Tensor,
        tgt_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        cache: Optional[Dict[str, Optional[KVCache]]] = None,
    ):
        """With a cache whose self_att_cache is set, only the last position is computed."""
        if cache is not None:
            att_cache = cache["self_att_cache"]
            cross_att_cache = cache["cross_att_cache"]
        else:
            att_cache, cross_att_cache = None, None

        residual = tgt
        if self.normalize_before:
            tgt = self.norm1(tgt)
        if att_cache is None:
            tgt_q = tgt
            tgt_q_mask = tgt_mask
            att_cache = (torch.empty(0, 0, 0, 0), torch.empty(0, 0, 0, 0))
        else:
            tgt_q = tgt[:, -1:, :]
            residual = residual[:, -1:, :]
            tgt_q_mask = tgt_mask[:, -1:, :]
        x, new_att_cache = self.self_attn(tgt_q, tgt_q, tgt_q, tgt_q_mask, cache=att_cache)
        if cache is not None:
            cache["self_att_cache"] = new_att_cache
        x = residual + self.dropout(x)
        if not self.normalize_before:
            x = self.norm1(x)

        if self.src_attn is not None:
            residual = x
            if self.normalize_before:
                x = self.norm2(x)
            if cross_att_cache is None:
                cross_att_cache = (torch.empty(0, 0, 0, 0), torch.empty(0, 0, 0, 0))
            x, new_cross_cache = self.src_attn(x, memory, memory, memory_mask, cache=cross_att_cache)
            if cache is not None:
                cache["cross_att_cache"] = new_cross_cache
            x = residual + self.dropout(x)
            if not self.normalize_before:
                x = self.norm2(x)

        residual = x
        if self.normalize_before:
            x = self.norm3(x)
        x = residual + self.dropout(self.feed_forward(x))
        if not self.normalize_before:
            x = self.norm3(x)
        return x, tgt_mask, memory, memory_mask


class TransformerDecoder(nn.Module):
    """Token embedding (`embed.0`) + sinusoidal positions (`embed.1`), layers, after_norm,
    output_layer."""

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        self_attention_dropout_rate: float = 0.0,
        src_attention_dropout_rate: float = 0.0,
        input_layer: str = "embed",
        use_output_layer: bool = True,
        normalize_before: bool = True,
        src_attention: bool = True,
        query_bias: bool = True,
        key_bias: bool = True,
        value_bias: bool = True,
        activation_type: str = "relu",
        norm_eps: float = 1e-5,
        mlp_type: str = "position_wise_feed_forward",
        mlp_bias: bool = True,
        n_expert: int = 8,
        n_expert_activated: int = 2,
        src_query_bias: bool = True,
        src_key_bias: bool = True,
        src_value_bias: bool = True,
    ):
        super().__init__()
        attention_dim = encoder_output_size
        activation = ACTIVATIONS[activation_type]()
        self.embed = nn.Sequential(
            nn.Embedding(vocab_size, attention_dim),
            EMB_CLASSES[input_layer](attention_dim, positional_dropout_rate),
        )
        self.normalize_before = normalize_before
        self.after_norm = nn.LayerNorm(attention_dim, eps=norm_eps)
        self.use_output_layer = use_output_layer
        if use_output_layer:
            self.output_layer = nn.Linear(attention_dim, vocab_size)
        else:
            self.output_layer = nn.Identity()
        self.num_blocks = num_blocks
        mlp_class = MLP_CLASSES[mlp_type]
        self.decoders = nn.ModuleList(
            [
                DecoderLayer(
                    attention_dim,
                    MultiHeadedAttention(
                        attention_heads,
                        attention_dim,
                        self_attention_dropout_rate,
                        query_bias,
                        key_bias,
                        value_bias,
                    ),
                    MultiHeadedCrossAttention(
                        attention_heads,
                        attention_dim,
                        src_attention_dropout_rate,
                        src_query_bias,
                        src_key_bias,
                        src_value_bias,
                    )
                    if src_attention
                    else None,
                    mlp_class(
                        attention_dim,
                        linear_units,
                        dropout_rate,
                        activation,
                        mlp_bias,
                        n_expert=n_expert,
                        n_expert_activated=n_expert_activated,
                    ),
                    dropout_rate,
                    normalize_before,
                    norm_eps,
                )
                for _ in range(self.num_blocks)
            ]
        )

    def forward(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        ys_in_pad: torch.Tensor,
        ys_in_lens: torch.Tensor,
        r_ys_in_pad: torch.Tensor = torch.empty(0),
        reverse_weight: float = 0.0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, L, V) over causal + padding masks."""
        tgt = ys_in_pad
        maxlen = tgt.size(1)
        tgt_mask = ~make_pad_mask(ys_in_lens, maxlen).unsqueeze(1)
        tgt_mask = tgt_mask.to(tgt.device)
        m = subsequent_mask(tgt_mask.size(-1), device=tgt_mask.device).unsqueeze(0)
        tgt_mask = tgt_mask & m
        x, _ = self.embed(tgt)
        for layer in self.decoders:
            x, tgt_mask, memory, memory_mask = layer(x, tgt_mask, memory, memory_mask)
        if self.normalize_before:
            x = self.after_norm(x)
        if self.use_output_layer:
            x = self.output_layer(x)
        olens = tgt_mask.sum(1)
        return x, torch.tensor(0.0), olens

    def forward_one_step(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        tgt: torch.Tensor,
        tgt_mask: torch.Tensor,
        cache: Dict[str, Dict[str, KVCache]],
    ) -> torch.Tensor:
        """Log-probs of the next token; `cache` holds self_att_cache / cross_att_cache per layer
        ('layer_i' -> (k, v)) and is updated in place."""
        x, _ = self.embed(tgt)
        update_cross_att_cache = True
        if len(cache["cross_att_cache"]) != 0:
            assert len(cache["cross_att_cache"]) == self.num_blocks
            update_cross_att_cache = False
        for i, decoder in enumerate(self.decoders):
            layer_i = f"layer_{i}"
            c = {
                "self_att_cache": cache["self_att_cache"].get(layer_i, None),
                "cross_att_cache": cache["cross_att_cache"].get(layer_i, None),
            }
            x, tgt_mask, memory, memory_mask = decoder(x, tgt_mask, memory, memory_mask, cache=c)
            cache["self_att_cache"][layer_i] = c["self_att_cache"]
            if update_cross_att_cache:
                cache["cross_att_cache"][layer_i] = c["cross_att_cache"]
        if self.normalize_before:
            y = self.after_norm(x[:, -1])
        else:
            y = x[:, -1]
        if self.use_output_layer:
            y = torch.log_softmax(self.output_layer(y), dim=-1)
        return y


class BiTransformerDecoder(nn.Module):
    """left_decoder (num_blocks, L2R) and right_decoder (r_num_blocks, R2L)."""

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        r_num_blocks: int = 0,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        self_attention_dropout_rate: float = 0.0,
        src_attention_dropout_rate: float = 0.0,
        input_layer: str = "embed",
        use_output_layer: bool = True,
        normalize_before: bool = True,
        src_attention: bool = True,
        query_bias: bool = True,
        key_bias: bool = True,
        value_bias: bool = True,
        activation_type: str = "relu",
        norm_eps: float = 1e-5,
        mlp_type: str = "position_wise_feed_forward",
        mlp_bias: bool = True,
        n_expert: int = 8,
        n_expert_activated: int = 2,
    ):
        super().__init__()

        def one(blocks: int) -> TransformerDecoder:
            return TransformerDecoder(
                vocab_size,
                encoder_output_size,
                attention_heads,
                linear_units,
                blocks,
                dropout_rate,
                positional_dropout_rate,
                self_attention_dropout_rate,
                src_attention_dropout_rate,
                input_layer,
                use_output_layer,
                normalize_before,
                src_attention=src_attention,
                query_bias=query_bias,
                key_bias=key_bias,
                value_bias=value_bias,
                activation_type=activation_type,
                norm_eps=norm_eps,
                mlp_type=mlp_type,
                mlp_bias=mlp_bias,
                n_expert=n_expert,
                n_expert_activated=n_expert_activated,
            )

        self.left_decoder = one(num_blocks)
        self.right_decoder = one(r_num_blocks)

    def forward(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        ys_in_pad: torch.Tensor,
        ys_in_lens: torch.Tensor,
        r_ys_in_pad: torch.Tensor,
        reverse_weight: float = 0.0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        l_x, _, olens = self.left_decoder(memory, memory_mask, ys_in_pad, ys_in_lens)
        r_x = torch.tensor(0.0)
        if reverse_weight > 0.0:
            r_x, _, olens = self.right_decoder(memory, memory_mask, r_ys_in_pad, ys_in_lens)
        return l_x, r_x, olens

    def forward_one_step(self, memory, memory_mask, tgt, tgt_mask, cache):
        return self.left_decoder.forward_one_step(memory, memory_mask, tgt, tgt_mask, cache)
