"""The padded lengths of U2++ step batches: shared by the pipeline that pads to them and the
family whose train step is compiled for them (and imports no Grain)."""

from __future__ import annotations

from most_jax.config import DataConfig
from most_jax.speech.features import FrameOptions, num_frames


def bucket_frames(cfg: DataConfig) -> tuple[int, ...]:
    """Padded fbank frames per bucket, ascending: data.speech.bucket_frames, or one bucket of the
    frames of data.max_audio_seconds of audio."""
    if cfg.speech.bucket_frames:
        return tuple(cfg.speech.bucket_frames)
    frame = FrameOptions()
    return (num_frames(int(round(cfg.max_audio_seconds * frame.sample_rate)), frame),)
