"""`rag serve`: the engine as one warm HTTP service (FastAPI + uvicorn).

Thin, like the CLI and the chat page: every route is a call into `rag.engine.Engine`.
Two faces over the same engine:
- OpenAI-compatible: `POST /v1/chat/completions` (streamed by SSE or not) and
  `GET /v1/models`, so the `openai` client and OpenAI-speaking chat UIs work unchanged.
  The text keeps its `[n]` markers and ends with the sources as markdown; the structured
  citations and support figures ride in the extra field `rag`.
- REST: `GET /search`, `POST /ask` (SSE events `evidence`, `delta`, `final`),
  `POST /index`, `GET /status`, `GET /health`, documented at `/docs` and `/openapi.json`.
Errors are JSON, `{"error": {"message", "type", "code"}}`, never a traceback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

from rag.api_support import (
    MAX_QUESTION_CHARS,
    ApiError,
    ApiKeyGate,
    BodyLimit,
    GenerationQueue,
    InternalErrors,
    close_events,
    in_threads,
    install_error_handlers,
    routes_page,
    sse,
    stream_error,
)
from rag.client import ADDRESS_FILE
from rag.config import Settings
from rag.engine import Engine
from rag.llm import BACKENDS
from rag.models import embedder_identity
from rag.openai_api import (
    MODEL_ID,
    ChatCompletionRequest,
    Completion,
    EmbeddingRequest,
    backend_for_model,
    check_embedding_model,
    conversation,
    embedding_list,
    openai_sse,
)
from rag.records import Answer, Delta, Finished, Retrieved, UserError

# -- requests ---------------------------------------------------------------------------


class HistoryMessage(BaseModel):
    role: str = Field(description="user or assistant (others are ignored)")
    content: str


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    history: list[HistoryMessage] = Field(default_factory=list)
    llm: str | None = None
    k: int | None = Field(default=None, ge=1, le=50)
    stream: bool = False


class IndexRequest(BaseModel):
    rebuild: bool = False


# -- the app ----------------------------------------------------------------------------


def create_app(engine: Engine, settings: Settings | None = None) -> FastAPI:
    settings = settings or engine.settings
    queue = GenerationQueue(settings.serve_queue)
    state = {"ready": False, "started": time.time()}
    app = FastAPI(
        title="rag",
        version="1",
        summary="Cited answers from your documents, offline. OpenAI-compatible and REST.",
        # Swagger UI and ReDoc load their scripts from a CDN: blank pages offline
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine, app.state.queue, app.state.ready = engine, queue, state
    install_error_handlers(app)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness, without a key: `ready` once the models are loaded."""
        return {"status": "ok", "ready": state["ready"]}

    @app.get("/status", tags=["service"])
    def status() -> dict[str, Any]:
        return {
            **engine.status(),
            "server": {"generating_or_waiting": queue.busy, "queue_capacity": queue.capacity},
        }

    @app.get("/search", tags=["rest"])
    def search(
        q: str = Query(min_length=1, max_length=MAX_QUESTION_CHARS, description="the query"),
        k: int | None = Query(default=None, ge=1, le=50),
    ) -> dict[str, Any]:
        """The passages that best match `q`, as `rag search --json` shows them."""
        return {"query": q, "hits": [h.as_row() for h in engine.search(q, k)]}

    @app.post("/index", tags=["rest"])
    def index(request: IndexRequest | None = None) -> dict[str, Any]:
        """Index the documents folder incrementally (`rag index`)."""
        return engine.index(rebuild=bool(request and request.rebuild), progress=False).as_dict()

    @app.post("/ask", tags=["rest"])
    async def ask(request: AskRequest, http: Request) -> Any:
        """Answer with citations. JSON (`rag ask --json`), or with `"stream": true` (or
        `Accept: text/event-stream`) SSE events `evidence`, `delta`..., `final`."""
        llm = _backend_name(request.llm, settings)
        history = [m.model_dump() for m in request.history]
        events = _answer_events(engine, queue, request.question, history, llm, request.k)
        if request.stream or "text/event-stream" in http.headers.get("accept", ""):
            return StreamingResponse(_rest_sse(events), media_type="text/event-stream")
        return await anyio.to_thread.run_sync(_final_answer_dict, events)

    @app.get("/v1/models", tags=["openai"])
    def models() -> dict[str, Any]:
        """`rag` answers with the server's default backend; `rag-<backend>` picks one.
        The last is the embedding model of POST /v1/embeddings."""
        ids = [MODEL_ID, *(f"{MODEL_ID}-{name}" for name in BACKENDS), embedder_identity(settings)]
        created = int(state["started"])
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": created, "owned_by": "rag"} for i in ids
            ],
        }

    embedding = threading.Lock()

    @app.post("/v1/embeddings", tags=["openai"])
    def embeddings(request: EmbeddingRequest) -> dict[str, Any]:
        """The embedding model's vectors (L2-normalized) of the texts exactly as sent:
        no e5 prefix is added, so clients send `query: ...` / `passage: ...` themselves
        (rag does, with RAG_EMBED_BASE_URL). Needs no index."""
        model = check_embedding_model(request.model, embedder_identity(settings))
        texts = request.texts()
        # One batch at a time: the model already uses every core, and two at once only
        # slow each other down; the next request waits here, already received.
        with embedding:
            vectors = engine.embedder.embed_raw(texts)
        return embedding_list(vectors, model, texts, request.encoding_format)

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: ChatCompletionRequest) -> Any:
        question, history = conversation(request.messages)
        llm = backend_for_model(request.model, settings)
        events = _answer_events(engine, queue, question, history, llm, None)
        completion = Completion(request.model)
        if request.stream:
            return StreamingResponse(openai_sse(completion, events), media_type="text/event-stream")
        answer = await anyio.to_thread.run_sync(_final_answer, events)
        return completion.whole(answer)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """The routes, read from the OpenAPI schema, as a page that needs no internet."""
        return HTMLResponse(routes_page(app.openapi()))

    # the last added runs first: the size limit, the key, then the app's own errors
    app.add_middleware(InternalErrors)
    app.add_middleware(ApiKeyGate, key=settings.api_key)
    app.add_middleware(BodyLimit, limit=settings.serve_max_body_kb * 1024)
    app.state.warm_up = lambda: _warm_up(engine, settings, state)
    return app


def _backend_name(name: str | None, settings: Settings) -> str:
    name = name or settings.llm
    if name not in BACKENDS:
        raise ApiError(
            400, f"unknown LLM backend {name!r}; use one of {', '.join(BACKENDS)}", "bad_llm"
        )
    return name


# -- answering --------------------------------------------------------------------------


def _answer_events(
    engine: Engine,
    queue: GenerationQueue,
    question: str,
    history: list[dict[str, str]],
    llm: str,
    k: int | None,
) -> Iterator[Any]:
    """The engine's events. An answer that needs the LLM is admitted to the queue now
    (429 before any byte is sent) and holds the generation slot while it runs; an
    extractive one (`none`) never waits."""
    if llm == "none":
        return engine.ask_stream(question, history, llm=llm, k=k)
    queue.admit()

    def generate() -> Iterator[Any]:
        with queue.generating():
            yield from engine.ask_stream(question, history, llm=llm, k=k)

    return generate()


def _final_answer(events: Iterator[Any]) -> Answer:
    try:
        for event in events:
            if isinstance(event, Finished):
                return event.answer
    finally:
        close_events(events)
    raise RuntimeError("the engine ended without an answer")


def _final_answer_dict(events: Iterator[Any]) -> dict[str, Any]:
    return _final_answer(events).as_dict()


async def _rest_sse(events: Iterator[Any]) -> AsyncIterator[str]:
    try:
        async for event in in_threads(events):
            if isinstance(event, Retrieved):
                yield sse(_evidence(event), "evidence")
            elif isinstance(event, Delta):
                yield sse({"text": event.text}, "delta")
            elif isinstance(event, Finished):
                yield sse(event.answer.as_dict(), "final")
    except Exception as exc:  # headers are sent: the error becomes the last event
        yield sse(stream_error(exc), "error")


def _evidence(event: Retrieved) -> dict[str, Any]:
    return {
        "language": event.language,
        "search_query": event.search_query,
        "refused": event.refused,
        "hits": [h.as_row() for h in event.hits],
    }


# -- running ----------------------------------------------------------------------------


def _warm_up(engine: Engine, settings: Settings, state: dict[str, Any]) -> None:
    """Load the embedder, the language detector's models, open the store and cache the
    LLM's fixed prompt, so the first question pays for nothing else. Failures are left
    for that question to report."""
    with contextlib.suppress(Exception):
        engine.embedder.embed_query("warm-up")
    with contextlib.suppress(Exception):
        _warm_up_detection()
    with contextlib.suppress(Exception):
        engine.search("warm-up", 1)
    with contextlib.suppress(Exception):
        engine.prime(settings.llm)
    state["ready"] = True


def _warm_up_detection() -> None:
    """Detect one sentence of each registry language (its refusal message): lingua
    loads a language's models when it first weighs it, 0.2-3 s that the first question
    in that language would otherwise wait for."""
    from rag.answer import localized
    from rag.language import detect_language

    for sentence in localized("refusal.json").values():
        detect_language(sentence)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    if not is_loopback(host) and not settings.api_key:
        raise UserError(
            f"refusing to serve on {host} without an API key: set RAG_API_KEY (or bind 127.0.0.1)"
        )


def bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UserError(f"cannot listen on port {port}: a port is 0 to 65535 (0: any free one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def address_file(settings: Settings) -> Path:
    return settings.store_dir / ADDRESS_FILE


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM; the address goes to `server.json` in the store
    folder, where the CLI finds it (the key never does)."""
    import uvicorn

    host = host or settings.serve_host
    port = settings.serve_port if port is None else port
    check_exposure(settings, host)
    sock = bind(host, port)
    url = url_of(sock)
    app = create_app(Engine(settings), settings)
    threading.Thread(target=app.state.warm_up, name="warm-up", daemon=True).start()
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=10, access_log=False
    )
    server = uvicorn.Server(config)
    written = _write_address(settings, url)
    print(f"serving on {url} (docs: {url}/docs)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again
    # with the previous handlers: these make that a normal exit, after the clean-up.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        if written:
            _remove_address(settings, url)


def _write_address(settings: Settings, url: str) -> bool:
    path = address_file(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"url": url, "pid": os.getpid(), "key_required": bool(settings.api_key)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)
        return True
    except OSError:
        return False  # a read-only store folder: clients can still use RAG_SERVER


def _remove_address(settings: Settings, url: str) -> None:
    path = address_file(settings)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("url") == url:
            path.unlink()
