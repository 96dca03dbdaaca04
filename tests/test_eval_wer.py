"""Word/unit error rates against hand-computed cases."""

import pytest

from most_jax.eval.wer import edit_distance, error_rate, normalize, word_error_rate


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
