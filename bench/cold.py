"""Cold-process benchmark of the CLI (prints JSON; not a test).

Times whole processes, start to exit, as a user at a terminal sees them:

- `rag search QUERY --store S --json`
- `rag ask QUESTION --llm none --store S --json`
- `rag ask QUESTION --llm local --store S --json`

each --runs times (--local-runs for the local LLM) per embedder runtime
(RAG_EMBED_RUNTIME; in-process, RAG_SERVER=off), and with --server URL the same
commands answered by a running `rag serve` (RAG_SERVER=URL). Reported: median, p95
and every sample in seconds, plus the ten slowest top-level imports of one `rag
search` (python -X importtime, cumulative) and which heavy packages it imported at all.
The questions cycle through five languages; the page cache is warm (the first sample
of each command is a warm-up, left out), so "cold" means a new process, not a new disk.

    .venv/bin/python bench/cold.py [--store S] [--runs 7] [--local-runs 3]
                                   [--runtimes onnx,torch] [--server URL] [--skip-local]

Without --store the seeds are indexed into a temporary store first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "Wie viele Innovationscluster will der Verband bis 2028 bilden?",
    "What did the ambassador say about cooperation with Japan?",
    "Hiệp hội muốn có bao nhiêu cụm đổi mới sáng tạo?",
    "Какие кластеры планирует создать ассоциация?",
    "Hva sa ambassadøren om samarbeidet?",
]
# Packages the query path must not need; any of them in a `rag search` is reported.
HEAVY = ("torch", "transformers", "sentence_transformers", "llama_index", "streamlit")


def rag_command() -> list[str]:
    script = Path(sys.executable).parent / "rag"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rag.cli"]


def commands(store: Path) -> dict[str, list[str]]:
    base = ["--store", str(store), "--json"]
    return {
        "search": ["search", "{q}", *base],
        "ask_none": ["ask", "{q}", "--llm", "none", *base],
        "ask_local": ["ask", "{q}", "--llm", "local", *base],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str | None]:
    """Seconds the process took, and who answered ("in-process" or "server")."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise CommandFailed(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    data = json.loads(done.stdout)
    first = data[0] if isinstance(data, list) and data else data
    return seconds, first.get("via") if isinstance(first, dict) else None


class CommandFailed(Exception):
    """A timed command exited non-zero: reported in its series, the others go on."""


def series(argv: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    samples, via = [], set()
    for i in range(runs + 1):  # +1: the first, a warm-up, fills the page cache
        question = QUESTIONS[i % len(QUESTIONS)]
        try:
            seconds, answered_by = timed([part.replace("{q}", question) for part in argv], env)
        except CommandFailed as exc:
            return {"error": str(exc), "samples": samples}
        via.add(str(answered_by))
        if i:
            samples.append(round(seconds, 3))
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_s": round(statistics.median(samples), 3),
        "p95_s": p95,
        "samples": samples,
        "via": sorted(via),
    }


def environment(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env


def import_profile(store: Path, env: dict[str, str]) -> dict[str, Any]:
    """Top-level imports of one `rag search`, slowest first (cumulative ms)."""
    argv = [sys.executable, "-X", "importtime", "-m", "rag.cli", "search", QUESTIONS[0]]
    argv += ["--store", str(store), "--json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    top: dict[str, int] = {}
    imported: set[str] = set()
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if not match:
            continue
        cumulative, depth, name = int(match[1]), len(match[2]), match[3]
        imported.add(name.split(".")[0])
        if depth <= 1:  # a module imported by the program itself, not by another import
            top[name] = top.get(name, 0) + cumulative
    slowest = sorted(top.items(), key=lambda item: -item[1])[:10]
    return {
        "top10_ms": [{"module": m, "ms": round(us / 1000, 1)} for m, us in slowest],
        "heavy_imported": sorted(set(HEAVY) & imported),
    }


def build_store(work: Path) -> Path:
    store = work / "store"
    argv = [*rag_command(), "index", "--docs", str(ROOT / "seeds"), "--store", str(store)]
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
    return store


def measure(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    names = ["search", "ask_none"] + ([] if args.skip_local else ["ask_local"])
    argvs = {name: rag_command() + argv for name, argv in commands(store).items()}
    runs = {"search": args.runs, "ask_none": args.runs, "ask_local": args.local_runs}
    results: dict[str, Any] = {}
    for runtime in args.runtimes.split(","):
        env = environment(RAG_EMBED_RUNTIME=runtime, RAG_SERVER="off")
        results[f"in-process/{runtime}"] = {
            name: series(argvs[name], env, runs[name]) for name in names
        }
        results[f"in-process/{runtime}"]["imports"] = import_profile(store, env)
    if args.server:
        env = environment(RAG_SERVER=args.server)
        results["server"] = {name: series(argvs[name], env, runs[name]) for name in names}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, help="an indexed store (default: seeds, indexed)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--local-runs", type=int, default=3)
    parser.add_argument("--runtimes", default="onnx,torch", help="RAG_EMBED_RUNTIME values")
    parser.add_argument("--server", help="also time the commands with RAG_SERVER=URL")
    parser.add_argument("--skip-local", action="store_true", help="no --llm local runs")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or build_store(Path(tmp))
        results = measure(args, store)
    report = {
        "machine": {"cpus": os.cpu_count(), "load_average": [load_before, os.getloadavg()]},
        "store": str(args.store or "seeds, indexed into a temporary store"),
        "results": results,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
