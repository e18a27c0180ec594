"""The golden Q&A set (tests/qa/golden.jsonl) as tests, over a real index of seeds/.

Every case is its own test (`pytest -k en-001` runs one), asked with --llm none through
Engine.ask exactly as `rag ask` asks it, and must meet the invariants every answer must
meet. test_product_thresholds then holds the aggregate to the product's targets. A
small subset marked `llm` is answered by the real local model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rag.config import Settings
from rag.engine import Engine
from rag.evaluate import (
    ERROR,
    CaseResult,
    DocumentLookup,
    GoldenCase,
    document_reader,
    evaluate_case,
    first_expected_rank,
    format_report,
    is_expected,
    load_golden,
    missed_thresholds,
    parse_thresholds,
    score_case,
    summarize,
)
from rag.indexer import index_folder

from .conftest import SEEDS

GOLDEN = Path(__file__).resolve().parent / "qa" / "golden.jsonl"
CASES = load_golden(GOLDEN)

# The product's targets for the extractive (--llm none) answers over seeds/.
PRODUCT_THRESHOLDS = parse_thresholds(
    [
        "hit@1=0.90",
        "hit@3=0.97",
        "citation_validity=1.0",
        "answerable_refused=1",  # at most one answerable case refused
        # The similarity gate alone refuses 3 of the 10 unanswerable cases; this floor
        # keeps it from slipping. The target (every one refused without an LLM) is open:
        # see NEAR_TOPIC below and test_every_unanswerable_refused_without_llm.
        "refusal_accuracy=0.3",
    ]
)

# Unanswerable questions about things the articles do mention (TECHFEST's visitors and
# tickets, Kyonggi University, the ministry, Hanoi, Vietnam's economy): their best
# chunk is as close to them (cosine 0.80-0.91) as answerable questions' are (from
# 0.79), so no similarity threshold refuses them without refusing real questions
# (bench/calibrate_refusal.py). Only the LLM notices the fact is missing.
NEAR_TOPIC = {"en-013", "ru-014", "de-013", "de-014", "no-013", "no-014"}
# Samsung's investment in Vietnam: refused by the single threshold the gate had (best
# cosine 0.782 < 0.786); its two thresholds let a passage in another language pass at
# 0.779, which cuts xquad-dev's false refusals from 24 % to 17 % and refuses more
# off-corpus questions and topic switches (rag.gate), and this one passes.
NEAR_TOPIC |= {"vi-013"}

# One case per language (each local answer takes a few seconds on a CPU), all with a
# single expected file and a short factual answer. (Not vi-008: the 1.5B model writes
# its "233 Milliarden" as "233 triệu", a million, which the claim check drops.)
LLM_CASE_IDS = ("en-009", "vi-007", "de-008", "no-008")
LLM_CASES = [c for c in CASES if c.id in LLM_CASE_IDS]


class GoldenRun:
    """Asks each case at most once per session, so one case alone asks one question."""

    def __init__(self, engine: Engine, lookup: DocumentLookup) -> None:
        self.engine = engine
        self.lookup = lookup
        self.results: dict[str, CaseResult] = {}

    def result(self, case: GoldenCase) -> CaseResult:
        if case.id not in self.results:
            self.results[case.id] = evaluate_case(self.engine, case, self.lookup, llm="none")
        return self.results[case.id]


@pytest.fixture(scope="session")
def qa_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings.from_env(
        docs_dir=SEEDS, store_dir=tmp_path_factory.mktemp("qa") / "store", llm="none"
    )
    return dataclasses.replace(settings, chroma_url=None)  # always a private, embedded store


@pytest.fixture(scope="session")
def qa_engine(qa_settings: Settings, embedder) -> Engine:  # type: ignore[no-untyped-def]
    index_folder(qa_settings, progress=False, embedder_factory=lambda: embedder)
    engine = Engine(qa_settings)
    engine._embedder = embedder  # share the session's model rather than load a second copy
    return engine


@pytest.fixture(scope="session")
def qa_lookup(qa_settings: Settings) -> DocumentLookup:
    return document_reader(qa_settings.docs_dir, qa_settings.max_file_bytes)


@pytest.fixture(scope="session")
def golden_run(qa_engine: Engine, qa_lookup: DocumentLookup) -> GoldenRun:
    return GoldenRun(qa_engine, qa_lookup)


def describe(result: CaseResult) -> str:
    return "\n".join([*result.details, f"retrieved: {result.retrieved_files}", result.answer])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden_case(case: GoldenCase, golden_run: GoldenRun) -> None:
    result = golden_run.result(case)
    assert ERROR not in result.reasons, describe(result)
    invalid = [f"[{c.n}] {', '.join(c.problems)}" for c in result.citations if not c.valid]
    assert not invalid, describe(result)
    assert set(result.cited_files) <= set(result.retrieved_files)
    if case.answerable:
        rank = first_expected_rank(result.retrieved_files, case.expected_sources)
        assert rank is not None, f"no expected file in the top k\n{describe(result)}"
    else:
        if case.id in NEAR_TOPIC and not result.refused:
            pytest.xfail("near-topic unanswerable: the similarity gate cannot refuse it")
        assert result.refused, f"answered an unanswerable question\n{describe(result)}"


def test_product_thresholds(golden_run: GoldenRun) -> None:
    results = [golden_run.result(case) for case in CASES]
    summary = summarize(results, backend="none")
    misses = missed_thresholds(summary, PRODUCT_THRESHOLDS)
    report = {
        "summary": summary,
        "cases": [r.as_dict() for r in results],
        "settings": {"backend": "none", "k": golden_run.engine.settings.top_k},
    }
    assert not misses, "\n".join([*misses, "", format_report(report)])


@pytest.mark.xfail(strict=True, reason="open target: near-topic questions need the LLM")
def test_every_unanswerable_refused_without_llm(golden_run: GoldenRun) -> None:
    answered = [c.id for c in CASES if not c.answerable and not golden_run.result(c).refused]
    assert not answered, f"unanswerable cases answered with --llm none: {answered}"


@pytest.mark.llm
@pytest.mark.parametrize("case", LLM_CASES, ids=[c.id for c in LLM_CASES])
def test_local_llm_answer(case: GoldenCase, qa_engine: Engine, qa_lookup: DocumentLookup) -> None:
    answer = qa_engine.ask(case.question, list(case.history), llm="local")
    result = score_case(case, answer, qa_lookup)
    assert not answer.refused, describe(result)
    invalid = [f"[{c.n}] {', '.join(c.problems)}" for c in result.citations if not c.valid]
    assert not invalid, describe(result)
    assert any(is_expected(f, case.expected_sources) for f in result.cited_files), describe(result)
    assert result.answer_language == case.lang, describe(result)
