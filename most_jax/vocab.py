"""Vocabulary layout: which token ids are text, specials and audio units, and their modality."""

from __future__ import annotations

import dataclasses

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


class VocabError(ValueError):
    """A token id or unit id falls outside the part of the vocabulary it should belong to."""


@dataclasses.dataclass(frozen=True)
class VocabLayout:
    """The token id space: text ids from a tokenizer, the specials, then audio units and markers.

    The template markers (bos, eos, begin/end of audio, begin/end of waveform) are inserted as ids,
    never spelled as strings for a tokenizer to find (the original MoST spelled them in ASCII and
    they never became the special tokens). `vocab_size` is the embedding table's row count, which
    may exceed the used ids (padded to a multiple for efficient sharding).
    """

    config: VocabConfig
    vocab_size: int

    def __post_init__(self):
        self.config.validate("vocab", self.vocab_size)
        # VocabConfig tolerates ids past vocab_size (absent tokens of an imported checkpoint); a layout
        # we tokenise with must give every id it emits an embedding row.
        c = self.config
        used = max(c.text_size, c.audio_unit_offset + c.num_audio_units, c.bos_id + 1, c.eos_id + 1, c.pad_id + 1,
                   c.begin_audio_id + 1, c.end_audio_id + 1, c.begin_wave_id + 1, c.end_wave_id + 1)
        if used > self.vocab_size:
            raise VocabError(f"vocab_size={self.vocab_size} is smaller than the {used} ids the layout uses")

    @classmethod
    def most(cls) -> "VocabLayout":
        """The original MoST ids: DeepSeek text 0..100001 (bos 100000, eos 100001 = pad), units
        [Hu0]..[Hu499] = 100002..100501, audio 100502/100503, waveform 100504/100505, 102400 rows."""
        return cls.after_text(100002, 500, bos_id=100000, eos_id=100001, vocab_size=102400)

    @classmethod
    def after_text(cls, text_size: int, num_units: int, *, bos_id: int | None = None,
                   eos_id: int | None = None, vocab_size: int | None = None,
                   multiple: int = 64) -> "VocabLayout":
        """Text ids 0..text_size-1; a missing bos/eos is appended after them (pad = eos, as in MoST);
        then `num_units` unit ids, begin/end of audio, begin/end of waveform. `vocab_size` defaults
        to the used ids rounded up to `multiple`."""
        if bos_id is None:
            bos_id, text_size = text_size, text_size + 1
        if eos_id is None:
            eos_id, text_size = text_size, text_size + 1
        offset = text_size
        marker = offset + num_units
        config = VocabConfig(text_size=text_size, bos_id=bos_id, eos_id=eos_id, pad_id=eos_id,
                             audio_unit_offset=offset, num_audio_units=num_units,
                             begin_audio_id=marker, end_audio_id=marker + 1,
                             begin_wave_id=marker + 2, end_wave_id=marker + 3)
        if vocab_size is None:
            vocab_size = -(-(marker + 4) // multiple) * multiple
        return cls(config, vocab_size)

    @property
    def bos_id(self) -> int:
        return self.config.bos_id

    @property
    def eos_id(self) -> int:
        return self.config.eos_id

    @property
    def pad_id(self) -> int:
        return self.config.pad_id

    @property
    def begin_audio_id(self) -> int:
        return self.config.begin_audio_id

    @property
    def end_audio_id(self) -> int:
        return self.config.end_audio_id

    @property
    def num_units(self) -> int:
        return self.config.num_audio_units

    def units_to_tokens(self, units) -> np.ndarray:
        units = np.asarray(units, np.int64)
        bad = (units < 0) | (units >= self.num_units)
        if bad.any():
            raise VocabError(f"unit id {int(units[bad][0])} outside 0..{self.num_units - 1}")
        return (units + self.config.audio_unit_offset).astype(np.int32)

    def is_unit(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)
        offset = self.config.audio_unit_offset
        return (tokens >= offset) & (tokens < offset + self.num_units)

    def tokens_to_units(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)
        if not self.is_unit(tokens).all():
            culprit = int(tokens[~self.is_unit(tokens)][0])
            raise VocabError(f"token {culprit} is not an audio unit (units are "
                             f"{self.config.audio_unit_offset}..{self.config.audio_unit_offset + self.num_units - 1})")
        return (tokens - self.config.audio_unit_offset).astype(np.int32)

    def is_text(self, tokens) -> np.ndarray:
        """Plain text ids (the specials bos/eos excluded)."""
        tokens = np.asarray(tokens)
        return (tokens >= 0) & (tokens < self.config.text_size) & (tokens != self.bos_id) & (tokens != self.eos_id)

    def modality(self, tokens):
        return modality_of_tokens(self.config, tokens)

    def special_names(self) -> dict[int, str]:
        """Id -> display name of every special token (pad shares eos's id in MoST layouts)."""
        c = self.config
        names = {c.pad_id: "<pad>", c.bos_id: "<bos>", c.eos_id: "<eos>", c.begin_audio_id: "<begin_of_audio>",
                 c.end_audio_id: "<end_of_audio>", c.begin_wave_id: "<begin_of_waveform>",
                 c.end_wave_id: "<end_of_waveform>"}
        return names

    def to_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "vocab": dataclasses.asdict(self.config)}

    @classmethod
    def from_dict(cls, data: dict) -> "VocabLayout":
        try:
            return cls(VocabConfig(**data["vocab"]), int(data["vocab_size"]))
        except (KeyError, TypeError) as err:
            raise VocabError(f"malformed vocabulary layout {data!r}: {err}") from None
