"""The built-in spoken question-answering set: a small world of facts about people, each fact a
statement (text-LM material) and questions with a one-word answer.

Every person has one value per relation (the city they live in, their pet, the instrument they
play, their birth month, the food they like). Splits are by fact: the questions of a train fact go
into train dialogs, those of a dev or test fact are held out, while every fact's statement is in
the facts text, so a model answering a held-out question must have learnt the fact as text and
the question form from other facts.
"""

from __future__ import annotations

import dataclasses
import random

from most_jax.corpus import lexicon as lx


@dataclasses.dataclass(frozen=True)
class Relation:
    name: str
    values: tuple[str, ...]
    statement: str  # "{person}", "{value}" and "{a_value}" (the value after its article) are filled in
    questions: tuple[str, ...]
    spoken_answer: str  # the answer as a short spoken sentence


RELATIONS = (
    Relation("city", lx.CITIES, "{person} lives in {value}.",
             ("Where does {person} live?", "Which city does {person} live in?"), "In {value}."),
    Relation("pet", lx.NOUNS["animal"], "{person} has a pet {value}.",
             ("What pet does {person} have?", "Which animal does {person} keep as a pet?"), "{a_value}."),
    Relation("instrument", lx.NOUNS["instrument"], "{person} plays the {value}.",
             ("What instrument does {person} play?", "Which instrument can {person} play?"), "The {value}."),
    Relation("month", lx.MONTHS, "{person} was born in {value}.",
             ("When was {person} born?", "In which month was {person} born?"), "In {value}."),
    Relation("food", lx.NOUNS["food"], "{person} likes to eat {value}.",
             ("What does {person} like to eat?", "Which food does {person} like?"), "{value}."),
)
SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class Fact:
    person: str
    relation: Relation
    value: str

    @property
    def statement(self) -> str:
        return _sentence(self.relation.statement, self)


@dataclasses.dataclass(frozen=True)
class Dialog:
    id: str
    split: str
    question: str
    answer: str  # the expected answer (the value; evaluations match it after normalisation)
    spoken_answer: str  # what the speech answer says


def _value(fact: Fact) -> str:
    """The value as written: names of cities and months capitalised."""
    return fact.value.title() if fact.relation.name in ("city", "month") else fact.value


def _sentence(template: str, fact: Fact) -> str:
    value = _value(fact)
    text = template.format(person=fact.person.title(), value=value, a_value=f"{lx.article(fact.value)} {value}")
    return text[0].upper() + text[1:]


def world(num_people: int, seed: int = 0) -> list[Fact]:
    """One fact per relation for each of `num_people` people with distinct first names."""
    names = sorted(set(lx.MALE_NAMES) | set(lx.FEMALE_NAMES))
    if not 0 < num_people <= len(names):
        raise ValueError(f"people must be in 1..{len(names)} (the lexicon's first names), got {num_people}")
    rng = random.Random(f"qa-world-{seed}")
    return [Fact(person, relation, rng.choice(relation.values))
            for person in rng.sample(names, num_people) for relation in RELATIONS]


def dialogs(facts: list[Fact], seed: int = 0, dev_fraction: float = 0.1,
            test_fraction: float = 0.1) -> list[Dialog]:
    """Every question form of every fact, the facts split at random into train / dev / test."""
    if not (0 <= dev_fraction and 0 <= test_fraction and dev_fraction + test_fraction < 1):
        raise ValueError(f"dev and test fractions must be >= 0 and sum below 1, got {dev_fraction}, {test_fraction}")
    rng = random.Random(f"qa-splits-{seed}")
    order = list(range(len(facts)))
    rng.shuffle(order)
    num_dev, num_test = round(dev_fraction * len(facts)), round(test_fraction * len(facts))
    split_of = {i: "dev" if rank < num_dev else "test" if rank < num_dev + num_test else "train"
                for rank, i in enumerate(order)}
    out = []
    for i, fact in enumerate(facts):
        for q, template in enumerate(fact.relation.questions):
            out.append(Dialog(f"qa{i:05d}-{q}", split_of[i], _sentence(template, fact), _value(fact),
                              _sentence(fact.relation.spoken_answer, fact)))
    return sorted(out, key=lambda d: (SPLITS.index(d.split), d.id))
