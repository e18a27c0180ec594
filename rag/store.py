"""The store: chunk vectors in Chroma, and a manifest of indexed files beside them.

Chroma holds the chunks (text, metadata, embedding) and never embeds anything itself.
The manifest (SQLite, in the store folder) records, per file, the content hash and the
chunk ids it owns. Every change to Chroma is bracketed by the manifest: ids are written
as "pending" before Chroma is touched and "done" after, so a run killed at any moment
leaves enough to remove every chunk it may have written (no orphan, no duplicate).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from rag.config import Settings
from rag.records import Chunk, UserError

MANIFEST_NAME = "manifest.sqlite3"
CHROMA_DIR_NAME = "chroma"
STORE_FORMAT = "1"
# Chroma caps one write; stay well under it.
WRITE_BATCH = 1000


class StoreError(UserError):
    """The store cannot be used as it is; the message says what to do."""


@dataclass(frozen=True)
class FileRecord:
    path: str
    content_hash: str
    chunk_ids: list[str]
    state: str  # "done" or "pending"
    pending_ids: list[str]
    language: str
    url: str
    indexed_at: float


class Manifest:
    """SQLite record of which files are indexed, with which hash and chunk ids."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._create()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"the store's manifest {path} is damaged or not a rag store ({exc}); "
                "run `rag index --rebuild`"
            ) from exc

    def _create(self) -> None:
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS files (
                path TEXT PRIMARY KEY,
                content_hash TEXT NOT NULL,
                chunk_ids TEXT NOT NULL,
                state TEXT NOT NULL,
                pending_ids TEXT NOT NULL DEFAULT '[]',
                language TEXT NOT NULL DEFAULT '',
                url TEXT NOT NULL DEFAULT '',
                indexed_at REAL NOT NULL
            );
            """
        )

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, values: dict[str, str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    def files(self) -> dict[str, FileRecord]:
        rows = self.db.execute(
            "SELECT path, content_hash, chunk_ids, state, pending_ids, language, url, indexed_at "
            "FROM files ORDER BY path"
        ).fetchall()
        return {row[0]: _record(row) for row in rows}

    def chunk_count(self) -> int:
        return sum(len(r.chunk_ids) for r in self.files().values() if r.state == "done")

    def mark_pending(self, changes: Sequence[tuple[str, str, list[str]]]) -> None:
        """Before touching Chroma: remember every id these files may leave behind.

        `changes` holds (path, new content hash, ids the change may write); the ids the
        file owned so far are kept in pending too.
        """
        now = time.time()
        with self.transaction() as db:
            for path, content_hash, new_ids in changes:
                row = db.execute("SELECT chunk_ids, pending_ids FROM files WHERE path = ?", (path,))
                old = row.fetchone()
                owned = set(new_ids)
                if old:
                    owned |= set(json.loads(old[0])) | set(json.loads(old[1]))
                db.execute(
                    "INSERT INTO files(path, content_hash, chunk_ids, state, pending_ids, "
                    "indexed_at) VALUES(?, ?, '[]', 'pending', ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET "
                    "content_hash = excluded.content_hash, state = 'pending', "
                    "pending_ids = excluded.pending_ids",
                    (path, content_hash, json.dumps(sorted(owned)), now),
                )

    def mark_done(self, done: Sequence[tuple[str, str, list[str], str, str]]) -> None:
        """After Chroma holds exactly these ids: (path, hash, chunk ids, language, url)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE files SET content_hash = ?, chunk_ids = ?, state = 'done', "
                "pending_ids = '[]', language = ?, url = ?, indexed_at = ? WHERE path = ?",
                [(h, json.dumps(ids), lang, url, now, path) for path, h, ids, lang, url in done],
            )
            self._bump_generation(db)

    def forget(self, paths: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
            self._bump_generation(db)

    def _bump_generation(self, db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES('generation', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
        )
        db.execute(
            "INSERT INTO meta(key, value) VALUES('last_indexed', ?) ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value",
            (str(time.time()),),
        )

    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)


def _record(row: tuple[Any, ...]) -> FileRecord:
    return FileRecord(
        path=row[0],
        content_hash=row[1],
        chunk_ids=json.loads(row[2]),
        state=row[3],
        pending_ids=json.loads(row[4]),
        language=row[5],
        url=row[6],
        indexed_at=row[7],
    )


def open_chroma_client(settings: Settings) -> Any:
    """An embedded persistent Chroma, or a Chroma server when RAG_CHROMA_URL is set."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_url:
        url = urlparse(settings.chroma_url)
        if not url.hostname:
            raise StoreError(f"RAG_CHROMA_URL={settings.chroma_url!r} is not a URL")
        try:
            client = chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
            client.heartbeat()
        except Exception as exc:  # chromadb raises several kinds; all mean "unreachable"
            raise StoreError(
                f"cannot reach the Chroma server at {settings.chroma_url} ({_one_line(exc)}); "
                "start it (`chroma run --path DIR`) or unset RAG_CHROMA_URL"
            ) from exc
        return client
    path = settings.store_dir / CHROMA_DIR_NAME
    path.mkdir(parents=True, exist_ok=True)
    try:
        return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
    except Exception as exc:
        raise StoreError(
            f"the Chroma store in {path} cannot be opened ({_one_line(exc)}); "
            "run `rag index --rebuild`"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class Store:
    """The chunk collection in Chroma plus the manifest; one per store folder."""

    def __init__(
        self, settings: Settings, embed_identity: str, create: bool = True, rebuild: bool = False
    ) -> None:
        self.settings = settings
        self.embed_identity = embed_identity
        self.dir = settings.store_dir
        if not create and not (self.dir / MANIFEST_NAME).exists():
            raise StoreError(f"no index in {self.dir}; run `rag index` first")
        if not rebuild:  # --rebuild writes our own files beside foreign ones, deleting none
            self._check_folder()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.dir / MANIFEST_NAME)
        self._check_identity(self.manifest.get_meta("embed_model"))
        self.client = open_chroma_client(settings)
        self.collection = self._open_collection(create)

    @property
    def location(self) -> str:
        if self.settings.chroma_url:
            return f"{self.settings.chroma_url} (collection {self.settings.collection})"
        return str((self.dir / CHROMA_DIR_NAME).resolve())

    def _check_folder(self) -> None:
        """Refuse a folder that holds something other than a rag store."""
        if not self.dir.exists():
            return
        if not self.dir.is_dir():
            raise StoreError(f"the store path {self.dir} is not a folder")
        ours = {MANIFEST_NAME, f"{MANIFEST_NAME}-wal", f"{MANIFEST_NAME}-shm", CHROMA_DIR_NAME}
        names = {p.name for p in self.dir.iterdir()}
        if names and not names & ours and not names <= {"index.lock"}:
            raise StoreError(
                f"{self.dir} holds files that are not a rag store; choose another --store "
                "or run `rag index --rebuild` to replace it"
            )

    def _check_identity(self, recorded: str | None) -> None:
        if recorded and recorded != self.embed_identity:
            raise StoreError(
                f"this index was built with the embedding model {recorded!r}, not "
                f"{self.embed_identity!r}; run `rag index --rebuild` to re-embed everything"
            )

    def _open_collection(self, create: bool) -> Any:
        name = self.settings.collection
        try:
            if create:
                collection = self.client.get_or_create_collection(
                    name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"embed_model": self.embed_identity, "format": STORE_FORMAT},
                    embedding_function=None,
                )
            else:
                collection = self.client.get_collection(name, embedding_function=None)
        except Exception as exc:
            raise StoreError(
                f"the Chroma collection {name!r} cannot be opened ({_one_line(exc)}); "
                "run `rag index` (or `rag index --rebuild`)"
            ) from exc
        self._check_identity((collection.metadata or {}).get("embed_model"))
        if self.manifest.get_meta("embed_model") is None:
            self.manifest.set_meta({"embed_model": self.embed_identity, "format": STORE_FORMAT})
        return collection

    def close(self) -> None:
        self.manifest.close()

    # --- writes -----------------------------------------------------------------
    def upsert(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        for start in range(0, len(chunks), WRITE_BATCH):
            part = chunks[start : start + WRITE_BATCH]
            self.collection.upsert(
                ids=[c.chunk_id for c in part],
                embeddings=embeddings[start : start + WRITE_BATCH].astype(np.float32),
                documents=[c.text for c in part],
                metadatas=[c.metadata() for c in part],
            )

    def delete(self, ids: Iterable[str]) -> None:
        ids = sorted(set(ids))
        for start in range(0, len(ids), WRITE_BATCH):
            self.collection.delete(ids=ids[start : start + WRITE_BATCH])

    # --- reads ------------------------------------------------------------------
    def count(self) -> int:
        return int(self.collection.count())

    def all_ids(self) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            got = self.collection.get(include=[], limit=5000, offset=offset)["ids"]
            ids.update(got)
            if len(got) < 5000:
                return ids
            offset += len(got)

    def all_chunks(self) -> list[Chunk]:
        """Every chunk's text and metadata (no vectors): for keyword search."""
        chunks: list[Chunk] = []
        offset = 0
        while True:
            got = self.collection.get(include=["documents", "metadatas"], limit=5000, offset=offset)
            chunks += [
                Chunk.from_store(i, d or "", m or {})
                for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
            ]
            if len(got["ids"]) < 5000:
                return chunks
            offset += len(got["ids"])

    def query(self, embedding: np.ndarray, k: int) -> list[tuple[Chunk, float]]:
        """The k nearest chunks with their cosine similarity."""
        if k <= 0:
            return []
        result = self.collection.query(
            query_embeddings=[embedding.astype(np.float32)],
            n_results=k,
            include=["documents", "metadatas", "distances"],
        )
        return [
            (Chunk.from_store(i, d or "", m or {}), 1.0 - float(dist))
            for i, d, m, dist in zip(
                result["ids"][0],
                result["documents"][0],
                result["metadatas"][0],
                result["distances"][0],
                strict=True,
            )
        ]


def remove_store(settings: Settings) -> None:
    """Delete the store (for --rebuild): the collection, then the manifest.

    The collection is dropped through the client rather than by deleting its folder,
    because Chroma caches one client per folder in-process; only an embedded store
    that cannot even be opened is removed from disk.
    """
    if settings.chroma_url:
        client = open_chroma_client(settings)  # unreachable: StoreError, nothing deleted
        with contextlib.suppress(Exception):  # an absent collection is fine
            client.delete_collection(settings.collection)
    else:
        try:
            open_chroma_client(settings).delete_collection(settings.collection)
        except Exception:  # absent or damaged: remove what is on disk
            _remove_embedded_chroma(settings.store_dir / CHROMA_DIR_NAME)
    for name in (MANIFEST_NAME, f"{MANIFEST_NAME}-wal", f"{MANIFEST_NAME}-shm"):
        (settings.store_dir / name).unlink(missing_ok=True)


def _remove_embedded_chroma(path: Path) -> None:
    import shutil

    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    shutil.rmtree(path, ignore_errors=True)
