"""Word/unit error rates against hand-computed cases."""

import numpy as np
import pytest

from most_jax.eval.wer import (character_error_rate, edit_distance, error_rate, normalize, normalized_text,
                              word_error_rate)


def test_normalize_keeps_words_and_apostrophes():
    assert normalize("It's  a Test, isn't it?") == ["it's", "a", "test", "isn't", "it"]
    assert normalize("") == []


@pytest.mark.parametrize("ref, hyp, dist", [
    ("abc", "abc", 0), ("abc", "", 3), ("", "xy", 2), ("kitten", "sitting", 3), ("abcd", "acbd", 2),
])
def test_edit_distance(ref, hyp, dist):
    assert edit_distance(ref, hyp) == dist


def test_word_error_rate_is_corpus_level():
    result = word_error_rate(["the cat sat", "a dog"], ["the cat sat down", "the dog"])
    # One insertion in the first, one substitution in the second: 2 errors over 5 words.
    assert result == {"wer": 0.4, "word_errors": 2, "words": 5}
    assert error_rate([[1, 2, 3]], [[1, 3]])["rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        error_rate([[1]], [])


EDGE_PAIRS = [
    ("", "something here"), ("all deleted", ""), ("", ""), ("Hello, World!", "hello world"),
    ("naïve café façade", "naive cafe facade"), ("don't stop", "dont stop"), ("a  b\tc\n", "a b c"),
    ("über straße", "uber strasse"), ("...!?", "words"), ("x y z", "x y z"),
]


def _random_text(rng, alphabet="ab c'.,É", max_len=14):
    return "".join(rng.choice(list(alphabet), size=rng.integers(0, max_len)))


@pytest.mark.parametrize("seed", range(5))
def test_wer_and_cer_agree_with_jiwer(seed):
    """Corpus-level WER/CER equal jiwer's on the same normalised strings: random pairs (a small
    alphabet, so words collide and edits mix) plus the edge cases, with empty references among them."""
    jiwer = pytest.importorskip("jiwer")
    rng = np.random.default_rng(seed)
    pairs = EDGE_PAIRS + [(_random_text(rng), _random_text(rng)) for _ in range(40)]
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    norm_refs, norm_hyps = [normalized_text(r) for r in refs], [normalized_text(h) for h in hyps]
    assert word_error_rate(refs, hyps)["wer"] == pytest.approx(jiwer.wer(norm_refs, norm_hyps), abs=1e-12)
    assert character_error_rate(refs, hyps)["cer"] == pytest.approx(jiwer.cer(norm_refs, norm_hyps), abs=1e-12)
    for r, h in pairs:  # and pair by pair, where the reference has words
        if normalized_text(r):
            assert word_error_rate([r], [h])["wer"] == pytest.approx(jiwer.wer(normalized_text(r), normalized_text(h)))
            assert character_error_rate([r], [h])["cer"] == pytest.approx(
                jiwer.cer(normalized_text(r), normalized_text(h)))


def test_normalisation_of_unicode_and_punctuation():
    assert normalized_text("Naïve, CAFÉ!  it's") == "na ve caf it's"
    assert normalized_text("...") == ""
