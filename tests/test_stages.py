"""The answer path as stages: each testable alone, and swappable without patching."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rag.config import Settings
from rag.conversation import resolve
from rag.engine import Engine
from rag.indexer import index_folder
from rag.llm import Message
from rag.records import Finished, Retrieved
from rag.stages import Stages, Turn, gate, plan, prompt, retrieve
from rag.support import states_amount

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
TECHFEST = "002_d6db562a30fbc1a0.txt"  # Dong Nai 90 startups, Lam Dong 3,4 million
DONG_NAI = "How many innovative startups does Dong Nai have?"


class ScriptedBackend:
    """An LLM that replies with a fixed text (the check stage is what is tested)."""

    name = "scripted"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.messages: list[Message] = []

    def stream(self, messages: list[Message]) -> Iterator[str]:
        self.messages = list(messages)
        yield self.reply


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, embedder) -> Engine:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("stages")
    docs = root / "docs"
    docs.mkdir()
    shutil.copy(SEEDS / TECHFEST, docs / TECHFEST)
    settings = Settings.from_env(docs_dir=docs, store_dir=root / "store")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    built = Engine(settings)
    built._embedder = embedder
    return built


def scripted(engine: Engine, reply: str) -> ScriptedBackend:
    backend = ScriptedBackend(reply)
    engine._backends["openai"] = backend  # type: ignore[assignment]
    return backend


def test_plan_and_retrieve_alone(engine: Engine) -> None:
    history = [{"role": "user", "content": DONG_NAI}, {"role": "assistant", "content": "90 [1]."}]
    turn = Turn("And Lam Dong?", history, "none", None)
    turn.plan = plan(engine, turn)
    assert turn.plan.follow_up and "Lam Dong" in turn.plan.standalone
    hits = retrieve(engine, turn)
    assert hits and hits[0].chunk.path == TECHFEST and turn.vector is not None
    turn.hits = hits
    assert gate(engine, turn) is False


def test_a_claim_about_the_neighbour_is_dropped_and_refused(engine: Engine) -> None:
    # Lam Dong's 3,4 million said of Dong Nai: no sentence states it
    scripted(engine, "Dong Nai has 3.4 million inhabitants [1].")
    answer = engine.ask("How many inhabitants does Dong Nai have?", llm="openai")
    assert answer.refused
    assert answer.support == {"supported": 0, "recited": 0, "dropped": 1}


def test_a_supported_claim_is_kept_with_its_quote(engine: Engine) -> None:
    scripted(engine, "Dong Nai has about 90 innovative startups [1].")
    answer = engine.ask(DONG_NAI, llm="openai")
    assert not answer.refused and answer.support["dropped"] == 0
    assert any("90" in c.quote and "Dong Nai" in c.quote for c in answer.citations)


def test_a_reply_naming_what_no_passage_names_is_refused(engine: Engine) -> None:
    scripted(engine, "The startups were founded by Tadej Pogačar [1].")
    assert engine.ask(DONG_NAI, llm="openai").refused


def test_a_stage_is_swapped_without_patching_the_engine(engine: Engine) -> None:
    original = engine.stages
    try:
        engine.stages = replace(engine.stages, gate=lambda _engine, _turn: True)
        events = list(engine.ask_stream(DONG_NAI, llm="none"))
        retrieved = next(e for e in events if isinstance(e, Retrieved))
        finished = next(e for e in events if isinstance(e, Finished))
        assert retrieved.refused and finished.answer.refused
    finally:
        engine.stages = original
    assert engine.stages == Stages()
    assert not engine.ask(DONG_NAI, llm="none").refused


def test_a_follow_up_is_resolved_by_rule_unless_the_llm_rewrite_is_asked_for(
    engine: Engine,
) -> None:
    history = [{"role": "user", "content": DONG_NAI}, {"role": "assistant", "content": "90 [1]."}]
    backend = ScriptedBackend("How many innovative startups does Lam Dong have?")
    by_rule = plan(engine, Turn("And Lam Dong?", history, "scripted", backend))
    assert by_rule.method == "rules" and not backend.messages  # the model was not asked
    rewriting = copy.copy(engine)
    rewriting.settings = replace(engine.settings, followup_rewrite="llm")
    by_llm = plan(rewriting, Turn("And Lam Dong?", history, "scripted", backend))
    assert by_llm.method == "llm" and backend.messages
    assert by_llm.standalone == "How many innovative startups does Lam Dong have?"


def test_the_prompt_asks_the_standalone_question() -> None:
    history = [{"role": "user", "content": DONG_NAI}, {"role": "assistant", "content": "90 [1]."}]
    turn = Turn("And Lam Dong?", history, "scripted", None)
    turn.plan = resolve("And Lam Dong?", history, 6)
    assert f"Question: {turn.plan.standalone}\n" in prompt(turn)[-1].content


def test_an_amount_asked_and_not_given_is_quoted_from_a_sentence_stating_one(
    engine: Engine,
) -> None:
    # the model talks around "how many": the sentence with the figure answers instead
    scripted(engine, "Dong Nai supports innovative startups in many ways [1].")
    answer = engine.ask(DONG_NAI, llm="openai")
    assert not answer.refused and "90" in answer.answer
    # each quote states an amount: a figure, or a number word ("de fire interessentene")
    assert all(states_amount(c.quote, "no", DONG_NAI) for c in answer.citations)
    assert answer.support["dropped"] == 1


def test_a_reply_tied_to_no_source_is_quoted_instead_and_its_claims_counted_dropped(
    engine: Engine,
) -> None:
    # nothing in the reply resembles a source sentence: the sources are quoted, and
    # the support figures still say the model's claims were left out
    scripted(engine, "Paris is lovely in spring. The Seine runs through it.")
    answer = engine.ask(DONG_NAI, llm="openai")
    assert not answer.refused and "Paris" not in answer.answer
    assert answer.citations and all(c.path == TECHFEST for c in answer.citations)
    assert answer.support == {"supported": len(answer.citations), "recited": 0, "dropped": 2}
