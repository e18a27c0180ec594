"""Hybrid retrieval: multilingual keyword tokens, BM25, rank fusion, merging, and the
real Chroma + packaged embedder over the seeds."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.config import Settings
from rag.keyword import KeywordIndex, document_tokens, neutral_share, query_terms, top_k
from rag.records import Chunk, Hit
from rag.retrieve import (
    RRF_K,
    Candidate,
    DenseRetriever,
    HybridRetriever,
    can_merge,
    keep_best_dense,
    keyword_index_for,
    keyword_weight,
    merge_chunks,
    merge_overlapping,
    reciprocal_rank_fusion,
    unit_rows,
)

from .conftest import SEEDS

# --------------------------------------------------------------------------- helpers

DOC = "Line one is here.\nLine two follows. It has two sentences.\nLine three ends it."
DOC_LINES = [1, 3, 4]  # file line numbers of DOC's rows (line 2 of the file was blank)


def chunk_of(
    start: int,
    end: int,
    text: str = DOC,
    lines: list[int] | None = None,
    path: str = "a.txt",
    language: str = "en",
    content_hash: str = "h1",
) -> Chunk:
    """A chunk that is text[start:end], with lines as the chunker computes them."""
    lines = lines or DOC_LINES
    first_row = text.count("\n", 0, start)
    last_row = text.count("\n", 0, max(start, end - 1))
    line_map = tuple(lines[first_row : last_row + 1])
    return Chunk(
        chunk_id=f"{path}:{start}-{end}",
        path=path,
        index=start,
        text=text[start:end],
        start_char=start,
        end_char=end,
        first_line=line_map[0],
        last_line=line_map[-1],
        language=language,
        content_hash=content_hash,
        line_map=line_map,
    )


def text_chunk(chunk_id: str, text: str, language: str, path: str | None = None) -> Chunk:
    return Chunk(
        chunk_id=chunk_id,
        path=path or f"{chunk_id}.txt",
        index=0,
        text=text,
        start_char=0,
        end_char=len(text),
        first_line=1,
        last_line=1,
        language=language,
        content_hash=chunk_id,
        line_map=(1,),
    )


def shares_token(a: str, b: str, language: str) -> bool:
    return bool(set(document_tokens(a, language)) & set(document_tokens(b, language)))


# --------------------------------------------------------------------------- tokens


def test_russian_inflections_share_a_stem() -> None:
    assert shares_token("стартапов", "стартапы", "ru")
    assert document_tokens("стартапов", "ru") == document_tokens("стартапы", "ru")


def test_german_inflections_share_a_stem() -> None:
    assert document_tokens("Unternehmen", "de") == document_tokens("Unternehmens", "de")


def test_norwegian_inflections_share_a_stem() -> None:
    assert document_tokens("oppstartsbedrifter", "no") == document_tokens(
        "oppstartsbedriftene", "no"
    )
    # Bokmål may be tagged nb
    assert document_tokens("oppstartsbedriftene", "nb") == document_tokens(
        "oppstartsbedrifter", "no"
    )


def test_tokens_are_lowercased_and_accent_folded() -> None:
    assert document_tokens("Cần Thơ", "vi")[:2] == ["can", "tho"]
    assert document_tokens("Đồng Nai", "de")[:2] == ["dong", "nai"]


def test_vietnamese_is_not_stemmed_but_gets_syllable_bigrams() -> None:
    tokens = document_tokens("Khoa học và công nghệ", "vi")
    assert tokens[:5] == ["khoa", "hoc", "va", "cong", "nghe"]
    assert {"khoa_hoc", "hoc_va", "va_cong", "cong_nghe"} <= set(tokens)


def test_bigrams_do_not_cross_punctuation() -> None:
    assert "hoc_cong" not in document_tokens("khoa học, công nghệ", "vi")
    assert not any("_" in t for t in document_tokens("khoa học", "no"))


def test_numbers_and_codes_are_kept_whole_and_in_parts() -> None:
    tokens = set(document_tokens("Resolution 57-NQ/TW, 24 000 km², 1,6 billion in 2028", "en"))
    assert {"57", "nq", "tw", "57-nq/tw", "2028", "24", "000", "24000", "1.6"} <= tokens
    assert "24000" in document_tokens("24.000", "de")
    assert "1.6" in document_tokens("1.6", "en")
    assert "l2pro" in document_tokens("L2Pro", "de")


def test_query_words_are_stemmed_in_every_language() -> None:
    terms = query_terms("стартапов", ["ru", "de"])
    assert len(terms) == 1
    assert {"стартапов", "стартап"} <= terms[0].variants


def test_query_terms_mark_names_numbers_and_acronyms_as_neutral() -> None:
    terms = query_terms(
        "How many startups does Dong Nai have besides MOST programs like L2Pro in 2028?", ["en"]
    )
    neutral = {v for t in terms if t.neutral for v in t.variants}
    assert {"dong", "nai", "most", "l2pro", "2028"} <= neutral
    assert not neutral & {"how", "many", "startups", "startup", "does", "programs"}


def test_english_title_case_is_not_a_name() -> None:
    terms = query_terms("What did the Ministry of Science and Technology publish?", ["en"])
    assert not any(t.neutral for t in terms)


def test_abbreviation_does_not_start_a_sentence() -> None:
    terms = query_terms("văn phòng tại TP. Hồ Chí Minh", ["vi"])
    neutral = {v for t in terms if t.neutral for v in t.variants}
    assert {"tp", "ho", "chi", "minh", "ho_chi", "chi_minh"} <= neutral


def neutral_tokens(query: str) -> set[str]:
    return {v for t in query_terms(query, ["en"]) if t.neutral for v in t.variants}


def test_a_first_word_is_a_name_when_a_name_follows_or_it_stands_alone() -> None:
    assert {"pham", "quang", "hieu"} <= neutral_tokens("Pham Quang Hieu")
    assert "marvell" in neutral_tokens("Marvell")
    assert "marvell" in neutral_tokens("Who is Hoang Duc Thao? Marvell?")
    assert "who" not in neutral_tokens("Who is Hoang Duc Thao? Marvell?")
    assert neutral_tokens("Why is that so?") == set()


def test_neutral_share_tells_lookups_from_questions() -> None:
    assert neutral_share("L2Pro") == 1.0
    assert neutral_share("Pham Quang Hieu") == 1.0
    assert neutral_share("24 000") == 1.0
    assert neutral_share("What is L2Pro?") == pytest.approx(1 / 3)
    assert neutral_share("?") == 0.0
    assert keyword_weight("SAP") == 2.0  # a lookup: above the dense ranking's 1.0
    assert keyword_weight("What does SAP do?") == 0.5


def test_query_terms_are_deterministic_and_deduplicated() -> None:
    first = query_terms("Dong Nai, Dong Nai, Dong Nai", ["en", "no"])
    assert first == query_terms("Dong Nai, Dong Nai, Dong Nai", ["en", "no"])
    assert len(first) == 2


# --------------------------------------------------------------------------- BM25

CORPUS = [
    text_chunk("ru1", "В провинции насчитывается около 90 инновационных стартапов.", "ru"),
    text_chunk("ru2", "Министерство опубликовало рамочные указания для провинций.", "ru"),
    text_chunk("no1", "Dong Nai har rundt 90 innovative oppstartsbedrifter i provinsen.", "no"),
    text_chunk("de1", "Die Plattform L2Pro wurde von Qualcomm für Unternehmens entwickelt.", "de"),
    text_chunk("de2", "Die Resolution Nr. 57-NQ/TW vom 22. Dezember 2024.", "de"),
    text_chunk("vi1", "Thành phố Cần Thơ hỗ trợ khoảng 40 dự án khởi nghiệp.", "vi"),
    text_chunk("ru3", "Город Хошимин привлёк инвестиции.", "ru"),
]


@pytest.fixture(scope="module")
def corpus_index() -> KeywordIndex:
    return KeywordIndex(CORPUS)


def top_ids(index: KeywordIndex, query: str, language: str | None = None) -> list[str]:
    return [index.chunks[p].chunk_id for p, _ in index.search(query, 3, language=language)]


def test_search_matches_inflected_names(corpus_index: KeywordIndex) -> None:
    assert top_ids(corpus_index, "Что происходит в Хошимине?", language="ru") == ["ru3"]
    assert top_ids(corpus_index, "Hva gjør Qualcomms team?", language="no") == ["de1"]


def test_only_language_neutral_terms_count(corpus_index: KeywordIndex) -> None:
    # common words, even in the chunk's own language, find nothing: on the golden set
    # they found the article in the question's language rather than the answer
    assert top_ids(corpus_index, "Сколько стартапов в провинции?", language="ru") == []
    # a German noun is capitalized but no name: only German chunks have it
    assert top_ids(corpus_index, "Welche Unternehmen?", language="de") == []
    assert top_ids(KeywordIndex(CORPUS[3:4]), "Welche Unternehmen?", language="de") == ["de1"]


def test_names_and_codes_match_across_languages(corpus_index: KeywordIndex) -> None:
    assert top_ids(corpus_index, "How many startups are there in Dong Nai?", "en")[0] == "no1"
    assert top_ids(corpus_index, "What is L2Pro?", "en")[0] == "de1"
    assert top_ids(corpus_index, "When was Resolution 57-NQ/TW adopted?", "en")[0] == "de2"
    assert top_ids(corpus_index, "L2Pro")[0] == "de1"  # language detected (or not)


def test_vietnamese_question_finds_folded_names(corpus_index: KeywordIndex) -> None:
    assert top_ids(corpus_index, "Bao nhiêu dự án ở Cần Thơ?", "vi")[0] == "vi1"
    assert top_ids(corpus_index, "What happens in Can Tho?", "en")[0] == "vi1"


def test_common_words_do_not_match_across_languages(corpus_index: KeywordIndex) -> None:
    # "провинции" is in two Russian chunks; an English question has no business with them
    assert top_ids(corpus_index, "Die provinsen in the province", "en") == []


def test_unknown_words_and_empty_queries_find_nothing(corpus_index: KeywordIndex) -> None:
    assert corpus_index.search("Zyxwv Qwerty Blorp", 5) == []
    assert corpus_index.search("?!", 5) == []
    assert corpus_index.search("", 5) == []
    assert corpus_index.search("Dong Nai", 0) == []


def test_empty_index() -> None:
    index = KeywordIndex([])
    assert len(index) == 0
    assert index.search("Dong Nai 2028", 5) == []
    assert index.scores("anything").shape == (0,)


def test_index_of_empty_chunks() -> None:
    index = KeywordIndex([text_chunk("e", "", "en"), text_chunk("p", "...", "de")])
    assert index.search("Dong Nai", 5) == []


def test_search_is_deterministic(corpus_index: KeywordIndex) -> None:
    query = "Dong Nai 90 L2Pro Cần Thơ"
    again = KeywordIndex(CORPUS)
    assert corpus_index.search(query, 10, "en") == again.search(query, 10, "en")
    assert corpus_index.search(query, 10, "en") == corpus_index.search(query, 10, "en")


def test_top_k_orders_by_score_then_position() -> None:
    scores = np.array([0.5, 2.0, 0.0, 2.0, 1.0], dtype=np.float32)
    assert top_k(scores, 3) == [(1, 2.0), (3, 2.0), (4, 1.0)]
    assert top_k(scores, 10) == [(1, 2.0), (3, 2.0), (4, 1.0), (0, 0.5)]
    assert top_k(scores, 0) == []


# --------------------------------------------------------------------------- fusion


def test_reciprocal_rank_fusion_arithmetic() -> None:
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]]))
    assert fused["a"] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 2))
    assert fused["b"] == pytest.approx(1 / (RRF_K + 2))
    assert fused["c"] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    order = [item for item, _ in reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]])]
    assert order == ["a", "c", "b"]


def test_reciprocal_rank_fusion_ties_and_weights() -> None:
    # x and y tie (each first in one list): the better best rank, then the id, decides
    assert reciprocal_rank_fusion([["y"], ["x"]]) == [
        ("x", pytest.approx(1 / 61)),
        ("y", pytest.approx(1 / 61)),
    ]
    weighted = dict(reciprocal_rank_fusion([["a"], ["a", "b"]], k=10, weights=[1.0, 0.5]))
    assert weighted == {"a": pytest.approx(1 / 11 + 0.5 / 11), "b": pytest.approx(0.5 / 12)}
    assert reciprocal_rank_fusion([[], []]) == []


# --------------------------------------------------------------------------- merging

ROW2 = DOC.index("Line two")
IT_HAS = DOC.index("It has")
ROW3 = DOC.index("Line three")


def test_overlapping_chunks_merge_into_the_exact_union() -> None:
    a = chunk_of(0, IT_HAS + 6)  # rows 1-2, ends inside row 2
    b = chunk_of(ROW2, len(DOC))  # rows 2-3
    merged = merge_chunks(a, b)
    assert merged.text == DOC
    assert (merged.start_char, merged.end_char) == (0, len(DOC))
    assert (merged.first_line, merged.last_line) == (1, 4)
    assert merged.line_map == (1, 3, 4)
    assert merged.chunk_id == a.chunk_id
    assert merge_chunks(b, a, chunk_id="keep").text == DOC  # order does not matter
    assert merge_chunks(b, a, chunk_id="keep").chunk_id == "keep"


def test_chunks_touching_inside_a_line_merge() -> None:
    a = chunk_of(ROW2, IT_HAS)  # "Line two follows. " (touching at the next sentence)
    b = chunk_of(IT_HAS, ROW3 - 1)
    assert can_merge(a, b)
    merged = merge_chunks(a, b)
    assert merged.text == DOC[ROW2 : ROW3 - 1]
    assert merged.line_map == (3,)
    assert (merged.first_line, merged.last_line) == (3, 3)


def test_chunks_separated_by_a_line_break_merge() -> None:
    a = chunk_of(0, ROW2 - 1)  # row 1 without its "\n"
    b = chunk_of(ROW2, len(DOC))
    assert can_merge(a, b)
    merged = merge_chunks(a, b)
    assert merged.text == DOC
    assert merged.line_map == (1, 3, 4)


def test_contained_chunk_merges_into_the_outer_one() -> None:
    outer = chunk_of(0, len(DOC))
    inner = chunk_of(ROW2, ROW3 - 1)
    assert merge_chunks(inner, outer).text == DOC
    assert merge_chunks(inner, outer).line_map == (1, 3, 4)


def test_chunks_that_cannot_merge() -> None:
    a = chunk_of(ROW2, IT_HAS - 1)  # "Line two follows." then a space gap
    b = chunk_of(IT_HAS, ROW3 - 1)
    assert not can_merge(a, b)  # a space gap: its character is unknown
    assert not can_merge(chunk_of(0, 10), chunk_of(5, 20, path="b.txt"))
    assert not can_merge(chunk_of(0, 10), chunk_of(5, 20, content_hash="h2"))
    assert not can_merge(chunk_of(0, 5), chunk_of(ROW3, len(DOC)))


def cand(chunk: Chunk, score: float, dense: float | None = None, kw: float | None = None):  # type: ignore[no-untyped-def]
    return Candidate(chunk, score, dense, kw)


def test_merge_overlapping_keeps_rank_order_and_best_scores() -> None:
    row1 = chunk_of(0, ROW2 - 1)
    row12 = chunk_of(0, IT_HAS + 6)
    row23 = chunk_of(ROW2, len(DOC))
    other = text_chunk("other", "Something else.", "en")
    ranked = [
        cand(row23, 0.05, dense=0.8),
        cand(other, 0.04, dense=0.9),
        cand(row1, 0.03, kw=2.0),
        cand(row12, 0.02, dense=0.7, kw=1.0),
    ]
    groups = merge_overlapping(ranked, k=2)
    assert [g.chunk.chunk_id for g in groups] == [row23.chunk_id, "other"]
    assert groups[0].chunk.text == DOC
    assert groups[0].score == 0.05
    assert groups[0].dense_score == 0.8
    assert groups[0].keyword_score == 2.0
    assert ranked[0].chunk is row23  # inputs are not modified


def test_merge_overlapping_joins_groups_a_chunk_bridges() -> None:
    row1 = chunk_of(0, ROW2 - 1)
    row3 = chunk_of(ROW3, len(DOC))
    middle = chunk_of(ROW2 - 5, ROW3 + 4)  # overlaps both
    groups = merge_overlapping([cand(row1, 3.0), cand(row3, 2.0), cand(middle, 1.0)], k=5)
    assert len(groups) == 1
    assert groups[0].chunk.text == DOC
    assert groups[0].chunk.chunk_id == row1.chunk_id


def test_merge_overlapping_stops_at_k_groups() -> None:
    chunks = [text_chunk(f"c{i}", f"text {i}", "en") for i in range(5)]
    groups = merge_overlapping([cand(c, 1.0 - i / 10) for i, c in enumerate(chunks)], k=3)
    assert [g.chunk.chunk_id for g in groups] == ["c0", "c1", "c2"]
    assert merge_overlapping([], k=3) == []


def test_keep_best_dense_puts_the_nearest_chunk_back() -> None:
    chunks = [text_chunk(f"c{i}", f"text {i}", "en") for i in range(4)]
    ranked = [
        cand(chunks[0], 0.04, kw=3.0),
        cand(chunks[1], 0.03, dense=0.5, kw=2.0),
        cand(chunks[2], 0.02, dense=0.6, kw=1.0),
        cand(chunks[3], 0.01, dense=0.9),  # the nearest, fused last
    ]
    groups = merge_overlapping(ranked, k=3)
    assert "c3" not in [g.chunk.chunk_id for g in groups]
    kept = keep_best_dense(groups, ranked, k=3)
    assert [g.chunk.chunk_id for g in kept] == ["c0", "c1", "c3"]
    assert keep_best_dense(kept, ranked, k=3) == kept  # already there: unchanged
    assert keep_best_dense([], [], k=3) == []
    # never in place of the best hit: with k=1 the fused first stays
    assert [g.chunk.chunk_id for g in keep_best_dense(groups[:1], ranked, k=1)] == ["c0"]


def test_keep_best_dense_merges_a_touching_nearest_chunk() -> None:
    row12 = chunk_of(0, IT_HAS + 6)
    row23 = chunk_of(ROW2, len(DOC))
    other = text_chunk("other", "Something else.", "en")
    third = text_chunk("third", "A third thing.", "en")
    ranked = [
        cand(row12, 0.05, kw=2.0),
        cand(other, 0.04, kw=1.0),
        cand(third, 0.03, kw=0.5),  # the walk stops here, before row23
        cand(row23, 0.01, dense=0.9),
    ]
    groups = merge_overlapping(ranked, k=2)
    assert [g.chunk.text for g in groups] == [row12.text, other.text]
    kept = keep_best_dense(groups, ranked, k=2)
    assert [g.chunk.text for g in kept] == [DOC, other.text]
    assert kept[0].dense_score == 0.9 and kept[0].chunk.chunk_id == row12.chunk_id


# --------------------------------------------------------------------------- retriever (fakes)


@dataclass
class FakeManifest:
    value: int = 1

    def generation(self) -> int:
        return self.value


@dataclass
class FakeStore:
    """What HybridRetriever and keyword_index_for use of rag.store.Store."""

    chunks: list[Chunk]
    vectors: dict[str, np.ndarray]
    # unique, so the per-store caches never hand one test's data to another
    location: str = field(default_factory=lambda: f"fake-{uuid.uuid4()}")
    manifest: FakeManifest = field(default_factory=FakeManifest)
    settings: Settings = field(default_factory=Settings)
    loads: int = 0

    def check_dimension(self, dim: int) -> None:
        sizes = {len(v) for v in self.vectors.values()}
        assert sizes <= {dim}, f"a {dim}-dimensional query against {sizes}"

    def all_chunks_and_embeddings(self) -> tuple[list[Chunk], np.ndarray]:
        vectors = [self.vectors[c.chunk_id] for c in self.chunks]
        return list(self.chunks), np.stack(vectors) if vectors else np.zeros((0, 1))

    def embeddings(self, ids: list[str]) -> dict[str, np.ndarray]:
        return {i: self.vectors[i] for i in reversed(ids) if i in self.vectors}  # any order

    def all_chunks(self) -> list[Chunk]:
        self.loads += 1
        return list(self.chunks)

    def query(
        self, embedding: np.ndarray, k: int, where: dict[str, str] | None = None
    ) -> list[tuple[Chunk, float]]:
        chunks = [c for c in self.chunks if not where or c.language == where["language"]]
        cosines = [float(self.vectors[c.chunk_id] @ embedding) for c in chunks]
        order = sorted(range(len(chunks)), key=lambda i: -cosines[i])[:k]
        return [(chunks[i], cosines[i]) for i in order]


class FakeEmbedder:
    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self.calls = 0

    def embed_query(self, text: str) -> np.ndarray:
        self.calls += 1
        return self.vector


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def fake_store() -> FakeStore:
    chunks = [
        chunk_of(0, IT_HAS + 6, language="en"),
        chunk_of(ROW2, len(DOC), language="en"),
        text_chunk("l2pro", "Die Plattform L2Pro von Qualcomm.", "de"),
        text_chunk("far", "Unrelated words only.", "en"),
    ]
    vectors = {
        chunks[0].chunk_id: unit(1, 0.1, 0),
        chunks[1].chunk_id: unit(1, 0.2, 0),
        "l2pro": unit(0, 1, 1),
        "far": unit(0.5, 0, 1),
    }
    return FakeStore(chunks, vectors)


def test_hybrid_fuses_merges_and_scores_every_hit(fake_store: FakeStore) -> None:
    query_vector = unit(1, 0, 0)
    embedder = FakeEmbedder(query_vector)
    retriever = HybridRetriever(fake_store, embedder, KeywordIndex(fake_store.chunks))  # type: ignore[arg-type]
    hits = retriever.search("What does L2Pro say about line three?", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert all(isinstance(h, Hit) and h.dense_score is not None for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    by_id = {h.chunk.chunk_id: h for h in hits}
    assert hits[0].chunk.chunk_id == "l2pro"  # first of BM25, second of dense
    merged = by_id[fake_store.chunks[0].chunk_id]  # the two overlapping chunks
    assert merged.chunk.text == DOC
    assert merged.dense_score == pytest.approx(float(unit(1, 0.1, 0) @ query_vector))
    assert by_id["l2pro"].keyword_score and by_id["l2pro"].keyword_score > 0
    assert by_id["l2pro"].dense_score == pytest.approx(float(unit(0, 1, 1) @ query_vector))
    assert by_id["far"].keyword_score == 0.0
    # a given query vector is used as is: the embedder is not called
    retriever.search("L2Pro", k=2, query_vector=query_vector)
    assert embedder.calls == 1


def test_hybrid_fills_dense_score_of_keyword_only_hits(
    fake_store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rag.retrieve

    query_vector = unit(1, 0, 0)
    retriever = HybridRetriever(
        fake_store, FakeEmbedder(query_vector), KeywordIndex(fake_store.chunks)
    )  # type: ignore[arg-type]
    nearest = rag.retrieve.language_balanced_query
    monkeypatch.setattr(  # the dense side finds only the nearest chunk
        rag.retrieve, "language_balanced_query", lambda store, v, n: nearest(store, v, 1)
    )
    candidates = retriever.candidates("L2Pro", 2, query_vector)
    assert next(c for c in candidates if c.chunk.chunk_id == "l2pro").dense_score is None
    hits = retriever.search("L2Pro", k=2)
    l2pro = next(h for h in hits if h.chunk.chunk_id == "l2pro")
    assert l2pro.dense_score == pytest.approx(float(unit(0, 1, 1) @ query_vector))


def test_hybrid_on_an_empty_store() -> None:
    store = FakeStore([], {})
    retriever = HybridRetriever(store, FakeEmbedder(unit(1, 0)), KeywordIndex([]))  # type: ignore[arg-type]
    assert retriever.search("Dong Nai", k=5) == []
    assert retriever.search("Dong Nai", k=0) == []


def test_hybrid_is_deterministic(fake_store: FakeStore) -> None:
    def run() -> list[tuple[str, float, int]]:
        index = KeywordIndex(fake_store.chunks)
        retriever = HybridRetriever(fake_store, FakeEmbedder(unit(1, 0.1, 0.1)), index)  # type: ignore[arg-type]
        return [(h.chunk.chunk_id, h.score, h.rank) for h in retriever.search("L2Pro line", 4)]

    assert run() == run()


def test_keyword_index_cache_follows_the_generation(fake_store: FakeStore) -> None:
    first = keyword_index_for(fake_store)  # type: ignore[arg-type]
    assert keyword_index_for(fake_store) is first  # type: ignore[arg-type]
    assert fake_store.loads == 1
    fake_store.manifest.value += 1
    fake_store.chunks = fake_store.chunks[:1]
    second = keyword_index_for(fake_store)  # type: ignore[arg-type]
    assert second is not first and len(second) == 1


# --------------------------------------------------------------------------- real store


@pytest.fixture(scope="module")
def seeds_store(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The seeds indexed once for this module with the real embedder and Chroma."""
    from rag.indexer import index_folder
    from rag.models import embedder_identity
    from rag.store import Store

    root = tmp_path_factory.mktemp("retrieve")
    shutil.copytree(SEEDS, root / "docs")
    settings = Settings.from_env(docs_dir=root / "docs", store_dir=root / "store")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    store = Store(settings, embedder_identity(settings), create=False)
    yield store
    store.close()


def hybrid_search(store: Any, embedder: Any, query: str, k: int = 5) -> list[Hit]:
    return HybridRetriever(store, embedder, keyword_index_for(store)).search(query, k)


def file_of(hit: Hit) -> str:
    return Path(hit.chunk.path).name


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("How many innovative startups are there in Dong Nai?", "002_d6db562a30fbc1a0.txt"),
        ("L2Pro", "003_2c90ef674639c79c.txt"),
        (
            "Thành phố Cần Thơ đã kết nối và hướng dẫn khoảng bao nhiêu dự án khởi nghiệp?",
            "002_d6db562a30fbc1a0.txt",
        ),
        ("Какова площадь провинции Ламдонг после слияния?", "002_d6db562a30fbc1a0.txt"),
        ("Wie lautet das Motto der TECHFEST Vietnam 2025?", "002_d6db562a30fbc1a0.txt"),
        (
            "Hvilken koordineringsmodell bruker ambassaden i Japan for å koble vietnamesiske "
            "forskere?",
            "004_c121dd273e78537b.txt",
        ),
    ],
)
def test_seed_questions_find_their_article(
    seeds_store: Any, embedder: Any, query: str, expected: str
) -> None:
    hits = hybrid_search(seeds_store, embedder, query)
    assert file_of(hits[0]) == expected, [file_of(h) for h in hits]


def test_seed_hits_are_exact_slices_with_their_lines(seeds_store: Any, embedder: Any) -> None:
    from rag.ingest import read_document

    hits = hybrid_search(seeds_store, embedder, "Resolution 57-NQ/TW Dong Nai startups", k=8)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert len(hits) == 8
    for hit in hits:
        chunk = hit.chunk
        doc = read_document(
            seeds_store.settings.docs_dir / chunk.path,
            seeds_store.settings.docs_dir,
            seeds_store.settings.max_file_bytes,
        )
        assert chunk.text == doc.text[chunk.start_char : chunk.end_char]
        assert (chunk.first_line, chunk.last_line) == doc.lines_of(chunk.start_char, chunk.end_char)
        assert len(chunk.line_map) == chunk.text.count("\n") + 1
        assert chunk.line_map[0] == chunk.first_line and chunk.line_map[-1] == chunk.last_line
        assert hit.dense_score is not None and -1.0 <= hit.dense_score <= 1.0
        assert hit.keyword_score is not None
    # merged: no two hits of one file overlap or touch
    for a in hits:
        for b in hits:
            assert a is b or not can_merge(a.chunk, b.chunk)


def test_top_dense_hit_keeps_its_cosine(seeds_store: Any, embedder: Any) -> None:
    query = "Which Korean university is cooperating with Can Tho?"
    vector = embedder.embed_query(query)
    best_chunk, best_cosine = seeds_store.query(vector, 1)[0]
    hits = HybridRetriever(seeds_store, embedder).search(query, 5, query_vector=vector)
    assert max(h.dense_score or 0.0 for h in hits) == pytest.approx(best_cosine, abs=1e-4)


def test_seed_search_is_deterministic_and_dense_baseline_remains(
    seeds_store: Any, embedder: Any
) -> None:
    query = "Hvem er visedirektør for Can Tho bysenter for entreprenørskap og innovasjon?"
    first = [(h.chunk.chunk_id, h.score) for h in hybrid_search(seeds_store, embedder, query)]
    assert first == [
        (h.chunk.chunk_id, h.score) for h in hybrid_search(seeds_store, embedder, query)
    ]
    dense = DenseRetriever(seeds_store, embedder).search(query, 3)
    assert [h.rank for h in dense] == [1, 2, 3]
    assert all(h.score == h.dense_score for h in dense)


def test_dense_index_matches_chroma_per_language(seeds_store: Any, embedder: Any) -> None:
    """The in-memory balanced ranking is what per-language Chroma queries give."""
    from rag.retrieve import dense_index_for

    index = dense_index_for(seeds_store)
    assert len(index.chunks) == seeds_store.count()
    vector = embedder.embed_query("Hvor mange oppstartsbedrifter er det i Dong Nai?")
    for language in {c.language for c in index.chunks}:
        chroma = seeds_store.query(vector, 5, where={"language": language})
        mine = [
            (c, s) for c, s in index.query(vector, len(index.chunks)) if c.language == language
        ][:5]
        assert [c.chunk_id for c, _ in mine] == [c.chunk_id for c, _ in chroma]
        assert [s for _, s in mine] == pytest.approx([s for _, s in chroma], abs=1e-4)


def test_engine_search_is_hybrid(seeds_store: Any, embedder: Any) -> None:
    from rag.engine import Engine

    engine = Engine(seeds_store.settings)
    engine._embedder = embedder  # the session's model: loading another costs seconds
    vector = embedder.embed_query("L2Pro")
    hits = engine.search("  L2Pro ", k=3, query_vector=vector)
    assert file_of(hits[0]) == "003_2c90ef674639c79c.txt"
    assert hits[0].keyword_score and hits[0].keyword_score > 0


def test_dense_ranking_removes_the_same_language_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two languages: the Russian chunks all lean towards the question (same language);
    after subtracting each language's centroid the German chunk that matches wins."""
    from rag.retrieve import language_balanced_query

    def unit(*xs: float) -> np.ndarray:
        v = np.array(xs, dtype=np.float32)
        return v / np.linalg.norm(v)

    chunks = [
        Chunk(f"c{i}", f"{lang}.txt", i, "t", 0, 1, 1, 1, lang, "h")
        for i, lang in enumerate(["ru", "ru", "de", "de"])
    ]
    vectors = {
        "c0": unit(1.0, 0.0, 0.2),
        "c1": unit(1.0, 0.1, 0.0),  # Russian, off topic
        "c2": unit(0.3, 1.0, 0.0),
        "c3": unit(0.0, 0.0, 1.0),  # German, c2 on topic
    }
    store = FakeStore(chunks=chunks, vectors=vectors, location="bias-test")
    question = unit(0.8, 0.6, 0.0)
    monkeypatch.setattr("rag.retrieve.MIN_LANGUAGE_CHUNKS", 2)
    raw = sorted(chunks, key=lambda c: -float(vectors[c.chunk_id] @ question))
    assert raw[0].language == "ru"
    balanced = language_balanced_query(store, question, 4)  # type: ignore[arg-type]
    assert balanced[0][0].chunk_id == "c2"
    assert balanced[0][1] == pytest.approx(float(vectors["c2"] @ question))  # plain cosine


def test_document_biases_leave_each_documents_own_topic_out() -> None:
    from rag.retrieve import DenseIndex, group_biases, group_sums
    from rag.tuning import MIN_BIAS_DOCUMENTS

    rng = np.random.default_rng(0)
    docs = MIN_BIAS_DOCUMENTS  # enough German documents; one Russian document
    chunks = [
        Chunk(f"d{d}-{i}", f"de{d}.txt", i, "t", 0, 1, 1, 1, "de", "h")
        for d in range(docs)
        for i in range(3)
    ] + [Chunk(f"r{i}", "ru.txt", i, "t", 0, 1, 1, 1, "ru", "h") for i in range(3)]
    vectors = rng.normal(size=(len(chunks), 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = DenseIndex.build(chunks, vectors)
    german = [i for i, c in enumerate(chunks) if c.language == "de"]
    for d in range(docs):
        own = [i for i in german if chunks[i].path == f"de{d}.txt"]
        others = [i for i in german if i not in own]
        rows = {int(index.language_of[i]) for i in own}
        assert len(rows) == 1  # one bias per document
        assert np.allclose(index.biases[rows.pop()], vectors[others].mean(axis=0), atol=1e-6)
    # a language with fewer documents keeps its language bias: the corpus-wide mean
    # here, since 3 Russian chunks are fewer than MIN_LANGUAGE_CHUNKS
    biases = group_biases(group_sums(chunks, vectors))
    assert np.allclose(biases[("ru.txt", "ru")], vectors.mean(axis=0), atol=1e-6)
    # one language alone: nothing to balance
    alone = group_biases(group_sums(chunks[-3:], vectors[-3:]))
    assert np.allclose(alone[("ru.txt", "ru")], 0.0)


def test_group_sums_add_up_to_the_means_of_normalized_vectors() -> None:
    from rag.retrieve import group_sums

    chunks = [text_chunk(f"c{i}", "t", "en" if i < 2 else "de", "a.txt") for i in range(3)]
    vectors = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    sums = group_sums(chunks, vectors)
    english = sums[(chunks[0].path, "en")]
    assert english.count == 2 and np.allclose(english.vector, [1.0, 1.0])
    assert np.allclose(sums[("a.txt", "de")].vector, [2**-0.5, 2**-0.5])


def test_unit_rows_normalizes_and_keeps_unit_rows_without_a_copy() -> None:
    raw = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    normalized = unit_rows(raw)
    assert np.allclose(normalized, [[0.6, 0.8], [0.0, 0.0]])  # a zero row stays zero
    unit = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    assert unit_rows(unit) is unit  # already unit (a snapshot's rows): not copied
