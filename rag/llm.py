"""Language-model backends behind one small interface: stream text for chat messages.

- `local`: llama.cpp running the packaged Qwen2.5-Coder-1.5B-Instruct GGUF (ChatML).
- `openai`: any OpenAI-compatible server (llama.cpp server, Ollama, vLLM).
- `none`: no model; the engine answers extractively (see rag.answer).
Both model backends go through llama-index's LLM wrappers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rag.config import Settings
from rag.records import UserError, one_line

BACKENDS = ("local", "openai", "none")
CHATML_STOP = ["<|im_end|>", "<|endoftext|>", "<|im_start|>"]


class LLMError(UserError):
    """The language model cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


class ChatBackend(Protocol):
    name: str

    def stream(self, messages: Sequence[Message]) -> Iterator[str]: ...


def chatml(messages: Sequence[Any]) -> str:
    """Qwen's ChatML prompt, ending with the open assistant turn.

    The system message comes first and never changes, so llama.cpp re-uses its cached
    prefix across questions and only the sources and the question are processed anew.
    """
    parts = [f"<|im_start|>{_role(m)}\n{m.content}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def _role(message: Any) -> str:
    role = message.role
    return str(getattr(role, "value", role))


class LocalBackend:
    """llama.cpp in-process; one generation at a time (the model is not re-entrant)."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        from llama_index.llms.llama_cpp import LlamaCPP

        from rag.models import ensure_llm_gguf

        path = ensure_llm_gguf(settings.cache_dir)
        self._lock = threading.Lock()
        try:
            self._llm = LlamaCPP(
                model_path=str(path),
                temperature=0.1,
                max_new_tokens=settings.llm_max_tokens,
                context_window=settings.llm_context,
                generate_kwargs={"top_p": 0.9, "repeat_penalty": 1.05, "stop": CHATML_STOP},
                model_kwargs={
                    "n_threads": settings.llm_threads,
                    "n_threads_batch": settings.llm_threads,
                    "n_batch": 512,
                    "verbose": False,
                },
                messages_to_prompt=chatml,
                completion_to_prompt=lambda text: chatml([Message("user", text)]),
                verbose=False,
            )
        except Exception as exc:
            raise LLMError(f"the local model {path} could not be loaded ({exc})") from exc

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        with self._lock:
            for part in self._llm.stream_complete(chatml(messages), formatted=True):
                if part.delta:
                    yield part.delta


class OpenAIBackend:
    """Any OpenAI-compatible chat server, streamed."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        from llama_index.llms.openai_like import OpenAILike

        self.base_url = settings.llm_base_url
        self._llm = OpenAILike(
            model=settings.llm_model,
            api_base=settings.llm_base_url,
            api_key=settings.llm_api_key,
            is_chat_model=True,
            context_window=settings.llm_context,
            max_tokens=settings.llm_max_tokens,
            temperature=0.1,
            timeout=120,
            max_retries=1,
        )

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        from llama_index.core.llms import ChatMessage

        chat = [ChatMessage(role=m.role, content=m.content) for m in messages]
        try:
            for part in self._llm.stream_chat(chat):
                if part.delta:
                    yield part.delta
        except Exception as exc:  # the client raises many kinds; all mean "server trouble"
            raise LLMError(
                f"the LLM server at {self.base_url} did not answer ({one_line(exc)}); "
                "check RAG_LLM_BASE_URL / RAG_LLM_MODEL or use --llm none"
            ) from exc


def make_backend(name: str, settings: Settings) -> ChatBackend | None:
    """The backend called `name`; None for the extractive `none` backend."""
    if name == "none":
        return None
    if name == "local":
        return LocalBackend(settings)
    if name == "openai":
        return OpenAIBackend(settings)
    raise LLMError(f"unknown LLM backend {name!r}; use one of {', '.join(BACKENDS)}")
