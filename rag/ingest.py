"""Files -> Documents: find the supported files, read and decode them, drop the junk.

Here: scanning the folder and extracting text from each format. Bytes to text is
rag.decoding, the cleaning of scraped pages rag.cleaning. Every bad file ends in an
`IngestError` whose message is a one-line reason, never in a parser's own exception,
so one broken file cannot stop an indexing run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.cleaning import clean_text
from rag.config import OCR_IMAGE_EXTENSIONS, SUPPORTED_EXTENSIONS
from rag.decoding import declared_charset, decode_text
from rag.formats import FORMAT_READERS, open_zip, read_format
from rag.language import detect_language
from rag.locations import Extracted, Lines, Sections, join_pages, markdown_locations
from rag.ocr import OcrOptions, ocr_image, ocr_textless_pages
from rag.records import Document, IngestError, Location, Skipped, one_line

TITLE_CHARS = 120
# A parser's error, as part of a skip reason, is cut to this many characters.
REASON_CHARS = 100


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
        reason = f"folder unreadable: {one_line(exc, REASON_CHARS)}"
        skipped.append(Skipped(_relative(folder, docs_dir), reason))
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
        return f"unreadable: {one_line(exc, REASON_CHARS)}"


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


# The text of a file before cleaning, what its format told about it, and where each of
# its lines is (page, heading path, row): shared with the readers of rag.formats.
_Extracted = Extracted


def read_document(
    path: Path, docs_dir: Path, max_file_bytes: int, ocr: OcrOptions | None = None
) -> Document:
    """Read, decode and clean one file; raise IngestError with the reason if unusable.

    Images and PDF pages without text are read by OCR, in RAG_OCR_LANGUAGES unless
    `ocr` says otherwise."""
    suffix = path.suffix.lower()
    problem = _file_problem(suffix, 0, max_file_bytes)
    if problem:
        raise IngestError(problem)
    raw = _read_bytes(path, docs_dir, max_file_bytes)
    extracted = _extract(suffix, raw, ocr or OcrOptions())
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
        locations=_kept_locations(extracted, cleaned.line_numbers),
    )


def extract_text(path: Path, max_file_bytes: int) -> str:
    """A file's text before cleaning, as read_document reads it (for `rag explain`)."""
    suffix = path.suffix.lower()
    problem = _file_problem(suffix, 0, max_file_bytes)
    if problem:
        raise IngestError(problem)
    raw = _read_bytes(path, path.parent, max_file_bytes)
    return _extract(suffix, raw, OcrOptions()).text


def _kept_locations(extracted: _Extracted, line_numbers: list[int]) -> list[Location]:
    """The locations of the lines the cleaner kept (line_numbers are 1-based)."""
    if len(extracted.locations) != extracted.text.count("\n") + 1:
        return []  # a reader that gave none (or, defensively, a count that does not fit)
    return [extracted.locations[number - 1] for number in line_numbers]


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
        raise IngestError(f"unreadable: {one_line(exc, REASON_CHARS)}") from exc
    if len(raw) > max_file_bytes:
        raise IngestError(_file_problem(path.suffix, len(raw), max_file_bytes) or "too large")
    if not raw:
        raise IngestError("empty file")
    return raw


def _extract(suffix: str, raw: bytes, ocr: OcrOptions) -> _Extracted:
    if suffix == ".pdf":
        return _extract_pdf(raw, ocr)
    if suffix in OCR_IMAGE_EXTENSIONS:
        return _extract_image(raw, ocr)
    if suffix == ".docx":
        return _extract_docx(raw)
    if suffix in FORMAT_READERS:
        return read_format(suffix, raw, _extract_html)
    if suffix in (".html", ".htm"):
        text, encoding = decode_text(raw, declared=declared_charset(raw))
        extracted = _extract_html(text)
        extracted.metadata["encoding"] = encoding
        return extracted
    text, encoding = decode_text(raw)
    if not text.strip():
        raise IngestError("only whitespace, no text")
    located = markdown_locations(text) if suffix == ".md" else []
    return _Extracted(text, metadata={"encoding": encoding}, locations=located)


def _title(first_line: str) -> str:
    title = " ".join(first_line.lstrip("#").split())  # "# Heading" in Markdown
    if len(title) <= TITLE_CHARS:
        return title
    cut = title.rfind(" ", 0, TITLE_CHARS)
    return title[: cut if cut > TITLE_CHARS // 2 else TITLE_CHARS - 1] + "…"


# ----------------------------------------------------------------------------- formats


def _extract_pdf(raw: bytes, ocr: OcrOptions) -> _Extracted:
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
        raise IngestError(f"corrupt PDF ({one_line(exc, REASON_CHARS)})") from exc
    ocr_lines = ocr_textless_pages(raw, pages, ocr)  # scanned pages
    paged = join_pages(pages)  # the text of tidy_text("\n".join(pages)), line by line
    if not paged.has_text():
        raise IngestError("PDF has no text, and OCR found none on its pages")
    return paged.extracted(metadata={"pages": len(pages), **_ocr_metadata(ocr_lines)})


def _extract_image(raw: bytes, ocr: OcrOptions) -> _Extracted:
    pages = ocr_image(raw, ocr)  # one text per frame: a TIFF may hold many pages
    paged = join_pages(pages)
    if not paged.has_text():
        raise IngestError("OCR found no text in the image")
    metadata = {"pages": len(pages), **_ocr_metadata([[1, len(paged.lines)]])}
    if len(pages) == 1:  # "p. 1" of a photo says nothing: cited by line
        return _Extracted("\n".join(paged.lines), metadata=metadata)
    return paged.extracted(metadata=metadata)


def _ocr_metadata(lines: list[list[int]]) -> dict[str, Any]:
    """Document.metadata["ocr_lines"]: the [first, last] file lines read by OCR, so that
    chunks and citations from them say so (OCR text may hold misread words)."""
    return {"ocr_lines": lines} if lines else {}


def _opens_without_password(reader: Any) -> bool:
    """Many PDFs are encrypted only to restrict printing or copying: try no password."""
    try:
        return bool(reader.decrypt(""))
    except Exception:  # e.g. AES without the optional cryptography package
        return False


def _extract_docx(raw: bytes) -> _Extracted:
    import docx

    open_zip(raw, ".docx").close()  # password, renamed .doc, ZIP bomb: as for .pptx/.xlsx
    located, sections = Lines(), Sections(numbered=True)
    try:
        for text, level in _docx_blocks(docx.Document(io.BytesIO(raw))):
            where = sections.heading(level, text) if level else sections.paragraph(text)
            located.add(text, where)
    except Exception as exc:  # zipfile, lxml and python-docx errors alike
        raise IngestError(f"corrupt .docx file ({_docx_damage(raw)})") from exc
    if not located.has_text():
        raise IngestError("document has no text")
    return located.extracted()


# The content type python-docx requires of the main part (a .docm or .dotx is refused).
_WORD_MAIN_TYPE = (
    b"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
)


def _docx_damage(raw: bytes) -> str:
    """What is wrong with a .docx python-docx could not read, in a reader's words: the
    parsers' own messages name their internals ("'_Element' object has no attribute
    'overrides'")."""
    with open_zip(raw, ".docx") as archive:
        try:
            types = archive.read("[Content_Types].xml")
        except KeyError:
            types = b""
        except Exception:  # zipfile and zlib errors on a damaged member
            return "damaged ZIP container"
    return "damaged Word document" if _WORD_MAIN_TYPE in types else "not a Word document"


def _docx_blocks(document: Any) -> Iterator[tuple[str, int | None]]:
    """Paragraphs (with their heading level, if headings) and table rows in document
    order; a row's cells joined by " | "."""
    from docx.table import Table

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            yield from ((row, None) for row in _table_rows(block))
        else:
            yield block.text, _heading_level(block)


def _heading_level(paragraph: Any) -> int | None:
    """1-9 for Word's built-in "Heading N" styles ("Title" counts as 1), else None."""
    name = (paragraph.style.name if paragraph.style is not None else "") or ""
    if name == "Title":
        return 1
    level = name.removeprefix("Heading ")
    return int(level) if level != name and level.isdigit() else None


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
        text = _html_text(soup)
    except Exception as exc:  # lxml copes with almost anything; be safe anyway
        raise IngestError(f"unreadable HTML ({one_line(exc, REASON_CHARS)})") from exc
    located, sections = Lines(), Sections(numbered=False)
    for block in text.split(_BLOCK_BREAK):
        line, level = _heading_mark(" ".join(block.split()))
        if line:
            located.add(line, sections.heading(level, line) if level else sections.paragraph(line))
    if not located.has_text():
        raise IngestError("HTML page has no text")
    return located.extracted(url=url, title=title)


_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_HEADING_MARK = "\x01"  # a control character: decode_text removed any the page had


def _html_text(soup: Any) -> str:
    """soup.get_text(), with _BLOCK_BREAK around each block and for each <br>, and each
    heading's text begun by _HEADING_MARK and its level (for the heading path).

    The tree is walked with a stack of its own and left as it is: inserting a string
    next to a tag costs bs4 a walk over all the tag holds (quadratic on a page nested
    thousands deep), and recursion would overflow Python's stack there."""
    from bs4 import NavigableString

    wanted = soup.interesting_string_types  # get_text's: no comments, no scripts
    parts: list[str] = []
    pending: list[Any] = list(reversed(soup.contents))
    while pending:
        node = pending.pop()
        if type(node) is str:  # a block's closing break, pushed below
            parts.append(node)
        elif isinstance(node, NavigableString):
            if type(node) in wanted:
                parts.append(node)
        elif node.name == "br":
            parts.append(_BLOCK_BREAK)
        else:
            if node.name in _HTML_BLOCKS:
                parts.append(_BLOCK_BREAK)
                pending.append(_BLOCK_BREAK)  # popped once the block's content is out
            if node.name in _HTML_HEADINGS:
                parts.append(_HEADING_MARK + node.name[1])
            pending.extend(reversed(node.contents))
    return "".join(parts)


def _heading_mark(line: str) -> tuple[str, int | None]:
    """The line without its heading mark, and the heading level the mark gave."""
    if line.startswith(_HEADING_MARK) and line[1:2].isdigit():
        return line[2:].strip(), int(line[1])
    return line, None


def _drop_page_furniture(soup: Any) -> None:
    """Remove the tags of _HTML_DROPPED and _HTML_DROPPED_ALSO that do not hold the
    article, walking down from the top with a stack that knows whether it is inside an
    <article>: asking each tag for its parents or its content would walk the tree once
    a tag, quadratic on a page nested thousands deep."""
    from bs4 import Tag

    holders = _article_holders(soup)
    pending: list[tuple[Any, bool]] = [(soup, False)]  # a tag; is it or an ancestor an <article>?
    while pending:
        tag, in_article = pending.pop()
        for child in [node for node in tag.contents if isinstance(node, Tag)]:
            if child.name in _HTML_FURNITURE and not _holds_the_article(
                child, in_article, id(child) in holders
            ):
                child.decompose()
            else:
                pending.append((child, in_article or child.name == "article"))


_HTML_FURNITURE = frozenset(_HTML_DROPPED + _HTML_DROPPED_ALSO)


def _article_holders(soup: Any) -> set[int]:
    """The id() of every tag with an <article> or <main> inside (bs4 hashes a tag by
    its whole markup, so the tags themselves would be slow keys)."""
    holders: set[int] = set()
    for found in soup.find_all(("article", "main")):
        parent = found.parent
        while parent is not None and id(parent) not in holders:  # each tag marked once
            holders.add(id(parent))
            parent = parent.parent
    return holders


def _holds_the_article(tag: Any, in_article: bool, holds_one: bool) -> bool:
    # An article's own <header> holds its headline, not site navigation; and some sites
    # (ASP.NET) wrap the whole page, article included, in one <form>.
    if tag.name in ("header", "footer") and in_article:
        return True
    return tag.name in ("form", "header", "footer") and holds_one


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
