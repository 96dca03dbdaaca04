"""Speech tasks by generation with a trained MoST: ASR (units -> text), TTS (text -> units) and
spoken question answering (units -> text or units).

Prompts follow the training template (most_jax/data/tasks.py). Decoding is constrained to the
modality being written: text ids and EOS for transcripts, unit ids and end-of-audio for speech.
Prompts are grouped into fixed-size batches of bucketed width so a whole evaluation compiles the
generation loop only a few times.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from most_jax.data.pipeline import PreparedData
from most_jax.data.tasks import Example
from most_jax.infer.generate import Sampling, generate, speech_token_mask, text_token_mask
from most_jax.models.most import MoST

WIDTH_BUCKET = 32  # prompt widths are padded up to a multiple of this


class AssetsMismatch(ValueError):
    """The tokenizer/units of a prepared directory do not fit the checkpoint's vocabulary."""


def check_assets(model: MoST, data: PreparedData) -> None:
    cfg = model.cfg
    if data.layout.vocab_size != cfg.vocab_size or data.layout.config != cfg.vocab:
        raise AssetsMismatch(f"{data.directory}: its vocabulary layout (vocab_size {data.layout.vocab_size}) differs "
                             f"from the checkpoint's (vocab_size {cfg.vocab_size}); use the prepared directory the "
                             f"model was trained on")


def _batched_generate(model: MoST, prompts: Sequence[Example], *, allowed: np.ndarray, stop_id: int,
                      sampling: Sampling, batch_size: int, seed: int) -> list[list[int]]:
    # Similar lengths together; every call gets `batch_size` rows (the last batch is filled with
    # copies of its first prompt, whose outputs are dropped) and a bucketed width.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    continuous = any(p.features is not None for p in prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        chunk_prompts = [prompts[i] for i in chunk]
        chunk_prompts += [chunk_prompts[0]] * (batch_size - len(chunk_prompts))
        frames = [_frames(p, model.cfg.continuous_input_dim) for p in chunk_prompts] if continuous else None
        outs = generate(model, [p.tokens.tolist() for p in chunk_prompts], allowed=allowed, stop_ids=[stop_id],
                        sampling=sampling, seed=seed + start, width_multiple=WIDTH_BUCKET, frames=frames)
        for i, out in zip(chunk, outs):
            results[i] = out
    return results


def _frames(prompt: Example, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if prompt.features is None:
        return np.zeros((len(prompt), dim), np.float32), np.zeros(len(prompt), np.int32)
    return prompt.features, prompt.continuous


SPEECH_ANSWERS = ("tts", "spoken_qa_speech")  # generation tasks that answer in speech units


def respond(model: MoST, data: PreparedData, task: str, sources: Sequence[np.ndarray], *, sampling: Sampling,
            batch_size: int = 8, seed: int = 0) -> list:
    """The answers of a generation task (Formatter.generation_prompt) to formatted sources (text,
    audio or, MoST-C, wave pieces): text for asr / spoken_qa_text, unit id arrays (0..K-1) for
    tts / spoken_qa_speech."""
    check_assets(model, data)
    cfg = model.cfg
    speech = task in SPEECH_ANSWERS
    prompts = [data.formatter.generation_prompt(task, source) for source in sources]
    allowed = speech_token_mask(cfg.vocab, cfg.vocab_size) if speech else text_token_mask(cfg.vocab, cfg.vocab_size)
    outs = _batched_generate(model, prompts, allowed=allowed, stop_id=cfg.vocab.end_audio_id if speech else
                             cfg.vocab.eos_id, sampling=sampling, batch_size=batch_size, seed=seed)
    if speech:
        return [data.layout.tokens_to_units(np.asarray(out, np.int32)) for out in outs]
    return [data.tokenizer.decode(out) for out in outs]


def transcribe(model: MoST, data: PreparedData, unit_seqs: Sequence[np.ndarray], *, sampling: Sampling,
               batch_size: int = 8, seed: int = 0) -> list[str]:
    """ASR: unit id sequences (0..K-1) -> transcripts."""
    return respond(model, data, "asr", [data.formatter.audio(u) for u in unit_seqs], sampling=sampling,
                   batch_size=batch_size, seed=seed)


def transcribe_features(model: MoST, data: PreparedData, feature_seqs: Sequence[np.ndarray], *,
                        sampling: Sampling, batch_size: int = 8, seed: int = 0) -> list[str]:
    """ASR from continuous speech frames [n, F] (MoST-C) -> transcripts."""
    if not model.cfg.continuous_input_dim:
        raise ValueError("continuous speech input needs a MoST-C checkpoint (model.continuous_input_dim > 0)")
    return respond(model, data, "asr", [data.formatter.wave(f) for f in feature_seqs], sampling=sampling,
                   batch_size=batch_size, seed=seed)


def synthesize_units(model: MoST, data: PreparedData, texts: Sequence[str], *, sampling: Sampling,
                     batch_size: int = 8, seed: int = 0) -> list[np.ndarray]:
    """TTS: texts -> unit id sequences (0..K-1), deduplicated units as the model was trained on."""
    return respond(model, data, "tts", [data.formatter.text(data.tokenizer.encode(t)) for t in texts],
                   sampling=sampling, batch_size=batch_size, seed=seed)
