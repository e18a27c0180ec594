"""The golden file: JSON Lines of questions with what their answers must hold.

The format is described in tests/qa/README.md. Anything malformed is a UserError that
names the line, so a typo never silently checks nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.language import LANGUAGE_NAMES
from rag.records import UserError


@dataclass(frozen=True)
class GoldenCase:
    """One line of the golden file."""

    id: str
    question: str
    lang: str
    expected_sources: tuple[str, ...]
    must_contain_any: tuple[str, ...]
    answerable: bool
    must_contain_all: tuple[str, ...] = ()
    history: tuple[dict[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    # strings a right answer never holds, e.g. a neighbouring entity's figure
    must_not_contain: tuple[str, ...] = ()

    @property
    def group(self) -> str | None:
        """The conversation-set group this case belongs to (see GROUPS), if any."""
        return next((tag for tag in self.tags if tag in GROUPS), None)


class _Malformed(ValueError):
    """What is wrong with one line of the golden file (without the line number)."""


# The groups of the conversation set (tests/qa/README.md), each reported on its own.
GROUPS = ("elliptical", "topic-switch", "near-miss", "neighbour")

_STRING_LISTS = (
    "expected_sources",
    "must_contain_any",
    "must_contain_all",
    "must_not_contain",
    "tags",
)
_REQUIRED: dict[str, type] = {
    "id": str,
    "question": str,
    "lang": str,
    "expected_sources": list,
    "must_contain_any": list,
    "answerable": bool,
}
_OPTIONAL: dict[str, type] = {
    "must_contain_all": list,
    "must_not_contain": list,
    "history": list,
    "tags": list,
}
_TYPE_NAMES = {str: "a string", list: "a list", bool: "true or false"}
_ROLES = ("user", "assistant")


def load_golden(path: Path) -> list[GoldenCase]:
    """Every case of a golden file; a UserError naming the line for anything malformed."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"golden file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    cases: list[GoldenCase] = []
    first_line_of: dict[str, int] = {}
    # split on "\n" only: str.splitlines would also split inside JSON strings (U+2028)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            case = parse_case(line)
        except _Malformed as exc:
            raise UserError(f"{path}, line {number}: {exc}") from None
        if case.id in first_line_of:
            raise UserError(
                f"{path}, line {number}: duplicate id {case.id!r} "
                f"(first on line {first_line_of[case.id]})"
            )
        first_line_of[case.id] = number
        cases.append(case)
    if not cases:
        raise UserError(f"{path}: no cases")
    return cases


def parse_case(line: str) -> GoldenCase:
    """One golden case from its JSON line; _Malformed says what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _Malformed(f"bad JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _Malformed("bad JSON: a case must be an object {...}")
    _check_keys(data)
    _check_values(data)
    return GoldenCase(
        id=data["id"],
        question=data["question"],
        lang=data["lang"],
        expected_sources=tuple(data["expected_sources"]),
        must_contain_any=tuple(data["must_contain_any"]),
        answerable=data["answerable"],
        must_contain_all=tuple(data.get("must_contain_all", ())),
        history=tuple(dict(m) for m in data.get("history", ())),
        tags=tuple(data.get("tags", ())),
        must_not_contain=tuple(data.get("must_not_contain", ())),
    )


def _check_keys(data: dict[str, Any]) -> None:
    for key in _REQUIRED:
        if key not in data:
            raise _Malformed(f'missing key "{key}"')
    # a misspelt optional key ("must_contain") would otherwise silently check nothing
    for key in data:
        if key not in _REQUIRED and key not in _OPTIONAL:
            raise _Malformed(f'unknown key "{key}"')
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in data and not isinstance(data[key], kind):
            raise _Malformed(f'wrong type: "{key}" must be {_TYPE_NAMES[kind]}')
    for key in _STRING_LISTS:
        if not all(isinstance(item, str) for item in data.get(key, ())):
            raise _Malformed(f'wrong type: "{key}" must be a list of strings')
    for message in data.get("history", ()):
        if not _is_message(message):
            raise _Malformed(
                'wrong type: "history" must be a list of {"role": "user"|"assistant", '
                '"content": "..."}'
            )


def _is_message(message: object) -> bool:
    return (
        isinstance(message, dict)
        and set(message) == {"role", "content"}
        and message["role"] in _ROLES
        and isinstance(message["content"], str)
    )


def _check_values(data: dict[str, Any]) -> None:
    if not data["id"].strip():
        raise _Malformed('"id" is empty')
    if not data["question"].strip():
        raise _Malformed('"question" is empty')
    if data["lang"] not in LANGUAGE_NAMES:
        raise _Malformed(f'unknown lang "{data["lang"]}" (use one of {", ".join(LANGUAGE_NAMES)})')
    if not data["answerable"] and data["expected_sources"]:
        raise _Malformed('"answerable": false but "expected_sources" is not empty')
    if data["answerable"] and not data["expected_sources"]:
        raise _Malformed('"answerable": true needs at least one file in "expected_sources"')
    if data["answerable"] and not data["must_contain_any"]:
        raise _Malformed('"answerable": true needs at least one fact in "must_contain_any"')
    for key in ("must_contain_any", "must_contain_all", "must_not_contain"):
        if any(not text.strip() for text in data.get(key, ())):
            raise _Malformed(f'"{key}" holds an empty string, which every answer contains')
