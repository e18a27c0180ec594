"""From retrieved passages to an answer whose every [n] resolves to a quote in a file.

The retrieved chunks are cut into sentences and each sentence is scored against the
question with the embedder. The best sentences, within a token budget, become the
numbered sources of the prompt (prompt length is what costs time on a CPU). Without an
LLM the best sentences are the answer, quoted. With one, each claim of the reply is
checked against the sentence it cites (rag.grounding), so the quote is verbatim text of
the file that states the claim.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from rag.chunking import count_tokens, split_sentences
from rag.config import PROMPTS_DIR
from rag.languages import language_name
from rag.llm import Message
from rag.records import Citation, Hit, Location
from rag.support import asks_amount, states_amount
from rag.tuning import CONTEXT_SHARE, MIN_SENTENCE_CHARS, RANK_PENALTY

# Re-exported: the engine picks the extractive answer's size from here.
from rag.tuning import EXTRACTIVE_MARGIN as EXTRACTIVE_MARGIN
from rag.tuning import EXTRACTIVE_SENTENCES as EXTRACTIVE_SENTENCES

# The reply with which the prompt tells the model to say the sources hold no answer.
NOT_FOUND = "NOT_FOUND"


class Embeds(Protocol):
    def embed_passages(self, texts: list[str]) -> np.ndarray: ...
    def embed_query(self, text: str) -> np.ndarray: ...


@dataclass
class Sentence:
    hit_index: int
    start: int  # offsets into the hit's chunk text
    end: int
    text: str
    score: float = 0.0  # similarity to the question
    vector: np.ndarray | None = None

    def similarity(self, vector: np.ndarray) -> float:
        return float(self.vector @ vector) if self.vector is not None else 0.0


@dataclass
class Source:
    """One numbered source of a prompt: a retrieved chunk and its chosen sentences."""

    n: int
    hit: Hit
    sentences: list[Sentence]

    def prompt_text(self) -> str:
        return " … ".join(s.text for s in self.sentences)

    def citation(self, sentence: Sentence) -> Citation:
        chunk = self.hit.chunk
        line = chunk.line_at(sentence.start)  # a sentence never spans a line break
        # the quote's own line, not the chunk's start: a chunk may span two pages
        where = chunk.location_at(sentence.start) or Location()
        return Citation(
            n=self.n,
            file=Path(chunk.path).name,
            path=chunk.path,
            lines=(line, line),
            quote=sentence.text,
            url=chunk.url,
            ocr=chunk.ocr,
            page=where.page,
            section=where.section,
            # OCR may misread words: the reader is told the quote comes from a scan
            locator=(where.label or f"line {line}") + (" (OCR)" if chunk.ocr else ""),
        )


class SentenceVectors:
    """Embeddings of evidence sentences, remembered across questions.

    The same chunks come back for many questions, and embedding their sentences is
    the main cost of an answer without an LLM, so each sentence is embedded once per
    process (bounded; the oldest are forgotten first). Vectors are keyed by the
    embedder's `identity` (its model and version: the same vectors whichever instance
    made them); an embedder without one is not cached.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, embedder: Embeds, texts: list[str]) -> list[np.ndarray]:
        identity = getattr(embedder, "identity", None)
        if not isinstance(identity, str) or not identity:
            return list(embedder.embed_passages(texts))
        keys = [(identity, text) for text in texts]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        if missing:
            fresh = embedder.embed_passages([text for _, text in missing])
            with self._lock:
                self._vectors.update(zip(missing, fresh, strict=True))
                while len(self._vectors) > self.capacity:
                    self._vectors.popitem(last=False)
        with self._lock:
            found = [self._vectors.get(k) for k in keys]
        if any(v is None for v in found):  # evicted meanwhile by another thread
            return list(embedder.embed_passages(texts))
        return found  # type: ignore[return-value]


_SENTENCE_VECTORS = SentenceVectors()


def sentence_vectors(embedder: Embeds, texts: list[str]) -> list[np.ndarray]:
    """Passage embeddings of evidence sentences, from the process-wide cache (a
    selection rebuilt from llama-index nodes finds the vectors Evidence made)."""
    return _SENTENCE_VECTORS.embed(embedder, texts)


class Evidence:
    """The sentences of the retrieved chunks, scored against the question."""

    def __init__(self, hits: list[Hit], question_vector: np.ndarray, embedder: Embeds) -> None:
        self.hits = hits
        self.embedder = embedder
        self.question_vector = question_vector
        self.sentences: list[Sentence] = []
        self._read_from: list[int] = []  # where each sentence reads from in context
        for i, hit in enumerate(hits):
            spans = split_sentences(hit.chunk.text)
            for (start, end), before in zip(spans, [None, *spans[:-1]], strict=True):
                if end - start >= MIN_SENTENCE_CHARS:
                    self.sentences.append(Sentence(i, start, end, hit.chunk.text[start:end]))
                    self._read_from.append(before[0] if before else start)
        vectors = sentence_vectors(embedder, [s.text for s in self.sentences])
        for sentence, vector in zip(self.sentences, vectors, strict=True):
            sentence.vector = vector
            sentence.score = sentence.similarity(question_vector)

    def ranked(self) -> list[Sentence]:
        """Best first: similarity to the question, less RANK_PENALTY per retrieval rank.

        A sentence alone says less than the passage it sits in, which retrieval ranked
        with names and numbers (BM25) and language balance; the penalty lets that
        ranking break near-ties. Ties then go by retrieval rank and position, so the
        order is deterministic.
        """
        return sorted(self.sentences, key=rank_key)

    def select(self, token_budget: int) -> list[Source]:
        """The best sentences within the budget, grouped into numbered sources."""
        chosen: list[Sentence] = []
        used = 0
        for sentence in self.ranked():
            cost = count_tokens(sentence.text) + 4
            if chosen and used + cost > token_budget:
                continue
            chosen.append(sentence)
            used += cost
        return self._number(chosen)

    def best(self, count: int, margin: float) -> list[Source]:
        """The few sentences a quoted answer shows: the best `count`, each within
        `margin` of the best one, scored as read in context (see `in_context`)."""
        ranked = sorted(self.in_context(), key=rank_key)
        if not ranked:
            return []
        top = ranked[0].score
        return self._number([s for s in ranked[:count] if s.score >= top - margin])

    def in_context(self) -> list[Sentence]:
        """The sentences scored CONTEXT_SHARE as read after the sentence before them,
        the rest as themselves: "It aims to become a green hub" says whose aim only
        with the sentence before it, which a question names. Only for quoted answers,
        where the few best sentences are the answer: it costs a second embedding of
        every sentence, and did not make the LLM's answers better (rag.tuning)."""
        texts = [
            self.hits[s.hit_index].chunk.text[start : s.end]
            for s, start in zip(self.sentences, self._read_from, strict=True)
        ]
        vectors = sentence_vectors(self.embedder, texts)
        return [
            replace(
                s,
                score=(1 - CONTEXT_SHARE) * s.score
                + CONTEXT_SHARE * float(vector @ self.question_vector),
            )
            for s, vector in zip(self.sentences, vectors, strict=True)
        ]

    def _number(self, chosen: list[Sentence]) -> list[Source]:
        by_hit: dict[int, list[Sentence]] = {}
        for sentence in chosen:
            by_hit.setdefault(sentence.hit_index, []).append(sentence)
        return [
            Source(n, self.hits[i], sorted(by_hit[i], key=lambda s: s.start))
            for n, i in enumerate(sorted(by_hit), start=1)
        ]


def rank_key(sentence: Sentence) -> tuple[float, int, int]:
    return (
        -(sentence.score - RANK_PENALTY * sentence.hit_index),
        sentence.hit_index,
        sentence.start,
    )


@cache
def prompt_file(name: str) -> str:
    return (PROMPTS_DIR / name).read_text(encoding="utf-8")


@cache
def localized(name: str) -> dict[str, str]:
    return json.loads(prompt_file(name))


def refusal_message(language: str) -> str:
    messages = localized("refusal.json")
    return messages.get(language, messages["en"])


def is_refusal(text: str) -> bool:
    """An empty reply or the NOT_FOUND marker; a reply that says the sources lack the
    fact in words is found sentence by sentence by `ground` (rag.support)."""
    return not text.strip() or NOT_FOUND.lower() in text.lower()


def build_messages(question: str, sources: list[Source], language: str) -> list[Message]:
    # No file names: they cost ~12 prompt tokens a source (0.1 s each on this CPU) and
    # tell the model nothing the numbers do not.
    numbered = ((s.n, s.prompt_text()) for s in sources)
    return [*fixed_messages(), _user_message(numbered, question, language_name(language))]


@cache
def fixed_messages() -> tuple[Message, ...]:
    """The system prompt and the worked examples: the same for every question, so
    llama.cpp keeps them as its cached prefix and only the first question pays."""
    messages = [Message("system", prompt_file("system.txt").strip())]
    for example in json.loads(prompt_file("examples.json")):
        numbered = enumerate(example["sources"], 1)
        messages += [
            _user_message(numbered, example["question"], example["language"]),
            Message("assistant", example["answer"]),
        ]
    return tuple(messages)


def warm_up_messages() -> list[Message]:
    """A prompt shaped like every question's (fixed messages, then a message from the
    user template with a numbered source), so that a warm-up leaves llama.cpp holding
    exactly the prefix the questions pin (rag.llm.fixed_part)."""
    return [*fixed_messages(), _user_message([(1, "OK")], "OK", "English")]


def _user_message(numbered: Iterable[tuple[int, str]], question: str, language: str) -> Message:
    """prompts/user.txt filled in: the numbered sources, the question and the answer
    language's English name; one template for the questions and the worked examples."""
    listing = "\n".join(f"[{n}] {text}" for n, text in numbered)
    user = prompt_file("user.txt").format(sources=listing, question=question, language=language)
    return Message("user", user.strip())


def answering(sources: list[Source], question: str, language: str, given: str) -> list[Source]:
    """The sentences that can answer the question, renumbered: for one asking an amount
    ("how many", "bao nhiêu"), those stating one that `given` (the question and the one
    before) does not already hold; all of them for any other question."""
    if not asks_amount(question, language):
        return sources
    kept = [
        [s for s in source.sentences if states_amount(s.text, source.hit.chunk.language, given)]
        for source in sources
    ]
    chosen = [(source, found) for source, found in zip(sources, kept, strict=True) if found]
    return [replace(source, n=n, sentences=found) for n, (source, found) in enumerate(chosen, 1)]


def extractive(sources: list[Source], language: str) -> tuple[str, list[Citation]]:
    """The best sentences, quoted verbatim with their source numbers."""
    intro = localized("extractive_intro.json")
    lines = [intro.get(language, intro["en"])]
    citations = []
    for source in sources:
        for sentence in source.sentences:
            lines.append(f"- «{sentence.text}» [{source.n}]")
            citations.append(source.citation(sentence))
    return "\n".join(lines), citations


def stream_correction(streamed: str, final: str) -> str:
    """What to append when the checked answer differs from the streamed text (markers
    cleaned, an unsupported claim dropped, a refusal): a streamed text cannot be taken
    back, so the checked answer follows it after a rule."""
    if " ".join(streamed.split()) == " ".join(final.split()):
        return ""
    return final if not streamed.strip() else f"\n\n---\n{final}"


def stream_hold(deltas: Iterator[str], hold: str = NOT_FOUND) -> Iterator[str]:
    """Pass text through, but hold back a start that may become a refusal marker."""
    buffer = ""
    released = False
    for delta in deltas:
        if released:
            yield delta
            continue
        buffer += delta
        stripped = buffer.lstrip()
        if len(stripped) >= len(hold) or not hold.startswith(stripped.upper()[: len(hold)]):
            released = not stripped.upper().startswith(hold)
            if released:
                yield buffer
    # a held refusal is never shown as text: the caller shows the refusal message
