"""`most vocoder eval`: how well a vocoder speaks units, on held-out audio, without an ASR model.

Each utterance's frame-level units (the extractor's, aligned with the audio: data/vocoder_batches)
are synthesised and compared with the original audio and units:
- `mel_l1`: mean |log-mel(synthesis) - log-mel(original)| with the vocoder's own mel settings
  (the training loss, on audio it never trained on);
- `unit_error_rate`: edit distance between the deduplicated units the extractor hears in the
  synthesis and those of the original, over the original's (what a unit-hearing model such as
  MoST's ASR loses to the vocoder);
- `predicted_durations_unit_error_rate`: the same, when the deduplicated units are re-expanded by the
  vocoder's duration predictor instead of the true durations (what TTS synthesis does).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from most_jax.data.vocoder_batches import aligned_units
from most_jax.eval.wer import error_rate
from most_jax.infer.vocoder import synthesize_batch
from most_jax.models.vocoder.duration import run_lengths
from most_jax.models.vocoder.family import mel
from most_jax.models.vocoder.generator import UnitGenerator
from most_jax.speech.units import UnitExtractor


def _mel(gen: UnitGenerator, wave_BT: np.ndarray) -> jax.Array:
    return mel(gen.cfg, jax.numpy.asarray(wave_BT))  # eagerly: one compile per length would cost more


def evaluate_vocoder(gen: UnitGenerator, extractor: UnitExtractor, waves: list[np.ndarray],
                     speakers: list[int | None], batch_size: int = 8) -> dict:
    """The figures above over 16 kHz waveforms `waves` (each with its speaker id, or None)."""
    start = time.monotonic()
    frame_units = [aligned_units(extractor, w) for w in waves]
    keep = [i for i, u in enumerate(frame_units) if u.size]
    refs, heard, heard_pred, mel_sum, mel_frames = [], [], [], 0.0, 0
    for lo in range(0, len(keep), batch_size):
        chunk = keep[lo:lo + batch_size]
        for speaker in sorted({speakers[i] for i in chunk}, key=lambda s: -1 if s is None else s):
            rows = [i for i in chunk if speakers[i] == speaker]
            true = synthesize_batch(gen, [frame_units[i] for i in rows], speaker, use_durations=False)
            dedup = [run_lengths(frame_units[i])[0] for i in rows]
            predicted = (synthesize_batch(gen, dedup, speaker) if gen.cfg.duration_predictor else [None] * len(rows))
            for i, wave, wave_pred, units in zip(rows, true, predicted, dedup):
                n = min(wave.size, waves[i].size)
                diff = np.abs(np.asarray(_mel(gen, wave[None, :n])) - np.asarray(_mel(gen, waves[i][None, :n])))
                mel_sum, mel_frames = mel_sum + float(diff.sum()), mel_frames + diff.size
                refs.append(units.tolist())
                heard.append(extractor.extract(wave).tolist())
                if wave_pred is not None:
                    heard_pred.append(extractor.extract(wave_pred).tolist())
    result = {"utterances": len(refs), "mel_l1": mel_sum / max(mel_frames, 1),
              "unit_error_rate": error_rate(refs, heard)["rate"] if refs else None,
              "predicted_durations_unit_error_rate": error_rate(refs, heard_pred)["rate"] if heard_pred else None,
              "seconds": time.monotonic() - start}
    return result
