"""The refusal gate's thresholds, calibrated to the corpus it guards.

The gate (rag.stages.gate) refuses when no retrieved hit is close enough to the
question: its cosine to the question is below a threshold. How high an unrelated
question scores depends on the corpus: a folder of encyclopedic articles in six
languages is "near" far more questions than five articles on Vietnamese science
policy (multilingual-e5-small's cosines are compressed into about 0.7-0.95). And it
depends on the languages: a passage in the question's own language scores higher
than an equally relevant one in another language. So there are two thresholds, one
for hits in the question's language and one for hits in another, both measured on
the open store, once per index version:

- the off-corpus score distributions: CALIBRATION_QUESTIONS, a fixed list of general
  questions (cooking, sport, geography, animals ...) in the languages rag detects, are
  searched exactly as a real question is (HybridRetriever, k = top_k); of each, the
  best dense score among hits in its own language and among hits in other languages
  is kept;
- each threshold is its distribution's GATE_QUANTILE: a hit passes when it scores
  above what most general questions reach in the same kind of pair.

A single threshold on the best score, whatever the languages (the gate before),
refused 24 % of xquad-dev's answerable questions, nearly all of them cross-lingual,
and 71 % of off-corpus questions; the two thresholds refuse 17 % and 75 % (a single
threshold refusing 17 % refuses about 62 %). On the seeds no answerable question is
refused either way; off-corpus questions are refused 84 -> 86 %, the conversation
set's unanswerable follow-ups 10 -> 13 of 22 (topic switches 7 -> 10 of 11), the
golden set's near-topic ones 4 -> 3 of 10 (bench/generalization.py; rag eval --llm
none).

What thresholds cannot do, measured with bench/generalization.py: on xquad-dev the
scores of answerable questions and of off-corpus ones overlap, so no threshold on this
score refuses most off-corpus questions there without refusing many answerable ones.
Scores relative to the corpus (best minus the mean, z-score, hubness-corrected "CSLS"
scores, sentence-level best) were measured too and did no better.

The calibration is kept in the manifest (meta key META_KEY) with the corpus's
fingerprint (its files' content hashes) and the embedder's identity; it is reused
until more than RECALIBRATE_CHANGE of the files changed, or the embedder did.
Calibrating costs about 1-2 s on 2 cores (74 query embeddings), paid by the first
question after such a change. RAG_REFUSAL_THRESHOLD set to a number overrides it all
(both thresholds; 0 turns the gate off); its default is "auto".
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.keyword import canonical_language

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.records import Hit
    from rag.retrieve import QueryEmbedder
    from rag.store import Store

META_KEY = "refusal_gate"
VERSION = 2  # 1: one threshold on the best score
# Each threshold is this quantile of its calibration scores. A hit passes by either
# threshold, so about twice its complement of general questions pass: 0.9 refuses 85 %
# of the calibration questions on the seeds, as the single threshold's 0.8 refused
# 80 %. The same before an LLM's answer as before a quoted one: the 1.5B local model
# answers off-topic questions that pass ("how to cook borscht") from unrelated sources.
GATE_QUANTILE = 0.9
# Recalibrate once more than this share of the files were added, removed or changed.
RECALIBRATE_CHANGE = 0.1
# With no calibration possible (an empty store), the seeds' hand-calibrated value.
FALLBACK_THRESHOLD = 0.787

# General questions on everyday and encyclopedic topics, in the languages rag detects.
# Not an evaluation set: tests/qa/off_corpus.jsonl asks other questions.
CALIBRATION_QUESTIONS: tuple[str, ...] = (
    # English
    "What is the best way to learn a new language as an adult?",
    "How many calories does a cup of coffee with milk have?",
    "Who invented the telephone?",
    "What is the tallest building in the world?",
    "How do vaccines train the immune system?",
    "What should I pack for a week-long hiking trip?",
    "Why do cats purr?",
    "How does compound interest work on a savings account?",
    "Which country won the most medals at the last Winter Olympics?",
    "How do I make sourdough starter from scratch?",
    # Vietnamese
    "Làm thế nào để giảm cân an toàn trong một tháng?",
    "Thủ đô của Canada là thành phố nào?",
    "Tại sao lá cây chuyển sang màu vàng vào mùa thu?",
    "Cách làm bánh xèo giòn như thế nào?",
    "Ai đã viết bản giao hưởng số 9?",
    "Nên cho chó ăn bao nhiêu lần một ngày?",
    "Động đất xảy ra do nguyên nhân gì?",
    "Làm sao để tiết kiệm điện trong mùa hè?",
    "Ngọn núi cao nhất thế giới là núi nào?",
    "Bóng rổ được phát minh vào năm nào?",
    # Russian
    "Как быстро выучить таблицу умножения?",
    "Почему небо ночью тёмное?",
    "Сколько стоит билет на поезд из Москвы в Санкт-Петербург?",
    "Кто изобрёл радио?",
    "Как правильно заваривать зелёный чай?",
    "Какие витамины нужны зимой?",
    "Где находится самое глубокое озеро в мире?",
    "Как научиться плавать взрослому человеку?",
    "Когда был основан футбольный клуб «Спартак»?",
    "Чем отличается вирус от бактерии?",
    # German
    "Wie pflege ich einen Rasen im Sommer richtig?",
    "Wer schrieb den Roman Die Blechtrommel?",
    "Wie viele Einwohner hat die Schweiz?",
    "Warum ist das Meer salzig?",
    "Welche Zutaten braucht man für Apfelstrudel?",
    "Wie funktioniert eine Wärmepumpe?",
    "Wann beginnt die Fußball-Europameisterschaft?",
    "Wie lange kann ein Mensch ohne Wasser überleben?",
    "Welches Tier ist das schnellste an Land?",
    "Wie melde ich einen Umzug beim Bürgeramt an?",
    # Norwegian
    "Hvordan lager man fiskesuppe?",
    "Hvem var Roald Amundsen?",
    "Hvor mange innbyggere har Bergen?",
    "Hvorfor er det midnattssol om sommeren?",
    "Hva koster det å ta ferge over fjorden?",
    "Hvordan smører man ski til klassisk langrenn?",
    "Hva er det beste middelet mot forkjølelse?",
    "Når åpner badestrendene i Oslo?",
    # Spanish
    "¿Cómo se hace una tortilla de patatas?",
    "¿Quién ganó el Mundial de fútbol de 2010?",
    "¿Cuántos huesos tiene un gato?",
    "¿Por qué se forman los arcoíris?",
    "¿Qué idiomas se hablan en Suiza?",
    "¿Cuál es el río más largo de Europa?",
    "¿Cómo se cuida un cactus en invierno?",
    "¿Cuándo se celebra el Día de los Muertos?",
    # French
    "Comment préparer une quiche lorraine ?",
    "Qui a peint La Joconde ?",
    "Quelle est la hauteur du Mont Blanc ?",
    "Pourquoi les oiseaux migrent-ils en hiver ?",
    "Combien de temps faut-il pour apprendre le piano ?",
    "Quel est le plus grand désert du monde ?",
    # Swedish
    "Hur gör man kanelbullar?",
    "Vem skrev Pippi Långstrump?",
    "Hur många sjöar finns det i Sverige?",
    "Varför har zebror ränder?",
    # Danish
    "Hvordan laver man frikadeller?",
    "Hvem opfandt LEGO-klodsen?",
    "Hvor lang er Storebæltsbroen?",
    "Hvad er den bedste tid at plante tulipanløg?",
    # Ukrainian
    "Як приготувати вареники з вишнями?",
    "Хто написав «Кобзар»?",
    "Скільки триває вагітність у слонів?",
    "Чому взимку коротший день?",
)


# A calibration question's best dense scores among hits in its own language and in
# others (None: no such hit).
PairScores = tuple[float | None, float | None]


@dataclass(frozen=True)
class Thresholds:
    """The gate's two thresholds: for hits in the question's language, and in another."""

    same: float
    cross: float

    def passes(self, hits: Sequence[Hit], language: str) -> bool:
        """Whether some hit is close enough to the question (asked in `language`)."""
        own = canonical_language(language)
        return any(
            (hit.dense_score or 0.0)
            >= (self.same if canonical_language(hit.chunk.language) == own else self.cross)
            for hit in hits
        )


@dataclass(frozen=True)
class Calibration:
    """A corpus's thresholds and what they were measured on."""

    same: float
    cross: float
    embedder: str  # the embedder's identity
    files: tuple[str, ...]  # content hashes of the indexed files (the fingerprint)
    scores: tuple[PairScores, ...]  # per calibration question
    quantile: float = GATE_QUANTILE
    version: int = VERSION

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.same, self.cross)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Calibration | None:
        try:
            data = json.loads(text)
            return cls(
                same=float(data["same"]),
                cross=float(data["cross"]),
                embedder=str(data["embedder"]),
                files=tuple(data["files"]),
                scores=tuple((_score(a), _score(b)) for a, b in data["scores"]),
                quantile=float(data["quantile"]),
                version=int(data["version"]),
            )
        except (ValueError, KeyError, TypeError):
            return None  # damaged or from another version: calibrate again

    def fits(self, files: Sequence[str], embedder: str) -> bool:
        """Still valid for this corpus: same embedder and method, few files changed."""
        if (self.version, self.quantile, self.embedder) != (VERSION, GATE_QUANTILE, embedder):
            return False
        return changed_share(self.files, files) <= RECALIBRATE_CHANGE


def _score(value: Any) -> float | None:
    return None if value is None else float(value)


def changed_share(before: Sequence[str], after: Sequence[str]) -> float:
    """Files added, removed or changed, as a share of the larger of the two corpora."""
    old, new = set(before), set(after)
    largest = max(len(old), len(new))
    return len(old ^ new) / largest if largest else 0.0


def threshold_at(scores: Sequence[float], quantile: float = GATE_QUANTILE) -> float:
    """The threshold that refuses `quantile` of the calibration questions."""
    if not scores:
        return FALLBACK_THRESHOLD
    return round(float(np.quantile(np.asarray(scores, dtype=np.float64), quantile)), 4)


def thresholds_at(scores: Sequence[PairScores], quantile: float = GATE_QUANTILE) -> Thresholds:
    """Each threshold at its own distribution's quantile; a kind of pair no calibration
    question had (a corpus in one language none of them is in) takes the other's."""
    same = [a for a, _ in scores if a is not None]
    cross = [b for _, b in scores if b is not None]
    return Thresholds(threshold_at(same or cross, quantile), threshold_at(cross or same, quantile))


def fingerprint(store: Store) -> tuple[str, ...]:
    """The indexed files' content hashes (renames keep them), sorted."""
    return tuple(
        sorted(r.content_hash for r in store.manifest.files().values() if r.state == "done")
    )


def calibration_scores(store: Store, embedder: QueryEmbedder, k: int) -> list[PairScores]:
    """Each calibration question's best dense scores among hits in its own language
    and in others, searched as the engine searches."""
    from rag.language import detect_language
    from rag.retrieve import HybridRetriever, keyword_index_for

    retriever = HybridRetriever(store, embedder, keyword_index_for(store))
    scores = []
    for question in CALIBRATION_QUESTIONS:
        own = canonical_language(detect_language(question))
        hits = retriever.search(question, k, embedder.embed_query(question))
        same = [h.dense_score or 0.0 for h in hits if canonical_language(h.chunk.language) == own]
        cross = [h.dense_score or 0.0 for h in hits if canonical_language(h.chunk.language) != own]
        scores.append(
            (round(max(same), 4) if same else None, round(max(cross), 4) if cross else None)
        )
    return scores


def calibrate(store: Store, embedder: QueryEmbedder, k: int) -> Calibration:
    files = fingerprint(store)
    scores = calibration_scores(store, embedder, k) if files else []
    thresholds = thresholds_at(scores)
    return Calibration(thresholds.same, thresholds.cross, _identity(embedder), files, tuple(scores))


def calibration_for(store: Store, embedder: QueryEmbedder, k: int) -> Calibration:
    """The stored calibration if it still fits the corpus, else a fresh one (stored)."""
    files = fingerprint(store)
    raw = store.manifest.get_meta(META_KEY)
    stored = Calibration.from_json(raw) if raw else None
    if stored is not None and stored.fits(files, _identity(embedder)):
        return stored
    fresh = calibrate(store, embedder, k)
    # A read-only or busy store: the calibration serves this process only.
    with contextlib.suppress(Exception):
        store.manifest.set_meta({META_KEY: fresh.to_json()})
    return fresh


# (store location, collection) -> (manifest generation, thresholds): one SQLite read a
# question, as the retrieval caches.
_CACHE: dict[tuple[str, str], tuple[int, Thresholds]] = {}
_CACHE_LOCK = threading.Lock()


def refusal_thresholds(store: Store, embedder: QueryEmbedder, settings: Settings) -> Thresholds:
    """The thresholds for the open store: RAG_REFUSAL_THRESHOLD for both when it is a
    number, else ("auto") the store's calibration."""
    configured = settings.refusal_threshold
    if not (isinstance(configured, str) and configured == "auto"):
        return Thresholds(float(configured), float(configured))
    key = (store.location, settings.collection)
    generation = store.manifest.generation()
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None and cached[0] == generation:
        return cached[1]
    # Not under the lock: calibrating searches, and searching fills other caches.
    thresholds = calibration_for(store, embedder, settings.top_k).thresholds
    with _CACHE_LOCK:
        _CACHE[key] = (generation, thresholds)
    return thresholds


def _identity(embedder: Any) -> str:
    identity = getattr(embedder, "identity", "")
    return identity if isinstance(identity, str) else ""
