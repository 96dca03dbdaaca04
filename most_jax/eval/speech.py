"""`most eval asr|tts`: held-out evaluation by generation (never teacher forcing).

An evaluation set is a manifest (`{"id","audio","text"}` JSONL; units are extracted with the
prepared directory's unit extractor) or a prepared directory (its speech/transcript records; the
reference text is the tokenizer's decoding of the stored text ids).

TTS WER (an `AsrJudge`): the generated units are spoken by a vocoder, the waveforms get units from
the ASR model's own unit extractor and are transcribed by it, and the WER against the input text
stands next to two floors measured by the same ASR: the original audio of the sentences, and the
vocoder's resynthesis of their reference units (what the vocoder loses, with perfect units).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from most_jax.data.pipeline import PreparedData
from most_jax.eval.wer import error_rate, word_error_rate
from most_jax.infer.generate import Sampling
from most_jax.infer.speech import synthesize_units, transcribe
from most_jax.infer.vocoder import synthesize_batch
from most_jax.models.most import MoST
from most_jax.models.vocoder.generator import UnitGenerator
from most_jax.speech.audio import SAMPLE_RATE, AudioError, load_audio, resample
from most_jax.speech.manifest import read_manifest, resolve_audio_path


@dataclasses.dataclass(frozen=True)
class EvalItem:
    id: str
    units: np.ndarray  # unit ids 0..K-1
    text: str
    wave: np.ndarray | None = None  # float32 at 16 kHz: manifest sets loaded with keep_audio


@dataclasses.dataclass(frozen=True)
class AsrJudge:
    """What TTS WER is measured with: a vocoder for the units and an ASR MoST with its assets
    (greedy, at most `max_new_tokens` tokens per transcript)."""

    model: MoST
    data: PreparedData
    vocoder: UnitGenerator
    speaker: int | None = None
    lang: int | None = None
    max_new_tokens: int = 128


def load_eval_set(path: str | Path, data: PreparedData, limit: int | None = None, log=None,
                  keep_audio: bool = False) -> list[EvalItem]:
    path, log = Path(path), log or sys.stderr
    items: list[EvalItem] = []
    if path.is_dir():
        if keep_audio:
            raise ValueError(f"{path}: a prepared directory holds units, not audio; TTS WER needs a manifest "
                             "(JSONL of id, audio, text) for its original-audio floor")
        for record in PreparedData(path).records("pair"):
            items.append(EvalItem(record.id, record.arrays["units"], data.tokenizer.decode(record.arrays["text"])))
            if limit and len(items) >= limit:
                break
        return items
    extractor = data.unit_extractor()
    skipped = 0
    for entry in read_manifest(path):
        try:
            wave, _ = load_audio(resolve_audio_path(path, entry["audio"]))
        except AudioError as err:
            skipped += 1
            print(f"eval: skipping {entry.get('id')}: {err}", file=log)
            continue
        units = np.asarray(extractor.extract(wave), np.int32)
        if units.size:
            items.append(EvalItem(str(entry["id"]), units, str(entry["text"]), wave if keep_audio else None))
        if limit and len(items) >= limit:
            break
    return items


def evaluate_asr(model: MoST, data: PreparedData, items: list[EvalItem], *, sampling: Sampling,
                 batch_size: int = 8) -> dict:
    start = time.monotonic()
    hyps = transcribe(model, data, [it.units for it in items], sampling=sampling, batch_size=batch_size)
    result = word_error_rate([it.text for it in items], hyps)
    result.update(utterances=len(items), seconds=time.monotonic() - start,
                  examples=[{"id": it.id, "reference": it.text, "hypothesis": h} for it, h in zip(items, hyps)])
    return result


def evaluate_tts(model: MoST, data: PreparedData, items: list[EvalItem], *, sampling: Sampling,
                 batch_size: int = 8, judge: AsrJudge | None = None) -> dict:
    """Unit error rate (edit distance over reference units) and position-wise unit accuracy; with
    a judge, TTS WER and its two floors too."""
    start = time.monotonic()
    hyps = synthesize_units(model, data, [it.text for it in items], sampling=sampling, batch_size=batch_size)
    refs = [it.units.tolist() for it in items]
    rate = error_rate(refs, [h.tolist() for h in hyps])
    matches = sum(int(np.sum(np.asarray(r[:len(h)]) == h[:len(r)])) for r, h in zip(refs, hyps))
    result = {"unit_error_rate": rate["rate"], "unit_accuracy": matches / max(rate["reference_length"], 1),
              "reference_units": rate["reference_length"], "generated_units": int(sum(len(h) for h in hyps)),
              "utterances": len(items)}
    if judge is not None:
        texts = [it.text for it in items]
        heard = {"tts": listen(judge, speak(judge, hyps), batch_size),
                 "original": listen(judge, [it.wave for it in items], batch_size),
                 "resynthesis": listen(judge, speak(judge, [it.units for it in items]), batch_size)}
        wers = {name: word_error_rate(texts, hyp) for name, hyp in heard.items()}
        result.update(tts_wer=wers["tts"], floors={"original": wers["original"], "resynthesis": wers["resynthesis"]},
                      examples=[{"id": it.id, "text": it.text, **{name: hyp[i] for name, hyp in heard.items()}}
                                for i, it in enumerate(items)])
    result["seconds"] = time.monotonic() - start
    return result


def speak(judge: AsrJudge, unit_seqs: list[np.ndarray]) -> list[np.ndarray | None]:
    """16 kHz waveforms of the unit sequences through the judge's vocoder (None: no units to speak)."""
    spoken = [i for i, u in enumerate(unit_seqs) if len(u)]
    waves = synthesize_batch(judge.vocoder, [unit_seqs[i] for i in spoken], judge.speaker, judge.lang)
    rate = judge.vocoder.cfg.sample_rate
    out: list[np.ndarray | None] = [None] * len(unit_seqs)
    for i, wave in zip(spoken, waves):
        out[i] = wave if rate == SAMPLE_RATE else resample(wave, rate, SAMPLE_RATE)
    return out


def listen(judge: AsrJudge, waves: list[np.ndarray | None], batch_size: int) -> list[str]:
    """The judge's transcripts of 16 kHz waveforms ("" where there is no speech or no unit)."""
    extractor = judge.data.unit_extractor()
    units = [np.zeros(0, np.int32) if w is None else np.asarray(extractor.extract(w), np.int32) for w in waves]
    heard = [i for i, u in enumerate(units) if u.size]
    texts = transcribe(judge.model, judge.data, [units[i] for i in heard], batch_size=batch_size,
                       sampling=Sampling(max_new_tokens=judge.max_new_tokens)) if heard else []
    out = [""] * len(waves)
    for i, text in zip(heard, texts):
        out[i] = text
    return out
