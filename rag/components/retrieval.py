"""Retrieval and evidence selection as llama-index components, and the pipeline
Engine.ask_stream runs on them when an LLM answers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from rag.answer import EXTRACTIVE_MARGIN, EXTRACTIVE_SENTENCES, Evidence, Source
from rag.components.nodes import (
    hits_from_nodes,
    nodes_from_hits,
    nodes_from_sources,
    query_vector,
    sources_from_nodes,
)
from rag.config import Settings
from rag.keyword import KeywordIndex
from rag.models import Embedder
from rag.records import Hit
from rag.retrieve import HybridRetriever, keyword_index_for
from rag.store import Store

if TYPE_CHECKING:  # for type hints only: the engine imports this package, not the reverse
    from rag.engine import Engine


class HybridNodeRetriever(BaseRetriever):
    """rag.retrieve.HybridRetriever (dense + BM25, fused, overlaps merged) as a
    llama-index retriever: the same hits as `rag search`, best first."""

    def __init__(
        self,
        store: Store | None = None,
        embedder: Embedder | None = None,
        similarity_top_k: int | None = None,
        keyword_index: KeywordIndex | None = None,
        engine: Engine | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        """Over a store and an embedder, or over an engine (see `from_engine`);
        `similarity_top_k` defaults to RAG_TOP_K."""
        super().__init__(callback_manager=callback_manager)
        self.similarity_top_k = similarity_top_k
        if engine is not None:
            self._search: Callable[..., list[Hit]] = engine.search
            self._embed_query = lambda text: engine.embedder.embed_query(text)
        elif store is not None and embedder is not None:
            self._search = partial(_hybrid_search, store, embedder, keyword_index)
            self._embed_query = embedder.embed_query
        else:
            raise ValueError("HybridNodeRetriever needs a store and an embedder, or an engine")

    @classmethod
    def from_engine(
        cls, engine: Engine, similarity_top_k: int | None = None
    ) -> HybridNodeRetriever:
        """Searches as the engine does (`Engine.search`: its store, re-opened when
        another process re-indexed it, and its embedder)."""
        return cls(engine=engine, similarity_top_k=similarity_top_k)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        vector = query_vector(query_bundle, self._embed_query)
        return nodes_from_hits(self._search(query_bundle.query_str, self.similarity_top_k, vector))


def _hybrid_search(
    store: Store,
    embedder: Embedder,
    keyword_index: KeywordIndex | None,
    query: str,
    k: int | None,
    vector: np.ndarray | None,
) -> list[Hit]:
    """HybridRetriever built as Engine.search builds it."""
    index = keyword_index if keyword_index is not None else keyword_index_for(store)
    return HybridRetriever(store, embedder, index).search(query, k or store.settings.top_k, vector)


class EvidencePostprocessor(BaseNodePostprocessor):
    """rag.answer.Evidence as a postprocessor: the retrieved chunks' sentences, scored
    against the question, and the best of them as numbered sources, one node per [n].

    With `token_budget` the sources fill that many cl100k tokens (what an LLM prompt
    gets, RAG_CONTEXT_TOKENS); with None, the few best sentences that `--llm none`
    quotes. Takes nodes of HybridNodeRetriever (or of ChunkNodeParser).
    """

    token_budget: int | None = Field(
        default=int(Settings.context_tokens),
        description="cl100k tokens of source sentences; None: the extractive answer's",
    )
    sentences: int = Field(default=EXTRACTIVE_SENTENCES, description="without a budget")
    margin: float = Field(default=EXTRACTIVE_MARGIN, description="without a budget")
    evidence_class: Any = Field(default=Evidence, exclude=True)
    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder, **data: Any) -> None:
        super().__init__(**data)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "EvidencePostprocessor"

    def evidence(self, hits: list[Hit], vector: np.ndarray) -> Evidence:
        """The sentences scored (embedding them is the slow part)."""
        return self.evidence_class(hits, vector, self._embedder)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("EvidencePostprocessor needs the question (a query bundle)")
        vector = query_vector(query_bundle, self._embedder.embed_query)
        evidence = self.evidence(hits_from_nodes(nodes), vector)
        if self.token_budget is None:
            return nodes_from_sources(evidence.best(self.sentences, self.margin))
        return nodes_from_sources(evidence.select(self.token_budget))


class NodePipeline:
    """One answer's retrieval and evidence selection, run as the components above
    (Engine.ask_stream uses it when an LLM answers; see Engine.pipeline)."""

    def __init__(self, engine: Engine, query: str, vector: np.ndarray) -> None:
        self.engine = engine
        self.bundle = QueryBundle(query, embedding=vector.tolist())
        self.vector = vector
        self.nodes: list[NodeWithScore] = []
        self.hits: list[Hit] = []

    def retrieve(self, k: int | None) -> list[Hit]:
        self.nodes = HybridNodeRetriever.from_engine(self.engine, k).retrieve(self.bundle)
        self.hits = hits_from_nodes(self.nodes)
        return self.hits

    def score(self) -> None:
        # Embeds the sentences now, so the answer's timings (and an "auto" context
        # budget) count that where they did; select() then finds them in the cache.
        self._postprocessor(None).evidence(self.hits, self.vector)

    def select(self, token_budget: int) -> list[Source]:
        return self._sources(token_budget)

    def best(self) -> list[Source]:
        return self._sources(None)

    def _sources(self, token_budget: int | None) -> list[Source]:
        chosen = self._postprocessor(token_budget).postprocess_nodes(self.nodes, self.bundle)
        return sources_from_nodes(chosen, self.hits, self.engine.embedder)

    def _postprocessor(self, token_budget: int | None) -> EvidencePostprocessor:
        return EvidencePostprocessor(
            self.engine.embedder,
            token_budget=token_budget,
        )
