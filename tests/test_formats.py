"""The formats beyond text, PDF, DOCX and HTML, and the locators of citations.

Every file here is made by the test with the format's own library (or, for EPUB and
e-mail, by the standard library, as the format is a ZIP of XHTML or a MIME message),
indexed into a real Chroma store with the real embedder, and asked about with
`--llm none`: the citation must name the file and locate the quote as a reader would
(page, slide, sheet and row, heading path, chapter, subject).
"""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rag.config import Settings
from rag.formats import OLE_MAGIC
from rag.indexer import index_folder
from rag.ingest import read_document
from rag.records import Citation, IngestError

if TYPE_CHECKING:
    from rag.engine import Engine

# ------------------------------------------------------------------- file builders


def make_pdf(path: Path, pages: list[str]) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    path.write_bytes(bytes(pdf.output()))


def make_pptx(path: Path, slides: list[tuple[str, str]]) -> None:
    from pptx import Presentation

    presentation = Presentation()
    for title, body in slides:
        slide = presentation.slides.add_slide(presentation.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    presentation.save(str(path))


def make_xlsx(path: Path, sheets: dict[str, list[list[object]]]) -> None:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(path)


def make_odt(path: Path, blocks: list[tuple[int | None, str]]) -> None:
    from odf.opendocument import OpenDocumentText
    from odf.text import H, P

    document = OpenDocumentText()
    for level, text in blocks:
        block = H(outlinelevel=level, text=text) if level else P(text=text)
        document.text.addElement(block)
    document.save(str(path))


def make_docx(path: Path, blocks: list[tuple[int | None, str]]) -> None:
    import docx

    document = docx.Document()
    for level, text in blocks:
        if level:
            document.add_heading(text, level=level)
        else:
            document.add_paragraph(text)
    document.save(str(path))


def make_rtf(path: Path, paragraphs: list[str]) -> None:
    body = "".join(f"{text}\\par\n" for text in paragraphs)
    path.write_bytes(
        ("{\\rtf1\\ansi\\ansicpg1252\\deff0 {\\fonttbl{\\f0 Arial;}}\n" + body + "}").encode()
    )


def make_epub(path: Path, chapters: list[tuple[str, str]], encrypt: bool = False) -> None:
    """A minimal EPUB 3: container, package, nav (the table of contents), chapters."""
    items = "".join(
        f'<item id="c{i}" href="text/ch{i}.xhtml" media-type="application/xhtml+xml"/>'
        for i in range(len(chapters))
    )
    spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
    links = "".join(
        f'<li><a href="text/ch{i}.xhtml">{title}</a></li>' for i, (title, _) in enumerate(chapters)
    )
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        book.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" '
            'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
            '<rootfile full-path="OEBPS/content.opf" '
            'media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        book.writestr(
            "OEBPS/content.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0">'
            '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Coast Tales'
            '</dc:title></metadata><manifest><item id="nav" href="nav.xhtml" '
            f'media-type="application/xhtml+xml" properties="nav"/>{items}</manifest>'
            f"<spine>{spine}</spine></package>",
        )
        book.writestr(
            "OEBPS/nav.xhtml",
            '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">'
            f'<body><nav epub:type="toc"><ol>{links}</ol></nav></body></html>',
        )
        for i, (title, text) in enumerate(chapters):
            book.writestr(
                f"OEBPS/text/ch{i}.xhtml",
                '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml">'
                f"<head><title>Coast Tales</title></head><body><h1>{title}</h1><p>{text}</p>"
                "</body></html>",
            )
        if encrypt:  # what a DRM scheme leaves: the chapters listed as encrypted
            refs = "".join(
                f'<EncryptedData xmlns="http://www.w3.org/2001/04/xmlenc#"><CipherData>'
                f'<CipherReference URI="OEBPS/text/ch{i}.xhtml"/></CipherData></EncryptedData>'
                for i in range(len(chapters))
            )
            book.writestr(
                "META-INF/encryption.xml",
                '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                f"{refs}</encryption>",
            )


def make_eml(path: Path, subject: str, body: str, html: bool = False) -> None:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "Kari Nordmann <kari@example.org>"
    message["To"] = "town-office@example.org"
    message["Date"] = "Mon, 02 Mar 2026 09:15:00 +0100"
    if html:
        message.set_content(f"<html><body><h1>{subject}</h1><p>{body}</p></body></html>", "html")
    else:
        message.set_content(body)
    path.write_bytes(bytes(message))


def encrypt_ooxml(path: Path) -> None:
    """Password-protect an .xlsx, .pptx or .docx as Office does (an OLE file, not a ZIP)."""
    from msoffcrypto.format.ooxml import OOXMLFile

    out = io.BytesIO()
    OOXMLFile(io.BytesIO(path.read_bytes())).encrypt("secret", out)
    path.write_bytes(out.getvalue())


PDF_PAGES = [
    "Harbour report 2025. This report describes the harbour of Vardo and its services.",
    "The breakwater of Vardo was rebuilt in 1987 by the coastal agency.\n"
    "Its length is now 410 metres.",
    "The ferry Nordlys carries 240 passengers between Vardo and Kiberg.\n"
    "It sails four times a day in summer.",
]


def make_corpus(docs: Path) -> None:
    """One file per format, each with facts no other file states."""
    docs.mkdir(parents=True, exist_ok=True)
    make_pdf(docs / "harbour.pdf", PDF_PAGES)
    make_pptx(
        docs / "cafe.pptx",
        [
            ("Quarterly review", "Welcome to the review of the first quarter."),
            ("Coffee sales", "The Oslo cafe sold 5120 cups of espresso in March."),
            ("Next steps", "Open a second cafe in Bergen next spring."),
        ],
    )
    make_xlsx(
        docs / "budget.xlsx",
        {
            "Budget": [
                ["Region", "Q3 budget"],
                ["Finnmark", 31000],
                [None, None],
                ["Tromso", 48200],
            ],
            "Staff": [["Name", "Role"], ["Ola Hansen", "harbour master"]],
        },
    )
    (docs / "towns.csv").write_text(
        "town,population,mayor\nAlta,21000,Monica Nielsen\nHammerfest,11400,Terje Wikstrom\n",
        encoding="utf-8",
    )
    make_odt(
        docs / "garden.odt",
        [
            (1, "Garden plan"),
            (None, "The garden lies behind the old school."),
            (2, "Tomatoes"),
            (None, "Tomatoes are sown indoors in April."),
            (None, "The greenhouse tomatoes need water every second day."),
        ],
    )
    make_epub(
        docs / "tales.epub",
        [
            ("The Storm", "The storm of 1913 destroyed nineteen fishing boats at Gamvik."),
            ("The Harbour", "The new harbour at Mehamn opened in 1931 with a stone pier."),
        ],
    )
    make_rtf(
        docs / "minutes.rtf",
        [
            "Minutes of the board meeting.",
            "The board approved a new roof for the sports hall at a cost of 900000 kroner.",
        ],
    )
    make_eml(
        docs / "permits.eml",
        "Quarterly parking permits",
        "Parking permits for the town centre cost 350 kroner per quarter from May.",
    )
    make_docx(
        docs / "plan.docx",
        [
            (1, "Budget"),
            (None, "The budget covers the whole year."),
            (2, "Q3"),
            (None, "In the third quarter the library gets 12 new computers."),
        ],
    )
    (docs / "notes.md").write_text(
        "# Festival\n\nThe festival starts in June.\n\n## Music\n\n"
        "The brass band from Honningsvag plays on the opening night.\n",
        encoding="utf-8",
    )
    (docs / "museum.html").write_text(
        "<html><body><h1>Museum</h1><p>The museum is open daily.</p><h2>Tickets</h2>"
        "<p>A ticket to the polar museum costs 120 kroner for adults.</p></body></html>",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- store


def settings_for(folder: Path) -> Settings:
    # The gate is not what is tested here: questions about tiny files may score low.
    return Settings.from_env(
        docs_dir=folder / "docs", store_dir=folder / "store", refusal_threshold=0.0
    )


def run_index(settings: Settings, embedder: object):  # type: ignore[no-untyped-def]
    return index_folder(settings, progress=False, embedder_factory=lambda: embedder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder) -> Engine:  # type: ignore[no-untyped-def]
    """One store for the module: every format indexed once."""
    settings = settings_for(tmp_path_factory.mktemp("formats"))
    make_corpus(settings.docs_dir)
    report = run_index(settings, embedder)
    assert report.skipped == [] and report.added == 11
    return new_engine(settings, embedder)


def new_engine(settings: Settings, embedder: object) -> Engine:
    from rag.engine import Engine

    engine = Engine(settings)
    engine._embedder = embedder  # share the session's model instead of loading another
    return engine


def cited(engine: Engine, question: str, path: str, quote: str) -> Citation:
    """The citation of `path` whose quote holds `quote`, in the answer with no LLM."""
    answer = engine.ask(question, llm="none")
    assert not answer.refused
    for citation in answer.citations:
        if citation.path == path and quote in citation.quote:
            return citation
    found = [(c.path, c.quote) for c in answer.citations]
    raise AssertionError(f"no citation of {path} quoting {quote!r}: {found}")


# --------------------------------------------------------------- answers, located


@pytest.mark.parametrize(
    ("question", "path", "quote", "page", "section", "locator"),
    [
        (
            "How many passengers does the ferry Nordlys carry?",
            "harbour.pdf", "240 passengers", 3, None, "p. 3",
        ),
        (
            "When was the breakwater of Vardo rebuilt?",
            "harbour.pdf", "1987", 2, None, "p. 2",
        ),
        (
            "How many cups of espresso did the Oslo cafe sell in March?",
            "cafe.pptx", "5120 cups", 2, "Coffee sales", "slide 2",
        ),
        (
            "What is the Q3 budget of the Tromso region?",
            "budget.xlsx", "Tromso", None, "Budget", "Budget row 4",
        ),
        (
            "Who is the harbour master?",
            "budget.xlsx", "Ola Hansen", None, "Staff", "Staff row 2",
        ),
        (
            "Who is the mayor of Hammerfest?",
            "towns.csv", "Terje Wikstrom", None, None, "row 3",
        ),
        (
            "How often do the greenhouse tomatoes need water?",
            "garden.odt", "every second day", None, "Garden plan › Tomatoes",
            "Garden plan › Tomatoes ¶ 2",
        ),
        (
            "When did the new harbour at Mehamn open?",
            "tales.epub", "1931", None, "The Harbour", "The Harbour",
        ),
        (
            "How much does the new roof for the sports hall cost?",
            "minutes.rtf", "900000 kroner", None, None, "¶ 2",
        ),
        (
            "How much does a parking permit for the town centre cost?",
            "permits.eml", "350 kroner", None, "Quarterly parking permits",
            "e-mail: Quarterly parking permits",
        ),
        (
            "How many new computers does the library get in the third quarter?",
            "plan.docx", "12 new computers", None, "Budget › Q3", "Budget › Q3 ¶ 1",
        ),
        (
            "Which brass band plays on the opening night of the festival?",
            "notes.md", "Honningsvag", None, "Festival › Music", "Festival › Music",
        ),
        (
            "How much is a ticket to the polar museum?",
            "museum.html", "120 kroner", None, "Museum › Tickets", "Museum › Tickets",
        ),
    ],
)  # fmt: skip
def test_citation_locates_the_quote(
    corpus: Engine,
    question: str,
    path: str,
    quote: str,
    page: int | None,
    section: str | None,
    locator: str,
) -> None:
    citation = cited(corpus, question, path, quote)
    assert (citation.page, citation.section, citation.locator) == (page, section, locator)
    shown = citation.as_dict()  # what `rag ask --json` and the API give
    assert (shown["page"], shown["section"], shown["locator"]) == (page, section, locator)


def test_pdf_citation_gives_the_page_of_the_quote_not_of_the_chunk(corpus: Engine) -> None:
    """The whole small PDF is one chunk starting on page 1; the quote is on page 3."""
    hits = corpus.search("ferry Nordlys passengers", k=3)
    chunk = next(h.chunk for h in hits if h.chunk.path == "harbour.pdf")
    assert (chunk.page, chunk.last_page) == (1, 3)
    assert chunk.locator() == "pp. 1–3"
    citation = cited(
        corpus, "How many passengers does the ferry Nordlys carry?", "harbour.pdf", "240"
    )
    assert citation.page == 3 and citation.lines[0] > chunk.first_line


def test_chunk_locations_are_stored_in_chroma(corpus: Engine) -> None:
    store = corpus.store()
    chunks = {c.path: c for c in store.all_chunks()}
    assert chunks["cafe.pptx"].page_map[0] == 1 and chunks["cafe.pptx"].last_page == 3
    assert chunks["garden.odt"].section == "Garden plan"
    assert chunks["budget.xlsx"].label_map[0] == "Budget row 1"
    assert chunks["notes.md"].section == "Festival"


# ------------------------------------------------------------ incremental re-index


def test_edited_files_are_re_indexed_with_new_locations(tmp_path: Path, embedder) -> None:
    settings = settings_for(tmp_path)
    settings.docs_dir.mkdir()
    sheet = {"Budget": [["Region", "Q3 budget"], ["Tromso", 48200]]}
    make_xlsx(settings.docs_dir / "budget.xlsx", sheet)
    make_pptx(settings.docs_dir / "cafe.pptx", [("Coffee", "The Oslo cafe sold 5120 cups.")])
    assert run_index(settings, embedder).added == 2

    sheet["Budget"].insert(1, ["Senja", 9900])  # Tromso moves to row 3
    sheet["Budget"][2][1] = 51000
    make_xlsx(settings.docs_dir / "budget.xlsx", sheet)
    report = run_index(settings, embedder)
    assert (report.added, report.updated, report.unchanged) == (0, 1, 1)

    engine = new_engine(settings, embedder)
    citation = cited(engine, "What is the Q3 budget of the Tromso region?", "budget.xlsx", "51000")
    assert citation.locator == "Budget row 3"
    assert "48200" not in " ".join(c.text for c in engine.store().all_chunks())


# ---------------------------------------------------------- corrupt, encrypted, empty


def _truncated(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _bad_files(folder: Path) -> dict[str, str]:
    """Unreadable files of every new format, and the reason each must be skipped with."""
    bad: dict[str, str] = {}

    def add(name: str, reason: str, build: Callable[[Path], None]) -> None:
        build(folder / name)
        bad[name] = reason

    for suffix in (".pptx", ".xlsx", ".csv", ".odt", ".epub", ".rtf", ".eml"):
        add(f"empty{suffix}", "empty file", lambda p: p.write_bytes(b""))
    add(
        "locked.xlsx",
        "encrypted .xlsx file",
        lambda p: (make_xlsx(p, {"S": [["x", 1]]}), encrypt_ooxml(p)),
    )
    add(
        "locked.pptx",
        "encrypted .pptx file",
        lambda p: (make_pptx(p, [("A", "b")]), encrypt_ooxml(p)),
    )
    add(
        "locked.docx",
        "encrypted .docx file",
        lambda p: (make_docx(p, [(None, "secret plans")]), encrypt_ooxml(p)),
    )
    add("locked.odt", "encrypted .odt file", _encrypted_odt)
    add("locked.epub", "DRM-protected EPUB", lambda p: make_epub(p, [("A", "Some text.")], True))
    add("locked.eml", "encrypted e-mail", _encrypted_eml)
    add(
        "broken.xlsx",
        "corrupt .xlsx file",
        lambda p: (make_xlsx(p, {"S": [["x", 1]]}), _truncated(p)),
    )
    add("broken.pptx", "corrupt .pptx file", lambda p: (make_pptx(p, [("A", "b")]), _truncated(p)))
    add("broken.odt", "corrupt .odt file", lambda p: (make_odt(p, [(None, "x")]), _truncated(p)))
    add("broken.epub", "corrupt .epub file", lambda p: (make_epub(p, [("A", "b")]), _truncated(p)))
    add("broken.csv", "binary content", lambda p: p.write_bytes(b"\x00\x01\x02\x03\xff" * 50))
    add("broken.rtf", "not an RTF document", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" * 8))
    add("broken.eml", "not an e-mail message", lambda p: p.write_bytes(b"\x00garbage" * 20))
    add("blank.xlsx", "workbook has no cell values", lambda p: make_xlsx(p, {"S": []}))
    add("blank.pptx", "presentation has no text", lambda p: make_pptx(p, [("", "")]))
    add("blank.odt", "document has no text", lambda p: make_odt(p, [(None, "")]))
    add("blank.epub", "EPUB has no text", lambda p: make_epub(p, [("", "")]))
    add("blank.csv", "CSV file has no values", lambda p: p.write_text(",,\n,,\n"))
    add("blank.rtf", "RTF document has no text", lambda p: p.write_text("{\\rtf1\\ansi }"))
    add("blank.eml", "e-mail has no text body", lambda p: make_eml(p, "Hello", ""))
    return bad


def _encrypted_odt(path: Path) -> None:
    """What LibreOffice writes for a password: the manifest lists how each part is
    encrypted, and content.xml is ciphertext."""
    make_odt(path, [(None, "secret plans")])
    with zipfile.ZipFile(path) as source:
        parts = {name: source.read(name) for name in source.namelist()}
    parts["content.xml"] = bytes(range(256)) * 4
    parts["META-INF/manifest.xml"] = re.sub(
        rb'(<manifest:file-entry manifest:full-path="content.xml"[^>]*)/>',
        rb'\1><manifest:encryption-data manifest:checksum-type="SHA1/1K" '
        rb'manifest:checksum="x"/></manifest:file-entry>',
        parts["META-INF/manifest.xml"],
    )
    assert b"encryption-data" in parts["META-INF/manifest.xml"]
    with zipfile.ZipFile(path, "w") as target:
        for name, data in parts.items():
            target.writestr(name, data)


def _encrypted_eml(path: Path) -> None:
    message = EmailMessage()
    message["Subject"] = "Secret"
    message["From"] = "a@example.org"
    message.set_content(b"-----BEGIN PGP MESSAGE-----", "application", "octet-stream")
    message.replace_header(
        "Content-Type", 'multipart/encrypted; protocol="application/pgp-encrypted"'
    )
    path.write_bytes(bytes(message))


def _replace_part(path: Path, name: str, data: str) -> None:
    with zipfile.ZipFile(path) as source:
        parts = {part: source.read(part) for part in source.namelist()}
    parts[name] = data.encode()
    with zipfile.ZipFile(path, "w") as target:
        for part, content in parts.items():
            target.writestr(part, content)


_WORD_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
DOCX_PROBLEMS: dict[str, tuple[Callable[[Path], object], str]] = {
    "password": (encrypt_ooxml, "encrypted .docx file (password-protected)"),
    "renamed .doc": (
        lambda p: p.write_bytes(OLE_MAGIC + bytes(504)),
        "not a .docx file (an older binary Office file renamed?)",
    ),
    "renamed .xlsx": (
        lambda p: make_xlsx(p, {"S": [["x", 1]]}),
        "corrupt .docx file (not a Word document)",
    ),
    "content types": (  # the root in no namespace: python-docx fails on "overrides"
        lambda p: _replace_part(
            p,
            "[Content_Types].xml",
            f'<Types><Override PartName="/word/document.xml" ContentType="{_WORD_TYPE}"/></Types>',
        ),
        "corrupt .docx file (damaged Word document)",
    ),
    "document.xml": (
        lambda p: _replace_part(p, "word/document.xml", "<w:document"),
        "corrupt .docx file (damaged Word document)",
    ),
    "truncated": (_truncated, "corrupt .docx file (not a valid ZIP container)"),
}


@pytest.mark.parametrize("problem", sorted(DOCX_PROBLEMS))
def test_unreadable_docx_reasons_name_the_problem(problem: str, tmp_path: Path) -> None:
    """As for .pptx and .xlsx, and in a reader's words, not the parser's internals."""
    build, reason = DOCX_PROBLEMS[problem]
    make_docx(tmp_path / "plan.docx", [(1, "Plan"), (None, "Build the pier in May.")])
    build(tmp_path / "plan.docx")
    with pytest.raises(IngestError) as caught:
        read_document(tmp_path / "plan.docx", tmp_path, 10_000_000)
    assert str(caught.value) == reason


def test_docx_that_unpacks_too_large_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ZIP bomb check of the other Office files (the limit lowered, not the file
    grown to 512 MB)."""
    make_docx(tmp_path / "plan.docx", [(None, "Build the pier in May.")])
    monkeypatch.setattr("rag.formats.MAX_UNPACKED_BYTES", 1000)
    with pytest.raises(IngestError, match=r"^\.docx file unpacks to \d+ MB"):
        read_document(tmp_path / "plan.docx", tmp_path, 10_000_000)


def test_each_bad_file_gives_its_reason(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, reason in _bad_files(folder).items():
        with pytest.raises(IngestError, match=reason) as caught:
            read_document(folder / name, folder, 10_000_000)
        assert "\n" not in str(caught.value), name


def test_bad_files_are_skipped_and_indexed_files_stay(tmp_path: Path, embedder) -> None:
    settings = settings_for(tmp_path)
    make_corpus(settings.docs_dir)
    for name in ("harbour.pdf", "plan.docx", "notes.md", "museum.html"):
        (settings.docs_dir / name).unlink()  # the new formats are enough here
    first = run_index(settings, embedder)
    assert first.added == 7 and first.skipped == []

    bad = _bad_files(settings.docs_dir)
    shutil.copy(settings.docs_dir / "broken.xlsx", settings.docs_dir / "budget.xlsx")
    report = run_index(settings, embedder)
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == set(bad) | {"budget.xlsx"}
    for name, reason in bad.items():
        assert reason in reasons[name] and "\n" not in reasons[name]
    assert reasons["budget.xlsx"].endswith("(previous version kept)")
    assert report.files == 7 and report.removed == 0

    engine = new_engine(settings, embedder)
    citation = cited(engine, "What is the Q3 budget of the Tromso region?", "budget.xlsx", "48200")
    assert citation.locator == "Budget row 4"


# ------------------------------------------------------------- readers, no store


def test_html_only_mail_is_read_through_the_html_extractor(tmp_path: Path) -> None:
    make_eml(tmp_path / "news.eml", "Road works", "The bridge closes on 4 May.", html=True)
    doc = read_document(tmp_path / "news.eml", tmp_path, 10_000_000)
    assert "The bridge closes on 4 May." in doc.text.split("\n")
    assert "<p>" not in doc.text and doc.title == "Road works"
    assert {where.label for where in doc.locations} == {"e-mail: Road works"}


def test_locations_follow_the_lines_the_cleaner_keeps(tmp_path: Path) -> None:
    """Blank and boilerplate lines are dropped; each kept line keeps its own place."""
    make_pdf(tmp_path / "a.pdf", ["First page text here.", "Comments (3)\nSecond page text."])
    doc = read_document(tmp_path / "a.pdf", tmp_path, 10_000_000)
    lines = doc.text.split("\n")
    assert len(doc.locations) == len(lines) == len(doc.line_numbers)
    assert [where.page for where in doc.locations] == [1, 2]
    assert lines == ["First page text here.", "Second page text."]


def test_spreadsheet_rows_carry_their_column_names(tmp_path: Path) -> None:
    make_xlsx(tmp_path / "a.xlsx", {"Prices": [["Item", "Price"], ["Bread", 35.0], ["Milk", 19.5]]})
    doc = read_document(tmp_path / "a.xlsx", tmp_path, 10_000_000)
    assert doc.text.split("\n") == [
        "Item | Price",
        "Item: Bread | Price: 35",
        "Item: Milk | Price: 19.5",
    ]
    assert [where.label for where in doc.locations] == [
        "Prices row 1",
        "Prices row 2",
        "Prices row 3",
    ]


def test_semicolon_csv_and_markdown_code_blocks(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("name;age\nAnna;31\n", encoding="utf-8")
    doc = read_document(tmp_path / "a.csv", tmp_path, 10_000_000)
    assert doc.text.split("\n")[1] == "name: Anna | age: 31"
    (tmp_path / "a.md").write_text("# Top\n```\n# not a heading\n```\nText.\n", encoding="utf-8")
    doc = read_document(tmp_path / "a.md", tmp_path, 10_000_000)
    assert {where.section for where in doc.locations} == {"Top"}


def test_a_pptx_with_malformed_parts_is_named_corrupt_without_parser_internals(
    tmp_path: Path,
) -> None:
    # the content-types root in no namespace: python-pptx trips over it with an
    # AttributeError, whose text says nothing to a reader
    make_pptx(tmp_path / "deck.pptx", [("Plan", "Build the pier in May.")])
    _replace_part(tmp_path / "deck.pptx", "[Content_Types].xml", "<Types/>")
    with pytest.raises(IngestError) as caught:
        read_document(tmp_path / "deck.pptx", tmp_path, 10_000_000)
    assert str(caught.value).startswith("corrupt .pptx file (")
    assert "object" not in str(caught.value) and "attribute" not in str(caught.value)
