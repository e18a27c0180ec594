"""The engine: one object the CLI, the Streamlit app and `rag eval` all talk to."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.answer import (
    EXTRACTIVE_MARGIN,
    EXTRACTIVE_SENTENCES,
    Evidence,
    Source,
    warm_up_messages,
)
from rag.config import Settings
from rag.llm import BACKENDS, ChatBackend, LLMError, make_backend
from rag.models import Embedder, embedder_identity, load_embedder, model_status
from rag.records import Answer, Delta, Event, Finished, Hit, Retrieved, UserError
from rag.retrieve import HybridRetriever, keyword_index_for
from rag.stages import Stages, Turn
from rag.store import Store

if TYPE_CHECKING:  # the indexer (and the readers it imports) only when indexing
    from rag.gate import Thresholds
    from rag.indexer import IndexReport

# A store replaced by a fresh one is closed this long after, when no search that
# started on it can still be running.
RETIRE_SECONDS = 30.0


class Pipeline(Protocol):
    """One answer's retrieval and evidence selection (see Engine.pipeline)."""

    def retrieve(self, k: int | None) -> list[Hit]: ...

    def score(self) -> None: ...

    def select(self, token_budget: int) -> list[Source]: ...

    def best(self) -> list[Source]: ...


class DirectPipeline:
    """Retrieval and evidence selection called directly, without llama-index."""

    def __init__(self, engine: Engine, query: str, vector: np.ndarray) -> None:
        self.engine = engine
        self.query = query
        self.vector = vector
        self.hits: list[Hit] = []
        self.evidence: Evidence | None = None

    def retrieve(self, k: int | None) -> list[Hit]:
        self.hits = self.engine.search(self.query, k, self.vector)
        return self.hits

    def score(self) -> None:
        self.evidence = Evidence(self.hits, self.vector, self.engine.embedder)

    def select(self, token_budget: int) -> list[Source]:
        assert self.evidence is not None, "score() first"
        return self.evidence.select(token_budget)

    def best(self) -> list[Source]:
        assert self.evidence is not None, "score() first"
        return self.evidence.best(EXTRACTIVE_SENTENCES, EXTRACTIVE_MARGIN)


class Engine:
    """Loads models lazily, once, and keeps the store open between questions."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._lock = threading.RLock()
        self._embedder: Embedder | None = None
        self._store: Store | None = None
        self._retired: list[tuple[float, Store]] = []
        self._backends: dict[str, ChatBackend | None] = {}
        # The answer path (rag.stages); benchmarks and tests swap single stages.
        self.stages = Stages()

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
        from rag.indexer import index_folder

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
        for _ in backend.stream(warm_up_messages()):
            break  # the prompt is processed before the first token: enough

    def search(
        self, query: str, k: int | None = None, query_vector: np.ndarray | None = None
    ) -> list[Hit]:
        """Hybrid (dense + BM25) hits; pass `query_vector` to reuse the query's embedding."""
        # The plain HybridRetriever, not rag.components.HybridNodeRetriever (which wraps
        # this method): importing llama-index costs a cold `rag search` ~1.7 s.
        query = checked_question(query)
        store = self.store()
        retriever = HybridRetriever(store, self.embedder, keyword_index_for(store))
        return retriever.search(query, k or self.settings.top_k, query_vector)

    def ask(self, question: str, *args: Any, **kwargs: Any) -> Answer:
        """The finished answer of `ask_stream` (same arguments)."""
        for event in self.ask_stream(question, *args, **kwargs):
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
        """Retrieved first (evidence), then Delta texts as they come, then Finished.

        The stages of rag.stages, in order, on one Turn record (see `stages`)."""
        question = checked_question(question)
        name = llm or self.settings.llm
        turn = Turn(question, history or [], name, self.backend(name), k, language)
        stages = self.stages
        turn.plan = stages.plan(self, turn)
        turn.hits = stages.retrieve(self, turn)
        turn.timings["retrieve_ms"] = turn.elapsed_ms()
        turn.refuse = stages.gate(self, turn)
        yield Retrieved(turn.hits, turn.plan.language, turn.plan.standalone, turn.refuse)
        if not turn.refuse:
            turn.sources = stages.evidence(self, turn)
            for delta in stages.generate(self, turn):
                turn.timings.setdefault("first_token_ms", turn.elapsed_ms())
                turn.reply += delta
                yield Delta(delta)
        answer = stages.check(self, turn)
        if not turn.reply:  # a refusal, or nothing streamed: the answer is the text
            yield Delta(answer.answer)
        yield Finished(answer)

    def refusal_thresholds(self) -> Thresholds:
        """The dense similarities below which the gate refuses (rag.stages.gate)."""
        from rag.gate import refusal_thresholds  # RAG_REFUSAL_THRESHOLD, or calibrated

        return refusal_thresholds(self.store(), self.embedder, self.settings)

    def pipeline(self, backend: ChatBackend | None, query: str, vector: np.ndarray) -> Pipeline:
        """How an answer retrieves and picks its evidence. With an LLM, as llama-index
        components (rag.components: HybridNodeRetriever, EvidencePostprocessor), which
        that path loads anyway (tokenizer, LLM wrappers); without one, directly, since
        a cold `rag ask --llm none` would pay ~1.7 s importing llama-index. Both give
        the same hits and sources (tests/test_components.py)."""
        if backend is None:
            return DirectPipeline(self, query, vector)
        from rag.components import NodePipeline

        return NodePipeline(self, query, vector)

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
            "docs": str(store.docs_folder() or self.settings.docs_dir),
            "last_indexed": _iso(float(last)) if last else None,
            "languages": sorted({r.language for r in files.values() if r.language}),
            **models,
        }


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def checked_question(text: str) -> str:
    """The question stripped; a UserError for one with nothing to search for (empty, or
    only punctuation or emoji, which would be answered from whatever ranks first)."""
    question = text.strip()
    if not question:
        raise UserError("the question is empty")
    if not any(character.isalnum() for character in question):
        raise UserError("the question has no words or numbers to search for")
    return question
