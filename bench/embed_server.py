"""Indexing through an embedding server vs. in-process (prints JSON; not a test).

Starts `rag serve --llm none` (its POST /v1/embeddings serves the packaged e5) on this
machine, then indexes the same corpus into a fresh store, in a fresh process each run,
the two ways in turn:
- in-process: the default embedder (ONNX) in the indexing process;
- server: RAG_EMBED_BASE_URL pointing at that server (batches of
  RAG_EMBED_SERVER_BATCH, RAG_EMBED_SERVER_CONCURRENCY requests in flight).
Each figure is the whole `index_folder` call (embedder loading, reading, chunking,
embedding, writing to Chroma): chunks_per_s = chunks / seconds, median over --runs;
cpu_s_per_chunk = CPU seconds of the indexing process and the server together, per
chunk (a busy machine stretches the seconds but hardly the CPU time).
The corpus: seeds/ plus the first --xquad documents of the shared XQuAD set.

    .venv/bin/python bench/embed_server.py [--runs 3] [--xquad 6]
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

import httpx

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
XQUAD = Path("/work/shared/xquad-dev/docs")


def worker(docs: Path, store: Path) -> dict[str, Any]:
    """One cold index run in this process, configured by the environment."""
    sys.path.insert(0, str(ROOT))
    from rag.config import Settings
    from rag.indexer import index_folder

    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    started = time.perf_counter()
    report = index_folder(settings, progress=False)
    seconds = time.perf_counter() - started
    return {"chunks": report.chunks, "seconds": round(seconds, 3)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(docs: Path, store: Path, env: dict[str, str], server: int) -> dict[str, Any]:
    """One index run; its CPU time is the worker's plus what the server spent meanwhile
    (the idle server's share in the in-process runs is counted too: it is ~0)."""
    shutil.rmtree(store, ignore_errors=True)
    cpu = children_cpu() + cpu_seconds(server)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(docs), str(store)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        raise SystemExit(f"the index run failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    result["chunks_per_s"] = round(result["chunks"] / result["seconds"], 2)
    used = children_cpu() + cpu_seconds(server) - cpu
    result["cpu_s_per_chunk"] = round(used / result["chunks"], 4)
    return result


def corpus(folder: Path, xquad: int) -> None:
    folder.mkdir()
    extra = sorted(XQUAD.glob("*.txt"))[:xquad] if XQUAD.is_dir() else []
    for path in [*sorted(SEEDS.iterdir()), *extra]:
        shutil.copyfile(path, folder / path.name)


def start_server(env: dict[str, str], store: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "rag.cli", "serve", "--port", "0", "--llm", "none"]
    server_env = env | {"RAG_STORE": str(store)}
    process = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # "serving on http://127.0.0.1:PORT (docs: ...)"
    if not line.startswith("serving on "):
        process.kill()
        raise SystemExit(f"rag serve did not start: {line}")
    url = line.split()[2]
    deadline = time.monotonic() + 120
    while not httpx.get(f"{url}/health").json()["ready"]:
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("rag serve never became ready")
        time.sleep(0.2)
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=2, metavar=("DOCS", "STORE"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--xquad", type=int, default=6, help="XQuAD documents added to seeds/")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), Path(args.worker[1]))))
        return
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    with tempfile.TemporaryDirectory(prefix="bench-embed-server-") as tmp:
        work = Path(tmp)
        corpus(work / "docs", args.xquad)
        process, url = start_server(base, work / "server-store")
        modes = {"in_process": base, "server": base | {"RAG_EMBED_BASE_URL": f"{url}/v1"}}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
        try:
            for _ in range(args.runs):  # the modes in turn: load drifts hit both alike
                for name, env in modes.items():
                    store = work / f"store-{name}"
                    runs[name].append(run_worker(work / "docs", store, env, process.pid))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(summary(runs), indent=2))


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    for name, samples in runs.items():
        result[name] = {
            "chunks": samples[0]["chunks"],
            "chunks_per_s_median": statistics.median(s["chunks_per_s"] for s in samples),
            "chunks_per_s": [s["chunks_per_s"] for s in samples],
            "seconds": [s["seconds"] for s in samples],
            # CPU per chunk (indexer + server): what the work costs, whatever the load
            "cpu_s_per_chunk_median": statistics.median(s["cpu_s_per_chunk"] for s in samples),
        }
    ratio = result["server"]["chunks_per_s_median"] / result["in_process"]["chunks_per_s_median"]
    result["server_vs_in_process"] = round(ratio, 3)
    return result


if __name__ == "__main__":
    main()
