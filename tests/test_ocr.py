"""OCR of images and scanned PDF pages with the real Tesseract, on images rendered here."""

from __future__ import annotations

import io
import re
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from rag import ocr
from rag.config import Settings
from rag.indexer import index_folder
from rag.ingest import IngestError, read_document
from rag.ocr import OcrOptions

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Latin and Cyrillic
LIMIT = 10 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None or not FONT.exists(),
    reason="needs Debian's Tesseract and DejaVu fonts (`make ocr` installs them)",
)

# one sentence a line: a quote never spans a line break
ENGLISH = ["The lighthouse keeper counts 417 ships.", "He writes them down in a red book."]
GERMAN = ["Die alte Mühle mahlt Roggen am Dienstag.", "Der Müller wohnt am Fluss."]
RUSSIAN = ["Библиотека закрыта по воскресеньям.", "Читатели любят тишину."]
TYPED = "Typed text layer of the report"


def scan(lines: list[str]) -> Image.Image:
    """A clean greyscale 'scan' of the lines: small, so that Tesseract is quick."""
    font = ImageFont.truetype(str(FONT), 32)
    image = Image.new("L", (1000, 60 + 50 * len(lines)), 255)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((30, 30 + 50 * row), line, font=font, fill=0)
    return image


def png(lines: list[str]) -> bytes:
    buffer = io.BytesIO()
    scan(lines).save(buffer, format="PNG")
    return buffer.getvalue()


def image_only_pdf(*pages: list[str]) -> bytes:
    """A scanned PDF as Pillow writes it: one JPEG per page, no text layer; at 300 dpi,
    as most scanners make them."""
    images = [scan(lines) for lines in pages]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=300)
    return buffer.getvalue()


def mixed_pdf(lines: list[str]) -> bytes:
    """Page 1 typed (a text layer), page 2 a scan of `lines`, page 3 blank."""
    image = scan(lines)
    width, height = image.size[0] * 72 / 300, image.size[1] * 72 / 300  # a 300 dpi scan
    text = f"BT /F1 10 Tf 20 170 Td ({TYPED}) Tj ET".encode()
    draw = f"q {width:.2f} 0 0 {height:.2f} 20 100 cm /Im1 Do Q".encode()
    box = b"/MediaBox [0 0 300 200]"
    pixels = zlib.compress(image.tobytes())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 5 0 R 8 0 R] /Count 3 >>",
        b"<< /Type /Page /Parent 2 0 R " + box + b" /Contents 4 0 R"
        b" /Resources << /Font << /F1 << /Type /Font /Subtype /Type1"
        b" /BaseFont /Helvetica >> >> >> >>",
        _stream(b"", text),
        b"<< /Type /Page /Parent 2 0 R " + box + b" /Contents 6 0 R"
        b" /Resources << /XObject << /Im1 7 0 R >> >> >>",
        _stream(b"", draw),
        _stream(
            f"/Type /XObject /Subtype /Image /Width {image.size[0]} /Height {image.size[1]}"
            " /ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /FlateDecode".encode(),
            pixels,
        ),
        b"<< /Type /Page /Parent 2 0 R " + box + b" /Contents 9 0 R >>",
        _stream(b"", b""),
    ]
    return _pdf(objects)


def _stream(entries: bytes, data: bytes) -> bytes:
    return b"<< " + entries + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def _pdf(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def run_index(settings: Settings, embedder: object):  # type: ignore[no-untyped-def]
    return index_folder(settings, progress=False, embedder_factory=lambda: embedder)


@pytest.fixture
def folder(make_settings: Callable[..., Settings]) -> Path:
    docs = make_settings().docs_dir
    docs.mkdir()
    return docs


# ----------------------------------------------------------------------- reading


def test_png_is_read_by_ocr(folder: Path) -> None:
    (folder / "note.png").write_bytes(png(ENGLISH))
    doc = read_document(folder / "note.png", folder, LIMIT)
    assert doc.text.splitlines() == ENGLISH
    assert doc.line_numbers == [1, 2]
    assert doc.metadata["ocr_lines"] == [[1, 2]]
    assert doc.language == "en" and doc.locations == []  # one image: cited by line


def test_scanned_pdf_pages_are_read_in_their_languages(folder: Path) -> None:
    (folder / "scan.pdf").write_bytes(image_only_pdf(GERMAN, RUSSIAN))
    doc = read_document(folder / "scan.pdf", folder, LIMIT)
    assert doc.text.splitlines() == GERMAN + RUSSIAN  # ü and Cyrillic read right
    assert doc.metadata["pages"] == 2 and doc.metadata["ocr_lines"] == [[1, 4]]
    assert [where.label for where in doc.locations] == ["p. 1", "p. 1", "p. 2", "p. 2"]


def test_only_the_pages_without_text_are_read_by_ocr(folder: Path) -> None:
    (folder / "mixed.pdf").write_bytes(mixed_pdf(ENGLISH))
    progress: list[str] = []
    doc = read_document(folder / "mixed.pdf", folder, LIMIT, OcrOptions(None, progress.append))
    assert doc.text.splitlines() == [TYPED, *ENGLISH]
    assert doc.metadata["ocr_lines"] == [[2, 3]]  # page 2; blank page 3 adds nothing
    assert [where.page for where in doc.locations] == [1, 2, 2]
    assert progress == ["OCR page 1/2", "OCR page 2/2"]


def test_a_multipage_tiff_is_read_page_by_page(folder: Path) -> None:
    first, second = scan(ENGLISH), scan(GERMAN)
    first.save(folder / "pages.tiff", save_all=True, append_images=[second])
    progress: list[str] = []
    doc = read_document(
        folder / "pages.tiff", folder, LIMIT, OcrOptions("eng+deu", progress.append)
    )
    assert doc.text.splitlines() == ENGLISH + GERMAN
    assert [where.label for where in doc.locations] == ["p. 1", "p. 1", "p. 2", "p. 2"]
    assert progress == ["OCR page 1/2", "OCR page 2/2"]


def test_an_image_without_text_is_a_one_line_reason(folder: Path) -> None:
    Image.new("RGB", (300, 200), "white").save(folder / "blank.jpg")
    (folder / "broken.png").write_bytes(png(ENGLISH)[:100])
    with pytest.raises(IngestError, match="^OCR found no text in the image$"):
        read_document(folder / "blank.jpg", folder, LIMIT)
    with pytest.raises(IngestError, match="^unreadable image"):
        read_document(folder / "broken.png", folder, LIMIT)


def test_languages_are_the_installed_ones_of_the_setting() -> None:
    assert ocr.usable_languages("eng+xx+rus") == "eng+rus"
    with pytest.raises(IngestError) as raised:
        ocr.usable_languages("xx+yy")
    message = str(raised.value)
    assert "\n" not in message
    assert "RAG_OCR_LANGUAGES='xx+yy'" in message and "installed: deu, eng" in message


def test_ocr_languages_come_from_the_environment(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "note.png").write_bytes(png(ENGLISH))
    monkeypatch.setenv("RAG_OCR_LANGUAGES", "klingon")
    with pytest.raises(IngestError, match=r"no OCR language of RAG_OCR_LANGUAGES='klingon'"):
        read_document(folder / "note.png", folder, LIMIT)


def test_missing_tesseract_is_a_one_line_reason(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "note.png").write_bytes(png(ENGLISH))
    monkeypatch.setenv("PATH", str(folder))  # no tesseract there
    ocr.installed_languages.cache_clear()
    try:
        with pytest.raises(IngestError, match=r"^OCR needs Tesseract, which is not installed"):
            read_document(folder / "note.png", folder, LIMIT)
    finally:
        ocr.installed_languages.cache_clear()


def test_a_pdf_with_text_is_indexed_even_when_ocr_cannot_run(folder: Path) -> None:
    (folder / "mixed.pdf").write_bytes(mixed_pdf(ENGLISH))
    doc = read_document(folder / "mixed.pdf", folder, LIMIT, OcrOptions("xx"))
    assert doc.text == TYPED and "ocr_lines" not in doc.metadata


# ------------------------------------------------------------ indexing, answering


def test_ocr_text_is_answered_and_cited_as_ocr(
    folder: Path, make_settings: Callable[..., Settings], embedder, capsys
) -> None:  # type: ignore[no-untyped-def]
    from rag.cli import _print_sources
    from rag.engine import Engine

    (folder / "lighthouse.png").write_bytes(png(ENGLISH))
    (folder / "scan.pdf").write_bytes(image_only_pdf(GERMAN, RUSSIAN))
    (folder / "harbour.md").write_text("The harbour café serves fish soup on Fridays.\n")
    settings = make_settings(llm="none", refusal_threshold=0.0)
    report = run_index(settings, embedder)
    assert report.skipped == [] and report.files == 3
    expected = {
        "How many ships does the lighthouse keeper count?": ("lighthouse.png", "417 ships"),
        "Когда закрыта библиотека?": ("scan.pdf", "воскресеньям"),
        "Wann mahlt die alte Mühle Roggen?": ("scan.pdf", "Dienstag"),
        "When does the harbour café serve fish soup?": ("harbour.md", "Fridays"),
    }
    engine = Engine(settings)
    engine._embedder = embedder
    try:
        answers = {question: engine.ask(question, llm="none") for question in expected}
    finally:
        engine.store().close()
    pages = {"воскресеньям": "p. 2 (OCR)", "Dienstag": "p. 1 (OCR)", "417 ships": "line 1 (OCR)"}
    for question, (path, words) in expected.items():
        cited = [c for c in answers[question].citations if c.path == path and words in c.quote]
        assert cited, (question, answers[question].citations)
        assert all(c.ocr == (path != "harbour.md") for c in cited)
        assert {c.locator for c in cited} == {pages.get(words, "line 1")}
        assert all(c.as_dict()["ocr"] == c.ocr for c in answers[question].citations)
    _print_sources(answers["Wann mahlt die alte Mühle Roggen?"].as_dict())
    assert re.search(r"\] scan\.pdf:1-1, p\. 1 \(OCR\)\n", capsys.readouterr().out)
    _print_sources(answers["How many ships does the lighthouse keeper count?"].as_dict())
    assert "] lighthouse.png:1-1 (OCR)\n" in capsys.readouterr().out
    _print_sources(answers["When does the harbour café serve fish soup?"].as_dict())
    out = capsys.readouterr().out
    assert "harbour.md:1-1\n" in out and "harbour.md:1-1 (OCR)" not in out


def test_an_unreadable_scan_is_skipped_and_the_indexed_files_stay(
    folder: Path, make_settings: Callable[..., Settings], embedder
) -> None:  # type: ignore[no-untyped-def]
    (folder / "lighthouse.png").write_bytes(png(ENGLISH))
    settings = make_settings()
    first = run_index(settings, embedder)
    assert first.added == 1 and first.chunks == 1
    Image.new("L", (300, 200), 255).save(folder / "lighthouse.png")  # rescanned: blank
    Image.new("L", (300, 200), 255).save(folder / "empty.tif")
    again = run_index(settings, embedder)
    reasons = {s.path: s.reason for s in again.skipped}
    assert reasons == {
        "empty.tif": "OCR found no text in the image",
        "lighthouse.png": "OCR found no text in the image (previous version kept)",
    }
    assert again.files == 1 and again.chunks == 1  # the earlier text is still searchable
    no_language = run_index(make_settings(ocr_languages="xx"), embedder)
    reasons = {s.path: s.reason for s in no_language.skipped}
    assert reasons["empty.tif"].startswith("no OCR language of RAG_OCR_LANGUAGES='xx' is")
    assert no_language.files == 1 and no_language.chunks == 1
