"""`rag eval`: run a golden Q&A set through the engine and score every answer.

Each case of the golden file (JSON Lines, see tests/qa/README.md) is asked exactly as
`rag ask` would ask it (Engine.ask with the case's history, backend and k), then judged:
retrieval (is an expected file ranked first / retrieved at all), the facts the answer
must contain, refusals, and every citation (its quote must be verbatim text of the
cited file, on the cited lines, and the file must be among the retrieved ones).

The metric functions work on plain file lists so that other pipelines (see
bench/baseline_llamaindex.py) are scored with exactly the same arithmetic.

Retrieval is scored per file, not per chunk: the ranked list of a case is the distinct
files of its retrieved chunks in order of first appearance, so hit@3 means "an expected
file is among the first three different files".
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from rag.citations import cited_numbers, strip_markers
from rag.config import Settings
from rag.ingest import read_document
from rag.language import LANGUAGE_NAMES, detect_language
from rag.records import Answer, Citation, Document, UserError

# Why a case failed: the reason codes of the report, the JUnit XML and the baseline diff.
WRONG_FILE_FIRST = "wrong file first"
NOT_RETRIEVED = "expected file not retrieved"
MISSING_FACT = "missing fact"
NOT_REFUSED = "not refused"
REFUSED_WRONGLY = "refused wrongly"
INVALID_CITATION = "invalid citation"
ERROR = "error"  # the engine raised an unexpected exception on this case

# Metrics that --min accepts, and whether higher is better. For lower-is-better metrics
# (rates of mistakes, counts of mistakes, latencies) the --min value is a ceiling.
METRICS: dict[str, bool] = {
    "pass_rate": True,
    "hit@1": True,
    "hit@3": True,
    "mrr": True,
    "citation_validity": True,
    "cited_source_precision": True,
    "must_contain_rate": True,
    "refusal_accuracy": True,
    "false_refusal_rate": False,
    "answer_language_rate": True,
    "failed": False,
    "errors": False,
    "invalid_citations": False,
    "answerable_refused": False,
    "unanswerable_answered": False,
    "latency_p50_ms": False,
    "latency_p95_ms": False,
    "first_token_p50_ms": False,
    "first_token_p95_ms": False,
}

EXTRACTIVE_LANGUAGE_NOTE = (
    "answer_language_rate: with --llm none the answers are extractive and quote the "
    "sources in the sources' language, so this rate reflects the corpus, not the assistant"
)


# ------------------------------------------------------------------------ golden file


@dataclass(frozen=True)
class GoldenCase:
    """One line of the golden file."""

    id: str
    question: str
    lang: str
    expected_sources: tuple[str, ...]
    must_contain_any: tuple[str, ...]
    answerable: bool
    must_contain_all: tuple[str, ...] = ()
    history: tuple[dict[str, str], ...] = ()
    tags: tuple[str, ...] = ()


class _Malformed(ValueError):
    """What is wrong with one line of the golden file (without the line number)."""


_STRING_LISTS = ("expected_sources", "must_contain_any", "must_contain_all", "tags")
_REQUIRED: dict[str, type] = {
    "id": str,
    "question": str,
    "lang": str,
    "expected_sources": list,
    "must_contain_any": list,
    "answerable": bool,
}
_OPTIONAL: dict[str, type] = {"must_contain_all": list, "history": list, "tags": list}
_TYPE_NAMES = {str: "a string", list: "a list", bool: "true or false"}
_ROLES = ("user", "assistant")


def load_golden(path: Path) -> list[GoldenCase]:
    """Every case of a golden file; a UserError naming the line for anything malformed."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"golden file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    cases: list[GoldenCase] = []
    first_line_of: dict[str, int] = {}
    # split on "\n" only: str.splitlines would also split inside JSON strings (U+2028)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            case = parse_case(line)
        except _Malformed as exc:
            raise UserError(f"{path}, line {number}: {exc}") from None
        if case.id in first_line_of:
            raise UserError(
                f"{path}, line {number}: duplicate id {case.id!r} "
                f"(first on line {first_line_of[case.id]})"
            )
        first_line_of[case.id] = number
        cases.append(case)
    if not cases:
        raise UserError(f"{path}: no cases")
    return cases


def parse_case(line: str) -> GoldenCase:
    """One golden case from its JSON line; _Malformed says what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _Malformed(f"bad JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _Malformed("bad JSON: a case must be an object {...}")
    _check_keys(data)
    _check_values(data)
    return GoldenCase(
        id=data["id"],
        question=data["question"],
        lang=data["lang"],
        expected_sources=tuple(data["expected_sources"]),
        must_contain_any=tuple(data["must_contain_any"]),
        answerable=data["answerable"],
        must_contain_all=tuple(data.get("must_contain_all", ())),
        history=tuple(dict(m) for m in data.get("history", ())),
        tags=tuple(data.get("tags", ())),
    )


def _check_keys(data: dict[str, Any]) -> None:
    for key in _REQUIRED:
        if key not in data:
            raise _Malformed(f'missing key "{key}"')
    # a misspelt optional key ("must_contain") would otherwise silently check nothing
    for key in data:
        if key not in _REQUIRED and key not in _OPTIONAL:
            raise _Malformed(f'unknown key "{key}"')
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in data and not isinstance(data[key], kind):
            raise _Malformed(f'wrong type: "{key}" must be {_TYPE_NAMES[kind]}')
    for key in _STRING_LISTS:
        if not all(isinstance(item, str) for item in data.get(key, ())):
            raise _Malformed(f'wrong type: "{key}" must be a list of strings')
    for message in data.get("history", ()):
        if not _is_message(message):
            raise _Malformed(
                'wrong type: "history" must be a list of {"role": "user"|"assistant", '
                '"content": "..."}'
            )


def _is_message(message: object) -> bool:
    return (
        isinstance(message, dict)
        and set(message) == {"role", "content"}
        and message["role"] in _ROLES
        and isinstance(message["content"], str)
    )


def _check_values(data: dict[str, Any]) -> None:
    if not data["id"].strip():
        raise _Malformed('"id" is empty')
    if not data["question"].strip():
        raise _Malformed('"question" is empty')
    if data["lang"] not in LANGUAGE_NAMES:
        raise _Malformed(f'unknown lang "{data["lang"]}" (use one of {", ".join(LANGUAGE_NAMES)})')
    if not data["answerable"] and data["expected_sources"]:
        raise _Malformed('"answerable": false but "expected_sources" is not empty')
    if data["answerable"] and not data["expected_sources"]:
        raise _Malformed('"answerable": true needs at least one file in "expected_sources"')


# --------------------------------------------------------------------------- metrics


def ranked_files(paths: Iterable[str]) -> list[str]:
    """The distinct files of a ranked list of chunks, best first."""
    return list(dict.fromkeys(paths))


def is_expected(path: str, expected: Sequence[str]) -> bool:
    """Whether a retrieved/cited path is one of the expected sources (names or paths)."""
    return path in expected or PurePosixPath(path).name in expected


def first_expected_rank(files: Sequence[str], expected: Sequence[str]) -> int | None:
    """1-based rank of the first expected file in a ranked file list; None if absent."""
    for rank, path in enumerate(files, start=1):
        if is_expected(path, expected):
            return rank
    return None


def ratio(part: float, whole: float) -> float | None:
    """part / whole, or None (n/a) when there is nothing to measure."""
    return part / whole if whole else None


def retrieval_metrics(
    rankings: Sequence[tuple[Sequence[str], Sequence[str]]],
) -> dict[str, float | None]:
    """hit@1, hit@3 and MRR of (ranked files, expected files) pairs."""
    ranks = [first_expected_rank(files, expected) for files, expected in rankings]
    return {
        "hit@1": ratio(sum(r == 1 for r in ranks), len(ranks)),
        "hit@3": ratio(sum(r is not None and r <= 3 for r in ranks), len(ranks)),
        "mrr": ratio(sum(1 / r for r in ranks if r), len(ranks)),
    }


def _fold(text: str) -> str:
    # NFKC: no-break spaces and composed/decomposed diacritics compare equal
    return unicodedata.normalize("NFKC", text).casefold()


def missing_facts(text: str, any_of: Sequence[str], all_of: Sequence[str] = ()) -> list[str]:
    """What the answer lacks: must_contain_any (one of) and must_contain_all (each).

    Case-insensitive substring tests on the text without citation markers, so that a
    marker such as "[4]" cannot pass for a fact such as "4".
    """
    haystack = _fold(strip_markers(text))
    problems = []
    if any_of and not any(_fold(s) in haystack for s in any_of):
        problems.append("none of " + ", ".join(_quoted(s) for s in any_of))
    problems += [f"no {_quoted(s)}" for s in all_of if _fold(s) not in haystack]
    return problems


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ------------------------------------------------------------------------- citations

DocumentLookup = Callable[[str], Document]


def document_reader(docs_dir: Path, max_file_bytes: int) -> DocumentLookup:
    """Read each cited file once (as the indexer does) and remember it."""

    @cache
    def read(path: str) -> Document:
        return read_document(docs_dir / path, docs_dir, max_file_bytes)

    return read


@dataclass
class CitationCheck:
    """One citation of an answer and what is wrong with it (nothing when valid)."""

    n: int
    citation: Citation | None  # None: a [n] in the answer with no citation behind it
    problems: list[str]

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = self.citation.as_dict() if self.citation else {"n": self.n}
        return {**data, "valid": self.valid, "problems": self.problems}


def check_citations(
    answer: Answer, retrieved: Sequence[str], lookup: DocumentLookup
) -> list[CitationCheck]:
    """Every citation of the answer, checked; plus one failed check per dangling [n]."""
    checks = [
        CitationCheck(c.n, c, citation_problems(c, retrieved, lookup)) for c in answer.citations
    ]
    numbers = {c.n for c in answer.citations}
    checks += [
        CitationCheck(n, None, [f"[{n}] in the answer has no citation"])
        for n in cited_numbers(answer.answer)
        if n not in numbers
    ]
    return checks


def citation_problems(
    citation: Citation, retrieved: Sequence[str], lookup: DocumentLookup
) -> list[str]:
    """Why a citation is invalid: not retrieved, not verbatim, not on its lines."""
    problems = []
    if citation.path not in retrieved:
        problems.append(f"{citation.path} was not retrieved")
    try:
        doc = lookup(citation.path)
    except UserError as exc:
        return [*problems, f"{citation.path} unreadable: {exc}"]
    first, last = citation.lines
    last_line = doc.line_numbers[-1]
    lines_valid = 1 <= first <= last <= last_line
    if not lines_valid:
        problems.append(f"lines {first}-{last} outside the file's text (1-{last_line})")
    if not citation.quote.strip():
        problems.append("empty quote")
    elif citation.quote not in doc.text:
        problems.append(f"quote not in {citation.path}")
    elif lines_valid and not _quote_on_lines(doc, citation.quote, first, last):
        problems.append(f"quote not on lines {first}-{last}")
    return problems


def _quote_on_lines(doc: Document, quote: str, first: int, last: int) -> bool:
    start = doc.text.find(quote)
    while start >= 0:
        low, high = doc.lines_of(start, start + len(quote))
        if first <= low and high <= last:
            return True
        start = doc.text.find(quote, start + 1)
    return False


# ------------------------------------------------------------------------ evaluation


class AsksQuestions(Protocol):
    """What the evaluator needs of rag.engine.Engine (tests pass a fake)."""

    def ask(
        self,
        question: str,
        history: Sequence[dict[str, str]] | None = None,
        llm: str | None = None,
        k: int | None = None,
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
    )
    result.citations = check_citations(answer, result.retrieved_files, lookup)
    if not answer.refused:
        result.missing = missing_facts(answer.answer, case.must_contain_any, case.must_contain_all)
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
        message = str(exc).strip().splitlines()
        result.fail(ERROR, f"{type(exc).__name__}: {message[0] if message else ''}")
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


# --------------------------------------------------------------------------- summary


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
        **_latencies(results),
        "notes": [EXTRACTIVE_LANGUAGE_NOTE] if backend == "none" else [],
    }
    return summary


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


# ------------------------------------------------------------------------ thresholds


@dataclass(frozen=True)
class Threshold:
    """--min METRIC=VALUE: a floor, or a ceiling for lower-is-better metrics."""

    metric: str
    value: float

    def missed(self, summary: dict[str, Any]) -> str | None:
        """Why the summary misses this threshold; None when it is met."""
        actual = summary.get(self.metric)
        if actual is None:
            return f"{self.metric} was not measured (n/a), required {self.value:g}"
        if METRICS[self.metric] and actual < self.value:
            return f"{self.metric} = {_number(actual)}, below the minimum {self.value:g}"
        if not METRICS[self.metric] and actual > self.value:
            return f"{self.metric} = {_number(actual)}, above the maximum {self.value:g}"
        return None


def parse_thresholds(specs: Sequence[str]) -> list[Threshold]:
    """METRIC=VALUE strings as thresholds; a UserError for unknown metrics or bad values."""
    thresholds = []
    for spec in specs:
        name, sep, raw = spec.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--min {spec}: expected METRIC=VALUE, e.g. hit@1=0.9")
        if name not in METRICS:
            raise UserError(
                f"--min {spec}: unknown metric {name!r}; use one of {', '.join(METRICS)}"
            )
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"--min {spec}: {raw.strip()!r} is not a number") from None
        thresholds.append(Threshold(name, value))
    return thresholds


def missed_thresholds(summary: dict[str, Any], thresholds: Sequence[Threshold]) -> list[str]:
    return [miss for t in thresholds if (miss := t.missed(summary))]


# -------------------------------------------------------------------------- baseline


def load_report(path: Path) -> dict[str, Any]:
    """An earlier `rag eval --report` file, checked enough to be compared with."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"baseline report not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"baseline report {path} is not readable JSON ({exc})") from None
    cases = data.get("cases") if isinstance(data, dict) else None
    if (
        not isinstance(data.get("summary") if isinstance(data, dict) else None, dict)
        or not isinstance(cases, list)
        or not all(isinstance(c, dict) and "id" in c and "passed" in c for c in cases)
    ):
        raise UserError(f"baseline report {path} is not a `rag eval --report` file")
    return data


def compare(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per-case changes (newly failing / passing, added, removed) and metric deltas."""
    before = {c["id"]: c for c in baseline["cases"]}
    after = {c["id"]: c for c in report["cases"]}
    common = [i for i in after if i in before]
    return {
        "baseline_date": baseline.get("settings", {}).get("date"),
        "newly_failing": [
            {"id": i, "reasons": after[i]["reasons"]}
            for i in common
            if before[i]["passed"] and not after[i]["passed"]
        ],
        "newly_passing": [
            {"id": i, "reasons_before": before[i].get("reasons", [])}
            for i in common
            if not before[i]["passed"] and after[i]["passed"]
        ],
        "added": [i for i in after if i not in before],
        "removed": [i for i in before if i not in after],
        "metrics": _metric_deltas(report["summary"], baseline["summary"]),
    }


def _metric_deltas(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deltas = {}
    for name, value in after.items():
        old = before.get(name)
        if _is_number(value) or _is_number(old):
            change = value - old if _is_number(value) and _is_number(old) else None
            deltas[name] = {"before": old, "after": value, "delta": change}
    return deltas


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ JUnit


def junit_xml(report: dict[str, Any]) -> ET.ElementTree:
    """JUnit XML: one testcase per golden case; a failure (or error) carries the reasons."""
    cases = report["cases"]
    errors = sum(ERROR in c["reasons"] for c in cases)
    failures = sum(not c["passed"] for c in cases) - errors
    seconds = sum(c["timings"].get("total_ms", 0.0) for c in cases) / 1000
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "time": f"{seconds:.3f}",
    }
    settings = report["settings"]
    root = ET.Element("testsuites", {"name": "rag eval", **counts})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": Path(settings["golden_file"]).name,
            **counts,
            "skipped": "0",
            "timestamp": settings["date"],
        },
    )
    _junit_properties(suite, report)
    for case in cases:
        _junit_case(suite, case)
    ET.indent(root)
    return ET.ElementTree(root)


def _junit_properties(suite: ET.Element, report: dict[str, Any]) -> None:
    properties = ET.SubElement(suite, "properties")
    for key in ("backend", "k", "store", "golden_file"):
        ET.SubElement(properties, "property", name=key, value=str(report["settings"][key]))
    for name, value in report["summary"].items():
        if _is_number(value):
            ET.SubElement(properties, "property", name=f"metric.{name}", value=str(value))


def _junit_case(suite: ET.Element, case: dict[str, Any]) -> None:
    seconds = case["timings"].get("total_ms", 0.0) / 1000
    element = ET.SubElement(
        suite,
        "testcase",
        classname=f"golden.{case['lang']}",
        name=case["id"],
        time=f"{seconds:.3f}",
    )
    if case["passed"]:
        return
    tag = "error" if ERROR in case["reasons"] else "failure"
    failure = ET.SubElement(
        element, tag, message="; ".join(case["reasons"]), type=case["reasons"][0]
    )
    failure.text = _xml_safe(
        "\n".join(
            [
                *case["details"],
                f"question: {case['question']}",
                f"retrieved: {', '.join(case['retrieved_files']) or '-'}",
                f"answer: {case['answer']}",
            ]
        )
    )


# characters XML 1.0 cannot hold, even escaped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def write_junit(report: dict[str, Any], path: Path) -> None:
    junit_xml(report).write(path, encoding="utf-8", xml_declaration=True)


def write_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------- human output

_SUMMARY_ROWS = (
    ("hit@1", "answerable: an expected file ranked first"),
    ("hit@3", "answerable: an expected file in the first three files"),
    ("mrr", "answerable: mean 1/rank of the first expected file"),
    ("citation_validity", "citations that are verbatim, on their lines, retrieved"),
    ("cited_source_precision", "cited files that are expected (answered cases)"),
    ("must_contain_rate", "answerable cases whose answer has the facts"),
    ("refusal_accuracy", "unanswerable cases refused"),
    ("false_refusal_rate", "answerable cases refused"),
    ("answer_language_rate", "answers in the question's language"),
    ("latency_p50_ms", "total time per answer, median"),
    ("latency_p95_ms", "total time per answer, 95th percentile"),
    ("first_token_p50_ms", "time to first token, median"),
    ("first_token_p95_ms", "time to first token, 95th percentile"),
)


def format_report(report: dict[str, Any]) -> str:
    """The table of cases and the summary, for the terminal."""
    return "\n".join([*_case_table(report["cases"]), "", *_summary_lines(report)])


def _case_table(cases: list[dict[str, Any]]) -> list[str]:
    width = max([len(c["id"]) for c in cases] + [2])
    lines = [f"{'id':<{width}}  result  reasons"]
    for case in cases:
        verdict = "pass" if case["passed"] else "FAIL"
        lines.append(f"{case['id']:<{width}}  {verdict:<6}  {', '.join(case['reasons'])}".rstrip())
        lines += [f"{'':<{width}}          {detail}" for detail in case["details"]]
    return lines


def _summary_lines(report: dict[str, Any]) -> list[str]:
    summary, settings = report["summary"], report["settings"]
    lines = [
        f"{summary['cases']} cases: {summary['passed']} passed, {summary['failed']} failed "
        f"(backend {settings['backend']}, k {settings['k']}; {summary['answerable']} "
        f"answerable, {summary['unanswerable']} unanswerable, {summary['citations']} citations)"
    ]
    lines += [f"  {name:<24}{_number(summary[name]):>9}   {about}" for name, about in _SUMMARY_ROWS]
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    return lines


def format_comparison(diff: dict[str, Any]) -> str:
    """Per-case changes and metric deltas against a baseline report."""
    lines = [f"compared with the baseline of {diff.get('baseline_date') or 'unknown date'}:"]
    for label, key, reasons in (
        ("newly failing", "newly_failing", "reasons"),
        ("newly passing", "newly_passing", "reasons_before"),
    ):
        entries = [f"{e['id']} ({', '.join(e[reasons])})" for e in diff[key]]
        lines.append(f"  {label}: {', '.join(entries) or 'none'}")
    for label in ("added", "removed"):
        if diff[label]:
            lines.append(f"  {label} cases: {', '.join(diff[label])}")
    lines.append(f"  {'metric':<24}{'before':>9}{'after':>9}{'delta':>9}")
    for name, change in diff["metrics"].items():
        before, after, delta = change["before"], change["after"], change["delta"]
        lines.append(f"  {name:<24}{_number(before):>9}{_number(after):>9}{_signed(delta):>9}")
    return "\n".join(lines)


def _signed(delta: float | None) -> str:
    if delta is None:
        return "n/a"
    if delta == 0:
        return "0"
    if isinstance(delta, int):
        return f"{delta:+d}"
    return f"{delta:+.3f}" if abs(delta) <= 1 else f"{delta:+.1f}"


def _number(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if value <= 1 else f"{value:.1f}"
    return str(value)
