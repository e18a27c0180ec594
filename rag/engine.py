"""The engine: one object the CLI, the Streamlit app and `rag eval` all talk to."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from rag.answer import (
    EXTRACTIVE_MARGIN,
    EXTRACTIVE_SENTENCES,
    Evidence,
    build_messages,
    extractive,
    fixed_messages,
    ground,
    is_refusal,
    refusal_message,
    stream_hold,
)
from rag.config import Settings
from rag.indexer import IndexReport, index_folder
from rag.language import LANGUAGE_NAMES, detect_language
from rag.llm import BACKENDS, ChatBackend, LLMError, Message, context_budget, make_backend
from rag.models import Embedder, embedder_identity, load_embedder, model_status
from rag.records import Answer, Hit, UserError
from rag.retrieve import HybridRetriever, keyword_index_for
from rag.store import Store

# A follow-up this short ("And in Dong Nai?") is searched together with the previous
# question; a longer one stands on its own.
FOLLOW_UP_MAX_WORDS = 8
# A store replaced by a fresh one is closed this long after, when no search that
# started on it can still be running.
RETIRE_SECONDS = 30.0


@dataclass
class Retrieved:
    """First event of an answer: the evidence, before any token is generated."""

    hits: list[Hit]
    language: str
    search_query: str
    refused: bool


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    answer: Answer


Event = Retrieved | Delta | Finished


class Engine:
    """Loads models lazily, once, and keeps the store open between questions."""

    # How the sentences of the retrieved chunks are scored and picked for the answer
    # (bench/ceiling.py swaps in an oracle to measure the LLM alone).
    evidence_class: type[Evidence] = Evidence

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._lock = threading.RLock()
        self._embedder: Embedder | None = None
        self._store: Store | None = None
        self._retired: list[tuple[float, Store]] = []
        self._backends: dict[str, ChatBackend | None] = {}

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = load_embedder(self.settings)
            return self._embedder

    def store(self) -> Store:
        """The open store, re-opened when another process has re-indexed it."""
        with self._lock:
            if self._store is None:
                self._store = self._open_store()
            elif not self._store.is_current():
                self._refresh()
            return self._store

    def _open_store(self) -> Store:
        return Store(self.settings, embedder_identity(self.settings), create=False)

    def _refresh(self) -> None:
        """Swap in a freshly loaded store (an embedded Chroma never sees another
        process's new vectors otherwise; see rag.store._private_client)."""
        try:
            fresh = self._open_store()
        except UserError:
            return  # e.g. a rebuild under way elsewhere: answer from the old store
        if self._store is not None:
            self._retired.append((time.monotonic(), self._store))
        self._store = fresh
        # Closed only once no query can still be running on them.
        now = time.monotonic()
        for retired_at, old in list(self._retired):
            if now - retired_at > RETIRE_SECONDS:
                old.close()
                self._retired.remove((retired_at, old))

    def index(self, rebuild: bool = False, progress: bool = True) -> IndexReport:
        # Not under self._lock, so questions go on meanwhile (from the store as it was);
        # index_folder serializes indexers, and store() re-opens once the index changed.
        return index_folder(
            self.settings,
            rebuild=rebuild,
            progress=progress,
            embedder_factory=lambda: self.embedder,
        )

    def backend(self, name: str | None = None) -> ChatBackend | None:
        name = name or self.settings.llm
        if name not in BACKENDS:
            raise LLMError(f"unknown LLM backend {name!r}; use one of {', '.join(BACKENDS)}")
        with self._lock:
            if name not in self._backends:
                self._backends[name] = make_backend(name, self.settings)
            return self._backends[name]

    def prime(self, name: str | None = None) -> None:
        """Run the fixed part of every prompt (system prompt, worked examples) through
        the local LLM once, so llama.cpp has it cached and the first question only pays
        for its own sources and question (about 3 s less on a 2-core CPU). A question
        asked meanwhile waits for the model's lock."""
        backend = self.backend(name)
        if backend is None or backend.name != "local":
            return  # nothing to cache: no model, or a server that keeps its own
        for _ in backend.stream([*fixed_messages(), Message("user", "OK")]):
            break  # the prompt is processed before the first token: enough

    def search(
        self, query: str, k: int | None = None, query_vector: np.ndarray | None = None
    ) -> list[Hit]:
        """Hybrid (dense + BM25) hits; pass `query_vector` to reuse the query's embedding."""
        query = query.strip()
        if not query:
            raise UserError("the question is empty")
        store = self.store()
        retriever = HybridRetriever(store, self.embedder, keyword_index_for(store))
        return retriever.search(query, k or self.settings.top_k, query_vector)

    def ask(
        self,
        question: str,
        history: Sequence[dict[str, str]] | None = None,
        llm: str | None = None,
        k: int | None = None,
        language: str | None = None,
    ) -> Answer:
        for event in self.ask_stream(question, history, llm, k, language):
            if isinstance(event, Finished):
                return event.answer
        raise AssertionError("ask_stream ended without an answer")

    def ask_stream(
        self,
        question: str,
        history: Sequence[dict[str, str]] | None = None,
        llm: str | None = None,
        k: int | None = None,
        language: str | None = None,
    ) -> Iterator[Event]:
        """Retrieved first (evidence), then Delta texts as they come, then Finished."""
        started = time.perf_counter()
        question = question.strip()
        if not question:
            raise UserError("the question is empty")
        name = llm or self.settings.llm
        backend = self.backend(name)
        previous = previous_question(history or [], self.settings.history_turns)
        lang = self._language(question, previous, language)
        search_query = follow_up_query(question, previous)
        query_vector = self.embedder.embed_query(search_query)
        hits = self.search(search_query, k, query_vector)
        timings = {"retrieve_ms": _ms(started)}
        confidence = max((h.dense_score or 0.0 for h in hits), default=0.0)
        gate = not hits or confidence < self.settings.refusal_threshold
        yield Retrieved(hits, lang, search_query, gate)

        def finish(
            text: str, refused: bool, citations: list[Any], support: dict[str, int] | None = None
        ) -> Finished:
            timings.setdefault("first_token_ms", _ms(started))
            timings["total_ms"] = _ms(started)
            answer = Answer(
                question, lang, text, refused, citations, hits, name, timings, search_query
            )
            answer.support = support or _quoted_support(citations)
            return Finished(answer)

        if gate:
            yield Delta(refusal_message(lang))
            yield finish(refusal_message(lang), True, [])
            return
        evidence = self.evidence_class(hits, query_vector, self.embedder)
        if backend is None:
            text, citations = extractive(
                evidence.best(EXTRACTIVE_SENTENCES, EXTRACTIVE_MARGIN), lang
            )
            timings["first_token_ms"] = _ms(started)
            yield Delta(text)
            yield finish(text, False, citations)
            return
        budget = context_budget(
            self.settings.context_tokens,
            backend,
            time.perf_counter() - started,
            self.settings.first_token_target,
        )
        timings["context_tokens"] = budget
        sources = evidence.select(budget)
        messages = build_messages(question, sources, lang, previous)
        reply = ""
        for delta in stream_hold(backend.stream(messages)):
            timings.setdefault("first_token_ms", _ms(started))
            reply += delta
            yield Delta(delta)
        if is_refusal(reply):
            yield finish(refusal_message(lang), True, [])
            return
        grounded = ground(reply, sources, self.embedder, f"{previous or ''}\n{question}")
        if grounded is not None and grounded.invented:
            yield finish(refusal_message(lang), True, [], grounded.support())
            return
        if grounded is None:  # nothing in the reply can be tied to a source: quote instead
            text, citations = extractive(
                evidence.best(EXTRACTIVE_SENTENCES, EXTRACTIVE_MARGIN), lang
            )
            yield finish(text, False, citations)
            return
        yield finish(grounded.text, False, grounded.citations, grounded.support())

    def _language(self, question: str, previous: str | None, fixed: str | None) -> str:
        fixed = fixed or self.settings.answer_language
        if fixed and fixed != "auto":
            return fixed
        lang = detect_language(question)
        if lang not in LANGUAGE_NAMES and previous:
            lang = detect_language(previous)
        return lang if lang in LANGUAGE_NAMES else "en"

    def status(self) -> dict[str, Any]:
        models = model_status(self.settings)
        try:
            store = self.store()
        except UserError as exc:
            return {
                "files": 0,
                "chunks": 0,
                "store": str(self.settings.store_dir),
                "last_indexed": None,
                "error": str(exc),
                **models,
            }
        files = store.manifest.files()
        last = store.manifest.get_meta("last_indexed")
        return {
            "files": len(files),
            "chunks": store.manifest.chunk_count(),
            "store": store.location,
            "docs": str(self.settings.docs_dir),
            "last_indexed": _iso(float(last)) if last else None,
            "languages": sorted({r.language for r in files.values() if r.language}),
            **models,
        }


def follow_up_query(question: str, previous: str | None) -> str:
    """What to search for: a short follow-up ("And in Dong Nai?") together with the
    previous question, anything else as it stands."""
    if previous and len(question.split()) <= FOLLOW_UP_MAX_WORDS:
        return f"{previous}\n{question}"
    return question


def previous_question(history: Sequence[dict[str, str]], turns: int) -> str | None:
    """The last user question of the (bounded) history."""
    for message in reversed(list(history)[-2 * turns :]):
        if message.get("role") == "user" and message.get("content", "").strip():
            return message["content"].strip()
    return None


def _quoted_support(citations: list[Any]) -> dict[str, int]:
    """Support of an answer that quotes its sources: each quote supports itself."""
    return {"supported": len(citations), "recited": 0, "dropped": 0}


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
