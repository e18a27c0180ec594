"""llama-index's default pipeline on the golden Q&A set (prints JSON; not a test).

The baseline our retrieval is compared with: SimpleDirectoryReader over seeds/ (no
cleaning: the navigation junk after the source line is indexed too), the default
SentenceSplitter (llama-index Settings defaults: 1024 tokens, 200 overlap), an in-memory
VectorStoreIndex, top-k 5 — with the SAME packaged e5 embedder as rag, so that only the
pipeline differs. hit@1, hit@3 and MRR on the answerable cases come from the metric
functions of rag.evaluate, exactly as `rag eval` computes them.

With --llm local the default query engine also answers, with our local model, and the
must-contain rate and refusal accuracy are computed (citation metrics are n/a: the
default pipeline has no citations). The default pipeline has no conversation history,
so follow-up cases are asked without theirs. Slow: the default 1024-token chunks make
prompts of several thousand tokens (compact + refine); an answer takes about a minute
on 2 idle CPU cores (5 under load), so pick a few cases with --ids.

    .venv/bin/python bench/baseline_llamaindex.py [--golden FILE] [-k 5] [--llm none|local]
        [--ids en-001,de-003]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llama_index.core import Settings as LlamaSettings  # noqa: E402
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.bridge.pydantic import PrivateAttr  # noqa: E402

from rag.answer import is_refusal  # noqa: E402
from rag.config import Settings  # noqa: E402 (also sets the offline environment)
from rag.evaluate import (  # noqa: E402
    GoldenCase,
    first_expected_rank,
    load_golden,
    missing_facts,
    percentile,
    ranked_files,
    ratio,
    retrieval_metrics,
)
from rag.models import Embedder, load_embedder  # noqa: E402

SEEDS = ROOT / "seeds"
GOLDEN = ROOT / "tests" / "qa" / "golden.jsonl"

# How llama-index's default prompt makes a model decline, besides rag's own markers.
LLAMA_INDEX_REFUSALS = (
    "empty response",
    "does not provide",
    "doesn't provide",
    "does not mention",
    "not mentioned",
    "no mention",
    "i don't know",
    "i do not know",
    "not possible to determine",
    "cannot be determined",
)


class E5Embedding(BaseEmbedding):
    """rag's Embedder as a llama-index embedding model (query and passage prompts kept)."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(model_name=embedder.identity, embed_batch_size=embedder.batch_size)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "RagE5Embedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed_query(query).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed_passages([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed_passages(list(texts)).tolist()


def build_index(settings: Settings) -> tuple[VectorStoreIndex, dict[str, Any]]:
    """The default pipeline over seeds/, with our embedder and no LLM (MockLLM)."""
    with contextlib.redirect_stdout(sys.stderr):  # it prints "Using MockLLM" to stdout
        LlamaSettings.llm = None  # llama-index's MockLLM: never the default OpenAI client
    LlamaSettings.embed_model = E5Embedding(load_embedder(settings))
    started = time.perf_counter()
    documents = SimpleDirectoryReader(str(SEEDS)).load_data()
    index = VectorStoreIndex.from_documents(documents)  # default SentenceSplitter
    return index, {
        "documents": len(documents),
        "nodes": len(index.docstore.docs),
        "chunk_size": LlamaSettings.chunk_size,
        "chunk_overlap": LlamaSettings.chunk_overlap,
        "index_seconds": round(time.perf_counter() - started, 2),
    }


def retrieval(index: VectorStoreIndex, cases: Sequence[GoldenCase], k: int) -> dict[str, Any]:
    """hit@1, hit@3, MRR over the answerable cases, with rag.evaluate's functions."""
    retriever = index.as_retriever(similarity_top_k=k)
    rankings = []
    ranks: dict[str, int | None] = {}
    for case in (c for c in cases if c.answerable):
        nodes = retriever.retrieve(case.question)
        files = ranked_files(n.node.metadata["file_name"] for n in nodes)
        rankings.append((files, case.expected_sources))
        ranks[case.id] = first_expected_rank(files, case.expected_sources)
    return {
        "answerable": len(rankings),
        **retrieval_metrics(rankings),
        "not_first": {i: r for i, r in ranks.items() if r != 1},
    }


def answers(
    index: VectorStoreIndex, cases: Sequence[GoldenCase], k: int, settings: Settings
) -> dict[str, Any]:
    """The default query engine answering with our local model (LlamaCPP)."""
    from rag.llm import LocalBackend

    LlamaSettings.llm = LocalBackend(settings)._llm
    engine = index.as_query_engine(similarity_top_k=k)
    answerable, unanswerable, seconds = [], [], []
    verdicts: dict[str, dict[str, Any]] = {}
    for case in cases:
        started = time.perf_counter()
        text = str(engine.query(case.question))
        seconds.append((time.perf_counter() - started) * 1000)
        refused = is_refusal(text) or any(p in text.lower() for p in LLAMA_INDEX_REFUSALS)
        missing = missing_facts(text, case.must_contain_any, case.must_contain_all)
        if case.answerable:
            answerable.append(not refused and not missing)
        else:
            unanswerable.append(refused)
        verdicts[case.id] = {"answer": text, "refused": refused, "missing": missing}
    return {
        "must_contain_rate": ratio(sum(answerable), len(answerable)),
        "refusal_accuracy": ratio(sum(unanswerable), len(unanswerable)),
        "citation_validity": None,  # n/a: the default pipeline does not cite
        "latency_p50_ms": percentile(seconds, 50),
        "latency_p95_ms": percentile(seconds, 95),
        "cases": verdicts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=GOLDEN)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--llm", choices=["none", "local"], default="none")
    parser.add_argument("--ids", help="comma-separated case ids (default: all)")
    args = parser.parse_args()
    cases = load_golden(args.golden)
    if args.ids:
        wanted = set(args.ids.split(","))
        cases = [c for c in cases if c.id in wanted]
    settings = Settings.from_env()
    index, info = build_index(settings)
    result: dict[str, Any] = {
        "pipeline": "llama-index default: SimpleDirectoryReader, SentenceSplitter, "
        "VectorStoreIndex (in memory), retriever top-k",
        "settings": {
            "k": args.k,
            "embed_model": LlamaSettings.embed_model.model_name,
            "golden_file": str(args.golden),
            "cases": len(cases),
            **info,
        },
        "retrieval": retrieval(index, cases, args.k),
        "answers": answers(index, cases, args.k, settings) if args.llm == "local" else None,
        "notes": [
            "follow-up cases are asked without their history (the default pipeline has none)",
            "retrieval is scored per file: distinct files of the top-k chunks, best first",
        ],
    }
    print(json.dumps(result, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
