"""The report of a run: per-case results and the aggregate metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag.config import Settings
from rag.evaluate.cases import ERROR, AsksQuestions, CaseResult, Progress, evaluate_cases
from rag.evaluate.golden import GoldenCase
from rag.evaluate.metrics import is_expected, percentile, ratio, retrieval_metrics
from rag.evaluate.quotes import document_reader

EXTRACTIVE_LANGUAGE_NOTE = (
    "answer_language_rate: with --llm none the answers are extractive and quote the "
    "sources in the sources' language, so this rate reflects the corpus, not the assistant"
)


def summarize(results: Sequence[CaseResult], backend: str) -> dict[str, Any]:
    """The aggregate metrics of a run (None where there was nothing to measure)."""
    answerable = [r for r in results if r.case.answerable]
    unanswerable = [r for r in results if not r.case.answerable]
    checks = [c for r in results for c in r.citations]
    cited = [(f, r.case) for r in answerable if not r.refused for f in r.cited_files]
    spoken = [r for r in results if r.answer_language is not None]
    failed = sum(not r.passed for r in results)
    summary: dict[str, Any] = {
        "cases": len(results),
        "passed": len(results) - failed,
        "failed": failed,
        "errors": sum(ERROR in r.reasons for r in results),
        "pass_rate": ratio(len(results) - failed, len(results)),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        **retrieval_metrics([(r.retrieved_files, r.case.expected_sources) for r in answerable]),
        "citations": len(checks),
        "invalid_citations": sum(not c.valid for c in checks),
        "citation_validity": ratio(sum(c.valid for c in checks), len(checks)),
        "cited_source_precision": ratio(
            sum(is_expected(f, case.expected_sources) for f, case in cited), len(cited)
        ),
        "must_contain_rate": ratio(sum(r.facts_found for r in answerable), len(answerable)),
        "refusal_accuracy": ratio(sum(r.refused for r in unanswerable), len(unanswerable)),
        "false_refusal_rate": ratio(sum(r.refused for r in answerable), len(answerable)),
        "answerable_refused": sum(r.refused for r in answerable),
        "unanswerable_answered": sum(not r.refused for r in unanswerable),
        "answer_language_rate": ratio(
            sum(r.answer_language == r.case.lang for r in spoken), len(spoken)
        ),
        "claim_support_rate": claim_support_rate(results),
        "claims_recited": sum(r.support.get("recited", 0) for r in results),
        "claims_dropped": sum(r.support.get("dropped", 0) for r in results),
        "groups": _groups(results),
        **_latencies(results),
        "notes": [EXTRACTIVE_LANGUAGE_NOTE] if backend == "none" else [],
    }
    return summary


def claim_support_rate(results: Sequence[CaseResult]) -> float | None:
    """Of the claims shown in the answers, the share that the cited sentences support
    (checked again here on the final text and its quotes, see rag.support)."""
    shown = [check for r in results if not r.refused for check in r.claim_checks]
    return ratio(sum(shown), len(shown))


def _groups(results: Sequence[CaseResult]) -> dict[str, dict[str, Any]]:
    """Per conversation-set group: how many cases, and the share handled right (the
    facts found for answerable cases, a refusal for the others)."""
    groups: dict[str, list[CaseResult]] = {}
    for result in results:
        if result.case.group:
            groups.setdefault(result.case.group, []).append(result)
    return {
        name: {
            "cases": len(members),
            "correct": sum(_handled(r) for r in members),
            "rate": ratio(sum(_handled(r) for r in members), len(members)),
        }
        for name, members in sorted(groups.items())
    }


def _handled(result: CaseResult) -> bool:
    return result.facts_found if result.case.answerable else result.refused


def _latencies(results: Sequence[CaseResult]) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for name, timing in (("latency", "total_ms"), ("first_token", "first_token_ms")):
        samples = [r.timings[timing] for r in results if timing in r.timings]
        for q in (50, 95):
            value = percentile(samples, q)
            values[f"{name}_p{q}_ms"] = None if value is None else round(value, 1)
    return values


def build_report(
    results: Sequence[CaseResult], settings: Settings, golden_file: Path, backend: str
) -> dict[str, Any]:
    """The full report of `rag eval --json` / `--report`."""
    return {
        "summary": summarize(results, backend),
        "cases": [r.as_dict() for r in results],
        "settings": {
            "backend": backend,
            "k": settings.top_k,
            "store": settings.chroma_url or str(settings.store_dir),
            "docs": str(settings.docs_dir),
            "golden_file": str(golden_file),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def run_eval(
    engine: AsksQuestions,
    cases: Sequence[GoldenCase],
    settings: Settings,
    golden_file: Path,
    llm: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Ask every case with the settings' k and the given (or configured) backend."""
    backend = llm or settings.llm
    lookup = document_reader(settings.docs_dir, settings.max_file_bytes)
    results = evaluate_cases(engine, cases, lookup, backend, settings.top_k, progress)
    return build_report(results, settings, golden_file, backend)


def write_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
