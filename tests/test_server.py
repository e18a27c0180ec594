"""`rag serve` for real: a uvicorn process on a free port over an indexed copy of the
seeds, spoken to with httpx, the official `openai` client and the `rag` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.config import Settings
from rag.indexer import index_folder

from .conftest import ROOT, SEEDS

KEY = "test-key-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}
DONG_NAI = "How many innovative startups does Dong Nai have?"


class Served:
    """A running `rag serve` subprocess and what it was started with."""

    def __init__(self, process: subprocess.Popen[str], url: str, env: dict[str, str]) -> None:
        self.process, self.url, self.env = process, url, env

    def http(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def _env(store: Path, docs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({"RAG_STORE": str(store), "RAG_DOCS": str(docs), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def start_server(env: dict[str, str], *args: str) -> Served:
    command = [sys.executable, "-m", "rag.cli", "serve", "--port", "0", *args]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "serving on http://127.0.0.1:PORT (docs: ...)"
    if not line.startswith("serving on "):
        process.kill()
        raise AssertionError(f"rag serve did not start: {line}{process.stderr.read()}")
    served = Served(process, line.split()[2], env)
    deadline = time.monotonic() + 120
    while not httpx.get(f"{served.url}/health").json()["ready"]:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.2)
    return served


@pytest.fixture(scope="module")
def seed_store(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("served")
    store, docs = root / "store", root / "docs"
    docs.mkdir()
    for path in sorted(SEEDS.iterdir()):
        (docs / path.name).write_bytes(path.read_bytes())
    index_folder(
        Settings.from_env(docs_dir=docs, store_dir=store),
        progress=False,
        embedder_factory=lambda: embedder,
    )
    return store, docs


@pytest.fixture(scope="module")
def server(seed_store: tuple[Path, Path]) -> Iterator[Served]:
    """Extractive answers (--llm none), an API key, a 16 KB body limit."""
    store, docs = seed_store
    served = start_server(
        _env(store, docs, RAG_API_KEY=KEY, RAG_SERVE_MAX_BODY_KB="16"), "--llm", "none"
    )
    yield served
    served.stop()


def test_health_needs_no_key_and_the_rest_does(server: Served) -> None:
    assert server.http(key=None).get("/health").json() == {"status": "ok", "ready": True}
    for key in (None, "wrong"):
        response = server.http(key=key).get("/status")
        assert response.status_code == 401
        assert "API key" in response.json()["error"]["message"]
    assert server.http().get("/status").json()["files"] == 5


def test_search_matches_the_cli_in_process(server: Served) -> None:
    hits = server.http().get("/search", params={"q": DONG_NAI, "k": 3}).json()["hits"]
    assert len(hits) == 3 and hits[0]["file"] == "002_d6db562a30fbc1a0.txt"
    local = _cli(server.env | {"RAG_SERVER": "off"}, "search", DONG_NAI, "-k", "3", "--json")
    assert [h["via"] for h in local] == ["in-process"] * 3
    assert [_without_via(h) for h in local] == hits


def test_rest_ask_streams_evidence_deltas_and_the_final_answer(server: Served) -> None:
    body = {"question": DONG_NAI, "stream": True}
    with server.http().stream("POST", "/ask", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert events[0] == "evidence" and events[-1] == "final" and "delta" in events
    answer = server.http().post("/ask", json={"question": DONG_NAI}).json()
    assert not answer["refused"] and "90" in answer["answer"]
    assert answer["citations"][0]["file"] == "002_d6db562a30fbc1a0.txt"
    assert answer["support"]["supported"] == len(answer["citations"])


def test_openai_client_gets_a_cited_answer_streamed_and_whole(server: Served) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    assert "rag" in [m.id for m in client.models.list()]
    messages: Any = [{"role": "user", "content": DONG_NAI}]
    whole = client.chat.completions.create(model="rag", messages=messages)
    text = whole.choices[0].message.content or ""
    extra = whole.model_extra["rag"]
    assert "[1]" in text and "- [1] 002_d6db562a30fbc1a0.txt, line" in text
    assert extra["citations"][0]["quote"] in text and extra["refused"] is False
    assert set(extra["support"]) == {"supported", "recited", "dropped"}
    chunks = list(client.chat.completions.create(model="rag", messages=messages, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].choices[0].finish_reason == "stop" and "rag" in chunks[-1].model_extra


def test_chat_front_end_over_plain_http_sees_footnotes_and_follow_ups(server: Served) -> None:
    """What an OpenAI-speaking chat UI does: post the conversation, stream SSE, join
    the deltas, stop at [DONE]."""
    first = _chat_ui_turn(server, [{"role": "user", "content": DONG_NAI}])
    assert "\n- [1] 002_d6db562a30fbc1a0.txt" in first
    follow_up = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": DONG_NAI},
        {"role": "assistant", "content": first},
        {"role": "user", "content": [{"type": "text", "text": "And Quang Ninh?"}]},
    ]
    assert "\n- [1] " in _chat_ui_turn(server, follow_up)
    whole = server.http().post("/v1/chat/completions", json={"messages": follow_up}).json()
    # the history resolved the follow-up: Quang Ninh, asked what was asked of Dong Nai
    query = whole["rag"]["search_query"]
    assert "Quang Ninh" in query and "innovative startups" in query and "Dong Nai" not in query


def test_off_topic_question_is_a_refusal_without_sources(server: Served) -> None:
    messages = [{"role": "user", "content": "Who won the 2022 FIFA World Cup?"}]
    reply = server.http().post("/v1/chat/completions", json={"messages": messages}).json()
    assert reply["rag"]["refused"] is True and reply["rag"]["citations"] == []
    assert "\n- [" not in reply["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "phrase"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/chat/completions", {"messages": []}, 422, "messages"),
        (
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "assistant", "content": "x"}]},
            400,
            "last message",
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
            404,
            "unknown model",
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
            400,
            "last message",
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x" * 4001}]},
            422,
            "longer than 4000 characters",
        ),
        ("POST", "/ask", {"question": "x", "llm": "gpt"}, 400, "unknown LLM backend"),
        (
            "POST",
            "/ask",
            {"question": "and why?", "history": [{"role": "user"}]},
            422,
            "history.0.content",
        ),
        ("POST", "/ask", b'{"question": "Dong Nai \xff"}', 400, "not valid UTF-8 JSON"),
        ("POST", "/ask", {"question": "x" * 17_000}, 413, "larger than 16 KB"),
        ("GET", "/search", None, 422, "q"),
        ("GET", "/nowhere", None, 404, "no route GET /nowhere"),
        ("DELETE", "/search", None, 405, "not allowed"),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    server: Served, method: str, path: str, body: Any, status: int, phrase: str
) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    if isinstance(body, bytes):
        kwargs["headers"] = {"Content-Type": "application/json"}
    response = server.http().request(method, path, **kwargs)
    assert response.status_code == status
    message = response.json()["error"]["message"]
    assert phrase in message and "Traceback" not in response.text


def test_the_key_is_checked_first_and_guards_the_schema_and_its_page(server: Served) -> None:
    # a bad body from a client without the key is refused for the key, not the body
    response = server.http(key=None).post(
        "/ask", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    for path in ("/openapi.json", "/docs"):
        assert server.http(key=None).get(path).status_code == 401
    page = server.http().get("/docs")
    # a page of the routes that loads nothing from the internet
    assert page.status_code == 200 and "/v1/chat/completions" in page.text
    assert "http" not in page.text.replace(server.url, "")


def test_an_internal_error_is_one_json_line_and_the_connection_stays_open(
    seed_store: tuple[Path, Path],
) -> None:
    """An unexpected exception in a route: JSON 500, and the exception goes no further
    (a catch-all exception handler runs in Starlette's outermost middleware, which
    re-raises it after answering: uvicorn then dropped the keep-alive connection, and
    the test client raises it)."""
    from fastapi.testclient import TestClient

    from rag.engine import Engine
    from rag.server import create_app

    store, docs = seed_store
    engine = Engine(Settings.from_env(store_dir=store, docs_dir=docs))
    engine.search = lambda *_args, **_kw: {}["broken"]  # type: ignore[method-assign]
    client = TestClient(create_app(engine))
    response = client.get("/search", params={"q": "x"})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal error: 'broken'",
        "type": "server_error",
        "code": "internal_error",
    }
    assert client.get("/health").status_code == 200


def test_streamed_oversized_body_is_refused(server: Served) -> None:
    """No Content-Length (chunked upload): the limit still holds."""
    chunks = iter([b'{"question": "', b"x" * 20_000, b'"}'])
    response = server.http().post(
        "/ask", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_searches_and_answers_from_20_clients_at_once(server: Served) -> None:
    def one(i: int) -> int:
        with server.http() as http:
            if i % 2:
                return http.get("/search", params={"q": f"startups {i}"}).status_code
            return http.post("/ask", json={"question": DONG_NAI}).status_code

    with ThreadPoolExecutor(20) as pool:
        assert set(pool.map(one, range(40))) == {200}


def test_cli_uses_the_server_it_finds_in_the_store(server: Served) -> None:
    """`rag serve` wrote its address into the store folder; the CLI finds it there."""
    store = Path(server.env["RAG_STORE"])
    assert json.loads((store / "server.json").read_text())["url"] == server.url
    via_server = _cli(server.env, "ask", DONG_NAI, "--llm", "none", "--json")
    in_process = _cli(
        server.env | {"RAG_SERVER": "off"}, "ask", DONG_NAI, "--llm", "none", "--json"
    )
    assert (via_server["via"], in_process["via"]) == ("server", "in-process")
    for key in ("answer", "citations", "refused", "language", "support"):
        assert via_server[key] == in_process[key]
    printed = subprocess.run(
        [sys.executable, "-m", "rag.cli", "ask", DONG_NAI, "--llm", "none"],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Sources:" in printed and "002_d6db562a30fbc1a0.txt" in printed


def test_cli_with_a_dead_server_address_works_in_process(seed_store: tuple[Path, Path]) -> None:
    store, docs = seed_store
    env = _env(store, docs, RAG_SERVER="http://127.0.0.1:9")  # nothing listens there
    hits = _cli(env, "search", DONG_NAI, "-k", "1", "--json")
    assert hits[0]["via"] == "in-process"


def test_exposed_address_without_key_is_refused(seed_store: tuple[Path, Path]) -> None:
    store, docs = seed_store
    result = subprocess.run(
        [sys.executable, "-m", "rag.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        env=_env(store, docs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: refusing to serve on 0.0.0.0 without an API key: set RAG_API_KEY "
        "(or bind 127.0.0.1)"
    ]


def test_sigterm_stops_cleanly_and_removes_the_address(seed_store: tuple[Path, Path]) -> None:
    store, docs = seed_store
    served = start_server(_env(store, docs), "--llm", "none")
    assert (store / "server.json").exists()
    assert served.stop() == 0
    assert not (store / "server.json").exists()
    assert "Traceback" not in (served.process.stderr.read() if served.process.stderr else "")


@pytest.mark.llm
def test_local_llm_through_the_server_one_at_a_time(seed_store: tuple[Path, Path]) -> None:
    """The real model streams a cited answer to the openai client; with no queue, a
    second question asked meanwhile is turned away with 429 and Retry-After, while
    searches go on."""
    from openai import OpenAI

    store, docs = seed_store
    served = start_server(_env(store, docs, RAG_SERVE_QUEUE="0"), "--llm", "local")
    try:
        client = OpenAI(base_url=f"{served.url}/v1", api_key="unused")
        stream = client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": DONG_NAI}], stream=True
        )
        first = next(iter(stream))  # the generation slot is now taken
        busy = served.http().post("/ask", json={"question": DONG_NAI})
        assert busy.status_code == 429 and int(busy.headers["Retry-After"]) > 0
        assert served.http().get("/search", params={"q": DONG_NAI}).status_code == 200
        chunks = [first, *stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        extra = chunks[-1].model_extra["rag"]
        assert extra["citations"] and "002_d6db562a30fbc1a0.txt" in text
        assert served.http().post("/ask", json={"question": DONG_NAI}).status_code == 200
    finally:
        assert served.stop() == 0


def _chat_ui_turn(server: Served, messages: list[dict[str, Any]]) -> str:
    parts = []
    body = {"model": "rag", "messages": messages, "stream": True}
    with server.http().stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == "data: [DONE]":
                break
            if line.startswith("data: "):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                parts.append(delta.get("content") or "")
    return "".join(parts)


def _cli(env: dict[str, str], *args: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "rag.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _without_via(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "via"}
