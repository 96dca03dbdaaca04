"""Batched autoregressive generation over the MLA latent cache.

Prompts of different lengths are left-padded to one length, so every row's next token is read
at the same slot; padded slots are marked invalid and never attended to, and each row's positions
count only its real tokens. A prompt may carry continuous speech frames (MoST-C): features [n, F]
and a continuous mask aligned with its tokens, which the prefill projects in place of those
tokens' embeddings. The whole loop (prefill, then one token per step until every row has
stopped or `max_new_tokens` is reached) runs inside one jitted `lax.while_loop`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.config import VocabConfig
from most_jax.models.most import MoST

_NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 256

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")


def text_token_mask(vocab: VocabConfig, vocab_size: int) -> np.ndarray:
    """Ids allowed while writing text: the text ids (not bos) and eos, which ends the answer."""
    allowed = np.zeros(vocab_size, bool)
    allowed[: vocab.text_size] = True
    allowed[vocab.bos_id] = False
    allowed[vocab.eos_id] = True
    return allowed


def speech_token_mask(vocab: VocabConfig, vocab_size: int) -> np.ndarray:
    """Ids allowed while writing speech: the audio units and end-of-audio."""
    allowed = np.zeros(vocab_size, bool)
    allowed[vocab.audio_unit_offset: vocab.audio_unit_offset + vocab.num_audio_units] = True
    allowed[vocab.end_audio_id] = True
    return allowed


def filter_logits(logits_BV: jax.Array, allowed_V: jax.Array, sampling: Sampling) -> jax.Array:
    """Masks disallowed ids, applies temperature, top-k and top-p; returns float32 logits."""
    logits_BV = jnp.where(allowed_V[None], logits_BV.astype(jnp.float32), _NEG_INF)
    if sampling.temperature == 0.0:
        return logits_BV
    logits_BV = logits_BV / sampling.temperature
    if sampling.top_k > 0:
        kth_B1 = jax.lax.top_k(logits_BV, sampling.top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, _NEG_INF, logits_BV)
    if sampling.top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        cumulative_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the best id).
        keep_count_B1 = jnp.sum(cumulative_BV - jax.nn.softmax(sorted_BV, axis=-1) < sampling.top_p, axis=-1,
                                keepdims=True)
        threshold_B1 = jnp.take_along_axis(sorted_BV, keep_count_B1 - 1, axis=-1)
        logits_BV = jnp.where(logits_BV < threshold_B1, _NEG_INF, logits_BV)
    return logits_BV


def choose(logits_BV: jax.Array, allowed_V: jax.Array, sampling: Sampling, key: jax.Array) -> jax.Array:
    logits_BV = filter_logits(logits_BV, allowed_V, sampling)
    if sampling.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, width_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, T], valid [B, T]) with each prompt right-aligned; T is rounded up to a multiple
    of `width_multiple` (fewer distinct shapes, fewer compilations)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = -(-max(len(p) for p in prompts) // width_multiple) * width_multiple
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    valid = np.zeros((len(prompts), width), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = prompt
        valid[row, width - len(prompt):] = True
    return tokens, valid


def left_pad_frames(frames: Sequence[tuple[np.ndarray, np.ndarray]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """(features [B, width, F] float32, continuous [B, width] int32) of per-prompt (features [n, F],
    continuous [n]), right-aligned as `left_pad` aligns the tokens."""
    dims = {f.shape[1] for f, _ in frames}
    if len(dims) != 1:
        raise ValueError(f"prompt features of different widths: {sorted(dims)}")
    features = np.zeros((len(frames), width, dims.pop()), np.float32)
    continuous = np.zeros((len(frames), width), np.int32)
    for row, (f, c) in enumerate(frames):
        if len(f) != len(c):
            raise ValueError(f"prompt {row}: {len(f)} feature rows for a continuous mask of {len(c)}")
        features[row, width - len(f):] = f
        continuous[row, width - len(c):] = c
    return features, continuous


@nnx.jit(static_argnames=("sampling", "stop_ids"))
def _generate(model: MoST, prompt_BT, prompt_valid_BT, allowed_V, key, features_BTF=None, continuous_BT=None, *,
              sampling: Sampling, stop_ids: tuple[int, ...]):
    b, p = prompt_BT.shape
    n = sampling.max_new_tokens
    cache = model.init_cache(b, p + n)
    slot_valid_BS = jnp.zeros((b, p + n), bool).at[:, :p].set(prompt_valid_BT)
    prompt_positions_BT = jnp.maximum(jnp.cumsum(prompt_valid_BT, axis=1) - 1, 0).astype(jnp.int32)
    logits_BTV, cache = model.decode(prompt_BT, cache, index=jnp.int32(0), slot_valid_BS=slot_valid_BS,
                                     positions_BT=prompt_positions_BT, features_BTF=features_BTF,
                                     continuous_BT=continuous_BT)
    stops = jnp.asarray(stop_ids, jnp.int32)
    key, sub = jax.random.split(key)
    first_B = choose(logits_BTV[:, -1], allowed_V, sampling, sub)
    out_BT = jnp.zeros((b, n), jnp.int32).at[:, 0].set(first_B)
    done_B = jnp.isin(first_B, stops)
    next_pos_B = prompt_positions_BT[:, -1] + 1

    def cond(carry):
        i, _, _, done_B, _, _, _ = carry
        return (i < n) & ~jnp.all(done_B)

    def body(carry):
        i, out_BT, cache, done_B, slot_valid_BS, pos_B, key = carry
        token_B1 = out_BT[:, i - 1][:, None]
        slot_valid_BS = slot_valid_BS.at[:, p + i - 1].set(True)
        logits_B1V, cache = model.decode(token_B1, cache, index=p + i - 1, slot_valid_BS=slot_valid_BS,
                                         positions_BT=pos_B[:, None])
        key, sub = jax.random.split(key)
        next_B = choose(logits_B1V[:, 0], allowed_V, sampling, sub)
        # Rows that already stopped keep emitting their stop id, which the caller trims.
        next_B = jnp.where(done_B, out_BT[:, i - 1], next_B)
        out_BT = out_BT.at[:, i].set(next_B)
        return i + 1, out_BT, cache, done_B | jnp.isin(next_B, stops), slot_valid_BS, pos_B + 1, key

    carry = (jnp.int32(1), out_BT, cache, done_B, slot_valid_BS, next_pos_B, key)
    steps, out_BT, *_ = jax.lax.while_loop(cond, body, carry)
    return out_BT, steps


def generate(model: MoST, prompts: Sequence[Sequence[int]], *, allowed: np.ndarray, stop_ids: Sequence[int],
             sampling: Sampling = Sampling(), seed: int = 0, width_multiple: int = 1,
             frames: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[list[int]]:
    """Continues each prompt; returns the new ids of each row, up to and excluding its stop id.
    `frames`: per prompt, (features [n, F], continuous [n]) of its continuous speech (MoST-C)."""
    sampling.validate()
    cfg = model.cfg
    if allowed.shape != (cfg.vocab_size,):
        raise ValueError(f"allowed mask has shape {allowed.shape}, expected ({cfg.vocab_size},)")
    for row, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {row} has token ids outside 0..{cfg.vocab_size - 1}: {bad[:5]}")
    tokens, valid = left_pad(prompts, cfg.vocab.pad_id, width_multiple)
    features = continuous = None
    if frames is not None:
        if len(frames) != len(prompts):
            raise ValueError(f"{len(frames)} frame sets for {len(prompts)} prompts")
        for row, (prompt, (_, c)) in enumerate(zip(prompts, frames)):
            if len(c) != len(prompt):
                raise ValueError(f"prompt {row}: a continuous mask of {len(c)} for {len(prompt)} tokens")
        features, continuous = (jnp.asarray(a) for a in left_pad_frames(frames, tokens.shape[1]))
    out, _ = _generate(model, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(allowed),
                       jax.random.key(seed), features, continuous, sampling=sampling,
                       stop_ids=tuple(int(s) for s in stop_ids))
    results = []
    for row in np.asarray(out).tolist():
        stop = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        results.append(row[:stop])
    return results
