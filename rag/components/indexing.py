"""The indexing side as llama-index components: the embedder, the chunker, and the
documents of a folder read as `rag index` reads them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.node_parser import NodeParser
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship
from llama_index.core.schema import Document as LlamaDocument
from llama_index.core.utils import get_tqdm_iterable

from rag.chunking import chunk_document
from rag.components.nodes import LINE_NUMBERS, node_from_chunk, unshown
from rag.config import Settings
from rag.ingest import read_document, scan_folder
from rag.language import detect_language
from rag.models import Embedder, load_embedder
from rag.records import Document, IngestError, Skipped

log = logging.getLogger(__name__)


class E5Embedding(BaseEmbedding):
    """The project's embedder (the packaged multilingual e5 unless RAG_EMBED_MODEL says
    otherwise) as a llama-index embedding: queries get "query: ", texts "passage: ",
    vectors L2-normalized, as in the store."""

    _embedder: Embedder = PrivateAttr()

    def __init__(
        self, embedder: Embedder | None = None, settings: Settings | None = None, **data: Any
    ) -> None:
        embedder = embedder or load_embedder(settings or Settings.from_env())
        data.setdefault("model_name", embedder.identity)
        data.setdefault("embed_batch_size", embedder.batch_size)
        super().__init__(**data)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "E5Embedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed_query(query).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed_passages([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed_passages(texts).tolist()

    # The model runs on the CPU: in a worker thread, so an event loop goes on meanwhile.
    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


# --------------------------------------------------------------------------- chunking


def llama_document(doc: Document) -> LlamaDocument:
    """A rag Document (read, decoded and cleaned by rag.ingest) for ChunkNodeParser."""
    metadata = {
        "path": doc.path,
        "file": Path(doc.path).name,
        "language": doc.language,
        "content_hash": doc.content_hash,
        "url": doc.url,
        "title": doc.title,
        LINE_NUMBERS: list(doc.line_numbers),
    }
    return LlamaDocument(
        id_=f"{doc.path}@{doc.content_hash[:16]}",
        text=doc.text,
        metadata=metadata,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=unshown(metadata),
    )


def read_documents(
    folder: str | Path, max_file_mb: float = Settings.max_file_mb
) -> list[LlamaDocument]:
    """The documents of a folder as `rag index` reads them; an unreadable file is
    skipped with a warning, as the indexer skips it."""
    folder = Path(folder)
    max_bytes = int(max_file_mb * 1024 * 1024)
    paths, skipped = scan_folder(folder, max_bytes)
    documents = []
    for path in paths:
        try:
            documents.append(llama_document(read_document(path, folder, max_bytes)))
        except IngestError as exc:
            skipped.append(Skipped(str(path), str(exc)))
    for skip in skipped:
        log.warning("skipped %s: %s", skip.path, skip.reason)
    return documents


def rag_document(node: BaseNode) -> Document:
    """The rag Document a llama-index document stands for. One made by
    `llama_document` carries its file's line numbers; any other is taken as a file's
    whole text, line i of the text being line i of the file."""
    text = node.get_content(MetadataMode.NONE)
    meta = node.metadata
    lines = meta.get(LINE_NUMBERS) or list(range(1, text.count("\n") + 2))
    path = meta.get("path") or meta.get("file_path") or meta.get("file_name") or node.node_id
    return Document(
        path=str(path),
        text=text,
        line_numbers=list(lines),
        language=meta.get("language") or detect_language(text),
        content_hash=meta.get("content_hash") or hashlib.sha256(text.encode()).hexdigest(),
        url=meta.get("url") or None,
        title=str(meta.get("title") or ""),
    )


class ChunkNodeParser(NodeParser):
    """rag.chunking.chunk_document as a node parser: sentence-aligned chunks of at most
    `chunk_tokens` cl100k tokens, overlapping by up to `chunk_overlap`; node ids are
    the chunk ids `rag index` stores, start/end_char_idx the offsets in the document's
    text, and the metadata the chunk's file lines (`lines`, `line_map`: one file line
    per line of the node's text)."""

    chunk_tokens: int = Field(default=Settings.chunk_tokens, gt=0)
    chunk_overlap: int = Field(default=Settings.chunk_overlap, ge=0)

    @classmethod
    def class_name(cls) -> str:
        return "ChunkNodeParser"

    @classmethod
    def from_settings(cls, settings: Settings) -> ChunkNodeParser:
        return cls(chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)

    def _parse_nodes(
        self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any
    ) -> list[BaseNode]:
        parsed: list[BaseNode] = []
        for node in get_tqdm_iterable(nodes, show_progress, "Chunking"):
            doc = rag_document(node)
            for chunk in chunk_document(doc, self.chunk_tokens, self.chunk_overlap):
                child = node_from_chunk(chunk)
                child.relationships[NodeRelationship.SOURCE] = node.as_related_node_info()
                # what the document keeps from a prompt, its chunks keep too
                child.excluded_llm_metadata_keys += node.excluded_llm_metadata_keys
                parsed.append(child)
        return parsed

    def _postprocess_parsed_nodes(
        self, nodes: list[BaseNode], parent_doc_map: dict[str, LlamaDocument]
    ) -> list[BaseNode]:
        # llama-index re-finds each node's text in its document for the offsets (ours
        # are exact already) and copies the document's metadata in: keep the user's
        # keys, not the document's line numbers, and embed the chunk's text alone.
        offsets = [(n.start_char_idx, n.end_char_idx) for n in nodes]  # type: ignore[attr-defined]
        nodes = super()._postprocess_parsed_nodes(nodes, parent_doc_map)
        for node, (start, end) in zip(nodes, offsets, strict=True):
            node.start_char_idx, node.end_char_idx = start, end  # type: ignore[attr-defined]
            node.metadata.pop(LINE_NUMBERS, None)
            node.excluded_embed_metadata_keys = list(node.metadata)
            private = set(node.excluded_llm_metadata_keys)
            node.excluded_llm_metadata_keys = [k for k in node.metadata if k in private]
        return nodes
