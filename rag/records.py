"""The records that flow between the steps: files -> documents -> chunks -> hits.

Kept in one small module so each step can be used and tested alone without importing
the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class UserError(Exception):
    """An error shown to the user as one line, never as a traceback."""


@dataclass(frozen=True)
class Skipped:
    """A file that was not indexed, and why (one line)."""

    path: str
    reason: str


@dataclass
class Document:
    """A cleaned source file.

    `text` is the kept lines of the decoded file joined with "\\n"; every kept line is
    verbatim, so any substring of `text` that does not span a line break is an exact
    quote from the file. `line_numbers[i]` is the 1-based line number in the file of
    line i of `text`.
    """

    path: str  # POSIX path relative to the documents folder
    text: str
    line_numbers: list[int]
    language: str  # ISO 639-1: en, vi, ru, de, no, ... or "und"
    content_hash: str  # sha256 of the raw file bytes
    url: str | None = None
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def lines_of(self, start_char: int, end_char: int) -> tuple[int, int]:
        """First and last file line numbers covered by text[start_char:end_char]."""
        first = self.text.count("\n", 0, start_char)
        last = self.text.count("\n", 0, max(start_char, end_char - 1))
        return self.line_numbers[first], self.line_numbers[last]


@dataclass
class Chunk:
    """A token-budgeted, sentence-aligned piece of a document, ready to embed."""

    chunk_id: str
    path: str
    index: int  # position of the chunk in its document
    text: str
    start_char: int  # offsets into Document.text
    end_char: int
    first_line: int  # 1-based line numbers in the file
    last_line: int
    language: str
    content_hash: str
    url: str | None = None
    title: str = ""

    def metadata(self) -> dict[str, str | int]:
        """Flat metadata for the vector store (no None values)."""
        meta = asdict(self)
        meta.pop("text")
        meta.pop("chunk_id")
        meta["url"] = meta["url"] or ""
        return meta

    @classmethod
    def from_store(cls, chunk_id: str, text: str, meta: dict[str, Any]) -> Chunk:
        return cls(
            chunk_id=chunk_id,
            path=str(meta["path"]),
            index=int(meta["index"]),
            text=text,
            start_char=int(meta["start_char"]),
            end_char=int(meta["end_char"]),
            first_line=int(meta["first_line"]),
            last_line=int(meta["last_line"]),
            language=str(meta.get("language", "und")),
            content_hash=str(meta["content_hash"]),
            url=str(meta.get("url") or "") or None,
            title=str(meta.get("title", "")),
        )


@dataclass
class Hit:
    """A retrieved chunk with its rank and score (higher is better)."""

    chunk: Chunk
    score: float
    rank: int = 0
    dense_score: float | None = None
    keyword_score: float | None = None
