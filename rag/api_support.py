"""HTTP plumbing of `rag serve`: JSON errors in OpenAI's shape, the API key, the body
limit, the one-generation queue, and streaming the engine's blocking events as SSE."""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.llm import LLMError
from rag.records import UserError, one_line

RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def error_body(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


def error_response(status: int, message: str, code: str, headers: dict | None = None) -> Any:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse(error_body(message, code, kind), status_code=status, headers=headers)


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
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, _code(exc.status_code), exc.headers)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> Any:
        return error_response(*user_error_status(exc), None)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Any:
        return error_response(500, f"internal error: {one_line(exc)}", "internal_error")


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


def api_key_check(key: str) -> Any:
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
        _, message, code = user_error_status(exc)
        return error_body(message, code)
    return error_body(f"internal error: {one_line(exc)}", "internal_error", "server_error")
