"""`rag eval`: run a golden Q&A set through the engine and score every answer.

Each case of the golden file (JSON Lines, see tests/qa/README.md) is asked exactly as
`rag ask` would ask it (Engine.ask with the case's history, backend and k), then judged:
retrieval (is an expected file ranked first / retrieved at all), the facts the answer
must contain, refusals, and every citation (its quote must be verbatim text of the
cited file, on the cited lines, and the file must be among the retrieved ones).

One module per concern, in the order of a run:

- `golden`: the golden file, parsed and checked (GoldenCase, load_golden);
- `metrics`: the arithmetic on plain file lists, shared with bench/ (hit@k, MRR, facts);
- `quotes`: the citation checks (verbatim, on its lines, retrieved);
- `cases`: one case asked and judged (CaseResult, the reason codes);
- `report`: a whole run and its summary (run_eval, build_report, write_report);
- `thresholds`, `baseline`, `junit`, `text`: --min, --baseline, --junit and the table.

Everything is importable from `rag.evaluate` itself, as the CLI and the tests do.
"""

from __future__ import annotations

from rag.evaluate.baseline import compare, load_report
from rag.evaluate.cases import (
    ERROR,
    INVALID_CITATION,
    MISSING_FACT,
    NOT_REFUSED,
    NOT_RETRIEVED,
    REFUSED_WRONGLY,
    WRONG_FILE_FIRST,
    AsksQuestions,
    CaseResult,
    Progress,
    evaluate_case,
    evaluate_cases,
    score_case,
)
from rag.evaluate.golden import GoldenCase, load_golden, parse_case
from rag.evaluate.junit import junit_xml, write_junit
from rag.evaluate.metrics import (
    first_expected_rank,
    is_expected,
    missing_facts,
    percentile,
    ranked_files,
    ratio,
    retrieval_metrics,
)
from rag.evaluate.quotes import (
    CitationCheck,
    DocumentLookup,
    check_citations,
    citation_problems,
    document_reader,
)
from rag.evaluate.report import (
    EXTRACTIVE_LANGUAGE_NOTE,
    build_report,
    run_eval,
    summarize,
    write_report,
)
from rag.evaluate.text import format_comparison, format_report
from rag.evaluate.thresholds import METRICS, Threshold, missed_thresholds, parse_thresholds

__all__ = [
    "ERROR",
    "EXTRACTIVE_LANGUAGE_NOTE",
    "INVALID_CITATION",
    "METRICS",
    "MISSING_FACT",
    "NOT_REFUSED",
    "NOT_RETRIEVED",
    "REFUSED_WRONGLY",
    "WRONG_FILE_FIRST",
    "AsksQuestions",
    "CaseResult",
    "CitationCheck",
    "DocumentLookup",
    "GoldenCase",
    "Progress",
    "Threshold",
    "build_report",
    "check_citations",
    "citation_problems",
    "compare",
    "document_reader",
    "evaluate_case",
    "evaluate_cases",
    "first_expected_rank",
    "format_comparison",
    "format_report",
    "is_expected",
    "junit_xml",
    "load_golden",
    "load_report",
    "missed_thresholds",
    "missing_facts",
    "parse_case",
    "parse_thresholds",
    "percentile",
    "ranked_files",
    "ratio",
    "retrieval_metrics",
    "run_eval",
    "score_case",
    "summarize",
    "write_junit",
    "write_report",
]
