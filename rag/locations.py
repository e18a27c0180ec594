"""Where each line of an extracted text is, as a reader finds it: page, heading path, row.

An extractor (rag.ingest, rag.formats) returns, besides the text, one `Location` per
line of it; the cleaner keeps the locations of the lines it keeps, and chunking hands
them to each chunk, so a citation can say "p. 3" or "Budget › Q3 ¶ 2", not only the
line of the extracted text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rag.decoding import tidy_text
from rag.records import Location

SECTION_SEPARATOR = " › "
LABEL_CHARS = 160  # a locator is shown beside a citation: keep it to one short line


@dataclass
class Extracted:
    """The text of a file before cleaning, plus what its format told about it.

    `locations` is empty, or holds one Location per line of `text` ("\\n"-separated).
    """

    text: str
    url: str | None = None
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    locations: list[Location] = field(default_factory=list)


def short_label(text: str) -> str:
    """`text` on one line, without control characters, cut to LABEL_CHARS."""
    label = " ".join(tidy_text(str(text)).split())
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


class Lines:
    """Builds an extracted text line by line, each line with its location.

    A block of text may hold line breaks (a soft break in a paragraph, a cell with
    several lines): every line of it gets the block's location, so the two lists stay
    parallel.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.locations: list[Location] = []

    def add(self, text: str, location: Location) -> None:
        for line in tidy_text(text).split("\n"):
            self.lines.append(line)
            self.locations.append(location)

    def has_text(self) -> bool:
        return any(line.strip() for line in self.lines)

    def extracted(self, **fields: Any) -> Extracted:
        return Extracted("\n".join(self.lines), locations=self.locations, **fields)


class Sections:
    """The heading path at each block of a document, and the paragraph under it.

    `heading(level, title)` opens a section (closing those of the same or a deeper
    level); `paragraph()` is the location of the next non-empty block in it, numbered
    from 1 in each section when `numbered`, as a reader counts them on the page.
    """

    def __init__(self, numbered: bool) -> None:
        self.numbered = numbered
        self._open: list[tuple[int, str]] = []
        self._paragraph = 0

    def path(self) -> str:
        return SECTION_SEPARATOR.join(title for _, title in self._open)

    def heading(self, level: int, title: str) -> Location:
        title = short_label(title)
        if not title:
            return self.paragraph("")
        while self._open and self._open[-1][0] >= level:
            self._open.pop()
        self._open.append((level, title))
        self._paragraph = 0
        path = self.path()
        return Location(section=path, label=short_label(path))

    def paragraph(self, text: str) -> Location:
        path = self.path()
        if not text.strip():  # a blank block is dropped by the cleaner: no number
            return Location(section=path or None, label=short_label(path))
        self._paragraph += 1
        if not self.numbered:
            return Location(section=path or None, label=short_label(path))
        label = f"{path} ¶ {self._paragraph}" if path else f"¶ {self._paragraph}"
        return Location(section=path or None, label=short_label(label))


def join_pages(pages: list[str], label: Callable[[int], str] = lambda n: f"p. {n}") -> Lines:
    """The pages' texts one after the other, each line located on its page (1-based)."""
    lines = Lines()
    for number, page in enumerate(pages, start=1):
        if number < len(pages) and page.endswith("\r"):
            # joined, "\r" + "\n" would be one line end: the same text as
            # tidy_text("\n".join(pages)), so line numbers agree with it
            page = page[:-1]
        lines.add(page, Location(page=number, label=label(number)))
    return lines


# ATX headings ("## Budget"); setext headings ("Budget\n======") are read too.
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def markdown_locations(text: str) -> list[Location]:
    """The heading path at each line of a Markdown text (code blocks hold no heading)."""
    lines = text.split("\n")
    levels = _markdown_levels(lines)
    sections = Sections(numbered=False)
    located: list[Location] = []
    for line, level in zip(lines, levels, strict=True):
        if level is None:
            located.append(sections.paragraph(line))
        else:
            located.append(sections.heading(level, _heading_text(line)))
    return located


def _markdown_levels(lines: list[str]) -> list[int | None]:
    """The heading level of each line (a setext underline counts as its heading's)."""
    levels: list[int | None] = [None] * len(lines)
    fence = ""
    for index, line in enumerate(lines):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            continue
        if opened:
            fence = opened.group(1)
        elif _ATX.fullmatch(line):
            levels[index] = len(_ATX.fullmatch(line).group(1))  # type: ignore[union-attr]
        elif index and _is_setext(lines[index - 1], line, levels[index - 1]):
            level = 1 if line.strip()[0] == "=" else 2
            levels[index - 1] = levels[index] = level
    return levels


def _is_setext(previous: str, line: str, previous_level: int | None) -> bool:
    return bool(
        previous.strip()
        and previous_level is None
        and not previous.startswith(("    ", "\t"))
        and _SETEXT.fullmatch(line)
    )


def _heading_text(line: str) -> str:
    match = _ATX.fullmatch(line)
    if match:
        return match.group(2) or ""
    return "" if _SETEXT.fullmatch(line) else line.strip()
