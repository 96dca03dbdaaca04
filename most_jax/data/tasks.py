"""Task formatting: token sequences with per-token modality ids and loss masks.

The MoST template (SPEC section 2), with `+` joining token pieces:

    prompt   = BOS + instruction + "\\n\\n" + input + EOS + "\\n\\nOutput: "
    response = BOS + output + EOS

Audio is `<begin_of_audio> + units + <end_of_audio>`. BOS, EOS and the audio markers are
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
from most_jax.vocab import VocabLayout

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
    """One formatted sequence: int32 arrays of equal length and the task id."""

    tokens: np.ndarray
    modality: np.ndarray
    loss_mask: np.ndarray
    task: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


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

    # ------------------------------------------------------------------ pieces
    def text(self, text_ids) -> np.ndarray:
        text_ids = np.asarray(text_ids, np.int32)
        if not self.layout.is_text(text_ids).all():
            culprit = int(text_ids[~self.layout.is_text(text_ids)][0])
            raise ValueError(f"text ids contain {culprit}, which is not a plain text id of the layout")
        return text_ids

    def audio(self, units) -> np.ndarray:
        return np.concatenate([self._boa, self.layout.units_to_tokens(units), self._eoa])

    def prompt_response(self, task: str, instruction: np.ndarray | None, source: np.ndarray,
                        target: np.ndarray) -> Example:
        """BOS [instruction "\\n\\n"] source EOS "\\n\\nOutput: " | BOS target EOS; loss on the response."""
        prompt = self._prompt(instruction, source)
        response = np.concatenate([self._bos, target, self._eos])
        tokens = np.concatenate([prompt, response])
        loss_mask = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(response), np.int32)])
        return self._example(task, tokens, loss_mask)

    def _prompt(self, instruction: np.ndarray | None, source: np.ndarray) -> np.ndarray:
        head = [] if instruction is None else [instruction, self._separator]
        return np.concatenate([self._bos, *head, source, self._eos, self._output_marker])

    def generation_prompt(self, task: str, source: np.ndarray) -> np.ndarray:
        """The tokens a model continues to answer `task` for `source` (formatted text or audio):
        the prompt plus the fixed start of the response (BOS, and begin-of-audio for speech
        answers), so generation emits only the content and then EOS or end-of-audio."""
        if task not in ("asr", "tts", "spoken_qa_text", "spoken_qa_speech"):
            raise ValueError(f"no generation prompt for task {task!r}")
        head = [self._bos, self._boa] if task in ("tts", "spoken_qa_speech") else [self._bos]
        return np.concatenate([self._prompt(self._instruction[task], source), *head]).astype(np.int32)

    def _example(self, task: str, tokens: np.ndarray, loss_mask: np.ndarray) -> Example:
        tokens = tokens.astype(np.int32)
        return Example(tokens, np.asarray(self.layout.modality(tokens), np.int32), loss_mask, TASK_IDS[task])

    def _language_model(self, task: str, body: np.ndarray) -> Example:
        tokens = np.concatenate([self._bos, body, self._eos])
        loss_mask = np.ones(len(tokens), np.int32)
        loss_mask[0] = 0  # nothing predicts the first BOS
        return self._example(task, tokens, loss_mask)

    # ------------------------------------------------------------------ tasks
    def asr(self, text_ids, units) -> Example:
        return self.prompt_response("asr", self._instruction["asr"], self.audio(units), self.text(text_ids))

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
