"""Documents -> sentence-aligned, token-budgeted, overlapping chunks.

Token counts use cl100k through llama-index's bundled tokenizer (no download). Every
chunk is an exact slice of `Document.text`, so a chunk, or any sentence in it, can be
quoted and traced back to its file lines.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

from rag.records import Chunk, Document

# Words that end with a period but do not end a sentence (compared lower-cased, with the
# period). Single letters followed by a period ("D. Thao", "z. B.", "т. е.") are
# initials and never end a sentence either; see _ends_with_initial.
ABBREVIATIONS = frozenset(
    [
        # German
        "bzw.", "ca.", "dr.", "prof.", "st.", "z.b.", "u.a.", "d.h.", "usw.", "vgl.",
        "ggf.", "evtl.", "inkl.", "sog.", "bspw.", "hr.", "fr.", "dipl.", "ing.", "jh.",
        # English
        "mr.", "mrs.", "ms.", "etc.", "e.g.", "i.e.", "vs.", "approx.", "inc.", "ltd.",
        "co.", "corp.", "jr.", "sr.", "gov.",
        # Norwegian / Danish / Swedish
        "bl.a.", "f.eks.", "mv.", "osv.", "dvs.", "jf.", "pga.", "hhv.", "ifm.",
        # Russian
        "г.", "гг.", "т.е.", "т.к.", "т.н.", "ул.", "им.", "проф.", "акад.", "тыс.",
        "млн.", "млрд.", "руб.", "напр.", "обл.",
        # Vietnamese titles and "TP." (thành phố, city)
        "ông.", "bà.", "ts.", "pgs.", "gs.", "ths.", "tp.", "bs.",
    ]
)  # fmt: skip

# Abbreviations that only introduce a number: "Nr. 57", "No. 57-NQ/TW", "S. 12".
NUMBER_ABBREVIATIONS = frozenset(["nr.", "no.", "art.", "s.", "p.", "pp.", "vol.", "abs."])

# "vom 22. Dezember": a German ordinal day, not the end of a sentence ending in "22".
_MONTHS = frozenset(
    [
        "januar", "jänner", "februar", "märz", "april", "mai", "juni", "juli", "august",
        "september", "oktober", "november", "dezember",
        "january", "february", "march", "may", "june", "july", "october", "december",
    ]
)  # fmt: skip

_TERMINATOR = re.compile(r"[.!?…]+[\"'»”“’)\]]*(?=\s)")
_OPENERS = "\"'«“„‘([¿¡"
_NEXT_WORD = re.compile(r"\s+(\S+)")
_ORDINAL = re.compile(r"\d{1,2}\.")


@dataclass(frozen=True)
class _Unit:
    """A sentence, or a piece of a sentence too long for one chunk."""

    start: int
    end: int
    tokens: int


def count_tokens(text: str) -> int:
    """Number of cl100k tokens in `text`."""
    return len(_tokenizer()(text))


@cache
def _tokenizer() -> Callable[[str], list[int]]:
    # Imported here: llama-index takes about a second to import, which commands that
    # never chunk should not pay.
    from llama_index.core.utils import get_tokenizer

    return get_tokenizer()


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of `text`, without surrounding whitespace.

    A line break always ends a sentence. Inside a line a sentence ends after . ! ? or …
    (and any closing quotes or brackets) when whitespace and then an uppercase letter, a
    digit or an opening quote follow, except after abbreviations and initials.
    """
    spans: list[tuple[int, int]] = []
    for line_start, line_end in _line_spans(text):
        sentence_start = line_start
        for match in _TERMINATOR.finditer(text, line_start, line_end):
            if _ends_sentence(text, match, line_end):
                _add_stripped(spans, text, sentence_start, match.end())
                sentence_start = match.end()
        _add_stripped(spans, text, sentence_start, line_end)
    return spans


def _line_spans(text: str) -> Iterator[tuple[int, int]]:
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        if end == -1:
            end = len(text)
        yield start, end
        start = end + 1


def _add_stripped(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        spans.append((start, end))


def _ends_sentence(text: str, match: re.Match[str], line_end: int) -> bool:
    following = _NEXT_WORD.match(text, match.end(), line_end)
    if following is None:
        return False
    next_word = following.group(1)
    first = next_word[0]
    if not (first.isupper() or first.isdigit() or first in _OPENERS):
        return False
    punctuation = match.group().rstrip("\"'»”“’)]")
    if punctuation != ".":
        return True  # ! ? … and "..." always end a sentence
    word = _word_before(text, match.start())
    return not _is_abbreviation(word, next_word)


def _word_before(text: str, period: int) -> str:
    start = period
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start : period + 1].lstrip(_OPENERS).lower()


def _is_abbreviation(word: str, next_word: str) -> bool:
    if word in ABBREVIATIONS or _ends_with_initial(word):
        return True
    if word in NUMBER_ABBREVIATIONS and next_word[0].isdigit():
        return True
    month = next_word.rstrip(".,;:").lower()
    return bool(_ORDINAL.fullmatch(word)) and month in _MONTHS


def _ends_with_initial(word: str) -> bool:
    # "d." in "Hoang D. Thao", "b." in "z. B.", "е." in "т. е."
    return len(word) == 2 and word[0].isalpha()


def chunk_document(doc: Document, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """Pack the sentences of `doc` into chunks of at most `max_tokens` tokens.

    Each chunk after the first starts with the last sentences of the previous chunk,
    at most `overlap_tokens` tokens of them. A sentence longer than `max_tokens` is cut
    at whitespace (or, with none, between characters) into smaller pieces.
    """
    if max_tokens < 1 or overlap_tokens < 0:
        raise ValueError(f"bad chunk sizes: max_tokens={max_tokens}, overlap={overlap_tokens}")
    units = _units(doc.text, max_tokens, overlap_tokens)
    spans = _pack(doc.text, units, max_tokens, overlap_tokens)
    lines = _LineIndex(doc)
    return [_make_chunk(doc, index, start, end, lines) for index, (start, end) in enumerate(spans)]


def _units(text: str, max_tokens: int, overlap_tokens: int) -> list[_Unit]:
    # Pieces of over-long sentences are kept small so that the overlap can hold some.
    piece_tokens = min(max_tokens, max(16, overlap_tokens // 2))
    units: list[_Unit] = []
    for start, end in split_sentences(text):
        # Real text averages 2-5 characters a token, so a sentence this long is over
        # the budget: counting it whole would be wasted, its pieces are counted anyway.
        if end - start <= 16 * max_tokens:
            tokens = count_tokens(text[start:end])
            if tokens <= max_tokens:
                units.append(_Unit(start, end, tokens))
                continue
        units.extend(_split_long(text, start, end, piece_tokens))
    return units


def _split_long(text: str, start: int, end: int, piece_tokens: int) -> Iterator[_Unit]:
    """Cut text[start:end] into pieces of at most `piece_tokens` tokens, in linear time.

    Each piece's length is guessed from the characters per token seen so far, cut back
    to the last whitespace, and shrunk only if its (small) token count is too high.
    """
    chars_per_token = 4.0
    position = start
    while position < end:
        limit = min(end, position + max(1, int(piece_tokens * chars_per_token)))
        piece_end = _cut(text, position, limit, end)
        tokens = count_tokens(text[position:piece_end])
        while tokens > piece_tokens and piece_end - position > 1:
            shorter = max(1, (piece_end - position) * piece_tokens // tokens)
            piece_end = _cut(text, position, position + min(shorter, piece_end - position - 1), end)
            tokens = count_tokens(text[position:piece_end])
        yield _Unit(position, piece_end, tokens)
        chars_per_token = max(1.0, (piece_end - position) / max(1, tokens))
        position = _skip_space(text, piece_end, end)


_LAST_SPACE = re.compile(r".*\S\s", re.DOTALL)


def _cut(text: str, start: int, limit: int, end: int) -> int:
    """End of a piece starting at `start`: `end` if reachable, else the last whitespace
    before `limit`, else `limit` itself (a cut between two characters)."""
    if limit >= end:
        return end
    match = _LAST_SPACE.match(text, start, limit + 1)
    if match is None:
        return limit
    piece_end = match.end() - 1
    while piece_end > start and text[piece_end - 1].isspace():
        piece_end -= 1
    return piece_end


def _skip_space(text: str, position: int, end: int) -> int:
    while position < end and text[position].isspace():
        position += 1
    return position


def _pack(
    text: str, units: list[_Unit], max_tokens: int, overlap_tokens: int
) -> list[tuple[int, int]]:
    """Greedy packing of units into (start_char, end_char) chunk spans, with overlap."""
    estimate = _Estimator(text, units)
    spans: list[tuple[int, int]] = []
    first, first_new = 0, 0  # first unit of the chunk; first unit no chunk has yet
    while first_new < len(units):
        while first < first_new and estimate(first, first_new + 1) > max_tokens:
            first += 1  # the overlap must leave room for at least one new unit
        last = first_new + 1
        while last < len(units) and estimate(first, last + 1) <= max_tokens:
            last += 1
        first, last = _fit_exactly(text, units, first, first_new, last, max_tokens)
        spans.append((units[first].start, units[last - 1].end))
        first, first_new = _overlap_start(estimate, first, last, overlap_tokens), last
    return spans


class _Estimator:
    """Tokens of the text spanning units[first:last], from per-unit counts in O(1).

    Sentences joined by one space tokenize about like the sentences apart (cl100k
    attaches the space to a following word or punctuation mark, not to a digit); any
    other separator ("\\n") counts as one token. _fit_exactly checks the real count.
    """

    def __init__(self, text: str, units: list[_Unit]) -> None:
        self._tokens = [0]
        self._separators = [0, 0]
        for unit in units:
            self._tokens.append(self._tokens[-1] + unit.tokens)
        for before, after in zip(units, units[1:], strict=False):
            joined_by_space = text[before.end : after.start] == " "
            gap = 0 if joined_by_space and not text[after.start].isdigit() else 1
            self._separators.append(self._separators[-1] + gap)

    def __call__(self, first: int, last: int) -> int:
        units = self._tokens[last] - self._tokens[first]
        return units + self._separators[last] - self._separators[first + 1]


def _fit_exactly(
    text: str, units: list[_Unit], first: int, first_new: int, last: int, max_tokens: int
) -> tuple[int, int]:
    """Drop units until the real token count fits: new units from the end, then overlap."""
    while count_tokens(text[units[first].start : units[last - 1].end]) > max_tokens:
        if last - 1 > first_new:
            last -= 1
        elif first < first_new:
            first += 1
        else:
            break  # a single unit, which fits by construction
    return first, last


def _overlap_start(estimate: _Estimator, first: int, last: int, overlap_tokens: int) -> int:
    """First unit of the next chunk: the trailing units of this one that fit the overlap,
    never all of them (so every chunk brings something new)."""
    start = last
    while start - 1 > first and estimate(start - 1, last) <= overlap_tokens:
        start -= 1
    return start


class _LineIndex:
    """Document.lines_of in O(log n) per call, for documents with thousands of chunks."""

    def __init__(self, doc: Document) -> None:
        self._line_numbers = doc.line_numbers
        self._breaks = [match.start() for match in re.finditer("\n", doc.text)]

    def rows_of(self, start_char: int, end_char: int) -> range:
        """Indexes of the text lines that text[start_char:end_char] touches."""
        first = bisect_left(self._breaks, start_char)
        last = bisect_left(self._breaks, max(start_char, end_char - 1))
        return range(first, last + 1)

    def lines_of(self, start_char: int, end_char: int) -> tuple[int, ...]:
        """File line numbers of every text line that text[start_char:end_char] touches."""
        rows = self.rows_of(start_char, end_char)
        return tuple(self._line_numbers[rows.start : rows.stop])


def _make_chunk(doc: Document, index: int, start: int, end: int, lines: _LineIndex) -> Chunk:
    line_map = lines.lines_of(start, end)
    rows = lines.rows_of(start, end)
    # none for a format without locations (or, defensively, locations that do not fit)
    located = doc.locations[rows.start : rows.stop] if len(doc.locations) >= rows.stop else []
    return Chunk(
        chunk_id=chunk_id(doc.path, doc.content_hash, index, start, end),
        path=doc.path,
        index=index,
        text=doc.text[start:end],
        start_char=start,
        end_char=end,
        first_line=line_map[0],
        last_line=line_map[-1],
        language=doc.language,
        content_hash=doc.content_hash,
        url=doc.url,
        title=doc.title,
        line_map=line_map,
        ocr=_read_by_ocr(doc, line_map),
        page_map=tuple(where.page or 0 for where in located),
        section_map=tuple(where.section or "" for where in located),
        label_map=tuple(where.label for where in located),
    )


def _read_by_ocr(doc: Document, line_map: tuple[int, ...]) -> bool:
    """Whether any of these file lines came from OCR (rag.ingest notes which did)."""
    ranges = doc.metadata.get("ocr_lines") or ()
    return any(first <= line_map[-1] and line_map[0] <= last for first, last in ranges)


def chunk_id(path: str, content_hash: str, index: int, start: int, end: int) -> str:
    """Stable id: the same file content at the same path gives the same ids."""
    key = f"{path}\x00{content_hash}\x00{index}\x00{start}\x00{end}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
