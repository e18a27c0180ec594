"""detect_language on short questions, follow-ups, long texts and text with no language."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rag.language import LANGUAGE_NAMES, detect_language

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
GOLDEN = ROOT / "tests" / "qa" / "golden.jsonl"

SHORT_QUESTIONS = {
    "en": [
        "When was Resolution 57 adopted?",
        "Who is the director?",
        "How many?",
        "Why?",
        "And what about Quang Ninh?",
        "And Quang Ninh?",
        "Who is Pham Hong Quat?",
        "Tell me more.",
        "What does it mean?",
    ],
    "vi": [
        "Nghị quyết 57 được ban hành khi nào?",
        "Còn Quảng Ninh?",
        "Ai là giám đốc?",
        "Bao nhiêu?",
        "Tại sao?",
        "Còn dân số thì sao?",
    ],
    "ru": [
        "Когда приняли резолюцию?",
        "А в Куангнине?",
        "Кто директор?",
        "Сколько?",
        "Почему?",
        "Кто такой Фам Хонг Куат?",
    ],
    "de": [
        "Wann wurde die Resolution verabschiedet?",
        "Und in Quang Ninh?",
        "Wer ist der Direktor?",
        "Wie viele Startups gibt es?",
        "Und wann?",
        "Warum?",
        "Wer ist Pham Hong Quat?",
        "Was bedeutet das?",
    ],
    "no": [
        "Hvor mange oppstartsbedrifter finnes i Dong Nai?",
        "Og i Quang Ninh?",
        "Hva med Quang Ninh?",
        "Og hva med Can Tho?",
        "Hvem er direktør?",
        "Hvor mange?",
        "Hvorfor det?",  # also Danish: ties go to Norwegian
        "Hvem leder foreningen?",
        "Hvem er Pham Hong Quat?",
        "Når ble resolusjonen vedtatt?",
        "Jeg vet ikke.",
        "Kva heiter plattforma?",  # Nynorsk
        "Eg veit ikkje kor mange det er.",  # Nynorsk
    ],
    "da": ["Hvad betyder det?", "Hvornår blev resolutionen vedtaget?"],
    "sv": ["Vad betyder det?", "Hur många företag finns det i Sverige?"],
    "uk": ["Коли ухвалили резолюцію?", "Скільки стартапів у провінції?"],
    "fr": ["Quand la résolution a-t-elle été adoptée ?"],
    "es": ["¿Cuándo se aprobó la resolución?"],
}

LONG_TEXTS = {
    "en": [
        "The Ministry of Science and Technology published framework guidelines for "
        "localities on 21 August 2025. The guidelines set targets for innovation, digital "
        "transformation and the number of technology enterprises in each province.",
        "Ho Chi Minh City attracted 1.6 billion US dollars of foreign direct investment in "
        "science and technology in the first six months of 2025, and it hosts more than "
        "140 science and technology enterprises.",
    ],
    "vi": [
        "Hiệp hội Doanh nghiệp Khoa học và Công nghệ Việt Nam đặt mục tiêu hỗ trợ ít nhất 30 "
        "startup công nghệ đổi mới sáng tạo đến năm 2030. Hiệp hội sẽ trở thành tổ chức có uy "
        "tín, tư vấn và phản biện chính sách về khoa học, công nghệ và chuyển đổi số.",
        "Sau sáp nhập, tỉnh Thái Nguyên đã bố trí hơn 233 tỷ đồng cho khoa học, công nghệ, "
        "đổi mới sáng tạo và chuyển đổi số, và đặt mục tiêu tăng chi cho nghiên cứu.",
    ],
}
SEED_LANGUAGES = {
    "000_a90688048cff79fb.txt": "ru",
    "001_4db01bd0444e8e23.txt": "ru",
    "002_d6db562a30fbc1a0.txt": "no",
    "003_2c90ef674639c79c.txt": "de",
    "004_c121dd273e78537b.txt": "no",
}


def _cases(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(code, text) for code, texts in table.items() for text in texts]


@pytest.mark.parametrize(("expected", "question"), _cases(SHORT_QUESTIONS))
def test_short_questions(expected: str, question: str) -> None:
    assert detect_language(question) == expected


@pytest.mark.parametrize(("expected", "text"), _cases(LONG_TEXTS))
def test_long_texts(expected: str, text: str) -> None:
    assert detect_language(text) == expected


@pytest.mark.parametrize(("name", "expected"), sorted(SEED_LANGUAGES.items()))
def test_seed_files_whole_and_by_line(name: str, expected: str) -> None:
    text = (SEEDS / name).read_text(encoding="utf-8")
    assert detect_language(text) == expected
    # Every long line of the article alone is detected too (header lines are Vietnamese).
    article_lines = [line for line in text.split("\n") if len(line) > 150]
    assert article_lines
    for line in article_lines:
        assert detect_language(line) == expected, line


def test_every_golden_question_including_follow_ups() -> None:
    cases = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    wrong = [
        (case["lang"], detect_language(case["question"]), case["question"])
        for case in cases
        if detect_language(case["question"]) != case["lang"]
    ]
    assert len(cases) >= 50
    assert wrong == []


@pytest.mark.parametrize(
    "text", ["", "   \n\t", "57", "???", "2025-2030", "12/12/2025", "OK", "https://nhandan.vn/"]
)
def test_no_language_gives_und(text: str) -> None:
    assert detect_language(text) == "und"


def test_vietnamese_with_a_name_in_a_foreign_form_stays_vietnamese() -> None:
    # a local model's answer that keeps the sources' genitive "Lam Dongs": the fast
    # trigram pass ranked German, Norwegian, Danish and Swedish ahead of Vietnamese
    assert detect_language("Dân số Lam Dongs là 3,4 triệu người.") == "vi"
    assert detect_language("Welche Position hat Phạm Hồng Quát in der Abteilung?") == "de"


def test_decomposed_vietnamese_is_recognised() -> None:
    decomposed = "Nghi\u0323 quyê\u0301t 57 đươ\u0323c ban ha\u0300nh khi na\u0300o?"
    assert detect_language(decomposed) == "vi"


def test_language_names() -> None:
    assert LANGUAGE_NAMES["no"] == "Norwegian (Bokmål)"
    for code in ("en", "vi", "ru", "de", "no"):
        assert LANGUAGE_NAMES[code]
    assert "und" not in LANGUAGE_NAMES  # callers test membership to see if one was found
    returned = {code for code, _ in _cases(SHORT_QUESTIONS)}
    assert returned <= LANGUAGE_NAMES.keys()


def test_fast_once_loaded() -> None:
    detect_language("warm up the models")
    questions = [text for _, text in _cases(SHORT_QUESTIONS)]
    started = time.perf_counter()
    for question in questions:
        detect_language(question)
    assert (time.perf_counter() - started) / len(questions) < 0.02


def test_huge_text_is_sampled() -> None:
    text = (SEEDS / "003_2c90ef674639c79c.txt").read_text(encoding="utf-8") * 300  # ~2.4 MB
    started = time.perf_counter()
    assert detect_language(text) == "de"
    assert time.perf_counter() - started < 0.5
