"""Turning an answer judged in the UI into a regression case (tests/qa format).

A saved case has the fields of tests/qa/golden.jsonl (see tests/qa/README.md), so a
good answer becomes a check that it stays good and a bad one a check that gets fixed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.citations import MARKER
from rag.config import PROJECT_ROOT
from rag.files import lock_exclusively
from rag.language import LANGUAGE_NAMES, detect_language
from rag.names import BULLETS, SENTENCE_OPENERS, capitalized_name
from rag.records import Answer, UserError

# Where the UI appends saved cases; a module constant on purpose (not a setting): the
# file belongs to the repository's regression suite, next to golden.jsonl.
SAVED_CASES = PROJECT_ROOT / "tests" / "qa" / "saved.jsonl"
SAVED_TAG = "saved-from-ui"
THUMBS_TAGS = {0: "thumbs-down", 1: "thumbs-up"}  # st.feedback("thumbs") values
# Seconds to wait for another session's save (it takes milliseconds).
SAVE_LOCK_WAIT = 10.0

_NUMBER = re.compile(r"(?<!\w)\d+(?:[.,]\d+)*")  # not the 2 of "L2Pro"
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def salient_phrase(text: str) -> str:
    """A token the answer should keep containing: its first number, else its longest
    name (a run of capitalized words, "Hoang Duc Thao"), else its longest word."""
    text = MARKER.sub(" ", text)
    number = _NUMBER.search(text)
    if number:
        return number.group(0)
    return max(_names(text) or _WORD.findall(text), key=len, default="")


def _names(text: str) -> list[str]:
    """Runs of capitalized words; a lone capitalized first word of a sentence is not a
    name (every sentence starts with one)."""
    runs: list[tuple[list[str], bool]] = []  # (words, starts a sentence)
    last_end: int | None = None
    for match in _WORD.finditer(text):
        name = capitalized_name(text, match.start(), SENTENCE_OPENERS + BULLETS)
        if name is False:
            last_end = None
            continue
        if last_end is not None and text[last_end : match.start()] == " ":
            runs[-1][0].append(match.group(0))
        else:
            runs.append(([match.group(0)], name is None))
        last_end = match.end()
    return [" ".join(words) for words, first in runs if len(words) > 1 or not first]


def case_id(question: str, history: Sequence[dict[str, str]] = ()) -> str:
    """A stable id: the same question in the same context is the same case."""
    key = json.dumps([question.strip(), list(history)], ensure_ascii=False, sort_keys=True)
    return "ui-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def build_case(
    answer: Answer,
    history: Sequence[dict[str, str]],
    key_phrase: str,
    thumbs: int | None,
    answerable: bool | None = None,
    expected_sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A regression case for `answer` (asked after `history`).

    `answerable` defaults to "the answer was not a refusal" and `expected_sources` to
    the cited files; the UI lets the user correct both before saving a bad answer.
    """
    answerable = (not answer.refused) if answerable is None else answerable
    context = [{"role": m["role"], "content": m["content"]} for m in history][-2:]
    if expected_sources is None:
        expected_sources = cited_files(answer)
    sources = list(dict.fromkeys(expected_sources)) if answerable else []
    phrase = key_phrase.strip()
    case: dict[str, Any] = {
        "id": case_id(answer.question, context),
        "question": answer.question,
        "lang": question_language(answer.question, answer.language),
        "expected_sources": sources,
        "must_contain_any": [phrase] if answerable and phrase else [],
        "answerable": answerable,
    }
    if context:  # like golden.jsonl: the previous question and answer, for follow-ups
        case["history"] = context
    tags = [SAVED_TAG] + ([THUMBS_TAGS[thumbs]] if thumbs in THUMBS_TAGS else [])
    case["tags"] = tags + (["followup"] if context else [])
    return case


def cited_files(answer: Answer) -> list[str]:
    """The file names the answer cites, in citation order, each once."""
    return list(dict.fromkeys(c.file for c in answer.citations))


def question_language(question: str, fallback: str) -> str:
    lang = detect_language(question)
    return lang if lang in LANGUAGE_NAMES else fallback


def save_case(path: Path, case: dict[str, Any]) -> dict[str, Any]:
    """Append `case` to the JSON Lines file `path`; UserError if its id is there already."""
    _check(case)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(case, ensure_ascii=False) + "\n"
    try:
        with open(path, "a+", encoding="utf-8") as handle:
            # Two browser sessions may save at once; each holds the lock for a moment.
            if not lock_exclusively(handle, SAVE_LOCK_WAIT):
                raise UserError(f"{path.name} is being written by another session; try again")
            handle.seek(0)
            existing = handle.read()
            if case["id"] in _ids(existing):
                raise UserError(f"this question is already saved as {case['id']} in {path.name}")
            if existing and not existing.endswith("\n"):
                line = "\n" + line
            handle.write(line)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc})") from exc
    return case


REQUIRED = ("id", "question", "lang", "expected_sources", "must_contain_any", "answerable")


def _check(case: dict[str, Any]) -> None:
    missing = [key for key in REQUIRED if key not in case]
    if missing:
        raise UserError(f"the case lacks {', '.join(missing)}")
    if not str(case["question"]).strip():
        raise UserError("the case has no question")
    if case["answerable"] and not case["expected_sources"]:
        raise UserError("an answerable case needs the file(s) that hold the answer")


def _ids(text: str) -> set[str]:
    ids = set()
    for line in text.splitlines():
        try:
            ids.add(json.loads(line).get("id"))
        except (json.JSONDecodeError, AttributeError):
            continue  # a hand-edited broken line is not ours to judge here
    return ids
