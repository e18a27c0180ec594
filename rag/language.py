"""Language detection for documents and (short) questions, as ISO 639-1 codes.

Built on lingua in high-accuracy mode. Measured on the 120 short questions of the tests
(with the corrections below): high accuracy gets all right, low accuracy (trigrams only)
gets 10 wrong, mostly Norwegian/Danish and short German. The price is about 1 s to load
the models, once per process; a question then takes well under a millisecond.

Two corrections on top of lingua, both for the short follow-up questions of a chat about
Vietnamese news ("Og i Quang Ninh?"):

* Vietnamese is only a candidate when the text has a letter with a Vietnamese diacritic.
  Vietnamese written without diacritics is out of scope, while diacritic-free
  Vietnamese names ("Quang Ninh", "Pham Hong Quat") made lingua answer "vi" for
  Norwegian, English and German questions.
* For the same reason short capitalised ASCII words that do not start a sentence (most
  likely names such as "Dong Nai") and acronyms ("MOST", "TECHFEST") are removed before
  detection: they are evidence of the topic, not of the language of the question.

Danish, Norwegian and Swedish share many short phrases, where lingua leans to Danish.
Among the three, function words found in only one of them decide ("hva" / "hvad" /
"vad"); with none, ties ("Hvorfor det?" is both Danish and Norwegian) go to Norwegian,
a language the assistant answers in, unless Danish is clearly ahead.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

from rag.languages import CORE_LANGUAGES, LANGUAGES
from rag.names import capitalized_name

UNDETERMINED = "und"

# Every language detect_language can return (rag.languages, the registry). "und" is
# deliberately absent: callers test `code in LANGUAGE_NAMES` to know whether a language
# was found.
LANGUAGE_NAMES: dict[str, str] = {code: info.name for code, info in LANGUAGES.items()}

# Candidates by script: a text in Cyrillic is Russian or Ukrainian, never German. A
# small set keeps short texts reliable (every extra language is one more way to be
# wrong) and fast (lingua loads the models of the candidates only).
_BY_LINGUA = {name: code for code, info in LANGUAGES.items() for name in info.lingua}
_SCRIPT_LANGUAGES = {
    "cyrillic": ("ru", "uk"),
    "kana": ("ja",),
    "han": ("ja", "zh"),
    "latin": tuple(code for code in LANGUAGES if code not in ("ru", "uk", "ja", "zh", "vi")),
}
_KANA = re.compile(r"[\u3040-\u30ff]")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN = re.compile(r"[a-zA-Z\u00c0-\u024f]")

# Letters of Vietnamese vowels with tone marks / breve / horn, and đ. Some (é, ô, à...)
# also occur in French; that only makes Vietnamese a candidate, lingua still decides.
_VIETNAMESE_LETTER = re.compile(r"[àáâãèéêìíòóôõùúýăđĩũơư\u1ea0-\u1ef9]", re.IGNORECASE)

# Short capitalised words and acronyms: removed when they are names (see rag.names).
# Long capitalised words stay: German nouns carry much of a German question.
_SHORT_CAPITALISED = re.compile(r"\b(?:[A-Z][a-z]{1,5}|[A-Z][A-Z0-9]+\w*)\b")
# Here every full stop ends a sentence, abbreviations included: "Mr. Smith" keeps
# "Smith", so that a short text keeps enough words to tell its language by.
_SENTENCE_ENDS = ".!?"

_URL = re.compile(r"\b(?:https?://|www\.)\S+|\S+@\S+\.\w+")

# Function words used by only one of the three Scandinavian languages (Nynorsk included
# under Norwegian). Only these few: each must be absent from the other two languages.
_SCANDINAVIAN_MARKERS: dict[str, frozenset[str]] = {
    "no": frozenset(
        ["hva", "noen", "noe", "mye", "meg", "deg", "seg", "ble", "etter", "finnes",
         "kva", "kven", "korleis", "ikkje", "eg"]
    ),
    "da": frozenset(["hvad", "af", "nogen", "noget", "hvornår", "findes", "lidt"]),
    "sv": frozenset(
        ["vad", "hur", "och", "inte", "jag", "är", "många", "finns", "vilken", "vilka",
         "mycket", "någon", "något", "när"]
    ),
}  # fmt: skip
_WORD = re.compile(r"\w+")

_MIN_LETTERS = 3  # "OK", "57", "?" say nothing about a language
_MIN_CONFIDENCE = 0.1  # 10 candidates: uniform is ~0.1, so below that lingua is guessing
# A short text ("Og i Quang Ninh?") stays in the conversation's language (or a core
# language) when lingua gives it at least this share of its best language's confidence.
_SHORT_WORDS = 4
_PLAUSIBLE_SHARE = 0.5
_DANISH_MARGIN = 0.75  # Danish wins only if Norwegian is below 75 % of its confidence
# Candidates kept for lingua's precise mode (see _narrowed): measured, not fitted.
NARROW_TO = 3

# Long documents: language is decided on three windows (start, middle, end) so that
# detection time does not grow with the file.
_WINDOW_CHARS = 2000


def detect_language(text: str, conversation: str | None = None) -> str:
    """ISO 639-1 code of the language of `text` ("no" for Bokmål and Nynorsk), or "und".

    `conversation` is the language of the chat so far: a short text that could be in
    it ("Og i Quang Ninh?", "Why?") is taken to be, and one with no language is too.
    """
    sample = _URL.sub(" ", _sample(unicodedata.normalize("NFC", text)))
    with_vietnamese = bool(_VIETNAMESE_LETTER.search(sample))
    if not with_vietnamese:
        sample = _without_names(sample)
    if sum(ch.isalpha() for ch in sample) < _MIN_LETTERS:
        return conversation or UNDETERMINED
    candidates = _candidates(sample, with_vietnamese)
    if not candidates:
        return conversation or UNDETERMINED
    candidates = _narrowed(sample, candidates, conversation)
    scores = _scores_by_code(_detector(candidates), sample)
    best = _best_code(scores)
    if best in _SCANDINAVIAN_MARKERS:
        best = _scandinavian_code(sample, scores, best)
    if _is_short(sample):
        best = _short_text_code(scores, best, conversation)
    return best if best != UNDETERMINED else conversation or UNDETERMINED


def _candidates(sample: str, with_vietnamese: bool) -> tuple[str, ...]:
    """The registry's languages written in the scripts of `sample`."""
    scripts = [
        script
        for script, pattern in (
            ("cyrillic", _CYRILLIC), ("kana", _KANA), ("han", _HAN), ("latin", _LATIN)
        )
        if pattern.search(sample)
    ]  # fmt: skip
    if "kana" in scripts:  # Japanese mixes kana with Han characters
        scripts = [s for s in scripts if s != "han"]
    codes = [code for script in scripts for code in _SCRIPT_LANGUAGES[script]]
    if with_vietnamese:
        codes.append("vi")
    return tuple(dict.fromkeys(codes))


def _short_text_code(scores: dict[str, float], best: str, conversation: str | None) -> str:
    """A few words fit several languages ("How many?" is also Polish to lingua): the
    conversation's language, else a core language, wins when it is plausible."""
    core = max(CORE_LANGUAGES, key=lambda code: scores.get(code, 0.0))
    for preferred in (conversation, core):
        if preferred == best:
            return best
        if preferred and scores.get(preferred, 0.0) >= _PLAUSIBLE_SHARE * scores.get(best, 0.0):
            return preferred
    return best


def _is_short(sample: str) -> bool:
    return len(_WORD.findall(sample)) <= _SHORT_WORDS


def _narrowed(
    sample: str, candidates: tuple[str, ...], conversation: str | None
) -> tuple[str, ...]:
    """The NARROW_TO likeliest candidates by lingua's fast mode (trigrams only), with
    the Scandinavian siblings, the conversation's language and, for a few words, the
    core languages, for the precise mode.

    The precise mode loads each candidate's 1- to 5-gram models on first use, about
    0.25 s a language: 2.2 s for the nine of the Latin script, most of a cold `rag
    search`. The fast mode alone misjudges short questions (9 of 400 of tests/qa and
    xquad-dev, all of 4-9 words: "Who is the chair of the IPCC?" as French), but its
    three best held the precise mode's answer for all of them (its two best: 398) but
    not for "Wer ist der Direktor?" (tests/test_language.py).
    """
    if len(candidates) <= NARROW_TO:
        return candidates
    scores = _scores_by_code(_detector(candidates, fast=True), sample)
    kept = set(sorted(candidates, key=lambda code: -scores.get(code, 0.0))[:NARROW_TO])
    if kept & _SCANDINAVIAN_MARKERS.keys():  # told apart by marker words, not lingua alone
        kept |= _SCANDINAVIAN_MARKERS.keys()
    kept.add(conversation or "")
    if "vi" in candidates:  # only a letter with a Vietnamese diacritic makes it one, and
        kept.add("vi")  # trigrams miss it: "Dân số Lam Dongs là 3,4 triệu người" as German
    if _is_short(sample):  # a few words: the core languages compete (_short_text_code)
        kept |= set(CORE_LANGUAGES)
    return tuple(code for code in candidates if code in kept)  # in order: one cache key


@cache
def _detector(codes: tuple[str, ...], fast: bool = False) -> LanguageDetector:
    languages = [getattr(Language, name) for code in codes for name in LANGUAGES[code].lingua]
    if len(languages) == 1:  # lingua needs two; a script with one language decides it
        languages.append(Language.ENGLISH)
    builder = LanguageDetectorBuilder.from_languages(*languages)
    return (builder.with_low_accuracy_mode() if fast else builder).build()


def _sample(text: str) -> str:
    if len(text) <= 3 * _WINDOW_CHARS:
        return text
    middle = (len(text) - _WINDOW_CHARS) // 2
    windows = (
        text[:_WINDOW_CHARS],
        text[middle : middle + _WINDOW_CHARS],
        text[-_WINDOW_CHARS:],
    )
    return "\n".join(windows)


def _without_names(text: str) -> str:
    stripped = _SHORT_CAPITALISED.sub(
        lambda m: " " if capitalized_name(text, m.start(), _SENTENCE_ENDS) else m.group(), text
    )
    # A question that is only names ("Quang Ninh?") keeps them: better than nothing.
    return stripped if sum(ch.isalpha() for ch in stripped) >= _MIN_LETTERS else text


def _scores_by_code(detector: LanguageDetector, text: str) -> dict[str, float]:
    # Max, not sum: Bokmål + Nynorsk summed would give Norwegian two votes on any
    # ambiguous short text.
    scores: dict[str, float] = {}
    for confidence in detector.compute_language_confidence_values(text):
        code = _code_of(confidence.language)
        scores[code] = max(scores.get(code, 0.0), confidence.value)
    return scores


def _code_of(language: Language) -> str:
    return _BY_LINGUA.get(language.name, UNDETERMINED)


def _best_code(scores: dict[str, float]) -> str:
    if not scores:
        return UNDETERMINED
    best = max(scores, key=lambda code: scores[code])
    return UNDETERMINED if scores[best] < _MIN_CONFIDENCE else best


def _scandinavian_code(text: str, scores: dict[str, float], best: str) -> str:
    words = set(_WORD.findall(text.lower()))
    hits = {code: len(words & markers) for code, markers in _SCANDINAVIAN_MARKERS.items()}
    ranked = sorted(hits.values(), reverse=True)
    if ranked[0] > ranked[1]:
        return max(hits, key=lambda code: hits[code])
    if best == "da" and scores.get("no", 0.0) >= _DANISH_MARGIN * scores["da"]:
        return "no"
    return best
