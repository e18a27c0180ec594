"""rag as llama-index components (rag.components), composed with stock llama-index
parts over the seeds, with real Chroma and the real packaged embedder: the hits equal
`rag search`, the vectors the embedder's, the engine's answers are unchanged."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import Document as LlamaDocument
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from rag.answer import Evidence
from rag.chunking import chunk_document
from rag.components import (
    ChunkNodeParser,
    CitedStreamingResponse,
    E5Embedding,
    EvidencePostprocessor,
    HybridNodeRetriever,
    NodePipeline,
    RagChatEngine,
    RagQueryEngine,
    hits_from_nodes,
    llama_document,
    nodes_from_hits,
    read_documents,
)
from rag.config import Settings
from rag.engine import DirectPipeline, Engine
from rag.indexer import index_folder
from rag.ingest import read_document
from rag.llm import Message
from rag.retrieve import DenseRetriever

from .conftest import ROOT, SEEDS

DONG_NAI = "002_d6db562a30fbc1a0.txt"
QUESTION = "How many innovative startups does Dong Nai have?"
QUESTIONS = [
    QUESTION,
    "Wie viele Innovationscluster will der Verband bis 2028 bilden?",
    "Какие кластеры планирует создать ассоциация?",
    "Hva sa ambassadøren om samarbeidet?",
    "Hiệp hội muốn có bao nhiêu cụm đổi mới sáng tạo?",
    "L2Pro",
]


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """The seeds indexed once for this module; answers without an LLM by default."""
    root = tmp_path_factory.mktemp("components")
    shutil.copytree(SEEDS, root / "docs")
    settings = Settings.from_env(docs_dir=root / "docs", store_dir=root / "store", llm="none")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    engine = Engine(settings)
    engine._embedder = embedder
    yield engine
    engine.store().close()


def chunk_ids(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


# --------------------------------------------------------------------------- retriever


def test_retriever_hits_are_those_of_engine_search(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    by_engine = HybridNodeRetriever.from_engine(engine)
    by_store = HybridNodeRetriever(engine.store(), embedder, similarity_top_k=5)
    for question in QUESTIONS:
        hits = engine.search(question)
        for retriever in (by_engine, by_store):
            nodes = retriever.retrieve(question)
            assert hits_from_nodes(nodes) == hits, question  # every field, in order
            assert [n.score for n in nodes] == [h.score for h in hits]


def test_retriever_hits_are_those_of_the_rag_search_command(engine: Engine) -> None:
    # The CLI in a fresh process; it must not load llama-index for `search` nor for
    # an answer without an LLM (cold start, issue 13).
    code = (
        "import contextlib, io, json, sys\n"
        "from rag.cli import main\n"
        "def run(*argv):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        assert main([*argv, '--json']) == 0\n"
        "    return json.loads(out.getvalue())\n"
        f"rows = run('search', {QUESTION!r})\n"
        f"run('ask', {QUESTION!r}, '--llm', 'none')\n"
        "print(json.dumps([[r['chunk_id'] for r in rows], 'llama_index' in sys.modules]))\n"
    )
    env = dict(
        os.environ,
        RAG_STORE=str(engine.settings.store_dir),
        RAG_DOCS=str(engine.settings.docs_dir),
        RAG_SERVER="off",
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    ids, loaded_llama_index = json.loads(done.stdout.strip().splitlines()[-1])
    nodes = HybridNodeRetriever.from_engine(engine).retrieve(QUESTION)
    assert ids == chunk_ids(nodes)
    assert not loaded_llama_index


def test_node_metadata_and_round_trip(engine: Engine) -> None:
    hits = engine.search(QUESTION)
    nodes = nodes_from_hits(hits)
    for hit, scored in zip(hits, nodes, strict=True):
        node, chunk = scored.node, hit.chunk
        assert isinstance(node, TextNode)
        assert node.node_id == chunk.chunk_id and node.text == chunk.text
        assert (node.start_char_idx, node.end_char_idx) == (chunk.start_char, chunk.end_char)
        meta = node.metadata
        assert meta["file"] == Path(chunk.path).name and meta["path"] == chunk.path
        assert meta["lines"] == [chunk.first_line, chunk.last_line]
        assert meta["page"] is None and meta["section"] is None  # seeds are plain text
        assert meta["language"] == chunk.language and meta["url"] == chunk.url
        # an LLM sees the file and lines, an embedding the text alone
        assert node.get_content(MetadataMode.EMBED) == chunk.text
        shown = node.get_content(MetadataMode.LLM)
        assert shown.startswith(f"file: {meta['file']}\nlines: {meta['lines']}")
        assert "content_hash" not in shown and "page" not in shown
    # the metadata is plain JSON: nodes stored and read back give the same hits
    again = [NodeWithScore(node=TextNode.from_json(n.node.to_json()), score=n.score) for n in nodes]
    assert hits_from_nodes(again) == hits


def test_retriever_uses_the_query_bundle_embedding(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    class Counting:
        calls = 0
        identity = embedder.identity

        def embed_query(self, text: str) -> np.ndarray:
            Counting.calls += 1
            return embedder.embed_query(text)

    vector = embedder.embed_query(QUESTION)
    retriever = HybridNodeRetriever(engine.store(), Counting())  # type: ignore[arg-type]
    nodes = retriever.retrieve(QueryBundle(QUESTION, embedding=vector.tolist()))
    assert Counting.calls == 0
    assert hits_from_nodes(nodes) == engine.search(QUESTION, query_vector=vector)


def test_query_fusion_retriever_over_ours_keeps_the_hits(engine: Engine) -> None:
    ours = HybridNodeRetriever.from_engine(engine, similarity_top_k=5)
    fusion = QueryFusionRetriever(
        [ours], similarity_top_k=5, num_queries=1, use_async=False, llm=MockLLM()
    )
    for question in QUESTIONS:
        assert chunk_ids(fusion.retrieve(question)) == [
            h.chunk.chunk_id for h in engine.search(question, 5)
        ]


# --------------------------------------------------------------------------- evidence


def test_retriever_query_engine_with_our_evidence(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    retriever = HybridNodeRetriever.from_engine(engine, similarity_top_k=5)
    query_engine = RetrieverQueryEngine.from_args(
        retriever,
        llm=MockLLM(),
        node_postprocessors=[EvidencePostprocessor(embedder, token_budget=280)],
    )
    response = query_engine.query(QUESTION)

    hits = engine.search(QUESTION)
    expected = Evidence(hits, embedder.embed_query(QUESTION), embedder).select(280)
    nodes = response.source_nodes
    assert [n.node.metadata["n"] for n in nodes] == [s.n for s in expected]
    for node, source in zip(nodes, expected, strict=True):
        assert node.node.text == source.prompt_text()  # what the prompt shows after [n]
        assert node.node.metadata["chunk_id"] == source.hit.chunk.chunk_id
        quotes = [s["quote"] for s in node.node.metadata["sentences"]]
        assert quotes == [s.text for s in source.sentences]
        assert node.node.text in str(response)  # MockLLM echoes its prompt
    # each quote is verbatim text of its file, on the lines given
    lines = (engine.settings.docs_dir / DONG_NAI).read_text(encoding="utf-8").splitlines()
    dong_nai = [n for n in nodes if n.node.metadata["file"] == DONG_NAI]
    assert dong_nai
    for node in dong_nai:
        for sentence in node.node.metadata["sentences"]:
            first, last = sentence["lines"]
            assert sentence["quote"] in "\n".join(lines[first - 1 : last])


def test_evidence_without_budget_is_what_the_extractive_answer_quotes(
    engine: Engine, embedder
) -> None:  # type: ignore[no-untyped-def]
    nodes = HybridNodeRetriever.from_engine(engine).retrieve(QUESTION)
    chosen = EvidencePostprocessor(embedder, token_budget=None).postprocess_nodes(
        nodes, query_str=QUESTION
    )
    answer = engine.ask(QUESTION, llm="none")
    quoted = [s["quote"] for n in chosen for s in n.node.metadata["sentences"]]
    assert quoted == [c.quote for c in answer.citations]


def test_evidence_refuses_nodes_without_file_lines(embedder) -> None:  # type: ignore[no-untyped-def]
    foreign = [NodeWithScore(node=TextNode(text="Dong Nai has 90 startups."), score=1.0)]
    with pytest.raises(ValueError, match="not a rag chunk"):
        EvidencePostprocessor(embedder).postprocess_nodes(foreign, query_str=QUESTION)


# --------------------------------------------------------------------------- embedding


def test_e5_embedding_gives_the_embedders_vectors(embedder) -> None:  # type: ignore[no-untyped-def]
    model = E5Embedding(embedder)
    assert model.model_name == embedder.identity
    query = model.get_query_embedding(QUESTION)
    assert cosine(query, embedder.embed_query(QUESTION)) >= 0.9999
    # e5's query prefix is applied (a passage embedding of the same text differs)
    prefixed = embedder.model.encode([f"query: {QUESTION}"], prompt="")[0]
    assert cosine(query, prefixed) >= 0.9999
    assert cosine(query, embedder.embed_passages([QUESTION])[0]) < 0.999
    texts = ["Dong Nai hat 90 Start-ups.", "Кантхо сотрудничает с университетом."]
    batch = model.get_text_embedding_batch(texts)
    for got, want in zip(batch, embedder.embed_passages(texts), strict=True):
        assert cosine(got, want) >= 0.9999

    async def both() -> tuple[list[float], list[float]]:
        return await model.aget_query_embedding(QUESTION), await model.aget_text_embedding(texts[0])

    aquery, atext = asyncio.run(both())
    assert cosine(aquery, query) >= 0.9999 and cosine(atext, batch[0]) >= 0.9999


# --------------------------------------------------------------------------- chunking


def test_chunk_node_parser_gives_the_indexed_chunks_with_their_lines(engine: Engine) -> None:
    settings = engine.settings
    doc = read_document(settings.docs_dir / DONG_NAI, settings.docs_dir, settings.max_file_bytes)
    parser = ChunkNodeParser.from_settings(settings)
    nodes = parser.get_nodes_from_documents([llama_document(doc)])
    chunks = chunk_document(doc, settings.chunk_tokens, settings.chunk_overlap)
    assert [n.node_id for n in nodes] == [c.chunk_id for c in chunks]
    stored = {c.chunk_id for c in engine.store().all_chunks() if c.path == DONG_NAI}
    assert {n.node_id for n in nodes} == stored  # the ids `rag index` stored
    file_lines = (settings.docs_dir / DONG_NAI).read_text(encoding="utf-8").splitlines()
    for node in nodes:
        assert node.text == doc.text[node.start_char_idx : node.end_char_idx]
        line_map = node.metadata["line_map"]
        rows = node.text.split("\n")
        assert len(rows) == len(line_map)
        assert node.metadata["lines"] == [line_map[0], line_map[-1]]
        for row, line in zip(rows, line_map, strict=True):
            assert row in file_lines[line - 1]  # each row of the node is on its file line
        assert "line_numbers" not in node.metadata
        assert node.get_content(MetadataMode.EMBED) == node.text


def test_chunk_node_parser_on_a_plain_llama_index_document() -> None:
    text = "Alpha is the first line.\nBeta follows it.\n\nGamma comes after a blank line."
    document = LlamaDocument(text=text, metadata={"file_path": "notes.txt", "topic": "greek"})
    nodes = ChunkNodeParser(chunk_tokens=8, chunk_overlap=0).get_nodes_from_documents([document])
    assert len(nodes) > 1
    lines = text.split("\n")
    for node in nodes:
        assert node.metadata["path"] == "notes.txt" and node.metadata["topic"] == "greek"
        assert node.text == text[node.start_char_idx : node.end_char_idx]
        for row, line in zip(node.text.split("\n"), node.metadata["line_map"], strict=True):
            assert row in lines[line - 1]
        assert "topic: greek" in node.get_content(MetadataMode.LLM)  # the user's key shows
        assert node.get_content(MetadataMode.EMBED) == node.text
    assert nodes[-1].metadata["lines"] == [4, 4]  # the blank line 3 keeps its number


def test_vector_store_index_with_our_parser_and_embedding(engine: Engine, embedder) -> None:  # type: ignore[no-untyped-def]
    documents = read_documents(engine.settings.docs_dir)
    nodes = ChunkNodeParser.from_settings(engine.settings).get_nodes_from_documents(documents)
    store = engine.store()
    assert sorted(n.node_id for n in nodes) == sorted(c.chunk_id for c in store.all_chunks())
    index = VectorStoreIndex(nodes, embed_model=E5Embedding(embedder))
    stored = store.embeddings([n.node_id for n in nodes])
    for node in nodes:  # the same passage vectors as the indexer's
        assert cosine(index.vector_store.get(node.node_id), stored[node.node_id]) >= 0.9999
    for question in QUESTIONS[:3]:
        found = index.as_retriever(similarity_top_k=3).retrieve(question)
        dense = DenseRetriever(store, embedder).search(question, 3)
        assert chunk_ids(found) == [h.chunk.chunk_id for h in dense]


# --------------------------------------------------------------------------- engines


def test_query_engine_streams_an_answer_cited_by_its_source_nodes(engine: Engine) -> None:
    expected = engine.ask(QUESTION, llm="none")
    response = RagQueryEngine(engine=engine, backend="none").query(QUESTION)
    assert isinstance(response, CitedStreamingResponse)
    assert response.source_nodes == []  # the citations come with the end of the stream
    text = "".join(response.response_gen)
    assert text == expected.answer and "[1]" in text
    assert response.answer is not None and response.answer.citations == expected.citations
    quotes = [n.node.metadata["quote"] for n in response.source_nodes]
    assert quotes == [c.quote for c in expected.citations] and quotes
    for node, citation in zip(response.source_nodes, expected.citations, strict=True):
        assert node.node.text == citation.quote
        assert node.node.metadata["n"] == citation.n
        assert node.node.metadata["lines"] == list(citation.lines)
        assert node.node.metadata["file"] == citation.file
    assert response.metadata is not None and response.metadata["refused"] is False

    whole = RagQueryEngine(engine=engine, backend="none", streaming=False).query(QUESTION)
    assert whole.response == expected.answer
    assert [n.node.metadata["quote"] for n in whole.source_nodes] == quotes


def test_chat_engine_streams_and_follows_up(engine: Engine) -> None:
    chat = RagChatEngine(engine, backend="none")
    first = chat.stream_chat(QUESTION)
    text = "".join(first.response_gen)
    expected = engine.ask(QUESTION, llm="none")
    assert text == expected.answer
    assert [n.node.metadata["quote"] for n in first.source_nodes] == [
        c.quote for c in expected.citations
    ]
    assert [m.content for m in chat.chat_history] == [QUESTION, expected.answer]

    follow_up = "And in Quang Ninh?"  # short: searched with the previous question
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": text}]
    reply = chat.chat(follow_up)
    again = engine.ask(follow_up, history, llm="none")
    assert reply.response == again.answer
    assert reply.metadata is not None and reply.metadata["search_query"] == again.search_query
    assert len(chat.chat_history) == 4

    async def streamed() -> tuple[str, int]:
        response = await RagChatEngine(engine, backend="none").astream_chat(QUESTION)
        parts = [delta async for delta in response.async_response_gen()]
        return "".join(parts), len(response.source_nodes)

    async_text, cited = asyncio.run(streamed())
    assert async_text == expected.answer and cited == len(expected.citations)
    chat.reset()
    assert chat.chat_history == []


class SourceQuoter:
    """An OpenAI-looking LLM that cites the first source, or says `reply` if set."""

    name = "openai"

    def __init__(self, reply: str | None = None) -> None:
        self.reply = reply

    def stream(self, messages: list[Message]) -> Iterator[str]:
        if self.reply is not None:
            yield self.reply
            return
        first = re.search(r"^\[1\] (.+)$", messages[-1].content, re.M)
        assert first is not None
        yield first.group(1).split(" … ")[0] + " [1]"


def answers(engine: Engine, backend: str) -> list[dict[str, Any]]:
    dicts = []
    for question in QUESTIONS:
        answer = engine.ask(question, llm=backend).as_dict()
        answer.pop("timings")
        dicts.append(answer)
    return dicts


@pytest.mark.parametrize("reply", [None, "Quatsch ohne Quelle.", "It has 12345 of them [1]."])
def test_llm_answers_run_on_the_components_unchanged(
    engine: Engine, reply: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an LLM the engine retrieves and selects through the components; the answers
    (cited, re-quoted when ungrounded, refused when invented) equal the direct path's."""
    engine._backends["openai"] = SourceQuoter(reply)  # type: ignore[assignment]
    used: list[str] = []
    original = NodePipeline.retrieve

    def spy(self: NodePipeline, k: int | None) -> Any:
        used.append(self.bundle.query_str)
        return original(self, k)

    monkeypatch.setattr(NodePipeline, "retrieve", spy)
    via_components = answers(engine, "openai")
    assert len(used) == len(QUESTIONS)
    monkeypatch.setattr(engine, "pipeline", lambda b, q, v: DirectPipeline(engine, q, v))
    assert answers(engine, "openai") == via_components
    if reply is None:
        assert all(a["citations"] for a in via_components if not a["refused"])


def test_extractive_answers_through_the_components_are_unchanged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = answers(engine, "none")  # the default without an LLM (no llama-index)
    monkeypatch.setattr(engine, "pipeline", lambda b, q, v: NodePipeline(engine, q, v))
    assert answers(engine, "none") == direct


# --------------------------------------------------------------------------- README


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use from llama-index\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README: no python example under 'Use from llama-index'"
    return match.group(1)


def test_readme_example_runs(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Answers come from the store; the documents folder is only read by the example's
    # vector index, which one file keeps quick.
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(engine.settings.docs_dir / DONG_NAI, docs / DONG_NAI)
    monkeypatch.setenv("RAG_STORE", str(engine.settings.store_dir))
    monkeypatch.setenv("RAG_DOCS", str(docs))
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert engine.ask(QUESTION, llm="none").answer in printed
    assert DONG_NAI in printed


# --------------------------------------------------------------------------- layering

# The steps of the README's diagram, from the files to the faces; a module may import
# modules of its own step and of the steps before it, never of a later one.
STEPS = [
    {"records", "config", "tuning", "names", "languages", "cpu"},  # shared by every step
    {"files", "decoding", "cleaning", "language", "locations", "formats", "formats_markup"}
    | {"ocr", "ingest"},
    {"chunking"},
    {"models", "e5_folder", "e5_onnx", "e5_remote", "gguf", "manifest", "store", "indexer"}
    | {"watch", "server_manifest"},
    {"keyword", "keyword_cache", "retrieve", "gate"},
    {"citations", "llm", "support", "answer", "grounding", "conversation", "stages"},
    {"components"},
    {"engine"},
    {
        "cli",
        "server",
        "api_support",
        "openai_api",
        "client",
        "ui",
        "pdf_pages",
        "uploads",
        "feedback",
        "evaluate",
        "app",
    },
]


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (names for type hints only)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
            continue
        yield child
        yield from _runtime_nodes(child)


def rag_imports(path: Path) -> set[str]:
    """The rag modules a file imports at run time, anywhere (lazy imports count too)."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            continue  # relative: inside its own package
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("rag.")}
    return found


def test_import_graph_is_one_way() -> None:
    step_of = {name: i for i, step in enumerate(STEPS) for name in step}
    problems = []
    for path in [*sorted((ROOT / "rag").rglob("*.py")), ROOT / "app.py"]:
        # a package (rag/evaluate/, rag/components/) is one module of its step
        name = path.parent.name if path.parent.parent.name == "rag" else path.stem
        if name == "__init__":
            continue
        assert name in step_of, f"{path.relative_to(ROOT)}: add it to a step in STEPS"
        for imported in rag_imports(path) - {name}:
            assert imported in step_of, f"{imported}: add it to a step in STEPS"
            if step_of[imported] > step_of[name]:
                problems.append(f"{path.relative_to(ROOT)} imports rag.{imported}")
    assert problems == []
