"""rag.pdf_pages: a cited PDF page drawn for the chat page, only from the documents folder."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from rag import pdf_pages, ui
from rag.pdf_pages import PageError, render_page, resolve_pdf
from rag.records import Answer, Citation, UserError

from .test_formats import make_pdf  # a real PDF, made with fpdf2

PAGES = [
    "The first page is about apples and the orchards north of the lake. " * 4,
    "In the spring of 1998 the river flooded the valley, and the town rebuilt the old "
    "stone bridge the following summer. " * 3,
    "The third page lists the sources and says nothing else.",
]
QUOTE = "the river flooded the valley, and the town rebuilt the old stone bridge the following"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    make_pdf(folder / "sub" / "report.pdf", PAGES)
    return folder


def _pixels(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


# ------------------------------------------------------------------------ rendering


def test_renders_each_page_as_a_distinct_image(docs: Path) -> None:
    first = render_page(docs, "sub/report.pdf", 1)
    second = render_page(docs, "sub/report.pdf", 2)
    assert (first.pages, first.page, second.page) == (3, 1, 2)
    assert first.width > 0 and first.height > first.width  # A4 portrait
    assert (first.width, first.height) == _pixels(first.png).size
    assert abs(first.width - 595 * pdf_pages.SCALE) <= 2
    assert _pixels(first.png).tobytes() != _pixels(second.png).tobytes()
    assert first.marked == 0 and not first.boxes


def test_marks_the_quote_on_its_page(docs: Path) -> None:
    page = render_page(docs, "sub/report.pdf", 2, [QUOTE])
    assert page.marked == 1 and page.boxes
    x0, y0, x1, y1 = page.boxes[0]
    assert 0 <= x0 < x1 <= page.width and 0 <= y0 < y1 <= page.height
    assert y0 < page.height / 4  # the text is at the top of the page
    # the box is tinted yellow: more red and green than blue, unlike the white page
    r, g, b = _pixels(page.png).getpixel(((x0 + x1) // 2, y0 - 1 + pdf_pages.PAD))
    assert r > b + 40 and g > b + 40
    plain = _pixels(render_page(docs, "sub/report.pdf", 2).png)
    assert plain.getpixel(((x0 + x1) // 2, y0 - 1 + pdf_pages.PAD)) == (255, 255, 255)


def test_a_quote_across_a_line_break_is_marked_on_both_lines(docs: Path) -> None:
    # multi_cell wraps the long paragraph: the whole sentence spans two lines
    quote = " ".join(PAGES[1].split()[:30])
    page = render_page(docs, "sub/report.pdf", 2, [quote])
    assert page.marked == 1
    assert len({y0 for _, y0, _, _ in page.boxes}) >= 2


def test_a_quote_not_on_the_page_leaves_it_unmarked(docs: Path) -> None:
    page = render_page(docs, "sub/report.pdf", 1, [QUOTE, "", "   "])
    assert page.marked == 0 and not page.boxes and page.width > 0


@pytest.mark.parametrize("page", [0, 4, -1])
def test_a_page_out_of_range_is_refused(docs: Path, page: int) -> None:
    with pytest.raises(PageError, match="has 3 page"):
        render_page(docs, "sub/report.pdf", page)


def test_a_damaged_pdf_is_one_line(docs: Path) -> None:
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    with pytest.raises(PageError) as error:
        render_page(docs, "broken.pdf", 1)
    assert "\n" not in str(error.value) and "broken.pdf" in str(error.value)


def test_the_size_is_bounded(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF(format=(3000, 3000))  # a poster: 3 m square
    pdf.add_page()
    (tmp_path / "poster.pdf").write_bytes(bytes(pdf.output()))
    page = render_page(tmp_path, "poster.pdf", 1)
    assert max(page.width, page.height) <= pdf_pages.MAX_SIDE
    assert page.width * page.height <= pdf_pages.MAX_PIXELS


# ------------------------------------------------------------------------ the path guard


def test_resolves_a_pdf_inside_the_folder(docs: Path) -> None:
    assert resolve_pdf(docs, "sub/report.pdf") == (docs / "sub" / "report.pdf").resolve()
    assert resolve_pdf(str(docs), "sub/./report.pdf").name == "report.pdf"


def test_parent_paths_are_refused(docs: Path, tmp_path: Path) -> None:
    make_pdf(tmp_path / "outside.pdf", ["secret"])
    for path in ("../outside.pdf", "sub/../../outside.pdf", "sub/../report.pdf"):
        with pytest.raises(PageError, match="only files inside the documents folder"):
            resolve_pdf(docs, path)


def test_absolute_paths_are_refused(docs: Path, tmp_path: Path) -> None:
    make_pdf(tmp_path / "outside.pdf", ["secret"])
    for path in (str(tmp_path / "outside.pdf"), str(docs / "sub" / "report.pdf"), "C:/x.pdf"):
        with pytest.raises(PageError, match="only files inside the documents folder"):
            resolve_pdf(docs, path)


def test_a_symlink_to_a_file_outside_is_refused(docs: Path, tmp_path: Path) -> None:
    make_pdf(tmp_path / "outside.pdf", ["secret"])
    (docs / "link.pdf").symlink_to(tmp_path / "outside.pdf")
    (docs / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    for path in ("link.pdf", "linked-dir/outside.pdf"):
        with pytest.raises(PageError, match="only files inside the documents folder"):
            render_page(docs, path, 1)


def test_a_symlink_inside_the_folder_is_followed(docs: Path) -> None:
    (docs / "alias.pdf").symlink_to(docs / "sub" / "report.pdf")
    assert render_page(docs, "alias.pdf", 3).pages == 3


def test_other_files_are_refused(docs: Path, tmp_path: Path) -> None:
    (docs / "notes.txt").write_text("text")
    (docs / "fake.pdf").symlink_to(docs / "notes.txt")
    for path in ("notes.txt", "fake.pdf", "sub/report.PDF.txt"):
        with pytest.raises(PageError, match="not a PDF"):
            resolve_pdf(docs, path)
    with pytest.raises(PageError, match="re-index"):
        resolve_pdf(docs, "gone.pdf")
    (docs / "folder.pdf").mkdir()
    with pytest.raises(PageError, match="re-index"):
        resolve_pdf(docs, "folder.pdf")  # not a file
    for path in ("", "  ", "a\0.pdf"):
        with pytest.raises(PageError):
            resolve_pdf(docs, path)


def test_errors_are_user_errors_of_one_line(docs: Path) -> None:
    with pytest.raises(UserError) as error:
        render_page(docs, "../" * 8 + "etc/passwd.pdf", 1)
    assert "\n" not in str(error.value) and ui.user_message(error.value) == str(error.value)


def test_a_docs_folder_reached_through_a_symlink_works(docs: Path, tmp_path: Path) -> None:
    os.symlink(docs, tmp_path / "docs-link")
    assert render_page(tmp_path / "docs-link", "sub/report.pdf", 2).page == 2


# ------------------------------------------------------------------------ the source card


def test_only_a_pdf_source_with_a_page_gets_a_page(docs: Path) -> None:
    citations = [
        Citation(1, "report.pdf", "sub/report.pdf", (4, 4), QUOTE, page=2, locator="p. 2"),
        Citation(2, "notes.txt", "notes.txt", (1, 1), "text", page=None),
        Citation(3, "deck.pptx", "deck.pptx", (1, 1), "slide", page=4, locator="slide 4"),
    ]
    answer = Answer("q?", "en", "A [1] [2] [3].", False, citations, [], "none")
    pdf, text, deck = ui.sources(answer)
    assert (pdf.pdf_page, text.pdf_page, deck.pdf_page) == (2, None, None)
    assert pdf.quotes == [QUOTE]
    assert ui.page_label(pdf) == "Show page 2"
    assert ui.page_caption(pdf, 3, 1) == "report.pdf · page 2 of 3 · the quote is marked in yellow"
    assert "could not be located" in ui.page_caption(pdf, 3, 0)
