"""Word lists and English inflection for the sentence generator (most_jax.corpus.sentences).

The word lists live in most_jax/corpus/data/lexicon.json (shipped as package data), one section
per group below. Every word is lowercase ASCII (apostrophes allowed) so that eSpeak reads it and
WER normalisation is a plain whitespace split. A verb written `base!` doubles its final consonant
(stop -> stopped, stopping) and `base/past/participle` gives irregular forms. The order of every
list and of every kind is part of the corpus definition: the generator draws by index.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

LEXICON_FILE = "data/lexicon.json"


_DATA = json.loads(resources.files("most_jax.corpus").joinpath(LEXICON_FILE).read_text(encoding="utf-8"))


def _section(name: str):
    if name not in _DATA:
        raise ValueError(f"most_jax/corpus/{LEXICON_FILE} has no section {name!r}")
    return _DATA[name]


def _words(name: str) -> tuple[str, ...]:
    return tuple(_section(name))


def _by_kind(name: str) -> dict[str, tuple[str, ...]]:
    return {kind: tuple(entries) for kind, entries in _section(name).items()}


# Nouns by kind; the kind decides which verbs and adjectives fit. Mass nouns: no plural, no "a".
NOUNS = _by_kind("nouns")
MASS_NOUNS = _by_kind("mass_nouns")
# Plurals that the spelling rules in `plural` would get wrong.
IRREGULAR_PLURALS: dict[str, str] = dict(_section("irregular_plurals"))

# Transitive verbs, by the noun kinds they take as object; verbs taking a `to` infinitive; verbs of
# giving/telling that take two objects ("gave mary a book").
TRANSITIVE = _by_kind("transitive")
INTRANSITIVE = _words("intransitive")
INFINITIVE_TAKERS = _words("infinitive_takers")
DITRANSITIVE = _words("ditransitive")

# Adjectives by the noun kinds they fit ("any" fits every concrete kind); comparatives of those used
# in comparisons.
ADJECTIVES = _by_kind("adjectives")
COMPARATIVES: dict[str, str] = dict(_section("comparatives"))

INTENSIFIERS = _words("intensifiers")
MANNER_ADVERBS = _words("manner_adverbs")
FREQUENCY_ADVERBS = _words("frequency_adverbs")
WEATHER_ADJECTIVES = _words("weather_adjectives")
WEATHER_VERBS = _words("weather_verbs")

DAYS = _words("days")
MONTHS = _words("months")
SEASONS = _words("seasons")
PARTS_OF_DAY = _words("parts_of_day")

MALE_NAMES = _words("male_names")
FEMALE_NAMES = _words("female_names")
SURNAMES = _words("surnames")
TITLES = _words("titles")
CITIES = _words("cities")
COUNTRIES = _words("countries")

# Indexed by value ("_" fills the unused slots of TENS and ORDINAL_TENS).
UNITS = _words("units")
TENS = _words("tens")
ORDINAL_UNITS = _words("ordinal_units")
ORDINAL_TENS = _words("ordinal_tens")


def number_words(n: int) -> str:
    """Cardinal in words, British style with "and": 342 -> 'three hundred and forty two'."""
    if not 0 <= n < 1_000_000_000:
        raise ValueError(f"number_words supports 0..999999999, got {n}")
    if n < 20:
        return UNITS[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + UNITS[n % 10])
    for size, name in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            words = f"{number_words(head)} {name}"
            if rest:
                words += (" and " if rest < 100 else " ") + number_words(rest)
            return words
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """Ordinal in words for 1..99: 23 -> 'twenty third'."""
    if not 1 <= n < 100:
        raise ValueError(f"ordinal_words supports 1..99, got {n}")
    if n < 20:
        return ORDINAL_UNITS[n]
    if n % 10 == 0:
        return ORDINAL_TENS[n // 10]
    return f"{TENS[n // 10]} {ORDINAL_UNITS[n % 10]}"


def year_words(year: int) -> str:
    """Years as spoken: 1987 -> 'nineteen eighty seven', 1905 -> 'nineteen oh five',
    2007 -> 'two thousand and seven', 2019 -> 'twenty nineteen'."""
    if not 1100 <= year <= 2099:
        raise ValueError(f"year_words supports 1100..2099, got {year}")
    if 2000 <= year < 2010:
        return number_words(year)
    head, tail = divmod(year, 100)
    if tail == 0:
        return f"{number_words(head)} hundred"
    tail_words = f"oh {UNITS[tail]}" if tail < 10 else number_words(tail)
    return f"{number_words(head)} {tail_words}"


# ---- inflection -------------------------------------------------------------------------------------

_VOWELS = "aeiou"


def _add_s(word: str) -> str:
    """The regular -s ending of plurals and of the present third person."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def plural(noun: str) -> str:
    return IRREGULAR_PLURALS.get(noun) or _add_s(noun)


def article(word: str) -> str:
    """'a' or 'an' by the sound of the next word's spelling (uni-, use-, eu-, one- sound like 'y'/'w')."""
    if word.startswith(("hour", "honest", "honor")):
        return "an"
    if word[0] in _VOWELS and not word.startswith(("uni", "use", "usu", "eu", "one")):
        return "an"
    return "a"


@dataclasses.dataclass(frozen=True)
class Verb:
    base: str
    third: str  # he/she/it form of the present
    past: str
    participle: str
    ing: str


def parse_verb(spec: str) -> Verb:
    """`walk`, `stop!` (doubles its last consonant) or `run!/ran/run` (irregular past/participle)."""
    head, *irregular = spec.split("/")
    doubles = head.endswith("!")
    base = head.rstrip("!")
    if irregular and len(irregular) != 2:
        raise ValueError(f"verb spec {spec!r} must be base, base! or base/past/participle")
    stem = base + base[-1] if doubles else base
    if base.endswith("ie"):
        ing = base[:-2] + "ying"
    elif base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        ing = base[:-1] + "ing"
    else:
        ing = stem + "ing"
    if irregular:
        past, participle = irregular
    elif base.endswith("e"):
        past = participle = base + "d"
    elif base.endswith("y") and base[-2] not in _VOWELS:
        past = participle = base[:-1] + "ied"
    else:
        past = participle = stem + "ed"
    return Verb(base, _add_s(base), past, participle, ing)


def _all_verb_specs() -> list[str]:
    specs = [s for group in TRANSITIVE.values() for s in group]
    return specs + list(INTRANSITIVE) + list(INFINITIVE_TAKERS) + list(DITRANSITIVE) + list(WEATHER_VERBS)


def check_lexicon() -> None:
    """Fails loudly on a malformed entry (run by the tests): every word lowercase ASCII letters or ',
    no list repeating an entry (a repeated word would be drawn twice as often), the number tables
    complete, every verb spec parseable."""
    allowed = set("abcdefghijklmnopqrstuvwxyz'")
    groups = {**{f"nouns.{k}": v for k, v in NOUNS.items()}, **{f"mass_nouns.{k}": v for k, v in MASS_NOUNS.items()},
              **{f"adjectives.{k}": v for k, v in ADJECTIVES.items()},
              **{f"transitive.{k}": v for k, v in TRANSITIVE.items()},
              "intransitive": INTRANSITIVE, "infinitive_takers": INFINITIVE_TAKERS, "ditransitive": DITRANSITIVE,
              "intensifiers": INTENSIFIERS, "manner_adverbs": MANNER_ADVERBS, "frequency_adverbs": FREQUENCY_ADVERBS,
              "weather_adjectives": WEATHER_ADJECTIVES, "weather_verbs": WEATHER_VERBS, "days": DAYS,
              "months": MONTHS, "seasons": SEASONS, "parts_of_day": PARTS_OF_DAY, "male_names": MALE_NAMES,
              "female_names": FEMALE_NAMES, "surnames": SURNAMES, "titles": TITLES, "cities": CITIES,
              "countries": COUNTRIES}
    for name, group in groups.items():
        if len(set(group)) != len(group):
            repeated = sorted({w for w in group if group.count(w) > 1})
            raise ValueError(f"{LEXICON_FILE} section {name!r} repeats {repeated}")
        for entry in group:
            for word in entry.replace("/", " ").replace("!", "").split():
                if not set(word) <= allowed:
                    raise ValueError(f"{LEXICON_FILE} section {name!r}: word {word!r} has characters outside "
                                     "a-z and apostrophe")
    for name, table, size in (("units", UNITS, 20), ("tens", TENS, 10), ("ordinal_units", ORDINAL_UNITS, 20),
                              ("ordinal_tens", ORDINAL_TENS, 10)):
        if len(table) != size:
            raise ValueError(f"{LEXICON_FILE} section {name!r} needs {size} entries (indexed by value), has {len(table)}")
    for spec in _all_verb_specs():
        parse_verb(spec)
