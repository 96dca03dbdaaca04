"""WeNet's U2++ building blocks, transcribed to plain PyTorch as the numerical reference.

Transcribed from wenet-e2e/wenet at commit 015469960db73eb19c49a48c020d5ac9db69bae5
(wenet/models/transformer/{attention,positionwise_feed_forward,embedding,cmvn,subsampling,
convolution,encoder_layer}.py and wenet/utils/mask.py). Class and attribute names are WeNet's so
that ``state_dict()`` keys match a WeNet checkpoint exactly; the computation follows WeNet step by
step (same reshapes, same float32 softmax, same cache layout), because this file is what the JAX
model is compared against. Only the paths U2++ MoE uses are kept: no sdpa, no GQA/MQA head sharing,
no rope/Shaw attention, no batch-norm or rms-norm, no non-conv2d subsampling.
"""

import math
from typing import Tuple, Union

import torch
from torch import nn

KVCache = Tuple[torch.Tensor, torch.Tensor]


def _empty_kv() -> KVCache:
    return torch.zeros(0, 0, 0, 0), torch.zeros(0, 0, 0, 0)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


# ----------------------------------------------------------------------------- masks


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """True at padded positions, (B, max_len)."""
    batch = lengths.size(0)
    max_len = max_len if max_len > 0 else int(lengths.max().item())
    positions = torch.arange(0, max_len, dtype=torch.int64, device=lengths.device)
    return positions.unsqueeze(0).expand(batch, max_len) >= lengths.unsqueeze(-1)


def subsequent_mask(size: int, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Lower-triangular (size, size) bool mask: position i sees 0..i."""
    arange = torch.arange(size, device=device)
    return arange.expand(size, size) <= arange.unsqueeze(-1)


def subsequent_chunk_mask(
    size: int,
    chunk_size: int,
    num_left_chunks: int = -1,
    device: torch.device = torch.device("cpu"),
) -> torch.Tensor:
    """(size, size) bool: row i sees its own chunk and num_left_chunks chunks before (<0: all)."""
    ret = torch.zeros(size, size, device=device, dtype=torch.bool)
    for i in range(size):
        if num_left_chunks < 0:
            start = 0
        else:
            start = max((i // chunk_size - num_left_chunks) * chunk_size, 0)
        ending = min((i // chunk_size + 1) * chunk_size, size)
        ret[i, start:ending] = True
    return ret


def add_optional_chunk_mask(
    xs: torch.Tensor,
    masks: torch.Tensor,
    use_dynamic_chunk: bool,
    use_dynamic_left_chunk: bool,
    decoding_chunk_size: int,
    static_chunk_size: int,
    num_decoding_left_chunks: int,
    enable_full_context: bool = True,
    max_chunk_size: int = 25,
) -> torch.Tensor:
    """WeNet's encoder attention mask: padding mask (B, 1, T) combined with a chunk mask.

    decoding_chunk_size 0 draws the training chunk with torch's global RNG exactly as WeNet does
    (randint(1, T); above T//2 means full context, else chunk % max_chunk_size + 1).
    """
    if use_dynamic_chunk:
        max_len = xs.size(1)
        if decoding_chunk_size < 0:
            chunk_size = max_len
            num_left_chunks = -1
        elif decoding_chunk_size > 0:
            chunk_size = decoding_chunk_size
            num_left_chunks = num_decoding_left_chunks
        else:
            chunk_size = torch.randint(1, max_len, (1,)).item()
            num_left_chunks = -1
            if chunk_size > max_len // 2 and enable_full_context:
                chunk_size = max_len
            else:
                chunk_size = chunk_size % max_chunk_size + 1
                if use_dynamic_left_chunk:
                    max_left_chunks = (max_len - 1) // chunk_size
                    num_left_chunks = torch.randint(0, max_left_chunks, (1,)).item()
        chunk_masks = subsequent_chunk_mask(xs.size(1), chunk_size, num_left_chunks, xs.device)
        return masks & chunk_masks.unsqueeze(0)
    if static_chunk_size > 0:
        chunk_masks = subsequent_chunk_mask(
            xs.size(1), static_chunk_size, num_decoding_left_chunks, xs.device
        )
        return masks & chunk_masks.unsqueeze(0)
    return masks


# ----------------------------------------------------------------------------- attention


class MultiHeadedAttention(nn.Module):
    """WeNet's MultiHeadedAttention (n_kv_head == n_head, no sdpa)."""

    def __init__(
        self,
        n_head: int,
        n_feat: int,
        dropout_rate: float,
        query_bias: bool = True,
        key_bias: bool = True,
        value_bias: bool = True,
    ):
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"attention width {n_feat} is not divisible by {n_head} heads")
        self.d_k = n_feat // n_head
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat, bias=query_bias)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat, bias=value_bias)
        self.linear_out = nn.Linear(n_feat, n_feat, bias=query_bias)
        self.dropout = nn.Dropout(p=dropout_rate)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ..., T, H*d_k) -> (B, ..., H, T, d_k)."""
        x = x.view(x.size()[:-1] + torch.Size([self.h, self.d_k]))
        return x.transpose(-3, -2)

    def forward_qkv(self, query, key, value):
        q = self._split_heads(self.linear_q(query))
        k = self._split_heads(self.linear_k(key))
        v = self._split_heads(self.linear_v(value))
        return q, k, v

    def forward_attention(
        self,
        value: torch.Tensor,
        scores: torch.Tensor,
        mask: torch.Tensor = torch.ones((0, 0, 0), dtype=torch.bool),
    ) -> torch.Tensor:
        """Softmax in float32; masked entries are -inf before and exactly 0 after the softmax."""
        if mask.size(-1) > 0:
            mask = mask.unsqueeze(-3).eq(0)
            mask = mask[..., : scores.size(-1)]
            scores = scores.masked_fill(mask, -float("inf"))
            attn = torch.softmax(scores.float(), dim=-1).type_as(value).masked_fill(mask, 0.0)
        else:
            attn = torch.softmax(scores.float(), dim=-1).type_as(value)
        x = torch.matmul(self.dropout(attn), value)
        x = x.transpose(-3, -2).contiguous()
        x = x.view(x.size()[:-2] + torch.Size([self.h * self.d_k]))
        return self.linear_out(x)

    def _update_kv_and_cache(self, k, v, cache: KVCache):
        """Prepend the cached keys/values (eval mode only, as in WeNet); the new cache is (k, v)."""
        new_cache = cache
        if not self.training:
            key_cache, value_cache = cache
            if key_cache.size(0) > 0:
                k = torch.cat([key_cache, k], dim=-2)
            if value_cache.size(0) > 0:
                v = torch.cat([value_cache, v], dim=-2)
            new_cache = (k, v)
        return k, v, new_cache

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor = torch.ones((0, 0, 0), dtype=torch.bool),
        pos_emb: torch.Tensor = torch.empty(0),
        cache: KVCache = _empty_kv(),
    ) -> Tuple[torch.Tensor, KVCache]:
        q, k, v = self.forward_qkv(query, key, value)
        k, v, new_cache = self._update_kv_and_cache(k, v, cache)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self.forward_attention(v, scores, mask), new_cache


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    """WeNet's relative-position attention: pos_bias_u/v, linear_pos without bias, no rel_shift.

    The position term multiplies (q + pos_bias_v) with linear_pos of the sinusoidal embeddings of
    the absolute key positions, so streaming needs nothing beyond the right slice of `pe`.
    """

    def __init__(
        self,
        n_head: int,
        n_feat: int,
        dropout_rate: float,
        query_bias: bool = True,
        key_bias: bool = True,
        value_bias: bool = True,
    ):
        super().__init__(n_head, n_feat, dropout_rate, query_bias, key_bias, value_bias)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.Tensor(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.Tensor(self.h, self.d_k))
        torch.nn.init.xavier_uniform_(self.pos_bias_u)
        torch.nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor = torch.ones((0, 0, 0), dtype=torch.bool),
        pos_emb: torch.Tensor = torch.empty(0),
        cache: KVCache = _empty_kv(),
    ) -> Tuple[torch.Tensor, KVCache]:
        q, k, v = self.forward_qkv(query, key, value)
        q = q.transpose(1, 2)  # (B, T, H, d_k)
        k, v, new_cache = self._update_kv_and_cache(k, v, cache)

        n_batch_pos = pos_emb.size(0)
        p = self.linear_pos(pos_emb).view(n_batch_pos, -1, self.h, self.d_k)
        p = p.transpose(1, 2)  # (B or 1, H, S, d_k)

        q_with_bias_u = (q + self.pos_bias_u).transpose(1, 2)
        q_with_bias_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_bd = torch.matmul(q_with_bias_v, p.transpose(-2, -1))
        matrix_ac = torch.matmul(q_with_bias_u, k.transpose(-2, -1))
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        return self.forward_attention(v, scores, mask), new_cache


class MultiHeadedCrossAttention(MultiHeadedAttention):
    """Decoder source attention; in eval the cache holds the projected encoder keys/values."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor = torch.ones((0, 0, 0), dtype=torch.bool),
        pos_emb: torch.Tensor = torch.empty(0),
        cache: KVCache = _empty_kv(),
    ) -> Tuple[torch.Tensor, KVCache]:
        key_cache, value_cache = cache
        assert key_cache.size(0) == value_cache.size(0)
        if key_cache.size(0) > 0:
            assert not self.training
            q = self._split_heads(self.linear_q(query))
            k, v = key_cache, value_cache
        else:
            q, k, v = self.forward_qkv(query, key, value)
        new_cache = (k, v) if not self.training else cache
        B = query.size(0)
        beams = 1
        if B != k.size(0):
            # query batch is (B * beams): share the memory's keys/values across beams
            assert not self.training
            beams = B // k.size(0)
            B = k.size(0)
            q = q.view(B, beams, q.size(-3), q.size(-2), q.size(-1))
            k = k.unsqueeze(1)
            v = v.unsqueeze(1)
            mask = mask.unsqueeze(1)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        output = self.forward_attention(v, scores, mask)
        if query.size(0) != B:
            output = output.view(torch.Size([B * beams]) + output.size()[2:])
        return output, new_cache


# ----------------------------------------------------------------------------- feed-forward


class PositionwiseFeedForward(nn.Module):
    """w_2(dropout(activation(w_1(x))))."""

    def __init__(
        self,
        idim: int,
        hidden_units: int,
        dropout_rate: float,
        activation: nn.Module = nn.ReLU(),
        bias: bool = True,
        *unused_args,
        **unused_kwargs,
    ):
        # WeNet builds every MLP class with the MoE arguments too; the dense one ignores them.
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units, bias=bias)
        self.activation = activation
        self.dropout = nn.Dropout(dropout_rate)
        self.w_2 = nn.Linear(hidden_units, idim, bias=bias)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(xs))))


class MoEFFNLayer(nn.Module):
    """WeNet's MoE FFN: gate Linear (no bias), top-k of the raw logits, softmax over the k in
    float32, experts are PositionwiseFeedForward; no capacity and no auxiliary loss."""

    def __init__(
        self,
        idim: int,
        hidden_units: int,
        dropout_rate: float,
        activation: nn.Module = nn.ReLU(),
        bias: bool = False,
        n_expert: int = 8,
        n_expert_activated: int = 2,
    ):
        super().__init__()
        self.gate = nn.Linear(idim, n_expert, bias=False)
        self.experts = nn.ModuleList(
            PositionwiseFeedForward(idim, hidden_units, dropout_rate, activation, bias=bias)
            for _ in range(n_expert)
        )
        self.n_expert = n_expert
        self.n_expert_activated = n_expert_activated

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        B, L, D = xs.size()
        xs = xs.view(-1, D)
        router = self.gate(xs)
        logits, selected_experts = torch.topk(router, self.n_expert_activated)
        weights = torch.nn.functional.softmax(logits, dim=1, dtype=torch.float).to(dtype=xs.dtype)
        output = torch.zeros_like(xs)
        for i, expert in enumerate(self.experts):
            token_ids, ith_expert = torch.where(selected_experts == i)
            output[token_ids] += weights[token_ids, ith_expert, None] * expert(xs[token_ids])
        return output.view(B, L, D)


MLP_CLASSES = {
    "position_wise_feed_forward": PositionwiseFeedForward,
    "moe": MoEFFNLayer,
}


# ----------------------------------------------------------------------------- positions, CMVN


class PositionalEncoding(nn.Module):
    """Absolute sinusoidal encoding: x * sqrt(d) + pe[offset : offset + T]."""

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000):
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(self.d_model)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.max_len = max_len
        pe = torch.zeros(self.max_len, self.d_model)
        position = torch.arange(0, self.max_len, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(
            torch.arange(0, self.d_model, 2, dtype=torch.float32)
            * -(math.log(10000.0) / self.d_model)
        )
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x: torch.Tensor, offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        pos_emb = self.position_encoding(offset, x.size(1), False)
        x = x * self.xscale + pos_emb
        return self.dropout(x), self.dropout(pos_emb)

    def position_encoding(self, offset: int, size: int, apply_dropout: bool = True) -> torch.Tensor:
        """pe[:, offset : offset + size] (integer offsets only: no batched streaming)."""
        offset = int(offset)
        if offset + size > self.max_len:
            raise ValueError(f"positions {offset}+{size} exceed max_len {self.max_len}")
        pos_emb = self.pe[:, offset : offset + size]
        if apply_dropout:
            pos_emb = self.dropout(pos_emb)
        return pos_emb


class RelPositionalEncoding(PositionalEncoding):
    """x * sqrt(d) and, separately, pe[offset : offset + T] for the rel-pos attention."""

    def forward(self, x: torch.Tensor, offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x * self.xscale
        pos_emb = self.position_encoding(offset, x.size(1), False)
        return self.dropout(x), self.dropout(pos_emb)


EMB_CLASSES = {
    "abs_pos": PositionalEncoding,
    "embed": PositionalEncoding,
    "rel_pos": RelPositionalEncoding,
}


class GlobalCMVN(nn.Module):
    """(x - mean) * istd, with buffers `mean` and `istd` as in WeNet's state_dict."""

    def __init__(self, mean: torch.Tensor, istd: torch.Tensor, norm_var: bool = True):
        super().__init__()
        assert mean.shape == istd.shape
        self.norm_var = norm_var
        self.register_buffer("mean", mean)
        self.register_buffer("istd", istd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.mean
        if self.norm_var:
            x = x * self.istd
        return x


# ----------------------------------------------------------------------------- subsampling


class BaseSubsampling(nn.Module):
    def __init__(self):
        super().__init__()
        self.right_context = 0
        self.subsampling_rate = 1

    def position_encoding(self, offset: int, size: int) -> torch.Tensor:
        return self.pos_enc.position_encoding(offset, size)


class Conv2dSubsampling4(BaseSubsampling):
    """Two 3x3 stride-2 convs + ReLU, then Linear (`out.0`) to odim; right context 6."""

    def __init__(self, idim: int, odim: int, dropout_rate: float, pos_enc_class: nn.Module):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, odim, 3, 2),
            nn.ReLU(),
            nn.Conv2d(odim, odim, 3, 2),
            nn.ReLU(),
        )
        self.out = nn.Sequential(nn.Linear(odim * (((idim - 1) // 2 - 1) // 2), odim))
        self.pos_enc = pos_enc_class
        self.subsampling_rate = 4
        self.right_context = 6

    def forward(self, x, x_mask, offset: int = 0):
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).contiguous().view(b, t, c * f))
        x, pos_emb = self.pos_enc(x, offset)
        return x, pos_emb, x_mask[:, :, 2::2][:, :, 2::2]


class Conv2dSubsampling6(BaseSubsampling):
    """3x3 stride 2 then 5x5 stride 3, Linear (`linear`); right context 10."""

    def __init__(self, idim: int, odim: int, dropout_rate: float, pos_enc_class: nn.Module):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, odim, 3, 2),
            nn.ReLU(),
            nn.Conv2d(odim, odim, 5, 3),
            nn.ReLU(),
        )
        self.linear = nn.Linear(odim * (((idim - 1) // 2 - 2) // 3), odim)
        self.pos_enc = pos_enc_class
        self.subsampling_rate = 6
        self.right_context = 10

    def forward(self, x, x_mask, offset: int = 0):
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.size()
        x = self.linear(x.transpose(1, 2).contiguous().view(b, t, c * f))
        x, pos_emb = self.pos_enc(x, offset)
        return x, pos_emb, x_mask[:, :, 2::2][:, :, 4::3]


class Conv2dSubsampling8(BaseSubsampling):
    """Three 3x3 stride-2 convs, Linear (`linear`); right context 14."""

    def __init__(self, idim: int, odim: int, dropout_rate: float, pos_enc_class: nn.Module):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, odim, 3, 2),
            nn.ReLU(),
            nn.Conv2d(odim, odim, 3, 2),
            nn.ReLU(),
            nn.Conv2d(odim, odim, 3, 2),
            nn.ReLU(),
        )
        self.linear = nn.Linear(odim * ((((idim - 1) // 2 - 1) // 2 - 1) // 2), odim)
        self.pos_enc = pos_enc_class
        self.subsampling_rate = 8
        self.right_context = 14

    def forward(self, x, x_mask, offset: int = 0):
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.size()
        x = self.linear(x.transpose(1, 2).contiguous().view(b, t, c * f))
        x, pos_emb = self.pos_enc(x, offset)
        return x, pos_emb, x_mask[:, :, 2::2][:, :, 2::2][:, :, 2::2]


SUBSAMPLE_CLASSES = {
    "conv2d": Conv2dSubsampling4,
    "conv2d6": Conv2dSubsampling6,
    "conv2d8": Conv2dSubsampling8,
}


# ----------------------------------------------------------------------------- conformer block


class ConvolutionModule(nn.Module):
    """Pointwise (d -> 2d), GLU, depthwise (causal: left pad or cache), LayerNorm, act, pointwise."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 15,
        activation: nn.Module = nn.ReLU(),
        norm: str = "layer_norm",
        causal: bool = False,
        bias: bool = True,
        norm_eps: float = 1e-5,
        conv_inner_factor: int = 2,
    ):
        super().__init__()
        if norm != "layer_norm":
            raise ValueError(f"cnn_module_norm {norm!r}: only 'layer_norm' is transcribed")
        inner = conv_inner_factor * channels
        self.pointwise_conv1 = nn.Conv1d(channels, inner, kernel_size=1, stride=1, padding=0, bias=bias)
        if causal:
            padding = 0
            self.lorder = kernel_size - 1
        else:
            assert (kernel_size - 1) % 2 == 0, "a non-causal depthwise kernel must be odd"
            padding = (kernel_size - 1) // 2
            self.lorder = 0
        self.depthwise_conv = nn.Conv1d(
            inner // 2, inner // 2, kernel_size, stride=1, padding=padding, groups=inner // 2, bias=bias
        )
        self.use_layer_norm = True
        self.norm = nn.LayerNorm(inner // 2, eps=norm_eps)
        self.pointwise_conv2 = nn.Conv1d(inner // 2, channels, kernel_size=1, stride=1, padding=0, bias=bias)
        self.activation = activation

    def forward(
        self,
        x: torch.Tensor,
        mask_pad: torch.Tensor = torch.ones((0, 0, 0), dtype=torch.bool),
        cache: torch.Tensor = torch.zeros((0, 0, 0)),
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)  # (B, D, T)
        if mask_pad.size(2) > 0:
            x.masked_fill_(~mask_pad, 0.0)
        if self.lorder > 0:
            if cache.size(2) == 0:
                x = nn.functional.pad(x, (self.lorder, 0), "constant", 0.0)
            else:
                assert cache.size(0) == x.size(0) and cache.size(1) == x.size(1)
                x = torch.cat((cache, x), dim=2)
            assert x.size(2) > self.lorder
            new_cache = x[:, :, -self.lorder :]
        else:
            new_cache = torch.zeros((0, 0, 0), dtype=x.dtype, device=x.device)
        x = self.pointwise_conv1(x)
        x = nn.functional.glu(x, dim=1)
        x = self.depthwise_conv(x)
        x = x.transpose(1, 2)
        x = self.activation(self.norm(x))
        x = x.transpose(1, 2)
        x = self.pointwise_conv2(x)
        if mask_pad.size(2) > 0:
            x.masked_fill_(~mask_pad, 0.0)
        return x.transpose(1, 2), new_cache


class ConformerEncoderLayer(nn.Module):
    """Pre-LN macaron block: 1/2 FFN, MHSA, conv, 1/2 FFN, norm_final."""

    def __init__(
        self,
        size: int,
        self_attn: nn.Module,
        feed_forward: nn.Module,
        feed_forward_macaron: nn.Module = None,
        conv_module: nn.Module = None,
        dropout_rate: float = 0.1,
        normalize_before: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.feed_forward_macaron = feed_forward_macaron
        self.conv_module = conv_module
        self.norm_ff = nn.LayerNorm(size, eps=norm_eps)
        self.norm_mha = nn.LayerNorm(size, eps=norm_eps)
        if feed_forward_macaron is not None:
            self.norm_ff_macaron = nn.LayerNorm(size, eps=norm_eps)
            self.ff_scale = 0.5
        else:
            self.ff_scale = 1.0
        if self.conv_module is not None:
            self.norm_conv = nn.LayerNorm(size, eps=norm_eps)
            self.norm_final = nn.LayerNorm(size, eps=norm_eps)
        self.dropout = nn.Dropout(dropout_rate)
        self.size = size
        self.normalize_before = normalize_before

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        pos_emb: torch.Tensor,
        mask_pad: torch.Tensor = torch.ones((0, 0, 0), dtype=torch.bool),
        att_cache: KVCache = _empty_kv(),
        cnn_cache: torch.Tensor = torch.zeros((0, 0, 0, 0)),
    ):
        if self.feed_forward_macaron is not None:
            residual = x
            if self.normalize_before:
                x = self.norm_ff_macaron(x)
            x = residual + self.ff_scale * self.dropout(self.feed_forward_macaron(x))
            if not self.normalize_before:
                x = self.norm_ff_macaron(x)

        residual = x
        if self.normalize_before:
            x = self.norm_mha(x)
        x_att, new_att_cache = self.self_attn(x, x, x, mask, pos_emb, att_cache)
        x = residual + self.dropout(x_att)
        if not self.normalize_before:
            x = self.norm_mha(x)

        new_cnn_cache = torch.zeros((0, 0, 0), dtype=x.dtype, device=x.device)
        if self.conv_module is not None:
            residual = x
            if self.normalize_before:
                x = self.norm_conv(x)
            x, new_cnn_cache = self.conv_module(x, mask_pad, cnn_cache)
            x = residual + self.dropout(x)
            if not self.normalize_before:
                x = self.norm_conv(x)

        residual = x
        if self.normalize_before:
            x = self.norm_ff(x)
        x = residual + self.ff_scale * self.dropout(self.feed_forward(x))
        if not self.normalize_before:
            x = self.norm_ff(x)

        if self.conv_module is not None:
            x = self.norm_final(x)
        return x, mask, new_att_cache, new_cnn_cache
