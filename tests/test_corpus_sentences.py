"""Sentence generator: determinism, disjoint de-duplicated splits, vocabulary size and coverage."""

import hashlib
import re

import pytest

from most_jax.corpus import lexicon, sentences


def _digest(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_generated_corpus_is_pinned_for_seed_0():
    """The corpus a seed names must not drift (a refactor, the word lists moving to data files):
    pinned from the generator as it was before its word lists left the code."""
    drawn = sentences.unique_sentences(0, 2000)
    assert drawn[:3] == ["the farmers spent eleven weeks in england",
                         "anthony will prefer to forget anthony's music tomorrow",
                         "the textbooks seem extremely perfect"]
    assert _digest(drawn) == "500e5289baaaee35fcdc597217b0754185bebb2b21020ea24a4df499e080dc09"
    splits = sentences.make_splits(0, 300, 20, 20, 50, vocabulary_limit=800)
    assert _digest(splits.train + splits.dev + splits.test + splits.text_lm) == \
        "2af32d34c190299dade7ed5b90a96cfbebd2a7843e12e5e410e21e51b9ff0e53"
    vocab = sentences.vocabulary()
    assert len(vocab) == 3524
    assert _digest(sorted(vocab)) == "1b81b5c4a923a1d742542e37ce91c20b1ee22fcc32553f4be30461d6867fa0b2"


def test_same_seed_same_sentences_and_different_seed_differs():
    assert sentences.unique_sentences(7, 300) == sentences.unique_sentences(7, 300)
    assert sentences.unique_sentences(7, 300) != sentences.unique_sentences(8, 300)


def test_splits_are_disjoint_deduplicated_and_sized():
    splits = sentences.make_splits(seed=1, num_train=2000, num_dev=150, num_test=150, num_text_lm=1000)
    sets = {name: set(getattr(splits, name)) for name in ("train", "dev", "test", "text_lm")}
    for name, size in (("train", 2000), ("dev", 150), ("test", 150), ("text_lm", 1000)):
        assert len(getattr(splits, name)) == size == len(sets[name]), name
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)


def test_held_out_sets_do_not_move_when_training_grows():
    small = sentences.make_splits(seed=2, num_train=100, num_dev=20, num_test=20)
    large = sentences.make_splits(seed=2, num_train=900, num_dev=20, num_test=20)
    assert small.dev == large.dev and small.test == large.test
    assert large.train[:100] == small.train


def test_sentences_are_plain_lowercase_words_from_the_vocabulary():
    vocab = sentences.vocabulary()
    assert len(vocab) >= 3000  # "a few thousand words"
    drawn = sentences.unique_sentences(3, 5000)
    used = set()
    for text in drawn:
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", text), text
        words = text.split()
        assert sentences.MIN_WORDS <= len(words) <= sentences.MAX_WORDS
        used.update(words)
    assert used <= vocab, sorted(used - vocab)[:20]
    # Held-out sentences are new combinations of a large word pool, not a few templates.
    assert len(used) >= 2000


def test_sentence_shapes_vary():
    drawn = sentences.unique_sentences(4, 2000)
    starts = {s.split()[0] for s in drawn}
    assert {"did", "what", "there", "if", "the"} <= starts
    assert any(" than " in s for s in drawn) and any(" born on the " in s for s in drawn)
    assert any(" who " in s or " that " in s for s in drawn)


def test_lexicon_is_well_formed_and_inflects():
    lexicon.check_lexicon()
    assert lexicon.parse_verb("stop!") == lexicon.Verb("stop", "stops", "stopped", "stopped", "stopping")
    assert lexicon.parse_verb("carry").past == "carried"
    assert lexicon.parse_verb("run!/ran/run").ing == "running"
    assert lexicon.parse_verb("bake").ing == "baking"
    assert lexicon.plural("box") == "boxes" and lexicon.plural("child") == "children"
    assert lexicon.plural("city") == "cities" and lexicon.plural("day") == "days"
    assert lexicon.article("apple") == "an" and lexicon.article("uniform") == "a"
    with pytest.raises(ValueError, match="verb spec"):
        lexicon.parse_verb("go/went")


def test_lexicon_check_names_the_bad_section_of_the_data_file(monkeypatch):
    monkeypatch.setitem(lexicon.NOUNS, "animal", lexicon.NOUNS["animal"] + ("dog",))
    with pytest.raises(ValueError, match=r"lexicon.json section 'nouns.animal' repeats \['dog'\]"):
        lexicon.check_lexicon()
    monkeypatch.undo()
    monkeypatch.setattr(lexicon, "CITIES", lexicon.CITIES + ("Paris",))
    with pytest.raises(ValueError, match="section 'cities': word 'Paris'"):
        lexicon.check_lexicon()
    monkeypatch.undo()
    monkeypatch.setattr(lexicon, "TENS", lexicon.TENS[:-1])
    with pytest.raises(ValueError, match="'tens' needs 10 entries"):
        lexicon.check_lexicon()


@pytest.mark.parametrize("n,words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (342, "three hundred and forty two"),
                                     (1005, "one thousand and five"), (120000, "one hundred and twenty thousand"),
                                     (7_000_019, "seven million and nineteen")])
def test_number_words(n, words):
    assert lexicon.number_words(n) == words


def test_years_and_ordinals():
    assert lexicon.year_words(1987) == "nineteen eighty seven"
    assert lexicon.year_words(1905) == "nineteen oh five"
    assert lexicon.year_words(2007) == "two thousand and seven"
    assert lexicon.year_words(2019) == "twenty nineteen"
    assert lexicon.year_words(1900) == "nineteen hundred"
    assert lexicon.ordinal_words(1) == "first" and lexicon.ordinal_words(23) == "twenty third"
    assert lexicon.ordinal_words(30) == "thirtieth"


def test_vocabulary_limit_keeps_the_most_frequent_words_only():
    small, larger = sentences.frequent_words(500), sentences.frequent_words(800)
    assert len(small) == 500 and small < larger < sentences.vocabulary()
    assert {"the", "a"} <= small  # the commonest words survive any sensible limit
    drawn = sentences.unique_sentences(5, 300, vocabulary_limit=500)
    assert drawn == sentences.unique_sentences(5, 300, vocabulary_limit=500)
    assert all(small.issuperset(s.split()) for s in drawn)
    assert not all(small.issuperset(s.split()) for s in sentences.unique_sentences(5, 300))
    with pytest.raises(RuntimeError, match="within the 3 most frequent words"):
        sentences.unique_sentences(5, 50, vocabulary_limit=3)
