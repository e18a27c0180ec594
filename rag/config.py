"""All configuration in one place: defaults, overridden by RAG_* environment variables.

Every setting is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

# Offline by default: these must be set before transformers / chromadb / streamlit import.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

PACKAGED_EMBED_MODEL = "packaged:multilingual-e5-small"
# Read by Tesseract (rag.ocr), as are the pages of a PDF that have no text layer.
OCR_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Read by rag.formats and rag.formats_markup.
OFFICE_EXTENSIONS = (".pptx", ".xlsx", ".csv", ".odt", ".rtf", ".epub", ".eml")
SUPPORTED_EXTENSIONS = (
    (".txt", ".md", ".pdf", ".docx", ".html", ".htm") + OCR_IMAGE_EXTENSIONS + OFFICE_EXTENSIONS
)
LLM_BACKENDS = ("local", "openai", "none")  # rag.llm's backends, by name
LLM_REPACK = ("auto", "on", "off")
FOLLOWUP_REWRITE = ("rules", "llm")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROMPTS_DIR = PROJECT_ROOT / "prompts"


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rag"


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build with `Settings.from_env(**overrides)`."""

    docs_dir: Path = Path("seeds")
    store_dir: Path = Path(".rag")
    cache_dir: Path = field(default_factory=_default_cache_dir)
    chroma_url: str | None = None
    collection: str = "rag_chunks"
    embed_model: str = PACKAGED_EMBED_MODEL
    # onnx: the packaged e5 exported at `rag setup`, no torch on the query path (a cold
    # `rag search` ~4x faster); torch: sentence-transformers, embed_dtype applies.
    embed_runtime: str = "onnx"
    embed_dtype: str = "bfloat16"
    embed_batch: int = 16
    # An OpenAI-compatible /v1/embeddings server instead of the in-process model (rag
    # serve, TEI, vLLM ...); "" embeds in-process. See rag.e5_remote.
    embed_base_url: str = ""
    embed_api_key: str = ""
    # The model name sent to that server; "" is the packaged e5 as `rag serve` names it.
    embed_server_model: str = ""
    embed_server_batch: int = 64
    # Requests in flight at once: the next batch waits at the server while one runs.
    embed_server_concurrency: int = 2
    embed_server_timeout: float = 60.0
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    max_file_mb: float = 50.0
    # Tesseract languages for scans and images, "+"-joined; the installed ones are used
    ocr_languages: str = "eng+rus+deu+nor+vie"
    top_k: int = 5
    llm: str = "local"
    llm_base_url: str = "http://127.0.0.1:8080/v1"
    llm_model: str = "qwen2.5-coder-1.5b-instruct"
    llm_api_key: str = "not-needed"
    llm_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    # llama.cpp's weight repacking (CPU_REPACK): "auto" repacks except on CPUs with
    # AVX-512 VNNI, where the unpacked weights take llama.cpp's tiled prompt kernel
    # (prompt processing about 1.4x faster, see rag.cpu.repacks_weights); "on", "off".
    llm_repack: str = "auto"
    llm_context: int = 4096
    llm_max_tokens: int = 384
    # Source sentences in the LLM prompt (cl100k tokens), or "auto". Time to first token
    # is mostly prompt processing (~100 tokens/s on 2 AVX2 cores); at 700 the golden
    # set's median was 8.7 s, at 280 it is under 4 s, for fewer facts in reach
    # (bench/query.py --llm). "auto" sizes it per answer to the prompt speed measured on
    # this machine, so that the first token comes after about `first_token_target` s.
    context_tokens: str = "280"
    first_token_target: float = 2.5
    # When no retrieved chunk's cosine to the question reaches the threshold, the answer
    # is a refusal, with no LLM call. "auto": two thresholds, for chunks in the
    # question's language and in others, calibrated on the open store from its own
    # score distributions (see rag.gate; 0.810 / 0.779 on the seeds). A number is used
    # as it is for both (0 turns the gate off).
    refusal_threshold: float | str = "auto"
    history_turns: int = 6
    # How a follow-up becomes a standalone question: "rules" (rag.conversation, ~1 ms)
    # or "llm" (the answering model rewrites it, ~2 s with the local one). Rules ranked
    # the right file first more often on the conversation set and the local model
    # answered better from their question (bench/followups.py, README); a large model
    # behind --llm openai may rewrite better.
    followup_rewrite: str = "rules"
    answer_language: str = "auto"
    lock_wait: float = 120.0
    # With RAG_CHROMA_URL: an indexer's lease on the server lapses this long after its
    # last write, so a crashed indexer blocks others at most this long.
    chroma_lease: float = 300.0
    # `rag serve`: loopback unless told otherwise; any other address needs RAG_API_KEY.
    serve_host: str = "127.0.0.1"
    serve_port: int = 8765
    api_key: str = ""
    serve_max_body_kb: int = 1024
    # LLM answers waiting for the one generation slot; more are turned away with 429
    serve_queue: int = 4
    # The CLI's server: a URL, "" for the address `rag serve` wrote into the store
    # folder, or "off" to always answer in-process.
    server: str = ""

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then RAG_* variables, then explicit (non-None) overrides."""
        base = cls()
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(env_name(f.name), "").strip()
            if raw:
                values[f.name] = _coerce(getattr(base, f.name), raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("docs_dir", "store_dir", "cache_dir"):
            if name in values:
                values[name] = Path(str(values[name])).expanduser()
        if "context_tokens" in values:
            values["context_tokens"] = _context_tokens(str(values["context_tokens"]))
        if "refusal_threshold" in values:
            values["refusal_threshold"] = _refusal_threshold(values["refusal_threshold"])
        if "llm_repack" in values:
            values["llm_repack"] = _choice("llm_repack", str(values["llm_repack"]), LLM_REPACK)
        if "followup_rewrite" in values:
            values["followup_rewrite"] = _choice(
                "followup_rewrite", str(values["followup_rewrite"]), FOLLOWUP_REWRITE
            )
        if "llm" in values:
            values["llm"] = _choice("llm", str(values["llm"]), LLM_BACKENDS)
        if "answer_language" in values:
            values["answer_language"] = _answer_language(str(values["answer_language"]))
        for name, value in values.items():
            _check_limits(name, value)
        settings = replace(base, **values)  # type: ignore[arg-type]
        if settings.chunk_overlap >= settings.chunk_tokens:
            raise ConfigError(
                f"RAG_CHUNK_OVERLAP={settings.chunk_overlap} must be less than "
                f"RAG_CHUNK_TOKENS={settings.chunk_tokens}"
            )
        return settings

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


# The folders keep their short documented names (RAG_DOCS, not RAG_DOCS_DIR).
_ENV_NAMES = {"docs_dir": "RAG_DOCS", "store_dir": "RAG_STORE", "cache_dir": "RAG_CACHE"}


def env_name(setting: str) -> str:
    """The environment variable that sets `setting`."""
    return _ENV_NAMES.get(setting, f"RAG_{setting.upper()}")


def _context_tokens(raw: str) -> str:
    value = raw.strip().lower()
    if value == "auto" or (value.isdigit() and int(value) > 0):
        return value
    raise ConfigError(f"RAG_CONTEXT_TOKENS={raw!r} must be a positive number of tokens or 'auto'")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value in choices:
        return value
    raise ConfigError(f"{env_name(name)}={raw!r} must be one of: {', '.join(choices)}")


def _refusal_threshold(raw: object) -> float | str:
    """A number (0 turns the gate off), or "auto" (calibrated per store, rag.gate)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    value = str(raw).strip().lower()
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise ConfigError(
            f"RAG_REFUSAL_THRESHOLD={raw!r} must be a number (0 turns the gate off) or 'auto'"
        ) from None


# The lowest and highest value each numeric setting may take (None: no bound).
_LIMITS: dict[str, tuple[float, float | None]] = {
    "embed_batch": (1, None),
    "embed_server_batch": (1, None),
    "embed_server_concurrency": (1, None),
    "embed_server_timeout": (0.1, None),
    "chunk_tokens": (16, None),
    "chunk_overlap": (0, None),
    "max_file_mb": (0.01, None),
    "top_k": (1, None),
    "llm_threads": (1, None),
    "llm_context": (512, None),
    "llm_max_tokens": (1, None),
    "first_token_target": (0.1, None),
    "refusal_threshold": (0, 1),
    "history_turns": (0, None),
    "lock_wait": (0, None),
    "chroma_lease": (1, None),
    "serve_port": (0, 65535),
    "serve_max_body_kb": (1, None),
    "serve_queue": (0, None),
}


def _check_limits(name: str, value: object) -> None:
    """A number out of its setting's range is a clear error, not a silent misbehaviour
    (a threshold of 5 refuses every question, a top_k of 0 finds nothing)."""
    if name not in _LIMITS or isinstance(value, str | bool) or not isinstance(value, int | float):
        return
    low, high = _LIMITS[name]
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(f"{env_name(name)}={value!r} is out of range: it must be {bounds}")


def _answer_language(raw: str) -> str:
    from rag.languages import LANGUAGES

    value = raw.strip().lower()
    if value == "auto" or value in LANGUAGES:
        return value
    codes = ", ".join(sorted(LANGUAGES))
    raise ConfigError(f"RAG_ANSWER_LANGUAGE={raw!r} must be 'auto' or one of: {codes}")


def _coerce(default: object, raw: str, name: str) -> object:
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError as exc:
        kind = type(default).__name__
        raise ConfigError(f"{env_name(name)}={raw!r} is not a valid {kind}") from exc
    return raw


def debug_enabled() -> bool:
    """RAG_DEBUG=1: show the traceback of an internal error instead of one line."""
    return os.environ.get("RAG_DEBUG", "").strip() not in ("", "0")


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""
