"""Indexing benchmark (prints JSON; not a test).

Measures, each in a fresh process so peak RSS is the run's own:
- a cold index of seeds/ (seconds, chunks, embedding chunks/s, peak RSS);
- a no-op re-index of seeds/ (seconds, and that the model was not loaded);
- the same two on a synthetic corpus of 1,000 files built from the seed sentences.
No-op runs are repeated (--runs) and reported as medians with every sample.

    .venv/bin/python bench/index.py [--runs 5] [--files 1000] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(docs: Path, store: Path) -> dict[str, object]:
    """One index run in this process; embedding time measured around the model only."""
    from rag.config import Settings
    from rag.indexer import index_folder
    from rag.models import load_embedder

    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    timing = {"embed_s": 0.0, "embedded": 0, "load_s": 0.0}

    class TimedEmbedder:
        def __init__(self) -> None:
            started = time.perf_counter()
            self.inner = load_embedder(settings)
            timing["load_s"] = time.perf_counter() - started

        def embed_passages(self, texts: list[str]):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            vectors = self.inner.embed_passages(texts)
            timing["embed_s"] += time.perf_counter() - started
            timing["embedded"] += len(texts)
            return vectors

    started = time.perf_counter()
    report = index_folder(settings, progress=False, embedder_factory=TimedEmbedder)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "files": report.files,
        "chunks": report.chunks,
        "added": report.added,
        "unchanged": report.unchanged,
        "model_load_s": round(timing["load_s"], 2),
        "embedded_chunks": timing["embedded"],
        "embed_chunks_per_s": round(timing["embedded"] / timing["embed_s"], 1)
        if timing["embed_s"]
        else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_worker(docs: Path, store: Path) -> dict[str, object]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(docs), str(store)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    result["process_seconds"] = round(time.perf_counter() - started, 3)
    return result


def synthetic_corpus(folder: Path, files: int) -> None:
    """`files` documents of 6-18 seed sentences each, in a fixed pseudo-random order."""
    from rag.chunking import split_sentences
    from rag.ingest import read_document

    seeds = ROOT / "seeds"
    sentences = []
    for path in sorted(seeds.iterdir()):
        doc = read_document(path, seeds, 50 * 1024 * 1024)
        sentences += [doc.text[a:b] for a, b in split_sentences(doc.text)]
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(files):
        picked = rng.sample(sentences, rng.randint(6, 18))
        (folder / f"doc_{i:04d}.txt").write_text("\n".join(picked) + "\n", encoding="utf-8")


def measure(docs: Path, work: Path, runs: int) -> dict[str, object]:
    store = work / f"store-{docs.name}"
    cold = run_worker(docs, store)
    noops = [run_worker(docs, store) for _ in range(runs)]
    return {
        "cold": cold,
        "noop_seconds_median": statistics.median(r["seconds"] for r in noops),  # type: ignore[misc]
        "noop_seconds": [r["seconds"] for r in noops],
        "noop_process_seconds_median": statistics.median(
            r["process_seconds"]
            for r in noops  # type: ignore[misc]
        ),
        "noop_loaded_model": any(r["model_load_s"] for r in noops),  # type: ignore[misc]
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=2, metavar=("DOCS", "STORE"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), Path(args.worker[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict[str, object] = {"seeds": measure(ROOT / "seeds", work, args.runs)}
        if not args.skip_synthetic:
            corpus = work / f"synthetic-{args.files}"
            synthetic_corpus(corpus, args.files)
            results["synthetic"] = measure(corpus, work, args.runs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
