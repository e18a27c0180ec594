"""The CLI's way to a running `rag serve`: found, checked, and spoken to over HTTP.

A command that finds a server answers at once from its warm models; one that does not
works in-process. Both give the same output (the server returns the engine's own
records), and `--json` says which path answered (`"via"`).
Only httpx is imported here, so a command that uses a server starts in well under a
second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from rag.config import Settings
from rag.records import UserError, one_line

ADDRESS_FILE = "server.json"  # written by rag.server into the store folder
PROBE_SECONDS = 0.5
ANSWER_TIMEOUT = httpx.Timeout(10.0, read=600.0)


class ServerClient:
    def __init__(self, url: str, api_key: str = "") -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=ANSWER_TIMEOUT)

    def reachable(self) -> bool:
        try:
            return self._http.get("/health", timeout=PROBE_SECONDS).status_code == 200
        except httpx.HTTPError:
            return False

    def search(self, query: str, k: int | None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"q": query}
        if k:
            params["k"] = k
        return list(self._checked(self._call("GET", "/search", params=params)).json()["hits"])

    def ask_stream(
        self, question: str, history: list[dict[str, str]], llm: str | None, k: int | None
    ) -> Iterator[tuple[str, Any]]:
        """("evidence", {...}), ("delta", text)..., ("final", answer dict)."""
        body = {"question": question, "history": history, "llm": llm, "k": k, "stream": True}
        try:
            with self._http.stream("POST", "/ask", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    self._checked(response)
                for event, data in _sse_events(response.iter_lines()):
                    if event == "error":
                        raise UserError(_error_message(data))
                    yield event, data.get("text", "") if event == "delta" else data
        except httpx.HTTPError as exc:
            raise UserError(f"the server at {self.url} failed ({one_line(exc)})") from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UserError(f"the server at {self.url} failed ({one_line(exc)})") from exc

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                message = _error_message(response.json())
            except ValueError:
                message = response.text.strip()[:200] or f"HTTP {response.status_code}"
            raise UserError(f"the server at {self.url} answered: {message}")
        return response


def _error_message(data: Any) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    return str(error.get("message")) if isinstance(error, dict) else str(data)[:200]


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        yield event, json.loads("\n".join(data))


def find_server(settings: Settings) -> ServerClient | None:
    """The server to use: RAG_SERVER, else the address `rag serve` wrote into the store
    folder; None when there is none, it does not answer, or RAG_SERVER=off."""
    url = settings.server.strip()
    if url.lower() == "off":
        return None
    if not url:
        url = _written_address(settings)
    if not url:
        return None
    client = ServerClient(url, settings.api_key)
    return client if client.reachable() else None


def _written_address(settings: Settings) -> str:
    try:
        data = json.loads((settings.store_dir / ADDRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("url") or "") if isinstance(data, dict) else ""
