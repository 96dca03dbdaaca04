"""Vocabulary layout: which token ids are text, specials and audio units, and their modality."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from most_jax.config import VocabConfig

TEXT = 0
AUDIO = 1
NO_GROUP = -1


def modality_of_tokens(vocab: VocabConfig, tokens):
    """Token ids -> int32 modality ids: 0 text (specials included), 1 audio units and audio markers,
    -1 anything else (waveform markers, unused rows), which gets no routed experts.

    Works on NumPy arrays (data pipeline) and on JAX arrays or tracers (inside the model)."""
    xp = jnp if isinstance(tokens, jax.Array) else np
    tokens = xp.asarray(tokens)
    is_text = (tokens >= 0) & (tokens < vocab.text_size)
    for special in (vocab.bos_id, vocab.eos_id, vocab.pad_id):
        is_text = is_text | (tokens == special)
    is_audio = ((tokens >= vocab.audio_unit_offset) & (tokens < vocab.audio_unit_offset + vocab.num_audio_units)
                | (tokens == vocab.begin_audio_id) | (tokens == vocab.end_audio_id))
    return xp.where(is_audio, AUDIO, xp.where(is_text, TEXT, NO_GROUP)).astype(xp.int32)
