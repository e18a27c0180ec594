"""The store's snapshot saved in its folder, so a start does not refetch it: the
keyword (BM25) index and, with a Chroma server, each document's embedding sum.

Building it means fetching every chunk's text from Chroma and tokenizing it: at
100,000 chunks that is minutes (bench/scale.py), on every process start. So the built
index is pickled into `<store>/keyword/`, keyed by the store's freshness (manifest
generation and identity). A start with the same generation loads the file; after an
index change only what changed is fetched and tokenized (the manifest's chunk ids less
the saved ones), and the BM25 matrix is rebuilt from the saved token ids, since every
score depends on the whole corpus's statistics. With RAG_CHROMA_URL the folder holds
only this file, and a machine with an empty folder builds it on its first question.

It also keeps every chunk's normalized embedding, the dense ranking's matrix
(rag.retrieve.DenseIndex): reading them from Chroma took 20 s at 100,000 chunks on
every start, embedded or from a server. A server store of more than LOCAL_VECTORS_MAX
chunks keeps, instead, the sum of each document's embeddings (rag.retrieve.GroupSum),
from which the language biases come, and is ranked by the server
(retrieve._server_balanced_query). An update fetches the new chunks' vectors only: a
changed file has all new chunk ids (they hash its content).
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
from rag.records import Chunk
from rag.retrieve import Group, GroupSum, group_of, group_sums, unit_rows
from rag.store import KEYWORD_DIR_NAME, READ_PAGE, Store
from rag.tuning import LOCAL_VECTORS_MAX

# Bumped when KeywordIndex, tokenizing or the snapshot changes: an old file is rebuilt.
FORMAT = 2


@dataclass
class Snapshot:
    """What a querying process keeps of the store: the keyword index, and either each
    chunk's normalized embedding (`vectors`, rows as `index.chunks`) or, for a server
    store too large for that, each document's embedding sum (`sums`)."""

    index: KeywordIndex
    vectors: np.ndarray | None
    sums: dict[Group, GroupSum] | None


@dataclass
class Saved:
    format: int
    freshness: tuple[int, object]
    snapshot: Snapshot


def cache_path(store: Store) -> Path:
    """One file per store location and collection (a folder may serve several)."""
    key = f"{store.location}\0{store.settings.collection}".encode()
    return store.dir / KEYWORD_DIR_NAME / f"{hashlib.sha256(key).hexdigest()[:16]}.pkl"


def load_keyword_index(store: Store) -> KeywordIndex:
    """The store's keyword index: loaded, updated from the saved one, or built."""
    return load_snapshot(store).index


def load_snapshot(store: Store) -> Snapshot:
    """The store's snapshot: loaded, updated from the saved one, or built."""
    # Read before the chunks: a change meanwhile leaves the file one generation behind.
    freshness = store.freshness()
    local = not store.settings.chroma_url or store.count() <= LOCAL_VECTORS_MAX
    path = cache_path(store)
    saved = _load(path)
    if saved is not None and (saved.snapshot.vectors is not None) == local:
        if saved.freshness == freshness:
            return saved.snapshot
        # one of an empty store (read while a rebuild had emptied it) has nothing to
        # reuse, and its vectors no width to add rows to
        if saved.freshness[1] == freshness[1] and saved.snapshot.index.chunks:
            snapshot = _update(store, saved.snapshot)
            _save(path, Saved(FORMAT, freshness, snapshot))
            return snapshot
    # none saved, a rebuilt index, or the other kind: nothing to reuse
    chunks, vectors = store.all_chunks_and_embeddings()
    vectors = unit_rows(vectors)
    if local:
        snapshot = Snapshot(KeywordIndex(chunks), vectors, None)
    else:
        snapshot = Snapshot(KeywordIndex(chunks), None, group_sums(chunks, vectors))
    _save(path, Saved(FORMAT, freshness, snapshot))
    return snapshot


def _update(store: Store, old: Snapshot) -> Snapshot:
    """The snapshot of the manifest's chunks, fetching and tokenizing only those `old`
    lacks (with their vectors), and summing anew the documents whose chunks changed."""
    index = old.index
    records = store.manifest.files().values()
    wanted = [i for r in records if r.state == "done" for i in r.chunk_ids]
    kept = [index.positions[i] for i in wanted if i in index.positions]
    new, new_vectors = _with_vectors(
        store, store.chunks([i for i in wanted if i not in index.positions])
    )
    if old.vectors is not None and not new:
        new_vectors = new_vectors.reshape(0, old.vectors.shape[1])
    rows = index.tokenized.rows()
    vocab = dict(index.tokenized.vocab)
    added = tokenize(new, vocab)  # extends vocab
    all_rows = [rows[p] for p in kept] + added.rows()
    chunks = [index.chunks[p] for p in kept] + new
    updated = KeywordIndex(chunks, _compact(all_rows, vocab))
    if old.vectors is not None:
        return Snapshot(updated, np.concatenate([old.vectors[kept], new_vectors]), None)
    fetched = dict(zip([c.chunk_id for c in new], new_vectors, strict=True))
    return Snapshot(updated, None, _updated_sums(store, old, chunks, fetched))


def _with_vectors(store: Store, chunks: list[Chunk]) -> tuple[list[Chunk], np.ndarray]:
    """These chunks with their normalized embeddings (chunks deleted meanwhile left out)."""
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(chunks), READ_PAGE):
        found |= store.embeddings([c.chunk_id for c in chunks[start : start + READ_PAGE]])
    present = [c for c in chunks if c.chunk_id in found]
    if not present:
        return [], np.zeros((0, 0), dtype=np.float32)
    return present, unit_rows(np.stack([found[c.chunk_id] for c in present]))


def _updated_sums(
    store: Store, old: Snapshot, chunks: list[Chunk], fetched: dict[str, np.ndarray]
) -> dict[Group, GroupSum]:
    """The old sums of groups whose chunk ids are unchanged; the others summed anew
    (a changed file has all new chunk ids, so their vectors are mostly `fetched`)."""
    members: dict[Group, set[str]] = {}
    for chunk in chunks:
        members.setdefault(group_of(chunk), set()).add(chunk.chunk_id)
    before: dict[Group, set[str]] = {}
    for chunk in old.index.chunks:
        before.setdefault(group_of(chunk), set()).add(chunk.chunk_id)
    sums = old.sums or {}
    kept = {g: sums[g] for g, ids in members.items() if g in sums and before.get(g) == ids}
    changed = [c for c in chunks if group_of(c) not in kept]
    others, matrix = _with_vectors(store, [c for c in changed if c.chunk_id not in fetched])
    vectors = fetched | dict(zip([c.chunk_id for c in others], matrix, strict=True))
    present = [c for c in changed if c.chunk_id in vectors]
    if present:
        kept |= group_sums(present, np.stack([vectors[c.chunk_id] for c in present]))
    return kept


def _compact(rows: list[list[int]], vocab: dict[str, int]) -> Tokenized:
    """Token ids renumbered to those still used: bm25s sizes its matrix by them."""
    packed = Tokenized.from_rows(rows, vocab)
    used, ids = np.unique(packed.ids, return_inverse=True)
    number = {int(old): new for new, old in enumerate(used.tolist())}
    kept = {token: number[i] for token, i in vocab.items() if i in number}
    return Tokenized(ids.astype(np.int32), packed.starts, kept)


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
