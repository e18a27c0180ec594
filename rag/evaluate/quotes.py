"""Citation checks: every quote must be verbatim text of its file, on its lines, and
the file must be among the ones retrieved for the answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from rag.citations import cited_numbers
from rag.ingest import read_document
from rag.records import Answer, Citation, Document, UserError

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
