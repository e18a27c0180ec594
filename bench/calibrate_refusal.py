"""Calibrate the refusal gate (RAG_REFUSAL_THRESHOLD) on a golden Q&A file.

Indexes the documents into a scratch store, asks every case's search exactly as the
engine does (follow-ups included), and prints JSON: each case's best cosine, the
answerable and unanswerable distributions, and the threshold that refuses the most
unanswerable cases while refusing no answerable one (the midpoint of the gap). It also
prints what refusing *every* unanswerable case would cost: how many answerable cases
score no higher than the best-scoring unanswerable one.

    .venv/bin/python bench/calibrate_refusal.py [tests/qa/golden.jsonl] [--docs seeds]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rag.config import Settings
from rag.engine import Engine
from rag.evaluate import load_golden
from rag.stages import Turn


@contextmanager
def scratch_engine(docs: Path) -> Iterator[Engine]:
    """An engine over a fresh embedded index of `docs`, removed afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        settings = dataclasses.replace(
            Settings.from_env(docs_dir=docs, store_dir=Path(scratch) / "store"),
            chroma_url=None,
        )
        engine = Engine(settings)
        engine.index(progress=False)
        yield engine


def best_cosines(engine: Engine, golden: Path) -> list[dict[str, object]]:
    rows = []
    for case in load_golden(golden):
        turn = Turn(case.question, list(case.history), "none", None)
        turn.plan = engine.stages.plan(engine, turn)
        hits = engine.stages.retrieve(engine, turn)
        best = max((h.dense_score or 0.0 for h in hits), default=0.0)
        rows.append({"id": case.id, "answerable": case.answerable, "best_cosine": round(best, 4)})
    return rows


def threshold(rows: list[dict[str, object]]) -> float:
    """Midpoint between the lowest answerable score and the highest unanswerable below it."""
    lowest = min(float(r["best_cosine"]) for r in rows if r["answerable"])  # type: ignore[arg-type]
    below = [float(r["best_cosine"]) for r in rows if not r["answerable"]]  # type: ignore[arg-type]
    below = [s for s in below if s < lowest]
    return round((lowest + max(below)) / 2, 3) if below else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("golden", nargs="?", default="tests/qa/golden.jsonl", type=Path)
    parser.add_argument("--docs", default="seeds", type=Path)
    args = parser.parse_args()
    with scratch_engine(args.docs) as engine:
        rows = best_cosines(engine, args.golden)
    answerable = sorted(float(r["best_cosine"]) for r in rows if r["answerable"])  # type: ignore[arg-type]
    unanswerable = sorted(float(r["best_cosine"]) for r in rows if not r["answerable"])  # type: ignore[arg-type]
    chosen = threshold(rows)
    highest_unanswerable = unanswerable[-1] if unanswerable else 0.0
    print(
        json.dumps(
            {
                "threshold": chosen,
                "unanswerable_refused": sum(s < chosen for s in unanswerable),
                "unanswerable": len(unanswerable),
                "answerable_refused": sum(s < chosen for s in answerable),
                "answerable_lowest": answerable[:5],
                "to_refuse_every_unanswerable": {
                    "threshold_above": highest_unanswerable,
                    "answerable_refused": sum(s <= highest_unanswerable for s in answerable),
                    "answerable": len(answerable),
                },
                "unanswerable_scores": unanswerable,
                "cases": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
