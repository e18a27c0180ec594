"""Incremental indexing: folder -> documents -> chunks -> embeddings -> store.

Files are compared to the manifest by content hash, so an unchanged folder is checked
without loading the embedding model. Changed files are written in groups, each group
bracketed by the manifest's pending/done marks (see rag.store), which makes a run that
is killed at any point recoverable by the next one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.chunking import chunk_document
from rag.config import Settings
from rag.files import file_sha256
from rag.ingest import IngestError, read_document, scan_folder
from rag.models import embedder_identity, load_embedder
from rag.ocr import OcrOptions
from rag.records import Chunk, Document, Skipped, UserError
from rag.server_manifest import Lease, server_lease
from rag.store import (
    INDEX_LOCK_NAME,
    Store,
    StoreError,
    connect_server,
    remove_store,
    store_file_lock,
)

# Chunks embedded and written per group: big enough to keep the embedder busy, small
# enough that a killed run loses little work.
GROUP_CHUNKS = 64


class PassageEmbedder(Protocol):
    def embed_passages(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class IndexReport:
    files: int = 0
    chunks: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


@contextmanager
def store_lock(store_dir: Path, wait_seconds: float = 120.0) -> Iterator[None]:
    """One indexer per store: a second one waits, then gives up with a clear message."""

    def announce() -> None:
        print(f"waiting for another indexer on {store_dir} ...", file=sys.stderr)

    # A whole indexing run holds it: trying 5 times a second is plenty.
    lock = store_file_lock(
        store_dir,
        INDEX_LOCK_NAME,
        wait_seconds,
        _another_indexer,
        poll_seconds=0.2,
        on_first_wait=announce,
    )
    try:
        with lock:
            yield
    finally:
        lock.close()


def _another_indexer(lock: Path) -> UserError:
    return UserError(
        f"another indexer is still writing to {lock.parent}; try again when it has finished"
    )


def require_docs_folder(docs_dir: Path) -> None:
    """Raise a one-line UserError unless `docs_dir` is a folder."""
    if not docs_dir.is_dir():
        problem = "is not a folder" if docs_dir.exists() else "does not exist"
        raise UserError(f"the documents folder {docs_dir} {problem}")


class Indexer:
    """Brings a store in line with a folder; see `index_folder`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        embedder_factory: Callable[[], PassageEmbedder],
        progress: bool,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder_factory = embedder_factory
        self._embedder: PassageEmbedder | None = None
        self.progress = progress
        self.report = IndexReport()
        # The group being embedded while this thread reads the next files (_queue_group).
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[list[tuple[Document, list[Chunk]]], Future[np.ndarray]] | None = None

    @property
    def embedder(self) -> PassageEmbedder:
        if self._embedder is None:
            self._embedder = self.embedder_factory()
        return self._embedder

    def run(self) -> IndexReport:
        started = time.perf_counter()
        docs_dir = self.settings.docs_dir
        require_docs_folder(docs_dir)
        self._check_same_folder()
        self._recover()
        paths, skipped = scan_folder(docs_dir, self.settings.max_file_bytes)
        self.report.skipped = list(skipped)
        known = self.store.manifest.files()
        on_disk = {p.relative_to(docs_dir).as_posix(): p for p in paths}
        skipped_paths = {s.path for s in skipped}
        # A file that can no longer be read keeps its last good version (nothing is lost).
        gone = [p for p in known if p not in on_disk and p not in skipped_paths]
        if known and not on_disk and len(gone) == len(known):
            raise UserError(
                f"the documents folder {docs_dir} holds no documents to index: indexing it would "
                f"remove all {len(known)} indexed files (is a drive not mounted?); to empty "
                "the index, run `rag index --rebuild`"
            )
        self._remember_folder()
        self._remove(gone)
        changed = self._changed(on_disk, known)
        try:
            self._write(changed, known)
        finally:
            if self._pool is not None:  # after a failure: drop the group not yet embedded
                self._pool.shutdown(wait=False, cancel_futures=True)
        self.report.files = len(self.store.manifest.files())
        self.report.chunks = self.store.manifest.chunk_count()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _check_same_folder(self) -> None:
        """Refuse a documents folder other than the one the store indexes: its run would
        remove every file of that one (a typo in --docs, another RAG_DOCS). The store
        and the folder may have moved, together or the store alone."""
        recorded, wanted = self.store.docs_folders(), self.settings.docs_dir.resolve()
        if recorded and wanted not in recorded:
            indexed = self.store.docs_folder()
            raise UserError(
                f"the store {self.settings.store_dir} indexes the documents folder "
                f"{indexed}, not {wanted}: use --docs {indexed} or another --store, or "
                f"run `rag index --rebuild --docs {wanted}` to replace its index"
            )

    def _remember_folder(self) -> None:
        """Record the folder in an embedded store (one made before this adopts it).
        Not in a Chroma server's: each machine reads its own copy of the folder."""
        if not self.settings.chroma_url:
            self.store.remember_docs_folder(self.settings.docs_dir)

    def _recover(self) -> None:
        """Finish what a killed run left: drop its pending ids, and any orphan."""
        manifest = self.store.manifest
        pending = [r for r in manifest.files().values() if r.state == "pending"]
        if pending:
            self.store.delete(i for r in pending for i in r.pending_ids + r.chunk_ids)
            manifest.forget(r.path for r in pending)
        if self.store.count() == manifest.chunk_count():
            return
        # Counts disagree (e.g. a Chroma server that lost data): reconcile id by id.
        expected = {i for r in manifest.files().values() for i in r.chunk_ids}
        present = self.store.all_ids()
        self.store.delete(present - expected)
        incomplete = [r.path for r in manifest.files().values() if set(r.chunk_ids) - present]
        if incomplete:
            self.store.delete(i for p in incomplete for i in manifest.files()[p].chunk_ids)
            manifest.forget(incomplete)

    def _remove(self, paths: list[str]) -> None:
        if not paths:
            return
        records = self.store.manifest.files()
        self.store.manifest.mark_pending([(p, records[p].content_hash, []) for p in paths])
        self.store.delete(i for p in paths for i in records[p].chunk_ids)
        self.store.manifest.forget(paths)
        self.report.removed += len(paths)

    def _changed(self, on_disk: dict[str, Path], known: dict[str, Any]) -> list[tuple[str, Path]]:
        changed = []
        for rel, path in on_disk.items():
            record = known.get(rel)
            try:
                digest = file_sha256(path)
            except OSError as exc:
                self.report.skipped.append(Skipped(rel, f"cannot read: {exc.strerror or exc}"))
                continue
            if record and record.state == "done" and record.content_hash == digest:
                self.report.unchanged += 1
            else:
                changed.append((rel, path))
        return changed

    def _write(self, changed: list[tuple[str, Path]], known: dict[str, Any]) -> None:
        bar = _progress_bar(len(changed), self.progress)
        group: list[tuple[Document, list[Chunk]]] = []
        for rel, path in changed:
            try:
                doc = self._read(path, rel, bar)
            except IngestError as exc:
                kept = " (previous version kept)" if rel in known else ""
                self.report.skipped.append(Skipped(rel, f"{exc}{kept}"))
                bar.update(1)
                continue
            chunks = chunk_document(doc, self.settings.chunk_tokens, self.settings.chunk_overlap)
            if not chunks:
                self.report.skipped.append(Skipped(rel, "no text to index"))
                bar.update(1)
                continue
            group.append((doc, chunks))
            if sum(len(c) for _, c in group) >= GROUP_CHUNKS:
                self._queue_group(group, known, bar)
                group = []
        if group:
            self._queue_group(group, known, bar)
        self._write_ahead(known, bar)
        bar.close()

    def _queue_group(
        self, group: list[tuple[Document, list[Chunk]]], known: dict[str, Any], bar: Any
    ) -> None:
        """Start embedding `group`, then write the group before it: the embedder (a
        server, or onnxruntime outside the GIL) works on one group while this thread
        writes the last one and reads and chunks the next files."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="embed")
        texts = [c.text for _, chunks in group for c in chunks]
        future = self._pool.submit(lambda: self.embedder.embed_passages(texts))
        self._write_ahead(known, bar)
        self._ahead = (group, future)

    def _write_ahead(self, known: dict[str, Any], bar: Any) -> None:
        if self._ahead is None:
            return
        group, future = self._ahead
        self._ahead = None
        self._write_group(group, future.result(), known)
        bar.update(len(group))

    def _read(self, path: Path, rel: str, bar: Any) -> Document:
        def report(message: str) -> None:  # OCR takes seconds a page: say where it is
            bar.set_postfix_str(f"{rel}: {message}")

        ocr = OcrOptions(self.settings.ocr_languages, report)
        try:
            return read_document(path, self.settings.docs_dir, self.settings.max_file_bytes, ocr)
        finally:
            bar.set_postfix_str("")

    def _write_group(
        self,
        group: list[tuple[Document, list[Chunk]]],
        vectors: np.ndarray,
        known: dict[str, Any],
    ) -> None:
        # `vectors` are made before anything is marked: an embedder that fails (a server
        # down) leaves these files as they were, where a pending mark would make the
        # next run drop their previous version.
        manifest = self.store.manifest
        chunks = [c for _, doc_chunks in group for c in doc_chunks]
        manifest.mark_pending(
            [(doc.path, doc.content_hash, [c.chunk_id for c in chunks]) for doc, chunks in group]
        )
        new_ids = {c.chunk_id for c in chunks}
        stale = {i for doc, _ in group if doc.path in known for i in known[doc.path].chunk_ids}
        # New version first, then the old one out: a query from another process in
        # between finds the file (in one version or both), never neither.
        self.store.upsert(chunks, vectors)
        self.store.delete(stale - new_ids)
        manifest.mark_done(
            [
                (doc.path, doc.content_hash, [c.chunk_id for c in cs], doc.language, doc.url or "")
                for doc, cs in group
            ]
        )
        for doc, _ in group:
            if doc.path in known:
                self.report.updated += 1
            else:
                self.report.added += 1


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0 or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="indexing", file=sys.stderr, leave=False)


def index_folder(
    settings: Settings,
    rebuild: bool = False,
    progress: bool = True,
    embedder_factory: Callable[[], PassageEmbedder] | None = None,
) -> IndexReport:
    """Index `settings.docs_dir` into `settings.store_dir`, incrementally."""
    factory = embedder_factory or (lambda: load_embedder(settings))
    with store_lock(settings.store_dir, settings.lock_wait), writer_lease(settings) as lease:
        if rebuild:
            remove_store(settings)
        store = Store(settings, embedder_identity(settings), create=True, rebuild=rebuild)
        try:
            store.manifest.hold(lease)
            return Indexer(settings, store, factory, progress).run()
        finally:
            store.close()


@contextmanager
def writer_lease(settings: Settings) -> Iterator[Lease | None]:
    """With a Chroma server, the lease that keeps indexers on other machines out
    (rag.server_manifest); the local index.lock cannot see them."""
    if not settings.chroma_url:
        yield None
        return
    connection = connect_server(settings.chroma_url)
    try:
        with server_lease(
            connection.client,
            settings.collection,
            settings.chroma_url,
            settings.chroma_lease,
            settings.lock_wait,
        ) as lease:
            yield lease
    finally:
        connection.close()


__all__ = ["IndexReport", "StoreError", "index_folder", "require_docs_folder", "store_lock"]
