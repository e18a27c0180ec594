"""Query benchmark (prints JSON; not a test).

Retrieval latency, p50 / p95 over ~50 questions in five languages (from
tests/qa/golden.jsonl), on two stores:
- the seeds, indexed into a temporary store;
- a synthetic store of --chunks chunks (default 10,000), each 2-5 seed sentences of one
  seed article (so its language tag holds), embedded once with the real embedder and
  cached under bench/.cache/ (gitignored): the first run embeds for several minutes,
  later runs only open it. Written with Store.upsert, not the indexer: the chunks are
  made here, with no files behind them.

Per question it times the query embedding, the hybrid search given that embedding
(balanced dense top-N + BM25 + fusion + merging), the whole retrieval (both), and
the dense-only baseline (DenseRetriever: one unfiltered Chroma query), after one
warm-up pass (the first question in each language loads lingua's model for it, once
per process).

With --llm N it also asks N golden questions (answerable ones, languages taken in
turn) through Engine.ask with the local LLM over the seeds and reports time to first
token and total time (after one warm-up question that loads the model, reported
apart), then peak resident memory of the process.

    .venv/bin/python bench/query.py [--chunks 10000] [--repeats 3] [--skip-synthetic]
                                    [--llm 12]

Result layout: {"retrieval": {"seeds": {...}, "synthetic": {...}}, "llm": {...},
"peak_rss_mb": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.config import Settings  # noqa: E402
from rag.records import Chunk  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
GOLDEN = ROOT / "tests" / "qa" / "golden.jsonl"
QUESTIONS_PER_LANGUAGE = 10
MAX_CHUNK_CHARS = 1200
COMPLETE = "complete.json"  # written last: a cache without it is rebuilt
T = TypeVar("T")


def questions(per_language: int = QUESTIONS_PER_LANGUAGE) -> list[str]:
    """The first `per_language` golden questions of each language (en, vi, ru, de, no)."""
    by_language: dict[str, list[str]] = {}
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        by_language.setdefault(case["lang"], []).append(case["question"])
    return [q for qs in by_language.values() for q in qs[:per_language]]


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    values = np.asarray(samples, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def timed(action: Callable[..., T], *args: Any) -> tuple[T, float]:
    """(result, milliseconds) of action(*args)."""
    started = time.perf_counter()
    result = action(*args)
    return result, (time.perf_counter() - started) * 1000


def retrieval_bench(
    store: Any, embedder: Any, queries: Sequence[str], k: int = 5, repeats: int = 3
) -> dict[str, Any]:
    """Latency of retrieval on an open store (see the module docstring)."""
    from rag.retrieve import DenseRetriever, HybridRetriever, dense_index_for, keyword_index_for

    load_before = os.getloadavg()[0]
    keyword, keyword_build_ms = timed(keyword_index_for, store)
    _, dense_build_ms = timed(dense_index_for, store)
    hybrid = HybridRetriever(store, embedder, keyword)
    dense = DenseRetriever(store, embedder)
    for query in queries:  # warm-up: lingua models, Chroma's index, torch kernels
        hybrid.search(query, k)
    samples: dict[str, list[float]] = {n: [] for n in ("embed", "hybrid", "total", "dense", "bm25")}
    for _ in range(repeats):
        for query in queries:
            vector, ms = timed(embedder.embed_query, query)
            samples["embed"].append(ms)
            samples["hybrid"].append(timed(hybrid.search, query, k, vector)[1])
            samples["total"].append(timed(hybrid.search, query, k)[1])
            samples["dense"].append(timed(dense.search, query, k)[1])
            samples["bm25"].append(timed(keyword.search, query, 4 * k)[1])
    return {
        "chunks": len(keyword),
        "queries": len(queries),
        "repeats": repeats,
        "k": k,
        "keyword_index_build_s": round(keyword_build_ms / 1000, 3),
        "dense_index_load_s": round(dense_build_ms / 1000, 3),
        # other processes on the machine skew latencies; 1-minute load, before / after
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "embed_query": percentiles(samples["embed"]),
        "hybrid_search_given_embedding": percentiles(samples["hybrid"]),
        "hybrid_retrieval_total": percentiles(samples["total"]),
        "bm25_only": percentiles(samples["bm25"]),
        "dense_retrieval_total": percentiles(samples["dense"]),
    }


# --------------------------------------------------------------------------- stores


def seeds_store(work: Path, embedder: Any) -> Any:
    from rag.indexer import index_folder
    from rag.models import embedder_identity
    from rag.store import Store

    settings = Settings.from_env(docs_dir=ROOT / "seeds", store_dir=work / "seeds-store")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    return Store(settings, embedder_identity(settings), create=False)


def seed_sentences() -> dict[str, tuple[str, list[str]]]:
    """Per seed file: its language and its sentences."""
    from rag.chunking import split_sentences
    from rag.ingest import read_document

    out: dict[str, tuple[str, list[str]]] = {}
    seeds = ROOT / "seeds"
    for path in sorted(seeds.iterdir()):
        doc = read_document(path, seeds, 50 * 1024 * 1024)
        out[path.name] = (doc.language, [doc.text[a:b] for a, b in split_sentences(doc.text)])
    return out


def synthetic_chunks(count: int, seed: int = 0) -> list[Chunk]:
    """`count` one-chunk documents of 2-5 sentences of one seed article each (about the
    size of the indexer's 200-token chunks: ~700 characters on the seeds)."""
    rng = random.Random(seed)
    sources = seed_sentences()
    names = sorted(sources)
    chunks = []
    for i in range(count):
        language, sentences = sources[names[i % len(names)]]
        picked = rng.sample(sentences, min(len(sentences), rng.randint(2, 5)))
        text = " ".join(picked)[:MAX_CHUNK_CHARS].rstrip()
        chunks.append(
            Chunk(
                chunk_id=f"synthetic-{i:05d}",
                path=f"synthetic/{i:05d}.txt",
                index=0,
                text=text,
                start_char=0,
                end_char=len(text),
                first_line=1,
                last_line=1,
                language=language,
                content_hash=f"synthetic-{i:05d}",
                line_map=(1,),
            )
        )
    return chunks


def synthetic_store(count: int, embedder: Any) -> Any:
    """The cached synthetic store, built (and embedded) first when missing."""
    from rag.models import embedder_identity
    from rag.store import Store, remove_store

    folder = CACHE / f"synthetic-{count}"
    settings = Settings.from_env(docs_dir=folder / "docs", store_dir=folder / "store")
    identity = embedder_identity(settings)
    marker = folder / COMPLETE
    if marker.exists() and json.loads(marker.read_text())["embed_model"] == identity:
        return Store(settings, identity, create=False)
    remove_store(settings)
    chunks = synthetic_chunks(count)
    store = Store(settings, identity, rebuild=True)
    started = time.perf_counter()
    batch = 256
    for start in range(0, len(chunks), batch):
        part = chunks[start : start + batch]
        store.upsert(part, embedder.embed_passages([c.text for c in part]))
        print(f"embedded {start + len(part)}/{len(chunks)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    marker.write_text(
        json.dumps({"chunks": count, "embed_model": identity, "embed_s": round(seconds, 1)})
    )
    return store


def llm_questions(count: int) -> list[dict[str, Any]]:
    """`count` answerable golden cases without history, one language after another."""
    by_language: dict[str, list[dict[str, Any]]] = {}
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        if case["answerable"] and not case.get("history"):
            by_language.setdefault(case["lang"], []).append(case)
    interleaved = [c for group in zip(*by_language.values(), strict=False) for c in group]
    return interleaved[:count]


def llm_bench(work: Path, embedder: Any, count: int, backend: str) -> dict[str, Any]:
    """Time to first token and total time of `count` answers from `backend`."""
    from rag.engine import Engine
    from rag.indexer import index_folder

    settings = Settings.from_env(docs_dir=ROOT / "seeds", store_dir=work / "llm-store")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    engine = Engine(settings)
    engine._embedder = embedder
    cases = llm_questions(count + 1)
    warm, warm_ms = timed(engine.ask, cases[0]["question"], None, backend)
    first: list[float] = []
    total: list[float] = []
    rows = []
    for case in cases[1:]:
        answer = engine.ask(case["question"], llm=backend)
        first.append(answer.timings["first_token_ms"])
        total.append(answer.timings["total_ms"])
        rows.append(
            {
                "id": case["id"],
                "first_token_ms": round(answer.timings["first_token_ms"]),
                "total_ms": round(answer.timings["total_ms"]),
                "refused": answer.refused,
                "language": answer.language,
            }
        )
    return {
        "backend": backend,
        "questions": len(rows),
        "warm_up_ms": round(warm_ms),
        "warm_up_refused": warm.refused,
        "load_average": round(os.getloadavg()[0], 2),
        "first_token": percentiles(first),
        "total": percentiles(total),
        "cases": rows,
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--skip-seeds", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--llm", type=int, default=0, help="questions for the LLM timing")
    parser.add_argument("--backend", default="local", help="LLM backend for --llm")
    args = parser.parse_args()

    from rag.models import load_embedder

    embedder = load_embedder(Settings.from_env())
    queries = questions()
    retrieval: dict[str, Any] = {}
    result: dict[str, Any] = {"retrieval": retrieval}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_seeds:
            store = seeds_store(Path(tmp), embedder)
            retrieval["seeds"] = retrieval_bench(store, embedder, queries, args.k, args.repeats)
            store.close()
        if not args.skip_synthetic:
            store = synthetic_store(args.chunks, embedder)
            retrieval["synthetic"] = retrieval_bench(store, embedder, queries, args.k, args.repeats)
            store.close()
        if args.llm:
            result["llm"] = llm_bench(Path(tmp), embedder, args.llm, args.backend)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
