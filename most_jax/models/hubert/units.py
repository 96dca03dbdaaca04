"""HuBERT layer features as a unit-extractor backend (`FrameFeatures` kind "hubert").

`HubertFeatures(checkpoint, layer)` gives, for one 16 kHz waveform, the hidden states [T, D] of
layer `layer` of a HuBERT checkpoint (0: the first layer's input, N: the output of layer N, as
transformers' `output_hidden_states[N]`; MoST takes layer 11 of mhubert-base-25hz) at the
encoder's frame rate (16000 / prod(conv_stride): 50 Hz, 25 Hz for the 25 Hz variant), in
evaluation mode (no dropout, no masking). The jitted encoder compiles once per padded shape, so a
waveform is right-padded to a bucket length (`bucket_samples`: 1 s, then steps of 2^(1/4) = +19%)
and the encoder's length masks make the padding invisible: every bucket gives the features the
waveform gets alone. The checkpoint is named by its absolute path in units.json; it must stay there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np

from most_jax.speech.units import register_features

SAMPLE_RATE = 16000
_BUCKET_BASE = SAMPLE_RATE  # the smallest bucket: 1 s
_BUCKETS_PER_OCTAVE = 4


def bucket_samples(samples: int, frame_samples: int) -> int:
    """The padded length for a waveform of `samples`: the smallest of 1 s x 2^(k/4), rounded up to
    whole frames, that holds it."""
    k = max(0, math.ceil(_BUCKETS_PER_OCTAVE * math.log2(max(samples, 1) / _BUCKET_BASE) - 1e-9))
    while True:
        length = -(-math.ceil(_BUCKET_BASE * 2 ** (k / _BUCKETS_PER_OCTAVE)) // frame_samples) * frame_samples
        if length >= samples:
            return length
        k += 1


@functools.lru_cache(maxsize=4)
def _load(checkpoint: str):
    """(config, model) of a HuBERT checkpoint, read once per process."""
    from most_jax.checkpoint.params_io import CheckpointError, load_config, restore_model

    try:
        if load_config(checkpoint).model.family != "hubert":
            raise ValueError(f"HuBERT checkpoint {checkpoint}: a {load_config(checkpoint).model.family} checkpoint, "
                             "not hubert")
        return restore_model(checkpoint)
    except (CheckpointError, FileNotFoundError) as e:
        raise ValueError(f"HuBERT checkpoint {checkpoint}: {e}") from None


@dataclasses.dataclass(frozen=True)
class HubertFeatures:
    """Layer `layer` hidden states of the HuBERT checkpoint `checkpoint` (a directory); layer None:
    the last (MoST-C's continuous features)."""

    checkpoint: str
    layer: int | None = None
    kind = "hubert"

    def __post_init__(self):
        object.__setattr__(self, "checkpoint", str(Path(self.checkpoint).resolve()))
        layers = self._cfg.num_hidden_layers
        if self.layer is None:
            object.__setattr__(self, "layer", layers)
        if not 0 <= self.layer <= layers:
            raise ValueError(f"layer {self.layer} is not a layer of {self.checkpoint} (0..{layers}: 0 is the "
                             "first layer's input, N the output of layer N)")

    @property
    def _cfg(self):
        return _load(self.checkpoint)[0].model

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self._cfg.frame_rate_samples

    @property
    def dim(self) -> int:
        return self._cfg.hidden_size

    def __call__(self, wave_16k: np.ndarray) -> np.ndarray:
        from most_jax.models.hubert.encode import encode
        from most_jax.models.hubert.features import receptive_field

        cfg, model = _load(self.checkpoint)
        wave = np.asarray(wave_16k, np.float32).reshape(-1)
        if wave.size < receptive_field(cfg.model):
            return np.zeros((0, self.dim), np.float32)
        padded = np.zeros((1, bucket_samples(wave.size, cfg.model.frame_rate_samples)), np.float32)
        padded[0, :wave.size] = wave
        hidden, _, frames = encode(model, padded, np.array([wave.size], np.int32))
        return hidden[self.layer, 0, :frames[0]]

    def config(self) -> dict:
        return {"checkpoint": self.checkpoint, "layer": self.layer}


register_features("hubert", HubertFeatures)
