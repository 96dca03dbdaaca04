"""Streaming U2++ encoding: WeNet's forward_chunk and forward_chunk_by_chunk.

Caches (evaluation only): per layer the keys and values of the cached frames, att_cache
[L, B, H, cache_t, 2Q] (keys in the first Q channels; WeNet's [L, H, cache_t, 2Q] is B = 1), and
the last kernel-1 inputs of each conv module, cnn_cache [L, B, D, kernel-1] (width 0 for a
non-causal conv). `offset` counts the output frames produced so far. The subsampling is not
cached: each step consumes (chunk-1) x rate + right_context + 1 input frames and advances by
chunk x rate, so consecutive windows overlap and the frames the convolutions need are re-read.

Each step's shapes depend on the cache length, so a jitted step compiles once per distinct
cache length (with a finite left context that is at most num_left_chunks + 1 of them).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.models.u2pp.encoder import ConformerEncoder
from most_jax.nn.stack import run_stack


def empty_caches(encoder: ConformerEncoder, batch: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """The caches before the first chunk: no attention frames, zero conv history (WeNet's
    left zero padding)."""
    enc = encoder.cfg.encoder
    d, h = enc.output_size, enc.attention_heads
    lorder = enc.cnn_module_kernel - 1 if enc.causal else 0
    return (jnp.zeros((enc.num_blocks, batch, h, 0, 2 * (d // h)), dtype),
            jnp.zeros((enc.num_blocks, batch, d, lorder), dtype))


def next_cache_start(key_frames: int, required_cache_size: int) -> int:
    """First of the `key_frames` (cache + chunk) frames kept for the next chunk (WeNet's rule):
    all when required_cache_size < 0, none when 0, else the last required_cache_size."""
    if required_cache_size < 0:
        return 0
    return max(key_frames - required_cache_size, 0)


def forward_chunk(encoder: ConformerEncoder, xs_BUI: jax.Array, offset: jax.Array | int, required_cache_size: int,
                  att_cache: jax.Array, cnn_cache: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One chunk: (output [B, chunk, D], next att_cache, next cnn_cache), as WeNet's forward_chunk.

    xs_BUI holds (chunk-1) x rate + right_context + 1 input frames (fewer at the end of the
    input); every cached and new frame is visible to the chunk's frames."""
    enc = encoder.cfg.encoder
    if att_cache.ndim != 5 or att_cache.shape[0] != enc.num_blocks:
        raise ValueError(f"att_cache must be [L={enc.num_blocks}, B, H, cache_t, 2*d_k], got {att_cache.shape}")
    x_BTD, _ = encoder.embed(encoder.global_cmvn(xs_BUI), jnp.ones(xs_BUI.shape[:2], bool))
    x_BTD = x_BTD * math.sqrt(enc.output_size)
    cache_t, chunk = att_cache.shape[3], x_BTD.shape[1]
    pos_emb_SD = encoder.pos_enc.position_encoding(offset - cache_t, cache_t + chunk).astype(x_BTD.dtype)
    cfg = encoder.cfg
    x_BTD, (new_att, new_cnn) = run_stack(encoder.encoders, x_BTD, (pos_emb_SD,), scan=cfg.scan_layers,
                                          remat=cfg.remat, method="forward_chunk", per_layer=(att_cache, cnn_cache))
    start = next_cache_start(cache_t + chunk, required_cache_size)
    return encoder.after_norm(x_BTD), new_att[:, :, :, start:], new_cnn


@nnx.jit(static_argnames=("required_cache_size",))
def _forward_chunk_jit(encoder, xs_BUI, offset, required_cache_size, att_cache, cnn_cache):
    return forward_chunk(encoder, xs_BUI, offset, required_cache_size, att_cache, cnn_cache)


def forward_chunk_by_chunk(encoder: ConformerEncoder, xs_BUI: jax.Array, chunk_size: int,
                           num_left_chunks: int = -1) -> tuple[jax.Array, jax.Array]:
    """Streams whole utterances (all of xs_BUI's frames real) chunk by chunk:
    (output [B, T, D], valid [B, T], all True). Equals encode(..., chunk_size, num_left_chunks)."""
    enc = encoder.cfg.encoder
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive for streaming, got {chunk_size}")
    if not (enc.use_dynamic_chunk or enc.static_chunk_size > 0):
        raise ValueError("streaming needs a model trained with chunks (use_dynamic_chunk or static_chunk_size > 0)")
    rate, context = encoder.embed.rate, encoder.embed.right_context + 1  # + 1: the current frame
    stride, window = rate * chunk_size, (chunk_size - 1) * rate + context
    frames = xs_BUI.shape[1]
    if frames < context:
        raise ValueError(f"{frames} input frames are fewer than one output frame needs ({context})")
    required_cache_size = chunk_size * num_left_chunks
    att_cache, cnn_cache = empty_caches(encoder, xs_BUI.shape[0], xs_BUI.dtype)
    outputs, offset = [], 0
    for cur in range(0, frames - context + 1, stride):
        y_BTD, att_cache, cnn_cache = _forward_chunk_jit(encoder, xs_BUI[:, cur:min(cur + window, frames)],
                                                         jnp.asarray(offset, jnp.int32), required_cache_size,
                                                         att_cache, cnn_cache)
        outputs.append(y_BTD)
        offset += y_BTD.shape[1]
    ys_BTD = jnp.concatenate(outputs, axis=1)
    return ys_BTD, jnp.ones(ys_BTD.shape[:2], bool)
