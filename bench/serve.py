"""Service benchmark (prints JSON; not a test): `rag serve` as its clients see it.

Starts `rag serve --port 0` over the seeds (indexed into a temporary store, or --store),
waits until it is warm, then measures:
- `llm`: --questions answerable golden questions (languages in turn, no history) asked
  one after another through `POST /v1/chat/completions` with streaming and the local
  LLM: time to the first content token and to the end, as an OpenAI client sees them
  (HTTP included), p50 / p95, for each of --runs runs and their medians;
- `concurrent`: --clients threads asking at once with `--llm none` (`/ask`, and
  `/search` every other request), --requests each, after one such warm-up round:
  throughput, errors by status, and the server's resident memory before and after the
  measured round (growth in %), plus its peak.

    .venv/bin/python bench/serve.py [--questions 12] [--runs 3] [--clients 20]
                                    [--requests 10] [--skip-llm] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from query import llm_questions, percentiles  # noqa: E402

from rag.cpu import cpu_model  # noqa: E402


def start(store: Path, llm: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "RAG_STORE": str(store), "RAG_DOCS": str(ROOT / "seeds")}
    env["RAG_SERVE_QUEUE"] = "64"  # the benchmark measures latency, not refusals
    process = subprocess.Popen(
        [sys.executable, "-m", "rag.cli", "serve", "--port", "0", "--llm", llm],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().split()[2]
    while not httpx.get(f"{url}/health").json()["ready"]:
        time.sleep(0.2)
    return process, url


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=60)


def timed_chat(url: str, question: str) -> dict[str, Any]:
    """One streamed chat completion: ms to the first content and to [DONE]."""
    body = {"model": "rag", "messages": [{"role": "user", "content": question}], "stream": True}
    started = time.perf_counter()
    first = None
    extra: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else ""
            if content and first is None:
                first = (time.perf_counter() - started) * 1000
            extra = chunk.get("rag", extra)
    total = (time.perf_counter() - started) * 1000
    return {
        "first_token_ms": first or total,
        "total_ms": total,
        "refused": extra.get("refused"),
        "citations": len(extra.get("citations", [])),
    }


def llm_bench(store: Path, count: int, runs: int) -> dict[str, Any]:
    process, url = start(store, "local")
    try:
        cases = llm_questions(count)
        per_run = []
        for _ in range(runs):
            rows = [timed_chat(url, case["question"]) for case in cases]
            per_run.append(
                {
                    "first_token": percentiles([r["first_token_ms"] for r in rows]),
                    "total": percentiles([r["total_ms"] for r in rows]),
                    "refused": sum(bool(r["refused"]) for r in rows),
                }
            )
        return {
            "questions": len(cases),
            "runs": per_run,
            "median_first_token_p50_ms": _median(per_run, "first_token", "p50_ms"),
            "median_first_token_p95_ms": _median(per_run, "first_token", "p95_ms"),
            "median_total_p50_ms": _median(per_run, "total", "p50_ms"),
            "median_total_p95_ms": _median(per_run, "total", "p95_ms"),
            "server_peak_rss_mb": _peak_rss_mb(process.pid),
        }
    finally:
        stop(process)


def _median(runs: list[dict[str, Any]], key: str, field: str) -> float:
    return round(statistics.median(r[key][field] for r in runs), 1)


def concurrent_bench(store: Path, clients: int, requests: int) -> dict[str, Any]:
    process, url = start(store, "none")
    try:
        questions = [case["question"] for case in llm_questions(clients)]
        statuses: Counter[str] = Counter()
        latencies: list[float] = []

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=300) as http:
                for j in range(requests):
                    question = questions[(i + j) % len(questions)]
                    started = time.perf_counter()
                    try:
                        if j % 2:
                            reply = http.get("/search", params={"q": question})
                        else:
                            reply = http.post("/ask", json={"question": question})
                        statuses[str(reply.status_code)] += 1
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                    latencies.append((time.perf_counter() - started) * 1000)

        # One round first: the first questions load what stays (each language's
        # detector model, the keyword index); growth is measured after it.
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        statuses.clear()
        latencies.clear()
        rss_before = psutil.Process(process.pid).memory_info().rss
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        seconds = time.perf_counter() - started
        rss_after = psutil.Process(process.pid).memory_info().rss
        return {
            "clients": clients,
            "requests": clients * requests,
            "seconds": round(seconds, 2),
            "requests_per_s": round(clients * requests / seconds, 2),
            "statuses": dict(statuses),
            "errors": sum(n for s, n in statuses.items() if s != "200"),
            "latency": percentiles(latencies),
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_after_mb": round(rss_after / 2**20, 1),
            "rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
            "server_peak_rss_mb": _peak_rss_mb(process.pid),
        }
    finally:
        stop(process)


def _peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def index_seeds(store: Path) -> None:
    env = {**os.environ, "RAG_STORE": str(store), "RAG_DOCS": str(ROOT / "seeds")}
    subprocess.run(
        [sys.executable, "-m", "rag.cli", "index", "--json"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--store", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        store = args.store or Path(work) / "store"
        if args.store is None:
            index_seeds(store)
        result: dict[str, Any] = {
            "cpu": cpu_model(),
            "load_average": round(os.getloadavg()[0], 2),
            "concurrent": concurrent_bench(store, args.clients, args.requests),
        }
        if not args.skip_llm:
            result["llm"] = llm_bench(store, args.questions, args.runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
