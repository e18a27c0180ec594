"""HTTP plumbing of `rag serve`: JSON errors in OpenAI's shape, the API key, the body
limit, the one-generation queue, and streaming the engine's blocking events as SSE."""

from __future__ import annotations

import contextlib
import hmac
import json
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from html import escape
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.config import debug_enabled
from rag.llm import LLMError
from rag.records import UserError, one_line

RETRY_AFTER_SECONDS = 5
# The longest question a route accepts (what a question is, not a document).
MAX_QUESTION_CHARS = 4000
# Routes open without the API key.
OPEN_PATHS = frozenset({"/health"})


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def error_body(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


def error_response(status: int, message: str, code: str, headers: dict | None = None) -> Any:
    return JSONResponse(
        error_body(message, code, _kind(status)), status_code=status, headers=headers
    )


def _kind(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"invalid request: {where}: {first.get('msg', 'invalid value')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Any:
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Any:
        status, message = _validation_message(exc)
        return error_response(status, message, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body that is not UTF-8 (JSON must be)
            return error_response(
                400, "the request body is not valid UTF-8 JSON", "invalid_request"
            )
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, _code(exc.status_code), exc.headers)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> Any:
        return error_response(*user_error_status(exc), None)

    # Unexpected exceptions: InternalErrors (an exception handler for Exception runs in
    # Starlette's outermost middleware, which re-raises after answering, and the
    # server then drops the client's keep-alive connection).


def user_error_status(exc: UserError) -> tuple[int, str, str]:
    if isinstance(exc, LLMError):
        return 503, str(exc), "llm_unavailable"
    return 400, str(exc), "bad_request"


def _code(status: int) -> str:
    return {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
        status, "error"
    )


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
        await error_response(413, self._message(), "too_large")({"type": "http"}, _no_body, send)


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


class ApiKeyGate:
    """ASGI middleware: with a key set, every route but OPEN_PATHS (the schema and its
    page too) needs it, checked before the body is read or parsed."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-api-key", "")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        if hmac.compare_digest(given.encode("utf-8", "replace"), self.key.encode()):
            await self.app(scope, receive, send)
            return
        message = "missing or wrong API key: send 'Authorization: Bearer <RAG_API_KEY>'"
        refusal = error_response(401, message, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        await refusal(scope, _no_body, send)


class InternalErrors:
    """ASGI middleware: an unexpected exception is a JSON 500 with one line, and the
    connection stays open (RAG_DEBUG=1 also logs the traceback)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # a streamed body broke off: nothing left to answer with
                raise
            _log_internal(scope, exc)
            failure = error_response(500, f"internal error: {one_line(exc)}", "internal_error")
            await failure(scope, _no_body, send)


def _log_internal(scope: Scope, exc: Exception) -> None:
    where = f"{scope.get('method', '')} {scope.get('path', '')}"
    if debug_enabled():
        traceback.print_exception(exc)
    print(f"rag serve: internal error on {where}: {one_line(exc)}", file=sys.stderr, flush=True)


def close_events(events: Iterator[Any]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


async def in_threads(events: Iterator[Any]) -> AsyncIterator[Any]:
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
        await anyio.to_thread.run_sync(close_events, events)


def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ApiError):
        return error_body(exc.message, exc.code)
    if isinstance(exc, UserError):
        status, message, code = user_error_status(exc)
        return error_body(message, code, _kind(status))
    return error_body(f"internal error: {one_line(exc)}", "internal_error", "server_error")


def routes_page(schema: dict[str, Any]) -> str:
    """A plain HTML page of the API's routes from its OpenAPI schema: what /docs shows
    offline (Swagger UI's scripts come from a CDN)."""
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            summary = operation.get("description") or operation.get("summary") or ""
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code>"
                f"</td><td>{escape(summary).replace(chr(10), '<br>')}</td></tr>"
            )
    info = schema.get("info", {})
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(info.get('title', ''))}"
        "</title><style>body{font-family:sans-serif;margin:2em}td{padding:.3em 1em;"
        "vertical-align:top;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>{escape(info.get('title', ''))} API</h1><p>{escape(info.get('summary', ''))}</p>"
        "<p>The full schema: <a href='openapi.json'>openapi.json</a>.</p>"
        f"<table>{''.join(rows)}</table></body></html>"
    )
