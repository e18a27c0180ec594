"""Language-model backends behind one small interface: stream text for chat messages.

- `local`: llama.cpp running the packaged Qwen2.5-Coder-1.5B-Instruct GGUF (ChatML).
- `openai`: any OpenAI-compatible server (llama.cpp server, Ollama, vLLM).
- `none`: no model; the engine answers extractively (see rag.answer).
Both model backends go through llama-index's LLM wrappers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from rag.config import LLM_BACKENDS, Settings
from rag.cpu import cpu_flags, repacks_weights
from rag.records import UserError, one_line
from rag.tuning import LLM_REPEAT_PENALTY, LLM_SEED, LLM_TEMPERATURE, LLM_TOP_P

BACKENDS = LLM_BACKENDS
# RAG_CONTEXT_TOKENS=auto: the source budget (cl100k tokens, about as many as Qwen's)
# before the local model's prompt speed is measured (280 gave a 3.0 s first token on an
# AVX2 build with 2 cores, bench/query.py), its bounds, and the prompt tokens that are
# neither cached nor sources (template and question, ~60-90 in the golden set).
AUTO_UNMEASURED_TOKENS = 280
AUTO_MIN_TOKENS = 200
AUTO_MAX_TOKENS = 1500
AUTO_REMOTE_TOKENS = 1000  # an LLM server (GPU) processes prompts far faster than a CPU
QUESTION_TOKENS = 80
FIRST_DECODE_S = 0.1  # one decode step of the 1.5B model on 2 cores, ~12 tokens/s
CHATML_STOP = ["<|im_end|>", "<|endoftext|>", "<|im_start|>"]
_LOAD_LOCK = threading.Lock()


class LLMError(UserError):
    """The language model cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


class ChatBackend(Protocol):
    name: str

    def stream(self, messages: Sequence[Message]) -> Iterator[str]: ...


_OPEN_REPLY = "<|im_start|>assistant\n"


def chatml(messages: Sequence[Any]) -> str:
    """Qwen's ChatML prompt, ending with the open assistant turn.

    The system message comes first and never changes, so llama.cpp re-uses its cached
    prefix across questions and only the sources and the question are processed anew.
    """
    parts = [f"<|im_start|>{_role(m)}\n{m.content}<|im_end|>\n" for m in messages]
    return "".join(parts) + _OPEN_REPLY


def _role(message: Any) -> str:
    role = message.role
    return str(getattr(role, "value", role))


class PrefillMeter:
    """How fast this machine processes prompt tokens, measured on the prompts it runs
    (the warm-up's fixed prefix, then every answer's sources), so the context can be
    sized to the time the asker waits for the first token."""

    MIN_TOKENS = 48  # fewer new tokens time the first decode step, not the prompt

    def __init__(self) -> None:
        self.tokens_per_s: float | None = None

    def record(self, new_tokens: int, seconds: float) -> None:
        if new_tokens < self.MIN_TOKENS or seconds <= 0:
            return
        speed = new_tokens / seconds
        previous = self.tokens_per_s
        self.tokens_per_s = speed if previous is None else 0.7 * previous + 0.3 * speed


def context_budget(
    setting: str, backend: ChatBackend | None, elapsed_s: float, target_s: float
) -> int:
    """Source tokens for the prompt: the number in RAG_CONTEXT_TOKENS, or for `auto`
    as many as the measured prompt speed processes in the time left before the first
    token is due (`target_s`, of which `elapsed_s` went to retrieval already)."""
    if setting != "auto":
        return int(setting)
    if backend is None or backend.name != "local":
        return AUTO_REMOTE_TOKENS
    speed = backend.prefill.tokens_per_s  # type: ignore[attr-defined]
    if not speed:
        return AUTO_UNMEASURED_TOKENS
    budget = (target_s - elapsed_s - FIRST_DECODE_S) * speed - QUESTION_TOKENS
    return int(min(AUTO_MAX_TOKENS, max(AUTO_MIN_TOKENS, budget)))


@contextmanager
def weight_repacking(repack: bool) -> Iterator[None]:
    """llama.cpp models loaded inside this block are (or are not) repacked.

    llama-cpp-python's `Llama` has no argument for it: it takes its model parameters
    from `llama_model_default_params()`, so for the load that function answers with
    `use_extra_bufts` set (the lock keeps two loads from swapping it under each other).
    """
    import llama_cpp.llama_cpp as native

    with _LOAD_LOCK:
        default = native.llama_model_default_params

        def params() -> Any:
            chosen = default()
            chosen.use_extra_bufts = repack
            return chosen

        native.llama_model_default_params = params
        try:
            yield
        finally:
            native.llama_model_default_params = default


class LocalBackend:
    """llama.cpp in-process; one generation at a time (the model is not re-entrant)."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        from llama_index.llms.llama_cpp import LlamaCPP

        from rag.models import ensure_llm_gguf

        path = ensure_llm_gguf(settings.cache_dir)
        self._lock = threading.Lock()
        self.prefill = PrefillMeter()
        self._pinned = 0  # prompt tokens that llama.cpp's cache holds evaluated alone
        self.repack = repacks_weights(settings.llm_repack, cpu_flags())
        try:
            with weight_repacking(self.repack):
                self._llm = LlamaCPP(
                    model_path=str(path),
                    temperature=LLM_TEMPERATURE,
                    max_new_tokens=settings.llm_max_tokens,
                    context_window=settings.llm_context,
                    generate_kwargs={
                        "top_p": LLM_TOP_P,
                        # The same seed for every reply: without it llama-cpp-python
                        # draws each reply's seed from the one before, so an answer
                        # depended on how many came before it.
                        "seed": LLM_SEED,
                        "repeat_penalty": LLM_REPEAT_PENALTY,
                        "stop": CHATML_STOP,
                    },
                    model_kwargs={
                        "n_threads": settings.llm_threads,
                        "n_threads_batch": settings.llm_threads,
                        "n_batch": 512,
                        "verbose": False,
                    },
                    verbose=False,
                )
        except Exception as exc:
            raise LLMError(f"the local model {path} could not be loaded ({exc})") from exc

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        prompt = chatml(messages)
        with self._lock:
            new_tokens = self._pin_prefix(prompt, fixed_part(messages))
            started = time.perf_counter()
            timed = False
            for part in self._llm.stream_complete(prompt, formatted=True):
                if not timed:
                    self.prefill.record(new_tokens, time.perf_counter() - started)
                    timed = True
                if part.delta:
                    yield part.delta

    def _pin_prefix(self, prompt: str, fixed: str) -> int:
        """Keep in llama.cpp's cache only the prompt's `fixed` start (system prompt,
        worked examples, the template's head), evaluated on its own; return the prompt
        tokens left to process.

        llama.cpp reuses whatever prefix the previous prompt shares, and logits computed
        from another split point differ in their last bits: the same question then got
        another answer depending on what was asked before it. Cut at one fixed point,
        a prompt is always processed the same way, so its reply is reproducible."""
        llama = self._llm._model
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        pinned = llama.tokenize(fixed.encode("utf-8"), add_bos=True, special=True)
        shared = _common_length(pinned, tokens)
        cached = _common_length(llama._input_ids.tolist(), tokens[:shared])
        # a prefix cut elsewhere was evaluated in other batches: its last bits differ
        if cached < shared or shared != self._pinned:
            self._pinned = shared
            llama.reset()
            started = time.perf_counter()
            llama.eval(tokens[:shared])
            # the longest prompt processing there is: the speed RAG_CONTEXT_TOKENS=auto
            # sizes the sources by
            self.prefill.record(shared, time.perf_counter() - started)
        llama.n_tokens = min(llama.n_tokens, shared)
        return len(tokens) - llama.n_tokens


def fixed_part(messages: Sequence[Message]) -> str:
    """The prompt's start that is the same for every question: the messages before the
    last (system prompt, worked examples) and the last one's opening lines where they
    are those of the user messages before it (the template's head, "Sources:")."""
    *before, last = messages
    head = ""
    asked = [m.content for m in before if m.role == last.role]
    if asked:
        shared = os.path.commonprefix([asked[-1], last.content])
        head = shared[: shared.rfind("\n") + 1]
    return f"{chatml(before).removesuffix(_OPEN_REPLY)}<|im_start|>{last.role}\n{head}"


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    shared = 0
    for old, new in zip(a, b, strict=False):
        if old != new:
            break
        shared += 1
    return shared


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
            temperature=LLM_TEMPERATURE,
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
