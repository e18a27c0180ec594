"""The keyword (BM25) index saved in the store folder, so a start does not refetch it.

Building it means fetching every chunk's text from Chroma and tokenizing it: at
100,000 chunks that is minutes (bench/scale.py), on every process start. So the built
index is pickled into `<store>/keyword/`, keyed by the store's freshness (manifest
generation and identity). A start with the same generation loads the file; after an
index change only what changed is fetched and tokenized (the manifest's chunk ids less
the saved ones), and the BM25 matrix is rebuilt from the saved token ids, since every
score depends on the whole corpus's statistics. With RAG_CHROMA_URL the folder holds
only this file, and a machine with an empty folder builds it on its first question.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.keyword import KeywordIndex, Tokenized, tokenize
from rag.store import KEYWORD_DIR_NAME, Store

# Bumped when KeywordIndex or tokenizing changes: an old file is then rebuilt.
FORMAT = 1


@dataclass
class Saved:
    format: int
    freshness: tuple[int, object]
    index: KeywordIndex


def cache_path(store: Store) -> Path:
    """One file per store location and collection (a folder may serve several)."""
    key = f"{store.location}\0{store.settings.collection}".encode()
    return store.dir / KEYWORD_DIR_NAME / f"{hashlib.sha256(key).hexdigest()[:16]}.pkl"


def load_keyword_index(store: Store) -> KeywordIndex:
    """The store's keyword index: loaded, updated from the saved one, or built."""
    # Read before the chunks: a change meanwhile leaves the file one generation behind.
    freshness = store.freshness()
    path = cache_path(store)
    saved = _load(path)
    if saved is not None and saved.freshness == freshness:
        return saved.index
    if saved is not None and saved.freshness[1] == freshness[1]:
        index = _update(store, saved.index)
    else:  # none saved, or a rebuilt index: nothing to reuse
        index = KeywordIndex(store.all_chunks())
    _save(path, Saved(FORMAT, freshness, index))
    return index


def _update(store: Store, old: KeywordIndex) -> KeywordIndex:
    """The index of the manifest's chunks, tokenizing only those `old` lacks."""
    records = store.manifest.files().values()
    wanted = [i for r in records if r.state == "done" for i in r.chunk_ids]
    kept = [old.positions[i] for i in wanted if i in old.positions]
    new = store.chunks([i for i in wanted if i not in old.positions])
    rows = old.tokenized.rows()
    vocab = dict(old.tokenized.vocab)
    added = tokenize(new, vocab)  # extends vocab
    all_rows = [rows[p] for p in kept] + added.rows()
    chunks = [old.chunks[p] for p in kept] + new
    return KeywordIndex(chunks, _compact(all_rows, vocab))


def _compact(rows: list[list[int]], vocab: dict[str, int]) -> Tokenized:
    """Token ids renumbered to those still used: bm25s sizes its matrix by them."""
    starts = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=starts[1:])
    flat = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(starts[-1]))
    used, ids = np.unique(flat, return_inverse=True)
    number = {int(old): new for new, old in enumerate(used.tolist())}
    kept = {token: number[i] for token, i in vocab.items() if i in number}
    return Tokenized(ids.astype(np.int32), starts, kept)


def _load(path: Path) -> Saved | None:
    try:
        with path.open("rb") as handle:
            saved = pickle.load(handle)
    except Exception:  # absent, partial or from another version: rebuilt
        return None
    return saved if isinstance(saved, Saved) and saved.format == FORMAT else None


def _save(path: Path, saved: Saved) -> None:
    """Written whole, then renamed: a reader never sees half a file."""
    with contextlib.suppress(OSError):  # a read-only folder: rebuilt next start
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                pickle.dump(saved, out, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
