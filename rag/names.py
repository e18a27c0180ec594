"""Names in running text: a capitalized word that does not start a sentence.

At the start of a sentence a capital letter says nothing; inside one it marks a name
("Dong Nai", "Pham Quang Hieu") or an acronym. Three steps ask this question:
language detection (names are evidence of the topic, not of the language), keyword
search (names are the question's language-neutral terms) and the feedback form (a
name is a good phrase to check an answer for). They ask it here.
"""

from __future__ import annotations

import threading
import unicodedata

# After these a capital letter says nothing about a name.
SENTENCE_OPENERS = "!?:;\"'«»“”„(["
# List bullets and dashes: a capital after them starts an item, not a name.
BULLETS = "-–•*"
# "TP. Hồ Chí Minh", "Nr. 57": a period after a word this short is an abbreviation.
ABBREVIATION_CHARS = 3


def starts_sentence(text: str, start: int, openers: str = SENTENCE_OPENERS) -> bool:
    """Whether the word at `start` is the first of the text, a line or a sentence.

    A sentence starts after one of `openers`, and after a period unless the word
    before it is an abbreviation (at most ABBREVIATION_CHARS characters).
    """
    before = text[:start]
    stripped = before.rstrip()
    if not stripped or "\n" in before[len(stripped) :]:
        return True
    if stripped[-1] in openers:
        return True
    if stripped[-1] != ".":
        return False
    previous = stripped[:-1].rsplit(maxsplit=1)[-1] if stripped[:-1].strip() else ""
    return len(previous) > ABBREVIATION_CHARS  # "TP. Hồ Chí Minh" goes on


def capitalized_name(text: str, start: int, openers: str = SENTENCE_OPENERS) -> bool | None:
    """Whether the word at `start` is a name by its capital letter.

    True for a capitalized word inside a sentence, False for a word that is not
    capitalized, None for the capitalized first word of a sentence (a name or not:
    the caller decides from what else it knows).
    """
    if not text[start].isupper():
        return False
    return None if starts_sentence(text, start, openers) else True


# Cyrillic letters as Latin, for comparing names across scripts ("Донгнай" ~ "Dong Nai").
# Deliberately simple and lossy: both sides of a comparison go through latin_key.
_CYRILLIC_LATIN = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяіїєґў",
        # ъ and ь: "_", dropped with every other non-alphanumeric
        (
            "a",
            "b",
            "v",
            "g",
            "d",
            "e",
            "e",
            "zh",
            "z",
            "i",
            "i",
            "k",
            "l",
            "m",
            "n",
            "o",
            "p",
            "r",
            "s",
            "t",
            "u",
            "f",
            "kh",
            "ts",
            "ch",
            "sh",
            "shch",
            "_",
            "y",
            "_",
            "e",
            "yu",
            "ya",
            "i",
            "i",
            "e",
            "g",
            "u",
        ),  # fmt: skip
        strict=True,
    )
)


def latin_key(text: str) -> str:
    """`text` folded for comparing names across languages and scripts: lower case,
    Cyrillic transliterated, accents and tone marks dropped, only letters and digits
    kept ("Đồng Nai" -> "dongnai", "Донгнай" -> "dongnai")."""
    lowered = unicodedata.normalize("NFKD", text.lower().replace("đ", "d"))
    letters = (_CYRILLIC_LATIN.get(ch, ch) for ch in lowered if not unicodedata.combining(ch))
    return "".join(ch for ch in "".join(letters) if ch.isalnum() and ch != "_")


_STEMMERS = threading.local()


def is_common_word(word: str, algorithm: str = "english") -> bool:
    """Whether a capitalized word is a common word of a language rather than a name:
    the language's Snowball stemmer changes it beyond a plural or genitive "s".
    English Title Case ("Ministry", "Science") and German nouns ("Unternehmen") are;
    Vietnamese, Chinese or Korean names ("Dong", "Nai", "Thao") are left alone."""
    stemmers = _STEMMERS.__dict__  # PyStemmer objects must not be shared between threads
    if algorithm not in stemmers:
        import Stemmer

        stemmers[algorithm] = Stemmer.Stemmer(algorithm)
    lower = word.lower()
    return str(stemmers[algorithm].stemWord(lower)) not in (lower, lower.removesuffix("s"))


def is_english_word(word: str) -> bool:
    """English Title Case ("Ministry of Science") rather than a name."""
    return is_common_word(word, "english")


# Spellings of the same sound across the usual transliterations of Vietnamese and other
# names into Latin and Cyrillic ("Кантхо" ~ "Can Tho", "Хоанг Дык" ~ "Hoang Duc",
# "Куангнинь" ~ "Quang Ninh"), applied in order to a latin_key.
_SOUNDS = (("tkh", "th"), ("kkh", "kh"), ("kh", "h"), ("ch", "sh"), ("nh", "n"), ("ph", "f"),
           ("ts", "c"), ("k", "c"), ("q", "c"), ("w", "v"), ("j", "i"), ("y", "i"))  # fmt: skip
_VOWELS = frozenset("aeiou")


def name_skeleton(key: str) -> str:
    """The consonant skeleton of a latin_key: sounds unified, vowels dropped, repeats
    collapsed ("cantho" and "kantkho" -> "cnth"), for matching a name across scripts."""
    for spelling, sound in _SOUNDS:
        key = key.replace(spelling, sound)
    consonants = [ch for ch in key if ch not in _VOWELS]
    return "".join(ch for i, ch in enumerate(consonants) if i == 0 or ch != consonants[i - 1])
