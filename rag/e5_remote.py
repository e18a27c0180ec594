"""Embedding through an OpenAI-compatible server (RAG_EMBED_BASE_URL) instead of in-process.

`RemoteE5` is called like a SentenceTransformer by `rag.models.Embedder`, so a remote
embedder is the same object as a local one to the indexer, the retriever and the
llama-index components. The e5 prefixes (`query: `, `passage: `) arrive here as the
`prompt` and are put in front of each text on this side: the server must serve the raw
model (`rag serve`'s POST /v1/embeddings does; so do TEI and vLLM without a prompt).

Texts go in batches of RAG_EMBED_SERVER_BATCH, up to RAG_EMBED_SERVER_CONCURRENCY
requests at once, so the server has the next batch as soon as one is done. Connection
failures and 5xx/429 answers are retried with exponential backoff, a few times; any
other failure (a timeout, a 4xx, an answer that is not a list of vectors of the right
count and dimension) is one EmbedServerError line. Embedder re-normalizes every vector,
whether the server does or not.

httpx is imported when a RemoteE5 is made: importing this module stays cheap.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.records import ModelError, one_line

if TYPE_CHECKING:
    import httpx

# Waits before each retry: about 3.5 s in all, time for a restarting server to come back,
# short enough that a server that is down is reported promptly.
RETRY_DELAYS = (0.5, 1.0, 2.0)
RETRY_STATUSES = {429, 500, 502, 503, 504}
# What the dimension probe embeds: any short text would do.
PROBE_TEXT = "query: dimension"


class EmbedServerError(ModelError):
    """The embedding server is down, too slow, or answered something unusable."""


class RemoteE5:
    """An embedding model behind POST {base_url}/embeddings (OpenAI's API)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        batch_size: int = 64,
        concurrency: int = 2,
        timeout: float = 60.0,
        check_model: bool = False,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        # Only when the model name is a claim the store relies on (the packaged e5): a
        # server that answers for another model must not write into its store.
        self.check_model = check_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=self.concurrency + 1),
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._dim: int | None = None

    # --- what Embedder calls ----------------------------------------------------------
    def get_embedding_dimension(self) -> int:
        """The server's dimension, from one short request (made once)."""
        if self._dim is None:
            self._dim = int(self._post([PROBE_TEXT]).shape[1])
        return self._dim

    def encode(
        self, texts: list[str], prompt: str = "", batch_size: int | None = None, **_: Any
    ) -> np.ndarray:
        """[n, dim] float32 as the server gives it (Embedder normalizes); the other
        options Embedder passes (progress bar, numpy) are what this always does."""
        inputs = [prompt + text for text in texts]
        if not inputs:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        batches = self._batches(inputs, batch_size or self.batch_size)
        if len(batches) == 1:
            return self._post(batches[0])
        return np.concatenate(list(self._executor().map(self._post, batches)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.client.close()

    # --- batching ---------------------------------------------------------------------
    def _batches(self, inputs: list[str], batch_size: int) -> list[list[str]]:
        """At most `batch_size` texts per request, and a call's texts spread over all
        the concurrent requests: the indexer's group of 64 chunks becomes two requests
        of 32 in flight at once, not one request the server waits for the next of."""
        per_slot = math.ceil(len(inputs) / self.concurrency)
        size = max(1, min(batch_size, per_slot))
        return [inputs[i : i + size] for i in range(0, len(inputs), size)]

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="embed")
            return self._pool

    # --- one request --------------------------------------------------------------------
    def _post(self, texts: list[str]) -> np.ndarray:
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        response = self._send(body)
        vectors = self._parse(response, len(texts))
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise self._error(
                f"returned {vectors.shape[1]}-dimensional vectors after {self._dim}-dimensional "
                "ones (is another model behind the same address?)"
            )
        return vectors

    def _send(self, body: dict[str, Any]) -> httpx.Response:
        """POST with retries on connection failures, 5xx and 429."""
        import httpx

        url = f"{self.base_url}/embeddings"
        for delay in (*RETRY_DELAYS, None):
            try:
                response = self.client.post(url, json=body)
            except httpx.TimeoutException as exc:
                raise self._error(f"did not answer in time ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                if delay is None:
                    raise self._error(f"cannot be reached ({one_line(exc)})") from exc
            else:
                if response.status_code not in RETRY_STATUSES or delay is None:
                    return response
            time.sleep(delay)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _parse(self, response: httpx.Response, count: int) -> np.ndarray:
        if response.status_code >= 400:
            message = _error_message(response)
            raise self._error(f"refused the request: HTTP {response.status_code}: {message}")
        try:
            payload = response.json()
            rows = sorted(payload["data"], key=lambda row: int(row.get("index", 0)))
            vectors = [_vector(row["embedding"]) for row in rows]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._error(
                f"answered with something that is not an embeddings list ({one_line(exc)[:120]})"
            ) from exc
        if len(vectors) != count:
            raise self._error(f"returned {len(vectors)} vectors for {count} texts")
        if len({len(v) for v in vectors}) != 1 or len(vectors[0]) == 0:
            raise self._error("returned vectors of different or zero dimensions in one answer")
        answered = payload.get("model") if isinstance(payload, dict) else None
        if self.check_model and answered and answered != self.model:
            raise self._error(f"answered with the model {answered!r}, not {self.model!r}")
        return np.asarray(vectors, dtype=np.float32)

    def _error(self, problem: str) -> EmbedServerError:
        return EmbedServerError(
            f"the embedding server at {self.base_url} {problem}; check RAG_EMBED_BASE_URL "
            "(or unset it to embed in-process)"
        )


def _vector(embedding: Any) -> list[float]:
    """A list of floats, or OpenAI's base64 of little-endian float32."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
    if not isinstance(embedding, list) or not all(
        isinstance(x, (int, float)) and math.isfinite(x) for x in embedding
    ):
        raise ValueError("an embedding is not a list of finite numbers")
    return embedding


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's error.message, FastAPI's detail, or the text."""
    try:
        payload = response.json()
    except ValueError:
        return one_line(Exception(response.text or response.reason_phrase), 200)
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return one_line(Exception(str(error["message"])), 200)
        for key in ("error", "detail", "message"):
            if payload.get(key):
                return one_line(Exception(str(payload[key])), 200)
    return one_line(Exception(response.text), 200)
