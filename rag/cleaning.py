"""Scraped pages cleaned: the source line becomes the URL and ends the article, and
boilerplate (comment counters, image names, banners, bylines, repeats) is dropped.

Every kept line stays verbatim (only right-stripped), so quotes remain exact.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from dataclasses import dataclass, field

# "Source: <url>" lines, in the languages of the corpus and a few neighbours. The
# scraped pages put site navigation after this line, so it ends the article.
SOURCE_LABELS = (
    "source", "sources", "источник", "источники", "kilde", "kilder", "quelle", "quellen",
    "nguồn", "fonte", "fontes", "fuente", "fuentes", "källa", "källor", "lähde", "джерело",
    "bron", "via", "originally published at", "original article",
)  # fmt: skip
_URL = r"(?:https?://|www\.)[^\s<>()\[\]]+"
_SOURCE_LINE = re.compile(
    r"[\s*_>#-]*(?:" + "|".join(SOURCE_LABELS) + r")[\s*_]*[:：]?[\s*_]*"
    r"(?:<(" + _URL + r")>|\[[^\]]*\]\((" + _URL + r")\)|(" + _URL + r"))[\s*_]*",
    re.IGNORECASE,
)

# Lines that carry no content wherever they appear (matched against the whole stripped,
# NFC-normalised line, case-insensitively). Extend with care: a pattern here removes
# that line from every document.
BOILERPLATE_LINE_PATTERNS = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # comment counters: "Комментарий (0)", "Kommentar (0)", "Comments (3)"
        r"(?:комментари[йяи]|kommentar(?:er|e)?|comments?|bình luận|commentaires?"
        r"|comentarios?|kommentit)\s*\(\d+\)",
        # empty widgets of the scraped news pages
        r"no data|no videos available",
        # image placeholders: "1.jpg", "photo.png", "img" ("Ảnh: ..." captions stay)
        r"[\w\-.()]{1,80}\.(?:jpe?g|png|gif|webp|bmp|svg|tiff?|avif|heic)",
        r"img|image|photo|picture",
        # banners of vietnam.vn pages and the Vietnamese national motto header
        r"Vietnam\.vn\s*[-–—]\s*Nền tảng quảng bá Việt Nam",
        r"Độc lập\s*[-–—]\s*Tự do\s*[-–—]\s*Hạnh phúc",
        r"Cộng h(?:òa|oà) xã hội chủ nghĩa Việt Nam",
    )
)

# "Báo Nhân dânBáo Nhân dân12/12/2025": publisher twice, then the date (dd/mm/yyyy).
_BYLINE = re.compile(r"(?P<publisher>\S.{0,99}?)(?P=publisher)\s*(?P<date>\d{1,2}/\d{1,2}/\d{4})")
_BYLINE_MAX_CHARS = 250
_SOURCE_LINE_MAX_CHARS = 2000


@dataclass
class CleanedText:
    """Kept lines (verbatim, right-stripped), their 1-based line numbers, and findings."""

    lines: list[str]
    line_numbers: list[int]
    url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def clean_text(text: str) -> CleanedText:
    """Drop blank lines, boilerplate, bylines, repeats and everything after the source line."""
    file_lines = text.split("\n")
    source_lines, url = _source_lines(file_lines)
    end = _article_end(file_lines, source_lines)
    cleaned = CleanedText([], [], url)
    for number, line in enumerate(file_lines[:end], start=1):
        line = line.rstrip()
        if not line or number - 1 in source_lines:
            continue
        normalized = unicodedata.normalize("NFC", line.strip())
        if _is_boilerplate(normalized) or _take_byline(normalized, cleaned.metadata):
            continue
        if cleaned.lines and line == cleaned.lines[-1]:
            continue
        cleaned.lines.append(line)
        cleaned.line_numbers.append(number)
    return cleaned


def _source_lines(lines: list[str]) -> tuple[set[int], str | None]:
    """Indexes of the source lines, and the URL of the last one."""
    found: set[int] = set()
    url = None
    for index, line in enumerate(lines):
        if len(line) > _SOURCE_LINE_MAX_CHARS:
            continue
        match = _SOURCE_LINE.fullmatch(unicodedata.normalize("NFC", line))
        if match:
            found.add(index)
            url = next(group for group in match.groups() if group).rstrip(".,;:")
    return found, url


def _article_end(lines: list[str], source_lines: set[int]) -> int:
    """Index after which nothing is kept: the last source line, if text comes before it.

    A source line at the very top (a note that starts with its source) cuts nothing.
    """
    if not source_lines:
        return len(lines)
    last = max(source_lines)
    has_text_before = any(
        line.strip() for index, line in enumerate(lines[:last]) if index not in source_lines
    )
    return last if has_text_before else len(lines)


def _is_boilerplate(line: str) -> bool:
    return any(pattern.fullmatch(line) for pattern in BOILERPLATE_LINE_PATTERNS)


def _take_byline(line: str, metadata: dict[str, str]) -> bool:
    """True for a publisher byline; the first one's publisher and date go to metadata."""
    if len(line) > _BYLINE_MAX_CHARS or not line[-1].isdigit():
        return False
    match = _BYLINE.fullmatch(line)
    if not match:
        return False
    day, month, year = (int(part) for part in match.group("date").split("/"))
    try:
        published = datetime.date(year, month, day).isoformat()
    except ValueError:
        return False
    metadata.setdefault("publisher", match.group("publisher").strip())
    metadata.setdefault("published", published)
    return True
