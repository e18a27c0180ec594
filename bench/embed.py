"""Embedder runtimes benchmark (prints JSON; not a test).

For each runtime of the packaged e5 — torch-bf16, torch-fp32, onnx-fp32 and onnx-int8
(the ONNX graph with dynamic int8 weights, onnxruntime.quantization.quantize_dynamic,
built into a temporary folder; not shipped) — in fresh processes (--runs of each):

- load_s: load_embedder's wall time in a fresh process, imports included;
- first_query_ms, query_p50_ms / query_p95_ms: one question embedded at a time, over the
  golden questions (5 languages), after the first;
- chunks_per_s: the seed chunks (RAG_CHUNK_TOKENS=200, overlap 40: 61 chunks) embedded
  as the indexer does (embed_passages, batch RAG_EMBED_BATCH=16), median of 3 passes;
  chunks_per_cpu_s: the same per second of the worker's CPU time;
- peak_rss_mb of the worker;
- agreement with torch-fp32 (and torch-bf16): cosine of the same text's vectors, min
  and mean, over the seed chunks and over the golden questions.

With --golden, each runtime also indexes seeds/ into a temporary store and runs
tests/qa/golden.jsonl with --llm none (hit@1, hit@3, MRR, refusal figures).
Figures are medians over the runs, which take the runtimes in turn; the machine's load
average is reported beside them, since a busy machine slows every runtime.

    .venv/bin/python bench/embed.py [--runs 3] [--runtimes onnx-fp32,torch-bf16]
                                    [--golden]
"""

from __future__ import annotations

import argparse
import json
import os
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

from rag.config import Settings  # noqa: E402
from rag.cpu import cpu_model  # noqa: E402

GOLDEN = ROOT / "tests" / "qa" / "golden.jsonl"
SEEDS = ROOT / "seeds"
RUNTIMES = ("torch-bf16", "torch-fp32", "onnx-fp32", "onnx-int8")
REFERENCE = "torch-fp32"


# ------------------------------------------------------------------------- the worker


def seed_chunks(settings: Settings) -> list[str]:
    """The chunk texts the indexer makes of seeds/."""
    from rag.chunking import chunk_document
    from rag.ingest import read_document

    texts: list[str] = []
    size, overlap = settings.chunk_tokens, settings.chunk_overlap
    for path in sorted(SEEDS.iterdir()):
        doc = read_document(path, SEEDS, settings.max_file_bytes)
        texts += [c.text for c in chunk_document(doc, size, overlap)]
    return texts


def golden_questions() -> list[str]:
    lines = GOLDEN.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()]


def load(runtime: str, int8_folder: Path | None) -> Any:
    """The Embedder of `runtime`, loaded in this process."""
    from rag import e5_folder, e5_onnx, models

    if runtime == "onnx-int8":
        assert int8_folder is not None
        model = e5_onnx.load_onnx_e5(int8_folder, os.cpu_count() or 1)
        identity = models.embedder_identity(Settings()) + " int8"
        return models.Embedder(
            model, identity, Settings().embed_batch, e5_folder.E5_PROMPTS, "onnx"
        )
    kind, precision = runtime.split("-")
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[precision]
    return models.load_embedder(Settings.from_env(embed_runtime=kind, embed_dtype=dtype))


def worker(runtime: str, int8_folder: Path | None, vectors_out: Path) -> dict[str, Any]:
    settings = Settings.from_env()
    chunks, queries = seed_chunks(settings), golden_questions()
    started = time.perf_counter()
    embedder = load(runtime, int8_folder)
    load_s = time.perf_counter() - started
    latencies = []
    query_vectors = []
    for question in queries:
        started = time.perf_counter()
        query_vectors.append(embedder.embed_query(question))
        latencies.append((time.perf_counter() - started) * 1000)
    passes, cpu_passes = [], []
    for _ in range(3):
        started, cpu = time.perf_counter(), time.process_time()
        chunk_vectors = embedder.embed_passages(chunks)
        passes.append(len(chunks) / (time.perf_counter() - started))
        cpu_passes.append(len(chunks) / (time.process_time() - cpu))
    np.savez(vectors_out, chunks=chunk_vectors, queries=np.stack(query_vectors))
    return {
        "load_s": round(load_s, 3),
        "first_query_ms": round(latencies[0], 1),
        "query_p50_ms": round(float(np.percentile(latencies[1:], 50)), 1),
        "query_p95_ms": round(float(np.percentile(latencies[1:], 95)), 1),
        "chunks": len(chunks),
        "chunks_per_s": round(statistics.median(passes), 1),
        # per second of this process's CPU time: less sensitive to other processes' load
        "chunks_per_cpu_s": round(statistics.median(cpu_passes), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def golden_worker(runtime: str, int8_folder: Path | None, store: Path) -> dict[str, Any]:
    """Index seeds/ with this runtime into `store`, then score the golden set (--llm none)."""
    from rag import evaluate
    from rag.engine import Engine

    engine = Engine(Settings.from_env(docs_dir=SEEDS, store_dir=store, llm="none"))
    engine._embedder = load(runtime, int8_folder)  # the engine's lazy slot: this runtime
    engine.index(progress=False)
    cases = evaluate.load_golden(GOLDEN)
    report = evaluate.run_eval(engine, cases, engine.settings, GOLDEN, "none", None)
    keys = ("hit@1", "hit@3", "mrr", "refusal_accuracy", "false_refusal_rate")
    return {key: report["summary"].get(key) for key in keys}


# ---------------------------------------------------------------------------- driver


def build_int8(work: Path) -> Path:
    """The shipped ONNX folder with its graph's weights quantized to int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rag.e5_onnx import ONNX_MODEL, ensure_e5_onnx

    source = ensure_e5_onnx(Settings.from_env().cache_dir)
    folder = work / "onnx-int8"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns(ONNX_MODEL + "*"))
    quantize_dynamic(
        source / ONNX_MODEL,
        folder / ONNX_MODEL,
        weight_type=QuantType.QInt8,
        # the fused graph's contrib ops defeat shape inference; the weights are fp32
        extra_options={"DefaultTensorType": 1},
    )
    return folder


def run(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    values = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(values.min()), 6), "mean": round(float(values.mean()), 6)}


def agreement(vectors: dict[str, Any], runtime: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for other in (REFERENCE, "torch-bf16"):
        if other in vectors and other != runtime:
            out[f"vs_{other}"] = {
                part: cosines(vectors[runtime][part], vectors[other][part])
                for part in ("chunks", "queries")
            }
    return out


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in samples[0].items() if isinstance(v, int | float)]
    summary: dict[str, Any] = {k: round(statistics.median(s[k] for s in samples), 3) for k in keys}
    summary["load_s_samples"] = [s["load_s"] for s in samples]
    return summary


def measure(runtimes: list[str], runs: int, golden: bool, work: Path) -> dict[str, Any]:
    int8 = None
    if "onnx-int8" in runtimes:  # in a worker: peak RSS is kept across fork and exec
        int8 = Path(run(["--build-int8", str(work)])["folder"])
    extra = ["--int8-folder", str(int8)] if int8 else []
    samples: dict[str, list[dict[str, Any]]] = {runtime: [] for runtime in runtimes}
    for _ in range(runs):  # interleaved, so a change in the machine's load hits all alike
        for runtime in runtimes:
            out = work / f"{runtime}.npz"
            samples[runtime].append(run(["--worker", runtime, "--vectors", str(out), *extra]))
    results: dict[str, Any] = {}
    vectors: dict[str, Any] = {}
    for runtime in runtimes:
        results[runtime] = summarize(samples[runtime])
        vectors[runtime] = dict(np.load(work / f"{runtime}.npz"))
        if golden:
            store = work / f"store-{runtime}"
            results[runtime]["golden"] = run(["--golden-worker", runtime, str(store), *extra])
    for runtime in runtimes:
        results[runtime]["agreement"] = agreement(vectors, runtime)
    return results


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--golden", action="store_true", help="also score tests/qa/golden")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--golden-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--build-int8", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--int8-folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.int8_folder, args.vectors)))
        return
    if args.build_int8:
        print(json.dumps({"folder": str(build_int8(args.build_int8))}))
        return
    if args.golden_worker:
        runtime, store = args.golden_worker
        print(json.dumps(golden_worker(runtime, args.int8_folder, Path(store))))
        return
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        parser.error(f"unknown runtime(s) {sorted(unknown)}; choose from {', '.join(RUNTIMES)}")
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(runtimes, args.runs, args.golden, Path(tmp))
    report = {"machine": before, "load_average_after": os.getloadavg(), "runtimes": results}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
