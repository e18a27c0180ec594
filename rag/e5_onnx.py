"""The packaged e5 on ONNX Runtime: exported at `rag setup`, run without torch.

The same e5, exported once (at `rag setup`) from the folder above to an ONNX graph
(BERT + mean pooling) that onnxruntime runs in float32. A cold process
needs neither torch nor sentence-transformers (about 5 s of imports on 2 cores): the
session memory-maps its weights (external data) and starts in ~0.2 s. Vectors agree
with torch fp32 at cosine >= 0.99999 (tests/test_onnx_embedder.py), closer than torch
bf16 does, so both runtimes share the embedder identity and a store built with one is
searched with the other.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from rag.e5_folder import e5_folder_path, ensure_e5_folder, install_folder, read_marker, write_json
from rag.records import ModelError, Progress, one_line

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


def onnx_folder_path(cache_dir: Path) -> Path:
    e5 = e5_folder_path(cache_dir)
    return e5.with_name(e5.name + "-onnx")


def onnx_source(e5_folder: Path) -> dict[str, Any]:
    """What the ONNX folder is built from; a different value means rebuild."""
    marker = read_marker(e5_folder) or {}
    return {"format": ONNX_FORMAT, "e5_blob_sha256": marker.get("blob_sha256")}


def onnx_is_current(folder: Path, source: dict[str, Any]) -> bool:
    marker = read_marker(folder, _ONNX_MARKER)
    return marker is not None and all(marker.get(k) == v for k, v in source.items())


def ensure_e5_onnx(cache_dir: Path, progress: Progress | None = None) -> Path:
    """Export the e5 folder to ONNX once; later calls just check two markers (~1 ms)."""
    e5_folder = ensure_e5_folder(cache_dir, progress)
    final = onnx_folder_path(cache_dir)
    source = onnx_source(e5_folder)
    if onnx_is_current(final, source):
        return final
    if progress:
        progress(f"Exporting the embedding model to ONNX in {final} (once, under a minute)")
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _write_onnx_folder(e5_folder, tmp, source)
        install_folder(tmp, final, lambda: onnx_is_current(final, source))
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
    write_json(dest / _ONNX_MARKER, source | build)  # last: the folder is complete


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
    write_json(dest / _SUBSET_TOKENIZER, data)
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

        build = read_marker(folder, _ONNX_MARKER) or {}
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
            f"the ONNX embedding model in {folder} does not load ({one_line(exc)[:200]}): "
            "delete that folder and run `rag setup` (or set RAG_EMBED_RUNTIME=torch)"
        ) from exc
