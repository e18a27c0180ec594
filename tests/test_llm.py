"""The LLM backends end to end: `openai` against a small OpenAI-compatible server
started here (streamed chat completions, as llama.cpp's server, vLLM and Ollama speak
them), and the real packaged model (`local`, marked llm) on a few seed questions."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rag.answer import fixed_messages
from rag.config import ConfigError, Settings
from rag.cpu import TILED_PROMPT_FLAGS, repacks_weights
from rag.engine import Delta, Engine, Finished, Retrieved
from rag.indexer import index_folder
from rag.llm import Message, PrefillMeter, chatml, context_budget, fixed_part

from .conftest import ROOT, SEEDS

SEED = "002_d6db562a30fbc1a0.txt"  # Dong Nai, Quang Ninh, Lam Dong
REPLY = ["Dong Nai has about ", "90 innovative ", "startups [1]. ", "It also has invented [7]."]


class ChatServer(ThreadingHTTPServer):
    """Answers every chat completion with REPLY, streamed; remembers the requests."""

    requests: list[dict[str, Any]]
    headers_seen: list[dict[str, str]]


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        self.server.headers_seen.append(dict(self.headers))
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, text in enumerate(REPLY):
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": text}
                        if i == 0
                        else {"content": text},
                        "finish_reason": None,
                    }
                ],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer(("127.0.0.1", 0), ChatHandler)
    server.requests, server.headers_seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def seed_settings(tmp_path: Path, embedder) -> Settings:  # type: ignore[no-untyped-def]
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SEEDS / SEED, docs / SEED)
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    return settings


def server_settings(settings: Settings, server: ChatServer) -> Settings:
    host, port = server.server_address[:2]
    return Settings.from_env(
        docs_dir=settings.docs_dir,
        store_dir=settings.store_dir,
        llm="openai",
        llm_base_url=f"http://{host}:{port}/v1",
        llm_model="tiny-test-model",
        llm_api_key="secret-key",
    )


def test_openai_backend_streams_a_cited_answer(
    seed_settings: Settings, chat_server: ChatServer, embedder
) -> None:
    engine = Engine(server_settings(seed_settings, chat_server))
    engine._embedder = embedder
    events = list(engine.ask_stream("How many innovative startups does Dong Nai have?"))

    assert isinstance(events[0], Retrieved) and events[0].hits  # evidence comes first
    deltas = [e.text for e in events if isinstance(e, Delta)]
    assert len(deltas) > 1 and "".join(deltas) == "".join(REPLY)  # streamed as it came
    answer = events[-1].answer
    assert isinstance(events[-1], Finished) and answer.backend == "openai"
    assert not answer.refused and answer.language == "en"
    # [7] was never a source: dropped; [1] resolves to a verbatim quote of the seed
    assert [c.n for c in answer.citations] == [1]
    citation = answer.citations[0]
    assert citation.file == SEED and "90" in citation.quote
    text = (seed_settings.docs_dir / SEED).read_text("utf-8").splitlines()
    assert citation.quote in "\n".join(text[citation.lines[0] - 1 : citation.lines[1]])
    assert "[7]" not in answer.answer

    (request,) = chat_server.requests
    assert request["model"] == "tiny-test-model" and request["stream"] is True
    sent = [(m["role"], m["content"]) for m in request["messages"]]
    assert sent[: len(fixed_messages())] == [(m.role, m.content) for m in fixed_messages()]
    assert sent[-1][0] == "user" and "Dong Nai" in sent[-1][1]
    assert chat_server.headers_seen[0]["Authorization"] == "Bearer secret-key"


def test_cli_ask_through_an_openai_compatible_server(
    seed_settings: Settings, chat_server: ChatServer
) -> None:
    host, port = chat_server.server_address[:2]
    env = {
        **os.environ,
        "RAG_DOCS": str(seed_settings.docs_dir),
        "RAG_STORE": str(seed_settings.store_dir),
        "RAG_LLM_BASE_URL": f"http://{host}:{port}/v1",
        "RAG_LLM_MODEL": "tiny-test-model",
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "rag.cli", "ask", "Dong Nai startups?", "--llm", "openai", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["backend"] == "openai" and not answer["refused"]
    assert [c["file"] for c in answer["citations"]] == [SEED]
    assert set(answer["timings"]) >= {"retrieve_ms", "first_token_ms", "total_ms"}


@pytest.mark.llm
@pytest.mark.parametrize(
    ("question", "language"),
    [
        ("How many innovative startups does Dong Nai have?", "en"),
        ("Tỉnh Đồng Nai có bao nhiêu startup đổi mới sáng tạo?", "vi"),
    ],
)
def test_local_model_answers_in_the_question_language_with_citations(
    seed_settings: Settings, embedder, question: str, language: str
) -> None:
    engine = Engine(seed_settings)
    engine._embedder = embedder
    answer = engine.ask(question, llm="local")
    assert not answer.refused and answer.language == language
    assert answer.citations and all(c.file == SEED for c in answer.citations)
    assert "90" in answer.answer


class _Measured:
    name = "local"

    def __init__(self, tokens_per_s: float | None) -> None:
        self.prefill = PrefillMeter()
        self.prefill.tokens_per_s = tokens_per_s


def test_fixed_context_budget_is_taken_as_set() -> None:
    assert context_budget("450", _Measured(500.0), 0.1, 2.5) == 450  # type: ignore[arg-type]


def test_auto_context_budget_follows_the_measured_prompt_speed() -> None:
    slow, fast = _Measured(200.0), _Measured(400.0)
    assert context_budget("auto", slow, 0.2, 2.5) == int((2.5 - 0.2 - 0.1) * 200 - 80)  # type: ignore[arg-type]
    assert context_budget("auto", fast, 0.2, 2.5) > context_budget("auto", slow, 0.2, 2.5)  # type: ignore[arg-type]
    assert context_budget("auto", _Measured(10.0), 0.2, 2.5) == 200  # floor  # type: ignore[arg-type]
    assert context_budget("auto", _Measured(9999.0), 0.2, 2.5) == 1500  # ceiling  # type: ignore[arg-type]
    assert context_budget("auto", _Measured(None), 0.2, 2.5) == 280  # not measured yet  # type: ignore[arg-type]
    assert context_budget("auto", None, 0.2, 2.5) == 1000  # no local model: a server


def test_prefill_meter_ignores_prompts_too_short_to_time() -> None:
    meter = PrefillMeter()
    meter.record(10, 0.1)  # a cached prompt: mostly the first decode step
    assert meter.tokens_per_s is None
    meter.record(300, 3.0)
    meter.record(300, 1.5)
    assert meter.tokens_per_s == pytest.approx(0.7 * 100 + 0.3 * 200)


def test_context_tokens_setting_is_a_number_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CONTEXT_TOKENS", "Auto")
    assert Settings.from_env().context_tokens == "auto"
    monkeypatch.setenv("RAG_CONTEXT_TOKENS", "-3")
    with pytest.raises(ConfigError, match="RAG_CONTEXT_TOKENS"):
        Settings.from_env()


ZEN4 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"})


def test_weights_are_left_unpacked_only_where_the_tiled_prompt_kernel_wins() -> None:
    assert TILED_PROMPT_FLAGS <= ZEN4
    assert not repacks_weights("auto", ZEN4)  # measured: prompts ~1.4x faster unpacked
    assert repacks_weights("auto", frozenset({"avx", "avx2", "fma"}))  # AVX2: repacked
    assert repacks_weights("auto", ZEN4 - {"avx512_vnni"})  # AVX-512 without VNNI
    assert repacks_weights("auto", frozenset())  # nothing known (not Linux)
    assert repacks_weights("on", ZEN4) and not repacks_weights("off", frozenset({"avx2"}))


@pytest.mark.llm
def test_local_model_measures_its_prompt_speed_while_warming_up(
    seed_settings: Settings, embedder
) -> None:
    engine = Engine(seed_settings)
    engine._embedder = embedder
    engine.prime("local")
    backend = engine.backend("local")
    speed = backend.prefill.tokens_per_s  # type: ignore[union-attr]
    assert speed is not None and 5 < speed < 5000
    # the model was loaded as this CPU's RAG_LLM_REPACK=auto decided
    loaded = backend._llm._model.model_params.use_extra_bufts  # type: ignore[union-attr]
    assert loaded == backend.repack  # type: ignore[union-attr]
    answer = engine.ask("How many innovative startups does Dong Nai have?", llm="local")
    assert 200 <= answer.timings["context_tokens"] <= 1500


def test_the_fixed_part_is_the_examples_and_the_templates_head_not_the_sources() -> None:
    from rag.answer import build_messages

    first = build_messages("Who chairs it?", [], "en")
    other = build_messages("Wer leitet den Verband?", [], "de")
    fixed = fixed_part(first)
    assert fixed == fixed_part(other)
    assert chatml(first).startswith(fixed) and chatml(other).startswith(fixed)
    assert fixed.endswith("<|im_start|>user\nSources:\n")
    # without worked examples nothing of the question's message is fixed
    alone = [Message("system", "Be brief."), Message("user", "Sources:\n[1] x")]
    assert fixed_part(alone) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


@pytest.mark.llm
def test_local_model_replies_the_same_to_a_prompt_whatever_came_before(
    seed_settings: Settings,
) -> None:
    from rag.answer import build_messages
    from rag.llm import LocalBackend

    backend = LocalBackend(dataclasses.replace(seed_settings, llm_max_tokens=24))
    question = build_messages("Who chairs the association?", [], "en")
    other = build_messages("Wer hat den Kai eröffnet? Bitte ausführlich.", [], "de")
    first = "".join(backend.stream(question))
    "".join(backend.stream(other))
    again = "".join(backend.stream(question))
    # and after its own longer prompt, which shares more than the fixed messages
    "".join(backend.stream([*question[:-1], Message("user", question[-1].content + " Why?")]))
    assert first and "".join(backend.stream(question)) == again == first
