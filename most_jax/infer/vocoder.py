"""Units -> waveform with a vocoder checkpoint, and writing the result (.wav or .npy, atomically).

Deduplicated units (what the unit extractor and MoST's TTS emit) are first re-expanded by the
duration predictor: round(exp(log(1 + d)) - 1), at least 1 frame each, as transformers'
SeamlessM4TCodeHifiGan does at batch size 1. Frame-level units skip that (`use_durations=False`).

Several utterances are synthesised as one batch: each is padded at its end (its last unit
repeated) to a common length rounded up to FRAME_BUCKET, and its output cut back to its own
length. Every layer is a convolution over time, so only the last few frames of a padded utterance
(the receptive field reaching into the padding) can differ from synthesising it alone.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from typing import Sequence

from most_jax.atomic import atomic_file
from most_jax.models.vocoder.duration import durations_from_log
from most_jax.models.vocoder.generator import UnitGenerator

FRAME_BUCKET = 32  # batched synthesis pads units to a multiple of this (fewer compiled shapes)


class SynthesisError(ValueError):
    """Bad synthesis input (units, speaker or language id, output path); names the culprit."""


def check_ids(gen: UnitGenerator, units: np.ndarray, speaker: int | None, lang: int | None, what: str) -> None:
    cfg = gen.cfg
    if units.ndim != 1 or units.size == 0 or not np.issubdtype(units.dtype, np.integer):
        raise SynthesisError(f"{what}: expected a non-empty 1-D integer array of unit ids, got {units.dtype} "
                             f"{list(units.shape)}")
    if units.min() < 0 or units.max() >= cfg.num_units:
        raise SynthesisError(f"{what}: unit ids span {units.min()}..{units.max()}, the vocoder has "
                             f"{cfg.num_units} units (0..{cfg.num_units - 1})")
    for name, value, count in (("--speaker", speaker, cfg.num_speakers), ("--lang", lang, cfg.num_langs)):
        if value is not None and not 0 <= value < max(count, 1):
            raise SynthesisError(f"{name} {value}: the vocoder has {count} {name[2:]} embeddings"
                                 + ("" if count else " (none: leave it out)"))


def expand_units(gen: UnitGenerator, units: np.ndarray) -> np.ndarray:
    """Deduplicated units -> frame-level units, by the predicted durations."""
    log_dur = jax.jit(lambda g, u: g.log_durations(u))(gen, jnp.asarray(units[None], jnp.int32))
    return np.repeat(units, np.asarray(durations_from_log(log_dur))[0])


def synthesize(gen: UnitGenerator, units: np.ndarray, speaker: int | None = None, lang: int | None = None,
               use_durations: bool = True) -> np.ndarray:
    """float32 waveform [T * hop] at gen.cfg.sample_rate of one utterance's units."""
    units = np.asarray(units)
    check_ids(gen, units, speaker, lang, "units")
    if use_durations and gen.cfg.duration_predictor:
        units = expand_units(gen, units)
    ids = lambda v: jnp.asarray([0 if v is None else v], jnp.int32)  # noqa: E731
    wave = jax.jit(lambda g, u, s, l: g(u, s, l))(gen, jnp.asarray(units[None], jnp.int32), ids(speaker), ids(lang))
    return np.asarray(wave[0], np.float32)


def load_vocoder(path: str | Path, what: str = "--vocoder") -> UnitGenerator:
    """The generator side of vocoder checkpoint `path`; any other family is refused."""
    from most_jax.checkpoint.params_io import load_config, restore_model

    family = load_config(path).model.family
    if family != "vocoder":
        raise SynthesisError(f"{what} {path}: a {family!r} checkpoint, not a vocoder (model.family 'vocoder')")
    return restore_model(path)[1].generator


def _pad_rows(seqs: Sequence[np.ndarray], bucket: int) -> np.ndarray:
    """[B, N] with each row's last id repeated past its end, N a multiple of `bucket`."""
    width = -(-max(len(s) for s in seqs) // bucket) * bucket
    return np.stack([np.concatenate([s, np.full(width - len(s), s[-1], s.dtype)]) for s in seqs]).astype(np.int32)


@jax.jit
def _log_durations(gen: UnitGenerator, units_BN: jax.Array) -> jax.Array:
    return gen.log_durations(units_BN)


@jax.jit
def _waveforms(gen: UnitGenerator, units_BT: jax.Array, speaker_B: jax.Array, lang_B: jax.Array) -> jax.Array:
    return gen(units_BT, speaker_B, lang_B)


def synthesize_batch(gen: UnitGenerator, unit_seqs: Sequence[np.ndarray], speaker: int | None = None,
                     lang: int | None = None, use_durations: bool = True, bucket: int = FRAME_BUCKET,
                     what: str = "units") -> list[np.ndarray]:
    """One float32 waveform per unit sequence, all synthesised as one padded batch (see above)."""
    seqs = [np.asarray(u) for u in unit_seqs]
    if not seqs:
        return []
    for i, u in enumerate(seqs):
        check_ids(gen, u, speaker, lang, f"{what}[{i}]")
    if use_durations and gen.cfg.duration_predictor:
        durations = np.asarray(durations_from_log(_log_durations(gen, jnp.asarray(_pad_rows(seqs, bucket)))))
        seqs = [np.repeat(u, d[:len(u)]) for u, d in zip(seqs, durations)]
    ids = jnp.full((len(seqs),), 0 if speaker is None else speaker, jnp.int32), \
        jnp.full((len(seqs),), 0 if lang is None else lang, jnp.int32)
    waves = np.asarray(_waveforms(gen, jnp.asarray(_pad_rows(seqs, bucket)), *ids), np.float32)
    hop = gen.cfg.hop
    return [w[:len(u) * hop] for w, u in zip(waves, seqs)]


def write_waveform(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
    """.npy: the raw float32 samples; .wav: 16-bit PCM (clipped to [-1, 1]). Written atomically."""
    path = Path(path)
    if path.suffix not in (".wav", ".npy"):
        raise SynthesisError(f"--out {path}: the name must end in .wav or .npy")
    with atomic_file(path) as tmp:
        if path.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, wave.astype(np.float32))
        else:
            import soundfile as sf

            sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
