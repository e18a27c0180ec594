"""Extracted text cleaned of what is not content, with the reason for every dropped line.

A line is dropped on evidence from the document's structure, never on its wording alone,
because a rule on words removes the same words from the documents a user wrote:

* source line: "Source: <url>" (Источник:, Kilde:, Quelle:, via …) gives the document its
  URL. It is dropped at the very top of a note, or where it ends a scraped page; any
  other source line is content and stays.
* navigation: a source line ends the document only when what follows it is site
  navigation: many short headline-like lines (title-like, no sentence punctuation, no
  list markers or figures) under an article of prose. Ingredients, action items or
  figures after a source line are content and stay.
  Right after a comment counter one such line is enough: the page's furniture has begun.
* page header: on a page recognised as scraped (navigation or a comment counter after
  its source line), the short "Site - tagline" / "A | B | C" lines above the article.
* image placeholder: a line that is only "img", "Image", "1.jpg"…, on a line of its own
  (not inside a sentence or a list), when it clearly stands for an image: on a scraped
  page, next to a caption ("Photo: …"), or repeated.
* comment counter ("Comments (3)"), byline ("PublisherPublisher12/12/2025", a scraper's
  glued publisher and date: kept as metadata), and a line repeating the line before it.

Every kept line stays verbatim (only right-stripped), so quotes remain exact.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# "Source: <url>" lines, in the languages of the corpus and a few neighbours.
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
_SOURCE_LINE_MAX_CHARS = 2000

# Comment counters: "Комментарий (0)", "Kommentar (0)", "Comments (3)". A count in
# parentheses after the word alone on a line is a page widget in any document.
_COMMENT_COUNTER = re.compile(
    r"(?:комментари[йяи]|kommentar(?:er|e)?|comments?|bình luận|commentaires?"
    r"|comentarios?|kommentit)\s*\(\d+\)",
    re.IGNORECASE,
)

# What a page puts where an image was: its alt text or its file name. Only candidates:
# see _image_placeholder_reason for when such a line is dropped.
_IMAGE_WORD = re.compile(r"img|image|photo|picture|foto|фото|bild|bilde|ảnh", re.IGNORECASE)
_IMAGE_FILE = re.compile(
    r"[\w\-.()]{1,80}\.(?:jpe?g|png|gif|webp|bmp|svg|tiff?|avif|heic)", re.IGNORECASE
)
_CAPTION = re.compile(r"(?:ảnh|photo|foto|фото|bild|bilde|image|caption)\s*[:：]", re.IGNORECASE)

# "Báo Nhân dânBáo Nhân dân12/12/2025": publisher twice, then the date (dd/mm/yyyy).
_BYLINE = re.compile(r"(?P<publisher>\S.{0,99}?)(?P=publisher)\s*(?P<date>\d{1,2}/\d{1,2}/\d{4})")
_BYLINE_MAX_CHARS = 250

# Headline-like: a navigation link's text. Limits set from the seeds' link lists with a
# margin (their headlines run to 16 words); prose lines are longer or end in a stop.
_HEADLINE_MAX_WORDS = 20
_HEADLINE_MAX_CHARS = 160
_SENTENCE_END = ".,;:…"  # "?" and "!" end headlines too ("Hva skjer i julen?")
_OPENERS = "«»\"'“”„‘’‚(["
_SENTENCE_STOP = '.!?…"»”)'
_LIST_MARKER = re.compile(r"(?:[-*•–·>]|\d{1,3}[.)]|\[[ xX]?\])\s")
_LABEL_VALUE = re.compile(r"(?:\S+\s+){0,2}\S+\s*[:：]\s*\S")  # "Umsatz: 12,4 Mio. EUR"

# Navigation: many headline-like lines after the source line (a few could be a short
# list the author wrote), nearly all of them, under an article that is mostly prose (a
# document of short lines gives no contrast to judge by, so nothing is cut there).
NAVIGATION_MIN_LINES = 6
NAVIGATION_MIN_SHARE = 0.75
ARTICLE_MAX_HEADLINE_SHARE = 0.5

# Page header: "Vietnam.vn - Nền tảng …", "Home | News | Tech": short segments between
# separators, among the first lines of a scraped page only.
_HEADER_SEPARATOR = re.compile(r"\s+[-–—|·•»›>]\s+")
_HEADER_SEGMENT_MAX_WORDS = 6
_HEADER_MAX_CHARS = 80
_HEADER_SEARCH_LINES = 5

REASONS = {
    "source-line": "the document's source (its URL becomes the document's link)",
    "navigation": "site navigation after the source line",
    "page-header": "site banner above the article of a scraped page "
    "(short segments between separators)",
    "image-placeholder": "stands for an image",
    "comment-counter": "a page widget that counts comments",
    "byline": "publisher and date glued together by a scraper (kept as metadata)",
    "repeat": "repeats the line just before it",
}


@dataclass(frozen=True)
class Dropped:
    """One dropped line: its 1-based number, its text, the rule and the reason."""

    line_number: int
    text: str
    rule: str
    reason: str


@dataclass
class CleanedText:
    """Kept lines (verbatim, right-stripped), their 1-based line numbers, and findings."""

    lines: list[str]
    line_numbers: list[int]
    url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    dropped: list[Dropped] = field(default_factory=list)


def clean_text(text: str) -> CleanedText:
    """Keep the content lines of `text`; record every other non-blank line and why."""
    lines = [line.rstrip() for line in text.split("\n")]
    plain = [unicodedata.normalize("NFC", line.strip()) for line in lines]
    sources = _source_lines(plain)
    cleaned = CleanedText([], [], sources[max(sources)] if sources else None)
    verdicts, scraped = _page_verdicts(plain, sources)
    for index, line in enumerate(lines):
        if not line:
            continue
        verdict = verdicts.get(index) or _line_verdict(plain, index, scraped, cleaned.metadata)
        if not verdict and cleaned.lines and line == cleaned.lines[-1]:
            verdict = _because("repeat")
        if verdict:
            cleaned.dropped.append(Dropped(index + 1, line, *verdict))
            continue
        cleaned.lines.append(line)
        cleaned.line_numbers.append(index + 1)
    return cleaned


Verdict = tuple[str, str]  # (rule, reason) of a dropped line


def _because(rule: str, detail: str = "") -> Verdict:
    return rule, REASONS[rule] + detail


# ------------------------------------------------------------------- page structure


def _source_lines(plain: list[str]) -> dict[int, str]:
    """Index of each source line -> its URL."""
    found: dict[int, str] = {}
    for index, line in enumerate(plain):
        if len(line) > _SOURCE_LINE_MAX_CHARS:
            continue
        match = _SOURCE_LINE.fullmatch(line)
        if match:
            found[index] = next(group for group in match.groups() if group).rstrip(".,;:")
    return found


def _page_verdicts(plain: list[str], sources: dict[int, str]) -> tuple[dict[int, Verdict], bool]:
    """Rules decided from the whole page (source lines, navigation, page header), and
    whether it is a scraped page: page furniture follows its last source line."""
    verdicts: dict[int, Verdict] = {}
    first_text = next((i for i, line in enumerate(plain) if line), None)
    if first_text in sources:  # a note that starts with its source
        verdicts[first_text] = _because("source-line")
    if not sources or max(sources) == first_text:
        return verdicts, False
    last = max(sources)
    after = [line for line in plain[last + 1 :] if line]
    tail = _content(after)
    widget = bool(after) and bool(_COMMENT_COUNTER.fullmatch(after[0]))
    navigation = _navigation_reason(_content(plain[:last]), tail, widget)
    if tail and navigation is None:
        return verdicts, False  # content follows: the source line is content too
    verdicts[last] = _because("source-line")
    if navigation is not None:
        for index in range(last + 1, len(plain)):
            if plain[index]:
                verdicts[index] = _because("navigation", navigation)
    scraped = navigation is not None or widget
    if scraped:
        verdicts.update(_page_header(plain, last))
    return verdicts, scraped


def _content(plain: list[str]) -> list[str]:
    return [line for line in plain if line and not _COMMENT_COUNTER.fullmatch(line)]


def _navigation_reason(article: list[str], tail: list[str], widget: bool) -> str | None:
    """Why `tail` (the lines after the source line) is site navigation; None if not.

    Right after a comment counter (`widget`), a page's furniture has begun: there a
    single headline-like line is enough."""
    headlines = sum(map(_is_headline_like, tail))
    article_headlines = sum(map(_is_headline_like, article))
    if (
        headlines < (1 if widget else NAVIGATION_MIN_LINES)
        or headlines < NAVIGATION_MIN_SHARE * len(tail)
        or article_headlines > ARTICLE_MAX_HEADLINE_SHARE * len(article)
    ):
        return None
    return (
        f": {headlines} of its {len(tail)} lines are short headline-like lines "
        f"(of the article's {len(article)} lines: {article_headlines})"
        + (", after a comment counter" if widget else "")
    )


def _is_headline_like(line: str) -> bool:
    """Short, title-like, no sentence punctuation, not a list item, label or figure."""
    if len(line) > _HEADLINE_MAX_CHARS or line[-1] in _SENTENCE_END:
        return False
    words = line.split()
    if len(words) > _HEADLINE_MAX_WORDS or not _starts_upper(line):
        return False
    if _LIST_MARKER.match(line) or _LABEL_VALUE.match(line) or "://" in line:
        return False
    figures = sum(any(char.isdigit() for char in word) for word in words)
    return figures * 3 < len(words)


def _page_header(plain: list[str], end: int) -> dict[int, Verdict]:
    """The banner lines that open a scraped page, before its first other line."""
    header: dict[int, Verdict] = {}
    seen = 0
    for index, line in enumerate(plain[:end]):
        if not line:
            continue
        seen += 1
        if seen > _HEADER_SEARCH_LINES or not _is_banner(line):
            break
        header[index] = _because("page-header")
    return header


def _is_banner(line: str) -> bool:
    if len(line) > _HEADER_MAX_CHARS or line[-1] in _SENTENCE_END:
        return False
    segments = _HEADER_SEPARATOR.split(line)
    return len(segments) > 1 and all(
        0 < len(segment.split()) <= _HEADER_SEGMENT_MAX_WORDS for segment in segments
    )


# -------------------------------------------------------------------- single lines


def _line_verdict(
    plain: list[str], index: int, scraped: bool, metadata: dict[str, str]
) -> Verdict | None:
    """The rule that drops this line, judged with its neighbours; None to keep it."""
    line = plain[index]
    if _COMMENT_COUNTER.fullmatch(line):
        return _because("comment-counter")
    placeholder = _image_placeholder_reason(plain, index, scraped)
    if placeholder:
        return _because("image-placeholder", placeholder)
    if _take_byline(line, metadata):
        return _because("byline")
    return None


def _is_image_candidate(line: str) -> bool:
    return bool(_IMAGE_WORD.fullmatch(line) or _IMAGE_FILE.fullmatch(line))


def _image_placeholder_reason(plain: list[str], index: int, scraped: bool) -> str | None:
    """Why this "img" / "1.jpg" line stands for an image, or None (then it is content)."""
    line = plain[index]
    if not _is_image_candidate(line) or not _stands_alone(plain, index):
        return None
    if scraped:
        return " on a scraped page (page furniture after its source line)"
    neighbours = (_neighbour(plain, index, -1), _neighbour(plain, index, 1))
    if any(_CAPTION.match(text) for text in neighbours):
        return " next to an image caption"
    repeats = sum(other.casefold() == line.casefold() for other in plain)
    if repeats > 1:
        return f", {repeats} times in the document"
    return None


def _stands_alone(plain: list[str], index: int) -> bool:
    """Not part of a sentence or a list: the line before ends a sentence (or is blank)
    and the line after does not go on in lower case. "Files go into / img / and…" is prose."""
    before = plain[index - 1] if index > 0 else ""
    after = plain[index + 1] if index + 1 < len(plain) else ""
    starts_sentence = not after.lstrip(_OPENERS)[:1].islower()  # "22 декабря …" starts one
    return (not before or before[-1] in _SENTENCE_STOP) and starts_sentence


def _starts_upper(line: str) -> bool:
    """Starts with a capital letter, after any opening quote or bracket."""
    return line.lstrip(_OPENERS)[:1].isupper()


def _neighbour(plain: list[str], index: int, step: int) -> str:
    """The nearest non-blank line before (step -1) or after (step 1) `index`."""
    index += step
    while 0 <= index < len(plain):
        if plain[index]:
            return plain[index]
        index += step
    return ""


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


# ------------------------------------------------------------------------- explain


def explain(cleaned: CleanedText) -> dict[str, Any]:
    """What was dropped, as runs of neighbouring lines under one rule, and a count by rule."""
    kept = set(cleaned.line_numbers)
    runs: list[list[Dropped]] = []
    for drop in cleaned.dropped:
        previous = runs[-1][-1] if runs else None
        if (
            previous is not None
            and (previous.rule, previous.reason) == (drop.rule, drop.reason)
            and not kept.intersection(range(previous.line_number, drop.line_number))
        ):
            runs[-1].append(drop)
        else:
            runs.append([drop])
    return {
        "kept": len(cleaned.lines),
        "dropped": len(cleaned.dropped),
        "url": cleaned.url,
        "metadata": cleaned.metadata,
        "runs": [_run_dict(run) for run in runs],
        "by_rule": dict(Counter(drop.rule for drop in cleaned.dropped).most_common()),
    }


def _run_dict(run: list[Dropped]) -> dict[str, Any]:
    return {
        "first": run[0].line_number,
        "last": run[-1].line_number,
        "rule": run[0].rule,
        "reason": run[0].reason,
        "lines": [{"line": d.line_number, "text": d.text} for d in run],
    }
