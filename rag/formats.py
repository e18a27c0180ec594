"""Readers of the office formats: slides, spreadsheets, CSV, OpenDocument text, RTF.

Each reader turns a file's bytes into an `Extracted` text with one `Location` per line
(slide, sheet and row, heading path and paragraph), or raises IngestError with a
one-line reason: a corrupt, encrypted or empty file never raises a parser's own
exception. EPUB and e-mail, which hold HTML, are in rag.formats_markup; the HTML
extractor itself stays in rag.ingest and is handed in.
"""

from __future__ import annotations

import csv
import datetime
import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rag.config import OFFICE_EXTENSIONS
from rag.decoding import decode_text
from rag.locations import Extracted, Lines, Sections, short_label
from rag.records import IngestError, Location, one_line

HtmlReader = Callable[[str], Extracted]  # rag.ingest's HTML extractor
REASON_CHARS = 100  # a parser's error, as part of a skip reason, is cut to this
# An Office file is a ZIP: refuse one that would unpack to more than this (a ZIP bomb
# would fill the memory long before any size limit on the file itself is reached).
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
# OLE2 compound files: password-protected .xlsx/.pptx (and legacy .xls/.ppt/.doc).
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
CELL_SEPARATOR = " | "


def read_format(suffix: str, raw: bytes, html: HtmlReader) -> Extracted:
    """The text and line locations of a file of one of FORMAT_READERS' formats."""
    from rag.formats_markup import read_eml, read_epub

    readers: dict[str, Callable[[bytes], Extracted]] = {
        ".pptx": read_pptx,
        ".xlsx": read_xlsx,
        ".csv": read_csv,
        ".odt": read_odt,
        ".rtf": read_rtf,
        ".epub": lambda data: read_epub(data, html),
        ".eml": lambda data: read_eml(data, html),
    }
    return readers[suffix](raw)


FORMAT_READERS = OFFICE_EXTENSIONS  # the suffixes read_format reads


# --------------------------------------------------------------------- ZIP containers


def open_zip(raw: bytes, kind: str) -> zipfile.ZipFile:
    """The ZIP container of an Office, OpenDocument or EPUB file, checked for what
    makes the usual unreadable ones: a password, a renamed legacy file, damage."""
    if raw.startswith(OLE_MAGIC):
        if "EncryptionInfo".encode("utf-16-le") in raw:
            raise IngestError(f"encrypted {kind} file (password-protected)")
        raise IngestError(f"not a {kind} file (an older binary Office file renamed?)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise IngestError(f"corrupt {kind} file (not a valid ZIP container)") from exc
    if unpacked > MAX_UNPACKED_BYTES:
        raise IngestError(f"{kind} file unpacks to {unpacked // 2**20} MB (limit 512 MB)")
    return archive


# Errors that say where a parser tripped over malformed content, not what is wrong
# with the file ("'_Element' object has no attribute 'overrides'"): not shown.
_PARSER_INTERNALS = (AttributeError, TypeError, KeyError, IndexError, AssertionError, NameError)


def corrupt(kind: str, exc: BaseException) -> IngestError:
    """A file the parser could not read: its message when it names the problem (a bad
    CRC, a truncated stream), else a reader's words."""
    if isinstance(exc, _PARSER_INTERNALS):
        return IngestError(f"corrupt {kind} file (its content is not laid out as a {kind} file)")
    return IngestError(f"corrupt {kind} file ({one_line(exc, REASON_CHARS)})")


# -------------------------------------------------------------------------- PowerPoint


def read_pptx(raw: bytes) -> Extracted:
    """Each slide's text (its shapes, tables and notes) located on its slide number."""
    from pptx import Presentation

    open_zip(raw, ".pptx").close()
    located = Lines()
    try:
        presentation = Presentation(io.BytesIO(raw))
        slides = len(presentation.slides)
        for number, slide in enumerate(presentation.slides, start=1):
            title = _slide_title(slide)
            where = Location(page=number, section=title or None, label=f"slide {number}")
            for text in _slide_texts(slide):
                located.add(text, where)
    except Exception as exc:  # zipfile, lxml and python-pptx errors alike
        raise corrupt(".pptx", exc) from exc
    if not located.has_text():
        raise IngestError("presentation has no text (only pictures?)")
    return located.extracted(metadata={"slides": slides})


def _slide_title(slide: Any) -> str:
    title = slide.shapes.title
    return short_label(title.text_frame.text) if title is not None and title.has_text_frame else ""


def _slide_texts(slide: Any) -> Iterator[str]:
    yield from _shape_texts(slide.shapes)
    if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
        yield slide.notes_slide.notes_text_frame.text


def _shape_texts(shapes: Iterable[Any]) -> Iterator[str]:
    """The paragraphs of text frames and the rows of tables, groups opened, in order."""
    for shape in shapes:
        if getattr(shape, "shape_type", None) == 6:  # MSO_SHAPE_TYPE.GROUP
            yield from _shape_texts(shape.shapes)
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            yield from (paragraph.text for paragraph in shape.text_frame.paragraphs)
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                yield _row_text(cell.text for cell in row.cells)


# ------------------------------------------------------------------------ spreadsheets


def read_xlsx(raw: bytes) -> Extracted:
    """Every sheet's non-empty rows, each located on its sheet and row number."""
    from openpyxl import load_workbook

    open_zip(raw, ".xlsx").close()
    located = Lines()
    try:
        # read_only streams the rows; data_only gives the values formulas last computed
        book = load_workbook(io.BytesIO(raw), read_only=True, data_only=True)
        try:
            for sheet in book.worksheets:
                rows = sheet.iter_rows(min_row=1, values_only=True)
                _add_table(located, rows, sheet.title)
        finally:
            book.close()
    except Exception as exc:  # zipfile, lxml and openpyxl errors alike
        raise corrupt(".xlsx", exc) from exc
    if not located.has_text():
        raise IngestError("workbook has no cell values")
    return located.extracted(metadata={"sheets": len(book.sheetnames)})


def read_csv(raw: bytes) -> Extracted:
    """The CSV's non-empty records, each located on its row (as a spreadsheet numbers it)."""
    text, encoding = decode_text(raw)
    if not text.strip():
        raise IngestError("only whitespace, no values")
    located = Lines()
    try:
        _add_table(located, csv.reader(io.StringIO(text), _dialect(text)), None)
    except csv.Error as exc:
        raise IngestError(f"malformed CSV ({one_line(exc, REASON_CHARS)})") from exc
    if not located.has_text():
        raise IngestError("CSV file has no values")
    return located.extracted(metadata={"encoding": encoding})


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    """The delimiter the file uses (comma, semicolon, tab or bar), else a comma."""
    try:
        return csv.Sniffer().sniff(text[:20_000], delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def _add_table(located: Lines, rows: Iterable[Iterable[Any]], sheet: str | None) -> None:
    """One line a non-empty row; when the first one is a header, every later cell is
    written as "Header: value", so a row read alone still says what its numbers are."""
    header: list[str] | None = None
    for number, row in enumerate(rows, start=1):
        cells = [_cell_text(value) for value in row]
        if not any(cells):
            continue
        if header is None:
            header = cells if _is_header(cells) else []
            text = _row_text(cells)
        else:
            text = _row_text(_with_header(header, cells))
        label = f"{sheet} row {number}" if sheet else f"row {number}"
        located.add(text, Location(section=sheet, label=short_label(label)))


def _is_header(cells: list[str]) -> bool:
    names = [cell for cell in cells if cell]
    return len(names) >= 2 and not any(_is_number(cell) for cell in names)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "."))
    except ValueError:
        return False
    return True


def _with_header(header: list[str], cells: list[str]) -> list[str]:
    return [
        f"{header[i]}: {cell}" if i < len(header) and header[i] and cell else cell
        for i, cell in enumerate(cells)
    ]


def _row_text(cells: Iterable[str]) -> str:
    return CELL_SEPARATOR.join(" ".join(cell.split()) for cell in cells if cell.strip())


def _cell_text(value: Any) -> str:
    """A cell as a reader sees it: 1200 not 1200.0, a date without midnight."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return " ".join(str(value).split())


# ------------------------------------------------------------------ OpenDocument text


def read_odt(raw: bytes) -> Extracted:
    """Headings, paragraphs, list items and table rows, located by heading path and
    paragraph."""
    from odf.opendocument import load

    archive = open_zip(raw, ".odt")
    try:
        manifest = archive.read("META-INF/manifest.xml")
    except KeyError:
        manifest = b""
    except Exception as exc:
        raise corrupt(".odt", exc) from exc
    finally:
        archive.close()
    if b"encryption-data" in manifest:
        raise IngestError("encrypted .odt file (password-protected)")
    located, sections = Lines(), Sections(numbered=True)
    try:
        for text, level in _odt_blocks(load(io.BytesIO(raw)).text):
            located.add(text, sections.heading(level, text) if level else sections.paragraph(text))
    except Exception as exc:  # zipfile, expat and odfpy errors alike
        raise corrupt(".odt", exc) from exc
    if not located.has_text():
        raise IngestError("document has no text")
    return located.extracted()


_TEXT_NS = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_TABLE_NS = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"


def _odt_blocks(element: Any) -> Iterator[tuple[str, int | None]]:
    """(text, heading level or None) of each block under `element`, in document order."""
    from odf import teletype

    for node in element.childNodes:
        name = getattr(node, "qname", None)
        if name == (_TEXT_NS, "h"):
            level = node.getAttrNS(_TEXT_NS, "outline-level")
            yield teletype.extractText(node), int(level) if str(level).isdigit() else 1
        elif name == (_TEXT_NS, "p"):
            yield teletype.extractText(node), None
        elif name == (_TABLE_NS, "table-row"):
            yield _row_text(teletype.extractText(cell) for cell in _cells(node)), None
        elif name is not None:
            yield from _odt_blocks(node)


def _cells(row: Any) -> Iterator[Any]:
    cell_name = (_TABLE_NS, "table-cell")
    return (cell for cell in row.childNodes if getattr(cell, "qname", None) == cell_name)


# -------------------------------------------------------------------------------- RTF


def read_rtf(raw: bytes) -> Extracted:
    """The text of an RTF document, each paragraph located by its number."""
    from striprtf.striprtf import rtf_to_text

    if not raw.lstrip().startswith(b"{\\rtf"):
        raise IngestError("not an RTF document (no {\\rtf header)")
    try:
        # RTF is 7-bit ASCII; other characters come as escapes in the document's code
        # page (\ansicpg, cp1252 by default), which striprtf decodes.
        text = rtf_to_text(raw.decode("latin-1"), errors="replace")
    except Exception as exc:  # striprtf raises on unknown code pages and bad escapes
        raise corrupt(".rtf", exc) from exc
    located, sections = Lines(), Sections(numbered=True)
    for paragraph in text.split("\n"):
        located.add(paragraph, sections.paragraph(paragraph))
    if not located.has_text():
        raise IngestError("RTF document has no text")
    return located.extracted()
