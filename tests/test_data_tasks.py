"""Task formatting: the MoST template token by token, single-id markers, modality ids, loss masks."""

import numpy as np
import pytest
from data_corpus import make_tokenizer

from most_jax.data.tasks import (ASR_INSTRUCTION, OUTPUT_MARKER, SEPARATOR, SPOKEN_QA_SPEECH_INSTRUCTION,
                                 SPOKEN_QA_TEXT_INSTRUCTION, TASK_IDS, TTS_INSTRUCTION, Formatter)
from most_jax.data.tokenizers import load_tokenizer
from most_jax.vocab import AUDIO, TEXT, VocabLayout

NUM_UNITS = 13


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = load_tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")))
    layout = VocabLayout.after_text(tok.text_size, NUM_UNITS)
    return tok, layout, Formatter(layout, tok)


def _expected(tok, layout, instruction, source, target):
    """The template written out piece by piece, with (tokens, is-response) per piece."""
    bos, eos = [layout.bos_id], [layout.eos_id]
    prompt = bos + list(tok.encode(instruction)) + list(tok.encode(SEPARATOR)) + list(source) + eos + list(
        tok.encode(OUTPUT_MARKER))
    response = bos + list(target) + eos
    return np.array(prompt + response), np.array([0] * len(prompt) + [1] * len(response))


def _audio(layout, units):
    return [layout.begin_audio_id] + [layout.config.audio_unit_offset + u for u in units] + [layout.end_audio_id]


def test_asr_template(setup):
    tok, layout, fmt = setup
    text, units = tok.encode("The dog runs."), np.array([3, 0, 12, 7])
    ex = fmt.asr(text, units)
    tokens, mask = _expected(tok, layout, ASR_INSTRUCTION, _audio(layout, units), text)
    np.testing.assert_array_equal(ex.tokens, tokens)
    np.testing.assert_array_equal(ex.loss_mask, mask)
    assert ex.task == TASK_IDS["asr"]
    # The markers are single ids, exactly once each where the template puts them.
    assert (ex.tokens == layout.bos_id).sum() == 2 and (ex.tokens == layout.eos_id).sum() == 2
    assert (ex.tokens == layout.begin_audio_id).sum() == 1 and (ex.tokens == layout.end_audio_id).sum() == 1
    # Modality: the audio span (markers included) is audio, everything else text.
    expected_modality = np.where(layout.is_unit(tokens) | (tokens == layout.begin_audio_id)
                                 | (tokens == layout.end_audio_id), AUDIO, TEXT)
    np.testing.assert_array_equal(ex.modality, expected_modality)
    assert (ex.modality == AUDIO).sum() == len(units) + 2
    # Loss only on the response: BOS transcript EOS.
    np.testing.assert_array_equal(ex.tokens[ex.loss_mask == 1], [layout.bos_id, *text, layout.eos_id])


def test_tts_template(setup):
    tok, layout, fmt = setup
    text, units = tok.encode("A red bird."), np.array([1, 1, 5])
    ex = fmt.tts(text, units)
    tokens, mask = _expected(tok, layout, TTS_INSTRUCTION, text, _audio(layout, units))
    np.testing.assert_array_equal(ex.tokens, tokens)
    np.testing.assert_array_equal(ex.loss_mask, mask)
    response = ex.tokens[ex.loss_mask == 1]
    np.testing.assert_array_equal(layout.tokens_to_units(response[2:-2]), units)
    assert (ex.modality[ex.loss_mask == 1] == AUDIO).sum() == len(units) + 2


def test_markers_cannot_be_spelled_in_text(setup):
    tok, layout, fmt = setup
    # The original's bug: markers written as strings. Here a spelled marker stays plain text.
    spelled = tok.encode("<｜begin▁of▁sentence｜><begin_of_audio>")
    assert not np.isin(spelled, [layout.bos_id, layout.eos_id, layout.begin_audio_id]).any()
    with pytest.raises(ValueError, match="not a plain text id"):
        fmt.text([5, layout.bos_id])


def test_language_model_tasks(setup):
    tok, layout, fmt = setup
    text = tok.encode("The cat sees the fish.")
    ex = fmt.text_lm(text)
    np.testing.assert_array_equal(ex.tokens, [layout.bos_id, *text, layout.eos_id])
    np.testing.assert_array_equal(ex.loss_mask, [0] + [1] * (len(text) + 1))
    assert (ex.modality == TEXT).all() and ex.task == TASK_IDS["text_lm"]
    units = np.array([4, 9, 9, 2])
    ex = fmt.unit_lm(units)
    np.testing.assert_array_equal(ex.tokens, [layout.bos_id, *_audio(layout, units), layout.eos_id])
    np.testing.assert_array_equal(ex.modality, [TEXT] + [AUDIO] * (len(units) + 2) + [TEXT])
    assert ex.loss_mask.tolist() == [0] + [1] * (len(units) + 3)


def test_spoken_qa(setup):
    tok, layout, fmt = setup
    q, a_text, a_units = np.array([2, 3]), tok.encode("Near the river."), np.array([6, 7, 8])
    ex = fmt.spoken_qa_text(q, a_text)
    tokens, mask = _expected(tok, layout, SPOKEN_QA_TEXT_INSTRUCTION, _audio(layout, q), a_text)
    np.testing.assert_array_equal(ex.tokens, tokens)
    np.testing.assert_array_equal(ex.loss_mask, mask)
    ex = fmt.spoken_qa_speech(q, a_units)
    tokens, mask = _expected(tok, layout, SPOKEN_QA_SPEECH_INSTRUCTION, _audio(layout, q), _audio(layout, a_units))
    np.testing.assert_array_equal(ex.tokens, tokens)
    assert ex.task == TASK_IDS["spoken_qa_speech"]


def test_instruction_records(setup):
    tok, layout, fmt = setup
    instruction, prompt, response = tok.encode("Repeat."), tok.encode("The dog."), tok.encode("The dog.")
    ex = fmt.instruct(instruction, prompt_text_ids=prompt, response_text_ids=response)
    tokens, mask = _expected(tok, layout, "Repeat.", prompt, response)
    np.testing.assert_array_equal(ex.tokens, tokens)
    np.testing.assert_array_equal(ex.loss_mask, mask)
    # Without an instruction the prompt stands alone: BOS prompt EOS "\n\nOutput: " | BOS response EOS.
    units = np.array([0, 1])
    ex = fmt.instruct(None, prompt_units=units, response_text_ids=response)
    head = [layout.bos_id, *_audio(layout, units), layout.eos_id, *tok.encode(OUTPUT_MARKER)]
    np.testing.assert_array_equal(ex.tokens, [*head, layout.bos_id, *response, layout.eos_id])
    with pytest.raises(ValueError, match="exactly one of a text or a spoken prompt"):
        fmt.instruct(None, prompt_text_ids=prompt, prompt_units=units, response_text_ids=response)
