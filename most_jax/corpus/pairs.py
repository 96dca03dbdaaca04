"""Built-in spoken pair sets for audio-LM scoring, from the corpus generator's words and sentences.

* sWUGGY-like (lexical): a word of the generator's vocabulary against a pronounceable non-word made
  from it by changing one vowel to another vowel (category `vowel`) or one consonant to another
  consonant (`consonant`), never giving a word of the vocabulary.
* sBLIMP-like (syntactic): a generated sentence against a minimal change that breaks it:
  `agreement` (is/are, was/were, has/have, does/do swapped), `determiner_number` ("a" before a
  plural noun), `pronoun_case` (an object pronoun in subject case) and `word_order` (two adjacent
  words swapped).

Everything is drawn from `random.Random(f"pairs-{seed}")`: a seed fixes the sets.
`write_spoken_pairs` speaks them (eSpeak) into the JSONL layout eval/pair_sets.py reads.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Callable

import numpy as np

from most_jax.corpus import lexicon as lx
from most_jax.corpus import sentences

VOWELS = "aeiou"
CONSONANTS = "bdfgklmnprstvz"
_AGREEMENT = {"is": "are", "are": "is", "was": "were", "were": "was", "has": "have", "have": "has",
              "does": "do", "do": "does", "doesn't": "don't", "don't": "doesn't"}
_SUBJECT_CASE = {"him": "he", "them": "they", "us": "we", "me": "i"}
SYNTACTIC = ("agreement", "determiner_number", "pronoun_case", "word_order")


@dataclasses.dataclass(frozen=True)
class TextPair:
    id: str
    category: str
    real: str
    fake: str


def _nonword(rng: random.Random, word: str, vocabulary: frozenset[str]) -> tuple[str, str] | None:
    """(non-word, category) or None when no change of this word gives a non-word."""
    kind = rng.choice(("vowel", "consonant"))
    letters = VOWELS if kind == "vowel" else CONSONANTS
    spots = [i for i, c in enumerate(word) if c in letters]
    rng.shuffle(spots)
    for i in spots:
        for c in rng.sample(letters, len(letters)):
            fake = word[:i] + c + word[i + 1:]
            if c != word[i] and fake not in vocabulary:
                return fake, kind
    return None


def lexical_pairs(count: int, seed: int = 0) -> list[TextPair]:
    """`count` (word, non-word) pairs over distinct words of at least 4 letters."""
    rng = random.Random(f"pairs-{seed}")
    vocabulary = sentences.vocabulary()
    words = sorted(w for w in vocabulary if len(w) >= 4 and w.isalpha())
    rng.shuffle(words)
    pairs = []
    for word in words:
        made = _nonword(rng, word, vocabulary)
        if made:
            pairs.append(TextPair(f"lexical-{len(pairs):05d}", made[1], word, made[0]))
            if len(pairs) == count:
                return pairs
    raise ValueError(f"only {len(pairs)} lexical pairs can be made, asked for {count}")


def _plural_nouns() -> dict[str, str]:
    nouns = {n for entries in lx.NOUNS.values() for n in entries if " " not in n}
    return {n: lx.plural(n) for n in nouns}


def _break(rng: random.Random, words: list[str], category: str, plurals: dict[str, str]) -> list[str] | None:
    """The sentence with one minimal ungrammatical change of `category`, or None if it has no spot."""
    if category == "agreement":
        spots = [i for i, w in enumerate(words) if w in _AGREEMENT]
        swap = {i: _AGREEMENT[words[i]] for i in spots}
    elif category == "determiner_number":
        spots = [i + 1 for i, w in enumerate(words[:-1]) if w == "a" and words[i + 1] in plurals]
        swap = {i: plurals[words[i]] for i in spots}
    elif category == "pronoun_case":
        spots = [i for i, w in enumerate(words) if i > 0 and w in _SUBJECT_CASE]
        swap = {i: _SUBJECT_CASE[words[i]] for i in spots}
    else:  # word_order
        spots = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
        if not spots:
            return None
        i = rng.choice(spots)
        return words[:i] + [words[i + 1], words[i]] + words[i + 2:]
    if not spots:
        return None
    i = rng.choice(spots)
    return words[:i] + [swap[i]] + words[i + 1:]


def syntactic_pairs(count: int, seed: int = 0) -> list[TextPair]:
    """`count` (sentence, broken sentence) pairs: each sentence takes the first category, in turn
    from the one after the previous pair's (SYNTACTIC order), that it has a spot for."""
    rng = random.Random(f"pairs-{seed}")
    plurals = _plural_nouns()
    pool = sentences.unique_sentences(seed + 7919, max(8 * count, 64))
    pairs, index = [], 0  # index: where the turn of categories stands
    for text in pool:
        for turn in range(len(SYNTACTIC)):
            category = SYNTACTIC[(index + turn) % len(SYNTACTIC)]
            broken = _break(rng, text.split(), category, plurals)
            if broken is not None and " ".join(broken) != text:
                pairs.append(TextPair(f"syntactic-{len(pairs):05d}", category, text, " ".join(broken)))
                index += turn + 1
                break
        if len(pairs) == count:
            return pairs
    raise ValueError(f"only {len(pairs)} syntactic pairs found in {len(pool)} sentences, asked for {count}")


def write_spoken_pairs(out_dir: str | Path, lexical: int, syntactic: int, seed: int = 0,
                       units_of: Callable[[np.ndarray], np.ndarray] | None = None, speakers=None,
                       overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, int]:
    """Speaks `lexical` sWUGGY-like and `syntactic` sBLIMP-like pairs, both items of a pair by one
    eSpeak speaker of `speakers` (a corpus.synth.SpeakerSet; default every voice and pitch at
    150-185 words/min), into OUT/audio/, and writes OUT/lexical.jsonl and OUT/syntactic.jsonl (one
    pair a line: {id, category, real: {text, audio, units?}, fake: ...}; audio paths relative to
    OUT; units from `units_of(16 kHz waveform)` when given). The directory appears whole or not at all. Asking
    for more pairs than the word lists / sentence pool make is a ValueError. Returns pairs per set."""
    from most_jax.atomic import atomic_directory
    from most_jax.corpus.synth import SAMPLE_RATE, SpeakerSet, Utterance, render
    from most_jax.speech.audio import load_audio

    sets = {"lexical": lexical_pairs(lexical, seed) if lexical else [],
            "syntactic": syntactic_pairs(syntactic, seed) if syntactic else []}
    voices = speakers or SpeakerSet(rate_wpm=(150, 185))
    rng = random.Random(f"pairs-speech-{seed}")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "audio").mkdir()
        for name, pairs in sets.items():
            lines = []
            for pair in pairs:
                speaker, rate = rng.choice(voices.speakers), rng.randint(*voices.rate_wpm)
                utt_seed = rng.randrange(2 ** 31)
                entry = {"id": pair.id, "category": pair.category}
                for side, text in (("real", pair.real), ("fake", pair.fake)):
                    uid = f"{pair.id}-{side}"
                    render(Utterance(uid, name, text, speaker, rate, utt_seed), str(tmp / "audio"))
                    item = {"text": text, "audio": f"audio/{uid}.wav"}
                    if units_of is not None:
                        wave = load_audio(tmp / item["audio"], SAMPLE_RATE)[0]
                        item["units"] = np.asarray(units_of(wave)).tolist()
                    entry[side] = item
                lines.append(json.dumps(entry))
            (tmp / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
            log(f"audio-lm-pairs: {len(lines)} {name} pairs")
    return {name: len(pairs) for name, pairs in sets.items()}
