"""rag.gate: the refusal thresholds calibrated per store (fakes only: fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

import rag.gate as gate
from rag.config import ConfigError, Settings
from rag.gate import (
    CALIBRATION_QUESTIONS,
    FALLBACK_THRESHOLD,
    GATE_QUANTILE,
    META_KEY,
    Calibration,
    Thresholds,
    calibration_for,
    changed_share,
    refusal_thresholds,
    threshold_at,
    thresholds_at,
)
from rag.records import Chunk, Hit


@dataclass
class Record:
    content_hash: str
    state: str = "done"


@dataclass
class FakeManifest:
    hashes: list[str]
    meta: dict[str, str] = field(default_factory=dict)
    gen: int = 1
    writable: bool = True

    def files(self) -> dict[str, Record]:
        return {f"f{i}.txt": Record(h) for i, h in enumerate(self.hashes)}

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, values: dict[str, str]) -> None:
        if not self.writable:
            raise OSError("read-only")
        self.meta.update(values)

    def generation(self) -> int:
        return self.gen


@dataclass
class FakeStore:
    manifest: FakeManifest
    location: str = "fake-store"


class Embedder:
    identity = "e5-test"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """calibration_scores replaced: same-language scores 0.700, 0.701, ..., other
    languages' 0.01 lower (one pair per question)."""
    made: list[int] = []

    def scores(store: Any, embedder: Any, k: int) -> list[tuple[float, float]]:
        made.append(k)
        return [(0.70 + i / 1000, 0.69 + i / 1000) for i in range(len(CALIBRATION_QUESTIONS))]

    monkeypatch.setattr(gate, "calibration_scores", scores)
    gate._CACHE.clear()
    return made


def test_calibration_questions_are_many_languages_and_unique() -> None:
    from rag.language import detect_language

    assert len(CALIBRATION_QUESTIONS) >= 60
    assert len(set(CALIBRATION_QUESTIONS)) == len(CALIBRATION_QUESTIONS)
    languages = {detect_language(q) for q in CALIBRATION_QUESTIONS}
    assert {"en", "vi", "ru", "de", "no", "es"} <= languages


def test_calibration_questions_are_not_the_evaluation_set() -> None:
    from pathlib import Path

    from rag.evaluate import load_golden

    qa = Path(__file__).resolve().parent / "qa"
    asked = {
        c.question for name in ("off_corpus.jsonl", "golden.jsonl") for c in load_golden(qa / name)
    }
    assert not asked & set(CALIBRATION_QUESTIONS)


def test_threshold_is_the_quantile_of_the_scores() -> None:
    scores = [0.70, 0.72, 0.74, 0.76, 0.78, 0.80]
    assert threshold_at(scores, 0.5) == pytest.approx(0.75)
    assert threshold_at(scores, 1.0) == pytest.approx(0.80)
    assert threshold_at([]) == FALLBACK_THRESHOLD


def test_each_kind_of_pair_gets_its_quantile_and_a_missing_kind_the_others() -> None:
    pairs = [(0.80, 0.70), (0.82, 0.72), (None, 0.74)]
    assert thresholds_at(pairs, 1.0) == Thresholds(0.82, 0.74)
    assert thresholds_at([(None, 0.7), (None, 0.8)], 1.0) == Thresholds(0.8, 0.8)
    assert thresholds_at([]) == Thresholds(FALLBACK_THRESHOLD, FALLBACK_THRESHOLD)


def _hit(language: str, score: float) -> Hit:
    chunk = Chunk("c", "a.txt", 0, "text", 0, 4, 1, 1, language, "h")
    return Hit(chunk, score, 1, dense_score=score)


def test_a_hit_passes_by_the_threshold_of_its_language_pair() -> None:
    thresholds = Thresholds(same=0.80, cross=0.78)
    # a Russian passage at 0.79 is close for an English question, not for a Russian one
    assert thresholds.passes([_hit("ru", 0.79)], "en")
    assert not thresholds.passes([_hit("ru", 0.79)], "ru")
    assert thresholds.passes([_hit("ru", 0.70), _hit("ru", 0.81)], "ru")
    assert thresholds.passes([_hit("nb", 0.79)], "en")  # Bokmål is Norwegian: "no"
    assert not thresholds.passes([_hit("nb", 0.79)], "no")
    assert not thresholds.passes([], "en")


def test_changed_share() -> None:
    assert changed_share(["a", "b"], ["a", "b"]) == 0.0
    assert changed_share([], []) == 0.0
    assert changed_share(["a"] * 1, ["a", "b"]) == pytest.approx(0.5)
    assert changed_share([str(i) for i in range(20)], [str(i) for i in range(21)]) == 1 / 21


def test_calibrated_once_stored_and_reused(calls: list[int]) -> None:
    store = FakeStore(FakeManifest([f"h{i}" for i in range(20)]))
    first = calibration_for(store, Embedder(), 5)  # type: ignore[arg-type]
    assert calls == [5]
    assert first.thresholds == thresholds_at(first.scores, GATE_QUANTILE)
    assert first.thresholds.same > first.thresholds.cross
    assert Calibration.from_json(store.manifest.meta[META_KEY]) == first
    again = calibration_for(store, Embedder(), 5)  # type: ignore[arg-type]
    assert calls == [5] and again == first  # read back from the manifest


def test_recalibrated_when_the_corpus_changes_enough(calls: list[int]) -> None:
    hashes = [f"h{i}" for i in range(20)]
    store = FakeStore(FakeManifest(hashes))
    calibration_for(store, Embedder(), 5)  # type: ignore[arg-type]
    store.manifest.hashes = [*hashes, "new1"]  # 1 file of 21: reused
    calibration_for(store, Embedder(), 5)  # type: ignore[arg-type]
    assert len(calls) == 1
    store.manifest.hashes = [*hashes[5:], "n1", "n2"]  # 7 of 22 changed: recalibrated
    calibration_for(store, Embedder(), 5)  # type: ignore[arg-type]
    assert len(calls) == 2


def test_recalibrated_for_another_embedder_or_a_damaged_entry(calls: list[int]) -> None:
    store = FakeStore(FakeManifest(["a", "b"]))
    calibration_for(store, Embedder(), 5)  # type: ignore[arg-type]

    class Other:
        identity = "another-model"

    calibration_for(store, Other(), 5)  # type: ignore[arg-type]
    assert len(calls) == 2
    store.manifest.meta[META_KEY] = "{not json"
    calibration_for(store, Other(), 5)  # type: ignore[arg-type]
    assert len(calls) == 3


def test_a_read_only_store_still_gets_a_threshold(calls: list[int]) -> None:
    store = FakeStore(FakeManifest(["a"], writable=False))
    assert calibration_for(store, Embedder(), 5).same > 0.7  # type: ignore[arg-type]
    assert META_KEY not in store.manifest.meta


def test_an_empty_store_falls_back(calls: list[int]) -> None:
    store = FakeStore(FakeManifest([]))
    fallback = Thresholds(FALLBACK_THRESHOLD, FALLBACK_THRESHOLD)
    assert calibration_for(store, Embedder(), 5).thresholds == fallback  # type: ignore[arg-type]
    assert calls == []


def test_a_configured_number_overrides_and_auto_is_cached(calls: list[int]) -> None:
    store = FakeStore(FakeManifest(["a", "b"]))
    fixed = Settings.from_env(refusal_threshold=0.5)
    assert refusal_thresholds(store, Embedder(), fixed) == Thresholds(0.5, 0.5)  # type: ignore[arg-type]
    assert calls == []
    auto = Settings.from_env(refusal_threshold="auto")
    value = refusal_thresholds(store, Embedder(), auto)  # type: ignore[arg-type]
    assert 0.7 < value.cross < value.same < 0.8
    store.manifest.meta.clear()  # only a new generation looks again
    assert refusal_thresholds(store, Embedder(), auto) == value  # type: ignore[arg-type]
    assert len(calls) == 1
    store.manifest.gen += 1
    refusal_thresholds(store, Embedder(), auto)  # type: ignore[arg-type]
    assert len(calls) == 2


def test_config_parses_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAG_REFUSAL_THRESHOLD", raising=False)
    assert Settings.from_env().refusal_threshold == "auto"
    monkeypatch.setenv("RAG_REFUSAL_THRESHOLD", "0.8")
    assert Settings.from_env().refusal_threshold == 0.8
    monkeypatch.setenv("RAG_REFUSAL_THRESHOLD", "Auto")
    assert Settings.from_env().refusal_threshold == "auto"
    monkeypatch.setenv("RAG_REFUSAL_THRESHOLD", "high")
    with pytest.raises(ConfigError):
        Settings.from_env()
