"""How well follow-ups are resolved, and at what cost: the methods side by side.

On a conversation set (tests/qa/conversation.jsonl), for every case with a history:
- detection: is the question judged dependent on the previous turn exactly when it
  is (every group but `topic-switch`)?
- resolution, per method: does searching the standalone question rank an expected file
  first (answerable cases), and how long does making it take?
Methods: `glue` (the old rule: a question of at most 8 words searched together with the
previous one, whatever it says), `rules` (rag.conversation without a model) and `llm`
(the local model rewrites the dependent ones, as RAG_FOLLOWUP_REWRITE=llm does; rules
when it fails). Prints JSON.

    .venv/bin/python bench/followups.py [tests/qa/conversation.jsonl] [--no-llm]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from calibrate_refusal import scratch_engine  # a sibling script: bench/ is on sys.path

from rag.config import Settings
from rag.conversation import Plan, previous_turn, resolve
from rag.engine import Engine
from rag.evaluate import GoldenCase, first_expected_rank, load_golden, ranked_files
from rag.stages import Turn, plan

GLUE_MAX_WORDS = 8  # the rule before rag.conversation (issue 11)


def glue(engine: Engine, case: GoldenCase) -> Plan:
    previous, _ = previous_turn(case.history, engine.settings.history_turns)
    glued = bool(previous) and len(case.question.split()) <= GLUE_MAX_WORDS
    query = f"{previous}\n{case.question}" if glued else case.question
    return Plan(case.question, query, "en", previous, glued, "glue")


def rules(engine: Engine, case: GoldenCase) -> Plan:
    return resolve(case.question, case.history, engine.settings.history_turns)


def llm(engine: Engine, case: GoldenCase) -> Plan:
    turn = Turn(case.question, list(case.history), "local", engine.backend("local"))
    return plan(engine, turn)


RULE_METHODS = {"glue": glue, "rules": rules}


def measure(engine: Engine, cases: list[GoldenCase], method: Any) -> dict[str, Any]:
    rows = []
    for case in cases:
        started = time.perf_counter()
        resolved = method(engine, case)
        seconds = time.perf_counter() - started
        rank = None
        if case.answerable:
            hits = engine.search(resolved.standalone)
            rank = first_expected_rank(
                ranked_files(h.chunk.path for h in hits), case.expected_sources
            )
        rows.append(
            {
                "id": case.id,
                "group": case.group,
                "dependent": resolved.follow_up,
                "should_depend": case.group != "topic-switch",
                "rank": rank,
                "seconds": round(seconds, 3),
                "standalone": resolved.standalone,
            }
        )
    answerable = [
        r for r in rows if r["rank"] is not None or r["group"] in ("elliptical", "neighbour")
    ]
    dependent = [r for r in rows if r["dependent"]]
    return {
        "detection_accuracy": _rate(
            sum(r["dependent"] == r["should_depend"] for r in rows), len(rows)
        ),
        "topic_switches_kept_alone": _rate(
            sum(not r["dependent"] for r in rows if not r["should_depend"]),
            sum(not r["should_depend"] for r in rows),
        ),
        "answerable_hit@1": _rate(sum(r["rank"] == 1 for r in answerable), len(answerable)),
        "seconds_p50_dependent": round(statistics.median([r["seconds"] for r in dependent]), 3)
        if dependent
        else None,
        "rows": rows,
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("golden", nargs="?", type=Path, default=Path("tests/qa/conversation.jsonl"))
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM rewrite")
    parser.add_argument("--rows", action="store_true", help="print every case")
    args = parser.parse_args()
    cases = [c for c in load_golden(args.golden) if c.history]
    settings = Settings.from_env()
    with scratch_engine(settings.docs_dir) as engine:
        results = {name: measure(engine, cases, method) for name, method in RULE_METHODS.items()}
        if not args.no_llm:  # what RAG_FOLLOWUP_REWRITE=llm does
            engine.settings = dataclasses.replace(engine.settings, followup_rewrite="llm")
            engine.prime("local")
            results["llm"] = measure(engine, cases, llm)
    for result in results.values():
        if not args.rows:
            result.pop("rows")
    print(json.dumps({"cases": len(cases), "methods": results}, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
