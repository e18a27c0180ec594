"""The rag steps as llama-index components: thin faces over the one implementation.

- `HybridNodeRetriever` (BaseRetriever): rag.retrieve.HybridRetriever, the hits of
  `rag search` as NodeWithScore.
- `EvidencePostprocessor` (BaseNodePostprocessor): rag.answer.Evidence, the source
  sentences a prompt gets, as nodes numbered like its [n].
- `E5Embedding` (BaseEmbedding): the project's embedder (rag.models), with e5's
  "query: " and "passage: " prefixes.
- `ChunkNodeParser` (NodeParser): rag.chunking.chunk_document, with line offsets.
- `RagQueryEngine` and `RagChatEngine`: rag.engine.Engine.ask_stream, streamed, with
  the validated citations as source nodes.

A node carries its chunk's fields in its metadata, so `hits_from_nodes` rebuilds the
exact Hit; the engine runs on these components when an LLM answers (NodePipeline) and
gets back what it computes directly otherwise. llama-index is imported here (about
1.7 s): nothing a cold `rag search` or `rag ask --llm none` imports may import this
package. It sits below the engine, which imports it (the engine is named here for type
hints only), so the import graph stays one-way.
"""

from rag.components.engines import CitedStreamingResponse, RagChatEngine, RagQueryEngine
from rag.components.indexing import (
    ChunkNodeParser,
    E5Embedding,
    llama_document,
    rag_document,
    read_documents,
)
from rag.components.nodes import (
    chunk_from_node,
    hits_from_nodes,
    node_from_chunk,
    nodes_from_citations,
    nodes_from_hits,
    nodes_from_sources,
    sources_from_nodes,
)
from rag.components.retrieval import EvidencePostprocessor, HybridNodeRetriever, NodePipeline

__all__ = [
    "ChunkNodeParser",
    "CitedStreamingResponse",
    "E5Embedding",
    "EvidencePostprocessor",
    "HybridNodeRetriever",
    "NodePipeline",
    "RagChatEngine",
    "RagQueryEngine",
    "chunk_from_node",
    "hits_from_nodes",
    "llama_document",
    "node_from_chunk",
    "nodes_from_citations",
    "nodes_from_hits",
    "nodes_from_sources",
    "rag_document",
    "read_documents",
    "sources_from_nodes",
]
