"""Retrieval: the chunks that best match a question.

`HybridRetriever` (what the engine uses) fuses two rankings:

* dense: the nearest chunks by cosine similarity of multilingual e5 embeddings, which
  carry meaning across languages (an English question finds a Norwegian article),
  less each language's share of the embedder's same-language bias
  (language_balanced_query), computed over the stored embeddings held in memory
  (DenseIndex);
* keyword: BM25 over stemmed, accent-folded words (rag.keyword), which is precise on
  names, numbers and codes ("L2Pro", "57-NQ/TW") that embeddings blur.

The two are fused by reciprocal rank fusion (the keyword ranking at half the dense
ranking's weight, at twice it for a pure lookup such as "L2Pro"), then overlapping
chunks of one document are merged so the answer step never sees the same sentences
twice.

Measured on tests/qa/golden.jsonl (60 answerable questions in 5 languages, seeds
indexed, k=5; right file first / in the top 3 / top 5): plain dense 40 / 47 / 50,
language-balanced dense 53 / 58 / 60, hybrid 53 / 59 / 60. On one-term lookups
("L2Pro", "SAP", "233", names) the first hit holds the term 23 times of 25, 18 dense.

`DenseRetriever` is the dense ranking alone, kept as the baseline for evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from rag.keyword import KeywordIndex, KeywordQuery, neutral_share, top_k
from rag.records import Chunk, Hit
from rag.store import Store
from rag.tuning import (
    CANDIDATES_PER_RESULT,
    DENSE_WEIGHT,
    KEYWORD_WEIGHT,
    LOOKUP_KEYWORD_WEIGHT,
    MIN_BIAS_DOCUMENTS,
    MIN_CANDIDATES,
    MIN_LANGUAGE_CHUNKS,
    RRF_K,
    SERVER_POOL,
    SERVER_POOL_MAX,
)

if TYPE_CHECKING:
    from rag.keyword_cache import Snapshot


class QueryEmbedder(Protocol):
    def embed_query(self, text: str) -> np.ndarray: ...


class DenseRetriever:
    """Nearest chunks by cosine similarity of e5 embeddings (the baseline)."""

    def __init__(self, store: Store, embedder: QueryEmbedder) -> None:
        self.store = store
        self.embedder = embedder

    def search(self, query: str, k: int, query_vector: np.ndarray | None = None) -> list[Hit]:
        vector = self.embedder.embed_query(query) if query_vector is None else query_vector
        found = self.store.query(vector, k)
        return [
            Hit(chunk=chunk, score=score, rank=rank, dense_score=score)
            for rank, (chunk, score) in enumerate(found, start=1)
        ]


# --------------------------------------------------------------------------- fusion


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]],
    k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> list[tuple[str, float]]:
    """Fuse rankings of ids (best first): score(id) = sum of weight / (k + rank).

    Ranks are 1-based; weights default to 1 per ranking. Ties are broken by the best
    rank the id reached in any list, then by id, so the result is deterministic.
    """
    weights = weights if weights is not None else [1.0] * len(rankings)
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            best_rank[item] = min(best_rank.get(item, rank), rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], best_rank[pair[0]], pair[0]))


# --------------------------------------------------------------------------- merging


def _ordered(a: Chunk, b: Chunk) -> tuple[Chunk, Chunk]:
    return (a, b) if (a.start_char, a.end_char) <= (b.start_char, b.end_char) else (b, a)


def can_merge(a: Chunk, b: Chunk) -> bool:
    """Same document version, and the character ranges overlap or touch.

    Chunks separated by exactly one character that is a line break (the second starts
    on a later line) also touch: their union text is still known exactly. Any other
    gap is whitespace of unknown kind, so those chunks stay apart.
    """
    if a.path != b.path or a.content_hash != b.content_hash:
        return False
    first, second = _ordered(a, b)
    if second.start_char <= first.end_char:
        return True
    return second.start_char == first.end_char + 1 and second.first_line > first.last_line


def merge_chunks(a: Chunk, b: Chunk, chunk_id: str | None = None) -> Chunk:
    """One chunk spanning both (see `can_merge`); it keeps `chunk_id` (default: a's)."""
    first, second = _ordered(a, b)
    maps = {name: getattr(first, name) for name in _ROW_MAPS}
    if second.end_char <= first.end_char:  # second lies inside first
        text, line_map = first.text, first.line_map
    else:
        if second.start_char <= first.end_char:
            tail = second.text[first.end_char - second.start_char :]
            text = first.text + tail
        else:  # separated by one line break
            tail = "\n" + second.text
            text = first.text + tail
        # Each line break in the tail starts one of second's last rows.
        new_rows = tail.count("\n")
        kept = second.line_map[len(second.line_map) - new_rows :] if new_rows else ()
        line_map = first.line_map + kept if first.line_map and second.line_map else ()
        maps = {name: _joined(first, second, name, new_rows) for name in _ROW_MAPS}
    return replace(
        first,
        chunk_id=chunk_id or a.chunk_id,
        text=text,
        start_char=first.start_char,
        end_char=max(first.end_char, second.end_char),
        first_line=min(first.first_line, second.first_line),
        last_line=max(first.last_line, second.last_line),
        line_map=line_map,
        **maps,
    )


# The chunk's per-line locations (rag.records.Chunk), merged like its line_map.
_ROW_MAPS = ("page_map", "section_map", "label_map")


def _joined(first: Chunk, second: Chunk, name: str, new_rows: int) -> tuple[object, ...]:
    head, tail = getattr(first, name), getattr(second, name)
    if not head or not tail:  # one side has no locations: the union cannot be mapped
        return ()
    return head + (tail[len(tail) - new_rows :] if new_rows else ())


@dataclass
class Candidate:
    """A chunk in the fused ranking, with what each ranking said about it."""

    chunk: Chunk
    score: float  # fused (RRF)
    dense_score: float | None = None  # cosine
    keyword_score: float | None = None  # BM25


def _best(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _absorb(group: Candidate, other: Candidate) -> None:
    """Merge `other` (ranked lower) into `group`, which keeps its id and score."""
    group.chunk = merge_chunks(group.chunk, other.chunk, chunk_id=group.chunk.chunk_id)
    group.score = max(group.score, other.score)
    group.dense_score = _best(group.dense_score, other.dense_score)
    group.keyword_score = _best(group.keyword_score, other.keyword_score)


def _join(groups: list[Candidate], candidate: Candidate) -> bool:
    """Merge `candidate` into the groups it touches; False when it touches none."""
    touching = [g for g in groups if can_merge(g.chunk, candidate.chunk)]
    if not touching:
        return False
    head = touching[0]  # the best-ranked group it touches
    _absorb(head, candidate)
    for other in touching[1:]:  # the candidate bridged two groups: join them
        _absorb(head, other)
        groups.remove(other)
    return True


def merge_overlapping(ranked: Sequence[Candidate], k: int) -> list[Candidate]:
    """Walk the ranking best first, merging each candidate into the groups it touches.

    A candidate touching no group opens a new one; the walk stops at the first
    candidate that would open group k + 1, so a chunk is only merged in if it ranked
    above every chunk left out (merged hits do not grow from the ranking's tail).
    """
    groups: list[Candidate] = []
    for candidate in ranked:
        if _join(groups, candidate):
            continue
        if len(groups) == k:
            break
        groups.append(replace(candidate))
    return groups


def _covers(group: Chunk, chunk: Chunk) -> bool:
    return (
        group.path == chunk.path
        and group.content_hash == chunk.content_hash
        and group.start_char <= chunk.start_char
        and chunk.end_char <= group.end_char
    )


def keep_best_dense(
    groups: list[Candidate], ranked: Sequence[Candidate], k: int
) -> list[Candidate]:
    """Make sure the chunk nearest to the question (by cosine) is among the hits.

    The engine refuses to answer when the best dense score of the hits is too low; if
    fusion could push the nearest chunk out, that gate would move with the keyword
    list. It never did on the golden set; this keeps it so by construction for k >= 2:
    the nearest chunk joins a hit it touches, or else takes the last hit's place.
    """
    dense = [c for c in ranked if c.dense_score is not None]
    if not dense or len(groups) < 2:
        return groups  # never in place of the best hit
    nearest = max(dense, key=lambda c: c.dense_score or 0.0)
    if any(_covers(g.chunk, nearest.chunk) for g in groups):
        return groups
    groups = list(groups)
    if not _join(groups, nearest):
        groups = groups[: k - 1] + [replace(nearest)]
    return sorted(groups, key=lambda g: -g.score)


# --------------------------------------------------------------------------- hybrid


def keyword_weight(query: str | KeywordQuery) -> float:
    """The keyword ranking's weight: KEYWORD_WEIGHT (half the dense ranking's) for a
    question in words, LOOKUP_KEYWORD_WEIGHT (twice it) when the query is only names
    and numbers.

    "233", "SAP" or "Pham Quang Hieu" are lookups that BM25 answers exactly while
    their embedding is near nothing in particular. With equal weights the BM25 hit and
    the nearest chunk would tie (both first of one list) and the tie-break would pick.
    A question in words gives the keyword ranking half the dense one's weight: most
    questions are asked in another language than the article that answers them, and
    a name or number they share with some other article (a stem such as "norm" from
    "Norman" in a Spanish article on prime numbers) put it first. Measured with
    bench/generalization.py, hit@1 at weights 1 / 0.5 / 0: seeds golden 0.867 / 0.883
    / 0.867, xquad-dev 0.773 / 0.833 / 0.843 (dense ranking language-balanced, before
    document biases); 0 would lose the lookups BM25 answers exactly.
    """
    share = query.neutral_share if isinstance(query, KeywordQuery) else neutral_share(query)
    return LOOKUP_KEYWORD_WEIGHT if share == 1.0 else KEYWORD_WEIGHT


def candidate_count(k: int) -> int:
    """How many candidates each ranking gives fusion when k results are wanted."""
    return max(MIN_CANDIDATES, CANDIDATES_PER_RESULT * k)


class HybridRetriever:
    """Dense + BM25 candidates, fused by reciprocal rank fusion, overlaps merged.

    `Hit.score` is the fused RRF score (sum over the two rankings of 1 / (60 + rank));
    it orders hits but is not a similarity: with two rankings it is at most 2/61.
    `Hit.dense_score` is the cosine similarity of the question and the chunk (for a
    merged hit, the best of its chunks), set on every hit: chunks found by BM25 alone
    get theirs from their stored embeddings. `Hit.keyword_score` is the BM25 score
    (0.0 when no question word is in the chunk).
    """

    def __init__(
        self, store: Store, embedder: QueryEmbedder, keyword_index: KeywordIndex | None = None
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.keyword = keyword_index if keyword_index is not None else keyword_index_for(store)

    def search(
        self,
        query: str,
        k: int,
        query_vector: np.ndarray | None = None,
        language: str | None = None,
    ) -> list[Hit]:
        """The k best hits. Pass `query_vector` and `language` (the query's, as
        rag.language detects it) when known, so they are not computed again."""
        if k <= 0:
            return []
        vector = self.embedder.embed_query(query) if query_vector is None else query_vector
        ranked = self.candidates(query, k, vector, language)
        groups = keep_best_dense(merge_overlapping(ranked, k), ranked, k)
        self._fill_dense_scores(groups, vector)
        return [
            Hit(g.chunk, g.score, rank, g.dense_score, g.keyword_score)
            for rank, g in enumerate(groups, start=1)
        ]

    def candidates(
        self, query: str, k: int, vector: np.ndarray, language: str | None = None
    ) -> list[Candidate]:
        """The fused ranking of the dense and keyword candidates, best first."""
        n = candidate_count(k)
        dense = language_balanced_query(self.store, vector, n)
        parsed = self.keyword.parse(query, language)  # once, for the scores and the weight
        bm25 = self.keyword.scores(parsed)
        keyword = top_k(bm25, n)
        by_id: dict[str, Candidate] = {}
        for chunk, cosine in dense:
            position = self.keyword.positions.get(chunk.chunk_id)
            by_id[chunk.chunk_id] = Candidate(
                chunk, 0.0, cosine, float(bm25[position]) if position is not None else None
            )
        for position, score in keyword:
            chunk = self.keyword.chunks[position]
            found = by_id.setdefault(chunk.chunk_id, Candidate(chunk, 0.0))
            found.keyword_score = score
        fused = reciprocal_rank_fusion(
            [
                [c.chunk_id for c, _ in dense],
                [self.keyword.chunks[p].chunk_id for p, _ in keyword],
            ],
            weights=[DENSE_WEIGHT, keyword_weight(parsed)],
        )
        ranked = []
        for chunk_id, score in fused:
            by_id[chunk_id].score = score
            ranked.append(by_id[chunk_id])
        return ranked

    def _fill_dense_scores(self, groups: list[Candidate], vector: np.ndarray) -> None:
        """Cosine for the hits found by BM25 alone, from their stored embeddings."""
        missing = [g for g in groups if g.dense_score is None]
        if not missing:
            return
        stored = _stored_embeddings(self.store, [g.chunk.chunk_id for g in missing])
        for group in missing:
            embedding = stored.get(group.chunk.chunk_id)
            if embedding is not None:
                group.dense_score = cosine(vector, embedding)


def _stored_embeddings(store: Store, ids: list[str]) -> dict[str, np.ndarray]:
    """These chunks' embeddings: from the snapshot when it holds them (no request)."""
    if isinstance(store, Store):
        snapshot = snapshot_for(store)
        if snapshot.vectors is not None:
            at = snapshot.index.positions
            return {i: snapshot.vectors[at[i]] for i in ids if i in at}
    return store.embeddings(ids)


def language_balanced_query(store: Store, vector: np.ndarray, n: int) -> list[tuple[Chunk, float]]:
    """The n nearest chunks, ranked without the embedder's same-language bias.

    A multilingual embedder rates every passage in the question's language a little
    closer than equally relevant passages in other languages, so a Russian question
    ranks Russian chunks first whatever they say. Each language's share of that bias
    is the question's similarity to the mean embedding of the language's chunks;
    ranking by cosine minus it compares languages fairly (on the golden set: dense
    hit@1 0.67 -> 0.88). The returned score stays the plain cosine similarity.

    Ranked from the embeddings held in memory (DenseIndex, from the store's saved
    snapshot), embedded or from a Chroma server; a server store too large to hold
    (LOCAL_VECTORS_MAX) is ranked by the server (_server_balanced_query).
    """
    if not isinstance(store, Store):  # tests' stand-ins
        store.check_dimension(len(vector))
        return dense_index_for(store).query(vector, n)
    vectors = snapshot_for(store).vectors
    if vectors is not None and len(vectors):
        store.know_dimension(vectors.shape[1])
    store.check_dimension(len(vector))  # another embedder's vector: one clear line
    if vectors is None:
        return _server_balanced_query(store, vector, n)
    return dense_index_for(store).query(vector, n)


# A document's chunks of one language: (path, language). The unit of bias balancing.
Group = tuple[str, str]


@dataclass(frozen=True)
class GroupSum:
    """The sum of one group's L2-normalized chunk embeddings, and how many there are.

    Sums, not means: they add up to a language's mean and to the leave-one-out means
    exactly, and a cache can keep one per document instead of every vector."""

    vector: np.ndarray
    count: int


def group_sums(chunks: Sequence[Chunk], vectors: np.ndarray) -> dict[Group, GroupSum]:
    """Each document-language group's sum of normalized embeddings."""
    vectors = np.asarray(vectors, dtype=np.float32)
    rows: dict[Group, list[int]] = {}
    for i, chunk in enumerate(chunks):
        rows.setdefault(group_of(chunk), []).append(i)
    return {
        group: GroupSum(unit_rows(vectors[members]).sum(axis=0), len(members))
        for group, members in rows.items()
    }


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of norm 1 (a zero row stays zero); rows that are already unit
    (a snapshot's, the store's) come back as they are, without a 3 KB/chunk copy."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.allclose(norms, 1.0, atol=1e-4):
        return vectors
    return vectors / np.maximum(norms, 1e-12)


def group_of(chunk: Chunk) -> Group:
    return chunk.path, chunk.language or "und"


def language_biases(centroids: dict[str, tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    """Per language, the vector whose similarity to a question is that language's bias.

    The mean embedding of its chunks; a language with fewer than MIN_LANGUAGE_CHUNKS
    gets the corpus-wide mean (a handful of chunks would mostly cancel their own
    topic); with one language there is nothing to balance (zero bias).
    """
    if len(centroids) < 2:
        return {lang: np.zeros_like(mean) for lang, (mean, _) in centroids.items()}
    total = sum(count for _, count in centroids.values())
    overall = sum(mean * count for mean, count in centroids.values()) / total
    return {
        lang: (mean if count >= MIN_LANGUAGE_CHUNKS else overall)
        for lang, (mean, count) in centroids.items()
    }


def group_biases(sums: dict[Group, GroupSum]) -> dict[Group, np.ndarray]:
    """Each group's bias vector: its language's, or its language's other documents'.

    A language's mean embedding also carries the topics of its documents, so
    subtracting it penalizes a chunk for its own document's topic: an article that
    answers the question raises its language's bias with it. In a language with at
    least MIN_BIAS_DOCUMENTS documents, each document's chunks get the mean of the
    language's OTHER documents' chunks (leave one document out); in a language with
    fewer, the language's bias stays, since one or two other documents would be their
    own topic, not the language. xquad-dev (4 documents a language), dense hit@1 0.843
    -> 0.866; articles dev00-11 0.898 -> 0.907, dev12-23 0.787 -> 0.824. The seeds (at
    most 2 documents a language) are unchanged.
    """
    totals: dict[str, GroupSum] = {}
    documents: dict[str, int] = {}
    for (_, language), part in sums.items():
        seen = totals.get(language)
        totals[language] = part if seen is None else GroupSum(seen.vector + part.vector,
                                                              seen.count + part.count)  # fmt: skip
        documents[language] = documents.get(language, 0) + 1
    centroids = {lang: (t.vector / t.count, t.count) for lang, t in totals.items()}
    by_language = language_biases(centroids)
    biases = {}
    for group, part in sums.items():
        language = group[1]
        rest = totals[language].count - part.count
        if documents[language] >= MIN_BIAS_DOCUMENTS and rest > 0:
            biases[group] = (totals[language].vector - part.vector) / rest
        else:
            biases[group] = by_language[language]
    return biases


_QUERY_POOL = ThreadPoolExecutor(8, thread_name_prefix="chroma-query")


@dataclass
class GroupBiases:
    """The bias vectors of a store's groups as one matrix, for a server's candidates."""

    rows: dict[Group, int]
    matrix: np.ndarray  # [groups, dim]
    language_rows: dict[str, np.ndarray]  # each language's rows in `matrix`
    fallback: dict[str, np.ndarray]  # per language: its groups' mean bias (new groups)

    @classmethod
    def build(cls, sums: dict[Group, GroupSum]) -> GroupBiases:
        biases = group_biases(sums)
        groups = sorted(biases)
        dim = len(next(iter(biases.values()))) if biases else 1
        matrix = np.array([biases[g] for g in groups], dtype=np.float32).reshape(-1, dim)
        rows = {g: i for i, g in enumerate(groups)}
        by_language: dict[str, list[int]] = {}
        for i, (_, language) in enumerate(groups):
            by_language.setdefault(language, []).append(i)
        language_rows = {lang: np.array(r) for lang, r in by_language.items()}
        fallback = {lang: matrix[r].mean(axis=0) for lang, r in language_rows.items()}
        return cls(rows, matrix, language_rows, fallback)

    def share(self, shares: np.ndarray, chunk: Chunk, question: np.ndarray) -> float:
        """The chunk's bias for this question, given every group's (`shares` =
        matrix @ question); a group indexed after the snapshot gets its language's."""
        row = self.rows.get(group_of(chunk))
        if row is not None:
            return float(shares[row])
        vector = self.fallback.get(chunk.language or "und")
        return 0.0 if vector is None else float(np.dot(vector, question))


def _server_balanced_query(store: Store, vector: np.ndarray, n: int) -> list[tuple[Chunk, float]]:
    """The language-balanced ranking from a Chroma server, exact up to its HNSW search.

    Asking the server once per language with a `where` filter costs 100-230 ms a query
    at 100,000 chunks (bench/scale.py), so it is asked once, unfiltered, for the
    SERVER_POOL nearest ids, which are re-ranked here by cosine minus bias. A chunk
    beyond that pool has a cosine at most the pool's last one; while a language's least
    bias is low enough that such a chunk could still enter the top n, the pool is
    deepened (up to SERVER_POOL_MAX), then that language is asked alone for its n,
    2n, 4n, ... nearest. Texts come from the local snapshot (rag.keyword_cache), not
    over the network.
    """
    snapshot = snapshot_for(store)
    biases = _cached(store, "biases", lambda: GroupBiases.build(snapshot.sums or {}))
    ranking = _ServerRanking(store, snapshot, biases, vector, n)
    pool = max(n, SERVER_POOL)
    while True:
        nearest = store.nearest(vector, pool)
        # What an unseen chunk of each language may still have as cosine (None: all seen).
        top = nearest[-1][1] if len(nearest) == pool else None
        ceiling: dict[str, float | None] = dict.fromkeys(ranking.least, top)
        found = dict(nearest)
        short = ranking.short(found, ceiling)
        if not short or pool >= SERVER_POOL_MAX:
            break
        pool *= 4
    asked: dict[str, int] = {}
    while short:
        sizes = [(lang, 2 * asked[lang] if lang in asked else n) for lang in short]
        answers = _QUERY_POOL.map(
            lambda ask: store.nearest(vector, ask[1], where={"language": ask[0]}), sizes
        )
        for (language, size), hits in zip(sizes, answers, strict=True):
            asked[language] = size
            found.update(hits)
            full = len(hits) == size  # fewer: every chunk of the language was seen
            ceiling[language] = min(hits[-1][1], top or 1.0) if full else None
        short = ranking.short(found, ceiling)
    return ranking.best()


class _ServerRanking:
    """Cosine minus bias for one question's candidates from a Chroma server."""

    def __init__(
        self, store: Store, snapshot: Snapshot, biases: GroupBiases, vector: np.ndarray, n: int
    ) -> None:
        self.store, self.snapshot, self.biases, self.n = store, snapshot, biases, n
        self.unit = np.asarray(vector, dtype=np.float32) / max(float(np.linalg.norm(vector)), 1e-12)
        self.shares = biases.matrix @ self.unit if biases.rows else np.zeros(0, np.float32)
        self.least = {
            lang: float(self.shares[rows].min()) for lang, rows in biases.language_rows.items()
        }
        self.ranked: list[tuple[float, Chunk, float]] = []  # as the last `short` scored them

    def scored(self, found: dict[str, float]) -> list[tuple[float, Chunk, float]]:
        """(cosine - bias, chunk, cosine), best first."""
        rows = [
            (similarity - self.biases.share(self.shares, chunk, self.unit), chunk, similarity)
            for chunk, similarity in _chunks_of(self.store, self.snapshot, list(found.items()))
        ]
        return sorted(rows, key=lambda row: (-row[0], row[1].chunk_id))

    def short(self, found: dict[str, float], ceiling: dict[str, float | None]) -> list[str]:
        """The languages that may hold an unseen chunk better than the n-th found."""
        self.ranked = self.scored(found)
        nth = self.ranked[self.n - 1][0] if len(self.ranked) >= self.n else -np.inf
        open_ = {lang: top for lang, top in ceiling.items() if top is not None}
        return [lang for lang, top in open_.items() if top - self.least[lang] > nth]

    def best(self) -> list[tuple[Chunk, float]]:
        """The n best of the candidates `short` last saw: the search stops only once
        `short` finds no language left to ask, so those are all of them."""
        return [(chunk, similarity) for _, chunk, similarity in self.ranked[: self.n]]


def _chunks_of(
    store: Store, snapshot: Snapshot, nearest: list[tuple[str, float]]
) -> list[tuple[Chunk, float]]:
    """The chunks of (id, cosine) pairs: from the snapshot, else (indexed since) fetched."""
    index = snapshot.index
    missing = [i for i, _ in nearest if i not in index.positions]
    fetched = {c.chunk_id: c for c in store.chunks(missing)} if missing else {}
    found = []
    for chunk_id, similarity in nearest:
        position = index.positions.get(chunk_id)
        chunk = index.chunks[position] if position is not None else fetched.get(chunk_id)
        if chunk is not None:  # deleted meanwhile: left out
            found.append((chunk, similarity))
    return found


@dataclass
class DenseIndex:
    """Every chunk's embedding in one matrix, for exact language-balanced ranking.

    Balancing ranks each language apart. Asked of Chroma that is one query per
    language with a `where` filter: 11-17 ms each at 10,000 chunks (an unfiltered one
    is 2 ms), about 45 ms for three languages, over the 50 ms budget of a whole
    retrieval. The same ranking from this matrix takes about 1 ms, exactly (no HNSW
    approximation), for 1.5 KB of memory per chunk (15 MB at 10,000).
    """

    chunks: list[Chunk]
    vectors: np.ndarray  # [n, dim] float32, rows L2-normalized
    language_of: np.ndarray  # [n] each chunk's row in `biases` (its group's)
    biases: np.ndarray  # [groups, dim]: the vector whose similarity is the bias

    @classmethod
    def build(cls, chunks: list[Chunk], vectors: np.ndarray) -> DenseIndex:
        vectors = np.asarray(vectors, dtype=np.float32)
        if not chunks:
            vectors = np.zeros((0, 1), dtype=np.float32)
        vectors = unit_rows(vectors)
        table = GroupBiases.build(group_sums(chunks, vectors))
        rows = np.array([table.rows[group_of(c)] for c in chunks], dtype=np.int64)
        return cls(chunks, vectors, rows, table.matrix)

    def query(self, vector: np.ndarray, n: int) -> list[tuple[Chunk, float]]:
        """The n best by cosine minus the language's bias, with their plain cosine."""
        if n <= 0 or not self.chunks:
            return []
        vector = np.asarray(vector, dtype=np.float32)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        # einsum, not `@`: a matrix this size makes OpenBLAS wake its threads, and
        # their spinning afterwards slowed the next query embedding (torch's threads,
        # on the same 2 cores) from 9 to 16 ms at the median, 95 at the 95th percentile.
        cosines = np.einsum("ij,j->i", self.vectors, vector)
        adjusted = cosines - np.einsum("ij,j->i", self.biases, vector)[self.language_of]
        best = (
            np.argpartition(-adjusted, n - 1)[:n] if n < len(adjusted) else np.arange(len(adjusted))
        )
        order = sorted(best.tolist(), key=lambda i: (-float(adjusted[i]), self.chunks[i].chunk_id))
        return [(self.chunks[i], float(cosines[i])) for i in order]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm else 0.0


# --------------------------------------------------------------------------- cache

_CACHE_LOCK = threading.RLock()  # a build may need another cached value (dense → snapshot)
# (store location, collection) -> (manifest generation, index). A few entries: tests
# and the benchmark open several stores in one process.
_CACHE: dict[tuple[str, str, str], tuple[int, object]] = {}
_CACHE_SIZE = 8
T = TypeVar("T")


def snapshot_for(store: Store) -> Snapshot:
    """The store's keyword index (and, with a Chroma server, each document's embedding
    sum), rebuilt only when the index changed: saved in the store folder and updated
    there (rag.keyword_cache)."""
    from rag.keyword_cache import load_snapshot

    return _cached(store, "snapshot", lambda: load_snapshot(store))


def keyword_index_for(store: Store) -> KeywordIndex:
    """The keyword index of the store's chunks, rebuilt only when the index changed."""
    if not isinstance(store, Store):  # tests' stand-ins have no folder
        return _cached(store, "keyword", lambda: KeywordIndex(store.all_chunks()))
    return snapshot_for(store).index


def dense_index_for(store: Store) -> DenseIndex:
    """The store's embeddings as a DenseIndex, reloaded only when the index changed."""
    return _cached(store, "dense", lambda: DenseIndex.build(*_chunks_and_vectors(store)))


def _chunks_and_vectors(store: Store) -> tuple[list[Chunk], np.ndarray]:
    if not isinstance(store, Store):  # tests' stand-ins have no snapshot
        return store.all_chunks_and_embeddings()
    snapshot = snapshot_for(store)
    if snapshot.vectors is None:
        raise ValueError("this snapshot keeps no vectors: the server ranks")
    return snapshot.index.chunks, snapshot.vectors


def _cached(store: Store, kind: str, build: Callable[[], T]) -> T:
    """Per-store derived data, rebuilt when the manifest's generation moves.

    The generation is bumped by every indexing change, so comparing it is enough to
    know the chunks are the same (and costs one SQLite read per search).
    """
    key = (store.location, store.settings.collection, kind)
    generation = store.manifest.generation()
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]  # type: ignore[return-value]
        value = build()
        _CACHE.pop(key, None)
        _CACHE[key] = (generation, value)
        while len(_CACHE) > _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        return value
