"""Citation markers in answers: parse [n], [n, m] and [n-m]; keep only real sources.

Models invent source numbers and write ranges; here every marker is rewritten to the
canonical "[1]" / "[1, 3]" form holding only numbers that were given as sources, and
a marker left with none is removed, so nothing cites a source that does not exist.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

from rag.chunking import split_sentences

# [1]  [1, 2]  [1,2]  [1-3]  [1–3]  [1; 2]  [Source 1]  【1】
MARKER = re.compile(
    r"[\[【]\s*(?:(?:sources?|kilde|quelle|источник|nguồn)\s*)?"
    r"(\d{1,3}(?:\s*(?:[-–—]|,|;|and|og|und|и|và)\s*\d{1,3})*)\s*[\]】]",
    re.IGNORECASE,
)
_RANGE = re.compile(r"(\d{1,3})\s*[-–—]\s*(\d{1,3})")
_NUMBER = re.compile(r"\d{1,3}")
# A range wider than this is a typo or a hallucination, not a citation.
MAX_RANGE = 20


@dataclass(frozen=True)
class Claim:
    """One sentence of an answer and the source numbers it cites."""

    text: str
    numbers: tuple[int, ...]


def marker_numbers(inner: str) -> list[int]:
    """Numbers in a marker's inside: "1, 3-5" -> [1, 3, 4, 5] (in order, no repeats)."""
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|;|\band\b|\bog\b|\bund\b|\bи\b|\bvà\b)\s*", inner):
        span = _RANGE.fullmatch(part.strip())
        if span:
            low, high = int(span.group(1)), int(span.group(2))
            if low <= high and high - low <= MAX_RANGE:
                numbers.extend(range(low, high + 1))
            continue
        numbers.extend(int(n) for n in _NUMBER.findall(part))
    return list(dict.fromkeys(numbers))


def clean_markers(text: str, valid: set[int]) -> str:
    """Rewrite every marker to its valid numbers; drop markers with none."""

    def rewrite(match: re.Match[str]) -> str:
        kept = [n for n in marker_numbers(match.group(1)) if n in valid]
        return f"[{', '.join(map(str, kept))}]" if kept else ""

    return _tidy(MARKER.sub(rewrite, text))


def strip_markers(text: str) -> str:
    """The text without any citation marker."""
    return _tidy(MARKER.sub("", text))


def _tidy(text: str) -> str:
    # removing a marker can leave "word ." or double spaces behind
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def cited_numbers(text: str) -> list[int]:
    """Every number cited in `text`, in order of first appearance."""
    numbers: list[int] = []
    for match in MARKER.finditer(text):
        numbers.extend(marker_numbers(match.group(1)))
    return list(dict.fromkeys(numbers))


def claims(text: str) -> list[Claim]:
    """Split an answer into sentences, each with the numbers it cites.

    Sentences are split as documents are (rag.chunking.split_sentences), with the
    markers blanked out first: "in 2024 [1]. Next" and "in 2024.[1] Next" split like
    "in 2024. Next". A marker between two sentences ("... in 2024. [2] Next", or on a
    line of its own) cites the sentence before it, which is where models put it.
    """
    markers = list(MARKER.finditer(text))
    blanked = MARKER.sub(lambda m: " " * len(m.group()), text)
    spans = split_sentences(blanked)
    if not spans:
        return [Claim("", tuple(cited_numbers(text)))] if markers else []
    numbers: list[list[int]] = [[] for _ in spans]
    starts = [start for start, _ in spans]
    for marker in markers:
        # the sentence it stands in or after; a marker before the first, the first
        sentence = max(0, bisect_right(starts, marker.start()) - 1)
        numbers[sentence] += marker_numbers(marker.group(1))
    return [
        Claim(strip_markers(text[start:end]), tuple(dict.fromkeys(cited)))
        for (start, end), cited in zip(spans, numbers, strict=True)
    ]
