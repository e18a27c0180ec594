"""Cleaning: ordinary documents keep every line a user wrote; scraped pages lose their
junk, each dropped line with the rule that dropped it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rag.cleaning import REASONS, clean_text, explain
from rag.cli import main

SEEDS = Path(__file__).resolve().parent.parent / "seeds"

# ------------------------------------------------------- documents a user wrote

GERMAN_REPORT = """\
Quartalsbericht Q3 2024 – Werk Augsburg
Quelle: https://intranet.example.de/berichte/q3-2024

Kennzahlen
Umsatz: 12,4 Mio. EUR (Vorquartal 11,8 Mio. EUR)
Ausschussquote: 2,1 %
Liefertreue: 96 %
Die Ausschussquote sank dank der neuen Prüfstation um 0,4 Prozentpunkte.

Personalplanung
Stand 30.09.: 148 Vollzeitstellen
Für Q4 sind drei zusätzliche Stellen in der Qualitätssicherung geplant
Zwei Auszubildende beginnen im Oktober
Schichtmodell bleibt unverändert
Nächste Überprüfung im Januar
"""

MEETING_NOTES = """\
Project Northlight – sync, 14 March

Attendees: Anna, Ben, Clara
Anna presented the new supplier shortlist. The full comparison is on the wiki:
via https://wiki.example.com/northlight/suppliers
Ben raised concerns about delivery times in Q2.
Clara will check the licence terms before we sign.

Budget discussion postponed to next week, draft here
via https://docs.example.com/northlight/budget-draft

Action items
- Anna: send the shortlist to procurement by Friday
- Ben: ask the two finalists for delivery guarantees
- Clara: review the licence terms with legal
Next meeting
Thursday 21 March
Room Fjord
"""

README = """\
# photo-sorter

Sorts the photos of a folder into year and month folders.

## Image

The Docker image is built with `make image` and published weekly.

Image
-----

Folder layout:
img
src
tests

The pictures go into
img
and the sorted copies into `out/`.

## Usage

- `photo-sorter ~/Pictures`
- `photo-sorter --dry-run ~/Pictures`

Licence
MIT
"""

VIETNAMESE_NOTE = """\
Ghi chú họp nhóm – Dự án Sông Hồng
Độc lập - Tự do - Hạnh phúc
Nguồn: https://noibo.example.vn/du-an/song-hong
Ảnh
Nhóm đã thống nhất lịch triển khai giai đoạn hai.
Chị Lan phụ trách báo cáo tiến độ hằng tuần
Anh Minh chuẩn bị tài liệu cho buổi làm việc với đối tác
Hạn chót: 15/11/2025
"""

NORWEGIAN_RECIPE = """\
Lasagne som bestemor lagde den
Kilde: https://www.example.no/oppskrifter/lasagne

Ingredienser
500 g kjøttdeig
1 Løk
2 Fedd hvitløk
1 Boks hakkede tomater
Salt
Pepper
Oregano
Basilikum
Lasagneplater
Revet Ost
Hvit saus

Fremgangsmåte
Stek kjøttdeigen med løk og hvitløk.
Tilsett tomater og krydder, og la sausen småkoke i 20 minutter.
Legg plater, kjøttsaus og hvit saus lagvis i en form
Strø ost over
Stek i 45 minutter på 200 grader
God appetitt!
"""

USER_DOCUMENTS = {
    "german report": GERMAN_REPORT,
    "meeting notes": MEETING_NOTES,
    "readme": README,
    "vietnamese note": VIETNAMESE_NOTE,
    "norwegian recipe": NORWEGIAN_RECIPE,
}


def non_blank(text: str) -> list[tuple[int, str]]:
    return [(n, line.rstrip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


@pytest.mark.parametrize("name", sorted(USER_DOCUMENTS))
def test_user_documents_keep_every_line(name: str) -> None:
    text = USER_DOCUMENTS[name]
    cleaned = clean_text(text)
    assert list(zip(cleaned.line_numbers, cleaned.lines, strict=True)) == non_blank(text)
    assert cleaned.dropped == []


def test_source_lines_inside_a_document_are_content_and_give_the_url() -> None:
    report = clean_text(GERMAN_REPORT)
    assert report.url == "https://intranet.example.de/berichte/q3-2024"
    assert "Quelle: https://intranet.example.de/berichte/q3-2024" in report.lines
    assert report.lines[-1] == "Nächste Überprüfung im Januar"
    notes = clean_text(MEETING_NOTES)
    assert notes.url == "https://docs.example.com/northlight/budget-draft"
    assert notes.lines[-3:] == ["Next meeting", "Thursday 21 March", "Room Fjord"]
    assert notes.dropped == []


def test_a_note_that_starts_with_its_source() -> None:
    top = clean_text("Source: https://example.org/top\nText after the note's source.\n")
    assert top.lines == ["Text after the note's source."]
    assert top.url == "https://example.org/top"
    assert [(d.line_number, d.rule) for d in top.dropped] == [(1, "source-line")]


def test_a_source_line_that_ends_a_document_is_dropped() -> None:
    cleaned = clean_text(
        "Erster Satz.\nZweiter Satz.\nQuelle: https://a.example\n\nKommentar (0)\n"
    )
    assert cleaned.lines == ["Erster Satz.", "Zweiter Satz."]
    assert cleaned.url == "https://a.example"
    assert [d.rule for d in cleaned.dropped] == ["source-line", "comment-counter"]


def test_two_source_lines_with_content_after_keep_everything() -> None:
    two = clean_text("A.\nQuelle: https://a.example\nB.\nQuelle: https://b.example\nC.\n")
    assert two.lines == ["A.", "Quelle: https://a.example", "B.", "Quelle: https://b.example", "C."]
    assert two.url == "https://b.example"


def test_a_few_headlines_after_the_source_line_are_not_enough() -> None:
    article = "Der erste Satz des Artikels.\nDer zweite Satz des Artikels.\n"
    text = article + "Quelle: https://a.example\nWeitere Themen\nSport\nWetter\nKultur\nReisen\n"
    assert clean_text(text).lines[-1] == "Reisen"
    six = clean_text(text + "Wirtschaft\n")
    assert six.lines == ["Der erste Satz des Artikels.", "Der zweite Satz des Artikels."]
    assert {d.rule for d in six.dropped} == {"source-line", "navigation"}


def test_headlines_under_an_article_of_short_lines_are_kept() -> None:
    poem = "Nordlys\nOver fjellet\nStille natt\n"
    text = poem + "Kilde: https://dikt.example\n" + "".join(f"Vers {w}\n" for w in "ABCDEFGH")
    assert len(clean_text(text).lines) == 3 + 1 + 8


# ----------------------------------------------------------------- image lines


def test_image_words_in_a_readme_are_content() -> None:
    cleaned = clean_text(README)
    assert cleaned.lines.count("img") == 2 and "Image" in cleaned.lines
    assert cleaned.dropped == []


@pytest.mark.parametrize(
    "text",
    [
        "Erster Satz.\nimg\nFoto: Anna Berg\nZweiter Satz.\n",  # next to a caption
        "Erster Satz.\n\nAnsicht der Halle, 2024\nPhoto: A. Berg\n\nimg\n\nZweiter Satz.\n",
        "Erster Satz.\nimage\nZweiter Satz.\nIMAGE\nDritter Satz.\n",  # repeated
        "Erster Satz.\n1.jpg\nZweiter Satz.\n1.jpg\nDritter Satz.\n",
    ],
)
def test_clear_image_placeholders_are_dropped(text: str) -> None:
    cleaned = clean_text(text)
    assert not [line for line in cleaned.lines if line.lower() in ("img", "image", "1.jpg")]
    assert {d.rule for d in cleaned.dropped} == {"image-placeholder"}


@pytest.mark.parametrize("line", ["img", "Image", "1.jpg", "photo.png", "Photo"])
def test_a_lone_image_word_between_sentences_stays(line: str) -> None:
    assert line in clean_text(f"Erster Satz.\n{line}\nZweiter Satz.").lines


# ------------------------------------------------------ line rules (unchanged)


@pytest.mark.parametrize(
    "junk", ["Комментарий (0)", "Kommentar (0)", "Comments (3)", "Bình luận (0)"]
)
def test_comment_counters_are_dropped(junk: str) -> None:
    cleaned = clean_text(f"Erster Satz.\n{junk}\nZweiter Satz.")
    assert cleaned.lines == ["Erster Satz.", "Zweiter Satz."]
    assert [(d.line_number, d.rule) for d in cleaned.dropped] == [(2, "comment-counter")]


@pytest.mark.parametrize(
    "content",
    [
        "Ảnh: Báo Nhân dân",
        "Das Bild zeigt ein Foto.",
        "Comments are welcome (3 max)",
        "Báo Nhân dân 12/12/2025",
        "Báo Nhân dânBáo Nhân dân31/02/2025",  # no such date
        "Legg igjen en kommentar",
        "No data",
        "No videos available",
        "Vietnam.vn - Nền tảng quảng bá Việt Nam",  # a banner only on a scraped page
        "Độc lập - Tự do - Hạnh phúc",
        "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM",
    ],
)
def test_content_lines_are_kept(content: str) -> None:
    assert content in clean_text(f"Erster Satz.\n{content}\n").lines


def test_bylines_and_repeats() -> None:
    cleaned = clean_text(
        "Bộ Khoa học và Công nghệBộ Khoa học và Công nghệ22/08/2025\n"
        "Satz.\nSatz.\n\nSatz.\nAnderer Satz.\nSatz.\n"
        "Báo Nhân dânBáo Nhân dân12/12/2025\n"
    )
    assert cleaned.lines == ["Satz.", "Anderer Satz.", "Satz."]
    assert cleaned.line_numbers == [2, 6, 7]
    assert cleaned.metadata == {"publisher": "Bộ Khoa học và Công nghệ", "published": "2025-08-22"}
    rules = [(d.line_number, d.rule) for d in cleaned.dropped]
    assert rules == [(1, "byline"), (3, "repeat"), (5, "repeat"), (8, "byline")]


def test_long_line_is_cleaned_quickly() -> None:
    started = time.perf_counter()
    cleaned = clean_text("ord " * 500_000 + "\nKilde: https://a.example\n")
    assert cleaned.url == "https://a.example" and cleaned.line_numbers == [1]
    assert time.perf_counter() - started < 2


# -------------------------------------------------------------- scraped pages

SCRAPED_PAGE = """\
Example News – Your daily briefing
Home | World | Business

City council approves the new tram line
The council voted 31 to 12 on Tuesday to fund the eastern tram line.
Construction is to start next spring and take three years.
img
The mayor called the vote "a turning point for the east side".
Source: https://news.example.com/2025/tram-line

Comments (4)
Most read
Storm warning for the coast tonight
Local bakery wins national prize
Schools reopen after the holidays
Opinion
Sport
Weather
Contact us
"""


def test_a_scraped_page_loses_banner_image_and_navigation() -> None:
    cleaned = clean_text(SCRAPED_PAGE)
    assert cleaned.lines == [
        "City council approves the new tram line",
        "The council voted 31 to 12 on Tuesday to fund the eastern tram line.",
        "Construction is to start next spring and take three years.",
        'The mayor called the vote "a turning point for the east side".',
    ]
    assert cleaned.url == "https://news.example.com/2025/tram-line"
    by_rule = explain(cleaned)["by_rule"]
    assert by_rule == {"navigation": 9, "page-header": 2, "image-placeholder": 1, "source-line": 1}


def test_an_image_word_inside_a_sentence_stays_even_on_a_scraped_page() -> None:
    prose = "All photos of the vote are in the\nimg\nfolder of the council's site."
    cleaned = clean_text(SCRAPED_PAGE.replace("img", prose))
    assert "img" in cleaned.lines
    assert "image-placeholder" not in explain(cleaned)["by_rule"]


@pytest.mark.parametrize(
    "source_line",
    [
        "Источник: https://example.org/a",
        "Kilde: https://example.org/a",
        "Quelle: https://example.org/a",
        "SOURCE https://example.org/a",
        "Sources: <https://example.org/a>",
        "Nguồn: https://example.org/a",
        "Via https://example.org/a",
        "Originally published at https://example.org/a.",
        "**Quelle:** [vietnamplus.vn](https://example.org/a)",
        "  Fonte: https://example.org/a  ",
    ],
)
def test_source_line_forms(source_line: str) -> None:
    page = SCRAPED_PAGE.replace("Source: https://news.example.com/2025/tram-line", source_line)
    cleaned = clean_text(page)
    assert cleaned.url == "https://example.org/a"
    assert cleaned.lines[-1] == 'The mayor called the vote "a turning point for the east side".'


def test_a_comment_counter_after_the_source_line_marks_a_scraped_page() -> None:
    # as a page saved from the browser: banner (decomposed Unicode), image, one related link
    banner = "Đô\u0323c lâ\u0323p - Tư\u0323 do - Ha\u0323nh phu\u0301c"
    page = (
        f"{banner}\n\nNội dung bài viết.\n\nphoto.png\n\nĐoạn thứ hai của bài.\n"
        "Nguồn: https://a.example\n\nBình luận (0)\nBài viết liên quan về khoa học\n"
    )
    cleaned = clean_text(page)
    assert cleaned.lines == ["Nội dung bài viết.", "Đoạn thứ hai của bài."]
    rules = [(d.line_number, d.rule) for d in cleaned.dropped]
    assert rules == [(1, "page-header"), (5, "image-placeholder"), (8, "source-line"),
                     (10, "navigation"), (11, "navigation")]  # fmt: skip
    assert cleaned.dropped[-1].reason.endswith("after a comment counter")
    # without the counter, one line after the source line is content
    assert clean_text(page.replace("Bình luận (0)\n", "")).lines[-1].startswith("Bài viết")


def test_prose_mentioning_a_source_is_not_a_source_line() -> None:
    prose = clean_text("Die Quelle: https://a.example ist gut.\nSource of truth\n")
    assert prose.url is None and len(prose.lines) == 2


# Where today's kept text of each seed ends; the retrieval golden figures rest on it.
SEED_KEPT = {
    "000_a90688048cff79fb.txt": (7, 8, {"source-line": 1, "comment-counter": 1}),
    "001_4db01bd0444e8e23.txt": (
        22,
        51,
        {"navigation": 21, "page-header": 2, "byline": 1, "image-placeholder": 1, "source-line": 1},
    ),
    "002_d6db562a30fbc1a0.txt": (
        32,
        74,
        {
            "navigation": 16,
            "image-placeholder": 6,
            "page-header": 1,
            "byline": 1,
            "repeat": 1,
            "source-line": 1,
        },
    ),
    "003_2c90ef674639c79c.txt": (25, 28, {"source-line": 1, "comment-counter": 1}),
    "004_c121dd273e78537b.txt": (7, 7, {"source-line": 1, "comment-counter": 1}),
}


@pytest.mark.parametrize("name", sorted(SEED_KEPT))
def test_seeds_lose_their_junk_and_only_that(name: str) -> None:
    text = (SEEDS / name).read_text(encoding="utf-8")
    cleaned = clean_text(text)
    count, last, by_rule = SEED_KEPT[name]
    assert (len(cleaned.lines), cleaned.line_numbers[-1]) == (count, last)
    assert explain(cleaned)["by_rule"] == by_rule
    # every non-blank line is either kept or dropped with a reason, none twice
    numbers = sorted(cleaned.line_numbers + [d.line_number for d in cleaned.dropped])
    assert numbers == [n for n, _ in non_blank(text)]


# -------------------------------------------------------------------- explain


def test_explain_groups_runs_and_names_the_rule() -> None:
    report = explain(clean_text(SCRAPED_PAGE))
    assert report["kept"] == 4 and report["dropped"] == 13
    runs = [(run["first"], run["last"], run["rule"]) for run in report["runs"]]
    assert runs == [(1, 2, "page-header"), (7, 7, "image-placeholder"), (9, 9, "source-line"),
                    (11, 19, "navigation")]  # fmt: skip
    navigation = report["runs"][-1]
    assert navigation["reason"].startswith(REASONS["navigation"] + ": 8 of its 8 lines")
    assert navigation["lines"][0] == {"line": 11, "text": "Comments (4)"}


def test_rag_explain_prints_each_dropped_line_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "page.txt"
    page.write_text(SCRAPED_PAGE, encoding="utf-8")
    assert main(["explain", str(page)]) == 0
    out = capsys.readouterr().out
    assert "lines 11-19  navigation: site navigation after the source line" in out
    assert "     12  Most read" in out
    assert "line 7  image-placeholder: stands for an image on a scraped page" in out
    assert out.rstrip().endswith(
        "dropped 13 lines: 9 navigation, 2 page-header, 1 image-placeholder, 1 source-line"
    )
    assert main(["explain", "--json", str(page)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["file"] == str(page) and data["kept"] == 4
    assert data["by_rule"]["navigation"] == 9


def test_rag_explain_on_a_clean_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "bericht.md"
    report.write_text(GERMAN_REPORT, encoding="utf-8")
    assert main(["explain", str(report)]) == 0
    assert "nothing dropped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.txt", "file not found"), ("data.xyz", "unsupported file type (.xyz)")],
)
def test_rag_explain_errors_are_one_line(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if name != "missing.txt":
        (tmp_path / name).write_text("x", encoding="utf-8")
    assert main(["explain", str(tmp_path / name)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
