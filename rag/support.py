"""Claim-level support: does a source sentence state what an answer's sentence claims?

A claim is checked by its checkable facts, in any of the supported languages:
- numbers, compared by their digits ("41 200" = "41.200" = "41,200", "3,4" = "3.4");
- dates, by day, month and year whatever the notation ("27 June 2025" = "27.06.2025" =
  "ngày 27 tháng 6 năm 2025" = "27 июня 2025"): a date's parts become facts of their own,
  so "June 2025" is supported by "27.06.2025";
- names: capitalized words of the claim that the evidence knows (they occur in some
  source sentence, compared across scripts by rag.names.latin_key). A name the
  evidence never mentions cannot be checked (a translation, or a common noun in
  German) and is left alone; a name it does mention must be in the supporting
  sentence: "Dong Nai has 3.4 million inhabitants [2]" is not supported by a sentence
  about Lam Dong's 3.4 million.
A sentence that names nothing itself ("The province has 90 startups") is read with the
sentence before it, which names what it speaks of.

Numbers and dates of the question are given: a claim may repeat them. Its names are
not: repeating the question's entity is exactly what a claim about a neighbouring
entity does.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from rag.languages import (
    LANGUAGES,
    amount_question_patterns,
    definite_articles,
    month_spellings,
    not_found_phrases,
    numeral_patterns,
    scale_patterns,
)
from rag.names import is_english_word, latin_key, name_skeleton, starts_sentence

# Digit groups split by a space ("41 200", "24\u00a0000"), then digit runs with decimal
# or group marks ("1,6", "1.600", "3-3,5" -> "3", "3,5").
_SPACE_GROUP = re.compile(r"(?<=\d)[ \u00a0\u202f](?=\d{3}(?!\d))")
_FIGURE = re.compile(r"\d+(?:[.,]\d+)*")
_MIN_NAME_KEY = 3  # shorter skeletons ("h" of "Hue") match too many words
SEQUENCE_CACHE = 4096  # texts (passages, sentences, contexts) of recent answers
MAX_NAME_WORDS = 6  # "Героя Труда Хоанг Дык Тхао"
_MIN_WORD_KEY = 4  # a single word's ("Công" -> "cng" is a common Vietnamese word)
# Kana and Han are no part of a cased word: in "FPT Japanです" the name ends at "n".
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_NAME_WORD = re.compile(rf"[^\W\d_{_UNSPACED}](?:[^\W{_UNSPACED}]|['’])*")
NOUN_CAPITALIZING = frozenset({"de"})
_PLAIN_WORD = re.compile(r"\w+")
_UNSPACED_CHAR = re.compile(f"[{_UNSPACED}]")


@dataclass(frozen=True)
class Facts:
    numbers: frozenset[str]
    dates: frozenset[str]  # "m6", "d27m6": a month, a day of a month
    names: frozenset[str]  # latin keys
    # the numbers written with a scale word ("1,6 Milliarden"), and the values they may
    # mean (where the decimal mark is unclear, or the word means two scales)
    scaled: frozenset[tuple[str, frozenset[float]]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.numbers or self.dates or self.names)


# ------------------------------------------------------------------------------ dates


@cache
def _date_patterns() -> tuple[re.Pattern[str], ...]:
    spellings = sorted(month_spellings(), key=len, reverse=True)
    month = "|".join(re.escape(s) for s in spellings if not s[0].isdigit() and "tháng" not in s)
    day = r"(?P<day>[0-3]?\d)"
    year = r"(?P<year>\d{4})"
    return tuple(
        re.compile(pattern, re.IGNORECASE)
        for pattern in (
            rf"\b{year}-(?P<month>[01]?\d)-{day}\b",  # 2025-06-27
            rf"\b{day}[./](?P<month>[01]?\d)[./](?:{year}|\d\d)\b",  # 27.06.2025, 27/6/25
            rf"\b{day}/(?P<month>[01]?\d)\b(?!/)",  # 21/8
            # 27.06.: without a year, dots make a date only so; "1.6 billion" is a figure
            rf"\b{day}\.(?P<month>[01]\d)\.(?!\d)",
            rf"\b{day}\.?(?:\s+de)?\s+(?P<mname>{month})\b(?:\s+(?:de\s+)?{year})?",
            rf"\b(?P<mname>{month})\.?\s+{day}(?:st|nd|rd|th)?\b(?:,?\s+{year})?",
            rf"\b(?P<mname>{month})\.?\s+(?:de\s+)?{year}",  # June 2025
            rf"(?:ngày\s+{day}\s+)?tháng\s+(?P<month>[01]?\d)(?:(?:\s+năm\s+|/){year})?",
            rf"(?:{year}\s*年\s*)?(?P<month>[01]?\d)\s*月\s*(?:{day}\s*日)?",
        )
    )


def _dates(text: str) -> tuple[set[str], set[str], str]:
    """Date facts, the years found in dates, and the text with the dates blanked."""
    facts: set[str] = set()
    years: set[str] = set()
    spellings = month_spellings()
    for pattern in _date_patterns():
        for match in pattern.finditer(text):
            parts = match.groupdict()
            month = parts.get("month") or ""
            number = (
                int(month)
                if month.isdigit()
                else spellings.get((parts.get("mname") or "").lower().rstrip("."), 0)
            )
            if not 1 <= number <= 12:
                continue
            facts.add(f"m{number}")
            if parts.get("day") and 1 <= int(parts["day"]) <= 31:
                facts.add(f"d{int(parts['day'])}m{number}")
            if parts.get("year"):
                years.add(parts["year"])
            text = text[: match.start()] + " " * len(match.group()) + text[match.end() :]
    return facts, years, text


# ---------------------------------------------------------------------------- numbers


def figures(text: str) -> set[str]:
    """The numbers in a text, as their digits without trailing zeros, so that the
    same figure written another way matches: "41 200" = "41.200" = "41,200",
    "1,6 milliarder" = "1.6 billion" = "1,600 million", "80 %" = "80%"."""
    text = _SPACE_GROUP.sub("", text)
    return {_digits(m.group()) for m in _FIGURE.finditer(text)}


def scaled_figures(text: str) -> frozenset[tuple[str, frozenset[float]]]:
    """The figures followed by a scale word, as (digits, the values they may mean):
    "1,6 Milliarden" -> ("16", {1.6e9}); "1,600 million" -> ("16", {1.6e6, 1.6e9})."""
    text = _SPACE_GROUP.sub("", text)
    found = set()
    for match in _FIGURE.finditer(text):
        powers = _longest_scales(text, match.end())
        if powers:
            values = frozenset(r * 10**p for r in _readings(match.group()) for p in powers)
            found.add((_digits(match.group()), values))
    return frozenset(found)


def _longest_scales(text: str, at: int) -> set[int]:
    """The powers of ten of the scale word at `at`, by each language's longest match."""
    powers = set()
    for language in scale_patterns():
        for pattern, power in language:
            if pattern.match(text, at):
                powers.add(power)
                break
    return powers


def _readings(figure: str) -> set[float]:
    """The values a written figure may have: "1.600" and "1,600" are 1.6 or 1600."""
    marks = [c for c in figure if c in ".,"]
    if not marks:
        return {float(figure)}
    if len(set(marks)) == 2:  # "1,234.5": the last mark is the decimal one
        decimal = marks[-1]
        return {float(figure.replace("," if decimal == "." else ".", "").replace(",", "."))}
    if len(marks) > 1:  # "1.234.567": grouping
        return {float(re.sub(r"[.,]", "", figure))}
    whole, _, tail = figure.replace(",", ".").partition(".")
    decimal = float(f"{whole}.{tail}")
    return {decimal, float(whole + tail)} if len(tail) == 3 else {decimal}


def _same_value(claimed: frozenset[float], stated: frozenset[float]) -> bool:
    return any(abs(a - b) <= 1e-9 * max(a, b) for a in claimed for b in stated)


def _digits(figure: str) -> str:
    """The figure's digits without trailing zeros ("1,6" = "1.600" = "16"); a figure of
    one significant digit keeps its zeros ("100.000" is not "1" nor "10")."""
    digits = re.sub(r"\D", "", figure)
    stripped = digits.rstrip("0") or "0"
    return stripped if len(stripped) > 1 else digits.lstrip("0") or "0"


# ------------------------------------------------------------------------------ names


def _words(text: str) -> list[re.Match[str]]:
    """Words, hyphenated compounds split ("Ho-Chi-Minh-Stadt": four words)."""
    return list(_NAME_WORD.finditer(text))


def _capitalized_runs(text: str, openers: bool) -> list[list[str]]:
    """Runs of capitalized words ("Dong Nai", "Politburo"); with `openers`, also those
    that start a sentence ("Dong Nai has ..."), else only names by rag.names' rule."""
    runs: list[list[str]] = []
    previous_end = -2
    for match in _words(text):
        word = match.group()
        usable = word[0].isupper() and (openers or not starts_sentence(text, match.start()))
        if not usable:
            previous_end = -2
            continue
        gap = text[previous_end : match.start()] if previous_end >= 0 else "x"
        if runs and not gap.strip(" -"):
            runs[-1].append(word)
        else:
            runs.append([word])
        previous_end = match.end()
    return runs


def name_runs(text: str) -> list[list[str]]:
    """The names of a text: runs of capitalized words, a sentence's first word only as
    part of a longer run ("Lam Dong har ...", not "Provinsen har ...")."""
    articles = definite_articles()
    runs = []
    for run in _capitalized_runs(text, openers=True):
        if len(run) > 1 and run[0].lower() in articles and _opens_sentence(text, run[0]):
            run = run[1:]  # "Die Stadt", "The Ministry": an article is no part of a name
        if len(run) > 1 or not _opens_sentence(text, run[0]):
            runs.append(run)
    return runs


def _keys(runs: Iterable[list[str]], single_words: bool = True) -> set[str]:
    """Name skeletons (rag.names.name_skeleton) of every contiguous part of each run
    ("Lam Dong Province": "lamdong", "dongprovince", ...); single words only with
    `single_words`. English Title Case words are no names ("Ministry of ...")."""
    keys = set()
    for run in _split_at_english(runs):
        for i in range(len(run)):
            for j in range(i + (1 if single_words else 2), len(run) + 1):
                key = name_skeleton(latin_key(" ".join(run[i:j])))
                # one short word is a name only as an acronym ("FPT"), not "Công"
                short = j - i == 1 and not run[i].isupper()
                if len(key) >= (_MIN_WORD_KEY if short else _MIN_NAME_KEY):
                    keys.add(key)
    return keys


def _split_at_english(
    runs: Iterable[list[str]], also: Container[str] = frozenset()
) -> list[list[str]]:
    """The runs cut at their English Title Case words ("Ministry of Science"), and at
    the words of `also` (lower case): the parts between them are the names ("Die
    Resolution Nr." -> "Die", "Nr.")."""
    parts: list[list[str]] = []
    for run in runs:
        current: list[str] = []
        for word in run:
            if is_english_word(word) or word.lower() in also:
                parts.append(current)
                current = []
            else:
                current.append(word)
        parts.append(current)
    return [part for part in parts if part]


@lru_cache(maxsize=SEQUENCE_CACHE)
def _sequences(text: str) -> frozenset[str]:
    """Name skeletons of every sequence of up to MAX_NAME_WORDS words of `text`,
    whatever their case: where a name is looked for. Cached: one answer looks in the
    same passages and sentences for every claim and every name."""
    words = [latin_key(m.group()) for m in _words(text)]
    return frozenset(
        {
            name_skeleton("".join(words[i:j]))
            for i in range(len(words))
            for j in range(i + 1, min(i + MAX_NAME_WORDS + 1, len(words) + 1))
        }
    )


def evidence_names(sentences: Iterable[tuple[str, str]]) -> set[str]:
    """Name skeletons of the names in evidence texts, given as (text, language).

    German capitalizes every noun, so there only runs of two or more names count ("Dong
    Nai"): "Einwohner" must not have to be in the sentence that supports a claim
    saying it."""
    keys: set[str] = set()
    for text, language in sentences:
        keys |= _keys(name_runs(text), language not in NOUN_CAPITALIZING)
    return keys


def _opens_sentence(text: str, word: str) -> bool:
    at = text.find(word)
    return at < 0 or starts_sentence(text, at)


# ------------------------------------------------------------------------------ facts


def facts(text: str, known_names: Iterable[str] = ()) -> Facts:
    """The checkable facts of `text`; names only among `known_names` (skeletons of the
    evidence's names), longest first so that "Dong Nai" is not also checked as "Nai"."""
    dates, years, rest = _dates(text)
    numbers = figures(rest) | {_digits(y) for y in years}
    known = set(known_names)
    names = {key for key in _keys(_capitalized_runs(text, openers=True)) if key in known}
    # a run's words are implied by the run ("dongnai" covers "dong", "nai")
    names = {key for key in names if not any(key != other and key in other for other in names)}
    return Facts(frozenset(numbers), frozenset(dates), frozenset(names), scaled_figures(rest))


def missing(claim: Facts, evidence: str, given: Facts, context: str | None = None) -> Facts:
    """What of the claim's facts the evidence sentence does not state (nor `given`
    holds); names may also be in the sentence's `context` (see rag.answer). A name
    is found as the start of a word sequence ("Quang Ninh" in "Quang Ninhs")."""
    stated = facts(evidence)
    sequences = _sequences(context or evidence) if claim.names else set()
    numbers = frozenset(
        number
        for number in claim.numbers - given.numbers
        if (number not in stated.numbers and not _day_of_stated_month(number, claim, stated))
        or _scaled_otherwise(number, claim, stated)
    )
    return Facts(
        numbers,
        frozenset(
            date
            for date in claim.dates - stated.dates - given.dates
            if not _day_in_range(date, stated)
        ),
        frozenset(name for name in claim.names if not _found(name, sequences)),
        # what is left keeps its scale: another sentence must state the same amount
        frozenset(scaled for scaled in claim.scaled if scaled[0] in numbers),
    )


def _found(name: str, sequences: Iterable[str]) -> bool:
    """Whether a name skeleton starts one of the word sequences: "Quang Ninh" in "Quang
    Ninhs"; or, said in the genitive ("Vietnams", "Vietnam's"), its stem does: the
    evidence may write "Vietnam" where the claim inflects it."""
    stem = name[:-1] if name.endswith("s") and len(name) > _MIN_NAME_KEY else name
    return any(seq.startswith(stem) for seq in sequences)


def unknown_names(claim: str, texts: Sequence[str], language: str = "") -> list[str]:
    """The claim's names that none of `texts` mentions: names from nowhere ("The 2023
    Tour was won by Tadej Pogačar [1]" over articles that never name him). English
    Title Case words are no names, and in a noun-capitalizing `language` (German) a
    lone capitalized word is none either ("Startups"), as in evidence_names; a run is
    known when one of its words is ("Die Provinz Dong Nai")."""
    known: set[str] = set()
    for text in texts:
        known |= _sequences(text)
    unknown = []
    months = month_spellings()
    for run in name_runs(claim):
        parts = _split_at_english([run], also=months)  # month names name nothing
        words = [word for part in parts for word in part if len(word) > 3]
        if not words or (language in NOUN_CAPITALIZING and len(words) == 1):
            continue
        keys = {name_skeleton(latin_key(" ".join(span))) for span in _spans(parts)}
        keys = {key for key in keys if len(key) >= _MIN_NAME_KEY}
        if keys and not any(_found(key, known) for key in keys):
            unknown.append(" ".join(run))
    return unknown


def _spans(parts: list[list[str]]) -> Iterator[list[str]]:
    """The word spans of the parts that begin and end with a long word: "Pham Thi Nham"
    is known by its three words together, though "Thi" is too short to count alone,
    and "The Tour" only by "Tour"."""
    for part in parts:
        long = [i for i, word in enumerate(part) if len(word) > 3]
        for at, first in enumerate(long):
            for last in long[at:]:
                yield part[first : last + 1]


def names_only(stated: Facts) -> Facts:
    return Facts(frozenset(), frozenset(), stated.names)


def _day_in_range(date: str, stated: Facts) -> bool:
    """A claimed day of a month that the evidence states as a number beside that month
    ("12 December" from "12. til 14. desember")."""
    day, _, month = date.partition("m")
    return bool(day) and f"m{month}" in stated.dates and day[1:] in stated.numbers


def _scaled_otherwise(number: str, claim: Facts, stated: Facts) -> bool:
    """The evidence scales the claim's figure differently: "233 million" or "23.3
    billion" where it says "233 Milliarden". The same digits are not the same amount."""
    claimed = [values for digits, values in claim.scaled if digits == number]
    evidence = [values for digits, values in stated.scaled if digits == number]
    return bool(claimed and evidence) and not any(
        _same_value(c, e) for c in claimed for e in evidence
    )


def _day_of_stated_month(number: str, claim: Facts, stated: Facts) -> bool:
    """A claimed number that is the evidence's day of a month the claim states too
    ("December 12 to 14" from "12. til 14. desember")."""
    return any(
        f"d{number}{month}" in stated.dates for month in claim.dates if month.startswith("m")
    )


def name_stated(name: str, text: str) -> bool:
    """Whether `text` states the name (a skeleton, as `missing` looks for it)."""
    return _found(name, _sequences(text))


def names_known_in(text: str, known: set[str]) -> bool:
    """Whether `text` mentions one of the `known` names."""
    return any(seq in known for seq in _sequences(text))


# --------------------------------------------------------------------------- refusals


def says_not_found(text: str) -> bool:
    """Whether a reply's sentence says the sources lack the fact (in any language)."""
    lowered = " ".join(text.lower().split())
    return any(phrase in lowered for phrase in not_found_phrases())


def says_nothing_new(claim: str, asked: str) -> bool:
    """Whether every word of a claim is a word of what was asked: "Вьетнама" for
    "Who heads the Association ... of Vietnam?" repeats the question and answers
    nothing. (Not judged for text without spaces between words.)"""
    words = _PLAIN_WORD.findall(claim.casefold())
    if not words or _UNSPACED_CHAR.search(claim):
        return False
    return set(words) <= set(_PLAIN_WORD.findall(asked.casefold()))


def asks_amount(question: str, language: str) -> bool:
    """Whether a question asks for an amount: a count, a sum, a share, an age ("how
    many", "bao nhiêu", "wie viele"), in its language."""
    pattern = amount_question_patterns().get(language)
    return pattern is not None and pattern.search(question) is not None


def states_amount(text: str, language: str, given: str = "") -> bool:
    """Whether a text states an amount: a figure that `given` (the question) does not
    already hold, or a number word of its language ("five", "пяти")."""
    if figures(text) - figures(given):
        return True
    pattern = numeral_patterns().get(language)
    return pattern is not None and pattern.search(text) is not None


def uncased_language(code: str) -> bool:
    info = LANGUAGES.get(code)
    return info is not None and not info.cased


def covers(claim: Facts, evidences: Sequence[str], given: Facts) -> bool:
    """Whether the evidence texts together state every fact of the claim."""
    left = claim
    for evidence in evidences:
        left = missing(left, evidence, given)
    return not left


def verify_claims(answer: str, quotes: dict[int, list[str]], question: str = "") -> list[bool]:
    """For each claim of a finished answer that states facts or cites a source: are
    its facts stated by the quotes it cites? (`rag eval`'s claim_support_rate: an
    independent check of what the answer path shows, on its final text and quotes.)"""
    from rag.citations import claims  # rag.citations splits sentences (rag.chunking)
    from rag.language import detect_language

    known = evidence_names(
        (quote, detect_language(quote)) for texts in quotes.values() for quote in texts
    )
    asked = facts(question)
    given = Facts(asked.numbers, asked.dates, frozenset())
    checks = []
    for line in answer.splitlines():
        # a marker at the end of a line cites the line's sentences before it too (a
        # quoted passage of several sentences carries one marker)
        line_claims = claims(line)
        line_numbers = tuple(dict.fromkeys(n for c in line_claims for n in c.numbers))
        for claim in line_claims:
            stated = facts(claim.text, known)
            numbers = claim.numbers or line_numbers
            if not claim.text or (not stated and not numbers):
                continue
            cited = [quote for n in numbers for quote in quotes.get(n, [])]
            checks.append(bool(cited) and covers(stated, cited, given))
    return checks
