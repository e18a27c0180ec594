"""Answer building with a deterministic stand-in embedder (the real one is tested
end to end in the Q&A regression and the engine tests)."""

from __future__ import annotations

import re
import zlib
from dataclasses import replace

import numpy as np

from rag.answer import (
    Evidence,
    SentenceVectors,
    answering,
    build_messages,
    extractive,
    fixed_messages,
    is_refusal,
    prompt_file,
    rank_key,
    refusal_message,
    stream_hold,
)
from rag.config import Settings
from rag.engine import Engine
from rag.grounding import ground
from rag.llm import Message
from rag.records import Chunk, Hit
from rag.support import figures, verify_claims


class WordEmbedder:
    """Bag-of-words vectors: texts sharing words are similar; fully deterministic."""

    dim = 512
    identity = "word-bag-512"  # what the sentence-vector cache keys on

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            vector[zlib.crc32(word.encode()) % self.dim] += 1.0
        norm = np.linalg.norm(vector)
        return vector / norm if norm else vector

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim))

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)


def make_hit(path: str, text: str, rank: int, first_line: int = 1) -> Hit:
    rows = text.split("\n")
    chunk = Chunk(
        chunk_id=f"id-{rank}",
        path=path,
        index=0,
        text=text,
        start_char=0,
        end_char=len(text),
        first_line=first_line,
        last_line=first_line + 2 * (len(rows) - 1),
        language="en",
        content_hash="h",
        url=f"https://example.org/{rank}",
        line_map=tuple(first_line + 2 * i for i in range(len(rows))),
    )
    return Hit(chunk=chunk, score=1.0 / rank, rank=rank, dense_score=0.9)


HITS = [
    make_hit("a.txt", "Dong Nai has about 90 innovative startups.\nThe weather was fine.", 1, 10),
    make_hit("b.txt", "Quang Ninh supports 500 startups. Ho Chi Minh City hosts 140 firms.", 2, 3),
]
EMBEDDER = WordEmbedder()


def evidence(question: str) -> Evidence:
    return Evidence(HITS, EMBEDDER.embed_query(question), EMBEDDER)


class CountingEmbedder:
    def __init__(self, identity: str | None) -> None:
        if identity is not None:
            self.identity = identity
        self.embedded: list[str] = []

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        return np.ones((len(texts), 2), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return np.ones(2, dtype=np.float32)


def test_sentence_vectors_are_keyed_by_the_embedders_identity() -> None:
    cache = SentenceVectors()
    first, same_model = CountingEmbedder("e5"), CountingEmbedder("e5")
    cache.embed(first, ["a", "b"])
    cache.embed(same_model, ["a", "b", "c"])
    assert first.embedded == ["a", "b"] and same_model.embedded == ["c"]
    other_model = CountingEmbedder("other")
    cache.embed(other_model, ["a"])
    assert other_model.embedded == ["a"]
    anonymous = CountingEmbedder(None)  # no identity: nothing says which model it is
    cache.embed(anonymous, ["a"])
    cache.embed(anonymous, ["a"])
    assert anonymous.embedded == ["a", "a"]


def test_sentences_are_scored_and_ranked_against_the_question() -> None:
    ranked = evidence("How many startups does Dong Nai have?").ranked()
    assert ranked[0].text == "Dong Nai has about 90 innovative startups."


def test_select_keeps_the_budget_and_numbers_sources_in_retrieval_order() -> None:
    sources = evidence("startups in Dong Nai and Quang Ninh").select(token_budget=30)
    assert [s.n for s in sources] == list(range(1, len(sources) + 1))
    assert sum(len(s.sentences) for s in sources) >= 1
    assert [s.hit.rank for s in sources] == sorted(s.hit.rank for s in sources)
    tight = evidence("startups in Dong Nai").select(token_budget=1)
    assert sum(len(s.sentences) for s in tight) == 1  # the best sentence always fits


def test_extractive_quotes_exact_text_with_its_line() -> None:
    sources = evidence("How many startups does Dong Nai have?").best(1, 0.0)
    text, citations = extractive(sources, "de")
    assert text.startswith("Aus den Quellen:")
    assert citations[0].quote == "Dong Nai has about 90 innovative startups."
    assert citations[0].quote in HITS[0].chunk.text
    assert citations[0].lines == (10, 10) and citations[0].url == "https://example.org/1"


def test_quote_on_a_later_line_maps_to_that_line() -> None:
    sources = evidence("weather fine").best(1, 0.0)
    _, citations = extractive(sources, "en")
    assert citations[0].quote == "The weather was fine." and citations[0].lines == (12, 12)


def test_ground_drops_invented_numbers_and_quotes_the_closest_sentence() -> None:
    sources = evidence("startups Dong Nai Ho Chi Minh City firms").select(200)
    n_b = next(s.n for s in sources if s.hit.chunk.path == "b.txt")
    reply = f"Ho Chi Minh City hosts 140 firms [{n_b}]. Invented fact [7]."
    grounded = ground(reply, sources, EMBEDDER)
    assert not grounded.untied
    assert "[7]" not in grounded.text
    assert [(c.n, c.quote) for c in grounded.citations] == [
        (n_b, "Ho Chi Minh City hosts 140 firms.")
    ]


def test_ground_attaches_an_uncited_but_supported_reply() -> None:
    sources = evidence("Dong Nai startups").select(200)
    grounded = ground("Dong Nai has about 90 innovative startups.", sources, EMBEDDER)
    assert not grounded.untied and grounded.citations
    assert grounded.citations[0].path == "a.txt"
    assert re.search(r"\[\d\]\.?$", grounded.text)


def test_a_claim_without_facts_must_resemble_the_sentence_it_cites() -> None:
    sources = evidence("Dong Nai startups weather").select(200)
    n_a = next(s.n for s in sources if s.hit.chunk.path == "a.txt")
    kept = ground(f"The weather was fine [{n_a}].", sources, EMBEDDER)
    assert not kept.untied and [c.quote for c in kept.citations] == ["The weather was fine."]
    # "Yes, it is paid [1]" after a question about a free course: nothing in [1] says
    # anything like it, so the citation would make it look grounded
    paid = ground(f"Yes, it is paid [{n_a}].", sources, EMBEDDER)
    assert paid.untied and not paid.text
    # the caller quotes the sources instead, and says the reply's claim was dropped
    assert paid.dropped == 1


def test_a_reply_that_only_repeats_the_question_is_no_answer() -> None:
    # "Вьетнама [2]." for "who heads the Association ... of Vietnam?": every word is
    # the question's, so it answers nothing, though [2] states the name
    sources = evidence("Dong Nai startups").select(200)
    n_a = next(s.n for s in sources if s.hit.chunk.path == "a.txt")
    asked = "How many innovative startups does Dong Nai have?"
    echo = ground(f"Dong Nai [{n_a}].", sources, EMBEDDER, asked)
    assert echo.untied and echo.dropped == 1  # the caller quotes the sources instead
    stated = ground(f"Dong Nai has about 90 innovative startups [{n_a}].", sources, EMBEDDER, asked)
    assert not stated.untied and stated.kept == 1


def test_ground_gives_up_on_an_unsupported_uncited_reply() -> None:
    sources = evidence("Dong Nai startups").select(200)
    grounded = ground("Paris is the capital of France.", sources, EMBEDDER)
    assert grounded.untied and grounded.dropped == 1 and not grounded.citations


def test_figures_match_however_they_are_written() -> None:
    assert figures("41 200 Fahrgäste, 1,6 milliarder, 80 % and 3-3,5") == {
        "412",
        "16",
        "80",  # one significant digit keeps its zeros: "80" is not "8" nor "800"
        "3",
        "35",
    }
    assert figures("41,200 passengers, 1.6 billion, 80% and 3–3.5") == figures(
        "41.200, 1,600 million, 80 and 3 - 3.5"
    )
    assert figures("In 2025, 30 firms") == {"2025", "30"}  # a year is not a thousands group
    assert figures("no figures here") == set()


def test_ground_drops_a_claim_whose_figure_is_in_no_source() -> None:
    sources = evidence("startups Dong Nai").select(200)
    reply = "Dong Nai has about 90 innovative startups [1]. It was founded in 1998 [1]."
    grounded = ground(reply, sources, EMBEDDER)
    assert not grounded.refused and not grounded.untied
    assert grounded.support() == {"supported": 1, "recited": 0, "dropped": 1}
    assert "1998" not in grounded.text and "90 innovative startups" in grounded.text
    assert [c.quote for c in grounded.citations] == ["Dong Nai has about 90 innovative startups."]


def test_ground_refuses_a_reply_made_of_invented_figures() -> None:
    sources = evidence("population of Dong Nai").select(200)
    grounded = ground("Dong Nai has 1 350 inhabitants [1].", sources, EMBEDDER)
    assert not grounded.untied and grounded.refused and not grounded.citations
    # a figure the question gave is no invention
    asked = ground("Dong Nai has 1 350 inhabitants [1].", sources, EMBEDDER, "Is it 1350?")
    assert not asked.untied and not asked.refused


def test_ground_drops_a_neighbours_figure_attributed_to_the_asked_entity() -> None:
    # "500 startups" is Quang Ninh's: said of Dong Nai it is supported by no sentence
    sources = evidence("startups Dong Nai Quang Ninh").select(200)
    grounded = ground("Dong Nai supports 500 startups [2].", sources, EMBEDDER, "Dong Nai?")
    assert not grounded.untied and grounded.refused
    assert grounded.support() == {"supported": 0, "recited": 0, "dropped": 1}


def test_every_claim_shown_carries_the_marker_of_the_sentence_it_rests_on() -> None:
    # found with the local model: a fact-less second sentence, uncited, was attached to
    # a source sentence and listed among the citations, but shown without a marker
    sources = evidence("startups Dong Nai weather").select(200)
    n_a = next(s.n for s in sources if s.hit.chunk.path == "a.txt")
    reply = f"Dong Nai has about 90 innovative startups [{n_a}]. The weather was fine."
    grounded = ground(reply, sources, EMBEDDER)
    assert not grounded.refused and not grounded.untied
    assert (
        grounded.text
        == f"Dong Nai has about 90 innovative startups [{n_a}]. The weather was fine [{n_a}]."
    )
    # one close to no source sentence is left out, not shown uncited
    loose = ground(f"{reply} Paris is lovely in spring.", sources, EMBEDDER)
    assert not loose.untied and "Paris" not in loose.text
    assert loose.support() == {"supported": 2, "recited": 0, "dropped": 1}


def test_a_name_taken_from_the_sentence_before_is_cited_with_it() -> None:
    # "The city hosts 140 firms" states the figure, the sentence before it the name:
    # both are quoted, so the citation shows all the claim rests on
    hits = [
        make_hit("c.txt", "Ho Chi Minh City is a hub for technology. The city hosts 140 firms.", 1),
        make_hit("d.txt", "Quang Ninh supports 500 startups.", 2),
    ]
    sources = Evidence(hits, EMBEDDER.embed_query("firms city"), EMBEDDER).select(200)
    n = next(s.n for s in sources if s.hit.chunk.path == "c.txt")
    reply = f"Ho Chi Minh City hosts 140 firms [{n}]."
    grounded = ground(reply, sources, EMBEDDER)
    assert not grounded.untied and grounded.text == reply
    assert [c.quote for c in grounded.citations] == [
        "Ho Chi Minh City is a hub for technology.",
        "The city hosts 140 firms.",
    ]
    quotes = {n: [c.quote for c in grounded.citations]}
    assert verify_claims(grounded.text, quotes) == [True]  # rag eval's own check agrees


def test_ground_recites_a_claim_to_the_sentence_that_states_it() -> None:
    sources = evidence("startups Dong Nai Quang Ninh").select(200)
    n_a = next(s.n for s in sources if s.hit.chunk.path == "a.txt")
    n_b = next(s.n for s in sources if s.hit.chunk.path == "b.txt")
    grounded = ground(f"Quang Ninh supports 500 startups [{n_a}].", sources, EMBEDDER)
    assert not grounded.refused and not grounded.untied
    assert grounded.support() == {"supported": 0, "recited": 1, "dropped": 0}
    assert grounded.text == f"Quang Ninh supports 500 startups [{n_b}]."
    assert [c.path for c in grounded.citations] == ["b.txt"]


def test_ground_keeps_only_the_markers_of_sources_that_state_the_claim() -> None:
    # found in a golden answer: "... [1] [2]" where only [1]'s sentence states the claim
    # kept [2] in the text with no citation for it
    sources = evidence("startups Dong Nai Quang Ninh").select(200)
    n_a = next(s.n for s in sources if s.hit.chunk.path == "a.txt")
    n_b = next(s.n for s in sources if s.hit.chunk.path == "b.txt")
    grounded = ground(
        f"Dong Nai has about 90 innovative startups [{n_a}] [{n_b}].", sources, EMBEDDER
    )
    assert not grounded.refused and not grounded.untied
    assert grounded.support() == {"supported": 1, "recited": 0, "dropped": 0}
    assert grounded.text == f"Dong Nai has about 90 innovative startups [{n_a}]."
    assert [c.path for c in grounded.citations] == ["a.txt"]


def test_ground_refuses_a_reply_that_says_the_sources_lack_the_fact() -> None:
    sources = evidence("weather Berlin").select(200)
    for reply in (
        "Das Wetter morgen in Berlin wird nicht angegeben [1].",
        "Thời tiết ngày mai không được cập nhật trong các nguồn [1].",
        "The sources do not mention the weather.",
    ):
        grounded = ground(reply, sources, EMBEDDER)
        assert not grounded.untied and grounded.refused, reply


def test_ground_keeps_the_answer_and_drops_only_the_not_found_sentence() -> None:
    sources = evidence("startups Dong Nai").select(200)
    reply = "Dong Nai has about 90 innovative startups [1]. Their founding year is not mentioned."
    grounded = ground(reply, sources, EMBEDDER)
    assert not grounded.refused and not grounded.untied
    assert "not mentioned" not in grounded.text and "90" in grounded.text


def test_refusals_are_the_marker_or_nothing() -> None:
    assert is_refusal("NOT_FOUND")
    assert is_refusal("  not_found")
    assert is_refusal("")
    assert not is_refusal("Dong Nai has 90 startups [1].")
    assert refusal_message("ru") != refusal_message("en")
    assert refusal_message("xx") == refusal_message("en")


def test_stream_hold_never_shows_a_refusal_marker() -> None:
    assert "".join(stream_hold(iter(["NOT", "_FO", "UND"]))) == ""
    assert "".join(stream_hold(iter(["Dong", " Nai", " has"]))) == "Dong Nai has"
    assert "".join(stream_hold(iter(["N", "o, it has 90 [1]."]))) == "No, it has 90 [1]."


def test_the_warm_up_prompt_pins_what_every_question_pins() -> None:
    from rag.answer import warm_up_messages
    from rag.llm import chatml, fixed_part

    sources = evidence("Dong Nai startups").select(200)
    question = build_messages("Wie viele Startups hat Dong Nai?", sources, "de")
    warm_up = warm_up_messages()
    assert fixed_part(warm_up) == fixed_part(question)
    # and the same text follows, so llama.cpp splits both into the same tokens there
    fixed = fixed_part(question)
    assert chatml(warm_up)[len(fixed) :][:4] == chatml(question)[len(fixed) :][:4] == "[1] "


def test_prompt_keeps_the_fixed_part_first_and_names_the_language() -> None:
    sources = evidence("Dong Nai startups").select(200)
    messages = build_messages("Wie viele Startups hat Dong Nai?", sources, "de")
    fixed = fixed_messages()
    # the system prompt and the worked examples, identical for every question (cached)
    assert messages[: len(fixed)] == list(fixed)
    assert fixed[0].role == "system"
    assert fixed[0].content == prompt_file("system.txt").strip()
    assert [m.role for m in fixed[1:]] == ["user", "assistant"] * ((len(fixed) - 1) // 2)
    question = messages[-1]
    assert question.role == "user" and len(messages) == len(fixed) + 1
    assert question.content.startswith("Sources:\n[1] ")
    assert "a.txt" not in question.content  # file names only cost prompt tokens
    assert "Answer in German" in question.content
    assert "Question: Wie viele Startups hat Dong Nai?\n" in question.content


class PrefixRecorder:
    """A local-looking LLM that records its prompts and would stream forever."""

    name = "local"

    def __init__(self) -> None:
        self.prompts: list[list[Message]] = []
        self.tokens = 0

    def stream(self, messages: list[Message]):  # type: ignore[no-untyped-def]
        self.prompts.append(list(messages))
        while True:
            self.tokens += 1
            yield "token "


def test_prime_sends_the_fixed_prefix_once_and_stops_at_the_first_token() -> None:
    engine = Engine(Settings())
    recorder = PrefixRecorder()
    engine._backends["local"] = recorder  # type: ignore[assignment]
    engine.prime("local")
    (prompt,) = recorder.prompts
    assert tuple(prompt[:-1]) == fixed_messages()
    assert recorder.tokens == 1
    engine._backends["none"] = None
    engine.prime("none")  # no model: nothing to do
    assert len(recorder.prompts) == 1


def test_ground_finds_the_city_that_die_stadt_means_in_the_sentence_before() -> None:
    # "Die Stadt" is an article and a noun, no name: the sentence with the figure names
    # nothing, so the city is looked for in the sentence before it
    text = (
        "Der Direktor von Ho-Chi-Minh-Stadt, Lam Dinh Thang, sprach am Montag.\n"
        "Die Stadt beherbergt mehr als 140 Unternehmen."
    )
    hits = [make_hit("c.txt", text, 1), make_hit("d.txt", "Quang Ninh hat 500 Startups.", 2)]
    hits = [replace(h, chunk=replace(h.chunk, language="de")) for h in hits]
    sources = Evidence(hits, EMBEDDER.embed_query("Unternehmen"), EMBEDDER).select(200)
    n = next(s.n for s in sources if s.hit.chunk.path == "c.txt")
    reply = f"Ho-Chi-Minh-Stadt hat mehr als 140 Unternehmen [{n}]."
    grounded = ground(reply, sources, EMBEDDER, "Wie viele Unternehmen hat Ho-Chi-Minh-Stadt?")
    assert not grounded.refused and not grounded.untied
    assert grounded.support() == {"supported": 1, "recited": 0, "dropped": 0}


def test_asked_how_many_only_sentences_stating_an_amount_are_quoted() -> None:
    question = "How many startups does Dong Nai have?"
    quoted = answering(evidence(question).best(4, 1.0), question, "en", question)
    assert [s.text for source in quoted for s in source.sentences] == [
        "Dong Nai has about 90 innovative startups.",
        "Quang Ninh supports 500 startups.",
        "Ho Chi Minh City hosts 140 firms.",
    ]
    assert [source.n for source in quoted] == [1, 2]  # renumbered, "The weather" left out


def test_an_amount_the_question_holds_itself_answers_nothing() -> None:
    question = "How many of the 90 startups are in Dong Nai?"
    weather = [make_hit("c.txt", "Dong Nai has 90 startups.\nThe weather was fine.", 1)]
    found = Evidence(weather, EMBEDDER.embed_query(question), EMBEDDER).best(4, 1.0)
    assert answering(found, question, "en", question) == []
    # any other kind of question keeps every sentence
    assert answering(found, "Who leads Dong Nai?", "en", question) == found


def test_a_sentence_is_scored_with_the_one_before_it_which_names_its_subject() -> None:
    """Two sentences alike but for whom they speak of, which only the sentence before
    each says: read in context (as a quoted answer ranks them), the one about the asked
    province comes first, though its passage was retrieved second. Without those
    sentences before them, retrieval order decides."""
    question = EMBEDDER.embed_query("What will Lam Dong become?")

    def order(dong: str, lam: str) -> list[str]:
        hits = [make_hit("dong.txt", dong, 1), make_hit("lam.txt", lam, 2)]
        scored = sorted(Evidence(hits, question, EMBEDDER).in_context(), key=rank_key)
        return [s.text for s in scored if s.text.startswith("It will")]

    port, hub = "It will become a port.", "It will become a hub."
    assert order(f"Dong Nai merged. {port}", f"Lam Dong merged. {hub}") == [hub, port]
    assert order(port, hub) == [port, hub]
