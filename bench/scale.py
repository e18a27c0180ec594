"""Scale: the embedded store and a Chroma server at 10,000 and 100,000 chunks (JSON).

Embedding 100,000 chunks on a 2-core CPU takes hours, so:
1. a real sample (--sample chunks: sentences of seeds/ and the shared XQuAD documents
   recombined into single-language documents) is indexed cold, in-process and through
   `rag serve`'s embedding server (bench/embed_server.py): cold index throughput;
2. each large corpus (--sizes) is made of that sample's chunks: every synthetic chunk
   is one sample chunk's sentences shuffled plus one sentence of another chunk of the
   same language, with the sample chunk's REAL vector plus small Gaussian noise
   (sigma --noise, then L2-normalized); files of 100 chunks are written to disk and
   their chunks straight into the store with their manifest records (no embedder);
3. per store (embedded, server): the no-op re-index time (median of 3), then two fresh
   querying processes (Engine.search, the real path with query embedding, over the 70
   golden questions): the first builds the store's snapshot (keyword index and
   vectors, rag.keyword_cache) from the store, the second loads the one the first
   saved. Each reports retrieval p50/p95, the snapshot's start-up time and memory, the
   dense start-up (first search) and its peak RSS. The server's querying processes
   use an EMPTY store folder; with a server, a third pair ranks as a store above
   LOCAL_VECTORS_MAX does (by the server, `server_queries` counting its queries).
   With --work of an earlier run, its stores are measured again, not rebuilt.

    nice .venv/bin/python bench/scale.py --sizes 10000 100000 --sample 2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from embed_server import run_worker, start_server  # noqa: E402

from rag.config import Settings  # noqa: E402
from rag.records import Chunk  # noqa: E402

SEEDS = ROOT / "seeds"
XQUAD = Path("/work/shared/xquad-dev/docs")
GOLDEN = ROOT / "tests" / "qa" / "golden.jsonl"
CHUNKS_PER_FILE = 100
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------ the sample


def sample_corpus(folder: Path, chunks: int, rng: random.Random) -> None:
    """Single-language documents of sentences from seeds/ and XQuAD, ~`chunks` chunks."""
    folder.mkdir(parents=True)
    sources = [*sorted(SEEDS.glob("*.txt")), *sorted(XQUAD.glob("*.txt"))]
    sentences = [_SENTENCE.split(p.read_text(encoding="utf-8")) for p in sources]
    # ~5 chunks of 200 tokens per 60 sentences
    for n in range(max(1, chunks // 5)):
        pool = sentences[n % len(sources)]
        picked = rng.sample(pool, min(60, len(pool)))
        (folder / f"sample{n:05d}.txt").write_text(" ".join(picked), encoding="utf-8")


def cold_index(work: Path) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    process, url = start_server(base, work / "serve-store")
    try:
        result = {}
        for name, env in (
            ("in_process", base),
            ("embedding_server", base | {"RAG_EMBED_BASE_URL": f"{url}/v1"}),
        ):
            result[name] = run_worker(work / "sample", work / f"sample-{name}", env, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return result


# ------------------------------------------------------------------- large corpora


def synthetic(
    folder: Path, size: int, base: list[Chunk], vectors: np.ndarray, noise: float, seed: int
) -> list[tuple[str, str, list[Chunk], np.ndarray]]:
    """(path, hash, chunks, vectors) per file of CHUNKS_PER_FILE; files written."""
    rng = np.random.default_rng(seed)
    by_language: dict[str, list[int]] = {}
    for i, c in enumerate(base):
        by_language.setdefault(c.language, []).append(i)
    split = [_SENTENCE.split(c.text) for c in base]
    files = []
    folder.mkdir(parents=True)
    for f in range(size // CHUNKS_PER_FILE):
        picks = rng.integers(0, len(base), CHUNKS_PER_FILE)
        texts = []
        for p in picks.tolist():
            other = int(rng.choice(by_language[base[p].language]))
            words = list(split[p])
            rng.shuffle(words)
            texts.append(" ".join([*words, rng.choice(split[other])]).replace("\n", " "))
        body = "\n".join(texts) + "\n"
        path = f"s{size}_{f:05d}.txt"
        (folder / path).write_text(body, encoding="utf-8")
        digest = hashlib.sha256(body.encode()).hexdigest()
        chunks, start = [], 0
        for i, (p, text) in enumerate(zip(picks.tolist(), texts, strict=True)):
            chunks.append(
                Chunk(f"{digest[:16]}-{i}", path, i, text, start, start + len(text),
                      i + 1, i + 1, base[p].language, digest, line_map=(i + 1,))
            )  # fmt: skip
            start += len(text) + 1
        noisy = vectors[picks] + rng.normal(0, noise, (len(picks), vectors.shape[1]))
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        files.append((path, digest, chunks, noisy.astype(np.float32)))
    return files


def fill_store(settings: Settings, files: list[tuple[str, str, list[Chunk], np.ndarray]]) -> float:
    """Write the chunks and manifest records as the indexer would, without embedding."""
    from rag.models import embedder_identity
    from rag.store import Store

    started = time.perf_counter()
    store = Store(settings, embedder_identity(settings), create=True)
    try:
        for at in range(0, len(files), 10):
            group = files[at : at + 10]
            chunks = [c for _, _, cs, _ in group for c in cs]
            store.manifest.mark_pending([(p, h, [c.chunk_id for c in cs]) for p, h, cs, _ in group])
            store.upsert(chunks, np.concatenate([v for *_, v in group]))
            store.manifest.mark_done(
                [(p, h, [c.chunk_id for c in cs], cs[0].language, "") for p, h, cs, _ in group]
            )
    finally:
        store.close()
    return time.perf_counter() - started


def noop_reindex(settings: Settings) -> list[float]:
    from rag.indexer import index_folder

    def no_embedder() -> Any:
        raise AssertionError("a no-op re-index must not embed")

    times = []
    for _ in range(3):
        started = time.perf_counter()
        report = index_folder(settings, progress=False, embedder_factory=no_embedder)
        times.append(time.perf_counter() - started)
        assert report.added == report.updated == report.removed == 0, report.as_dict()
    return times


# ------------------------------------------------------------------- query process


def query_worker(settings_json: str) -> dict[str, Any]:
    """In a fresh process: snapshot start-up, dense start-up, retrieval latencies."""
    import rag.keyword_cache
    from rag.engine import Engine
    from rag.retrieve import keyword_index_for
    from rag.store import Store

    values = json.loads(settings_json)
    if "local_vectors_max" in values:  # 0: the server ranks (a store above the limit)
        rag.keyword_cache.LOCAL_VECTORS_MAX = values.pop("local_vectors_max")
    asked = {"unfiltered": 0, "filtered": 0}
    nearest = Store.nearest

    def counted(self: Store, *args: Any, where: Any = None) -> Any:
        asked["filtered" if where else "unfiltered"] += 1
        return nearest(self, *args, where=where)

    Store.nearest = counted  # type: ignore[method-assign]
    engine = Engine(Settings.from_env(**values))
    questions = [json.loads(line)["question"] for line in GOLDEN.read_text().splitlines()]
    engine.embedder.embed_query("warm up")
    store = engine.store()
    before, started = rss_mb(), time.perf_counter()
    keyword_index_for(store)  # loads or builds the whole snapshot
    snapshot_s = time.perf_counter() - started
    snapshot_mb = rss_mb() - before
    started = time.perf_counter()
    engine.search(questions[0])  # loads the dense index (embedded) or the biases (server)
    first_s = time.perf_counter() - started
    latencies = []
    asked.update(unfiltered=0, filtered=0)
    for question in questions:
        started = time.perf_counter()
        hits = engine.search(question)
        latencies.append((time.perf_counter() - started) * 1000)
        assert hits, question
    latencies.sort()
    return {
        "snapshot_startup_s": round(snapshot_s, 2),
        "snapshot_rss_mb": round(snapshot_mb),
        "first_search_s": round(first_s, 2),
        "queries": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "server_queries": asked,
    }


def run_query_process(values: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--query", json.dumps(values)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAG_")},
    )
    if done.returncode:
        raise SystemExit(f"the query process failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(values: dict[str, Any], query_values: dict[str, Any]) -> dict[str, Any]:
    noop = noop_reindex(Settings.from_env(**values))
    cold = run_query_process(query_values)  # builds the keyword index, saves it
    warm = run_query_process(query_values)  # loads it
    result = {
        "noop_reindex_s_median": round(statistics.median(noop), 2),
        "noop_reindex_s": [round(t, 2) for t in noop],
        "snapshot_build_s": cold["snapshot_startup_s"],
        "snapshot_load_s": warm["snapshot_startup_s"],
        "snapshot_rss_mb": warm["snapshot_rss_mb"],
        "query_cold_snapshot": cold,
        "query": warm,
    }
    if query_values.get("chroma_url"):  # a store above LOCAL_VECTORS_MAX: the server ranks
        ranked = query_values | {"store_dir": query_values["store_dir"] + "-ranked"}
        run_query_process(ranked | {"local_vectors_max": 0})  # builds its snapshot
        result["query_server_ranks"] = run_query_process(ranked | {"local_vectors_max": 0})
    return result


def start_chroma(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.test_chroma_server import free_port
    from tests.test_chroma_server import start_chroma as start

    port = free_port()
    return start(data, port), f"http://127.0.0.1:{port}"


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_size(
    work: Path, size: int, base: list[Chunk], vectors: np.ndarray, noise: float, keep: bool
) -> dict:
    docs = work / f"docs-{size}"
    reuse = keep and (work / f"store-{size}").exists()  # --work of an earlier run
    files = [] if reuse else synthetic(docs, size, base, vectors, noise, seed=size)
    result: dict[str, Any] = {"chunks": size, "files": len(files) or len(list(docs.iterdir()))}
    embedded = {"docs_dir": str(docs), "store_dir": str(work / f"store-{size}")}
    if reuse:  # measured again: the saved snapshots go, so the first process builds one
        for folder in ("store", "server", "empty"):
            shutil.rmtree(work / f"{folder}-{size}" / "keyword", ignore_errors=True)
    else:
        built = fill_store(Settings.from_env(**embedded), files)
        result["embedded"] = {"build_s": round(built, 1)}
    result["embedded"] = result.get("embedded", {}) | measure(embedded, embedded)
    chroma, url = start_chroma(work / f"chroma-{size}")
    try:
        server = {"docs_dir": str(docs), "store_dir": str(work / f"server-{size}"),
                  "chroma_url": url}  # fmt: skip
        empty = server | {"store_dir": str(work / f"empty-{size}")}  # another machine
        result["server"] = {} if reuse else {
            "build_s": round(fill_store(Settings.from_env(**server), files), 1)}  # fmt: skip
        result["server"] |= measure(server, empty)
        result["server"]["chroma_server_rss_mb"] = round(process_rss_mb(chroma.pid))
    finally:
        chroma.terminate()
        chroma.wait(timeout=60)
    if not keep:
        shutil.rmtree(docs, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--sample", type=int, default=2000, help="real chunks to embed")
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--work", type=Path, help="keep the stores here (default: temporary)")
    parser.add_argument(
        "--base-store", type=Path, action="append",
        help="take the real chunks and vectors from this store instead of embedding a "
        "sample (repeatable; skips the cold index measurement)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.query:
        print(json.dumps(query_worker(args.query)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        run(work, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> None:
    from rag.models import embedder_identity
    from rag.store import Store

    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    if args.base_store:
        stores = args.base_store
    else:
        sample_corpus(work / "sample", args.sample, random.Random(0))
        result["cold_index"] = cold_index(work)
        stores = [work / "sample-in_process"]
    base, parts = [], []
    for folder in stores:
        settings = Settings.from_env(store_dir=folder)
        store = Store(settings, embedder_identity(settings), create=False)
        chunks, embeddings = store.all_chunks_and_embeddings()
        store.close()
        base.extend(chunks)
        parts.append(np.asarray(embeddings, dtype=np.float32))
    vectors = np.concatenate(parts)
    result["vectors"] = (
        f"real e5 vectors of {len(base)} distinct sample chunks, reused with Gaussian "
        f"noise sigma {args.noise} (then normalized); texts recombined per chunk"
    )
    print(json.dumps(result), file=sys.stderr, flush=True)
    for size in args.sizes:
        result[str(size)] = one_size(
            work, size, base, vectors, args.noise, keep=args.work is not None
        )
        print(json.dumps(result[str(size)]), file=sys.stderr, flush=True)
    result["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
