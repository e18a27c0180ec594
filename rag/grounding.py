"""From an LLM's reply to claims each supported by the source sentence it cites.

The reply's markers are cleaned (rag.citations), the reply is cut into claims, and each
claim is checked against the sentence(s) it cites by its numbers, dates and names
(rag.support): kept, cited to the sentence that does state it, or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rag.answer import Embeds, Sentence, Source
from rag.chunking import split_sentences
from rag.citations import Claim, claims, clean_markers
from rag.records import Citation, Hit
from rag.support import (
    Facts,
    evidence_names,
    facts,
    missing,
    name_stated,
    names_known_in,
    names_only,
    says_not_found,
    says_nothing_new,
    unknown_names,
)
from rag.tuning import ATTACH_MIN_SIMILARITY

# A name in more than this share of the retrieved passages is not checked (see
# _discriminating). Set by hand; not measured.
UBIQUITOUS_SHARE = 0.5


@dataclass
class Grounded:
    text: str
    citations: list[Citation]
    # nothing of the reply is supported (every claim dropped), or the reply says the
    # sources lack the fact: shown as a refusal
    refused: bool = False
    kept: int = 0  # claims shown, each supported by the sentence(s) it cites
    recited: int = 0  # of which cited to another source sentence than the model chose
    dropped: int = 0  # claims removed: no source sentence states their facts
    # nothing of the reply can be tied to a source (no claim, or only ones close to no
    # source sentence): the caller quotes the sources instead, reporting `dropped`
    untied: bool = False

    def support(self) -> dict[str, int]:
        supported = self.kept - self.recited
        return {"supported": supported, "recited": self.recited, "dropped": self.dropped}


def ground(
    reply: str,
    sources: list[Source],
    embedder: Embeds,
    question: str = "",
    hits: list[Hit] | None = None,
    language: str = "",
) -> Grounded:
    """Check every claim of the reply against the sentence(s) it cites (rag.support).

    A claim stands when its cited sentences state its numbers, dates and names; else
    it is cited to another source sentence that does (recited), else it is dropped: a
    small model fills gaps with figures from nowhere, or the figure of a neighbouring
    entity, and a citation would make them look grounded. Sentences saying the sources
    lack the fact are no claims; a reply of only those, or with every claim dropped, is
    a refusal. Uncited claims without facts are attached to the closest source
    sentence when similar enough, and show its marker; those close to none are left
    out (counted as dropped). `untied` when nothing in the reply can be tied to a
    source (the caller quotes the sources instead).
    """
    by_number = {s.n: s for s in sources}
    cleaned = clean_markers(reply, set(by_number))
    parts = [c for c in claims(cleaned) if c.text]
    if not parts:
        return Grounded("", [], untied=True)
    answering = [c for c in parts if not says_not_found(c.text)]
    if not answering:
        return Grounded("", [], refused=True)
    checker = ClaimChecker(sources, question, hits, language)
    vectors = np.stack([embedder.embed_query(c.text) for c in answering])
    shown: list[Claim] = []
    best: dict[tuple[int, str], Citation] = {}
    recited = loose = 0
    for claim, vector in zip(answering, vectors, strict=True):
        support = checker.support(claim, vector)
        if support is None:
            continue
        chosen, moved = support
        if not chosen:  # no facts, cited nowhere, close to no source sentence
            loose += 1
            continue
        recited += moved
        shown.append(Claim(claim.text, _supporting_numbers(claim, chosen, moved)))
        for n, sentence in chosen:
            citation = by_number[n].citation(sentence)
            best.setdefault((n, citation.quote), citation)
    dropped = len(answering) - len(shown)
    if not shown:  # nothing tied to a source: quote instead; all dropped: refuse
        return Grounded("", [], refused=not loose, dropped=dropped, untied=bool(loose))
    unchanged = (
        len(shown) == len(parts)
        and not recited
        and all(c.numbers == o.numbers for c, o in zip(shown, parts, strict=True))
    )
    text = cleaned if unchanged else " ".join(_with_markers(c) for c in shown)
    cited = sorted(best.values(), key=lambda c: (c.n, c.lines))
    return Grounded(text, cited, kept=len(shown), recited=recited, dropped=dropped)


Support = tuple[list[tuple[int, Sentence]], bool]


class ClaimChecker:
    """Which source sentences support a claim (see rag.support)."""

    def __init__(
        self,
        sources: list[Source],
        question: str,
        hits: list[Hit] | None = None,
        language: str = "",
    ) -> None:
        """`hits`: all the retrieved passages, whose names count as known (a claim or a
        question naming one of them must find it in its sentence); else the sources'."""
        self.sources = sources
        chunks = {id(h.chunk): h.chunk for h in (hits or [s.hit for s in sources])}
        self.known = _discriminating(
            evidence_names((c.text, c.language) for c in chunks.values()),
            [c.text for c in chunks.values()],
        )
        asked = facts(question)
        self.given = Facts(asked.numbers, asked.dates, frozenset())  # not its names
        self.question = question
        self._texts = [question, *(c.text for c in chunks.values())]
        self.language = language  # of the reply
        self._contexts: dict[tuple[int, int], Sentence | None] = {}

    def support(self, claim: Claim, vector: np.ndarray) -> Support | None:
        """The (source number, sentence) pairs that support the claim, and whether they
        are other sources than the claim cites; None when nothing supports it."""
        if unknown_names(claim.text, self._texts, self.language):
            return None  # a name from nowhere: no passage and not the question has it
        if says_nothing_new(claim.text, self.question):
            return [], False  # an echo of the question is no answer: left out
        stated = facts(claim.text, self.known)
        cited = [s for s in self.sources if s.n in claim.numbers]
        if not stated:  # nothing to check: it must at least say what a sentence says
            return self._resembling(cited, vector)
        found = self._covering(stated, cited, vector)
        if found:
            return found, False
        found = self._covering(stated, self.sources, vector)
        return (found, True) if found else None

    def _resembling(self, cited: list[Source], vector: np.ndarray) -> Support:
        """For a claim without facts: the closest sentence of each cited source that says
        something like it; else of the closest source that does (re-cited); else none
        ("Yes, it is paid [2]" where [2] says nothing of a price is not supported)."""
        alike = [s for s in cited if _attach(vector, [s])]
        moved = not alike and bool(cited)
        targets = alike or [s for s in self.sources if s.n in _attach(vector, self.sources)]
        return [(s.n, _closest(s.sentences, vector)) for s in targets], moved

    def _covering(
        self, stated: Facts, sources: list[Source], vector: np.ndarray
    ) -> list[tuple[int, Sentence]] | None:
        """One sentence stating all the claim's facts (the closest such), else two that
        each state one of its names: the facts may come from two sentences about the
        same thing, but not a figure from a sentence about something else ("Dong Nai
        has 500 startups" from a sentence about Quang Ninh's 500)."""
        pairs = sorted(
            ((s.n, sentence) for s in sources for sentence in s.sentences),
            key=lambda pair: -pair[1].similarity(vector),
        )
        for pair in pairs:
            if not self.unstated(stated, pair):
                return self._with_context(stated, pair)
        wanted = names_only(stated)
        naming = [
            pair
            for pair in pairs
            if not wanted or len(self.unstated(wanted, pair).names) < len(wanted.names)
        ]
        for first in naming:
            left = self.unstated(stated, first)
            if left == stated:
                continue  # states nothing of the claim
            for second in naming:
                if second is not first and not self.unstated(left, second):
                    return [first, second]
        return None

    def unstated(self, stated: Facts, pair: tuple[int, Sentence]) -> Facts:
        """What of `stated` the sentence (source n, sentence) does not state."""
        n, sentence = pair
        return missing(stated, sentence.text, self.given, self._context(n, sentence))

    def _with_context(
        self, stated: Facts, pair: tuple[int, Sentence]
    ) -> list[tuple[int, Sentence]]:
        """The supporting sentence, after the one before it when the claim's names are
        only there: the citation then shows the reader where they come from."""
        n, sentence = pair
        before = self._before(n, sentence)
        if before is None or not missing(stated, sentence.text, self.given).names:
            return [pair]
        return [(n, before), pair]

    def _context(self, n: int, sentence: Sentence) -> str:
        """The sentence, with the one before it when it names nothing the evidence
        knows ("The province has 90 startups"): there its names come from."""
        before = self._before(n, sentence)
        if before is None:
            return sentence.text
        return self._chunk_text(n)[before.start : sentence.end]

    def _before(self, n: int, sentence: Sentence) -> Sentence | None:
        """The sentence before this one in its chunk, when this one names nothing the
        evidence knows (its context); else None."""
        key = (n, sentence.start)
        if key not in self._contexts:
            found = None
            if not names_known_in(sentence.text, self.known):
                chunk = self._chunk_text(n)
                spans = [(a, b) for a, b in split_sentences(chunk) if b <= sentence.start]
                if spans:
                    start, end = spans[-1]
                    found = Sentence(sentence.hit_index, start, end, chunk[start:end])
            self._contexts[key] = found
        return self._contexts[key]

    def _chunk_text(self, n: int) -> str:
        return next(s for s in self.sources if s.n == n).hit.chunk.text


def _discriminating(names: set[str], texts: list[str]) -> set[str]:
    """The names only some passages mention: one in most of them ("Vietnam" in a folder
    about Vietnam) tells no sentence from another, so no claim has to find it in its
    sentence."""
    return {
        name
        for name in names
        if sum(name_stated(name, text) for text in texts) <= UBIQUITOUS_SHARE * len(texts)
    }


def _closest(sentences: list[Sentence], vector: np.ndarray) -> Sentence:
    return max(sentences, key=lambda s: s.similarity(vector))


def _supporting_numbers(
    claim: Claim, chosen: list[tuple[int, Sentence]], moved: bool
) -> tuple[int, ...]:
    """The claim's markers: the sources whose sentences support it. Of the sources it
    cited, only those (one sentence may state it all, and the other cited source
    nothing of it); cited elsewhere (`moved`), or cited nowhere and attached to the
    closest sentence, those sources: every claim shown carries its marker."""
    supporting = tuple(dict.fromkeys(n for n, _ in chosen))
    if moved or not claim.numbers:  # re-cited, or attached: it shows where it comes from
        return supporting
    return tuple(n for n in claim.numbers if n in supporting)


def _with_markers(claim: Claim) -> str:
    """The claim with its markers before its final punctuation ("... 2024 [1].")."""
    if not claim.numbers:
        return claim.text
    body = claim.text.rstrip()
    end = len(body.rstrip(".!?…。"))
    return f"{body[:end]} [{', '.join(map(str, claim.numbers))}]{body[end:]}"


def _attach(vector: np.ndarray, sources: list[Source]) -> tuple[int, ...]:
    candidates = [(sentence.similarity(vector), s.n) for s in sources for sentence in s.sentences]
    if not candidates:
        return ()
    score, n = max(candidates)
    return (n,) if score >= ATTACH_MIN_SIMILARITY else ()
