"""Follow-ups resolved into standalone questions; questions that stand alone left alone."""

from __future__ import annotations

import pytest

from rag.conversation import depends_on_previous, previous_turn, resolve, standalone_by_rules

HISTORY = [
    {"role": "user", "content": "How many innovative startups does Dong Nai province have?"},
    {"role": "assistant", "content": "About 90 innovative startups [1]."},
]


@pytest.mark.parametrize(
    ("question", "language"),
    [
        ("And Quang Ninh?", "en"),
        ("What about its science and technology enterprises?", "en"),
        ("Why?", "en"),
        ("Còn Quảng Ninh thì sao?", "vi"),
        ("А в Куангнине?", "ru"),
        ("Und wie viele Technologieunternehmen?", "de"),
        ("Og i Quang Ninh?", "no"),
        ("那广宁省呢？", "zh"),
    ],
)
def test_follow_ups_depend_on_the_previous_turn(question: str, language: str) -> None:
    assert depends_on_previous(question, language)


@pytest.mark.parametrize(
    ("question", "language"),
    [
        ("Who won the 2022 FIFA World Cup?", "en"),
        ("Are there startups in Hanoi?", "en"),
        ("Wie wird das Wetter morgen in Berlin?", "de"),
        ("Gibt es dort Startups in Hanoi?".replace("dort ", ""), "de"),
        ("Hvem vant Tour de France i fjor?", "no"),
        ("Как приготовить борщ?", "ru"),
    ],
)
def test_questions_that_stand_alone_however_short(question: str, language: str) -> None:
    assert not depends_on_previous(question, language)


def test_a_topic_switch_is_searched_alone() -> None:
    plan = resolve("Who won the 2022 FIFA World Cup?", HISTORY, turns=6)
    assert not plan.follow_up and plan.standalone == plan.question


def test_a_follow_up_naming_a_new_thing_takes_the_previous_predicate() -> None:
    standalone = standalone_by_rules("And Quang Ninh?", HISTORY[0]["content"], "en")
    assert "Quang Ninh" in standalone and "innovative startups" in standalone
    assert "Dong Nai" not in standalone


@pytest.mark.parametrize(
    ("question", "previous", "language"),
    [
        ("And who chairs the Oslo committee?", "Who chairs the Bergen committee?", "en"),
        ("А кто руководит филиалом в Казани?", "Кто руководит филиалом в Самаре?", "ru"),
        ("Und welche Ziele verfolgt Nord Stream?", "Welche Ziele verfolgt die EU?", "de"),
    ],
)
def test_a_follow_up_asking_in_full_about_a_new_name_is_searched_as_asked(
    question: str, previous: str, language: str
) -> None:
    # the previous predicate would only pull search back to the previous subject
    standalone = standalone_by_rules(question, previous, language)
    assert standalone == question.split(" ", 1)[1]


def test_a_follow_up_asking_in_full_but_pointing_back_keeps_the_previous_context() -> None:
    standalone = standalone_by_rules(
        "And how many engineers does it employ in Oslo?", "Where is Acme Robotics based?", "en"
    )
    assert "Acme Robotics" in standalone


def test_a_lone_capitalized_noun_in_german_is_no_new_subject() -> None:
    # "Provinz" and "Startups" are nouns, not names: the province is the previous one
    standalone = standalone_by_rules(
        "Und wie viele Startups gibt es in der Provinz?",
        "Wie viele Mitglieder haben die Clubs in Quang Ninh?",
        "de",
    )
    assert "Quang Ninh" in standalone


def test_an_opener_is_cut_as_whole_words() -> None:
    standalone = standalone_by_rules(
        "А какой объём инвестиций привлекла провинция Тхайнгуен?",
        "Сколько инвестиций привлёк Хошимин?",
        "ru",
    )
    assert standalone.startswith("какой объём инвестиций")


def test_a_follow_up_naming_nothing_takes_the_previous_names() -> None:
    standalone = standalone_by_rules(
        "Und wie viele Technologieunternehmen?",
        "Wie viele Startups hat die Provinz Dong Nai?",
        "de",
    )
    assert "Technologieunternehmen" in standalone and "Dong Nai" in standalone


def test_a_pronoun_takes_the_name_of_the_previous_answer() -> None:
    standalone = standalone_by_rules(
        "What else did he say?",
        "Who is the ambassador?",
        "en",
        "The ambassador is Pham Quang Hieu [1].",
    )
    assert "Pham Quang Hieu" in standalone


def test_the_llm_rewrite_is_used_when_it_looks_like_a_question() -> None:
    plan = resolve(
        "And Quang Ninh?",
        HISTORY,
        6,
        rewrite=lambda q, p, a, lang: "How many startups in Quang Ninh?",
    )
    assert plan.method == "llm" and plan.standalone == "How many startups in Quang Ninh?"
    fallback = resolve("And Quang Ninh?", HISTORY, 6, rewrite=lambda q, p, a, lang: "")
    assert fallback.method == "rules"


def test_the_follow_up_keeps_the_conversation_language() -> None:
    history = [{"role": "user", "content": "Hvor mange oppstartsbedrifter har Dong Nai?"}]
    assert resolve("Og i Quang Ninh?", history, 6).language == "no"


def test_previous_turn_is_the_last_user_question_and_its_answer() -> None:
    assert previous_turn(HISTORY, 6) == (HISTORY[0]["content"], HISTORY[1]["content"])
    assert previous_turn([], 6) == (None, None)
    # RAG_HISTORY_TURNS=0: no history (a slice [-0:] would have kept all of it)
    assert previous_turn(HISTORY, 0) == (None, None)


def test_a_fixed_answer_language_keeps_the_language_the_question_is_asked_in() -> None:
    """The answer comes in the language asked for; the gate still compares passages'
    languages with the question's own (rag.gate: its two thresholds)."""
    fixed = resolve("Wie viele Startups gibt es in der Provinz Dong Nai?", [], 6, "en")
    assert (fixed.language, fixed.question_language) == ("en", "de")
    free = resolve("Wie viele Startups gibt es in der Provinz Dong Nai?", [], 6)
    assert (free.language, free.question_language, free.asked_in) == ("de", "de", None)
