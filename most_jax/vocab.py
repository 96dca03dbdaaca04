"""Vocabulary layout: which token ids are text, specials and audio units, and their modality."""

from __future__ import annotations

import numpy as np

from most_jax.config import VocabConfig

TEXT = 0
AUDIO = 1
NO_GROUP = -1


def modality_of_tokens(vocab: VocabConfig, tokens) -> np.ndarray:
    """Token ids -> modality ids: 0 text (specials included), 1 audio units and audio markers,
    -1 anything else (waveform markers, unused rows), which gets no routed experts."""
    tokens = np.asarray(tokens)
    modality = np.full(tokens.shape, NO_GROUP, np.int32)
    modality[(tokens >= 0) & (tokens < vocab.text_size)] = TEXT
    for special in (vocab.bos_id, vocab.eos_id, vocab.pad_id):
        modality[tokens == special] = TEXT
    units = (tokens >= vocab.audio_unit_offset) & (tokens < vocab.audio_unit_offset + vocab.num_audio_units)
    modality[units | (tokens == vocab.begin_audio_id) | (tokens == vocab.end_audio_id)] = AUDIO
    return modality
