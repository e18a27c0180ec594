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
words match ("in", "die", "провинции") made hybrid retrieval worse than dense alone
(hit@1 33 vs 40 of 60): any match puts a chunk on the keyword list, and reciprocal
rank fusion rewards being on both lists whatever the score. Even rare words of the
question's own language (in at most 2 % of the chunks) cost two answers: they find
the article in the question's language, not the one that answers. So only the
question's *language-neutral* terms count: names, acronyms, numbers and codes, the
things embeddings blur. A name is a capitalized word inside a sentence (or a sentence
of such words, "Pham Quang Hieu"), unless the English stemmer shortens it: English
Title Case ("Ministry of Science") is no name. German capitalizes every noun, so
there a capitalized word counts only if the index has it in another language too.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.languages import stemmer_names
from rag.names import capitalized_name, is_english_word, starts_sentence
from rag.records import Chunk
from rag.tuning import MAX_DF_FRACTION, MIN_DF_CHUNKS

if TYPE_CHECKING:
    import bm25s

# ISO 639-1 code -> Snowball algorithm in PyStemmer, from the language registry.
# Ukrainian and Vietnamese have none.
STEMMER_NAMES: dict[str, str] = stemmer_names()
CYRILLIC_STEMMERS = frozenset({"russian"})
# Stemming languages when the question's language cannot be detected.
FALLBACK_QUERY_LANGUAGES = ("en", "de", "ru", "no")
BIGRAM_LANGUAGES = frozenset({"vi"})
# German capitalizes every noun: in a German question a capitalized word counts as a
# name only if the index has it in a chunk of another language ("Nguyen", not
# "Unternehmen").
NOUN_CAPITALIZING = frozenset({"de"})
UNDETERMINED = "und"

_WORD = re.compile(r"\w+")
# Possessive quantifiers (++): without them a failed match backtracks through every
# shorter prefix of every word, which made these two regexes half of indexing time.
# "57-NQ/TW", "12/12/2025", "COVID-19": indexed whole besides their parts.
_CODE = re.compile(r"\b\w++(?:[-/]\w++)+")
# Decimals ("1,6", "1.6") and grouped thousands ("24 000", "24.000", "24,000").
_NUMBER = re.compile(r"(?<!\d)(?:\d++(?:[.,]\d++)+|\d{1,3}+(?:[ \u00a0\u202f]\d{3})+(?!\d))")
_THOUSANDS = re.compile(r"\d{1,3}(?:[., \u00a0\u202f]\d{3})+")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


# --------------------------------------------------------------------------- tokenizing


class _Stemmers:
    """PyStemmer objects and per-language word -> token caches (words repeat a lot).

    PyStemmer objects must not be shared between threads (the UI searches from
    several), so each thread gets its own; the caches are plain dicts, safe to share.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._cache: dict[str | None, dict[str, str]] = {}

    def token(self, word: str, algorithm: str | None) -> str:
        """`word` (lower-case) stemmed with `algorithm` (None: not stemmed), folded."""
        cache = self._cache.setdefault(algorithm, {})
        token = cache.get(word)
        if token is None:
            token = cache[word] = fold(self._stem(word, algorithm))
        return token

    def tokens(self, words: Iterable[str], algorithm: str | None) -> list[str]:
        """`token` for many words; the cache hit (nearly every word) stays inline."""
        cache = self._cache.setdefault(algorithm, {})
        get = cache.get
        return [get(w) or self.token(w, algorithm) for w in words]

    def _stem(self, word: str, algorithm: str | None) -> str:
        if algorithm is None or not word.isalpha():
            return word  # numbers and codes ("l2pro") are not words to stem
        if (algorithm in CYRILLIC_STEMMERS) != bool(_CYRILLIC.match(word)):
            return word  # a Latin word in a Russian text is not Russian, and vice versa
        stemmers: dict[str, Any] = self._local.__dict__.setdefault("stemmers", {})
        stemmer = stemmers.get(algorithm)
        if stemmer is None:
            import Stemmer  # PyStemmer

            stemmer = stemmers[algorithm] = Stemmer.Stemmer(algorithm)
        return str(stemmer.stemWord(word))


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
    tokens = _STEMMERS.tokens(words, algorithm)
    tokens.extend(_extra_tokens(text))
    if language in BIGRAM_LANGUAGES:
        tokens.extend(_bigrams(words, _adjacent(matches, text)))
    return tokens


@dataclass(frozen=True)
class QueryTerm:
    """A query word (or code, number, bigram) and its alternative tokens.

    `neutral` terms can match chunks in any language: numbers, codes, acronyms and
    names. `capitalized` marks a neutral word that is only a name by its capital: in
    a German question that says little (every noun has one), see KeywordIndex.
    """

    variants: frozenset[str]
    neutral: bool
    capitalized: bool = False


def _is_neutral(text: str, match: re.Match[str]) -> bool | None:
    """Words with digits, acronyms, and names (capitalized inside a sentence); None for
    a capitalized first word of a sentence, which may or may not be a name."""
    word = match.group()
    if _is_code(word):
        return True
    name = capitalized_name(text, match.start())
    if not name:
        return name  # not capitalized (False), or the first word of a sentence (None)
    return bool(_CYRILLIC.match(word)) or not is_english_word(word)


def _is_code(word: str) -> bool:
    return any(ch.isdigit() for ch in word) or (len(word) > 1 and word.isupper())


def _neutral_words(text: str, matches: Sequence[re.Match[str]]) -> list[bool]:
    """`_is_neutral` of each word; a capitalized first word counts as a name only in a
    sentence of names ("Pham Quang Hieu", "Marvell?"), not before one ("Почему
    Япония ...", "Which Korean ...")."""
    flags = [_is_neutral(text, m) for m in matches]
    sentence: list[int] = []
    for i in range(len(matches) + 1):
        if i == len(matches) or (sentence and starts_sentence(text, matches[i].start())):
            all_names = all(flags[j] is not False for j in sentence)
            for j in sentence:
                flags[j] = bool(flags[j]) or (flags[j] is None and all_names)
            sentence = []
        if i < len(matches):
            sentence.append(i)
    return [bool(flag) for flag in flags]


@dataclass(frozen=True)
class KeywordQuery:
    """A question as keyword search sees it, analyzed once: its language, its terms
    and how much of it is names, numbers and codes (see `neutral_share`)."""

    language: str  # canonical (see canonical_language); "und" when unknown
    terms: tuple[QueryTerm, ...]
    neutral_share: float


def analyze_query(text: str, languages: Iterable[str], language: str) -> KeywordQuery:
    """`query_terms` and `neutral_share` of `text` from one tokenization."""
    text, matches, neutral = _words(text)
    terms = _terms(text, matches, neutral, set(languages))
    return KeywordQuery(language, tuple(terms), _share(neutral))


def query_terms(text: str, languages: Iterable[str]) -> list[QueryTerm]:
    """One term per distinct query word, code, number (and bigram, for Vietnamese).

    The alternatives of a word are the word itself (folded) and its stem in each of
    `languages`; a chunk scores the best alternative it contains.
    """
    return _terms(*_words(text), set(languages))


def neutral_share(text: str) -> float:
    """Fraction of the words of `text` that are names, numbers, codes or acronyms:
    1.0 for a lookup such as "L2Pro" or "233", small for a question in words."""
    return _share(_words(text)[2])


def _words(text: str) -> tuple[str, list[re.Match[str]], list[bool]]:
    """The text (NFC), its words, and whether each is language-neutral."""
    text = unicodedata.normalize("NFC", text)
    matches = list(_WORD.finditer(text))
    return text, matches, _neutral_words(text, matches)


def _share(neutral: Sequence[bool]) -> float:
    return sum(neutral) / len(neutral) if neutral else 0.0


def _terms(
    text: str, matches: Sequence[re.Match[str]], neutral: Sequence[bool], languages: set[str]
) -> list[QueryTerm]:
    algorithms = sorted({a for a in map(stemmer_for, languages) if a is not None})
    words = [m.group().lower() for m in matches]
    terms: dict[frozenset[str], tuple[bool, bool]] = {}  # insertion-ordered

    def add(variants: Iterable[str], is_neutral: bool, capitalized: bool = False) -> None:
        key = frozenset(variants)
        was_neutral, was_capitalized = terms.get(key, (False, True))
        if is_neutral and not was_neutral:
            terms[key] = (True, capitalized)
        elif is_neutral:
            terms[key] = (True, capitalized and was_capitalized)
        else:
            terms.setdefault(key, (False, False))

    for match, word, is_neutral in zip(matches, words, neutral, strict=True):
        stems = [_STEMMERS.token(word, a) for a in algorithms]
        add([_STEMMERS.token(word, None), *stems], is_neutral, not _is_code(match.group()))
    for token in _extra_tokens(text.lower()):
        add([token], True)
    if BIGRAM_LANGUAGES & languages:
        pairs = list(_adjacent(matches, text))
        for (first, second), token in zip(pairs, _bigrams(words, pairs), strict=True):
            add([token], neutral[first] and neutral[second], True)
    return [QueryTerm(variants, *flags) for variants, flags in terms.items()]


# --------------------------------------------------------------------------- the index


def _query_language(query: str) -> str:
    """The question's language ("und" when unknown)."""
    # Imported here: lingua takes about a second to load, which building an index
    # (and every command that never searches) should not pay.
    from rag.language import detect_language

    return detect_language(query)


class KeywordIndex:
    """BM25 over a fixed list of chunks; positions are indexes into `chunks`."""

    def __init__(self, chunks: Sequence[Chunk], tokenized: Tokenized | None = None) -> None:
        """`tokenized`: the chunks' token ids, where known (rag.keyword_cache reuses
        them for the chunks an index update keeps, to tokenize only the new ones)."""
        self.chunks = list(chunks)
        self.positions = {c.chunk_id: i for i, c in enumerate(self.chunks)}
        chunk_languages = [canonical_language(c.language) for c in self.chunks]
        self.languages = frozenset(chunk_languages)
        self._chunk_languages = np.array(chunk_languages, dtype=object)
        self.tokenized = tokenized or tokenize(self.chunks)
        self._bm25 = _build_bm25(self.tokenized)
        indptr = self._bm25.scores["indptr"] if self._bm25 is not None else np.zeros(1)
        self._df = np.diff(indptr)  # chunks holding each token id
        many = len(self.chunks) >= MIN_DF_CHUNKS
        self._max_df = MAX_DF_FRACTION * len(self.chunks) if many else np.inf

    def __len__(self) -> int:
        return len(self.chunks)

    def stem_languages(self, language: str) -> set[str]:
        """Languages to stem a question with: the index's, plus the question's own."""
        if language == UNDETERMINED:
            return set(self.languages) | set(FALLBACK_QUERY_LANGUAGES)
        return set(self.languages) | {language}

    def parse(self, query: str, language: str | None = None) -> KeywordQuery:
        """The question analyzed for this index; `language` is the question's,
        detected when not given."""
        language = canonical_language(language or _query_language(query))
        return analyze_query(query, self.stem_languages(language), language)

    def scores(self, query: str | KeywordQuery, language: str | None = None) -> np.ndarray:
        """BM25 score of every chunk on the question's language-neutral terms (0 where
        none matches). A string is parsed first (see `parse`)."""
        total = np.zeros(len(self.chunks), dtype=np.float32)
        if self._bm25 is None:
            return total
        parsed = query if isinstance(query, KeywordQuery) else self.parse(query, language)
        for term in parsed.terms:
            ids = self._token_ids(term) if term.neutral else []
            if ids and self._is_name_here(term, ids, parsed.language):
                total += self._best_of(ids)
        return total

    def _is_name_here(self, term: QueryTerm, ids: list[int], language: str) -> bool:
        """A word capitalized in a German question is a name only if some chunk in
        another language has it ("Nguyen", not "Unternehmen"); in an index all in the
        question's language there is no other language to mislead it towards."""
        if not term.capitalized or language not in NOUN_CAPITALIZING:
            return True
        if self.languages == {language}:
            return True
        matrix = self._bm25.scores  # type: ignore[union-attr]
        rows, starts = matrix["indices"], matrix["indptr"]
        return any(
            bool(np.any(self._chunk_languages[rows[starts[i] : starts[i + 1]]] != language))
            for i in ids
        )

    def search(
        self, query: str | KeywordQuery, k: int, language: str | None = None
    ) -> list[tuple[int, float]]:
        """The k best (chunk position, BM25 score), best first; only chunks scoring > 0."""
        return top_k(self.scores(query, language), k)

    def _token_ids(self, term: QueryTerm) -> list[int]:
        """Ids of the term's variants that are in the index (others are left out); none
        when one of them is a corpus stopword: "Vietnams" means what "Vietnam" does."""
        vocab: dict[str, int] = self._bm25.vocab_dict  # type: ignore[union-attr]
        ids = sorted(vocab[t] for t in term.variants if t in vocab)
        return [] if any(self._df[i] > self._max_df for i in ids) else ids

    def _best_of(self, ids: list[int]) -> np.ndarray:
        """Per chunk, the best BM25 score of any one of these token ids.

        Read straight from bm25s's precomputed score matrix (CSC: one column of
        (chunk, score) pairs per token, `BM25.scores`): its own get_scores_from_ids
        sums with np.add.at, several times slower at 10,000 chunks. A column holds
        each chunk once, so plain fancy indexing is exact.
        """
        assert self._bm25 is not None
        matrix = self._bm25.scores
        data, rows, starts = matrix["data"], matrix["indices"], matrix["indptr"]
        best = np.zeros(len(self.chunks), dtype=np.float32)
        for token_id in ids:
            span = slice(starts[token_id], starts[token_id + 1])
            best[rows[span]] = np.maximum(best[rows[span]], data[span])
        return best


@dataclass
class Tokenized:
    """Every chunk's token ids, flat (int32, chunk i's at starts[i]:starts[i + 1]), and
    the vocabulary: a tenth of the memory of lists of Python ints, and pickled fast."""

    ids: np.ndarray
    starts: np.ndarray
    vocab: dict[str, int]

    def rows(self) -> list[list[int]]:
        flat = self.ids.tolist()
        bounds = self.starts.tolist()
        return [flat[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    @classmethod
    def from_rows(cls, rows: list[list[int]], vocab: dict[str, int]) -> Tokenized:
        starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=starts[1:])
        ids = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(starts[-1]))
        return cls(ids, starts, vocab)


def tokenize(chunks: Sequence[Chunk], vocab: dict[str, int] | None = None) -> Tokenized:
    """The chunks' token ids, extending `vocab` (a new one when None)."""
    # Token ids are assigned here in one pass and handed to bm25s as (ids, vocabulary):
    # given strings, bm25s would build the vocabulary in a second pass.
    vocab = {} if vocab is None else vocab
    rows = [
        [vocab.setdefault(t, len(vocab)) for t in document_tokens(c.text, c.language)]
        for c in chunks
    ]
    return Tokenized.from_rows(rows, vocab)


def _build_bm25(tokenized: Tokenized) -> bm25s.BM25 | None:
    """The BM25 index, or None when there is not a single token to index."""
    import bm25s

    if not tokenized.ids.size:
        return None
    bm25 = bm25s.BM25()
    corpus = (tokenized.rows(), tokenized.vocab)
    bm25.index(corpus, create_empty_token=False, show_progress=False)
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
