"""Between rag's records and llama-index nodes: chunks, hits, sources and citations
as nodes whose metadata rebuilds them exactly."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from rag.answer import Sentence, Source, sentence_vectors
from rag.models import Embedder
from rag.records import Chunk, Citation, Hit

# Metadata an LLM prompt shows with a node; the rest is there to rebuild the Hit.
SHOWN_KEYS = ("n", "file", "lines", "page", "section")
# A document's file line numbers (one per line of its text): ChunkNodeParser reads
# them, no node keeps them.
LINE_NUMBERS = "line_numbers"
_CHUNK_FIELDS = [f for f in fields(Chunk) if f.name not in ("chunk_id", "text")]


def node_from_chunk(chunk: Chunk, extra: dict[str, Any] | None = None) -> TextNode:
    """The chunk as a TextNode: id, text and character offsets of the chunk; metadata
    file, lines, page and section (None where unknown), language, url, and every other
    field of the chunk. An embedding sees the text alone (as the indexer embeds it)."""
    metadata = {
        "file": Path(chunk.path).name,
        "lines": [chunk.first_line, chunk.last_line],
        "page": getattr(chunk, "page", None),
        "section": getattr(chunk, "section", None),
        **{f.name: _plain(getattr(chunk, f.name)) for f in _CHUNK_FIELDS},
        **(extra or {}),
    }
    return TextNode(
        id_=chunk.chunk_id,
        text=chunk.text,
        metadata=metadata,
        start_char_idx=chunk.start_char,
        end_char_idx=chunk.end_char,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=unshown(metadata),
    )


def unshown(metadata: dict[str, Any]) -> list[str]:
    """Keys a prompt does not show: the internal ones, and a page or section unknown."""
    return [k for k, v in metadata.items() if k not in SHOWN_KEYS or v is None]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # JSON-safe metadata


def chunk_from_node(node: BaseNode) -> Chunk:
    """The Chunk behind a node of HybridNodeRetriever or ChunkNodeParser."""
    meta = node.metadata
    missing = [
        f.name
        for f in _CHUNK_FIELDS
        if f.name not in meta and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise ValueError(
            f"node {node.node_id} is not a rag chunk (no {', '.join(missing)}): use nodes "
            "of HybridNodeRetriever or ChunkNodeParser, which carry the file lines"
        )
    values = {f.name: meta[f.name] for f in _CHUNK_FIELDS if f.name in meta}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return Chunk(chunk_id=node.node_id, text=node.get_content(MetadataMode.NONE), **values)


def nodes_from_hits(hits: Sequence[Hit]) -> list[NodeWithScore]:
    """Hits as scored nodes (the score is the hit's fused score)."""
    return [
        NodeWithScore(
            node=node_from_chunk(
                hit.chunk, {"dense_score": hit.dense_score, "keyword_score": hit.keyword_score}
            ),
            score=hit.score,
        )
        for hit in hits
    ]


def hits_from_nodes(nodes: Sequence[NodeWithScore]) -> list[Hit]:
    """The hits the nodes stand for, ranked in their order."""
    return [
        Hit(
            chunk_from_node(n.node),
            n.score if n.score is not None else 0.0,
            rank,
            n.node.metadata.get("dense_score"),
            n.node.metadata.get("keyword_score"),
        )
        for rank, n in enumerate(nodes, start=1)
    ]


def nodes_from_sources(sources: Sequence[Source]) -> list[NodeWithScore]:
    """Each numbered source of a prompt as a node: its text is what the prompt shows
    after "[n] ", its metadata the chosen sentences with their quotes and lines."""
    return [_source_node(source) for source in sources]


def _source_node(source: Source) -> NodeWithScore:
    chunk = source.hit.chunk
    citations = [source.citation(s) for s in source.sentences]
    sentences = [
        {"quote": c.quote, "lines": list(c.lines), "start": s.start, "end": s.end, "score": s.score}
        for c, s in zip(citations, source.sentences, strict=True)
    ]
    base = node_from_chunk(chunk)
    metadata = {
        "n": source.n,
        **base.metadata,
        "lines": [min(c.lines[0] for c in citations), max(c.lines[1] for c in citations)],
        "chunk_id": chunk.chunk_id,
        "sentences": sentences,
    }
    node = TextNode(
        id_=f"{chunk.chunk_id}/{source.n}",
        text=source.prompt_text(),
        metadata=metadata,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=unshown(metadata),
    )
    return NodeWithScore(node=node, score=max(s.score for s in source.sentences))


def sources_from_nodes(
    nodes: Sequence[NodeWithScore], hits: Sequence[Hit], embedder: Embedder
) -> list[Source]:
    """The Sources that EvidencePostprocessor's nodes stand for, over the hits it was
    given (the sentence vectors come from the cache Evidence filled)."""
    position = {hit.chunk.chunk_id: i for i, hit in enumerate(hits)}
    sources = []
    for scored in nodes:
        meta = scored.node.metadata
        i = position[meta["chunk_id"]]
        sentences = [
            Sentence(i, s["start"], s["end"], s["quote"], s["score"]) for s in meta["sentences"]
        ]
        vectors = sentence_vectors(embedder, [s.text for s in sentences])
        for sentence, vector in zip(sentences, vectors, strict=True):
            sentence.vector = vector
        sources.append(Source(meta["n"], hits[i], sentences))
    return sources


def nodes_from_citations(citations: Sequence[Citation]) -> list[NodeWithScore]:
    """An answer's citations as nodes: the quote, with n, file, path, lines and url."""
    nodes = []
    for c in citations:
        key = hashlib.sha256(f"{c.n}\0{c.path}\0{c.lines}\0{c.quote}".encode()).hexdigest()
        metadata = {"page": None, "section": None, **c.as_dict()}
        node = TextNode(
            id_=f"citation-{key[:16]}",
            text=c.quote,
            metadata=metadata,
            excluded_embed_metadata_keys=list(metadata),
            excluded_llm_metadata_keys=unshown(metadata),
        )
        nodes.append(NodeWithScore(node=node, score=None))
    return nodes


def query_vector(bundle: QueryBundle, embed_query: Callable[[str], np.ndarray]) -> np.ndarray:
    """The bundle's embedding when it has one (the engine passes the vector it has)."""
    if bundle.embedding is not None:
        return np.asarray(bundle.embedding, dtype=np.float32)
    return embed_query(bundle.query_str)
