"""Files -> Documents: find the supported files, read and decode them, drop the junk.

Every bad file ends in an `IngestError` whose message is a one-line reason, never in a
parser's own exception, so one broken file cannot stop an indexing run.
"""

from __future__ import annotations

import codecs
import datetime
import hashlib
import io
import logging
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.config import SUPPORTED_EXTENSIONS
from rag.language import detect_language
from rag.records import Document, Skipped, UserError

TITLE_CHARS = 120


class IngestError(UserError):
    """A file that cannot be indexed; the message is the one-line reason."""


# ---------------------------------------------------------------------------- scanning


def scan_folder(docs_dir: Path, max_file_bytes: int) -> tuple[list[Path], list[Skipped]]:
    """Supported files under `docs_dir` (recursive, sorted) and the files left out, with why.

    Hidden files and folders are ignored. Symbolic links are followed only to files
    inside `docs_dir`; links to folders are not followed (their targets inside the
    folder are scanned where they are), which also rules out link cycles.
    """
    if not docs_dir.is_dir():
        raise IngestError(f"documents folder not found: {docs_dir}")
    root = docs_dir.resolve()
    files: list[Path] = []
    skipped: list[Skipped] = []
    pending = [docs_dir]
    while pending:
        folder = pending.pop()
        for entry in _visible_entries(folder, docs_dir, skipped):
            path = Path(entry.path)
            reason = _entry_problem(entry, root, max_file_bytes)
            if reason == _FOLDER:
                pending.append(path)
            elif reason:
                skipped.append(Skipped(_relative(path, docs_dir), reason))
            else:
                files.append(path)
    files.sort(key=lambda path: _relative(path, docs_dir))
    skipped.sort(key=lambda skip: skip.path)
    return files, skipped


_FOLDER = "<folder>"  # _entry_problem's answer for a folder to scan


def _visible_entries(
    folder: Path, docs_dir: Path, skipped: list[Skipped]
) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if not e.name.startswith(".")), key=_name)
    except OSError as exc:
        skipped.append(Skipped(_relative(folder, docs_dir), f"folder unreadable: {_short(exc)}"))
        return []


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _entry_problem(entry: os.DirEntry[str], root: Path, max_file_bytes: int) -> str | None:
    """Why `entry` is not indexed, _FOLDER for a folder to scan, None for a good file."""
    try:
        if entry.is_symlink():
            link_problem = _link_problem(Path(entry.path), root)
            if link_problem:
                return link_problem
        if entry.is_dir():
            return _FOLDER if not entry.is_symlink() else "link to a folder: not followed"
        if not entry.is_file():
            return "not a regular file"
        return _file_problem(Path(entry.name).suffix, entry.stat().st_size, max_file_bytes)
    except OSError as exc:
        return f"unreadable: {_short(exc)}"


def _link_problem(path: Path, root: Path) -> str | None:
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 reports a link cycle this way
        return "symbolic link loop"
    except OSError:
        return "broken symbolic link"
    if not target.is_relative_to(root):
        return "symbolic link to outside the documents folder"
    if path.is_dir() and path.parent.resolve().is_relative_to(target):
        return "symbolic link loop (points to a folder that contains it)"
    return None


def _file_problem(suffix: str, size: int, max_file_bytes: int) -> str | None:
    if suffix.lower() not in SUPPORTED_EXTENSIONS:
        return f"unsupported file type ({suffix.lower() or 'no extension'})"
    if size > max_file_bytes:
        size_text, limit_text = _megabytes(size), _megabytes(max_file_bytes)
        if size_text == limit_text:  # just over: only the bytes tell them apart
            size_text, limit_text = f"{size:,} bytes", f"{max_file_bytes:,} bytes"
        else:
            size_text, limit_text = f"{size_text} MB", f"{limit_text} MB"
        return f"file too large ({size_text}, limit {limit_text})"
    return None


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f}"


def _relative(path: Path, docs_dir: Path) -> str:
    try:
        return path.relative_to(docs_dir).as_posix()
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(docs_dir.resolve()).as_posix()
    except ValueError:
        return path.name


# ----------------------------------------------------------------------------- reading


@dataclass
class _Extracted:
    """The text of a file before cleaning, plus what its format told about it."""

    text: str
    url: str | None = None
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def read_document(path: Path, docs_dir: Path, max_file_bytes: int) -> Document:
    """Read, decode and clean one file; raise IngestError with the reason if unusable."""
    suffix = path.suffix.lower()
    problem = _file_problem(suffix, 0, max_file_bytes)
    if problem:
        raise IngestError(problem)
    raw = _read_bytes(path, docs_dir, max_file_bytes)
    extracted = _extract(suffix, raw)
    cleaned = clean_text(extracted.text)
    if not cleaned.lines:
        raise IngestError("no text left after removing boilerplate lines")
    text = "\n".join(cleaned.lines)
    return Document(
        path=_relative(path, docs_dir),
        text=text,
        line_numbers=cleaned.line_numbers,
        language=detect_language(text),
        content_hash=hashlib.sha256(raw).hexdigest(),
        url=extracted.url or cleaned.url,
        title=_title(extracted.title or cleaned.lines[0]),
        metadata={"format": suffix[1:], **extracted.metadata, **cleaned.metadata},
    )


def _read_bytes(path: Path, docs_dir: Path, max_file_bytes: int) -> bytes:
    try:
        if not path.resolve(strict=True).is_relative_to(docs_dir.resolve()):
            raise IngestError("outside the documents folder (symbolic link?)")
        size = path.stat().st_size
        if not path.is_file():
            raise IngestError("not a regular file")
        problem = _file_problem(path.suffix, size, max_file_bytes)
        if problem:
            raise IngestError(problem)
        with path.open("rb") as handle:
            raw = handle.read(max_file_bytes + 1)  # the file may have grown since stat
    except (OSError, RuntimeError) as exc:
        raise IngestError(f"unreadable: {_short(exc)}") from exc
    if len(raw) > max_file_bytes:
        raise IngestError(_file_problem(path.suffix, len(raw), max_file_bytes) or "too large")
    if not raw:
        raise IngestError("empty file")
    return raw


def _extract(suffix: str, raw: bytes) -> _Extracted:
    if suffix == ".pdf":
        return _extract_pdf(raw)
    if suffix == ".docx":
        return _extract_docx(raw)
    if suffix in (".html", ".htm"):
        text, encoding = decode_text(raw, declared=_declared_charset(raw))
        extracted = _extract_html(text)
        extracted.metadata["encoding"] = encoding
        return extracted
    text, encoding = decode_text(raw)
    if not text.strip():
        raise IngestError("only whitespace, no text")
    return _Extracted(text, metadata={"encoding": encoding})


def _title(first_line: str) -> str:
    title = " ".join(first_line.lstrip("#").split())  # "# Heading" in Markdown
    if len(title) <= TITLE_CHARS:
        return title
    cut = title.rfind(" ", 0, TITLE_CHARS)
    return title[: cut if cut > TITLE_CHARS // 2 else TITLE_CHARS - 1] + "…"


def _short(exc: BaseException) -> str:
    """A one-line, bounded description of a parser's exception."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else type(exc).__name__
    return message[:100]


# ---------------------------------------------------------------------------- decoding

# UTF-32 first: its little-endian BOM starts with the UTF-16 one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Renamed binaries, named in the error so the user knows what the file really is.
_MAGIC_NUMBERS = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive or Office file"),
    (b"%PDF-", "a PDF file"),
    (b"\x7fELF", "a program"),
    (b"\x1f\x8b", "a gzip archive"),
)

# C0 control bytes that never occur in text (tab, line feed, form feed... do).
_CONTROL_BYTES = bytes(set(range(32)) - set(b"\t\n\v\f\r"))
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A few stray NULs are removed; more than 1 % control bytes means binary data.
_MAX_CONTROL_RATIO = 0.01
_MAX_STRAY_CONTROLS = 4
_SAMPLE_CHARS = 100_000


def decode_text(raw: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode file bytes to text with "\\n" line ends; return (text, encoding used).

    Order: byte-order mark, UTF-16 without one (NUL pattern; tested before UTF-8 because
    UTF-16 of ASCII text is valid UTF-8 full of NULs), strict UTF-8, the `declared`
    encoding (an HTML meta charset), then the cleanest reading among cp1252, cp1251,
    koi8-r and charset-normalizer's best guess. Stray control characters (NULs) are
    removed; binary content raises IngestError.
    """
    _reject_known_binary(raw)
    text, encoding = _decode(raw, declared)
    _reject_unlikely_text(text)
    return _tidy(text), encoding


def _tidy(text: str) -> str:
    """ "\n" line ends (so line numbers match an editor's) and no control characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_CHARS.sub("", text)


def _decode(raw: bytes, declared: str | None) -> tuple[str, str]:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return _decode_strict(raw[len(bom) :], encoding), encoding
    utf16 = _utf16_without_bom(raw)
    if utf16:
        return utf16
    _reject_binary(raw)
    declared = _WHATWG_ALIASES.get(declared.lower(), declared) if declared else None
    for encoding in ("utf-8", declared):
        if encoding:
            try:
                return raw.decode(encoding), encoding
            except (UnicodeDecodeError, LookupError):
                pass
    return _decode_legacy(raw)


# As browsers do: pages labelled Latin-1 or ASCII are read as cp1252 (its superset).
_WHATWG_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "us-ascii": "cp1252"}


def _decode_strict(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise IngestError(f"invalid {encoding} text at byte {exc.start}") from exc


def _reject_known_binary(raw: bytes) -> None:
    for magic, kind in _MAGIC_NUMBERS:
        if raw.startswith(magic):
            raise IngestError(f"binary content ({kind}), not text")


def _utf16_without_bom(raw: bytes) -> tuple[str, str] | None:
    """UTF-16 text of mostly ASCII or Latin letters has a NUL in every other byte."""
    sample = raw[:4096]
    half = len(sample) // 2
    if len(raw) % 2 or half < 2:
        return None
    even_nuls, odd_nuls = sample[0 : 2 * half : 2].count(0), sample[1 : 2 * half : 2].count(0)
    if odd_nuls >= 0.1 * half and even_nuls <= 0.01 * half:
        encoding = "utf-16-le"
    elif even_nuls >= 0.1 * half and odd_nuls <= 0.01 * half:
        encoding = "utf-16-be"
    else:
        return None
    try:
        return raw.decode(encoding), encoding
    except UnicodeDecodeError:
        return None


def _reject_binary(raw: bytes) -> None:
    controls = len(raw) - len(raw.translate(None, _CONTROL_BYTES))
    if controls > _MAX_STRAY_CONTROLS and controls > _MAX_CONTROL_RATIO * len(raw):
        raise IngestError("binary content, not text")


def _reject_unlikely_text(text: str) -> None:
    """Catch binary data that still decoded (after a chance BOM, or as a legacy code page)."""
    sample = text[:_SAMPLE_CHARS]
    odd = sum(1 for char in sample if _is_unlikely_char(char))
    if odd > _MAX_STRAY_CONTROLS and odd > _MAX_CONTROL_RATIO * len(sample):
        raise IngestError("binary content, not text")


def _is_unlikely_char(char: str) -> bool:
    if char in "\t\n\v\f\r" or char.isprintable():
        return False
    # Unassigned, private-use, surrogate, control, or the replacement character.
    return char == "\ufffd" or unicodedata.category(char) in ("Cn", "Co", "Cs", "Cc")


def _declared_charset(raw: bytes) -> str | None:
    match = re.search(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", raw[:4096], re.I)
    return match.group(1).decode("ascii") if match else None


# ------------------------------------------------------------- legacy 8-bit encodings

# Accented letters of the Western European languages (Latin-1 and cp1252). A cp1250
# or mac-roman misreading of Norwegian gives letters outside it ("sřndag" for "søndag").
_COMMON_ACCENTED = frozenset("àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœšžÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝŒŠŽŸ")
_LETTER_RUN = re.compile(r"[^\W\d_]+")
# Tried before charset-normalizer's guess, which wins only if it reads strictly cleaner.
_USUAL_ENCODINGS = ("cp1252", "cp1251", "koi8_r")


def _decode_legacy(raw: bytes) -> tuple[str, str]:
    """The cleanest of cp1252, cp1251, koi8-r and charset-normalizer's best guess.

    charset-normalizer is reliable on a paragraph or more; on a line or two it may pick
    a code page no one uses ("Økonomisk" read as cp775 gives "žkonomisk"). The corpus'
    8-bit files are Russian (cp1251, koi8-r) or German/Norwegian (cp1252, which reads
    Latin-1 text the same), so those are preferred, scored by _mojibake_score. Trade-off:
    Central European 8-bit files (cp1250) may come out as cp1252.
    """
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    guessed = [best.encoding] if best else []
    candidates = dict.fromkeys([*_USUAL_ENCODINGS, *guessed, "latin-1"])
    decodings: list[tuple[int, int, str, str]] = []
    for order, encoding in enumerate(candidates):
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        decodings.append((_mojibake_score(text[:_SAMPLE_CHARS]), order, text, encoding))
    if not decodings:
        raise IngestError("unknown text encoding")
    _, _, text, encoding = min(decodings)
    return text, encoding


def _mojibake_score(text: str) -> int:
    """Words that look like a wrong code page, plus symbols and controls that do.

    The corpus is written in Latin or Cyrillic script, so letters of any other script in
    an 8-bit file count as a misreading too.
    """
    score = sum(1 for char in text if _is_mojibake_symbol(char))
    for word in _LETTER_RUN.findall(text):
        if not word.isascii():
            score += _is_mojibake_word(word)
    return score


def _is_mojibake_symbol(char: str) -> bool:
    if char.isascii() or char in "©®°№§±×€£•–—…«»„“”‘’·":
        return False
    return unicodedata.category(char) in ("So", "Sk", "Co", "Cn", "Cc")


def _is_mojibake_word(word: str) -> bool:
    cyrillic = sum(1 for char in word if "\u0400" <= char <= "\u04ff")
    if cyrillic:
        # Mixed scripts, or inverted case as in cp1251 read as koi8-r ("пРИВЕТ").
        return cyrillic < len(word) or any(
            a.islower() and b.isupper() for a, b in zip(word, word[1:], strict=False)
        )
    accented = [char for char in word if not char.isascii()]
    if any(char not in _COMMON_ACCENTED for char in accented):
        return True
    # Latin words are mostly ASCII; Cyrillic read as cp1252 is not ("Ïðèâåò").
    return len(word) >= 3 and len(accented) * 3 >= len(word) * 2


# ----------------------------------------------------------------------------- formats


def _extract_pdf(raw: bytes) -> _Extracted:
    from pypdf import PdfReader

    # pypdf logs its repairs of damaged files ("EOF marker not found") to stderr; the
    # skip reason we report says it once, in one line.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not _opens_without_password(reader):
            raise IngestError("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except IngestError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        raise IngestError(f"corrupt PDF ({_short(exc)})") from exc
    text = _tidy("\n".join(pages))
    if not text.strip():
        raise IngestError("PDF has no extractable text (scanned images?)")
    return _Extracted(text, metadata={"pages": len(pages)})


def _opens_without_password(reader: Any) -> bool:
    """Many PDFs are encrypted only to restrict printing or copying: try no password."""
    try:
        return bool(reader.decrypt(""))
    except Exception:  # e.g. AES without the optional cryptography package
        return False


def _extract_docx(raw: bytes) -> _Extracted:
    import docx

    try:
        lines = list(_docx_lines(docx.Document(io.BytesIO(raw))))
    except Exception as exc:  # zipfile, lxml and python-docx errors alike
        raise IngestError(f"corrupt .docx file ({_short(exc)})") from exc
    text = _tidy("\n".join(lines))
    if not text.strip():
        raise IngestError("document has no text")
    return _Extracted(text)


def _docx_lines(document: Any) -> Iterator[str]:
    """Paragraphs and table rows in document order; a row's cells joined by " | "."""
    from docx.table import Table

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            yield from _table_rows(block)
        else:
            yield block.text


def _table_rows(table: Any) -> Iterator[str]:
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # a merged cell is listed once per grid column
                continue
            previous = cell._tc
            cells.append(" ".join(cell.text.split()))
        yield " | ".join(cell for cell in cells if cell)


_HTML_DROPPED = ("script", "style", "nav", "header", "footer", "aside", "form", "noscript")
_HTML_DROPPED_ALSO = ("template", "iframe", "svg", "head")
_HTML_BLOCKS = (
    "address", "article", "blockquote", "caption", "dd", "details", "div", "dl", "dt",
    "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol",
    "p", "pre", "section", "summary", "table", "td", "th", "tr", "ul",
)  # fmt: skip
_BLOCK_BREAK = "\x00"  # decode_text removed every NUL, so this one marks a block edge


def _extract_html(markup: str) -> _Extracted:
    from bs4 import BeautifulSoup

    try:
        soup = BeautifulSoup(markup, "lxml")
        url, title = _html_url(soup), _html_title(soup)
        _drop_page_furniture(soup)
        for tag in soup.find_all(_HTML_BLOCKS):
            tag.insert_before(_BLOCK_BREAK)
            tag.insert_after(_BLOCK_BREAK)
        for tag in soup.find_all("br"):
            tag.replace_with(_BLOCK_BREAK)
        text = soup.get_text()
    except Exception as exc:  # lxml copes with almost anything; be safe anyway
        raise IngestError(f"unreadable HTML ({_short(exc)})") from exc
    lines = (" ".join(block.split()) for block in text.split(_BLOCK_BREAK))
    text = "\n".join(line for line in lines if line)
    if not text:
        raise IngestError("HTML page has no text")
    return _Extracted(text, url=url, title=title)


def _drop_page_furniture(soup: Any) -> None:
    for tag in soup.find_all(_HTML_DROPPED + _HTML_DROPPED_ALSO):
        if not tag.decomposed and not _holds_the_article(tag):  # inside one dropped before
            tag.decompose()


def _holds_the_article(tag: Any) -> bool:
    # An article's own <header> holds its headline, not site navigation; and some sites
    # (ASP.NET) wrap the whole page, article included, in one <form>.
    if tag.name in ("header", "footer") and tag.find_parent("article"):
        return True
    return tag.name in ("form", "header", "footer") and tag.find(("article", "main")) is not None


def _html_url(soup: Any) -> str | None:
    link = soup.find("link", rel="canonical", href=True)
    if link:
        return str(link["href"]).strip() or None
    meta = soup.find("meta", attrs={"property": "og:url", "content": True})
    if meta:
        return str(meta["content"]).strip() or None
    return None


def _html_title(soup: Any) -> str:
    for tag in (soup.title, soup.find("h1")):
        if tag is not None:
            title = " ".join(tag.get_text().split())
            if title:
                return title
    return ""


# ---------------------------------------------------------------------------- cleaning

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
