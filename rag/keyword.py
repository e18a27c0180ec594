"""Keyword search (BM25, via bm25s) over chunks in several languages.

Tokens. A chunk is tokenized in its own language: lower-cased Unicode words, stemmed
with the Snowball stemmer of the chunk's language (PyStemmer), then accent-folded
("cần" -> "can", "й" -> "и"), so a Vietnamese question's "Cần Thơ" finds "Can Tho" in a
German article. Vietnamese is not stemmed; its words are several syllables, so
adjacent syllables are also indexed as bigrams ("khoa_hoc"). Numbers are kept and also
indexed whole when written with separators ("24 000", "24.000" -> "24000"; "1,6" ->
"1.6"), and codes such as "57-NQ/TW" whole besides their parts ("57", "nq", "tw").

Queries. A question may be in another language than the chunks, so each question word
is stemmed with the stemmer of every language in the index plus the question's own,
and a chunk scores the best of those variants (a word that matches through three
stemmers is not counted three times).

Which words count. In this corpus most questions are asked in another language than
the article that answers them, and measured on tests/qa/golden.jsonl, letting common
words match ("in", "die", "провинции") made hybrid retrieval worse than dense alone:
any match puts a chunk on the keyword list, and reciprocal rank fusion rewards being
on both lists whatever the score. So a chunk is scored only on the question's
*language-neutral* terms (names, acronyms, numbers, codes: the things embeddings
blur) plus, for chunks in the question's own language, its rare words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rag.records import Chunk

if TYPE_CHECKING:
    import bm25s

# ISO 639-1 code -> Snowball algorithm in PyStemmer. Ukrainian and Vietnamese have none.
STEMMER_NAMES: dict[str, str] = {
    "en": "english",
    "de": "german",
    "ru": "russian",
    "no": "norwegian",
    "da": "danish",
    "sv": "swedish",
    "fr": "french",
    "es": "spanish",
}
CYRILLIC_STEMMERS = frozenset({"russian"})
# Stemming languages when the question's language cannot be detected.
FALLBACK_QUERY_LANGUAGES = ("en", "de", "ru", "no")
BIGRAM_LANGUAGES = frozenset({"vi"})
# A token in more than this fraction of the chunks is a stopword of the corpus and is
# ignored (only in indexes of at least MIN_DF_CHUNKS chunks, where fractions mean
# something). Such a token is weak evidence (idf < 1.8), but fusion only sees ranks: a
# list ordered by it alone is noise. On the golden set "Vietnam" (16 % of the seed
# chunks) cost two questions their answer at 0.2; 0.15 keeps them.
MAX_DF_FRACTION = 0.15
MIN_DF_CHUNKS = 20
# A word that is no name counts (in chunks of the question's language) only when it is
# in at most this fraction of the chunks (and in at least one chunk is always allowed).
# 5 % already let same-language chunks crowd out the answer on the golden set.
RARE_FRACTION = 0.02
UNDETERMINED = "und"

_WORD = re.compile(r"\w+")
# "57-NQ/TW", "12/12/2025", "COVID-19": indexed whole besides their parts.
_CODE = re.compile(r"\w+(?:[-/]\w+)+")
# Decimals ("1,6", "1.6") and grouped thousands ("24 000", "24.000", "24,000").
_NUMBER = re.compile(r"\d+(?:[.,]\d+)+|\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?!\d)")
_THOUSANDS = re.compile(r"\d{1,3}(?:[., \u00a0\u202f]\d{3})+")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
# After these a capital letter says nothing about a name.
_SENTENCE_START = "!?:;\"'«»“”„(["
# "TP. Hồ Chí Minh", "Nr. 57": a period after a word this short is an abbreviation.
_ABBREVIATION_CHARS = 3


# --------------------------------------------------------------------------- tokenizing


class _Stemmers:
    """PyStemmer objects and per-language word -> token caches (words repeat a lot)."""

    def __init__(self) -> None:
        self._stemmers: dict[str, object] = {}
        self._cache: dict[str | None, dict[str, str]] = {}

    def token(self, word: str, algorithm: str | None) -> str:
        """`word` (lower-case) stemmed with `algorithm` (None: not stemmed), folded."""
        cache = self._cache.setdefault(algorithm, {})
        token = cache.get(word)
        if token is None:
            token = fold(self._stem(word, algorithm))
            cache[word] = token
        return token

    def _stem(self, word: str, algorithm: str | None) -> str:
        if algorithm is None or not word.isalpha():
            return word  # numbers and codes ("l2pro") are not words to stem
        if (algorithm in CYRILLIC_STEMMERS) != bool(_CYRILLIC.match(word)):
            return word  # a Latin word in a Russian text is not Russian, and vice versa
        stemmer = self._stemmers.get(algorithm)
        if stemmer is None:
            import Stemmer  # PyStemmer

            stemmer = self._stemmers[algorithm] = Stemmer.Stemmer(algorithm)
        return stemmer.stemWord(word)  # type: ignore[attr-defined]


_STEMMERS = _Stemmers()


def fold(token: str) -> str:
    """Remove accents and tone marks ("cần" -> "can", "đồng" -> "dong", "й" -> "и")."""
    if token.isascii():
        return token
    decomposed = unicodedata.normalize("NFKD", token.replace("đ", "d"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def canonical_language(language: str) -> str:
    """One code per language: Bokmål and Nynorsk are both "no"."""
    return "no" if language in ("nb", "nn") else language


def stemmer_for(language: str) -> str | None:
    return STEMMER_NAMES.get(canonical_language(language))


def normalize_number(text: str) -> str:
    """One spelling per number: thousands without separators, decimals with a point."""
    if _THOUSANDS.fullmatch(text):
        return re.sub(r"[^\d]", "", text)
    return text.replace(",", ".")


def _extra_tokens(text: str) -> Iterator[str]:
    """Whole codes and numbers, besides the words they are made of."""
    for match in _CODE.finditer(text):
        yield fold(match.group())
    for match in _NUMBER.finditer(text):
        yield normalize_number(match.group())


def _adjacent(matches: Sequence[re.Match[str]], text: str) -> Iterator[tuple[int, int]]:
    """Indexes of adjacent word pairs (only whitespace between them)."""
    for i in range(1, len(matches)):
        if text[matches[i - 1].end() : matches[i].start()].isspace():
            yield i - 1, i


def _bigrams(words: Sequence[str], pairs: Iterable[tuple[int, int]]) -> Iterator[str]:
    """Adjacent syllables, folded and joined by "_" ("khoa học" -> "khoa_hoc")."""
    for first, second in pairs:
        yield f"{fold(words[first])}_{fold(words[second])}"


def _prepare(text: str) -> str:
    return unicodedata.normalize("NFC", text).lower()


def document_tokens(text: str, language: str) -> list[str]:
    """The tokens of a chunk written in `language`."""
    text = _prepare(text)
    algorithm = stemmer_for(language)
    matches = list(_WORD.finditer(text))
    words = [m.group() for m in matches]
    tokens = [_STEMMERS.token(word, algorithm) for word in words]
    tokens.extend(_extra_tokens(text))
    if language in BIGRAM_LANGUAGES:
        tokens.extend(_bigrams(words, _adjacent(matches, text)))
    return tokens


@dataclass(frozen=True)
class QueryTerm:
    """A query word (or code, number, bigram) and its alternative tokens.

    `neutral` terms can match chunks in any language: numbers, codes, acronyms and
    names.
    """

    variants: frozenset[str]
    neutral: bool


def _starts_sentence(text: str, start: int) -> bool:
    """Whether the word at `start` is the first of the text, a line or a sentence."""
    before = text[:start]
    stripped = before.rstrip()
    if not stripped or "\n" in before[len(stripped) :]:
        return True
    if stripped[-1] in _SENTENCE_START:
        return True
    if stripped[-1] != ".":
        return False
    previous = stripped[:-1].rsplit(maxsplit=1)[-1] if stripped[:-1].strip() else ""
    return len(previous) > _ABBREVIATION_CHARS  # "TP. Hồ Chí Minh" goes on


def _is_english_word(word: str) -> bool:
    """English Title Case ("Ministry of Science") is the usual capitalized word that is
    no name; the English stemmer changing it (beyond a plural or genitive "s") marks a
    word as English. Vietnamese, Chinese or Korean names are left alone by it."""
    lower = word.lower()
    stem = _STEMMERS.token(lower, "english")
    return stem not in (fold(lower), fold(lower.removesuffix("s")))


def _is_neutral(text: str, match: re.Match[str]) -> bool:
    """Words with digits, acronyms, and names (capitalized inside a sentence)."""
    word = match.group()
    if any(ch.isdigit() for ch in word) or (len(word) > 1 and word.isupper()):
        return True
    if not word[0].isupper() or _starts_sentence(text, match.start()):
        return False
    return bool(_CYRILLIC.match(word)) or not _is_english_word(word)


def query_terms(text: str, languages: Iterable[str]) -> list[QueryTerm]:
    """One term per distinct query word, code, number (and bigram, for Vietnamese).

    The alternatives of a word are the word itself (folded) and its stem in each of
    `languages`; a chunk scores the best alternative it contains.
    """
    text = unicodedata.normalize("NFC", text)
    languages = set(languages)
    algorithms = sorted({a for a in map(stemmer_for, languages) if a is not None})
    matches = list(_WORD.finditer(text))
    words = [m.group().lower() for m in matches]
    neutral = [_is_neutral(text, m) for m in matches]
    terms: dict[frozenset[str], bool] = {}  # insertion-ordered: deterministic

    def add(variants: Iterable[str], is_neutral: bool) -> None:
        key = frozenset(variants)
        terms[key] = terms.get(key, False) or is_neutral

    for word, is_neutral in zip(words, neutral, strict=True):
        stems = [_STEMMERS.token(word, a) for a in algorithms]
        add([_STEMMERS.token(word, None), *stems], is_neutral)
    for token in _extra_tokens(text.lower()):
        add([token], True)
    if BIGRAM_LANGUAGES & languages:
        pairs = list(_adjacent(matches, text))
        for (first, second), token in zip(pairs, _bigrams(words, pairs), strict=True):
            add([token], neutral[first] and neutral[second])
    return [QueryTerm(variants, is_neutral) for variants, is_neutral in terms.items()]


# --------------------------------------------------------------------------- the index


def _query_language(query: str) -> str:
    """The question's language ("und" when unknown or rag.language is unavailable)."""
    try:
        from rag.language import detect_language
    except ImportError:  # only while rag.language did not exist yet
        return UNDETERMINED
    return detect_language(query)


class KeywordIndex:
    """BM25 over a fixed list of chunks; positions are indexes into `chunks`."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = list(chunks)
        self.positions = {c.chunk_id: i for i, c in enumerate(self.chunks)}
        chunk_languages = [canonical_language(c.language) for c in self.chunks]
        self.languages = frozenset(chunk_languages)
        self._chunk_languages = np.array(chunk_languages, dtype=object)
        self._bm25 = _build_bm25(self.chunks) if self.chunks else None
        indptr = self._bm25.scores["indptr"] if self._bm25 is not None else np.zeros(1)
        self._df = np.diff(indptr)  # chunks holding each token id
        many = len(self.chunks) >= MIN_DF_CHUNKS
        self._max_df = MAX_DF_FRACTION * len(self.chunks) if many else np.inf
        self._rare_df = max(1.0, RARE_FRACTION * len(self.chunks))

    def __len__(self) -> int:
        return len(self.chunks)

    def stem_languages(self, language: str) -> set[str]:
        """Languages to stem a question with: the index's, plus the question's own."""
        if language == UNDETERMINED:
            return set(self.languages) | set(FALLBACK_QUERY_LANGUAGES)
        return set(self.languages) | {language}

    def scores(self, query: str, language: str | None = None) -> np.ndarray:
        """BM25 score of every chunk for `query` (0 where nothing matches).

        Neutral terms count in every chunk; other words only when rare, and only in
        chunks in the question's `language` (detected when not given; when it cannot
        be, every chunk is taken to be in it).
        """
        anywhere = np.zeros(len(self.chunks), dtype=np.float32)
        if self._bm25 is None:
            return anywhere
        language = canonical_language(language or _query_language(query))
        same_language = np.zeros_like(anywhere)
        for term in query_terms(query, self.stem_languages(language)):
            ids = self._token_ids(term)
            if not ids:
                continue
            if term.neutral:
                anywhere += self._best_of(ids)
            elif int(self._df[ids].max()) <= self._rare_df:
                same_language += self._best_of(ids)
        if language != UNDETERMINED:
            same_language *= self._chunk_languages == language
        return anywhere + same_language

    def search(self, query: str, k: int, language: str | None = None) -> list[tuple[int, float]]:
        """The k best (chunk position, BM25 score), best first; only chunks scoring > 0."""
        return top_k(self.scores(query, language), k)

    def _token_ids(self, term: QueryTerm) -> list[int]:
        """Ids of the term's variants that are in the index and not corpus stopwords;
        variants that are not in the vocabulary are simply left out."""
        vocab: dict[str, int] = self._bm25.vocab_dict  # type: ignore[union-attr]
        ids = sorted(vocab[t] for t in term.variants if t in vocab)
        return [i for i in ids if self._df[i] <= self._max_df]

    def _best_of(self, ids: list[int]) -> np.ndarray:
        """Per chunk, the best BM25 score of any one of these token ids."""
        assert self._bm25 is not None
        best = self._bm25.get_scores_from_ids([ids[0]])
        for token_id in ids[1:]:
            np.maximum(best, self._bm25.get_scores_from_ids([token_id]), out=best)
        return best


def _build_bm25(chunks: Sequence[Chunk]) -> bm25s.BM25:
    import bm25s

    # Token ids are assigned here in one pass and handed to bm25s as (ids, vocabulary):
    # given strings, bm25s would build the vocabulary in a second pass.
    vocab: dict[str, int] = {}
    corpus_ids = [
        [vocab.setdefault(t, len(vocab)) for t in document_tokens(c.text, c.language)]
        for c in chunks
    ]
    if not vocab:  # only empty chunks: bm25s needs one token to build
        vocab[""] = 0
    bm25 = bm25s.BM25()
    bm25.index((corpus_ids, vocab), create_empty_token=False, show_progress=False)
    return bm25


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Positions of the k highest positive scores, best first, ties by position."""
    if k <= 0 or scores.size == 0:
        return []
    candidates = np.flatnonzero(scores > 0)
    if candidates.size > k:
        # np.partition is O(n); ties at the boundary are then settled by position.
        threshold = np.partition(scores[candidates], candidates.size - k)[candidates.size - k]
        candidates = candidates[scores[candidates] >= threshold]
    order = sorted(candidates.tolist(), key=lambda i: (-float(scores[i]), i))
    return [(i, float(scores[i])) for i in order[:k]]
