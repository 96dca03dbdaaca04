"""`most eval asr|tts`: held-out evaluation by generation (never teacher forcing).

An evaluation set is a manifest (`{"id","audio","text"}` JSONL; units are extracted with the
prepared directory's unit extractor) or a prepared directory (its speech/transcript records; the
reference text is the tokenizer's decoding of the stored text ids).
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
from most_jax.models.most import MoST
from most_jax.speech.audio import AudioError, load_audio
from most_jax.speech.manifest import read_manifest, resolve_audio_path


@dataclasses.dataclass(frozen=True)
class EvalItem:
    id: str
    units: np.ndarray  # unit ids 0..K-1
    text: str


def load_eval_set(path: str | Path, data: PreparedData, limit: int | None = None, log=None) -> list[EvalItem]:
    path, log = Path(path), log or sys.stderr
    items: list[EvalItem] = []
    if path.is_dir():
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
            items.append(EvalItem(str(entry["id"]), units, str(entry["text"])))
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
                 batch_size: int = 8) -> dict:
    """Unit error rate (edit distance over reference units) and position-wise unit accuracy."""
    start = time.monotonic()
    hyps = synthesize_units(model, data, [it.text for it in items], sampling=sampling, batch_size=batch_size)
    refs = [it.units.tolist() for it in items]
    rate = error_rate(refs, [h.tolist() for h in hyps])
    matches = sum(int(np.sum(np.asarray(r[:len(h)]) == h[:len(r)])) for r, h in zip(refs, hyps))
    return {"unit_error_rate": rate["rate"], "unit_accuracy": matches / max(rate["reference_length"], 1),
            "reference_units": rate["reference_length"], "generated_units": int(sum(len(h) for h in hyps)),
            "utterances": len(items), "seconds": time.monotonic() - start}
