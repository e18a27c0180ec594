"""One golden case asked the way `rag ask` asks it, and judged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rag.citations import strip_markers
from rag.evaluate.golden import GoldenCase
from rag.evaluate.metrics import first_expected_rank, missing_facts, ranked_files
from rag.evaluate.quotes import CitationCheck, DocumentLookup, check_citations
from rag.language import detect_language
from rag.records import Answer, UserError, one_line
from rag.support import verify_claims

# Why a case failed: the reason codes of the report, the JUnit XML and the baseline diff.
WRONG_FILE_FIRST = "wrong file first"
NOT_RETRIEVED = "expected file not retrieved"
MISSING_FACT = "missing fact"
NOT_REFUSED = "not refused"
REFUSED_WRONGLY = "refused wrongly"
INVALID_CITATION = "invalid citation"
ERROR = "error"  # the engine raised an unexpected exception on this case


class AsksQuestions(Protocol):
    """What the evaluator needs of rag.engine.Engine (tests pass a fake): `ask`, called
    with every argument, as `evaluate_case` does."""

    def ask(
        self, question: str, history: list[dict[str, str]], llm: str | None, k: int | None
    ) -> Answer: ...


@dataclass
class CaseResult:
    """A golden case, what the engine answered, and the verdict."""

    case: GoldenCase
    answer: str = ""
    refused: bool = False
    retrieved_files: list[str] = field(default_factory=list)
    cited_files: list[str] = field(default_factory=list)
    citations: list[CitationCheck] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # facts not found (answered cases)
    answer_language: str | None = None  # detected; None when refused
    timings: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)  # the answer path's own counts
    claim_checks: list[bool] = field(default_factory=list)  # each shown claim supported?
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # one line per reason

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def facts_found(self) -> bool:
        return not self.refused and not self.missing and ERROR not in self.reasons

    def fail(self, reason: str, detail: str) -> None:
        self.reasons.append(reason)
        self.details.append(f"{reason}: {detail}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.case.id,
            "passed": self.passed,
            "reasons": self.reasons,
            "details": self.details,
            "question": self.case.question,
            "lang": self.case.lang,
            "answerable": self.case.answerable,
            "expected_sources": list(self.case.expected_sources),
            "answer": self.answer,
            "refused": self.refused,
            "answer_language": self.answer_language,
            "retrieved_files": self.retrieved_files,
            "cited_files": self.cited_files,
            "citations": [c.as_dict() for c in self.citations],
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "support": self.support,
            "claims_supported": f"{sum(self.claim_checks)}/{len(self.claim_checks)}",
            "group": self.case.group,
        }


def score_case(
    case: GoldenCase,
    answer: Answer,
    lookup: DocumentLookup,
    detect: Callable[[str], str] = detect_language,
) -> CaseResult:
    """Judge one answer against its golden case."""
    result = CaseResult(
        case,
        answer=answer.answer,
        refused=answer.refused,
        retrieved_files=ranked_files(h.chunk.path for h in answer.retrieved),
        cited_files=ranked_files(c.path for c in answer.citations),
        timings=dict(answer.timings),
        support=dict(answer.support),
    )
    result.citations = check_citations(answer, result.retrieved_files, lookup)
    if not answer.refused:
        quotes: dict[int, list[str]] = {}
        for citation in answer.citations:
            quotes.setdefault(citation.n, []).append(citation.quote)
        result.claim_checks = verify_claims(answer.answer, quotes, _asked(case))
    if not answer.refused:
        result.missing = missing_facts(
            answer.answer, case.must_contain_any, case.must_contain_all, case.must_not_contain
        )
        result.answer_language = detect(strip_markers(answer.answer))
    if case.answerable:
        _judge_answerable(result)
    elif not answer.refused:
        result.fail(NOT_REFUSED, "the corpus has no answer, but the assistant answered")
    invalid = [c for c in result.citations if not c.valid]
    if invalid:
        result.fail(
            INVALID_CITATION, "; ".join(f"[{c.n}] {', '.join(c.problems)}" for c in invalid)
        )
    return result


def _judge_answerable(result: CaseResult) -> None:
    case = result.case
    files = result.retrieved_files
    rank = first_expected_rank(files, case.expected_sources)
    if rank is None:
        result.fail(
            NOT_RETRIEVED,
            f"expected {', '.join(case.expected_sources)}; "
            f"retrieved {', '.join(files) or 'nothing'}",
        )
    elif rank > 1:
        result.fail(WRONG_FILE_FIRST, f"{files[0]} first, expected file at rank {rank}")
    if result.refused:
        result.fail(REFUSED_WRONGLY, "the answer is in the corpus, but the assistant refused")
    elif result.missing:
        result.fail(MISSING_FACT, "; ".join(result.missing))


def evaluate_case(
    engine: AsksQuestions,
    case: GoldenCase,
    lookup: DocumentLookup,
    llm: str | None = None,
    k: int | None = None,
    detect: Callable[[str], str] = detect_language,
) -> CaseResult:
    """Ask one case the way `rag ask` does, and judge the answer."""
    try:
        answer = engine.ask(case.question, history=list(case.history), llm=llm, k=k)
    except UserError:
        raise  # a setup problem (no store, no LLM server): every case would fail the same
    except Exception as exc:  # one broken case must not lose the whole run
        result = CaseResult(case)
        result.fail(ERROR, f"{type(exc).__name__}: {one_line(exc)}")
        return result
    return score_case(case, answer, lookup, detect)


Progress = Callable[[int, int, CaseResult], None]


def evaluate_cases(
    engine: AsksQuestions,
    cases: Sequence[GoldenCase],
    lookup: DocumentLookup,
    llm: str | None = None,
    k: int | None = None,
    progress: Progress | None = None,
) -> list[CaseResult]:
    results = []
    for done, case in enumerate(cases, start=1):
        results.append(evaluate_case(engine, case, lookup, llm, k))
        if progress:
            progress(done, len(cases), results[-1])
    return results


def _asked(case: GoldenCase) -> str:
    """What the user has asked so far: the question and the earlier ones of its history,
    whose numbers and dates an answer may repeat as the answer path lets it."""
    earlier = [m.get("content", "") for m in case.history if m.get("role") == "user"]
    return "\n".join([*earlier, case.question])
