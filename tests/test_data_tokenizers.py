"""Text tokenizers: sentencepiece train/load round trip, HF tokenizer.json with DeepSeek markers."""

import json

import numpy as np
import pytest
from data_corpus import make_tokenizer, sentences
from tokenizers import Tokenizer, models, pre_tokenizers, decoders

from most_jax.data.tokenizers import (DEEPSEEK_BOS, DEEPSEEK_EOS, HFTokenizer, SentencePieceTokenizer, TokenizerError,
                                      load_tokenizer, train_sentencepiece)
from most_jax.vocab import VocabLayout


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("spm"))


def test_sentencepiece_round_trip(spm_dir):
    tok = load_tokenizer(spm_dir)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.text_size == 400 and tok.bos_id is None and tok.eos_id is None
    for text in sentences(5, seed=9) + ["Transcribe the following speech into text.\n\nOutput: ",
                                        "Zürich  ünïcode ✓ never seen in training"]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.max() < tok.text_size
        assert tok.decode(ids) == text


def test_sentencepiece_template_text_is_compact(spm_dir):
    tok = load_tokenizer(spm_dir)
    # Trained with the template strings, the instruction is a handful of pieces, not bytes.
    assert len(tok.encode("Transcribe the following speech into text.")) <= 12
    assert len(tok.encode("\n\n")) == 2


def test_sentencepiece_training_is_deterministic(tmp_path, spm_dir):
    # The model file also records the (temporary) input paths, so compare what it does.
    again, first = load_tokenizer(make_tokenizer(tmp_path)), load_tokenizer(spm_dir)
    pieces = [first.decode([i]) for i in range(first.text_size)]
    assert [again.decode([i]) for i in range(again.text_size)] == pieces
    text = " ".join(sentences(20, seed=3))
    np.testing.assert_array_equal(again.encode(text), first.encode(text))


def test_train_errors_name_the_culprit(tmp_path):
    with pytest.raises(TokenizerError, match="nope.txt"):
        train_sentencepiece([tmp_path / "nope.txt"], tmp_path / "out", 400)
    with pytest.raises(TokenizerError, match="no spm.model or tokenizer.json"):
        load_tokenizer(tmp_path)


def _deepseek_like_tokenizer(path):
    """A word-level tokenizer.json whose bos/eos carry the DeepSeek spellings at the end of the text ids,
    followed by an extra added token (as DeepSeek's FIM markers follow eos)."""
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", "output", ":"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens([DEEPSEEK_BOS, DEEPSEEK_EOS, "<extra>"])
    tok.save(str(path / "tokenizer.json"))


def test_hf_tokenizer_json(tmp_path):
    _deepseek_like_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.text_size) == (5, 6, 7)
    ids = tok.encode("hello world")
    np.testing.assert_array_equal(ids, [1, 2])
    assert tok.decode(ids) == "hello world"
    layout = VocabLayout.after_text(tok.text_size, 3, bos_id=tok.bos_id, eos_id=tok.eos_id, multiple=1)
    assert (layout.bos_id, layout.eos_id, layout.config.audio_unit_offset) == (5, 6, 7)
    with pytest.raises(TokenizerError, match="beyond the text ids"):
        tok.encode("hello <extra>")


def test_hf_bad_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        load_tokenizer(tmp_path)
