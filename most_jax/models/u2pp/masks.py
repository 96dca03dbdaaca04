"""WeNet's encoder masks (wenet/utils/mask.py): padding, chunk masks and dynamic chunk training.

Masks are bool, True where a frame is real / may be attended. Chunk sizes and left-chunk counts
may be traced integers (the dynamic-chunk draw happens inside the jitted step), so the chunk mask
is built arithmetically rather than by WeNet's row loop: row i sees columns
[max((i // c - n) * c, 0), min((i // c + 1) * c, T)), or from 0 when n < 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_pad_mask(lengths_B: jax.Array, max_len: int) -> jax.Array:
    """[B, max_len] bool, True at padded positions (WeNet's make_pad_mask)."""
    return jnp.arange(max_len)[None, :] >= lengths_B[:, None]


def subsequent_chunk_mask(size: int, chunk_size: jax.Array | int, num_left_chunks: jax.Array | int = -1) -> jax.Array:
    """[size, size] bool: row i sees its own chunk of `chunk_size` frames and `num_left_chunks`
    chunks before it (negative: every earlier frame)."""
    i_T = jnp.arange(size)
    chunk_T = i_T // chunk_size
    end_T = jnp.minimum((chunk_T + 1) * chunk_size, size)
    start_T = jnp.where(num_left_chunks < 0, 0, jnp.maximum((chunk_T - num_left_chunks) * chunk_size, 0))
    s_S = jnp.arange(size)
    return (s_S[None, :] >= start_T[:, None]) & (s_S[None, :] < end_T[:, None])


def sample_dynamic_chunk(rng: jax.Array, size: int, *, use_dynamic_left_chunk: bool, max_chunk_size: int,
                         enable_full_context: bool = True) -> tuple[jax.Array, jax.Array]:
    """WeNet's training draw of (chunk_size, num_left_chunks) for `size` frames after subsampling:
    chunk = randint(1, size); above size // 2 it means full context, else chunk % max_chunk_size + 1
    and, with dynamic left chunks, num_left = randint(0, (size - 1) // chunk) (else -1: all)."""
    if size < 2:
        raise ValueError(f"dynamic chunk training needs at least 2 frames after subsampling, got {size} "
                         f"(WeNet's randint(1, {size}) has no value)")
    chunk_rng, left_rng = jax.random.split(rng)
    drawn = jax.random.randint(chunk_rng, (), 1, size)
    full = (drawn > size // 2) & enable_full_context
    chunk = jnp.where(full, size, drawn % max_chunk_size + 1)
    left = jnp.full((), -1, jnp.int32)
    if use_dynamic_left_chunk:
        # WeNet draws from [0, (size - 1) // chunk), an empty range it cannot draw from when the
        # chunk covers everything; the left limit is then irrelevant, so 0 stands in for it.
        max_left = (size - 1) // chunk
        drawn_left = jax.random.randint(left_rng, (), 0, jnp.maximum(max_left, 1))
        left = jnp.where(full, -1, drawn_left)
    return chunk, left


def add_optional_chunk_mask(mask_B1T: jax.Array, *, use_dynamic_chunk: bool, use_dynamic_left_chunk: bool,
                            decoding_chunk_size: int, static_chunk_size: int, num_decoding_left_chunks: int,
                            max_chunk_size: int = 25, enable_full_context: bool = True,
                            rng: jax.Array | None = None) -> jax.Array:
    """The encoder's self-attention mask, [B, T, T] (or the padding mask [B, 1, T] unchanged when
    no chunking applies), exactly as WeNet's add_optional_chunk_mask.

    With use_dynamic_chunk: decoding_chunk_size < 0 is full context, > 0 that chunk with
    num_decoding_left_chunks, 0 WeNet's random training chunk drawn with `rng` (required then).
    Otherwise static_chunk_size > 0 chunks with num_decoding_left_chunks; else no chunking."""
    size = mask_B1T.shape[-1]
    if use_dynamic_chunk:
        if decoding_chunk_size < 0:
            chunk, left = size, -1
        elif decoding_chunk_size > 0:
            chunk, left = decoding_chunk_size, num_decoding_left_chunks
        else:
            if rng is None:
                raise ValueError("chunk_size 0 with use_dynamic_chunk draws WeNet's random training chunk: pass "
                                 "an rng, or chunk_size -1 for full context / > 0 for a fixed chunk")
            chunk, left = sample_dynamic_chunk(rng, size, use_dynamic_left_chunk=use_dynamic_left_chunk,
                                               max_chunk_size=max_chunk_size, enable_full_context=enable_full_context)
    elif static_chunk_size > 0:
        chunk, left = static_chunk_size, num_decoding_left_chunks
    else:
        return mask_B1T
    return mask_B1T & subsequent_chunk_mask(size, chunk, left)[None]
