"""Follow-up questions resolved into standalone questions.

"And the Politburo resolution?" means nothing alone: it asks the previous question
about another thing. "Who won the 2022 FIFA World Cup?" stands on its own, however
short, and must be searched and gated alone (glued to a question about Lam Dong, it
found Lam Dong). So a question is first judged: does it depend on the previous turn?
By its words, in its language (rag.languages): it opens like a follow-up ("And …",
"Còn …", "А …", "Und …", "Og …"), ends like one ("… thì sao?", "…呢？"), points back
("its", "there", "его"), or is too short to ask anything alone ("Why?"). A question
that names what it asks about and asks it in full is never a follow-up.

A dependent question becomes a standalone one:
- with an LLM, the model rewrites it (prompts/rewrite.txt), a few dozen tokens;
- without one, or when the rewrite fails, by rule: a follow-up naming a new thing
  and asking in full ("And who spoke for Lam Dong?") is searched as asked, without its
  opener; one naming a new thing only ("And the Politburo resolution?") takes the
  previous question's predicate, the previous question without its names; one
  naming nothing, or pointing back ("Und wie viele Technologieunternehmen?", "how
  many does it employ in Oslo?"), takes the previous question's names. In German a
  lone capitalized word is no name here: it may be any noun ("in der Provinz").
Search, the refusal gate and the prompt all use the standalone question.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.citations import strip_markers
from rag.language import detect_language
from rag.languages import LANGUAGES
from rag.names import is_common_word
from rag.support import NOUN_CAPITALIZING, name_runs

# A question this short (in words, after its opener) asks nothing alone ("Why?").
MIN_STANDALONE_WORDS = 3
# The previous question is read up to this many characters: an API client may send
# any history, and a question is not a document (rag serve takes at most 4000).
HISTORY_MESSAGE_CHARS = 4000
# A question this short, naming nothing, that speaks of "the name" refers to the chat.
MAX_DEFINITE_WORDS = 6
# A rewrite longer than this many times the two questions together went astray.
MAX_REWRITE_GROWTH = 1.5

_WORD = re.compile(r"\w[\w'’-]*")

Rewriter = Callable[[str, str, str | None, str], str | None]


@dataclass
class Plan:
    """A question, resolved: what the rest of the answer path works with."""

    question: str  # as asked
    standalone: str  # what search, gate and prompt use
    language: str  # of the answer
    previous: str | None  # the previous user question, if any
    follow_up: bool  # the question depends on the previous turn
    method: str = "standalone"  # how `standalone` was made: "standalone", "rules", "llm"
    # the language the question is written in, when a fixed answer language was asked
    # for (None: `language` is it); the gate compares passages' languages with it
    asked_in: str | None = None

    @property
    def question_language(self) -> str:
        return self.asked_in or self.language


def previous_turn(history: Sequence[dict[str, str]], turns: int) -> tuple[str | None, str | None]:
    """The last user question of the (bounded) history and the answer that followed."""
    recent = list(history)[-2 * turns :] if turns > 0 else []  # 0: no history
    for i in range(len(recent) - 1, -1, -1):
        message = recent[i]
        if message.get("role") == "user" and message.get("content", "").strip():
            after = recent[i + 1].get("content") if i + 1 < len(recent) else None
            return message["content"].strip()[:HISTORY_MESSAGE_CHARS], after
    return None, None


def resolve(
    question: str,
    history: Sequence[dict[str, str]],
    turns: int,
    language: str | None = None,
    rewrite: Rewriter | None = None,
) -> Plan:
    """The plan of a question: its language and, for a follow-up, its standalone form."""
    previous, previous_answer = previous_turn(history, turns)
    conversation = detect_language(previous) if previous else None
    detected = detect_language(question, _known(conversation))
    asked_in = detected if detected in LANGUAGES else _known(conversation) or "en"
    lang = language if language in LANGUAGES else asked_in
    fixed = asked_in if lang != asked_in else None
    if not previous or not depends_on_previous(question, lang):
        return Plan(question, question, lang, previous, False, asked_in=fixed)
    if rewrite is not None:
        rewritten = _checked(rewrite(question, previous, previous_answer, lang), question, previous)
        if rewritten:
            return Plan(question, rewritten, lang, previous, True, "llm", fixed)
    standalone = standalone_by_rules(question, previous, lang, previous_answer)
    return Plan(question, standalone, lang, previous, True, "rules", fixed)


def _known(code: str | None) -> str | None:
    return code if code in LANGUAGES else None


def depends_on_previous(question: str, language: str) -> bool:
    """Whether `question` only makes sense with the previous turn (see the module)."""
    text = " ".join(question.lower().split())
    info = LANGUAGES.get(language)
    if info is None:
        return False
    if any(_opens_with(text, opener, info.spaced) for opener in info.openers):
        return True
    if any(text.rstrip(" ?？!.").endswith(closer.rstrip(" ?？")) for closer in info.closers):
        return True
    words = _WORD.findall(text)
    if _points_back(words, language):
        return True
    if _names(question, language) or any(ch.isdigit() for ch in text):
        return False
    if len(words) <= MAX_DEFINITE_WORDS and any(word in info.definite for word in words):
        return True
    return len(words) < MIN_STANDALONE_WORDS


def standalone_by_rules(
    question: str, previous: str, language: str, previous_answer: str | None = None
) -> str:
    """The follow-up made standalone without a model (see the module). One naming
    nothing, or pointing back, takes the names of the previous question, then of its
    answer ("According to him, ..." speaks of the person the answer named)."""
    own = _without_opener(question, language)
    if _subjects(own, language) and not _points_back(_WORD.findall(own.lower()), language):
        if _asks_in_full(own, language):
            return own  # "And who spoke for Lam Dong?": a new subject, asked in full
        return f"{own} ({_without_names(previous)})"
    names = list(dict.fromkeys(_names(previous) + _names(strip_markers(previous_answer or ""))))
    return f"{own} ({', '.join(names)})" if names else f"{previous} {own}"


def _points_back(words: Sequence[str], language: str) -> bool:
    """Whether the lower-case words hold a word pointing back ("its", "there", "его"):
    whole words (or phrases) in a cased script, anywhere in Chinese and Japanese."""
    padded = f" {' '.join(words)} "
    info = LANGUAGES[language]
    return any((f" {p} " if info.cased else p) in padded for p in info.pointers)


def _asks_in_full(own: str, language: str) -> bool:
    """Whether a follow-up, opener cut, asks its own question: enough words besides
    the names it asks about ("who spoke for Lam Dong", not "the Politburo resolution")."""
    rest = _WORD.findall(_without_names(own, _subjects(own, language)))
    return len(rest) >= MIN_STANDALONE_WORDS


def _subjects(text: str, language: str) -> list[str]:
    """The names that say what a follow-up asks about. In a language that capitalizes
    its nouns only a name of several words or an acronym ("Lam Dong", "MOST"): one
    capitalized word may be any noun ("Startups in der Provinz")."""
    names = _names(text, language)
    if language not in NOUN_CAPITALIZING:
        return names
    return [name for name in names if " " in name or name.isupper()]


def _without_opener(question: str, language: str) -> str:
    info = LANGUAGES[language]
    lowered = question.lower()
    for opener in sorted(info.openers, key=len, reverse=True):
        if _opens_with(lowered, opener, info.spaced):
            return question[len(opener) :].strip(" ,") or question
    return question


def _opens_with(text: str, opener: str, spaced: bool) -> bool:
    """Whether the lower-case text opens with the opener as whole words: "а как" opens
    "а как же?", not "а какой объём" (there "а " does)."""
    if not text.startswith(opener):
        return False
    rest = text[len(opener) :]
    return not spaced or opener.endswith(" ") or not rest or not rest[0].isalnum()


def _names(text: str, language: str | None = None) -> list[str]:
    """The names of a text ("Thái Nguyên", "MOST"; see rag.support.name_runs). In a
    language that capitalizes its nouns, a lone word its stemmer knows is no name
    ("Technologieunternehmen")."""
    stemmer = LANGUAGES[language].stemmer if language in NOUN_CAPITALIZING else None
    return [
        " ".join(run)
        for run in name_runs(text)
        if not (stemmer and len(run) == 1 and is_common_word(run[0], stemmer))
    ]


def _without_names(text: str, names: Sequence[str] | None = None) -> str:
    for name in _names(text) if names is None else names:
        text = text.replace(name, " ")
    return " ".join(text.split())


def _checked(rewritten: str | None, question: str, previous: str) -> str | None:
    """The model's rewrite, if it looks like one question (not an answer, not empty)."""
    if not rewritten:
        return None
    line = rewritten.strip().splitlines()[0].strip().strip('"«»“”')
    if not line or len(line) > MAX_REWRITE_GROWTH * (len(question) + len(previous)):
        return None
    return line
