"""Names in running text: a capitalized word that does not start a sentence.

At the start of a sentence a capital letter says nothing; inside one it marks a name
("Dong Nai", "Pham Quang Hieu") or an acronym. Three steps ask this question:
language detection (names are evidence of the topic, not of the language), keyword
search (names are the question's language-neutral terms) and the feedback form (a
name is a good phrase to check an answer for). They ask it here.
"""

from __future__ import annotations

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
