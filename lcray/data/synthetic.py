"""Deterministic synthetic multi-document QA: the offline stand-in for MuSiQue.

Tests, CPU demos and the recipes without a dataset need long-context QA where we KNOW
which documents matter. Each record is a k-hop chain over made-up entities, e.g. (k=2)

    Document A: "... Velmora is the capital of Norland. ..."
    Document B: "... The river Osk flows through Velmora. ..."
    Q: "Which river flows through the capital of Norland?"   A: "Osk"

plus distractor documents about OTHER made-up entities written with the same sentence
shapes (same relations, same filler sentences), and sometimes a "near miss" document about
the question's own entity that does not lead to the answer -- so lexical overlap with the
question is informative but not a perfect oracle.

Names are syllable strings. A name belongs to the "train" or "test" pool by a hash of the
name itself, so the two pools are disjoint by construction whatever the seeds: evaluating
on entity_pool="test" measures reading, not memorised entities. Within a record no name is
a substring of another name or of the template text, so an answer string occurs exactly
where the generator put it.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Literal

from lcray.data.records import QARecord, stable_seed

EntityPool = Literal["train", "test"]
ENTITY_POOLS = ("train", "test")

_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
    "th",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ia", "ou")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "m", "nd", "sk")
_MAX_NAME_LEN = 9
_COMPANY_SUFFIXES = ("Works", "Labs", "Trading", "Mills", "Foods")


@dataclass(frozen=True)
class _Relation:
    subj: str  # entity type of the subject
    obj: str  # entity type of the object (the hop's answer)
    fact: str  # the document sentence stating it
    np: str  # noun phrase naming the object, for nesting inside a longer question
    question: str  # the question whose answer is the object


_RELATIONS = {
    "capital": _Relation(
        "country", "city", "{o} is the capital of {s}.", "the capital of {s}", "What is the capital of {s}?"
    ),
    "river": _Relation(
        "city",
        "river",
        "The river {o} flows through {s}.",
        "the river that flows through {s}",
        "Which river flows through {s}?",
    ),
    "mayor": _Relation("city", "person", "{o} is the mayor of {s}.", "the mayor of {s}", "Who is the mayor of {s}?"),
    "birthplace": _Relation(
        "person",
        "city",
        "{s} was born in the city of {o}.",
        "the city where {s} was born",
        "In which city was {s} born?",
    ),
    "employer": _Relation(
        "person",
        "company",
        "{s} works for the company {o}.",
        "the company that {s} works for",
        "Which company does {s} work for?",
    ),
    "founder": _Relation("company", "person", "{s} was founded by {o}.", "the founder of {s}", "Who founded {s}?"),
    "headquarters": _Relation(
        "company",
        "city",
        "{s} has its headquarters in {o}.",
        "the city where {s} has its headquarters",
        "In which city does {s} have its headquarters?",
    ),
    "country_of": _Relation(
        "city",
        "country",
        "{s} is a city in the country of {o}.",
        "the country where {s} lies",
        "In which country does {s} lie?",
    ),
    "mountain": _Relation(
        "country",
        "mountain",
        "The highest mountain in {s} is {o}.",
        "the highest mountain in {s}",
        "What is the highest mountain in {s}?",
    ),
}
# Follow-ups that would contradict the previous hop (a capital lying in another country).
_FORBIDDEN_NEXT = {("capital", "country_of")}

_FILLERS_ANY = (  # fit every entity kind
    "{s} is often mentioned in old travel books.",
    "Local stories about {s} are still told to children.",
    "A small museum describes the long history of {s}.",
    "{s} was first written about in the year {year}.",
)
_PLACE = (
    "Many visitors come to see {s} in the {season}.",
    "Writers have described {s} as {adj} and quiet.",
    "The name {s} comes from an old word for {thing}.",
    "Photographs of {s} from {year} show how much it has changed.",
)
_FILLERS = {
    "country": _PLACE
    + (
        "{s} has a population of about {n} million people.",
        "Farmers in {s} grow fruit and grain on {adj} hills.",
        "{s} has a long coast and many small harbours.",
    ),
    "city": _PLACE
    + (
        "{s} has {n} bridges and a busy market.",
        "The old town of {s} has narrow streets and {adj} houses.",
        "About {n} thousand people live in {s}.",
    ),
    "river": _PLACE,
    "mountain": _PLACE,
    "person": (
        "{s} studied history at a small school in the north.",
        "{s} has written {n} short books about {thing}.",
        "Friends describe {s} as a patient and careful worker.",
        "{s} enjoys long walks in the {season}.",
    ),
    "company": (
        "{s} employs about {n} hundred people.",
        "{s} makes tools, paper and glass.",
        "{s} opened its first shop in {year}.",
        "{s} sells its goods in {n} towns.",
    ),
}
_SLOTS = {
    "adj": ("green", "old", "busy", "calm", "bright", "windy"),
    "season": ("spring", "summer", "autumn", "winter"),
    "thing": ("stone", "water", "light", "salt", "wind", "bread"),
}
# Every fixed word a document or question can contain: names must never hide inside it.
_TEMPLATE_TEXT = " ".join(
    [f"{r.fact} {r.np} {r.question}" for r in _RELATIONS.values()]
    + list(_FILLERS_ANY)
    + [t for ts in _FILLERS.values() for t in ts]
    + [w for ws in _SLOTS.values() for w in ws]
    + list(_COMPANY_SUFFIXES)
    + ["Mount Document Question Answer"]
).lower()


def name_pool(name: str) -> EntityPool:
    """The pool ("train" or "test") a single generated name belongs to (hash partition)."""
    return "train" if zlib.crc32(name.lower().encode()) % 2 == 0 else "test"


class _Names:
    """Draws fresh names of one pool for one record, none a substring of another."""

    def __init__(self, rng: random.Random, pool: EntityPool) -> None:
        self.rng, self.pool = rng, pool
        self.used: list[str] = []

    def word(self) -> str:
        rng = self.rng
        while True:
            n_syl = rng.choice((2, 2, 3))
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n_syl))
            w = w.capitalize()
            low = w.lower()
            if (
                4 <= len(w) <= _MAX_NAME_LEN
                and name_pool(w) == self.pool
                and low not in _TEMPLATE_TEXT
                and not any(low in u or u in low for u in self.used)
            ):
                self.used.append(low)
                return w

    def entity(self, kind: str) -> str:
        if kind == "person":
            return f"{self.word()} {self.word()}"
        if kind == "company":
            return f"{self.word()} {self.rng.choice(_COMPANY_SUFFIXES)}"
        if kind == "mountain":
            return f"Mount {self.word()}"
        return self.word()


def _document(rng: random.Random, subject: str, kind: str, fact: str | None, n_sentences: int) -> str:
    """n_sentences sentences about `subject`: fillers, with `fact` at a random place."""
    templates = list(_FILLERS_ANY + _FILLERS[kind])
    n_fill = n_sentences - (fact is not None)
    chosen = rng.sample(templates, min(n_fill, len(templates)))
    sentences = [
        t.format(
            s=subject,
            n=rng.randint(2, 90),
            year=rng.randint(1400, 1990),
            **{k: rng.choice(v) for k, v in _SLOTS.items()},
        )
        for t in chosen
    ]
    if fact is not None:
        sentences.insert(rng.randint(0, len(sentences)), fact)
    return " ".join(s[:1].upper() + s[1:] for s in sentences)


def _chain(rng: random.Random, hops: int) -> list[str]:
    """A random path of `hops` relations whose types connect (subject of i+1 = object of i)."""
    while True:
        path = [rng.choice(sorted(_RELATIONS))]
        while len(path) < hops:
            nxt = [
                n
                for n, r in sorted(_RELATIONS.items())
                if r.subj == _RELATIONS[path[-1]].obj and (path[-1], n) not in _FORBIDDEN_NEXT
            ]
            if not nxt:
                break
            path.append(rng.choice(nxt))
        if len(path) == hops:
            return path


def _record(
    i: int, seed: int, pool: EntityPool, num_support: int, num_distractors: int, doc_sentences: tuple[int, int]
) -> QARecord:
    rng = random.Random(stable_seed("lcray.synthetic", seed, pool, i))
    names = _Names(rng, pool)
    n_sent = lambda: rng.randint(*doc_sentences)  # noqa: E731

    path = _chain(rng, num_support)
    entities = [names.entity(_RELATIONS[path[0]].subj)]
    support = []
    for rel_name in path:
        rel = _RELATIONS[rel_name]
        obj = names.entity(rel.obj)
        fact = rel.fact.format(s=entities[-1], o=obj)
        support.append(_document(rng, entities[-1], rel.subj, fact, n_sent()))
        entities.append(obj)
    phrase = entities[0]
    for rel_name in path[:-1]:
        phrase = _RELATIONS[rel_name].np.format(s=phrase)
    question = _RELATIONS[path[-1]].question.format(s=phrase)

    distractors = []
    near_miss = num_distractors > 0 and rng.random() < 0.5
    for _ in range(num_distractors - near_miss):
        rel = _RELATIONS[rng.choice(path) if rng.random() < 0.5 else rng.choice(sorted(_RELATIONS))]
        subj = names.entity(rel.subj)
        distractors.append(_document(rng, subj, rel.subj, rel.fact.format(s=subj, o=names.entity(rel.obj)), n_sent()))
    if near_miss:  # about the question's own entity, without the fact that leads to the answer
        distractors.append(_document(rng, entities[0], _RELATIONS[path[0]].subj, None, n_sent()))

    documents = support + distractors
    order = list(range(len(documents)))
    rng.shuffle(order)
    documents = [documents[j] for j in order]
    supporting = sorted(order.index(j) for j in range(len(support)))
    return QARecord(
        id=f"synthetic-{pool}-{seed}-{i}",
        question=question,
        answers=[entities[-1]],
        documents=documents,
        supporting=supporting,
    )


def make_synthetic_records(
    n: int,
    *,
    seed: int,
    num_support: int = 2,
    num_distractors: int = 20,
    entity_pool: EntityPool = "train",
    doc_sentences: tuple[int, int] = (3, 6),
) -> list[QARecord]:
    """n deterministic k-hop QA records (k = num_support supporting documents each).

    Same arguments -> identical records; record i does not depend on n (a shorter list is a
    prefix of a longer one). Documents are shuffled; `supporting` gives the chain's documents.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if num_support < 1:
        raise ValueError(f"num_support must be >= 1, got {num_support}")
    if num_distractors < 0:
        raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
    if entity_pool not in ENTITY_POOLS:
        raise ValueError(f"entity_pool must be one of {ENTITY_POOLS}, got {entity_pool!r}")
    lo, hi = doc_sentences
    if not 1 <= lo <= hi:
        raise ValueError(f"doc_sentences must be (lo, hi) with 1 <= lo <= hi, got {doc_sentences}")
    return [_record(i, seed, entity_pool, num_support, num_distractors, (lo, hi)) for i in range(n)]
