"""Scanning, decoding, format extraction and cleaning, on the seeds and real fixture files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from pypdf import PdfWriter

from rag.ingest import IngestError, decode_text, read_document, scan_folder
from rag.records import Document, UserError

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
DATA = Path(__file__).resolve().parent / "data"
LIMIT = 10 * 1024 * 1024

SEED_URLS = {
    "000_a90688048cff79fb.txt": "https://www.vietnamplus.vn/hinh-thanh-it-nhat-5-cum-lien-ket-doi-moi-sang-tao-vao-nam-2025-post1081276.vnp",
    "001_4db01bd0444e8e23.txt": "https://mst.gov.vn/ban-hanh-khung-huong-dan-phat-trien-khoa-hoc-cong-nghe-doi-moi-sang-tao-chuyen-doi-so-phuc-vu-tang-truong-kinh-te-dia-phuong-197250822095909209.htm",
    "002_d6db562a30fbc1a0.txt": "https://nhandan.vn/khoi-nghiep-sang-tao-don-bay-moi-cho-phat-trien-kinh-te-xa-hoi-dia-phuong-post929812.html",
    "003_2c90ef674639c79c.txt": "https://www.vietnamplus.vn/nghi-quyet-57-xay-dung-nhieu-mo-hinh-ung-dung-tien-bo-ky-thuat-moi-post1071235.vnp",
    "004_c121dd273e78537b.txt": "https://mst.gov.vn/bo-khcn-dong-hanh-cung-doanh-nghiep-cong-nghe-so-go-global-tai-nhat-ban-197250828204336191.htm",
}  # fmt: skip
SEED_LANGUAGES = dict(zip(sorted(SEED_URLS), ["ru", "ru", "no", "de", "no"], strict=True))
JUNK = [
    "Комментарий",
    "Kommentar (0)",
    "No data",
    "No videos available",
    ".jpg",
    "Vietnam.vn - Nền tảng",
    "Độc lập - Tự do",
    "Báo Nhân dânBáo Nhân dân",
    "Bộ Khoa học và Công nghệBộ Khoa học và Công nghệ",
    "Источник:",
    "Kilde:",
    "Quelle:",
    # from after the source line
    "Обзор первого учебного сеанса",
    "Juleunderholdningssted",
    "Legg igjen en kommentar",
    "I samme kategori",
    "Политическая система",
]
MOJIBAKE = ["Ã", "Ð", "Ñ", "â€", "Ï", "ð", "\ufffd", "ř", "ĺ"]


@pytest.fixture(scope="module")
def seed_docs() -> dict[str, Document]:
    return {name: read_document(SEEDS / name, SEEDS, LIMIT) for name in SEED_URLS}


def read_fixture(name: str) -> Document:
    return read_document(DATA / name, DATA, LIMIT)


def assert_lines_map_back(doc: Document, file_text: str) -> None:
    file_lines = file_text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    text_lines = doc.text.split("\n")
    assert len(text_lines) == len(doc.line_numbers)
    assert doc.line_numbers == sorted(set(doc.line_numbers))
    for line, number in zip(text_lines, doc.line_numbers, strict=True):
        assert file_lines[number - 1].rstrip() == line


def assert_no_mojibake(text: str) -> None:
    assert not [marker for marker in MOJIBAKE if marker in text]


# ------------------------------------------------------------------------------ seeds


@pytest.mark.parametrize("name", sorted(SEED_URLS))
def test_seed_url_language_and_junk(name: str, seed_docs: dict[str, Document]) -> None:
    doc = seed_docs[name]
    assert doc.url == SEED_URLS[name]
    assert doc.language == SEED_LANGUAGES[name]
    assert doc.path == name
    for junk in JUNK:
        assert junk not in doc.text, junk
    lines = doc.text.split("\n")
    assert "img" not in lines
    assert all(line and line == line.rstrip() for line in lines)
    assert all(a != b for a, b in zip(lines, lines[1:], strict=False))


@pytest.mark.parametrize("name", sorted(SEED_URLS))
def test_seed_lines_map_back_to_the_file(name: str, seed_docs: dict[str, Document]) -> None:
    raw = (SEEDS / name).read_bytes()
    doc = seed_docs[name]
    assert_lines_map_back(doc, raw.decode("utf-8"))
    assert doc.content_hash == hashlib.sha256(raw).hexdigest()
    first_line = doc.text.split("\n")[0]
    assert 0 < len(doc.title) <= 120
    assert doc.title == first_line or (
        doc.title.endswith("…") and first_line.startswith(doc.title[:-1])
    )


def test_seed_details(seed_docs: dict[str, Document]) -> None:
    norwegian = seed_docs["002_d6db562a30fbc1a0.txt"]
    assert norwegian.line_numbers[:4] == [3, 5, 9, 12]  # line 10 repeats line 9
    assert norwegian.metadata["publisher"] == "Báo Nhân dân"
    assert norwegian.metadata["published"] == "2025-12-12"
    assert norwegian.title.startswith("Innovative oppstartsbedrifter – en ny drivkraft")
    russian = seed_docs["001_4db01bd0444e8e23.txt"]
    assert russian.metadata["publisher"] == "Bộ Khoa học và Công nghệ"
    assert russian.metadata["published"] == "2025-08-22"
    assert russian.line_numbers[0] == 5 and russian.line_numbers[-1] == 51
    assert seed_docs["000_a90688048cff79fb.txt"].line_numbers == [1, 2, 3, 4, 5, 7, 8]
    assert seed_docs["004_c121dd273e78537b.txt"].line_numbers == [1, 2, 3, 4, 5, 6, 7]
    assert seed_docs["003_2c90ef674639c79c.txt"].line_numbers[-1] == 28


def test_seeds_scan(tmp_path: Path) -> None:
    files, skipped = scan_folder(SEEDS, LIMIT)
    assert [path.name for path in files] == sorted(SEED_URLS)
    assert skipped == []


# --------------------------------------------------------------------------- fixtures


def test_cp1251_russian_with_crlf() -> None:
    doc = read_fixture("ru_cp1251.txt")
    assert doc.metadata["encoding"] == "cp1251"
    assert doc.text.startswith("Ассоциация предприятий науки и технологий Вьетнама намерена")
    assert "«К 2030 году поддержать не менее 30" in doc.text
    assert_no_mojibake(doc.text)
    assert doc.language == "ru"
    assert doc.url == SEED_URLS["000_a90688048cff79fb.txt"]
    assert doc.line_numbers == [1, 3, 5, 8]  # "img" on line 4; CRLF counted as one break
    assert_lines_map_back(doc, (DATA / "ru_cp1251.txt").read_bytes().decode("cp1251"))
    assert "Комментарий" not in doc.text and "Обзор" not in doc.text


def test_utf16_norwegian_with_bom() -> None:
    doc = read_fixture("no_utf16_bom.txt")
    assert doc.metadata["encoding"] == "utf-16-le"
    assert "lokal økonomisk og sosial utvikling" in doc.text
    assert doc.language == "no"
    assert doc.url == SEED_URLS["002_d6db562a30fbc1a0.txt"]
    assert doc.metadata["publisher"] == "Báo Nhân dân"
    assert doc.line_numbers[:4] == [3, 5, 9, 12]
    assert_lines_map_back(doc, (DATA / "no_utf16_bom.txt").read_text(encoding="utf-16"))
    for junk in ("Vietnam.vn", "1.jpg", "Kommentar", "Juleunderholdningssted"):
        assert junk not in doc.text


def test_latin1_norwegian() -> None:
    doc = read_fixture("no_latin1.txt")
    assert doc.metadata["encoding"] in ("cp1252", "latin-1")
    assert doc.text.startswith("På møtet orienterte ambassadør Pham Quang Hieu")
    assert "Oversikt over arbeidsøkten." in doc.text
    assert "være pilotstedet, før denne modellen" in doc.text
    assert_no_mojibake(doc.text)
    assert doc.language == "no"
    assert doc.url == SEED_URLS["004_c121dd273e78537b.txt"]


def test_cp1252_german_with_typographic_quotes() -> None:
    doc = read_fixture("de_cp1252.txt")
    assert doc.metadata["encoding"] == "cp1252"
    assert "Getreu dem Motto „Groß denken, Konkretes tun, Verantwortung übernehmen“" in doc.text
    assert "Ho-Chi-Minh-Stadt verfügt über" in doc.text
    assert_no_mojibake(doc.text)
    assert doc.language == "de"
    assert doc.url == SEED_URLS["003_2c90ef674639c79c.txt"]


def test_pdf() -> None:
    doc = read_fixture("de_article.pdf")
    assert doc.metadata == {"format": "pdf", "pages": 2}
    assert doc.title == "Resolution Nr. 57 in der Praxis"
    assert "Ho-Chi-Minh-Stadt verfügt über eine starke wissenschaftliche" in doc.text
    assert "Stärkung der internationalen Zusammenarbeit" in doc.text
    assert doc.language == "de"
    assert doc.url == SEED_URLS["003_2c90ef674639c79c.txt"]
    assert "Kommentar" not in doc.text and "Quelle" not in doc.text


def test_docx_paragraphs_and_table() -> None:
    doc = read_fixture("no_article.docx")
    lines = doc.text.split("\n")
    assert doc.title == "Vietnams ambassade i Japan og digitale teknologibedrifter"
    assert "Modell | 3-hus-koordineringsmodellen" in lines
    assert "Partner | FPT Japan" in lines
    assert lines.index("Partner | FPT Japan") < lines.index(
        next(line for line in lines if line.startswith("For å effektivt implementere"))
    )
    assert doc.language == "no"
    assert doc.url == SEED_URLS["004_c121dd273e78537b.txt"]
    assert "Kommentar" not in doc.text and "I samme kategori" not in doc.text
    assert doc.line_numbers == list(range(1, len(lines) + 1))


def test_html() -> None:
    doc = read_fixture("ru_article.html")
    assert doc.url == "https://mst.gov.vn/ban-hanh-khung-huong-dan-197250822095909209.htm"
    assert doc.title == "Выпуск рамок для руководства развитием науки и технологий"
    lines = doc.text.split("\n")
    assert lines[0].startswith("Выпуск рамок для руководства развитием науки и технологий, инн")
    assert lines[1].startswith("21 августа 2025 года Министерство науки и технологий (MOST)")
    assert any(line.startswith("Министерство науки и технологий выпустило") for line in lines)
    assert doc.metadata["published"] == "2025-08-22"
    assert doc.language == "ru"
    for furniture in (
        "tracking", "color", "Новости", "Патриотизм", "Поиск", "JavaScript", "©",
        "Vietnam.vn", "Комментарий", "Обзор", "Источник", "img",
    ):  # fmt: skip
        assert furniture not in doc.text, furniture
    assert all(line == " ".join(line.split()) for line in lines)


def test_html_og_url_and_declared_charset(tmp_path: Path) -> None:
    page = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'
        '<meta property="og:url" content="https://example.org/ru"></head>'
        "<body><h1>Резолюция</h1><p>Когда приняли резолюцию о науке?</p></body></html>"
    )
    (tmp_path / "page.htm").write_bytes(page.encode("cp1251"))
    doc = read_document(tmp_path / "page.htm", tmp_path, LIMIT)
    assert doc.url == "https://example.org/ru"
    assert doc.text == "Резолюция\nКогда приняли резолюцию о науке?"
    assert doc.title == "Резолюция"


DEEP = 20_000  # levels: the old extractor took minutes on 50,000 (quadratic in depth)
DEEP_PAGES = {
    "divs": "<div>" * DEEP + "The breakwater was rebuilt in 1987." + "</div>" * DEEP,
    "headers in an article": "<article>"
    + "<header>" * DEEP
    + "The breakwater was rebuilt in 1987."
    + "</header>" * DEEP
    + "</article>",
}


@pytest.mark.parametrize("name", sorted(DEEP_PAGES))
def test_deeply_nested_html_is_read_quickly(name: str, tmp_path: Path) -> None:
    (tmp_path / "deep.html").write_text(DEEP_PAGES[name])
    started = time.perf_counter()
    doc = read_document(tmp_path / "deep.html", tmp_path, LIMIT)
    assert time.perf_counter() - started < 10  # about a second; quadratic took minutes
    assert doc.text == "The breakwater was rebuilt in 1987."


def test_markdown() -> None:
    doc = read_fixture("de_notes.md")
    assert doc.title == "Resolution Nr. 57 in der Praxis"
    assert "photo.png" not in doc.text and "Kommentar" not in doc.text
    assert "- Die Stadt beherbergt mehr als 140" in doc.text
    assert doc.url == SEED_URLS["003_2c90ef674639c79c.txt"]
    assert doc.language == "de"
    assert_lines_map_back(doc, (DATA / "de_notes.md").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Ærlig talt, på søndag.", "latin-1"),
        ("Grüße aus Köln", "latin-1"),
        ("Größere Durchbrüche für die Städte.", "cp1252"),
        ("Привет мир", "cp1251"),
        ("Когда приняли резолюцию о науке и технологиях?", "cp1251"),
        ("Когда приняли резолюцию о науке и технологиях?", "koi8-r"),
        ("Hvor mange oppstartsbedrifter finnes i Dong Nai? Økonomisk vekst.", "latin-1"),
    ],
)
def test_legacy_encodings_never_give_mojibake(text: str, encoding: str) -> None:
    decoded, _ = decode_text(text.encode(encoding))
    assert decoded == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hei på deg\nlinje to".encode("utf-16-le"), "Hei på deg\nlinje to"),
        ("Hei på deg\nlinje to".encode("utf-16-be"), "Hei på deg\nlinje to"),
        ("\ufeffGroß".encode(), "Groß"),
        ("\ufeffПривет".encode("utf-16-be"), "Привет"),
        ("\ufeffПривет".encode("utf-32-le"), "Привет"),
        (b"eins\r\nzwei\rdrei\n", "eins\nzwei\ndrei\n"),
        (b"Stray\x00 NUL bytes\x00 are removed.", "Stray NUL bytes are removed."),
    ],
)
def test_decode_text(raw: bytes, expected: str) -> None:
    assert decode_text(raw)[0] == expected


def test_line_numbers_follow_the_file(tmp_path: Path) -> None:
    crlf = "Erste Zeile.\r\n\r\n  \r\nVierte Zeile.\r\nFünfte."
    (tmp_path / "crlf.txt").write_bytes(crlf.encode("utf-8"))
    doc = read_document(tmp_path / "crlf.txt", tmp_path, LIMIT)
    assert doc.text == "Erste Zeile.\nVierte Zeile.\nFünfte."
    assert doc.line_numbers == [1, 4, 5]
    (tmp_path / "indented.md").write_text("  eingerückt   \n\tmit Tab\t\n", encoding="utf-8")
    doc = read_document(tmp_path / "indented.md", tmp_path, LIMIT)
    assert doc.text == "  eingerückt\n\tmit Tab"  # verbatim but for trailing whitespace


# ----------------------------------------------------------------------- bad inputs


def _encrypted_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _blank_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
BAD_FILES = {
    "empty.txt": (b"", "empty file"),
    "blank.md": (b"  \n\t\n \r\n   ", "only whitespace"),
    "image.txt": (PNG, "binary content (a PNG image)"),
    "random.txt": (random.Random(1).randbytes(4096), "binary content"),
    "nuls.txt": (b"\x00" * 64, "binary content"),
    "zip.md": (b"PK\x03\x04" + bytes(100), "binary content"),
    "broken.pdf": (b"%PDF-1.4\nthis is not a pdf at all\n", "corrupt PDF"),
    "encrypted.pdf": (_encrypted_pdf(), "encrypted PDF"),
    "scanned.pdf": (_blank_pdf(), "PDF has no text, and OCR found none on its pages"),
    "fake.png": (b"not really an image", "not a readable image (unknown or damaged format)"),
    "broken.docx": (b"PK\x03\x04 not really a zip file", "corrupt .docx"),
    "text.docx": (b"plain text with a docx name", "corrupt .docx"),
    "junk_only.txt": ("Комментарий (0)\n\nKommentar (3)\n".encode(), "no text left"),
    "scripts.html": (b"<html><script>var a = 1;</script></html>", "HTML page has no text"),
    "bad_bom.txt": (b"\xef\xbb\xbfabc \xff\xfe def", "invalid utf-8-sig text"),
    "sheet.xls": (b"\xd0\xcf\x11\xe0", "unsupported file type (.xls)"),
    "noext": (b"text", "unsupported file type (no extension)"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_ingest_error(name: str, tmp_path: Path) -> None:
    content, reason = BAD_FILES[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(IngestError) as caught:
        read_document(tmp_path / name, tmp_path, LIMIT)
    assert isinstance(caught.value, UserError)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_too_large_directory_and_missing(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 2000)
    with pytest.raises(IngestError, match=r"file too large \(2,000 bytes, limit 1,000 bytes\)"):
        read_document(tmp_path / "big.txt", tmp_path, 1000)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(IngestError, match="not a regular file"):
        read_document(tmp_path / "folder.txt", tmp_path, LIMIT)
    with pytest.raises(IngestError, match="unreadable"):
        read_document(tmp_path / "missing.txt", tmp_path, LIMIT)


def test_truncated_and_random_files_never_raise_anything_else(tmp_path: Path) -> None:
    rng = random.Random(57)
    blobs = [rng.randbytes(rng.randint(1, 3000)) for _ in range(10)]
    for fixture in ("de_article.pdf", "no_article.docx", "ru_article.html"):
        content = (DATA / fixture).read_bytes()
        blobs += [content[: len(content) * k // 6] for k in range(1, 6)]
    for index, blob in enumerate(blobs):
        for suffix in (".txt", ".md", ".pdf", ".docx", ".html"):
            path = tmp_path / f"blob{index}{suffix}"
            path.write_bytes(blob)
            with contextlib.suppress(IngestError):
                read_document(path, tmp_path, LIMIT)


# ----------------------------------------------------------------------- cleaning
# The rules themselves are pinned in tests/test_cleaning.py.


def test_long_line_is_cleaned_quickly(tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("ord " * 500_000 + "\nKilde: https://a.example\n")
    doc = read_document(tmp_path / "long.txt", tmp_path, LIMIT)
    assert doc.url == "https://a.example" and doc.line_numbers == [1]


# --------------------------------------------------------------------------- scanning


@pytest.fixture
def docs_tree(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "sub" / "deeper").mkdir(parents=True)
    (docs / ".hidden_dir").mkdir()
    (docs / "x.txt").mkdir()  # a folder with a file-like name
    outside = tmp_path / "outside.txt"
    outside.write_text("Secret text outside the documents folder.")
    files = {
        "a.txt": "Erster Satz.",
        "b.md": "# Titel\nText.",
        "sub/deeper/c.html": "<p>Tief im Ordner.</p>",
        "x.txt/inner.txt": "Im Ordner mit Dateinamen.",
        "name with spaces.txt": "Leerzeichen im Namen.",
        "ünïcødé Ж ø.txt": "Unicode im Namen.",
        "$(echo pwned); rm -rf ~ & `ls` | 'q' \"d\".md": "Shell-Zeichen im Namen.",
        ".hidden.txt": "versteckt",
        ".hidden_dir/secret.txt": "versteckt",
        "image.bmp": "not really an image",
        "notes.xls": "x",
        "README": "no extension",
        "big.txt": "y" * 5000,
    }
    for name, text in files.items():
        (docs / name).write_text(text, encoding="utf-8")
    shutil.copy(DATA / "de_article.pdf", docs / "sub" / "article.pdf")
    (docs / "link_outside.txt").symlink_to(outside)
    (docs / "loop_a.txt").symlink_to(docs / "loop_b.txt")
    (docs / "loop_b.txt").symlink_to(docs / "loop_a.txt")
    (docs / "broken.txt").symlink_to(docs / "does_not_exist.txt")
    (docs / "sub" / "up").symlink_to(docs)  # a folder link back up: a cycle
    (docs / "folder_link").symlink_to(docs / "sub" / "deeper")
    (docs / "alias.txt").symlink_to(docs / "a.txt")
    os.mkfifo(docs / "pipe.txt")
    return docs


def test_scan_folder(docs_tree: Path) -> None:
    files, skipped = scan_folder(docs_tree, 3000)
    assert [path.relative_to(docs_tree).as_posix() for path in files] == [
        "$(echo pwned); rm -rf ~ & `ls` | 'q' \"d\".md",
        "a.txt",
        "alias.txt",
        "b.md",
        "name with spaces.txt",
        "sub/article.pdf",
        "sub/deeper/c.html",
        "x.txt/inner.txt",
        "ünïcødé Ж ø.txt",
    ]
    reasons = {skip.path: skip.reason for skip in skipped}
    assert reasons == {
        "README": "unsupported file type (no extension)",
        "big.txt": "file too large (5,000 bytes, limit 3,000 bytes)",
        "broken.txt": "broken symbolic link",
        "folder_link": "link to a folder: not followed",
        "image.bmp": "unsupported file type (.bmp)",
        "link_outside.txt": "symbolic link to outside the documents folder",
        "loop_a.txt": "symbolic link loop",
        "loop_b.txt": "symbolic link loop",
        "notes.xls": "unsupported file type (.xls)",
        "pipe.txt": "not a regular file",
        "sub/up": "symbolic link loop (points to a folder that contains it)",
    }
    assert [skip.path for skip in skipped] == sorted(reasons)
    assert scan_folder(docs_tree, 3000) == (files, skipped)  # deterministic


def test_every_scanned_file_reads(docs_tree: Path) -> None:
    files, _ = scan_folder(docs_tree, 3000)
    docs = [read_document(path, docs_tree, 3000) for path in files]
    assert [doc.path for doc in docs] == [path.relative_to(docs_tree).as_posix() for path in files]
    by_path = {doc.path: doc for doc in docs}
    assert by_path["$(echo pwned); rm -rf ~ & `ls` | 'q' \"d\".md"].text == (
        "Shell-Zeichen im Namen."
    )
    assert by_path["ünïcødé Ж ø.txt"].text == "Unicode im Namen."
    assert by_path["alias.txt"].text == by_path["a.txt"].text
    assert by_path["sub/article.pdf"].language == "de"


def test_reading_a_link_to_outside_is_refused(docs_tree: Path) -> None:
    with pytest.raises(IngestError, match="outside the documents folder"):
        read_document(docs_tree / "link_outside.txt", docs_tree, LIMIT)


def test_missing_docs_folder(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="documents folder not found"):
        scan_folder(tmp_path / "nope", LIMIT)
