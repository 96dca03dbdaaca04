"""`most eval sqa`: spoken question answering, speech in and the answer in text (S->T) or in speech
(S->S, heard through an AsrJudge: vocoder, then the ASR's unit extractor and transcription).

An answer is right when the expected answer's normalised words (eval/wer.py) occur as a
contiguous run of the normalised response's words: "Paris" matches "she lives in paris" and
"paris", not "parisian" or an empty response.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from most_jax.data.pipeline import PreparedData
from most_jax.eval.speech import AsrJudge, listen, speak
from most_jax.eval.wer import normalize
from most_jax.infer.generate import Sampling
from most_jax.infer.speech import respond
from most_jax.models.most import MoST
from most_jax.speech.audio import AudioError, load_audio
from most_jax.speech.manifest import json_lines, resolve_audio_path


class SqaError(ValueError):
    """A dialog manifest the evaluation cannot read: names the file and line."""


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    units: np.ndarray  # the spoken question's units (0..K-1)
    answer: str


def answer_matches(answer: str, response: str) -> bool:
    want, got = normalize(answer), normalize(response)
    return bool(want) and any(got[i:i + len(want)] == want for i in range(len(got) - len(want) + 1))


def load_questions(path: str | Path, data: PreparedData, limit: int | None = None, log=None) -> list[Question]:
    """The dialogs of a manifest, each with a spoken prompt and a text answer (`most data sqa`'s
    shape; audio paths relative to the manifest); a question whose audio does not load is skipped
    with a message."""
    path, log = Path(path), log or sys.stderr
    if not path.is_file():
        raise SqaError(f"{path}: no such dialog manifest")
    extractor = data.unit_extractor()
    questions = []
    for number, entry in json_lines(path):
        prompt, response = entry.get("prompt"), entry.get("response")
        if not (isinstance(prompt, dict) and isinstance(prompt.get("audio"), str) and isinstance(response, dict)
                and isinstance(response.get("text"), str) and response["text"].strip()):
            raise SqaError(f"{path} line {number}: expected a dialog with prompt.audio and a response.text answer")
        try:
            wave, _ = load_audio(resolve_audio_path(path, prompt["audio"]))
        except AudioError as err:
            print(f"eval sqa: skipping {entry.get('id')}: {err}", file=log)
            continue
        units = np.asarray(extractor.extract(wave), np.int32)
        if units.size:
            questions.append(Question(str(entry.get("id", number)), units, response["text"]))
        if limit and len(questions) >= limit:
            break
    return questions


def evaluate_sqa(model: MoST, data: PreparedData, questions: list[Question], *, sampling: Sampling,
                 batch_size: int = 8, judge: AsrJudge | None = None) -> dict:
    """S->T accuracy; with a judge, S->S accuracy too."""
    start = time.monotonic()
    sources = [data.formatter.audio(q.units) for q in questions]
    text = respond(model, data, "spoken_qa_text", sources, sampling=sampling, batch_size=batch_size)
    responses = {"text": text}
    if judge is not None:
        units = respond(model, data, "spoken_qa_speech", sources, sampling=sampling, batch_size=batch_size)
        responses["speech"] = listen(judge, speak(judge, units), batch_size)
    result: dict = {"questions": len(questions)}
    for name, key in (("text", "s2t"), ("speech", "s2s")):
        if name in responses:
            right = [answer_matches(q.answer, r) for q, r in zip(questions, responses[name])]
            result[key] = {"accuracy": sum(right) / max(len(right), 1), "correct": sum(right)}
    result["examples"] = [{"id": q.id, "answer": q.answer, **{name: r[i] for name, r in responses.items()}}
                          for i, q in enumerate(questions)]
    result["seconds"] = time.monotonic() - start
    return result
