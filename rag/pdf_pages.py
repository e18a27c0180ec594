"""One page of a cited PDF as an image, with the quote marked on it (the chat page).

Streamlit cannot serve the documents folder, and its PDF viewer cannot open at a page,
so the page shows the cited page itself: rendered with pypdfium2, the quote found in
the page's text layer and covered by a translucent yellow box. Only PDFs inside the
documents folder are read: a path that leaves it (`..`, an absolute path, a symlink
that points outside) is refused with a one-line UserError, as are other file types and
pages that do not exist. No Streamlit here: app.py caches and shows the result.
"""

from __future__ import annotations

import ctypes
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from rag.records import UserError, one_line

if TYPE_CHECKING:
    from PIL.Image import Image
    from pypdfium2 import PdfPage, PdfTextPage

SCALE = 1.5  # 108 dpi: a page about 900 x 1260 px, readable and small enough
MAX_SIDE = 2400  # px: a poster-sized page is rendered smaller, never bigger than this
MAX_PIXELS = 4_000_000
SEARCH_CHARS = 60  # the quote's start that is searched for in the page's text
SHORT_CHARS = 25  # tried next, when the text layer splits the longer start differently
HIGHLIGHT = (255, 214, 0, 96)  # translucent yellow, as the <mark> of the source card
PAD = 2  # px around each marked box

Box = tuple[int, int, int, int]  # left, top, right, bottom in px


class PageError(UserError):
    """A cited page that cannot be shown; the message is the one line the page shows."""


@dataclass(frozen=True)
class PageImage:
    """A rendered page: a PNG, its size, and how many of the quotes are marked on it."""

    png: bytes
    width: int
    height: int
    page: int  # 1-based
    pages: int  # pages in the file
    marked: int  # quotes found in the page's text and highlighted
    boxes: tuple[Box, ...] = ()  # the marked boxes


def resolve_pdf(docs_dir: Path | str, rel_path: str) -> Path:
    """The real path of a PDF cited as `rel_path` (relative to the documents folder).

    Refuses absolute paths, `..`, and anything that resolves (symlinks followed) to a
    place outside the documents folder, or that is not an existing .pdf file.
    """
    shown = one_line(rel_path, 120) if rel_path else ""
    if not rel_path or not rel_path.strip() or "\0" in rel_path:
        raise PageError("no PDF file is named for this citation")
    rel = PurePosixPath(rel_path)
    if rel.is_absolute() or PureWindowsPath(rel_path).drive or ".." in rel.parts:
        raise PageError(f"{shown}: only files inside the documents folder are shown")
    if rel.suffix.lower() != ".pdf":
        raise PageError(f"{shown}: not a PDF, so there is no page to show")
    root = Path(docs_dir).resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise PageError(f"{shown}: cannot be opened ({one_line(exc, 80)})") from exc
    if not target.is_relative_to(root):
        raise PageError(f"{shown}: only files inside the documents folder are shown")
    if target.suffix.lower() != ".pdf":
        raise PageError(f"{shown}: not a PDF, so there is no page to show")
    if not target.is_file():
        raise PageError(f"{shown} is no longer in the documents folder: re-index it")
    return target


def render_page(
    docs_dir: Path | str, rel_path: str, page: int, quotes: Iterable[str] = ()
) -> PageImage:
    """Page `page` (1-based) of the PDF cited as `rel_path`, with `quotes` marked."""
    return render_pdf_page(resolve_pdf(docs_dir, rel_path), page, quotes)


def render_pdf_page(path: Path, page: int, quotes: Iterable[str] = ()) -> PageImage:
    """Page `page` of a PDF already checked by resolve_pdf, as a PNG of bounded size."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(str(path))
    except (pdfium.PdfiumError, OSError) as exc:
        raise PageError(f"{path.name} cannot be opened as a PDF ({one_line(exc, 80)})") from exc
    try:
        pages = len(document)
        if not isinstance(page, int) or not 1 <= page <= pages:
            raise PageError(f"{path.name} has {pages} page(s): there is no page {page}")
        pdf_page = document[page - 1]
        width, height = pdf_page.get_size()
        scale = _scale(width, height)
        image = pdf_page.render(scale=scale, may_draw_forms=True).to_pil().convert("RGB")
        boxes: list[Box] = []
        marked = 0
        for quote in dict.fromkeys(q for q in quotes if q and q.strip()):
            found = _quote_boxes(pdf_page, quote, image.size)
            if found:
                marked += 1
                boxes += found
        if boxes:
            image = _mark(image, boxes)
    except PageError:
        raise
    except pdfium.PdfiumError as exc:
        raise PageError(
            f"page {page} of {path.name} cannot be drawn ({one_line(exc, 80)})"
        ) from exc
    finally:
        document.close()
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return PageImage(out.getvalue(), image.width, image.height, page, pages, marked, tuple(boxes))


def _scale(width: float, height: float) -> float:
    """SCALE, or less where the page would exceed MAX_SIDE or MAX_PIXELS."""
    if width <= 0 or height <= 0:
        return SCALE
    return min(SCALE, MAX_SIDE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))


def _quote_boxes(pdf_page: PdfPage, quote: str, size: tuple[int, int]) -> list[Box]:
    """The pixel boxes of `quote` on the rendered page, or [] when its text layer does
    not hold it (a scan, other white space or ligatures): the page is shown unmarked."""
    import pypdfium2.raw as raw

    words = quote.split()
    textpage = pdf_page.get_textpage()
    try:
        found = None
        for limit in (SEARCH_CHARS, SHORT_CHARS):
            probe = _start_of(words, limit)
            if probe:
                found = textpage.search(probe, match_case=False).get_next()
            if found:
                break
        if not found:
            return []
        start, count = found
        end = max(start + count, _match_end(textpage, raw, start, "".join(words)))
        boxes = []
        device_x, device_y = ctypes.c_int(), ctypes.c_int()
        for i in range(textpage.count_rects(start, end - start)):
            left, bottom, right, top = textpage.get_rect(i)
            corners = []
            for x, y in ((left, bottom), (right, top)):
                # the page's own rotation and crop box, as pdfium rendered them
                raw.FPDF_PageToDevice(pdf_page, 0, 0, size[0], size[1], 0, x, y, device_x, device_y)
                corners.append((device_x.value, device_y.value))
            (x0, y0), (x1, y1) = corners
            boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        return boxes
    finally:
        textpage.close()


def _start_of(words: list[str], limit: int) -> str:
    """The quote's first words, up to about `limit` characters, joined by one space."""
    taken: list[str] = []
    for word in words:
        if taken and len(" ".join([*taken, word])) > limit:
            break
        taken.append(word)
    return " ".join(taken)[: max(limit, 1) * 2]


def _match_end(textpage: PdfTextPage, raw: Any, start: int, letters: str) -> int:
    """The char index after the longest run from `start` that spells the quote's
    letters in order, white space and the text layer's generated breaks skipped."""
    total = textpage.count_chars()
    index, matched, end = start, 0, start
    while index < total and matched < len(letters):
        char = chr(raw.FPDFText_GetUnicode(textpage, index) or 32)
        if char.lower() == letters[matched].lower():
            matched, end = matched + 1, index + 1
        elif not (char.isspace() or char in "\x02\ufffe\u00ad-"):
            break  # a hyphen or break the layer added at a line end is skipped
        index += 1
    return end


def _mark(image: Image, boxes: list[Box]) -> Image:
    from PIL import Image as Images
    from PIL import ImageDraw

    overlay = Images.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0 - PAD, y0 - PAD, x1 + PAD, y1 + PAD), fill=HIGHLIGHT)
    return Images.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
