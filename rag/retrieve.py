"""Retrieval: the chunks that best match a question.

`HybridRetriever` (what the engine uses) fuses two rankings:

* dense: the nearest chunks in Chroma by cosine similarity of multilingual e5
  embeddings, which carry meaning across languages (an English question finds a
  Norwegian article);
* keyword: BM25 over stemmed, accent-folded words (rag.keyword), which is precise on
  names, numbers and codes ("L2Pro", "57-NQ/TW") that embeddings blur.

The two are fused by reciprocal rank fusion, then overlapping chunks of one document
are merged so the answer step never sees the same sentences twice.

`DenseRetriever` is the dense ranking alone, kept as the baseline for evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from rag.keyword import KeywordIndex, top_k
from rag.records import Chunk, Hit
from rag.store import Store

# Reciprocal rank fusion constant (Cormack et al., 2009): a chunk ranked r in a list
# adds 1 / (RRF_K + r). 60 is the published default; it keeps the head of each list
# from dominating, so a chunk ranked well by both beats one ranked first by only one.
RRF_K = 60
DENSE_WEIGHT = 1.0
KEYWORD_WEIGHT = 1.0
# Candidates taken from each ranking before fusion: max(MIN_CANDIDATES, 4 * k).
MIN_CANDIDATES = 20
CANDIDATES_PER_RESULT = 4


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
    return replace(
        first,
        chunk_id=chunk_id or a.chunk_id,
        text=text,
        start_char=first.start_char,
        end_char=max(first.end_char, second.end_char),
        first_line=min(first.first_line, second.first_line),
        last_line=max(first.last_line, second.last_line),
        line_map=line_map,
    )


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


def merge_overlapping(ranked: Sequence[Candidate], k: int) -> list[Candidate]:
    """Walk the ranking best first, merging each candidate into the groups it touches.

    A candidate touching no group opens a new one; the walk stops at the first
    candidate that would open group k + 1, so a chunk is only merged in if it ranked
    above every chunk left out (merged hits do not grow from the ranking's tail).
    """
    groups: list[Candidate] = []
    for candidate in ranked:
        touching = [g for g in groups if can_merge(g.chunk, candidate.chunk)]
        if not touching:
            if len(groups) == k:
                break
            groups.append(replace(candidate))
            continue
        head = touching[0]  # the best-ranked group it touches
        _absorb(head, candidate)
        for other in touching[1:]:  # the candidate bridged two groups: join them
            _absorb(head, other)
            groups.remove(other)
    return groups


# --------------------------------------------------------------------------- hybrid


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

    def search(self, query: str, k: int, query_vector: np.ndarray | None = None) -> list[Hit]:
        if k <= 0:
            return []
        vector = self.embedder.embed_query(query) if query_vector is None else query_vector
        groups = merge_overlapping(self.candidates(query, k, vector), k)
        self._fill_dense_scores(groups, vector)
        return [
            Hit(g.chunk, g.score, rank, g.dense_score, g.keyword_score)
            for rank, g in enumerate(groups, start=1)
        ]

    def candidates(self, query: str, k: int, vector: np.ndarray) -> list[Candidate]:
        """The fused ranking of the dense and keyword candidates, best first."""
        n = max(MIN_CANDIDATES, CANDIDATES_PER_RESULT * k)
        dense = self.store.query(vector, n)
        bm25 = self.keyword.scores(query)
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
            weights=[DENSE_WEIGHT, KEYWORD_WEIGHT],
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
        stored = stored_embeddings(self.store, [g.chunk.chunk_id for g in missing])
        for group in missing:
            embedding = stored.get(group.chunk.chunk_id)
            if embedding is not None:
                group.dense_score = cosine(vector, embedding)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm else 0.0


def stored_embeddings(store: Store, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Embeddings of these chunks as stored in Chroma (ids not found are left out)."""
    got = store.collection.get(ids=list(ids), include=["embeddings"])
    embeddings = got.get("embeddings")
    if embeddings is None:
        return {}
    return {i: np.asarray(e, dtype=np.float32) for i, e in zip(got["ids"], embeddings, strict=True)}


# --------------------------------------------------------------------------- cache

_CACHE_LOCK = threading.Lock()
# (store location, collection) -> (manifest generation, index). A few entries: tests
# and the benchmark open several stores in one process.
_CACHE: dict[tuple[str, str], tuple[int, KeywordIndex]] = {}
_CACHE_SIZE = 4


def keyword_index_for(store: Store) -> KeywordIndex:
    """The keyword index of the store's chunks, rebuilt only when the index changed.

    The manifest's generation is bumped by every indexing change, so comparing it is
    enough to know the chunks are the same (and costs one SQLite read per search).
    """
    key = (store.location, store.settings.collection)
    generation = store.manifest.generation()
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        index = KeywordIndex(store.all_chunks())
        _CACHE.pop(key, None)
        _CACHE[key] = (generation, index)
        while len(_CACHE) > _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        return index
