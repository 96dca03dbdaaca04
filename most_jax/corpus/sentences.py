"""Sentence generator for the built-in speech corpus: a few thousand words, many sentence shapes.

Sentences are lowercase ASCII words (apostrophes allowed) separated by single spaces, with no
punctuation, so eSpeak reads them as written and WER normalisation is a whitespace split.
Everything is drawn from one `random.Random(seed)`, so a seed fixes the corpus. `make_splits`
returns de-duplicated, pairwise disjoint train/dev/test/text-LM sentence sets: a held-out sentence
never occurs in training, though its words and shapes do.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
from importlib import resources

from most_jax.corpus import lexicon as lx

_TENSES = ("present", "past", "future", "progressive", "past_progressive", "perfect", "modal")
_TENSE_WEIGHTS = (25, 30, 12, 10, 5, 10, 8)
_MODALS = ("can", "could", "should", "must", "might", "would")
_NEG_MODALS = {"can": "can't", "could": "couldn't", "should": "shouldn't", "must": "mustn't",
               "might": "might not", "would": "wouldn't", "will": "won't"}
_ANIMATE = ("person", "animal")
_CONCRETE = ("animal", "person", "food", "thing", "vehicle", "readable", "place", "instrument")
_SMALL_THINGS = ("food", "thing", "readable", "instrument")

_VERBS = {kind: tuple(lx.parse_verb(s) for s in specs) for kind, specs in lx.TRANSITIVE.items()}
_INTRANSITIVE = tuple(lx.parse_verb(s) for s in lx.INTRANSITIVE)
_INFINITIVE_TAKERS = tuple(lx.parse_verb(s) for s in lx.INFINITIVE_TAKERS)
_DITRANSITIVE = tuple(lx.parse_verb(s) for s in lx.DITRANSITIVE)
_WEATHER_VERBS = tuple(lx.parse_verb(s) for s in lx.WEATHER_VERBS)
_BE = {"present": {"1s": "am", "3s": "is"}, "past": {"1s": "was", "3s": "was"}}


@dataclasses.dataclass(frozen=True)
class _NP:
    """A noun phrase with what agreement needs."""

    text: str
    person: int = 3
    plural: bool = False
    pronoun: bool = False

    @property
    def agreement(self) -> str:
        """'1s' (I), '3s' (he/she/it/singular nouns) or 'pl' (you, we, they, plurals)."""
        if self.plural or self.person == 2:
            return "pl"
        return "1s" if self.person == 1 else "3s"


_SUBJECT_PRONOUNS = (_NP("i", 1, False, True), _NP("you", 2, False, True), _NP("he", 3, False, True),
                     _NP("she", 3, False, True), _NP("we", 1, True, True), _NP("they", 3, True, True))
_OBJECT_PRONOUNS = ("me", "you", "him", "her", "us", "them")
_POSSESSIVES = ("my", "your", "his", "her", "our", "their")


def _pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


def _name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.12:
        return f"{_pick(rng, lx.TITLES)} {_pick(rng, lx.SURNAMES)}"
    return _pick(rng, lx.MALE_NAMES if roll < 0.56 else lx.FEMALE_NAMES)


def _adjective(rng: random.Random, kind: str, intensify_p: float = 0.15) -> str:
    pool = lx.ADJECTIVES[kind] if kind == "idea" else lx.ADJECTIVES[kind] + lx.ADJECTIVES["any"]
    adjective = _pick(rng, pool)
    return f"{_pick(rng, lx.INTENSIFIERS)} {adjective}" if rng.random() < intensify_p else adjective


def _noun_phrase(rng: random.Random, kinds: tuple[str, ...], plural: bool | None = None,
                 adjective_p: float = 0.35, allow_mass: bool = True) -> _NP:
    kind = _pick(rng, kinds)
    mass = allow_mass and plural is None and kind in lx.MASS_NOUNS and rng.random() < 0.2
    if mass:
        noun = _pick(rng, lx.MASS_NOUNS[kind])
    else:
        noun = _pick(rng, lx.NOUNS[kind])
        plural = rng.random() < 0.35 if plural is None else plural
        if plural:
            noun = lx.plural(noun)
    head = f"{_adjective(rng, kind)} {noun}" if rng.random() < adjective_p else noun
    roll = rng.random()
    if roll < 0.45:
        det = "the"
    elif roll < 0.65:
        det = _pick(rng, _POSSESSIVES)
    elif roll < 0.72:
        det = f"{_name(rng)}'s"
    elif mass:
        det = _pick(rng, ("some", "this", "that", "a lot of", "a little", "no", "enough"))
    elif plural:
        det = _pick(rng, ("these", "those", "some", "many", "a few", "several", "two", "three", "four",
                          "five", "ten", "twenty", "all the", "both"))
    else:
        det = _pick(rng, ("a", "a", "this", "that", "every", "another", "one"))
        if det == "a":
            det = lx.article(head)
    return _NP(f"{det} {head}", 3, bool(plural) and not mass)


def _subject(rng: random.Random, kinds: tuple[str, ...] = _ANIMATE) -> _NP:
    roll = rng.random()
    if roll < 0.3:
        return _pick(rng, _SUBJECT_PRONOUNS)
    if roll < 0.55:
        return _NP(_name(rng))
    return _noun_phrase(rng, kinds)


def _object(rng: random.Random, kinds: tuple[str, ...]) -> str:
    if "person" in kinds and rng.random() < 0.15:
        return _pick(rng, _OBJECT_PRONOUNS)
    if "person" in kinds and rng.random() < 0.2:
        return _name(rng)
    return _noun_phrase(rng, kinds).text


def _verb_group(rng: random.Random, verb: lx.Verb, subj: _NP, tense: str, negate: bool,
                question: bool = False) -> tuple[list[str], str]:
    """(auxiliaries, main verb form); a question puts auxiliaries[0] before the subject."""
    agr = subj.agreement
    if tense in ("present", "past"):
        if not (negate or question):
            main = verb.past if tense == "past" else (verb.third if agr == "3s" else verb.base)
            return [], main
        do = "did" if tense == "past" else ("does" if agr == "3s" else "do")
        return [do + "n't" if negate else do], verb.base
    if tense in ("progressive", "past_progressive"):
        be = _BE["past" if tense == "past_progressive" else "present"].get(
            agr, "were" if tense == "past_progressive" else "are")
        if negate:
            be = "am not" if be == "am" else be + "n't"
        return be.split(), verb.ing
    if tense == "perfect":
        have = "has" if agr == "3s" else "have"
        return [have + "n't" if negate else have], verb.participle
    modal = "will" if tense == "future" else _pick(rng, _MODALS)
    return _NEG_MODALS[modal].split() if negate else [modal], verb.base


_CONTRACTIONS = {("i", "am"): "i'm", ("you", "are"): "you're", ("we", "are"): "we're",
                 ("they", "are"): "they're", ("he", "is"): "he's", ("she", "is"): "she's"}


def _clause(subj: _NP, aux: list[str], main: str, rest: list[str], rng: random.Random) -> list[str]:
    if subj.pronoun and aux:
        if (subj.text, aux[0]) in _CONTRACTIONS and rng.random() < 0.3:
            return [_CONTRACTIONS[(subj.text, aux[0])], *aux[1:], main, *rest]
        if aux[0] == "will" and rng.random() < 0.3:
            return [f"{subj.text}'ll", *aux[1:], main, *rest]
    return [subj.text, *aux, main, *rest]


def _time_phrase(rng: random.Random, tense: str) -> str:
    day, month = _pick(rng, lx.DAYS), _pick(rng, lx.MONTHS)
    options = {
        "past": ("yesterday", "last night", f"last {day}", f"last {_pick(rng, lx.SEASONS)}", "last week",
                 f"{lx.number_words(rng.randint(2, 12))} days ago", f"on {day}", f"in {month}",
                 "this morning", f"{day} {_pick(rng, lx.PARTS_OF_DAY)}", "a long time ago"),
        "present": ("every day", f"every {_pick(rng, lx.PARTS_OF_DAY)}", f"on {day}s", "at night",
                    f"in the {_pick(rng, lx.SEASONS)}", "twice a week", "at the weekend"),
        "future": ("tomorrow", "next week", f"next {day}", f"on {day}", "tonight", "this weekend", "soon",
                   f"in {lx.number_words(rng.randint(2, 10))} days", f"in {month}", "later"),
        "progressive": ("now", "right now", "at the moment", "today", "this week"),
        "past_progressive": ("all day yesterday", f"on {day} {_pick(rng, lx.PARTS_OF_DAY)}", "last night"),
        "perfect": ("this week", "today", "recently", "twice", "many times", "before"),
        "modal": ("today", "tomorrow", "now", "later", "again"),
    }[tense]
    return _pick(rng, options)


def _place_phrase(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return f"{_pick(rng, ('in', 'near', 'outside'))} {_pick(rng, lx.CITIES + lx.COUNTRIES)}"
    prep = _pick(rng, ("in", "at", "near", "behind", "outside", "inside", "next to", "across", "beside",
                       "in front of", "far from", "around"))
    return f"{prep} {_noun_phrase(rng, ('place',), plural=False, adjective_p=0.2).text}"


def _extras(rng: random.Random, tense: str) -> list[str]:
    extras = []
    if rng.random() < 0.3:
        extras.append(_place_phrase(rng))
    if rng.random() < 0.35:
        extras.append(_time_phrase(rng, tense))
    return extras


def _tense(rng: random.Random) -> str:
    return rng.choices(_TENSES, _TENSE_WEIGHTS)[0]


def _transitive(rng: random.Random) -> tuple[lx.Verb, tuple[str, ...]]:
    kind = _pick(rng, tuple(_VERBS))
    kinds = _CONCRETE if kind == "any" else (kind,)
    return _pick(rng, _VERBS[kind]), kinds


# ---- sentence shapes --------------------------------------------------------------------------------


def _statement(rng: random.Random) -> list[str]:
    subj, tense = _subject(rng), _tense(rng)
    verb, kinds = _transitive(rng)
    aux, main = _verb_group(rng, verb, subj, tense, negate=rng.random() < 0.15)
    return _clause(subj, aux, main, [_object(rng, kinds), *_extras(rng, tense)], rng)


def _intransitive(rng: random.Random) -> list[str]:
    subj, tense = _subject(rng), _tense(rng)
    aux, main = _verb_group(rng, _pick(rng, _INTRANSITIVE), subj, tense, negate=rng.random() < 0.1)
    rest = [_pick(rng, lx.MANNER_ADVERBS)] if rng.random() < 0.4 else []
    return _clause(subj, aux, main, rest + _extras(rng, tense), rng)


def _frequency(rng: random.Random) -> list[str]:
    subj = _subject(rng)
    verb, kinds = _transitive(rng)
    _, main = _verb_group(rng, verb, subj, "present", negate=False)
    return [subj.text, _pick(rng, lx.FREQUENCY_ADVERBS), main, _object(rng, kinds), *_extras(rng, "present")]


def _yes_no_question(rng: random.Random) -> list[str]:
    subj, tense = _subject(rng), _tense(rng)
    verb, kinds = _transitive(rng)
    aux, main = _verb_group(rng, verb, subj, tense, negate=rng.random() < 0.1, question=True)
    if not aux:
        raise AssertionError("questions always have an auxiliary")
    return [aux[0], subj.text, *aux[1:], main, _object(rng, kinds), *_extras(rng, tense)]


def _wh_question(rng: random.Random) -> list[str]:
    subj, tense = _subject(rng), _pick(rng, ("present", "past", "future", "progressive", "perfect", "modal"))
    verb, kinds = _transitive(rng)
    roll = rng.random()
    if roll < 0.25:  # subject question: no do-support
        tense = _pick(rng, ("past", "future", "perfect"))
        aux, main = _verb_group(rng, verb, _NP("who"), tense, negate=False)
        return [_pick(rng, ("who", "what")), *aux, main, _object(rng, kinds), *_extras(rng, tense)]
    aux, main = _verb_group(rng, verb, subj, tense, negate=False, question=True)
    if roll < 0.45:
        kind = _pick(rng, kinds)
        head = _pick(rng, lx.NOUNS[kind])
        wh = f"how many {lx.plural(head)}" if rng.random() < 0.5 else f"which {head}"
        return [wh, aux[0], subj.text, *aux[1:], main, *_extras(rng, tense)]
    if roll < 0.6:
        return ["what", aux[0], subj.text, *aux[1:], main, *_extras(rng, tense)]
    wh = _pick(rng, ("where", "when", "why", "how"))
    return [wh, aux[0], subj.text, *aux[1:], main, _object(rng, kinds)]


def _relative_clause(rng: random.Random) -> list[str]:
    kind = _pick(rng, _CONCRETE)
    head = _noun_phrase(rng, (kind,), adjective_p=0.2)
    verb, kinds = _transitive(rng)
    if kind == "person" and rng.random() < 0.5:
        _, inner = _verb_group(rng, verb, head, "past", negate=False)
        rel = ["who", inner, _object(rng, kinds)]
    else:
        inner_subj = _subject(rng)
        _, inner = _verb_group(rng, verb, inner_subj, "past", negate=False)
        rel = ["that", inner_subj.text, inner]
    if rng.random() < 0.5:  # relative clause on the subject
        tense = _pick(rng, ("present", "past"))
        be = _BE[tense].get(head.agreement, "were" if tense == "past" else "are")
        return [head.text, *rel, be, _adjective(rng, kind, intensify_p=0.4)]
    subj = _subject(rng)
    outer_verb, _ = _transitive(rng)
    aux, main = _verb_group(rng, outer_verb, subj, _pick(rng, ("past", "present", "perfect")), negate=False)
    return _clause(subj, aux, main, [head.text, *rel], rng)


def _list_sentence(rng: random.Random) -> list[str]:
    kind = _pick(rng, ("food", "thing", "animal", "instrument", "readable"))
    count = rng.randint(3, 5)
    items = []
    while len(items) < count:
        np_ = _noun_phrase(rng, (kind,), adjective_p=0.2, allow_mass=kind in ("food", "thing"))
        if np_.text not in items:
            items.append(np_.text)
    lead = _pick(rng, ("we need", "i bought", "she packed", "they sold", "he forgot", "we saw", "you can bring",
                       "the shop has", "my list has", "they found", "i remember"))
    return [lead, *items[:-1], "and", items[-1]]


def _clock_time(rng: random.Random) -> str:
    hour, roll = rng.randint(1, 12), rng.random()
    if roll < 0.3:
        return f"{lx.number_words(hour)} o'clock"
    if roll < 0.5:
        return f"{_pick(rng, ('half past', 'a quarter past', 'a quarter to', 'ten past', 'five to'))} " \
               f"{lx.number_words(hour)}"
    minute = rng.randint(1, 59)
    minute_words = f"oh {lx.UNITS[minute]}" if minute < 10 else lx.number_words(minute)
    return f"{lx.number_words(hour)} {minute_words}"


def _numbers(rng: random.Random) -> list[str]:
    shape = rng.randrange(9)
    n = rng.randint(2, 999)
    if shape == 0:
        noun = lx.plural(_pick(rng, lx.NOUNS[_pick(rng, _CONCRETE[:5])]))
        return ["there", _pick(rng, ("are", "were")), lx.number_words(n), noun, _place_phrase(rng)]
    if shape == 1:
        subj = _noun_phrase(rng, _SMALL_THINGS, plural=False, allow_mass=False)
        price = [lx.number_words(n), "dollars"]
        if rng.random() < 0.5:
            price += ["and", lx.number_words(rng.randint(2, 99)), "cents"]
        return [subj.text, _pick(rng, ("costs", "cost", "will cost")), *price]
    if shape == 2:
        vehicle = _noun_phrase(rng, ("vehicle",), plural=False, adjective_p=0.1, allow_mass=False)
        return [vehicle.text, _pick(rng, ("leaves", "left", "arrives", "arrived", "will leave")), "at",
                _clock_time(rng), *_extras(rng, "present")[:1]]
    if shape == 3:
        born = [_name(rng), "was born on the", lx.ordinal_words(rng.randint(1, 31)), "of", _pick(rng, lx.MONTHS)]
        return born + [lx.year_words(rng.randint(1900, 2024))]
    if shape == 4:
        person = _noun_phrase(rng, ("person",), plural=False, adjective_p=0.1, allow_mass=False).text
        return [person, _pick(rng, ("is", "was", "will be")), lx.number_words(rng.randint(2, 99)), "years old"]
    if shape == 5:
        a, b = rng.randint(1, 99), rng.randint(1, 12)
        op, result = _pick(rng, (("plus", a + b), ("times", a * b), ("minus", a - b)))
        if result < 0:
            return [lx.number_words(b), "minus", lx.number_words(a), "is", lx.number_words(-result)]
        return [lx.number_words(a), op, lx.number_words(b), "is", lx.number_words(result)]
    if shape == 6:
        digits = " ".join(lx.UNITS[rng.randrange(10)] for _ in range(rng.randint(6, 9)))
        return [_pick(rng, ("my", "her", "his", "their", "our")), "phone number is", digits]
    if shape == 7:
        place = _pick(rng, lx.CITIES)
        return [place, "is", lx.number_words(rng.randint(2, 9999)),
                _pick(rng, ("miles", "kilometers")), "from", _pick(rng, lx.CITIES)]
    year = lx.year_words(rng.randint(1200, 2024))
    return ["the", _pick(rng, lx.NOUNS["place"]), "was built in", year]


def _copula(rng: random.Random) -> list[str]:
    kind = _pick(rng, _CONCRETE + ("idea",))
    subj = _noun_phrase(rng, (kind,), adjective_p=0.1)
    tense = _pick(rng, ("present", "past"))
    verb = _BE[tense].get(subj.agreement, "were" if tense == "past" else "are")
    if rng.random() < 0.3:
        verb = _pick(rng, ("looks", "looked", "seems", "seemed", "felt", "became", "will be", "has been"))
        if subj.plural and verb in ("looks", "seems", "has been"):
            verb = {"looks": "look", "seems": "seem", "has been": "have been"}[verb]
    words = [subj.text, verb]
    if rng.random() < 0.2:
        words.append("not")
    words.append(_adjective(rng, kind, intensify_p=0.4))
    if rng.random() < 0.25:
        words += ["and", _adjective(rng, kind, intensify_p=0.0)]
    return words


def _description(rng: random.Random) -> list[str]:
    who = _name(rng) if rng.random() < 0.6 else _pick(rng, ("he", "she"))
    verb = _pick(rng, ("is", "was", "became", "will be", "wants to be"))
    person = _pick(rng, lx.NOUNS["person"])
    adjective = _adjective(rng, "person")
    return [who, verb, lx.article(adjective), adjective, person, *([_place_phrase(rng)] if rng.random() < 0.4 else [])]


def _comparison(rng: random.Random) -> list[str]:
    kind = _pick(rng, ("animal", "person", "food", "thing", "vehicle", "place"))
    options = [a for a in lx.ADJECTIVES[kind] + lx.ADJECTIVES["any"] if a in lx.COMPARATIVES]
    comparative = lx.COMPARATIVES[_pick(rng, options)]
    first = _noun_phrase(rng, (kind,), adjective_p=0.1, allow_mass=False)
    second = _noun_phrase(rng, (kind,), adjective_p=0.1, allow_mass=False)
    tense = _pick(rng, ("present", "past"))
    be = _BE[tense].get(first.agreement, "were" if tense == "past" else "are")
    lead = ["much"] if rng.random() < 0.2 else []
    return [first.text, be, *lead, comparative, "than", second.text]


def _joined_clauses(rng: random.Random) -> list[str]:
    first = _pick(rng, (_statement, _intransitive))(rng)
    second = _pick(rng, (_statement, _intransitive, _copula))(rng)
    roll = rng.random()
    if roll < 0.3:
        return ["if", *first, *second]
    if roll < 0.5:
        return ["when", *first, *second]
    return [*first, _pick(rng, ("and", "but", "because", "so", "while", "although", "until", "and then")), *second]


def _imperative(rng: random.Random) -> list[str]:
    verb, kinds = _transitive(rng)
    lead = _pick(rng, ("please", "", "", "don't", "let's", "never", "always", "you should"))
    words = [lead] if lead else []
    words += [verb.base, _object(rng, kinds)]
    if rng.random() < 0.4:
        words.append(_place_phrase(rng))
    return words


def _passive(rng: random.Random) -> list[str]:
    kind = _pick(rng, tuple(k for k in _VERBS if k not in ("any", "person", "animal")))
    verb = _pick(rng, _VERBS[kind])
    patient = _noun_phrase(rng, (kind,), adjective_p=0.25)
    tense = _pick(rng, ("past", "present", "perfect", "future"))
    if tense == "past":
        aux = "were" if patient.plural else "was"
    elif tense == "present":
        aux = "are" if patient.plural else "is"
    elif tense == "perfect":
        aux = "have been" if patient.plural else "has been"
    else:
        aux = "will be"
    words = [patient.text, aux, verb.participle]
    if rng.random() < 0.5:
        words += ["by", _object(rng, _ANIMATE)]
    return words + _extras(rng, "past" if tense == "past" else "modal")


def _travel(rng: random.Random) -> list[str]:
    subj = _subject(rng, ("person",))
    places = lx.CITIES + lx.COUNTRIES
    roll = rng.random()
    if roll < 0.4:
        verb = _pick(rng, ("flew", "drove", "traveled", "moved", "walked", "sailed", "took the train"))
        return [subj.text, verb, "from", _pick(rng, places), "to", _pick(rng, places), _time_phrase(rng, "past")]
    if roll < 0.7:
        verb = lx.parse_verb(_pick(rng, ("live", "work", "study", "stay")))
        aux, main = _verb_group(rng, verb, subj, _pick(rng, ("present", "past", "perfect", "future")), False)
        return _clause(subj, aux, main, ["in", _pick(rng, places)], rng)
    days = lx.number_words(rng.randint(2, 30))
    return [subj.text, "spent", days, _pick(rng, ("days", "weeks", "months")), "in", _pick(rng, places),
            *(["with", _object(rng, ("person",))] if rng.random() < 0.5 else [])]


def _existential(rng: random.Random) -> list[str]:
    thing = _noun_phrase(rng, ("thing", "animal", "food", "instrument", "readable"))
    word = "is"
    if thing.plural:
        word = "are"
    if rng.random() < 0.4:
        word = "were" if thing.plural else "was"
    prep = _pick(rng, ("on", "under", "behind", "next to", "inside", "near", "beside", "in"))
    where = _noun_phrase(rng, ("thing", "place"), plural=False, adjective_p=0.2, allow_mass=False)
    words = ["there", word, thing.text, prep, where.text]
    return words + ([_pick(rng, ("again", "this morning", "yesterday", "now"))] if rng.random() < 0.2 else [])


def _weather(rng: random.Random) -> list[str]:
    roll = rng.random()
    when = _pick(rng, (f"on {_pick(rng, lx.DAYS)}", f"in {_pick(rng, lx.MONTHS)}",
                       f"in {_pick(rng, lx.CITIES)}", f"this {_pick(rng, lx.PARTS_OF_DAY)}", "all week"))
    if roll < 0.5:
        adjectives = [_pick(rng, lx.WEATHER_ADJECTIVES)]
        if rng.random() < 0.5:
            adjectives += ["and", _pick(rng, lx.WEATHER_ADJECTIVES)]
        return ["it", _pick(rng, ("was", "is", "will be", "has been")), *adjectives, when]
    verb = _pick(rng, _WEATHER_VERBS)
    it = _NP("it")
    aux, main = _verb_group(rng, verb, it, _pick(rng, ("past", "future", "progressive", "modal")), rng.random() < 0.2)
    return ["it", *aux, main, _pick(rng, ("heavily", "all night", "again", "a little")), when]


def _infinitive(rng: random.Random) -> list[str]:
    subj, tense = _subject(rng), _pick(rng, ("present", "past", "future", "perfect"))
    taker = _pick(rng, _INFINITIVE_TAKERS)
    aux, main = _verb_group(rng, taker, subj, tense, negate=rng.random() < 0.15)
    verb, kinds = _transitive(rng)
    return _clause(subj, aux, main, ["to", verb.base, _object(rng, kinds), *_extras(rng, tense)[:1]], rng)


def _ditransitive(rng: random.Random) -> list[str]:
    subj, tense = _subject(rng), _tense(rng)
    verb = _pick(rng, _DITRANSITIVE)
    aux, main = _verb_group(rng, verb, subj, tense, negate=rng.random() < 0.1)
    recipient = _object(rng, _ANIMATE)
    thing = _noun_phrase(rng, _SMALL_THINGS).text
    rest = [recipient, thing] if rng.random() < 0.5 else [thing, "to", recipient]
    return _clause(subj, aux, main, rest + _extras(rng, tense)[:1], rng)


def _reported(rng: random.Random) -> list[str]:
    lead = _pick(rng, ("i think that", "she said that", "he told me that", "we know that", "they believe that",
                       "my mother says", "nobody knew that", "it's true that", "i'm sure that", "i heard that"))
    return [lead, *_pick(rng, (_statement, _intransitive, _copula, _passive))(rng)]


_SHAPES = ((_statement, 16), (_intransitive, 8), (_frequency, 4), (_yes_no_question, 7), (_wh_question, 7),
           (_relative_clause, 6), (_list_sentence, 4), (_numbers, 8), (_copula, 6), (_description, 3),
           (_comparison, 4), (_joined_clauses, 6), (_imperative, 4), (_passive, 4), (_travel, 4),
           (_existential, 3), (_weather, 2), (_infinitive, 4), (_ditransitive, 4), (_reported, 3))

MIN_WORDS, MAX_WORDS = 3, 25


def sentence(rng: random.Random) -> str:
    """One sentence of MIN_WORDS..MAX_WORDS words (redrawn until it fits)."""
    functions, weights = zip(*_SHAPES)
    while True:
        shape = rng.choices(functions, weights)[0]
        words = " ".join(w for w in shape(rng) if w).split()
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " ".join(words)


# Sentences `frequent_words` ranks words on; a fixed sample, so a vocabulary limit names the same
# words whatever the corpus seed.
_RANKING_SEED, _RANKING_SENTENCES = 20240601, 50_000


@functools.lru_cache(maxsize=8)
def frequent_words(limit: int) -> frozenset[str]:
    """The `limit` words the generator produces most often (ties: first produced first)."""
    if limit < 1:
        raise ValueError(f"vocabulary limit must be positive, got {limit}")
    rng = random.Random(_RANKING_SEED)
    counts = collections.Counter(w for _ in range(_RANKING_SENTENCES) for w in sentence(rng).split())
    return frozenset(w for w, _ in counts.most_common(limit))


def unique_sentences(seed: int, count: int, vocabulary_limit: int | None = None) -> list[str]:
    """`count` distinct sentences, in generation order; the same seed gives the same list. With a
    `vocabulary_limit`, only sentences made entirely of the `frequent_words(limit)` are kept."""
    rng = random.Random(seed)
    allowed = None if vocabulary_limit is None else frequent_words(vocabulary_limit)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count:
        text = sentence(rng)
        attempts += 1
        if allowed is None or allowed.issuperset(text.split()):
            seen.setdefault(text)
        if attempts > 50 * count + 1000:
            limit = "" if allowed is None else f" within the {vocabulary_limit} most frequent words"
            raise RuntimeError(f"could not draw {count} distinct sentences{limit} (got {len(seen)} in {attempts} "
                               "tries); the grammar is too small for this corpus size")
    return list(seen)


@dataclasses.dataclass(frozen=True)
class SentenceSplits:
    train: list[str]
    dev: list[str]
    test: list[str]
    text_lm: list[str]


def make_splits(seed: int, num_train: int, num_dev: int, num_test: int, num_text_lm: int = 0,
                vocabulary_limit: int | None = None) -> SentenceSplits:
    """Pairwise disjoint sentence sets drawn from one distribution (text_lm: extra text-only sentences),
    optionally over the `vocabulary_limit` most frequent words only."""
    for name, value in (("num_train", num_train), ("num_dev", num_dev), ("num_test", num_test),
                        ("num_text_lm", num_text_lm)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    pool = unique_sentences(seed, num_train + num_dev + num_test + num_text_lm, vocabulary_limit)
    # Held-out sets come first so that growing the training set leaves dev and test unchanged.
    dev, test = pool[:num_dev], pool[num_dev:num_dev + num_test]
    start = num_dev + num_test
    return SentenceSplits(pool[start:start + num_train], dev, test, pool[start + num_train:])


# Words the templates above spell out literally (everything else comes from the lexicon).
TEMPLATE_WORDS_FILE = "data/template_words.txt"


def _template_words() -> frozenset[str]:
    text = resources.files("most_jax.corpus").joinpath(TEMPLATE_WORDS_FILE).read_text(encoding="utf-8")
    return frozenset(text.split())


def vocabulary() -> frozenset[str]:
    """Every word the generator can produce."""
    words = set(_template_words())
    for groups in (lx.NOUNS, lx.MASS_NOUNS, lx.ADJECTIVES):
        for entries in groups.values():
            words.update(w for entry in entries for w in entry.split())
    for entries in lx.NOUNS.values():
        words.update(lx.plural(n) for n in entries)
    for group in (lx.INTENSIFIERS, lx.MANNER_ADVERBS, lx.FREQUENCY_ADVERBS, lx.WEATHER_ADJECTIVES, lx.DAYS,
                  lx.MONTHS, lx.SEASONS, lx.PARTS_OF_DAY, lx.MALE_NAMES, lx.FEMALE_NAMES, lx.SURNAMES,
                  lx.TITLES, lx.CITIES, lx.COUNTRIES, lx.UNITS, lx.TENS[2:], lx.ORDINAL_UNITS[1:],
                  lx.ORDINAL_TENS[2:], ("hundred", "thousand", "million", "heavily")):
        words.update(w for entry in group for w in entry.split())
    words.update(f"{d}s" for d in lx.DAYS)
    words.update(f"{n}'s" for n in lx.MALE_NAMES + lx.FEMALE_NAMES + lx.SURNAMES)
    words.update(lx.COMPARATIVES.values())
    verbs = [v for group in _VERBS.values() for v in group]
    verbs += [*_INTRANSITIVE, *_INFINITIVE_TAKERS, *_DITRANSITIVE, *_WEATHER_VERBS]
    for verb in verbs:
        words.update((verb.base, verb.third, verb.past, verb.participle, verb.ing))
    return frozenset(words)
