"""Citation markers: parsing, ranges, invented numbers, and answers with none."""

from __future__ import annotations

import pytest

from rag.citations import Claim, cited_numbers, claims, clean_markers, marker_numbers


@pytest.mark.parametrize(
    ("inner", "numbers"),
    [
        ("1", [1]),
        ("1, 3", [1, 3]),
        ("1,3", [1, 3]),
        ("2-4", [2, 3, 4]),
        ("2–4", [2, 3, 4]),
        ("1; 2", [1, 2]),
        ("1, 3-4", [1, 3, 4]),
        ("3, 3", [3]),
        ("4-2", []),  # a backwards range is not a citation
        ("1-500", []),  # nor is an absurdly wide one
    ],
)
def test_marker_numbers(inner: str, numbers: list[int]) -> None:
    assert marker_numbers(inner) == numbers


def test_cited_numbers_in_order_of_appearance() -> None:
    assert cited_numbers("A [2]. B [1, 2]. C [3-4].") == [2, 1, 3, 4]


def test_invented_numbers_are_dropped_and_ranges_normalised() -> None:
    text = "A fact [1]. Another [2-4]. Invented [9]. Mixed [1, 7]."
    assert clean_markers(text, {1, 2, 3}) == "A fact [1]. Another [2, 3]. Invented. Mixed [1]."


def test_source_word_inside_marker() -> None:
    assert clean_markers("Fact [Source 2].", {2}) == "Fact [2]."
    assert clean_markers("Fakt [Quelle 1].", {1}) == "Fakt [1]."


def test_answer_without_markers_is_unchanged() -> None:
    assert clean_markers("No citation here.", {1}) == "No citation here."
    assert cited_numbers("No citation here.") == []


def test_numbers_in_brackets_that_are_not_markers_survive_when_valid_only() -> None:
    # "[2025]" is four digits: never read as a citation
    assert clean_markers("TECHFEST [2025] was held [1].", {1}) == "TECHFEST [2025] was held [1]."


def test_claims_attach_markers_to_their_sentence() -> None:
    text = "Resolution 57 was adopted in 2024 [1]. Dong Nai has 90 startups. [2]\nUncited line."
    assert claims(text) == [
        Claim("Resolution 57 was adopted in 2024.", (1,)),
        Claim("Dong Nai has 90 startups.", (2,)),
        Claim("Uncited line.", ()),
    ]


def test_claims_keep_decimal_numbers_whole() -> None:
    assert claims("Lam Dong has 3.4 million people [1].") == [
        Claim("Lam Dong has 3.4 million people.", (1,))
    ]


def test_markers_after_the_last_full_stop_belong_to_the_last_sentence() -> None:
    assert claims("Die Stadt hat 140 Firmen. [2] [1]") == [
        Claim("Die Stadt hat 140 Firmen.", (2, 1))
    ]


def test_a_bare_marker_line_cites_the_sentence_before_it() -> None:
    assert claims("Hanoi hosted it.\n[3]") == [Claim("Hanoi hosted it.", (3,))]
