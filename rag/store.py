"""The store: chunk vectors in Chroma, and a manifest of indexed files beside them.

Chroma holds the chunks (text, metadata, embedding) and never embeds anything itself.
The manifest (SQLite, in the store folder) records, per file, the content hash and the
chunk ids it owns. Every change to Chroma is bracketed by the manifest: ids are written
as "pending" before Chroma is touched and "done" after, so a run killed at any moment
leaves enough to remove every chunk it may have written (no orphan, no duplicate).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from rag.config import Settings
from rag.records import Chunk, UserError, one_line

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
        # One engine serves several threads (each Streamlit session runs its script in
        # its own thread), so the connection is shared and every use holds this lock.
        self._lock = threading.RLock()
        try:
            self.db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
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
        with self._lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        with self._lock:
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
        with self._lock:
            rows = self.db.execute(
                "SELECT path, content_hash, chunk_ids, state, pending_ids, language, url, "
                "indexed_at FROM files ORDER BY path"
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
        # A new manifest (after --rebuild) starts from the clock in milliseconds, not 1,
        # so it never repeats a generation that caches keyed on it saw before.
        db.execute(
            "INSERT INTO meta(key, value) VALUES('generation', ?) ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
            (str(time.time_ns() // 1_000_000),),
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
    """An embedded persistent Chroma, or a Chroma server when RAG_CHROMA_URL is set.

    An embedded client gets a Chroma "System" of its own (see `_private_client`); use it
    under the store's `AccessLock` only.
    """
    return _connect(settings)[0]


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def _connect(settings: Settings) -> tuple[Any, Any]:
    """(client, its private System or None for a server)."""
    import chromadb

    if settings.chroma_url:
        url = urlparse(settings.chroma_url)
        if not url.hostname:
            raise StoreError(f"RAG_CHROMA_URL={settings.chroma_url!r} is not a URL")
        try:
            client = chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=_chroma_settings(),
            )
            client.heartbeat()
        except Exception as exc:  # chromadb raises several kinds; all mean "unreachable"
            raise StoreError(_unreachable(settings.chroma_url, exc)) from exc
        return client, None
    path = settings.store_dir / CHROMA_DIR_NAME
    path.mkdir(parents=True, exist_ok=True)
    try:
        return _private_client(path)
    except Exception as exc:
        raise StoreError(
            f"the Chroma store in {path} cannot be opened ({one_line(exc)}); "
            "run `rag index --rebuild`"
        ) from exc


def _unreachable(url: str, exc: BaseException) -> str:
    return (
        f"cannot reach the Chroma server at {url} ({one_line(exc)}); "
        "start it (`chroma run --path DIR`) or unset RAG_CHROMA_URL"
    )


_SYSTEMS_LOCK = threading.Lock()


def _private_client(path: Path) -> tuple[Any, Any]:
    """A PersistentClient whose Chroma System no other client shares.

    chromadb keeps one System per folder and process (SharedSystemClient), and a loaded
    System never sees vectors that another process wrote later: its queries keep
    answering from the index as it was when loaded (tests/test_watch.py checks this).
    So every Store loads the folder afresh in a System of its own, taken out of that
    cache, which also means no other client in this process can close it under us.
    """
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient as Shared

    key = str(path)
    with _SYSTEMS_LOCK:
        Shared._identifier_to_system.pop(key, None)
        Shared._identifier_to_refcount.pop(key, None)
        try:
            client = chromadb.PersistentClient(path=key, settings=_chroma_settings())
        finally:
            system = Shared._identifier_to_system.pop(key, None)
            Shared._identifier_to_refcount.pop(key, None)
    return client, system


def _stop(system: Any) -> None:
    if system is not None:
        with contextlib.suppress(Exception):  # already stopped
            system.stop()


ACCESS_LOCK_NAME = "chroma.lock"


class AccessLock:
    """Serializes every use of an embedded Chroma folder, across threads and processes.

    Chroma's embedded store is not safe for several processes: a System that loads the
    vector index while another process writes it fails ("Failed to apply logs to the
    hnsw segment writer") or crashes the process (a segmentation fault, seen with an
    indexer writing and a second process opening and querying). Each call into Chroma
    is short, so every one of them takes this lock (an exclusive flock, released by the
    kernel when a process dies) and a reader waits at most one write batch.
    """

    def __init__(self, store_dir: Path, wait_seconds: float) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self._handle = open(store_dir / ACCESS_LOCK_NAME, "a+")  # noqa: SIM115 (held open)
        self._threads = threading.RLock()  # flock does not exclude threads sharing the fd
        self._depth = 0
        self._wait = wait_seconds
        self.path = store_dir / ACCESS_LOCK_NAME

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._depth == 0:
                self._flock()
        except BaseException:
            self._threads.release()
            raise
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._threads.release()

    def _flock(self) -> None:
        deadline = time.monotonic() + self._wait
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"the store {self.path.parent} is busy (another process holds "
                        f"{self.path.name}); try again"
                    ) from None
                time.sleep(0.005)

    def close(self) -> None:
        self._handle.close()


class _NoLock:
    """A Chroma server serializes its own clients."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


class _Collection:
    """The Store's Chroma collection: each call under the access lock, retried once.

    A call that fails is retried once on a fresh connection (a restarted Chroma server,
    a System closed by Store.close while a query was still running); if that fails too,
    the error becomes a one-line StoreError.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store._collection, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._store._call(name, args, kwargs)


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
        # Read before Chroma is loaded: a change in between shows as not current.
        self._opened_generation = self.manifest.generation()
        self._manifest_file = _file_identity(self.dir / MANIFEST_NAME)
        self._system: Any = None
        self._access: AccessLock | _NoLock = _NoLock()
        try:
            self._check_identity(self.manifest.get_meta("embed_model"))
            if not settings.chroma_url:
                self._access = AccessLock(self.dir, settings.lock_wait)
            with self._access:
                self.client, self._system = _connect(settings)
                self._collection = self._open_collection(create)
        except BaseException:
            self.close()
            raise
        # Everything else goes through this wrapper (rag.retrieve uses it too).
        self.collection: Any = _Collection(self)

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
        if names and not names & ours and not names <= {"index.lock", ACCESS_LOCK_NAME}:
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
                f"the Chroma collection {name!r} cannot be opened ({one_line(exc)}); "
                "run `rag index` (or `rag index --rebuild`)"
            ) from exc
        self._check_identity((collection.metadata or {}).get("embed_model"))
        if self.manifest.get_meta("embed_model") is None:
            self.manifest.set_meta({"embed_model": self.embed_identity, "format": STORE_FORMAT})
        return collection

    def close(self) -> None:
        """Release the manifest, the Chroma System and the lock (idempotent)."""
        if hasattr(self, "manifest"):
            self.manifest.close()
        _stop(self._system)
        self._system = None
        self._access.close()

    def freshness(self) -> tuple[int, tuple[int, int] | None]:
        """Changes when any process changes the index: (generation, manifest file).

        The file identity catches a `--rebuild` elsewhere, which deletes the manifest
        and starts a new one whose generation may equal the old one.
        """
        return self.manifest.generation(), _file_identity(self.dir / MANIFEST_NAME)

    def is_current(self) -> bool:
        """False once another process changed the index after this Store was opened."""
        try:
            return self.freshness() == (self._opened_generation, self._manifest_file)
        except sqlite3.Error:  # the manifest was replaced or damaged: re-open to find out
            return False

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._access:
            try:
                return getattr(self._collection, name)(*args, **kwargs)
            except UserError:
                raise
            except Exception:
                pass  # one retry on a fresh connection, below
            try:
                self._reconnect()
                return getattr(self._collection, name)(*args, **kwargs)
            except UserError:
                raise
            except Exception as exc:
                raise StoreError(self._failure(exc)) from exc

    def _reconnect(self) -> None:
        old = self._system
        self.client, self._system = _connect(self.settings)
        _stop(old)
        try:
            self._collection = self.client.get_collection(
                self.settings.collection, embedding_function=None
            )
        except Exception as exc:
            raise StoreError(
                f"the Chroma collection {self.settings.collection!r} is gone "
                f"({one_line(exc)}); run `rag index`"
            ) from exc

    def _failure(self, exc: BaseException) -> str:
        if self.settings.chroma_url:
            return (
                f"the Chroma server at {self.settings.chroma_url} failed ({one_line(exc)}); "
                "check that it is running (`chroma run --path DIR`), then try again"
            )
        return (
            f"the Chroma store in {self.dir / CHROMA_DIR_NAME} failed ({one_line(exc)}); "
            "if this persists, run `rag index --rebuild`"
        )

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

    def language_centroids(self) -> dict[str, tuple[np.ndarray, int]]:
        """The mean embedding of each language's chunks, and how many there are."""
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        offset = 0
        while True:
            got = self.collection.get(
                include=["embeddings", "metadatas"], limit=5000, offset=offset
            )
            for vector, meta in zip(got["embeddings"], got["metadatas"], strict=True):
                language = str((meta or {}).get("language") or "und")
                sums[language] = sums.get(language, 0) + np.asarray(vector, dtype=np.float32)
                counts[language] = counts.get(language, 0) + 1
            if len(got["ids"]) < 5000:
                return {lang: (sums[lang] / counts[lang], counts[lang]) for lang in sums}
            offset += len(got["ids"])

    def query(
        self, embedding: np.ndarray, k: int, where: dict[str, str] | None = None
    ) -> list[tuple[Chunk, float]]:
        """The k nearest chunks (matching `where`) with their cosine similarity."""
        if k <= 0:
            return []
        result = self.collection.query(
            query_embeddings=[embedding.astype(np.float32)],
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        # A System loaded before another process deleted chunks may still find them in
        # its vector index; their rows are gone (no metadata), so they are left out.
        return [
            (Chunk.from_store(i, d or "", m), 1.0 - float(dist))
            for i, d, m, dist in zip(
                result["ids"][0],
                result["documents"][0],
                result["metadatas"][0],
                result["distances"][0],
                strict=True,
            )
            if m
        ]


def remove_store(settings: Settings) -> None:
    """Delete the store (for --rebuild): the collection, then the manifest.

    The collection is dropped through the client rather than by deleting its folder,
    so that other Systems still open on the folder keep working files; only an
    embedded store that cannot even be opened is removed from disk (the `chroma`
    folder, which is ours, and nothing else in the store folder).
    """
    if settings.chroma_url:
        client = open_chroma_client(settings)  # unreachable: StoreError, nothing deleted
        with contextlib.suppress(Exception):  # an absent collection is fine
            client.delete_collection(settings.collection)
    else:
        access = AccessLock(settings.store_dir, settings.lock_wait)
        try:
            with access:
                _drop_embedded(settings)
        finally:
            access.close()
    for name in (MANIFEST_NAME, f"{MANIFEST_NAME}-wal", f"{MANIFEST_NAME}-shm"):
        (settings.store_dir / name).unlink(missing_ok=True)


def _drop_embedded(settings: Settings) -> None:
    import shutil

    from chromadb.errors import NotFoundError

    system = None
    try:
        client, system = _private_client(settings.store_dir / CHROMA_DIR_NAME)
        client.delete_collection(settings.collection)
    except NotFoundError:
        pass  # nothing indexed yet; other collections in the folder stay
    except Exception:  # damaged: remove what is on disk
        _stop(system)
        system = None
        shutil.rmtree(settings.store_dir / CHROMA_DIR_NAME, ignore_errors=True)
    finally:
        _stop(system)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino
