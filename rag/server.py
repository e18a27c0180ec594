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
import hmac
import ipaddress
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.client import ADDRESS_FILE
from rag.config import Settings
from rag.engine import Delta, Engine, Finished, Retrieved
from rag.llm import BACKENDS, LLMError
from rag.records import Answer, UserError, one_line

MODEL_ID = "rag"
RETRY_AFTER_SECONDS = 5


# -- requests ---------------------------------------------------------------------------


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    # a string, or OpenAI's list of content parts ({"type": "text", "text": ...})
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; sampling fields (temperature, max_tokens, ...) are accepted and
    ignored: the assistant's settings decide them."""

    model_config = ConfigDict(extra="allow")
    model: str = MODEL_ID
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    history: list[dict[str, str]] = Field(default_factory=list)
    llm: str | None = None
    k: int | None = Field(default=None, ge=1, le=50)
    stream: bool = False


class IndexRequest(BaseModel):
    rebuild: bool = False


# -- errors -----------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def error_body(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


def _error_response(status: int, message: str, code: str, headers: dict | None = None) -> Any:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse(error_body(message, code, kind), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"invalid request: {where}: {first.get('msg', 'invalid value')}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Any:
        return _error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Any:
        status, message = _validation_message(exc)
        return _error_response(status, message, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _error_response(exc.status_code, message, _code(exc.status_code), exc.headers)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> Any:
        return _error_response(*_user_error_status(exc), None)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Any:
        return _error_response(500, f"internal error: {one_line(exc)}", "internal_error")


def _user_error_status(exc: UserError) -> tuple[int, str, str]:
    if isinstance(exc, LLMError):
        return 503, str(exc), "llm_unavailable"
    return 400, str(exc), "bad_request"


def _code(status: int) -> str:
    return {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
        status, "error"
    )


# -- limits -----------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, whether the
    client declares the size or streams it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit // 1024} KB (RAG_SERVE_MAX_BODY_KB)"

    async def _refuse(self, send: Send) -> None:
        await _error_response(413, self._message(), "too_large")({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class GenerationQueue:
    """One LLM generation at a time, at most `depth` waiting; the next is turned away
    (429) at once rather than left to time out."""

    def __init__(self, depth: int) -> None:
        self.capacity = depth + 1
        self._count = 0
        self._count_lock = threading.Lock()
        # a plain Lock: a streamed answer may release it from another worker thread
        self._generating = threading.Lock()

    @property
    def busy(self) -> int:
        return self._count

    def admit(self) -> None:
        with self._count_lock:
            if self._count >= self.capacity:
                raise ApiError(
                    429,
                    f"the assistant is answering {self._count} questions already; "
                    f"retry in {RETRY_AFTER_SECONDS} s",
                    "busy",
                    {"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            self._count += 1

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        """Hold the generation slot of an admitted request, then leave the queue."""
        try:
            with self._generating:
                yield
        finally:
            with self._count_lock:
                self._count -= 1


# -- the app ----------------------------------------------------------------------------


def create_app(engine: Engine, settings: Settings | None = None) -> FastAPI:
    settings = settings or engine.settings
    queue = GenerationQueue(settings.serve_queue)
    state = {"ready": False, "started": time.time()}
    app = FastAPI(
        title="rag",
        version="1",
        summary="Cited answers from your documents, offline. OpenAI-compatible and REST.",
    )
    app.state.engine, app.state.queue, app.state.ready = engine, queue, state
    _install_error_handlers(app)
    auth = [Depends(_api_key_check(settings.api_key))]

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness, without a key: `ready` once the models are loaded."""
        return {"status": "ok", "ready": state["ready"]}

    @app.get("/status", dependencies=auth, tags=["service"])
    def status() -> dict[str, Any]:
        return {
            **engine.status(),
            "server": {"generating_or_waiting": queue.busy, "queue_capacity": queue.capacity},
        }

    @app.get("/search", dependencies=auth, tags=["rest"])
    def search(
        q: str = Query(min_length=1, max_length=4000, description="the query"),
        k: int | None = Query(default=None, ge=1, le=50),
    ) -> dict[str, Any]:
        """The passages that best match `q`, as `rag search --json` shows them."""
        return {"query": q, "hits": [h.as_row() for h in engine.search(q, k)]}

    @app.post("/index", dependencies=auth, tags=["rest"])
    def index(request: IndexRequest | None = None) -> dict[str, Any]:
        """Index the documents folder incrementally (`rag index`)."""
        return engine.index(rebuild=bool(request and request.rebuild), progress=False).as_dict()

    @app.post("/ask", dependencies=auth, tags=["rest"])
    async def ask(request: AskRequest, http: Request) -> Any:
        """Answer with citations. JSON (`rag ask --json`), or with `"stream": true` (or
        `Accept: text/event-stream`) SSE events `evidence`, `delta`..., `final`."""
        llm = _backend_name(request.llm, settings)
        events = _answer_events(engine, queue, request.question, request.history, llm, request.k)
        if request.stream or "text/event-stream" in http.headers.get("accept", ""):
            return StreamingResponse(_rest_sse(events), media_type="text/event-stream")
        return await anyio.to_thread.run_sync(_final_answer_dict, events)

    @app.get("/v1/models", dependencies=auth, tags=["openai"])
    def models() -> dict[str, Any]:
        """`rag` answers with the server's default backend; `rag-<backend>` picks one."""
        ids = [MODEL_ID, *(f"{MODEL_ID}-{name}" for name in BACKENDS)]
        created = int(state["started"])
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": created, "owned_by": "rag"} for i in ids
            ],
        }

    @app.post("/v1/chat/completions", dependencies=auth, tags=["openai"])
    async def chat_completions(request: ChatCompletionRequest) -> Any:
        question, history = _conversation(request.messages)
        llm = _backend_for_model(request.model, settings)
        events = _answer_events(engine, queue, question, history, llm, None)
        completion = _Completion(request.model)
        if request.stream:
            return StreamingResponse(
                _openai_sse(completion, events), media_type="text/event-stream"
            )
        answer = await anyio.to_thread.run_sync(_final_answer, events)
        return completion.whole(answer)

    app.add_middleware(BodyLimit, limit=settings.serve_max_body_kb * 1024)
    app.state.warm_up = lambda: _warm_up(engine, settings, state)
    return app


def _api_key_check(key: str) -> Any:
    def check(request: Request) -> None:
        if not key:
            return
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <RAG_API_KEY>'",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )

    return check


def _backend_name(name: str | None, settings: Settings) -> str:
    name = name or settings.llm
    if name not in BACKENDS:
        raise ApiError(
            400, f"unknown LLM backend {name!r}; use one of {', '.join(BACKENDS)}", "bad_llm"
        )
    return name


def _backend_for_model(model: str, settings: Settings) -> str:
    if model == MODEL_ID:
        return settings.llm
    prefix = f"{MODEL_ID}-"
    if model.startswith(prefix) and model[len(prefix) :] in BACKENDS:
        return model[len(prefix) :]
    raise ApiError(404, f"unknown model {model!r}; GET /v1/models lists them", "model_not_found")


def _conversation(messages: list[ChatMessageIn]) -> tuple[str, list[dict[str, str]]]:
    """The last user message is the question; the user and assistant turns before it
    are the history (system messages are the client's, not ours: ignored)."""
    if messages[-1].role != "user" or not messages[-1].text().strip():
        raise ApiError(400, "the last message must be the user's question", "invalid_request")
    history = [
        {"role": m.role, "content": m.text()}
        for m in messages[:-1]
        if m.role in ("user", "assistant") and m.text().strip()
    ]
    return messages[-1].text(), history


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
        _close(events)
    raise RuntimeError("the engine ended without an answer")


def _final_answer_dict(events: Iterator[Any]) -> dict[str, Any]:
    return _final_answer(events).as_dict()


def _close(events: Iterator[Any]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


async def _in_threads(events: Iterator[Any]) -> AsyncIterator[Any]:
    """Iterate a blocking generator in worker threads; closed (releasing the generation
    slot) even when the client goes away mid-answer."""
    done = object()
    try:
        while True:
            event = await anyio.to_thread.run_sync(next, events, done)
            if event is done:
                return
            yield event
    finally:
        await anyio.to_thread.run_sync(_close, events)


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _rest_sse(events: Iterator[Any]) -> AsyncIterator[str]:
    try:
        async for event in _in_threads(events):
            if isinstance(event, Retrieved):
                yield _sse(_evidence(event), "evidence")
            elif isinstance(event, Delta):
                yield _sse({"text": event.text}, "delta")
            elif isinstance(event, Finished):
                yield _sse(event.answer.as_dict(), "final")
    except Exception as exc:  # headers are sent: the error becomes the last event
        yield _sse(_stream_error(exc), "error")


def _evidence(event: Retrieved) -> dict[str, Any]:
    return {
        "language": event.language,
        "search_query": event.search_query,
        "refused": event.refused,
        "hits": [h.as_row() for h in event.hits],
    }


def _stream_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ApiError):
        return error_body(exc.message, exc.code)
    if isinstance(exc, UserError):
        _, message, code = _user_error_status(exc)
        return error_body(message, code)
    return error_body(f"internal error: {one_line(exc)}", "internal_error", "server_error")


# -- OpenAI's shapes --------------------------------------------------------------------


class _Completion:
    """One chat completion's id and envelope, for whole and streamed replies."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.model = model
        self.created = int(time.time())

    def envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, answer: Answer) -> dict[str, Any]:
        message = {"role": "assistant", "content": answer.answer + footnotes(answer)}
        return {
            **self.envelope("chat.completion"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": _usage(answer),
            "rag": rag_extra(answer),
        }

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**self.envelope("chat.completion.chunk"), "choices": [choice]})


async def _openai_sse(completion: _Completion, events: Iterator[Any]) -> AsyncIterator[str]:
    yield completion.chunk({"role": "assistant", "content": ""})
    streamed = ""
    try:
        async for event in _in_threads(events):
            if isinstance(event, Delta):
                streamed += event.text
                yield completion.chunk({"content": event.text})
            elif isinstance(event, Finished):
                tail = _correction(streamed, event.answer.answer) + footnotes(event.answer)
                final = json.loads(completion.chunk({"content": tail}, "stop")[6:])
                final["rag"] = rag_extra(event.answer)
                yield _sse(final)
    except Exception as exc:  # headers are sent: the error ends the stream
        yield _sse(_stream_error(exc))
    yield "data: [DONE]\n\n"


def _correction(streamed: str, final: str) -> str:
    """What to append when the checked answer differs from the streamed text (markers
    cleaned, an unsupported claim dropped, a refusal): a streamed text cannot be taken
    back, so the checked answer follows it after a rule."""
    if " ".join(streamed.split()) == " ".join(final.split()):
        return ""
    return final if not streamed.strip() else f"\n\n---\n{final}"


def footnotes(answer: Answer) -> str:
    """The cited sources as a markdown list after the answer, one per `[n]`."""
    if answer.refused or not answer.citations:
        return ""
    lines = []
    for c in answer.citations:
        first, last = c.lines
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        link = f" ({c.url})" if c.url else ""
        quote = " ".join(c.quote.split())
        lines.append(f"- [{c.n}] {c.file}, {where}: “{quote}”{link}")
    return "\n\n" + "\n".join(lines)


def rag_extra(answer: Answer) -> dict[str, Any]:
    """The documented extra field `rag` of a completion: the structured answer."""
    data = answer.as_dict()
    return {
        key: data[key]
        for key in (
            "answer",
            "refused",
            "language",
            "citations",
            "support",
            "retrieved",
            "search_query",
            "backend",
            "timings",
        )
    }


def _usage(answer: Answer) -> dict[str, int]:
    # The engine does not count model tokens; words are an honest, labelled estimate.
    completion = len(answer.answer.split())
    prompt = len(answer.question.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# -- running ----------------------------------------------------------------------------


def _warm_up(engine: Engine, settings: Settings, state: dict[str, Any]) -> None:
    """Load the embedder, open the store and cache the LLM's fixed prompt, so the first
    question pays for nothing else. Failures are left for that question to report."""
    with contextlib.suppress(Exception):
        engine.embedder.embed_query("warm-up")
    with contextlib.suppress(Exception):
        engine.search("warm-up", 1)
    with contextlib.suppress(Exception):
        engine.prime(settings.llm)
    state["ready"] = True


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
