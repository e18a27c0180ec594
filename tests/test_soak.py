"""Soak: hundreds of questions to one engine, in a row and from many threads at once.

The real embedder and store; search and ask(llm="none") mixed. Nothing may fail, and
the resident memory may not keep growing (a leaked store, keyword index or tensor per
question would show within a few hundred).
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from rag.config import Settings
from rag.engine import Engine
from rag.records import Answer, Hit

from .test_index import run_index

QUESTIONS = (
    "Hvor mange oppstartsbedrifter er det i Dong Nai?",
    "Wie viele Start-ups gibt es in der Provinz?",
    "Какие технологии развивает Вьетнам?",
    "Which companies invest in Vietnam?",
    "Hva er planen for innovasjonssenteret?",
    "Welche Rolle spielt Japan?",
    "Что говорится о цифровой трансформации?",
    "semiconductor industry training",
)
SEQUENTIAL = 500
CONCURRENT = 20  # threads, each asking PER_THREAD questions at once with the others
PER_THREAD = 2
ASK_EVERY = 3  # an ask costs ~6 searches (it embeds every retrieved sentence)
WARM_UP = 40
WARM_UP_ROUNDS = 2
MAX_GROWTH = 0.10


def one_query(engine: Engine, i: int) -> list[Hit] | Answer:
    question = QUESTIONS[i % len(QUESTIONS)]
    if i % ASK_EVERY == 0:
        answer = engine.ask(question, llm="none", k=3)
        assert answer.answer and (answer.refused or answer.citations)
        return answer
    hits = engine.search(question, k=3)
    assert hits and all(h.chunk.text for h in hits)
    return hits


def concurrently(engine: Engine) -> None:
    total = CONCURRENT * PER_THREAD
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        results = list(pool.map(lambda i: one_query(engine, i), range(total)))
    assert len(results) == total


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
def test_sequential_and_concurrent_queries(docs: Path, tmp_path: Path, embedder) -> None:
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store")
    run_index(settings, embedder)
    engine = Engine(settings)
    engine._embedder = embedder
    # Warm-up includes threads: the first rounds on 20 threads grow the heap (malloc
    # arenas, measured +130 MB, then +50, then < 20 a round), which is not a leak.
    for i in range(WARM_UP):
        one_query(engine, i)
    for _ in range(WARM_UP_ROUNDS):
        concurrently(engine)
    baseline = rss()

    started = time.perf_counter()
    for i in range(SEQUENTIAL):
        one_query(engine, i)
    sequential_s = time.perf_counter() - started
    after_sequential = rss()

    concurrently(engine)
    after_concurrent = rss()

    mb = 1024 * 1024
    print(
        f"soak: {SEQUENTIAL} sequential in {sequential_s:.1f} s; rss {baseline // mb} MB "
        f"-> {after_sequential // mb} MB -> {after_concurrent // mb} MB after "
        f"{CONCURRENT * PER_THREAD} on {CONCURRENT} threads"
    )
    assert after_sequential < baseline * (1 + MAX_GROWTH)
    assert after_concurrent < baseline * (1 + MAX_GROWTH)
