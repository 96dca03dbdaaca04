"""WeNet's ConformerEncoder (wenet/models/transformer/encoder.py at the commit in __init__.py).

Full-utterance forward with WeNet's chunk masks, and the streaming path: forward_chunk with the
attention cache (layers, heads, cache_t, 2 * d_k) and conv cache (layers, 1, d, kernel - 1), and
forward_chunk_by_chunk, which feeds overlapping input windows because the subsampling is not cached.
"""

from typing import Tuple

import torch

from wenet_ref.modules import (
    ACTIVATIONS,
    EMB_CLASSES,
    MLP_CLASSES,
    SUBSAMPLE_CLASSES,
    ConformerEncoderLayer,
    ConvolutionModule,
    RelPositionMultiHeadedAttention,
    MultiHeadedAttention,
    add_optional_chunk_mask,
    make_pad_mask,
)

ATTENTION_CLASSES = {
    "selfattn": MultiHeadedAttention,
    "rel_selfattn": RelPositionMultiHeadedAttention,
}


class ConformerEncoder(torch.nn.Module):
    """BaseEncoder + ConformerEncoder of WeNet, for the options U2++ uses."""

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d",
        pos_enc_layer_type: str = "rel_pos",
        normalize_before: bool = True,
        static_chunk_size: int = 0,
        use_dynamic_chunk: bool = False,
        global_cmvn: torch.nn.Module = None,
        use_dynamic_left_chunk: bool = False,
        macaron_style: bool = True,
        selfattention_layer_type: str = "rel_selfattn",
        activation_type: str = "swish",
        use_cnn_module: bool = True,
        cnn_module_kernel: int = 15,
        causal: bool = False,
        cnn_module_norm: str = "layer_norm",
        query_bias: bool = True,
        key_bias: bool = True,
        value_bias: bool = True,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        mlp_type: str = "position_wise_feed_forward",
        mlp_bias: bool = True,
        n_expert: int = 8,
        n_expert_activated: int = 2,
        conv_norm_eps: float = 1e-5,
        conv_inner_factor: int = 2,
        final_norm: bool = True,
    ):
        super().__init__()
        self._output_size = output_size
        self.global_cmvn = global_cmvn
        self.embed = SUBSAMPLE_CLASSES[input_layer](
            input_size,
            output_size,
            dropout_rate,
            EMB_CLASSES[pos_enc_layer_type](output_size, positional_dropout_rate),
        )
        self.normalize_before = normalize_before
        self.final_norm = final_norm
        self.after_norm = torch.nn.LayerNorm(output_size, eps=norm_eps)
        self.static_chunk_size = static_chunk_size
        self.use_dynamic_chunk = use_dynamic_chunk
        self.use_dynamic_left_chunk = use_dynamic_left_chunk

        activation = ACTIVATIONS[activation_type]()
        attn_args = (attention_heads, output_size, attention_dropout_rate, query_bias, key_bias, value_bias)
        mlp_args = (output_size, linear_units, dropout_rate, activation, mlp_bias, n_expert, n_expert_activated)
        conv_args = (
            output_size,
            cnn_module_kernel,
            activation,
            cnn_module_norm,
            causal,
            conv_bias,
            conv_norm_eps,
            conv_inner_factor,
        )
        mlp_class = MLP_CLASSES[mlp_type]
        self.encoders = torch.nn.ModuleList(
            [
                ConformerEncoderLayer(
                    output_size,
                    ATTENTION_CLASSES[selfattention_layer_type](*attn_args),
                    mlp_class(*mlp_args),
                    mlp_class(*mlp_args) if macaron_style else None,
                    ConvolutionModule(*conv_args) if use_cnn_module else None,
                    dropout_rate,
                    normalize_before,
                    norm_eps=norm_eps,
                )
                for _ in range(num_blocks)
            ]
        )

    def output_size(self) -> int:
        return self._output_size

    def forward(
        self,
        xs: torch.Tensor,
        xs_lens: torch.Tensor,
        decoding_chunk_size: int = 0,
        num_decoding_left_chunks: int = -1,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, U, I) features -> (B, T, D) encoder output and its (B, 1, T) padding mask."""
        T = xs.size(1)
        masks = ~make_pad_mask(xs_lens, T).unsqueeze(1)
        if self.global_cmvn is not None:
            xs = self.global_cmvn(xs)
        xs, pos_emb, masks = self.embed(xs, masks)
        mask_pad = masks
        chunk_masks = add_optional_chunk_mask(
            xs,
            masks,
            self.use_dynamic_chunk,
            self.use_dynamic_left_chunk,
            decoding_chunk_size,
            self.static_chunk_size,
            num_decoding_left_chunks,
            max_chunk_size=int(100.0 / self.embed.subsampling_rate),
        )
        for layer in self.encoders:
            xs, chunk_masks, _, _ = layer(xs, chunk_masks, pos_emb, mask_pad)
        if self.normalize_before and self.final_norm:
            xs = self.after_norm(xs)
        return xs, masks

    def forward_chunk(
        self,
        xs: torch.Tensor,
        offset: int,
        required_cache_size: int,
        att_cache: torch.Tensor = torch.zeros(0, 0, 0, 0),
        cnn_cache: torch.Tensor = torch.zeros(0, 0, 0, 0),
        att_mask: torch.Tensor = torch.ones((0, 0, 0), dtype=torch.bool),
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One streaming step on (1, (chunk - 1) * rate + right_context + 1, I) input frames."""
        assert xs.size(0) == 1
        tmp_masks = torch.ones(1, xs.size(1), device=xs.device, dtype=torch.bool).unsqueeze(1)
        if self.global_cmvn is not None:
            xs = self.global_cmvn(xs)
        xs, pos_emb, _ = self.embed(xs, tmp_masks, offset)
        elayers, cache_t1 = att_cache.size(0), att_cache.size(2)
        chunk_size = xs.size(1)
        attention_key_size = cache_t1 + chunk_size
        pos_emb = self.embed.position_encoding(offset=offset - cache_t1, size=attention_key_size)
        if required_cache_size < 0:
            next_cache_start = 0
        elif required_cache_size == 0:
            next_cache_start = attention_key_size
        else:
            next_cache_start = max(attention_key_size - required_cache_size, 0)
        r_att_cache = []
        r_cnn_cache = []
        for i, layer in enumerate(self.encoders):
            if elayers == 0:
                kv_cache = (att_cache, att_cache)
            else:
                i_kv_cache = att_cache[i : i + 1]
                size = att_cache.size(-1) // 2
                kv_cache = (i_kv_cache[:, :, :, :size], i_kv_cache[:, :, :, size:])
            xs, _, new_kv_cache, new_cnn_cache = layer(
                xs,
                att_mask,
                pos_emb,
                att_cache=kv_cache,
                cnn_cache=cnn_cache[i] if cnn_cache.size(0) > 0 else cnn_cache,
            )
            new_att_cache = torch.cat(new_kv_cache, dim=-1)
            r_att_cache.append(new_att_cache[:, :, next_cache_start:, :])
            r_cnn_cache.append(new_cnn_cache.unsqueeze(0))
        if self.normalize_before and self.final_norm:
            xs = self.after_norm(xs)
        return xs, torch.cat(r_att_cache, dim=0), torch.cat(r_cnn_cache, dim=0)

    def forward_chunk_by_chunk(
        self,
        xs: torch.Tensor,
        decoding_chunk_size: int,
        num_decoding_left_chunks: int = -1,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stream (1, U, I) through forward_chunk; equals the chunk-masked full forward."""
        assert decoding_chunk_size > 0
        assert self.static_chunk_size > 0 or self.use_dynamic_chunk
        subsampling = self.embed.subsampling_rate
        context = self.embed.right_context + 1
        stride = subsampling * decoding_chunk_size
        decoding_window = (decoding_chunk_size - 1) * subsampling + context
        num_frames = xs.size(1)
        att_cache = torch.zeros((0, 0, 0, 0), device=xs.device)
        cnn_cache = torch.zeros((0, 0, 0, 0), device=xs.device)
        outputs = []
        offset = 0
        required_cache_size = decoding_chunk_size * num_decoding_left_chunks
        for cur in range(0, num_frames - context + 1, stride):
            end = min(cur + decoding_window, num_frames)
            y, att_cache, cnn_cache = self.forward_chunk(
                xs[:, cur:end, :], offset, required_cache_size, att_cache, cnn_cache
            )
            outputs.append(y)
            offset += y.size(1)
        ys = torch.cat(outputs, 1)
        masks = torch.ones((1, 1, ys.size(1)), device=ys.device, dtype=torch.bool)
        return ys, masks
