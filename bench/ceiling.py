"""How far the LLM can go on the golden set, whatever retrieval and selection do.

Every answerable case is answered twice over the same scratch index of the documents:
first it is only checked whether the usual sentence selection puts the expected fact
(a `must_contain_any` string) into the prompt; then the case is answered by the LLM
with an *oracle* selection: the sentences holding the fact first, then the usual
ranking, within the same token budget (RAG_CONTEXT_TOKENS). The must-contain rate of
the oracle run, among the cases whose fact the oracle could put in the prompt (it was
in a retrieved passage), is what the model does when handed the answer: no retrieval
or selection work can take the product above it at that budget. Prints JSON.

    .venv/bin/python bench/ceiling.py [tests/qa/golden.jsonl] [--llm local] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from calibrate_refusal import scratch_engine  # a sibling script: bench/ is on sys.path

from rag.answer import Evidence, Sentence, Source
from rag.config import Settings
from rag.engine import Engine
from rag.evaluate import GoldenCase, document_reader, evaluate_case, load_golden, missing_facts
from rag.stages import Turn


class OracleEvidence(Evidence):
    """Evidence whose ranking puts the sentences holding the case's fact first."""

    case: ClassVar[GoldenCase | None] = None

    def ranked(self) -> list[Sentence]:
        usual = super().ranked()
        holding = [s for s in usual if holds_fact(s.text, self.case)]
        return holding + [s for s in usual if s not in holding]


def holds_fact(text: str, case: GoldenCase | None) -> bool:
    return case is not None and not missing_facts(
        text, case.must_contain_any, case.must_contain_all
    )


def oracle_evidence(engine: Engine, turn: Turn) -> list[Source]:
    """The evidence stage with the oracle ranking (swapped into engine.stages)."""
    assert turn.vector is not None
    evidence = OracleEvidence(turn.hits, turn.vector, engine.embedder)
    return evidence.select(int(engine.settings.context_tokens))


def fact_in_prompt(engine: Engine, case: GoldenCase, evidence_class: type[Evidence]) -> bool:
    """Whether this selection puts the case's fact among the prompt's sentences."""
    turn = Turn(case.question, list(case.history), "none", None)
    turn.plan = engine.stages.plan(engine, turn)
    hits = engine.stages.retrieve(engine, turn)
    assert turn.vector is not None
    evidence = evidence_class(hits, turn.vector, engine.embedder)
    sources = evidence.select(int(engine.settings.context_tokens))
    return holds_fact(" ".join(s.prompt_text() for s in sources), case)


def measure(engine: Engine, cases: list[GoldenCase], llm: str) -> dict[str, Any]:
    lookup = document_reader(engine.settings.docs_dir, engine.settings.max_file_bytes)
    engine.stages = replace(engine.stages, evidence=oracle_evidence)
    engine.prime(llm)
    rows = []
    for case in cases:
        OracleEvidence.case = case
        usual = fact_in_prompt(engine, case, Evidence)
        oracle = fact_in_prompt(engine, case, OracleEvidence)
        started = time.perf_counter()
        result = evaluate_case(engine, case, lookup, llm, engine.settings.top_k)
        rows.append(
            {
                "id": case.id,
                "fact_in_prompt_usual": usual,
                "fact_in_prompt_oracle": oracle,
                "answer_has_fact": result.facts_found,
                "refused": result.refused,
                "first_token_ms": _rounded(result.timings.get("first_token_ms")),
                "seconds": round(time.perf_counter() - started, 1),
                "answer": result.answer[:200],
            }
        )
    return summary(rows, engine.settings, llm)


def summary(rows: list[dict[str, Any]], settings: Settings, llm: str) -> dict[str, Any]:
    reached = [r for r in rows if r["fact_in_prompt_oracle"]]
    first_tokens = [r["first_token_ms"] for r in rows if r["first_token_ms"] is not None]
    return {
        "llm": llm,
        "context_tokens": settings.context_tokens,
        "answerable_cases": len(rows),
        "fact_in_prompt_usual": sum(r["fact_in_prompt_usual"] for r in rows),
        "fact_in_prompt_oracle": len(reached),
        "must_contain_rate_oracle": _rate(sum(r["answer_has_fact"] for r in rows), len(rows)),
        "must_contain_rate_given_fact": _rate(
            sum(r["answer_has_fact"] for r in reached), len(reached)
        ),
        "refused_given_fact": sum(r["refused"] for r in reached),
        "first_token_p50_ms": round(statistics.median(first_tokens)) if first_tokens else None,
        "cases": rows,
    }


def _rounded(value: float | None) -> float | None:
    return round(value) if value is not None else None


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("golden", nargs="?", default="tests/qa/golden.jsonl", type=Path)
    parser.add_argument("--docs", default="seeds", type=Path)
    parser.add_argument("--llm", default="local", choices=("local", "openai"))
    parser.add_argument("--limit", type=int, default=0, help="only the first N answerable cases")
    args = parser.parse_args()
    cases = [c for c in load_golden(args.golden) if c.answerable]
    cases = cases[: args.limit] if args.limit else cases
    with scratch_engine(args.docs) as engine:
        print(json.dumps(measure(engine, cases, args.llm), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
