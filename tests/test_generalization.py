"""Regression cases beyond the seeds: six xquad-dev articles (one per language) and
their 54 questions (en/vi/ru, mostly cross-lingual), indexed into a scratch store.

Floors a little under what was measured when they were set (bench/generalization.py
measures the whole set): retrieval must keep finding the article, the calibrated gate
(rag.gate) must not refuse answerable questions, and it must refuse most general
questions from tests/qa/off_corpus.jsonl. Skipped where the xquad-dev set is absent.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from rag.config import Settings
from rag.engine import Engine
from rag.evaluate import first_expected_rank, load_golden, ranked_files
from rag.stages import Turn, gate, plan, retrieve

XQUAD = Path("/work/shared/xquad-dev")
ARTICLES = ("dev01_de.txt", "dev02_es.txt", "dev03_vi.txt", "dev04_el.txt", "dev05_en.txt")
ARTICLES += ("dev06_ru.txt",)
OFF_CORPUS = Path(__file__).resolve().parent / "qa" / "off_corpus.jsonl"

pytestmark = pytest.mark.skipif(not XQUAD.is_dir(), reason="xquad-dev is not here")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, embedder) -> Engine:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("xquad")
    for name in ARTICLES:
        shutil.copy(XQUAD / "docs" / name, folder / name)
    settings = dataclasses.replace(
        Settings.from_env(docs_dir=folder, store_dir=folder.parent / "xquad-store", llm="none"),
        chroma_url=None,
        refusal_threshold="auto",
    )
    built = Engine(settings)
    built._embedder = embedder  # the session's model, not a second load
    built.index(progress=False)
    return built


def _asked(engine: Engine, question: str) -> tuple[list[str], bool]:
    """The files found, best first, and whether the gate refuses (as an answer would)."""
    turn = Turn(question, [], "none", None)
    turn.plan = plan(engine, turn)
    turn.hits = retrieve(engine, turn)
    return ranked_files(h.chunk.path for h in turn.hits), gate(engine, turn)


def test_xquad_subset_retrieval_and_gate(engine: Engine) -> None:
    cases = [c for c in load_golden(XQUAD / "golden.jsonl") if c.expected_sources[0] in ARTICLES]
    assert len(cases) == 9 * len(ARTICLES)
    thresholds = engine.refusal_thresholds()
    ranks, refused = [], []
    for case in cases:
        files, refuses = _asked(engine, case.question)
        ranks.append(first_expected_rank(files, case.expected_sources))
        refused.append(refuses)
    hit1 = sum(r == 1 for r in ranks) / len(ranks)
    hit3 = sum(r is not None and r <= 3 for r in ranks) / len(ranks)
    assert hit1 >= 0.78, f"hit@1 {hit1:.3f}"
    assert hit3 >= 0.95, f"hit@3 {hit3:.3f}"
    # 3 with a single threshold, which refused 56 of 66 off-corpus questions here; the
    # two thresholds refuse 5 and 61 (on all of xquad-dev: 24 % -> 17 % and 71 % -> 75 %)
    assert sum(refused) <= 5, f"{sum(refused)} answerable questions refused at {thresholds}"


def test_off_corpus_questions_refused(engine: Engine) -> None:
    refused = [_asked(engine, c.question)[1] for c in load_golden(OFF_CORPUS)]
    assert sum(refused) / len(refused) >= 0.85, f"{sum(refused)} of {len(refused)} refused"
