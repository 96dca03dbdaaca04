"""Task formatting: token sequences with per-token modality ids and loss masks.

The MoST template (SPEC section 2), with `+` joining token pieces:

    prompt   = BOS + instruction + "\\n\\n" + input + EOS + "\\n\\nOutput: "
    response = BOS + output + EOS

Audio is `<begin_of_audio> + units + <end_of_audio>`; MoST-C hears speech as continuous frames
instead, `<begin_of_waveform> + frames + <end_of_waveform>` (`Formatter.wave`), each frame one
position whose input is the frame's features (`Example.features`, `Example.continuous`), its
token id the pad id, its modality audio. BOS, EOS and the audio markers are
inserted as their ids from the vocabulary layout, never spelled as strings (the original
release spelled them in ASCII, so they never became the special tokens). Instructions and the
separators are ordinary text, encoded once per formatter.

`Example.loss_mask[i] = 1` marks token i as a prediction target: the response tokens for
prompt/response tasks, every token after the first for the language-model tasks. The pipeline
turns this into next-token `targets` (see most_jax/data/pipeline.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from most_jax.data.tokenizers import TextTokenizer
from most_jax.vocab import AUDIO, VocabLayout

TASKS = ("asr", "tts", "text_lm", "unit_lm", "spoken_qa_text", "spoken_qa_speech", "instruct")
TASK_IDS = {name: i for i, name in enumerate(TASKS)}

ASR_INSTRUCTION = "Transcribe the following speech into text."
TTS_INSTRUCTION = "Convert the following text into speech."
SPOKEN_QA_TEXT_INSTRUCTION = "Answer the following spoken question in text."
SPOKEN_QA_SPEECH_INSTRUCTION = "Answer the following spoken question in speech."
SEPARATOR = "\n\n"
OUTPUT_MARKER = "\n\nOutput: "
# Text the tokenizer should learn to encode compactly (passed to sentencepiece training).
TEMPLATE_TEXTS = (ASR_INSTRUCTION, TTS_INSTRUCTION, SPOKEN_QA_TEXT_INSTRUCTION, SPOKEN_QA_SPEECH_INSTRUCTION,
                  "Output: ")


@dataclasses.dataclass(frozen=True)
class Example:
    """One formatted sequence: int32 arrays of equal length and the task id; for a sequence with
    continuous speech frames, `features` float32 [n, F] (zero rows elsewhere) and `continuous`
    int32 [n] (1 at the frames)."""

    tokens: np.ndarray
    modality: np.ndarray
    loss_mask: np.ndarray
    task: int
    features: np.ndarray | None = None
    continuous: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclasses.dataclass(frozen=True)
class Frames:
    """Continuous speech frames float32 [n, F], one sequence position each (MoST-C)."""

    values: np.ndarray

    def __len__(self) -> int:
        return int(self.values.shape[0])


def _length(pieces) -> int:
    """len(_join(pieces)[0]) without building the arrays."""
    return sum(_length(p) if isinstance(p, tuple) else len(p) for p in pieces)


def _join(pieces) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(tokens, features, continuous) of pieces that are id arrays, Frames or tuples of pieces;
    features/continuous are None when no piece is Frames. Frame positions hold token id -1 (the
    caller puts the pad id there)."""
    flat = []

    def walk(piece):
        if isinstance(piece, tuple):
            for p in piece:
                walk(p)
        else:
            flat.append(piece)

    walk(tuple(pieces))
    tokens = np.concatenate([np.full(len(p), -1, np.int32) if isinstance(p, Frames) else np.asarray(p, np.int32)
                             for p in flat])
    frames = [p for p in flat if isinstance(p, Frames)]
    if not frames:
        return tokens, None, None
    dims = {p.values.shape[1] for p in frames}
    if len(dims) != 1:
        raise ValueError(f"continuous frames of different widths in one sequence: {sorted(dims)}")
    features = np.zeros((len(tokens), dims.pop()), np.float32)
    continuous = np.zeros(len(tokens), np.int32)
    start = 0
    for p in flat:
        if isinstance(p, Frames):
            features[start:start + len(p)] = p.values
            continuous[start:start + len(p)] = 1
        start += len(p)
    return tokens, features, continuous


class Formatter:
    """Formats tokenised records (text ids, unit ids) into `Example`s for each task."""

    def __init__(self, layout: VocabLayout, tokenizer: TextTokenizer):
        self.layout = layout
        encode = tokenizer.encode
        self._instruction = {
            "asr": encode(ASR_INSTRUCTION), "tts": encode(TTS_INSTRUCTION),
            "spoken_qa_text": encode(SPOKEN_QA_TEXT_INSTRUCTION),
            "spoken_qa_speech": encode(SPOKEN_QA_SPEECH_INSTRUCTION)}
        self._separator = encode(SEPARATOR)
        self._output_marker = encode(OUTPUT_MARKER)
        self._bos = np.asarray([layout.bos_id], np.int32)
        self._eos = np.asarray([layout.eos_id], np.int32)
        self._boa = np.asarray([layout.begin_audio_id], np.int32)
        self._eoa = np.asarray([layout.end_audio_id], np.int32)
        self._bow = np.asarray([layout.config.begin_wave_id], np.int32)
        self._eow = np.asarray([layout.config.end_wave_id], np.int32)

    # ------------------------------------------------------------------ pieces
    def text(self, text_ids) -> np.ndarray:
        text_ids = np.asarray(text_ids, np.int32)
        if not self.layout.is_text(text_ids).all():
            culprit = int(text_ids[~self.layout.is_text(text_ids)][0])
            raise ValueError(f"text ids contain {culprit}, which is not a plain text id of the layout")
        return text_ids

    def audio(self, units) -> np.ndarray:
        return np.concatenate([self._boa, self.layout.units_to_tokens(units), self._eoa])

    def wave(self, features) -> tuple:
        """Continuous speech (MoST-C): float [n, F] frames between the begin/end-of-waveform markers."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(f"continuous speech features must be [frames > 0, dims], got shape {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("continuous speech features are not all finite")
        return self._bow, Frames(features), self._eow

    def prompt_response(self, task: str, instruction: np.ndarray | None, source, target) -> Example:
        """BOS [instruction "\\n\\n"] source EOS "\\n\\nOutput: " | BOS target EOS; loss on the response.
        `source` and `target` are id arrays or `wave` pieces."""
        prompt = self._prompt(instruction, source)
        response = (self._bos, target, self._eos)
        n_prompt, n_response = _length(prompt), _length(response)
        loss_mask = np.concatenate([np.zeros(n_prompt, np.int32), np.ones(n_response, np.int32)])
        return self._example(task, (prompt, response), loss_mask)

    def _prompt(self, instruction: np.ndarray | None, source) -> tuple:
        head = () if instruction is None else (instruction, self._separator)
        return (self._bos, *head, source, self._eos, self._output_marker)

    def generation_prompt(self, task: str, source) -> Example:
        """What a model continues to answer `task` for `source` (formatted text, audio or wave):
        the prompt plus the fixed start of the response (BOS, and begin-of-audio for speech
        answers), so generation emits only the content and then EOS or end-of-audio. Its
        loss_mask is all zero."""
        if task not in ("asr", "tts", "spoken_qa_text", "spoken_qa_speech"):
            raise ValueError(f"no generation prompt for task {task!r}")
        head = (self._bos, self._boa) if task in ("tts", "spoken_qa_speech") else (self._bos,)
        pieces = (self._prompt(self._instruction[task], source), *head)
        return self._example(task, pieces, np.zeros(_length(pieces), np.int32))

    def _example(self, task: str, pieces, loss_mask: np.ndarray) -> Example:
        tokens, features, continuous = _join(pieces)
        modality = np.asarray(self.layout.modality(np.maximum(tokens, 0)), np.int32)
        if continuous is not None:
            tokens = np.where(continuous != 0, self.layout.pad_id, tokens).astype(np.int32)
            modality = np.where(continuous != 0, AUDIO, modality).astype(np.int32)
        return Example(tokens, modality, loss_mask, TASK_IDS[task], features, continuous)

    def _language_model(self, task: str, body: np.ndarray) -> Example:
        pieces = (self._bos, body, self._eos)
        loss_mask = np.ones(_length(pieces), np.int32)
        loss_mask[0] = 0  # nothing predicts the first BOS
        return self._example(task, pieces, loss_mask)

    # ------------------------------------------------------------------ tasks
    def asr(self, text_ids, units=None, features=None) -> Example:
        """Speech -> transcript; the speech as units, or as continuous `features` (MoST-C)."""
        if (units is None) == (features is None):
            raise ValueError("an ASR example needs exactly one of units or continuous features")
        speech = self.audio(units) if features is None else self.wave(features)
        return self.prompt_response("asr", self._instruction["asr"], speech, self.text(text_ids))

    def tts(self, text_ids, units) -> Example:
        return self.prompt_response("tts", self._instruction["tts"], self.text(text_ids), self.audio(units))

    def text_lm(self, text_ids) -> Example:
        return self._language_model("text_lm", self.text(text_ids))

    def unit_lm(self, units) -> Example:
        return self._language_model("unit_lm", self.audio(units))

    def spoken_qa_text(self, question_units, answer_text_ids, instruction_ids=None) -> Example:
        """Speech question -> text answer; the record's own instruction, if any, replaces the default."""
        return self.prompt_response("spoken_qa_text", self._instruction_or("spoken_qa_text", instruction_ids),
                                    self.audio(question_units), self.text(answer_text_ids))

    def spoken_qa_speech(self, question_units, answer_units, instruction_ids=None) -> Example:
        return self.prompt_response("spoken_qa_speech", self._instruction_or("spoken_qa_speech", instruction_ids),
                                    self.audio(question_units), self.audio(answer_units))

    def _instruction_or(self, task: str, instruction_ids) -> np.ndarray:
        if instruction_ids is None or len(instruction_ids) == 0:
            return self._instruction[task]
        return self.text(instruction_ids)

    def instruct(self, instruction_ids, prompt_text_ids=None, prompt_units=None, response_text_ids=None,
                 response_units=None) -> Example:
        """An instruction record: a text or spoken prompt, a text or spoken response, and an optional
        instruction (None or empty: the prompt stands alone, `BOS prompt EOS \\n\\nOutput: `)."""
        if (prompt_text_ids is None) == (prompt_units is None):
            raise ValueError("an instruction record needs exactly one of a text or a spoken prompt")
        if (response_text_ids is None) == (response_units is None):
            raise ValueError("an instruction record needs exactly one of a text or a spoken response")
        source = self.text(prompt_text_ids) if prompt_units is None else self.audio(prompt_units)
        target = self.text(response_text_ids) if response_units is None else self.audio(response_units)
        instruction = None if instruction_ids is None or len(instruction_ids) == 0 else self.text(instruction_ids)
        return self.prompt_response("instruct", instruction, source, target)
