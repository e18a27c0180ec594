"""Claim-level support: facts of a claim found in a sentence, across languages."""

from __future__ import annotations

import pytest

from rag.support import (
    Facts,
    asks_amount,
    covers,
    evidence_names,
    facts,
    figures,
    says_not_found,
    states_amount,
    unknown_names,
    verify_claims,
)

NO_GIVEN = Facts(frozenset(), frozenset(), frozenset())


@pytest.mark.parametrize(
    "written",
    [
        "27 June 2025",
        "June 27, 2025",
        "27.06.2025",
        "27/6/2025",
        "2025-06-27",
        "ngày 27 tháng 6 năm 2025",
        "27 июня 2025 года",
        "27. Juni 2025",
        "27. juni 2025",
        "27 juin 2025",
        "27 de junio de 2025",
        "27 czerwca 2025",
        "2025年6月27日",
    ],
)
def test_a_date_is_the_same_fact_in_every_notation(written: str) -> None:
    assert facts(written) == facts("27 June 2025")


def test_a_claimed_month_and_year_is_supported_by_a_full_date() -> None:
    assert covers(facts("adopted in June 2025"), ["vedtatt 27.06.2025"], NO_GIVEN)
    assert not covers(facts("adopted on 22 December 2024"), ["vedtatt 27.06.2025"], NO_GIVEN)


def test_a_day_range_is_stated_either_way_round() -> None:
    norwegian = ["TECHFEST 2025 fant sted fra 12. til 14. desember"]
    assert covers(facts("held from December 12 to 14, 2025"), norwegian, NO_GIVEN)
    assert covers(facts("held from 12 to 14 December"), ["from December 12 to 14"], NO_GIVEN)
    assert not covers(facts("held from December 12 to 15"), norwegian, NO_GIVEN)


def test_a_decimal_with_a_point_is_a_figure_not_a_date() -> None:
    assert facts("1.6 billion US dollars").numbers == facts("1,6 Milliarden US-Dollar").numbers
    assert not facts("1.6 billion").dates
    assert facts("am 27.06. eröffnet") == facts("opened on 27 June")


def test_the_same_digits_at_another_scale_are_not_the_same_amount() -> None:
    german = ["Thai Nguyen stellte über 233 Milliarden VND bereit."]
    assert covers(facts("233 tỷ đồng"), german, NO_GIVEN)
    assert covers(facts("233 billion VND"), german, NO_GIVEN)
    assert not covers(facts("233 triệu đồng"), german, NO_GIVEN)
    assert not covers(facts("nearly 23.3 billion USD"), german, NO_GIVEN)
    # nor when another sentence is checked first
    assert not covers(facts("Thai Nguyen: 233 triệu đồng"), ["Thai Nguyen", *german], NO_GIVEN)


def test_a_scaled_amount_matches_however_it_is_grouped_or_scaled() -> None:
    german = ["Direktinvestitionen in Höhe von 1,6 Milliarden US-Dollar"]
    for written in ("1.6 billion US dollars", "1,600 million USD", "16亿美元", "1,6 млрд"):
        assert covers(facts(written), german, NO_GIVEN), written
    assert not covers(facts("1.6 million dollars"), german, NO_GIVEN)


def test_numbers_match_across_grouping_and_decimal_marks() -> None:
    assert figures("3,4 millioner") == figures("3.4 million")
    assert figures("24 000 km²") == figures("24,000 km²")
    assert covers(facts("about 41,200 visitors"), ["rund 41 200 Besucher"], NO_GIVEN)


def test_names_are_matched_across_scripts_and_transliterations() -> None:
    known = evidence_names([("Провинция Кантхо поддержала 40 проектов.", "ru")])
    claim = facts("Can Tho supported 40 projects.", known)
    assert claim.names  # "Can Tho" is a name the evidence knows
    assert covers(claim, ["Провинция Кантхо поддержала 40 проектов."], NO_GIVEN)


def test_a_neighbours_figure_is_not_supported() -> None:
    evidence = [
        ("Lam Dong har 3,4 millioner innbyggere.", "no"),
        ("Dong Nai har 90 bedrifter.", "no"),
    ]
    known = evidence_names(evidence)
    claim = facts("Die Provinz Dong Nai hat 3,4 Millionen Einwohner.", known)
    assert not covers(claim, [evidence[0][0]], NO_GIVEN)
    assert covers(facts("Lam Dong hat 3,4 Millionen Einwohner.", known), [evidence[0][0]], NO_GIVEN)


def test_german_nouns_are_not_names_to_look_for() -> None:
    known = evidence_names([("Die Provinz hat viele Einwohner und Unternehmen.", "de")])
    assert not facts("Die Einwohner der Provinz", known).names


def test_english_title_case_is_no_name() -> None:
    known = evidence_names([("He met the Ministry of Science and Technology.", "en")])
    assert not facts("The Ministry said so.", known).names


@pytest.mark.parametrize(
    "reply",
    [
        "The sources do not mention the weather.",
        "Das Wetter morgen in Berlin wird nicht angegeben.",
        "Thời tiết không được cập nhật trong các nguồn.",
        "Численность населения не указана.",
        "Befolkningstallet er ikke oppgitt.",
        "资料中没有提到人口。",
    ],
)
def test_replies_that_say_the_sources_lack_the_fact(reply: str) -> None:
    assert says_not_found(reply)


def test_a_real_answer_is_not_a_not_found_reply() -> None:
    assert not says_not_found("Dong Nai has about 90 innovative startups [1].")


def test_verify_claims_checks_each_shown_claim_against_its_quotes() -> None:
    quotes = {
        1: ["Dong Nai har omtrent 90 oppstartsbedrifter."],
        2: ["Lam Dong har 3,4 millioner."],
    }
    assert verify_claims("Dong Nai has about 90 startups [1].", quotes) == [True]
    assert verify_claims("Dong Nai has 3.4 million people [2].", quotes) == [False]
    assert verify_claims("It has 90 startups.", quotes) == [False]  # a figure, uncited


def test_names_from_nowhere_are_found_and_known_names_are_not() -> None:
    sources = ["I Dong Nai er det etablert omtrent 90 oppstartsbedrifter.", "Хоанг Дык Тхао"]
    assert unknown_names("The Tour was won by Tadej Pogačar.", sources, "en") == ["Tadej Pogačar"]
    assert unknown_names("Hoàng Đức Thảo chairs it.", sources, "vi") == []
    assert unknown_names("Die Provinz Dong Nai hat 90 Startups.", sources, "de") == []
    assert unknown_names("The Ministry of Science said so.", sources, "en") == []


def test_a_name_with_a_short_middle_word_is_known_by_all_its_words() -> None:
    sources = ["Pham Thi Nham, nestleder i Lam Dong, sa at kapitalen mangler."]
    assert unknown_names("Ifølge Pham Thi Nham mangler kapital.", sources, "no") == []
    assert unknown_names("Ifølge Tran Van Long mangler kapital.", sources, "no") == [
        "Ifølge Tran Van Long"
    ]


def test_a_name_in_the_genitive_is_stated_by_its_plain_form() -> None:
    evidence = [("Dette er målene til Vietnams bedrifter.", "no"), ("Her er Japans mål.", "no")]
    claim = facts("Målene til Vietnams forening gjelder 2025–2030.", evidence_names(evidence))
    assert claim.names
    assert covers(claim, ["Vietnam har mål for 2025–2030."], NO_GIVEN)
    assert not covers(claim, ["Japan har mål for 2025–2030."], NO_GIVEN)


def test_a_latin_name_ends_where_kana_or_han_begins() -> None:
    sources = ["FPT Japan koordinerer med ambassaden."]
    assert unknown_names("企業はFPT Japanです。", sources, "ja") == []
    assert unknown_names("企業はSony Groupです。", sources, "ja") == ["Sony Group"]


def test_an_article_opening_a_sentence_is_no_part_of_a_name() -> None:
    assert not evidence_names([("Die Stadt beherbergt mehr als 140 Unternehmen.", "de")])


@pytest.mark.parametrize(
    ("question", "language", "amount"),
    [
        ("And how many S&T enterprises does it have?", "en", True),
        ("Đồng Nai có bao nhiêu doanh nghiệp?", "vi", True),
        ("А сколько стартап-проектов поддержали?", "ru", True),
        ("Und wie viele innovative Startups gibt es?", "de", True),
        ("Hvor mye penger har provinsen satt av?", "no", True),
        ("Ile członków mają kluby?", "pl", True),
        ("¿Cuántos visitantes asistieron?", "es", True),
        ("合併後の面積はどのくらいですか？", "ja", True),
        ("至少让多少家企业成为典型企业？", "zh", True),
        ("Who chairs the association?", "en", False),
        ("Mobile platforms: who builds them?", "en", False),  # no "ile" inside a word
        ("Wer leitet die Vereinigung?", "de", False),
        ("Kto jest prezesem? Mobile aplikacje.", "pl", False),
        ("他几乎每天都工作吗？", "zh", False),  # 几乎 is "almost", not "how many"
        ("How long-term is the plan?", "en", False),  # "-" joins words
        ("Mấy công ty đó làm gì?", "vi", False),  # "those few", not "how many"
        ("Wie vielfältig ist das Angebot?", "de", False),
        ("¿Qué dijo el gobierno en cuanto a la inversión?", "es", False),
        ("Na ile skuteczne są te programy?", "pl", False),
        ("いくつかの企業は何をしましたか？", "ja", False),  # いくつか is "some"
        ("政府采取了哪几个措施？", "zh", False),  # "which ones"
        ("这个项目在多大程度上成功了？", "zh", False),  # "to what extent"
    ],
)
def test_a_question_asking_an_amount_in_any_language(
    question: str, language: str, amount: bool
) -> None:
    assert asks_amount(question, language) is amount


def test_an_amount_is_a_new_figure_or_a_number_word() -> None:
    question = "Wie viele der 80 Aufgaben hat die Provinz 2025 erfüllt?"
    assert states_amount("Bis 2025 hat sie 42 der 80 Aufgaben erfüllt.", "de", question)
    assert not states_amount("Die Provinz hat 2025 Aufgaben erfüllt.", "de", question)
    assert states_amount("Sie hat fünf Cluster gebildet.", "de")
    assert states_amount("не менее пяти кластеров", "ru")
    assert states_amount("sechzehn Unternehmen", "de") and states_amount("ninety firms", "en")
    assert not states_amount("сотрудничество и семья", "ru")  # no number inside words
    assert not states_amount("The association supports enterprises.", "en")
