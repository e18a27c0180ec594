"""The language registry agrees with every step that uses languages."""

from __future__ import annotations

import json

import pytest
import Stemmer
from lingua import Language

from rag.config import PROMPTS_DIR
from rag.keyword import STEMMER_NAMES
from rag.language import LANGUAGE_NAMES, detect_language
from rag.languages import (
    CORE_LANGUAGES,
    LANGUAGES,
    amount_question_patterns,
    month_spellings,
    numeral_patterns,
)
from rag.ui import LANGUAGES as UI_LANGUAGES

# One question per language, as a user would type it.
QUESTIONS = {
    "en": "How many innovative startups are there in Dong Nai province?",
    "vi": "Tỉnh Đồng Nai có bao nhiêu doanh nghiệp khởi nghiệp sáng tạo?",
    "ru": "Сколько инновационных стартапов в провинции Донгнай?",
    "de": "Wie viele innovative Startups gibt es in der Provinz Dong Nai?",
    "no": "Hvor mange innovative oppstartsbedrifter finnes i Dong Nai-provinsen?",
    "da": "Hvor mange innovative iværksættervirksomheder findes der i Dong Nai-provinsen?",
    "sv": "Hur många innovativa startupföretag finns det i provinsen Dong Nai?",
    "fr": "Combien de startups innovantes compte la province de Dong Nai ?",
    "es": "¿Cuántas startups innovadoras hay en la provincia de Dong Nai?",
    "uk": "Скільки інноваційних стартапів у провінції Донгнай?",
    "pl": "Ile innowacyjnych startupów jest w prowincji Dong Nai?",
    "ja": "ドンナイ省には革新的なスタートアップがいくつありますか？",
    "zh": "同奈省有多少家创新型初创企业？",
}


def test_every_registry_language_has_messages_and_a_question() -> None:
    for name in ("refusal.json", "extractive_intro.json"):
        messages = json.loads((PROMPTS_DIR / name).read_text(encoding="utf-8"))
        assert set(messages) == set(LANGUAGES), name
        assert all(text.strip() for text in messages.values())
    assert set(QUESTIONS) == set(LANGUAGES)
    # what an answer must state when an amount is asked, in each language
    for code, info in LANGUAGES.items():
        assert info.amount_questions and info.numerals, code


@pytest.mark.parametrize("code", sorted(LANGUAGES))
def test_each_amount_wording_is_recognized_as_written(code: str) -> None:
    info = LANGUAGES[code]
    tables = [
        (amount_question_patterns()[code], info.amount_questions),
        (numeral_patterns()[code], info.numerals),
    ]
    for pattern, words in tables:
        for word in words:
            if not word.startswith("re:"):
                written = word.removesuffix("*")
                assert pattern.search(f"{written} ?"), (code, word)
                assert pattern.search(f"{written.upper()} ?"), (code, word)


def test_at_least_the_core_and_eight_further_languages() -> None:
    assert set(CORE_LANGUAGES) <= set(LANGUAGES)
    assert {"fr", "es", "pl", "uk", "sv", "da", "ja", "zh"} <= set(LANGUAGES)


@pytest.mark.parametrize("code", sorted(QUESTIONS))
def test_detector_returns_each_language(code: str) -> None:
    assert detect_language(QUESTIONS[code]) == code


def test_detector_and_registry_agree() -> None:
    assert {code: info.name for code, info in LANGUAGES.items()} == LANGUAGE_NAMES
    for info in LANGUAGES.values():
        for name in info.lingua:
            assert hasattr(Language, name), name


def test_stemmers_and_ui_come_from_the_registry() -> None:
    assert {c: i.stemmer for c, i in LANGUAGES.items() if i.stemmer} == STEMMER_NAMES
    assert set(STEMMER_NAMES.values()) <= set(Stemmer.algorithms())
    assert ("auto", *LANGUAGES) == UI_LANGUAGES


def test_months_have_twelve_spellings_each_and_agree_across_languages() -> None:
    spellings = month_spellings()
    assert spellings["june"] == spellings["juni"] == spellings["июня"] == spellings["6月"] == 6
    for info in LANGUAGES.values():
        assert len(info.months) == 12


def test_short_follow_up_keeps_the_conversation_language() -> None:
    assert detect_language("Og i Quang Ninh?", conversation="no") == "no"
    assert detect_language("Why?", conversation="en") == "en"
    assert detect_language("Und?", conversation="de") == "de"
    # a real question in another language is not forced into the conversation's
    assert detect_language(QUESTIONS["fr"], conversation="de") == "fr"


def test_the_servers_warm_up_weighs_every_registry_language() -> None:
    # rag serve's warm-up detects each language's refusal message so that lingua loads
    # every language's models before the first question: each must be recognized as
    # its own language, or the warm-up would have skipped that language's models
    from rag.server import _warm_up_detection

    _warm_up_detection()
    messages = json.loads((PROMPTS_DIR / "refusal.json").read_text(encoding="utf-8"))
    assert {code: detect_language(text) for code, text in messages.items()} == {
        code: code for code in LANGUAGES
    }
