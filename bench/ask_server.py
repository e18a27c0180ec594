"""`rag ask --llm local` through a running `rag serve`, as a terminal user sees it
(prints JSON; not a test).

For --questions answerable golden questions (languages in turn, as bench/serve.py asks
them), each --runs times, a new `rag ask` process with RAG_SERVER=URL: the seconds to
its first byte of answer text on stdout (process start, the probe of the server, the
server's retrieval and prompt processing, HTTP) and to its exit. Medians of the runs'
p50s. Start the server first, e.g. `RAG_CONTEXT_TOKENS=auto rag serve --port 8799`.

    .venv/bin/python bench/ask_server.py http://127.0.0.1:8799 [--questions 12] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from query import llm_questions  # noqa: E402

RAG = Path(sys.executable).with_name("rag")


def ask(question: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds to the first byte on stdout, and to the process's exit."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(RAG), "ask", question, "--llm", "local"], stdout=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    process.stdout.read(1)
    first = time.perf_counter() - started
    process.stdout.read()
    if process.wait() != 0:
        raise SystemExit(f"rag ask failed on {question!r}")
    return first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", help="the running rag serve's URL")
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, RAG_SERVER=args.server)
    runs = []
    for _ in range(args.runs):
        times = [ask(case["question"], env) for case in llm_questions(args.questions)]
        runs.append(
            {
                "first_output_p50_s": round(statistics.median(t[0] for t in times), 2),
                "total_p50_s": round(statistics.median(t[1] for t in times), 2),
                "first_output_s": [round(t[0], 2) for t in times],
            }
        )
    report = {
        "server": args.server,
        "questions": args.questions,
        "median_first_output_p50_s": statistics.median(r["first_output_p50_s"] for r in runs),
        "median_total_p50_s": statistics.median(r["total_p50_s"] for r in runs),
        "runs": runs,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
