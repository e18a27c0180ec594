"""rag.feedback: an answer judged in the UI becomes a case in the regression format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.feedback import (
    SAVED_CASES,
    build_case,
    case_id,
    cited_files,
    salient_phrase,
    save_case,
)
from rag.records import Answer, Citation, UserError

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_KEYS = {
    "id",
    "question",
    "lang",
    "expected_sources",
    "must_contain_any",
    "must_contain_all",
    "answerable",
    "history",
    "tags",
}
HISTORY = [
    {"role": "user", "content": "Who chairs the association?"},
    {"role": "assistant", "content": "Hoang Duc Thao [1]"},
    {"role": "user", "content": "How many innovative startups are there in Dong Nai?"},
    {"role": "assistant", "content": "About 90 [1]"},
]


def _answer(text: str = "About 90 startups [1], see also [2].", refused: bool = False) -> Answer:
    citations = [
        Citation(1, "002_d6db562a30fbc1a0.txt", "002_d6db562a30fbc1a0.txt", (36, 36), "q1"),
        Citation(1, "002_d6db562a30fbc1a0.txt", "002_d6db562a30fbc1a0.txt", (50, 50), "q2"),
        Citation(2, "003_2c90ef674639c79c.txt", "sub/003_2c90ef674639c79c.txt", (4, 5), "q3"),
    ]
    return Answer(
        question="How many innovative startups are there in Dong Nai?",
        language="en",
        answer=text,
        refused=refused,
        citations=[] if refused else citations,
        retrieved=[],
        backend="none",
    )


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("About 90 innovative startups [1] and 16 enterprises [2].", "90"),
        ("[12] It grew to 1,6 billion in 2024 [3].", "1,6"),
        ("Chaired by Hoang Duc Thao [1].", "Hoang Duc Thao"),
        ("Laut dem Bericht startete die Plattform in Ho-Chi-Minh-Stadt [2].", "Ho-Chi-Minh-Stadt"),
        ("Das Projekt L2Pro lehrt Recht [1].", "Das Projekt L2Pro"),  # not "2"
        ("Sometimes Everything Fails. Q.", "Sometimes Everything Fails"),
        ("nothing capitalized here [1]", "capitalized"),
        ("", ""),
    ],
)
def test_salient_phrase(text: str, phrase: str) -> None:
    assert salient_phrase(text) == phrase


def test_case_id_is_stable_and_depends_on_the_context() -> None:
    assert case_id("Q?") == case_id(" Q? ")
    assert case_id("Q?").startswith("ui-") and len(case_id("Q?")) == 13
    assert case_id("Q?") != case_id("Q?", HISTORY[:2])


def test_build_case_from_a_good_answer() -> None:
    case = build_case(_answer(), [], "90", thumbs=1)
    assert case == {
        "id": case_id(_answer().question),
        "question": "How many innovative startups are there in Dong Nai?",
        "lang": "en",
        "expected_sources": ["002_d6db562a30fbc1a0.txt", "003_2c90ef674639c79c.txt"],
        "must_contain_any": ["90"],
        "answerable": True,
        "tags": ["saved-from-ui", "thumbs-up"],
    }
    assert set(case) <= GOLDEN_KEYS


def test_build_case_follow_up_keeps_the_last_turn() -> None:
    answer = _answer()
    answer.question = "And what about Quang Ninh?"
    case = build_case(answer, HISTORY, " 500 ", thumbs=0)
    assert case["history"] == HISTORY[-2:]
    assert case["must_contain_any"] == ["500"]
    assert case["tags"] == ["saved-from-ui", "thumbs-down", "followup"]
    assert case["id"] == case_id("And what about Quang Ninh?", HISTORY[-2:])


def test_build_case_from_a_refusal_is_unanswerable() -> None:
    case = build_case(_answer("I could not find this in the sources.", True), [], "x", None)
    assert case["answerable"] is False
    assert case["expected_sources"] == [] and case["must_contain_any"] == []
    assert case["tags"] == ["saved-from-ui"]


def test_build_case_lets_the_user_correct_a_bad_answer() -> None:
    refusal = _answer("I could not find this in the sources.", True)
    case = build_case(refusal, [], "90", 0, answerable=True, expected_sources=["002.txt"])
    assert case["answerable"] is True
    assert case["expected_sources"] == ["002.txt"] and case["must_contain_any"] == ["90"]


def test_cited_files_in_order_each_once() -> None:
    assert cited_files(_answer()) == ["002_d6db562a30fbc1a0.txt", "003_2c90ef674639c79c.txt"]


def test_save_case_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "qa" / "saved.jsonl"
    first = build_case(_answer(), [], "90", 1)
    second = build_case(_answer(), HISTORY, "90", 1)
    save_case(path, first)
    save_case(path, second)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [first, second]


def test_save_case_refuses_a_duplicate_id(tmp_path: Path) -> None:
    path = tmp_path / "saved.jsonl"
    case = build_case(_answer(), [], "90", 1)
    save_case(path, case)
    with pytest.raises(UserError, match=f"already saved as {case['id']}"):
        save_case(path, case)
    assert len(path.read_text().splitlines()) == 1


def test_save_case_after_a_hand_edited_file(tmp_path: Path) -> None:
    path = tmp_path / "saved.jsonl"
    path.write_text('{"id": "x-1", "question": "q"}\nnot json', encoding="utf-8")  # no \n
    save_case(path, build_case(_answer(), [], "90", None))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == "not json" and json.loads(lines[2])["question"].startswith("How many")


def test_save_case_checks_the_case(tmp_path: Path) -> None:
    path = tmp_path / "saved.jsonl"
    with pytest.raises(UserError, match="lacks"):
        save_case(path, {"id": "ui-1", "question": "q"})
    case = build_case(_answer(), [], "90", 1, expected_sources=[])
    with pytest.raises(UserError, match="file"):
        save_case(path, case)
    assert not path.exists()


def test_saved_cases_default_next_to_the_golden_set() -> None:
    assert SAVED_CASES == ROOT / "tests" / "qa" / "saved.jsonl"
    assert (ROOT / "tests" / "qa" / "golden.jsonl").exists()


def test_golden_cases_have_the_fields_a_saved_case_has() -> None:
    # The saved file must be readable by whatever reads golden.jsonl.
    line = (ROOT / "tests" / "qa" / "golden.jsonl").read_text(encoding="utf-8").splitlines()[0]
    golden = json.loads(line)
    saved = build_case(_answer(), [], "90", 1)
    assert set(saved) <= set(golden) | {"history"}
