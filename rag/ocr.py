"""Text from images and scanned PDF pages, by Tesseract OCR.

Tesseract runs as its own program (`tesseract stdin stdout`), one page at a time: no
Python wrapper to pin (pytesseract is the same subprocess call plus temporary files),
and a timeout, exit status and stderr we read ourselves, so every failure becomes an
`IngestError` with a one-line reason. PDF pages are rendered by PDFium (pypdfium2, a
self-contained wheel): it draws any page, whatever the scanner stored (JBIG2, CCITT,
tiled strips, rotation, text drawn as outlines), where taking out the embedded image
with pypdf only works for the plain one-JPEG-per-page case.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from rag.decoding import tidy_text
from rag.records import IngestError, Progress, one_line

# Tesseract reads best at ~300 dpi; a page larger than MAX_PAGE_PIXELS at that
# resolution (a poster, an A0 plan) is rendered coarser, so that memory stays bounded.
RENDER_DPI = 300
MAX_PAGE_PIXELS = 40_000_000
PAGE_TIMEOUT_S = 300  # one page; a normal A4 scan takes 1-5 s
REASON_CHARS = 100

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OcrOptions:
    """How to OCR: Tesseract languages ("eng+rus"; None: RAG_OCR_LANGUAGES) and where
    to report each page (a long scan takes minutes)."""

    languages: str | None = None
    progress: Progress | None = None

    def report(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


def ocr_image(raw: bytes, options: OcrOptions) -> list[str]:
    """The text of each frame of an image file (a TIFF may hold many pages)."""
    languages = usable_languages(_wanted(options))
    texts = []
    for number, count, frame in _frames(raw):  # one at a time: a TIFF may be huge
        if count > 1:
            options.report(f"OCR page {number}/{count}")
        texts.append(_tesseract(frame, languages, dpi=None))
    return texts


def ocr_textless_pages(raw: bytes, pages: list[str], options: OcrOptions) -> list[list[int]]:
    """OCR the pages of a PDF that have no text layer, in place in `pages` (their text,
    in page order, later joined by "\n"); returns the [first, last] lines they fill.

    A PDF with text on other pages is still indexed when OCR cannot run (no Tesseract,
    a page it chokes on): a warning then says which pages were left out, as they were
    before there was OCR.
    """
    textless = [number for number, text in enumerate(pages, 1) if not text.strip()]
    if not textless:
        return []
    try:
        found = ocr_pdf_pages(raw, textless, options)
    except IngestError as exc:
        if len(textless) == len(pages):
            raise
        log.warning("%d PDF page(s) without text not read by OCR: %s", len(textless), exc)
        return []
    for number, text in found.items():
        pages[number - 1] = text
    return _line_ranges(pages, {n for n, text in found.items() if text})


def _line_ranges(pages: list[str], numbers: set[int]) -> list[list[int]]:
    """[first, last] file line of each of the given pages of "\n".join(pages)."""
    ranges, first = [], 1
    for number, text in enumerate(pages, 1):
        lines = tidy_text(text).count("\n") + 1  # as the joined text will be tidied
        if number in numbers and ranges and ranges[-1][1] == first - 1:
            ranges[-1][1] = first + lines - 1  # one range for a run of scanned pages
        elif number in numbers:
            ranges.append([first, first + lines - 1])
        first += lines
    return ranges


def ocr_pdf_pages(raw: bytes, numbers: list[int], options: OcrOptions) -> dict[int, str]:
    """The text of the given (1-based) pages of a PDF, rendered and read by Tesseract."""
    import pypdfium2

    texts: dict[int, str] = {}
    languages = ""
    try:
        pdf = pypdfium2.PdfDocument(raw)
    except Exception as exc:  # pypdfium2.PdfiumError and friends
        raise IngestError(f"cannot render PDF for OCR ({one_line(exc, REASON_CHARS)})") from exc
    try:
        for done, number in enumerate(numbers, 1):
            options.report(f"OCR page {done}/{len(numbers)}")
            image, dpi = _render(pdf, number)
            if image is None:
                texts[number] = ""
                continue
            # asked here, not before: a PDF of blank pages needs no Tesseract
            languages = languages or usable_languages(_wanted(options))
            texts[number] = _tesseract(image, languages, dpi)
    finally:
        pdf.close()
    return texts


def usable_languages(wanted: str) -> str:
    """The installed ones of the `wanted` Tesseract languages ("eng+rus"), "+"-joined."""
    installed = installed_languages()
    names = [name for name in wanted.replace(",", "+").split("+") if name.strip()]
    usable = [name.strip() for name in names if name.strip() in installed]
    if not usable:
        have = ", ".join(sorted(installed - {"osd"})) or "none"
        raise IngestError(
            f"no OCR language of RAG_OCR_LANGUAGES={wanted!r} is installed (installed: "
            f"{have}; add one with apt-get install tesseract-ocr-<lang>)"
        )
    _warn_missing(tuple(n.strip() for n in names if n.strip() not in installed))
    return "+".join(usable)


@cache
def _warn_missing(missing: tuple[str, ...]) -> None:
    # once per process: an index run would otherwise say it for every scanned file
    if missing:
        log.warning("OCR languages not installed, not used: %s", ", ".join(missing))


@cache
def installed_languages() -> frozenset[str]:
    """`tesseract --list-langs`, asked once per process (a failure is not remembered)."""
    out = _run([_tesseract_program(), "--list-langs"], b"", timeout=60).decode()
    # the first line is 'List of available languages in "/usr/share/..." (6):'
    return frozenset(line.strip() for line in out.splitlines()[1:] if line.strip())


def _wanted(options: OcrOptions) -> str:
    if options.languages is not None:
        return options.languages
    from rag.config import Settings

    return Settings.from_env().ocr_languages  # as `rag index` would read it


def _tesseract_program() -> str:
    program = shutil.which("tesseract")
    if program is None:
        raise IngestError("OCR needs Tesseract, which is not installed (make ocr)")
    return program


def _tesseract(image: Any, languages: str, dpi: int | None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PPM")  # uncompressed: nothing to spend on encoding
    command = [_tesseract_program(), "stdin", "stdout", "-l", languages]
    if dpi:  # known for a rendered page; for an image file Tesseract estimates it
        command += ["--dpi", str(dpi)]
    return _text_lines(_run(command, buffer.getvalue(), PAGE_TIMEOUT_S).decode())


def _run(command: list[str], stdin: bytes, timeout: float) -> bytes:
    # Tesseract's OpenMP threads make it slower on small machines (its own advice)
    env = {**os.environ, "OMP_THREAD_LIMIT": os.environ.get("OMP_THREAD_LIMIT", "1")}
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise IngestError(f"OCR took longer than {timeout:.0f} s on one page") from exc
    except OSError as exc:
        raise IngestError(f"cannot run Tesseract ({one_line(exc, REASON_CHARS)})") from exc
    if done.returncode != 0:
        errors = done.stderr.decode(errors="replace").strip().splitlines()
        reason = errors[-1] if errors else f"exit status {done.returncode}"
        raise IngestError(f"OCR failed ({reason[:REASON_CHARS]})")
    return done.stdout


def _text_lines(text: str) -> str:
    """Tesseract's lines, without the ones that hold no letter or digit (specks of
    noise read as punctuation) and without the page's form feed."""
    lines = (line.rstrip() for line in text.replace("\f", "\n").splitlines())
    return "\n".join(line for line in lines if any(c.isalnum() for c in line))


def _frames(raw: bytes) -> Iterator[tuple[int, int, Any]]:
    """(number, count, greyscale image) of each frame; a consumer's errors stay its own."""
    from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            count = getattr(image, "n_frames", 1)
            for number, frame in enumerate(ImageSequence.Iterator(image), 1):
                # exif_transpose: phone photos are stored sideways, with a note saying so
                yield number, count, _grey(ImageOps.exif_transpose(frame))
    except UnidentifiedImageError as exc:  # its message names a BytesIO object
        raise IngestError("not a readable image (unknown or damaged format)") from exc
    except Exception as exc:  # PIL raises many types, DecompressionBombError included
        raise IngestError(f"unreadable image ({one_line(exc, REASON_CHARS)})") from exc


def _grey(image: Any) -> Any:
    """Greyscale, with any transparency laid on white (transparent pixels are often
    black underneath, which would hide black text)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, "white")
        return Image.alpha_composite(white, rgba).convert("L")
    return image.convert("L")


def _render(pdf: Any, number: int) -> tuple[Any | None, int]:
    try:
        page = pdf[number - 1]
        try:
            if next(page.get_objects(max_depth=1), None) is None:
                return None, 0  # a blank page, common in books: nothing to read
            width, height = page.get_size()  # in points, 1/72 inch
            dpi = _dpi(width, height)
            bitmap = page.render(scale=dpi / 72, grayscale=True)
            return bitmap.to_pil(), dpi
        finally:
            page.close()
    except Exception as exc:  # pypdfium2.PdfiumError, MemoryError on a huge page
        reason = one_line(exc, REASON_CHARS)
        raise IngestError(f"cannot render PDF page {number} for OCR ({reason})") from exc


def _dpi(width_pt: float, height_pt: float) -> int:
    inches = max(width_pt * height_pt / 72 / 72, 1e-6)
    return max(1, min(RENDER_DPI, int(math.sqrt(MAX_PAGE_PIXELS / inches))))
