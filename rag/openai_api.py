"""The OpenAI face of `rag serve`: chat-completion requests in, completions and SSE
chunks out. The text keeps its [n] markers and ends with the sources as markdown; the
structured answer rides in the extra field `rag`."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag.answer import stream_correction
from rag.api_support import MAX_QUESTION_CHARS, ApiError, in_threads, sse, stream_error
from rag.config import Settings
from rag.llm import BACKENDS
from rag.records import Answer, Delta, Finished

MODEL_ID = "rag"


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    # a string, or OpenAI's list of content parts ({"type": "text", "text": ...})
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = (p.get("text") for p in self.content if p.get("type") == "text")
            return "".join(part for part in parts if isinstance(part, str))
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; sampling fields (temperature, max_tokens, ...) are accepted and
    ignored: the assistant's settings decide them."""

    model_config = ConfigDict(extra="allow")
    model: str = MODEL_ID
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request; `model` may be left out. Other fields (`user`,
    `dimensions`) are accepted and ignored: the model has one size."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[str] = Field(description="a text, or a list of texts (not token ids)")
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input", mode="before")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        # Named here: pydantic's own message for a list of token ids names a union branch.
        if isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            return value
        raise ValueError("input must be a text or a list of texts (not token ids)")

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise ApiError(400, "input is an empty list: send at least one text", "invalid_request")
        return texts


def check_embedding_model(requested: str | None, served: str) -> str:
    """The one model this server embeds with; another name is a 404, not a silent swap."""
    if requested and requested != served:
        raise ApiError(
            404,
            f"this server embeds with the model {served!r}, not {requested!r}",
            "model_not_found",
        )
    return served


def embedding_list(
    vectors: np.ndarray, model: str, texts: list[str], encoding: str
) -> dict[str, Any]:
    """OpenAI's embeddings response for `vectors` ([n, dim], L2-normalized)."""
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
        for i, vector in enumerate(vectors)
    ]
    words = sum(len(text.split()) for text in texts)  # words, not model tokens, as in chat
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": words, "total_tokens": words},
    }


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def backend_for_model(model: str, settings: Settings) -> str:
    if model == MODEL_ID:
        return settings.llm
    prefix = f"{MODEL_ID}-"
    if model.startswith(prefix) and model[len(prefix) :] in BACKENDS:
        return model[len(prefix) :]
    raise ApiError(404, f"unknown model {model!r}; GET /v1/models lists them", "model_not_found")


def conversation(messages: list[ChatMessageIn]) -> tuple[str, list[dict[str, str]]]:
    """The last user message is the question; the user and assistant turns before it
    are the history (system messages are the client's, not ours: ignored)."""
    if messages[-1].role != "user" or not messages[-1].text().strip():
        raise ApiError(400, "the last message must be the user's question", "invalid_request")
    if len(messages[-1].text()) > MAX_QUESTION_CHARS:
        message = f"the question is longer than {MAX_QUESTION_CHARS} characters"
        raise ApiError(422, message, "invalid_request")
    history = [
        {"role": m.role, "content": m.text()}
        for m in messages[:-1]
        if m.role in ("user", "assistant") and m.text().strip()
    ]
    return messages[-1].text(), history


class Completion:
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
        return sse({**self.envelope("chat.completion.chunk"), "choices": [choice]})


async def openai_sse(completion: Completion, events: Iterator[Any]) -> AsyncIterator[str]:
    yield completion.chunk({"role": "assistant", "content": ""})
    streamed = ""
    try:
        async for event in in_threads(events):
            if isinstance(event, Delta):
                streamed += event.text
                yield completion.chunk({"content": event.text})
            elif isinstance(event, Finished):
                tail = stream_correction(streamed, event.answer.answer) + footnotes(event.answer)
                final = json.loads(completion.chunk({"content": tail}, "stop")[6:])
                final["rag"] = rag_extra(event.answer)
                yield sse(final)
    except Exception as exc:  # headers are sent: the error ends the stream
        yield sse(stream_error(exc))
    yield "data: [DONE]\n\n"


def footnotes(answer: Answer) -> str:
    """The cited quotes as a markdown list after the answer, one line each: a source
    quoted twice has two lines with its `[n]`."""
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
