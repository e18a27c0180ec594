"""The arithmetic of the scores, on plain file lists and texts.

Kept free of the engine's types so that other pipelines (bench/baseline_llamaindex.py)
are scored with exactly the same functions.

Retrieval is scored per file, not per chunk: the ranked list of a case is the distinct
files of its retrieved chunks in order of first appearance, so hit@3 means "an expected
file is among the first three different files".
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

from rag.citations import strip_markers


def ranked_files(paths: Iterable[str]) -> list[str]:
    """The distinct files of a ranked list of chunks, best first."""
    return list(dict.fromkeys(paths))


def is_expected(path: str, expected: Sequence[str]) -> bool:
    """Whether a retrieved/cited path is one of the expected sources (names or paths)."""
    return path in expected or PurePosixPath(path).name in expected


def first_expected_rank(files: Sequence[str], expected: Sequence[str]) -> int | None:
    """1-based rank of the first expected file in a ranked file list; None if absent."""
    for rank, path in enumerate(files, start=1):
        if is_expected(path, expected):
            return rank
    return None


def ratio(part: float, whole: float) -> float | None:
    """part / whole, or None (n/a) when there is nothing to measure."""
    return part / whole if whole else None


def retrieval_metrics(
    rankings: Sequence[tuple[Sequence[str], Sequence[str]]],
) -> dict[str, float | None]:
    """hit@1, hit@3 and MRR of (ranked files, expected files) pairs."""
    ranks = [first_expected_rank(files, expected) for files, expected in rankings]
    return {
        "hit@1": ratio(sum(r == 1 for r in ranks), len(ranks)),
        "hit@3": ratio(sum(r is not None and r <= 3 for r in ranks), len(ranks)),
        "mrr": ratio(sum(1 / r for r in ranks if r), len(ranks)),
    }


def _fold(text: str) -> str:
    # NFKC: no-break spaces and composed/decomposed diacritics compare equal
    return unicodedata.normalize("NFKC", text).casefold()


def missing_facts(
    text: str, any_of: Sequence[str], all_of: Sequence[str] = (), none_of: Sequence[str] = ()
) -> list[str]:
    """What the answer lacks: must_contain_any (one of) and must_contain_all (each), or
    what it wrongly holds: must_not_contain (none of).

    Case-insensitive substring tests on the text without citation markers, so that a
    marker such as "[4]" cannot pass for a fact such as "4".
    """
    haystack = _fold(strip_markers(text))
    problems = []
    if any_of and not any(_fold(s) in haystack for s in any_of):
        problems.append("none of " + ", ".join(_quoted(s) for s in any_of))
    problems += [f"no {_quoted(s)}" for s in all_of if _fold(s) not in haystack]
    problems += [f"wrongly {_quoted(s)}" for s in none_of if _fold(s) in haystack]
    return problems


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def is_number(value: object) -> bool:
    """A metric's value that is a number (not n/a, not a flag)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
