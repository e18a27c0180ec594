"""The records that flow between the steps: files -> documents -> chunks -> hits.

Kept in one small module so each step can be used and tested alone without importing
the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class UserError(Exception):
    """An error shown to the user as one line, never as a traceback."""


class IngestError(UserError):
    """A file that cannot be indexed; the message is the one-line reason."""


class ModelError(UserError):
    """A model is missing, broken or not available offline; the message names the fix."""


Progress = Callable[[str], None]  # reports a step of a long set-up to the user


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as the one line a user sees: its first line, else its type."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


@dataclass(frozen=True)
class Skipped:
    """A file that was not indexed, and why (one line)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Location:
    """Where a line of a document is, as a reader finds it (see rag.locations)."""

    page: int | None = None  # PDF page or slide number, 1-based
    section: str | None = None  # heading path, sheet, chapter or e-mail subject
    label: str = ""  # the place as shown: "p. 3", "Budget › Q3 ¶ 2", "Sheet1 row 14"


# Separates the sections and labels of a chunk's lines in the store's flat metadata;
# a control character, which tidy_text removes from every text and label.
MAP_SEPARATOR = "\x1f"


@dataclass
class Document:
    """A cleaned source file.

    `text` is the kept lines of the decoded file joined with "\\n"; every kept line is
    verbatim, so any substring of `text` that does not span a line break is an exact
    quote from the file. `line_numbers[i]` is the 1-based line number in the file of
    line i of `text`. `locations` is empty, or `locations[i]` is where line i is.
    """

    path: str  # POSIX path relative to the documents folder
    text: str
    line_numbers: list[int]
    language: str  # ISO 639-1: en, vi, ru, de, no, ... or "und"
    content_hash: str  # sha256 of the raw file bytes
    url: str | None = None
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    locations: list[Location] = field(default_factory=list)

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
    # file line number of each line of `text` (blank lines are not in `text`)
    line_map: tuple[int, ...] = ()
    ocr: bool = False  # some of its text was read by OCR, which can misread words
    # where each line of `text` is (rag.locations); empty when the format tells nothing:
    # the page (0: none), the section and the label of each line
    page_map: tuple[int, ...] = ()
    section_map: tuple[str, ...] = ()
    label_map: tuple[str, ...] = ()

    def metadata(self) -> dict[str, str | int]:
        """Flat metadata for the vector store (no None values, no lists).

        Besides the fields, `page` and `last_page` (0: none) and `section` (at the
        chunk's start), so the store can be filtered by them.
        """
        meta = asdict(self)
        meta.pop("text")
        meta.pop("chunk_id")
        meta["url"] = meta["url"] or ""
        meta["line_map"] = ",".join(map(str, self.line_map))
        meta["page_map"] = ",".join(map(str, self.page_map))
        meta["section_map"] = MAP_SEPARATOR.join(self.section_map)
        meta["label_map"] = MAP_SEPARATOR.join(self.label_map)
        meta["page"], meta["last_page"] = self.page or 0, self.last_page or 0
        meta["section"] = self.section or ""
        return meta

    @property
    def page(self) -> int | None:
        """The first page (or slide) the chunk is on, None when the format has none."""
        return next((page for page in self.page_map if page), None)

    @property
    def last_page(self) -> int | None:
        return next((page for page in reversed(self.page_map) if page), None)

    @property
    def section(self) -> str | None:
        """The heading path (sheet, chapter, subject) at the chunk's start."""
        return self.section_map[0] if self.section_map and self.section_map[0] else None

    def location_at(self, offset: int) -> Location | None:
        """Where the line holding the character at `offset` in `text` is, if known."""
        row = self.text.count("\n", 0, offset)
        if row >= len(self.label_map):
            return None
        page = self.page_map[row] if row < len(self.page_map) else 0
        section = self.section_map[row] if row < len(self.section_map) else ""
        return Location(page or None, section or None, self.label_map[row])

    def locator(self) -> str:
        """The chunk's place as shown beside it: "pp. 3–4", else its first line's label."""
        first, last = self.page, self.last_page
        if first and self.label_map and self.label_map[0].startswith("p. "):
            return f"p. {first}" if first == last else f"pp. {first}–{last}"
        return self.label_map[0] if self.label_map else ""

    def line_at(self, offset: int) -> int:
        """File line number of the character at `offset` in `text`."""
        row = self.text.count("\n", 0, offset)
        if row < len(self.line_map):
            return self.line_map[row]
        return self.first_line + row

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
            line_map=tuple(int(n) for n in str(meta.get("line_map") or "").split(",") if n),
            ocr=bool(meta.get("ocr", False)),
            page_map=tuple(int(n) for n in str(meta.get("page_map") or "").split(",") if n),
            section_map=_split_map(meta.get("section_map")),
            label_map=_split_map(meta.get("label_map")),
        )


def _split_map(value: object) -> tuple[str, ...]:
    return tuple(str(value).split(MAP_SEPARATOR)) if value else ()


@dataclass
class Hit:
    """A retrieved chunk with its rank and score (higher is better)."""

    chunk: Chunk
    score: float
    rank: int = 0
    dense_score: float | None = None
    keyword_score: float | None = None

    def as_row(self) -> dict[str, Any]:
        """What `rag search --json` and the server's `/search` show for one hit."""
        return {
            "rank": self.rank,
            "file": self.chunk.path.rsplit("/", 1)[-1],
            "path": self.chunk.path,
            "lines": [self.chunk.first_line, self.chunk.last_line],
            "score": round(self.score, 4),
            "text": self.chunk.text,
            "chunk_id": self.chunk.chunk_id,
        }


@dataclass
class Citation:
    """One [n] of an answer, resolved to the exact supporting text in a file."""

    n: int
    file: str  # file name
    path: str  # path relative to the documents folder
    lines: tuple[int, int]  # first and last line of the quote in the file
    quote: str  # verbatim text of the file that supports the claim
    url: str | None = None
    ocr: bool = False  # the quote was read by OCR: what the scan says, perhaps misread
    page: int | None = None  # the page (PDF) or slide of the quote
    section: str | None = None  # heading path, sheet, chapter or e-mail subject
    locator: str = ""  # where a reader finds the quote: "p. 3", "Sheet1 row 14", "line 12"

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "file": self.file,
            "path": self.path,
            "lines": list(self.lines),
            "quote": self.quote,
            "url": self.url,
            "ocr": self.ocr,
            "page": self.page,
            "section": self.section,
            "locator": self.locator,
        }


@dataclass
class Answer:
    """A finished answer: what `rag ask --json`, the UI and `rag eval` all consume."""

    question: str
    language: str
    answer: str
    refused: bool
    citations: list[Citation]
    retrieved: list[Hit]
    backend: str
    timings: dict[str, float] = field(default_factory=dict)
    search_query: str = ""  # what retrieval actually searched (follow-ups add context)
    # claims of the reply kept as cited, re-cited to another sentence, and dropped as
    # unsupported (see rag.answer.ground)
    support: dict[str, int] = field(
        default_factory=lambda: {"supported": 0, "recited": 0, "dropped": 0}
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "language": self.language,
            "answer": self.answer,
            "refused": self.refused,
            "citations": [c.as_dict() for c in self.citations],
            "retrieved": [
                {key: h.as_row()[key] for key in ("rank", "file", "path", "lines", "score")}
                for h in self.retrieved
            ],
            "support": dict(self.support),
            "search_query": self.search_query,
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "backend": self.backend,
        }


# The events of a streamed answer (Engine.ask_stream), here so that every face of the
# engine (CLI, server, UI, rag.components) reads them without importing the engine.


@dataclass
class Retrieved:
    """First event of an answer: the evidence, before any token is generated."""

    hits: list[Hit]
    language: str
    search_query: str
    refused: bool


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    answer: Answer


Event = Retrieved | Delta | Finished
