"""Engine.ask_stream as a llama-index query engine and chat engine, streamed, with the
validated citations as source nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.bridge.pydantic import Field
from llama_index.core.chat_engine.types import (
    AgentChatResponse,
    BaseChatEngine,
    StreamingAgentChatResponse,
)
from llama_index.core.query_engine import CustomQueryEngine

from rag.answer import stream_correction
from rag.components.nodes import nodes_from_citations
from rag.records import Answer, Delta, Event, Finished

if TYPE_CHECKING:  # for type hints only: the engine imports this package, not the reverse
    from rag.engine import Engine


def _cited_deltas(events: Iterator[Event], finish: Callable[[Answer], None]) -> Iterator[str]:
    """The answer's text as it streams; when the checked answer differs from what was
    streamed, it follows after a rule (as `rag serve` does). `finish` gets the answer."""
    streamed = ""
    try:
        for event in events:
            if isinstance(event, Delta):
                streamed += event.text
                yield event.text
            elif isinstance(event, Finished):
                tail = stream_correction(streamed, event.answer.answer)
                if tail:
                    yield tail
                finish(event.answer)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # an abandoned stream releases the LLM


def _final(events: Iterator[Event]) -> Answer:
    for event in events:
        if isinstance(event, Finished):
            return event.answer
    raise RuntimeError("the engine ended without an answer")


@dataclass
class CitedStreamingResponse(StreamingResponse):
    """A StreamingResponse whose `source_nodes` are the answer's validated citations,
    and whose `answer` is the whole rag Answer: both filled when the stream ends (the
    citations are checked against the complete reply)."""

    answer: Answer | None = None

    @classmethod
    def from_events(cls, events: Iterator[Event]) -> CitedStreamingResponse:
        response = cls(response_gen=iter(()))
        response.response_gen = _cited_deltas(events, response._finish)
        return response

    def _finish(self, answer: Answer) -> None:
        self.answer = answer
        self.source_nodes.extend(nodes_from_citations(answer.citations))
        self.metadata = answer.as_dict()


class RagQueryEngine(CustomQueryEngine):
    """Engine.ask_stream as a query engine: the answer with its [n] markers, streamed
    (`streaming=True`) or whole; `source_nodes` are the citations."""

    engine: Any = Field(exclude=True, description="a rag.engine.Engine")
    backend: str | None = Field(default=None, description="local, openai or none")
    similarity_top_k: int | None = None
    streaming: bool = True

    def custom_query(self, query_str: str) -> Response | CitedStreamingResponse:
        events = self.engine.ask_stream(query_str, llm=self.backend, k=self.similarity_top_k)
        if self.streaming:
            return CitedStreamingResponse.from_events(events)
        answer = _final(events)
        return Response(answer.answer, nodes_from_citations(answer.citations), answer.as_dict())


class RagChatEngine(BaseChatEngine):
    """Engine.ask_stream as a chat engine: follow-ups use the conversation as `rag
    chat` does; `source_nodes` are the citations of each answer."""

    def __init__(
        self,
        engine: Engine,
        backend: str | None = None,
        similarity_top_k: int | None = None,
        chat_history: list[ChatMessage] | None = None,
    ) -> None:
        self.engine = engine
        self.backend = backend
        self.similarity_top_k = similarity_top_k
        self._history: list[ChatMessage] = list(chat_history or [])

    @property
    def chat_history(self) -> list[ChatMessage]:
        return list(self._history)

    def reset(self) -> None:
        self._history = []

    def _events(self, message: str, chat_history: list[ChatMessage] | None) -> Iterator[Event]:
        if chat_history is not None:
            self._history = list(chat_history)
        history = [{"role": m.role.value, "content": m.content or ""} for m in self._history]
        return self.engine.ask_stream(message, history, llm=self.backend, k=self.similarity_top_k)

    def _remember(self, message: str, answer: Answer) -> None:
        self._history += [
            ChatMessage(role=MessageRole.USER, content=message),
            ChatMessage(role=MessageRole.ASSISTANT, content=answer.answer),
        ]

    def chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> AgentChatResponse:
        answer = _final(self._events(message, chat_history))
        self._remember(message, answer)
        return AgentChatResponse(
            response=answer.answer,
            source_nodes=nodes_from_citations(answer.citations),
            metadata=answer.as_dict(),
        )

    def stream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> StreamingAgentChatResponse:
        response = StreamingAgentChatResponse(is_writing_to_memory=False)
        response.chat_stream = self._chat_stream(message, chat_history, response)
        return response

    def _chat_stream(
        self,
        message: str,
        chat_history: list[ChatMessage] | None,
        response: StreamingAgentChatResponse,
    ) -> Generator[ChatResponse]:
        def finish(answer: Answer) -> None:
            response.source_nodes.extend(nodes_from_citations(answer.citations))
            self._remember(message, answer)

        text = ""
        for delta in _cited_deltas(self._events(message, chat_history), finish):
            text += delta
            yield ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta
            )

    async def achat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> AgentChatResponse:
        return await asyncio.to_thread(self.chat, message, chat_history)

    async def astream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> StreamingAgentChatResponse:
        response = StreamingAgentChatResponse(is_writing_to_memory=False)
        stream = self._chat_stream(message, chat_history, response)
        response.achat_stream = _in_threads(stream)
        return response


async def _in_threads(stream: Generator[ChatResponse]) -> AsyncIterator[ChatResponse]:
    """A blocking stream stepped in worker threads (the event loop goes on meanwhile),
    closed even when the consumer stops early."""
    done = object()
    try:
        while True:
            item = await asyncio.to_thread(next, stream, done)
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        await asyncio.to_thread(stream.close)
