"""The answer path as stages: one Turn record flows through them, each fills its part.

    question -> plan (standalone question, language) -> retrieve (query vector, hits)
             -> gate (refuse?) -> evidence (numbered sources) -> generate (text)
             -> check (claim support) -> Answer

Each stage is a function of (engine, turn), testable alone. Engine.ask_stream runs
`engine.stages`, a Stages record: a benchmark or a test swaps one stage
(`dataclasses.replace(engine.stages, evidence=...)`) instead of patching the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rag.answer import (
    Source,
    answering,
    build_messages,
    extractive,
    fixed_messages,
    is_refusal,
    prompt_file,
    refusal_message,
    stream_hold,
)
from rag.citations import strip_markers
from rag.conversation import Plan, resolve
from rag.grounding import ground
from rag.languages import language_name
from rag.llm import ChatBackend, Message, context_budget
from rag.records import Answer, Citation, Hit
from rag.support import asks_amount, states_amount

if TYPE_CHECKING:
    from rag.engine import Engine, Pipeline

# Enough tokens for a rewritten question; the rewrite stops at its first line anyway.
REWRITE_MAX_CHARS = 300


@dataclass
class Turn:
    """One question on its way to an answer."""

    question: str
    history: Sequence[dict[str, str]]
    llm: str  # the backend's name ("none": extractive)
    backend: ChatBackend | None
    k: int | None = None
    language: str | None = None  # a fixed answer language; None: the question's
    started: float = field(default_factory=time.perf_counter)
    plan: Plan | None = None
    vector: np.ndarray | None = None
    pipeline: Pipeline | None = None
    hits: list[Hit] = field(default_factory=list)
    refuse: bool = False  # the gate's verdict
    sources: list[Source] = field(default_factory=list)
    reply: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def resolved(self) -> Plan:
        assert self.plan is not None, "the plan stage runs first"
        return self.plan

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


# ---------------------------------------------------------------------------- stages


def plan(engine: Engine, turn: Turn) -> Plan:
    """The question resolved against the history: a follow-up made standalone, by rule
    or, with RAG_FOLLOWUP_REWRITE=llm, by the LLM when one answers (rag.conversation)."""
    backend = turn.backend if engine.settings.followup_rewrite == "llm" else None
    rewrite = _rewriter(backend) if backend is not None else None
    fixed = turn.language or engine.settings.answer_language
    return resolve(
        turn.question,
        turn.history,
        engine.settings.history_turns,
        None if fixed in (None, "", "auto") else fixed,
        rewrite,
    )


def retrieve(engine: Engine, turn: Turn) -> list[Hit]:
    """Hybrid hits for the standalone question (its vector is kept for the evidence)."""
    query = turn.resolved.standalone
    turn.vector = engine.embedder.embed_query(query)
    turn.pipeline = engine.pipeline(turn.backend, query, turn.vector)
    return turn.pipeline.retrieve(turn.k)


def gate(engine: Engine, turn: Turn) -> bool:
    """Refuse when nothing retrieved is close enough to the question to hold an answer
    (rag.gate: one threshold for passages in the question's language, one for others)."""
    return not engine.refusal_thresholds().passes(turn.hits, turn.resolved.question_language)


def evidence(engine: Engine, turn: Turn) -> list[Source]:
    """The numbered source sentences: as many as the context budget allows for an LLM,
    the few best for a quoted answer."""
    assert turn.pipeline is not None, "the retrieve stage runs first"
    turn.pipeline.score()
    if turn.backend is None:
        return answering(turn.pipeline.best(), *_asked(turn))
    budget = context_budget(
        engine.settings.context_tokens,
        turn.backend,
        turn.elapsed_ms() / 1000,
        engine.settings.first_token_target,
    )
    turn.timings["context_tokens"] = budget
    return turn.pipeline.select(budget)


def generate(engine: Engine, turn: Turn) -> Iterator[str]:
    """The answer's text as it comes: the LLM's reply, or the quoted sentences."""
    if turn.backend is None:
        if turn.sources:
            yield extractive(turn.sources, turn.resolved.language)[0]
        return
    yield from stream_hold(turn.backend.stream(prompt(turn)))


def check(engine: Engine, turn: Turn) -> Answer:
    """The finished answer: every claim checked against the sentence it cites
    (rag.grounding.ground), a reply that answers nothing made a refusal."""
    resolved = turn.resolved
    if turn.refuse or (turn.backend is None and not turn.sources):
        return _answer(turn, refusal_message(resolved.language), True, [])
    if turn.backend is None:
        text, citations = extractive(turn.sources, resolved.language)
        return _answer(turn, text, False, citations, _quoted(citations))
    if is_refusal(turn.reply):
        return _answer(turn, refusal_message(resolved.language), True, [])
    standalone, language, question = _asked(turn)
    grounded = ground(turn.reply, turn.sources, engine.embedder, question, turn.hits, language)
    if grounded.untied:  # nothing in the reply can be tied to a source: quote instead
        return _quote_instead(turn, dropped=grounded.dropped)
    if grounded.refused:
        return _answer(turn, refusal_message(language), True, [], grounded.support())
    if asks_amount(standalone, language) and not states_amount(
        strip_markers(grounded.text), language, question
    ):
        # asked how many, the model wrote around it: the sentences stating an amount
        # answer better, and if none does, nothing does
        return _quote_instead(turn, dropped=grounded.kept + grounded.dropped)
    return _answer(turn, grounded.text, False, grounded.citations, grounded.support())


@dataclass(frozen=True)
class Stages:
    """The stages Engine.ask_stream runs, in order; swap one with dataclasses.replace."""

    plan: Callable[[Engine, Turn], Plan] = plan
    retrieve: Callable[[Engine, Turn], list[Hit]] = retrieve
    gate: Callable[[Engine, Turn], bool] = gate
    evidence: Callable[[Engine, Turn], list[Source]] = evidence
    generate: Callable[[Engine, Turn], Iterator[str]] = generate
    check: Callable[[Engine, Turn], Answer] = check


# --------------------------------------------------------------------------- helpers


def prompt(turn: Turn) -> list[Message]:
    """The LLM's messages: the standalone question. (Given the follow-up as asked with
    the previous question instead, the local model answered in the sources' language
    more often: conversation set, answers in the question's language 0.82 vs 0.97.)"""
    resolved = turn.resolved
    return build_messages(resolved.standalone, turn.sources, resolved.language)


def _rewriter(backend: ChatBackend) -> Callable[[str, str, str | None, str], str | None]:
    def rewrite(question: str, previous: str, answer: str | None, language: str) -> str | None:
        request = prompt_file("rewrite.txt").format(
            question=question,
            previous=previous,
            answer=" ".join((answer or "-").split())[:REWRITE_MAX_CHARS],
            language=language_name(language),
        )
        # After the fixed messages, whose processing llama.cpp keeps cached: the answer's
        # prompt that follows shares them and does not pay for them again.
        messages = [*fixed_messages(), Message("user", request)]
        text = ""
        for delta in backend.stream(messages):
            text += delta
            if "\n" in text.strip() or len(text) > REWRITE_MAX_CHARS:
                break
        return text.strip() or None

    return rewrite


def _asked(turn: Turn) -> tuple[str, str, str]:
    """What is asked (the standalone question), in which language, and the questions'
    text whose numbers and dates an answer may repeat (the previous one too)."""
    resolved = turn.resolved
    return (
        resolved.standalone,
        resolved.language,
        f"{resolved.previous or ''}\n{resolved.standalone}",
    )


def _quote_instead(turn: Turn, dropped: int = 0) -> Answer:
    """The sentences that answer what is asked, quoted, in place of the model's reply;
    a refusal when none does."""
    assert turn.pipeline is not None, "the retrieve stage runs first"
    best = answering(turn.pipeline.best(), *_asked(turn))
    if not best:
        support = {"supported": 0, "recited": 0, "dropped": dropped}
        return _answer(turn, refusal_message(turn.resolved.language), True, [], support)
    text, citations = extractive(best, turn.resolved.language)
    return _answer(turn, text, False, citations, _quoted(citations, dropped))


def _quoted(citations: list[Citation], dropped: int = 0) -> dict[str, int]:
    """Support of an answer that quotes its sources: each quote supports itself."""
    return {"supported": len(citations), "recited": 0, "dropped": dropped}


def _answer(
    turn: Turn,
    text: str,
    refused: bool,
    citations: list[Citation],
    support: dict[str, int] | None = None,
) -> Answer:
    resolved = turn.resolved
    turn.timings.setdefault("first_token_ms", turn.elapsed_ms())
    turn.timings["total_ms"] = turn.elapsed_ms()
    answer = Answer(
        turn.question,
        resolved.language,
        text,
        refused,
        citations,
        turn.hits,
        turn.llm,
        turn.timings,
        resolved.standalone,
    )
    answer.support = support or {"supported": 0, "recited": 0, "dropped": 0}
    return answer


__all__ = ["Stages", "Turn", "prompt"]
