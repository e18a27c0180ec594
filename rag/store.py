"""The store: chunk vectors in Chroma, and the manifest of indexed files beside them.

Chroma holds the chunks (text, metadata, embedding) and never embeds anything itself;
the manifest (rag.manifest) records which files own which chunk ids. Every call into
Chroma lives in this module, behind `Store`'s typed methods: each runs under the access
lock, is retried once on a fresh connection, and reads page through `_pages`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from rag.config import Settings
from rag.files import LOCK_POLL_SECONDS, FileLock, file_identity
from rag.manifest import MANIFEST_FILES, MANIFEST_NAME, FileRecord, Manifest, StoreError
from rag.records import Chunk, UserError, one_line
from rag.server_manifest import ServerManifest, manifest_name

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import GetResult, Include, QueryResult

__all__ = ["FileRecord", "Manifest", "Store", "StoreError", "remove_store"]

CHROMA_DIR_NAME = "chroma"
STORE_FORMAT = "1"
# The manifest's meta keys for the documents folder an embedded store indexes (set and
# checked by rag.indexer; another folder indexed into it would remove every file): its
# full path, and its path from the store folder, which holds when both moved together.
DOCS_META_KEY = "docs_dir"
DOCS_FROM_STORE_META_KEY = "docs_dir_from_store"
ACCESS_LOCK_NAME = "chroma.lock"
INDEX_LOCK_NAME = "index.lock"  # rag.indexer's; named here to recognize a store folder
KEYWORD_DIR_NAME = "keyword"  # rag.keyword_cache's saved BM25 indexes
# Chroma caps one write; stay well under it.
WRITE_BATCH = 1000
# Rows per read: Chroma caps one read too, and a page of embeddings is ~8 MB.
READ_PAGE = 5000

T = TypeVar("T")


# ------------------------------------------------------------------------ connecting


@dataclass
class _Connection:
    """A Chroma client; an embedded one also holds its spelling of the folder."""

    client: ClientAPI
    spelling: str | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed, or a server gone
            self.client.close()
        if self.spelling is not None:
            _release_spelling(self.spelling)
            self.spelling = None


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def _connect(settings: Settings) -> _Connection:
    """An embedded persistent Chroma of this store's own, or the Chroma server of
    RAG_CHROMA_URL. Use an embedded one under the store's `access_lock` only."""
    if settings.chroma_url:
        return _connect_server(settings.chroma_url)
    path = settings.store_dir / CHROMA_DIR_NAME
    make_folder(path, settings.store_dir)
    try:
        return _private_client(path)
    except Exception as exc:
        if not os.access(path, os.W_OK):  # not damaged: chromadb writes even to read
            raise StoreError(
                f"the Chroma store in {path} cannot be opened read-only ({one_line(exc)}); "
                f"make {settings.store_dir} writable (a search while it is saves a "
                "snapshot that later read-only searches use instead)"
            ) from exc
        raise StoreError(
            f"the Chroma store in {path} cannot be opened ({one_line(exc)}); "
            "run `rag index --rebuild`"
        ) from exc


def _connect_server(chroma_url: str) -> _Connection:
    import chromadb

    url = urlparse(chroma_url)
    if not url.hostname:
        raise StoreError(f"RAG_CHROMA_URL={chroma_url!r} is not a URL")
    try:
        client = chromadb.HttpClient(
            host=url.hostname,
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=_chroma_settings(),
        )
        client.heartbeat()
    except Exception as exc:  # chromadb raises several kinds; all mean "unreachable"
        raise StoreError(
            f"cannot reach the Chroma server at {chroma_url} ({one_line(exc)}); "
            "start it (`chroma run --path DIR`) or unset RAG_CHROMA_URL"
        ) from exc
    return _Connection(client)


# For the indexer's lease (rag.server_manifest), which needs a client of its own.
connect_server = _connect_server

_SPELLINGS_LOCK = threading.Lock()
_SPELLINGS_IN_USE: set[str] = set()


def _private_client(path: Path) -> _Connection:
    """A PersistentClient on `path` whose Chroma System no other client shares.

    chromadb keeps one System per folder and process, shared by every client of that
    path (see chromadb's `Client.close`), and a loaded System never sees vectors that
    another process wrote later: its queries keep answering from the index as it was
    when loaded (tests/test_watch.py checks this). So every Store loads the folder
    afresh in a System of its own. chromadb tells folders apart by the path as given,
    so each open client spells the same folder differently ("chroma", "chroma/.",
    "chroma/./.", ...): the same files, another System. `client.close()` then stops
    exactly that System, and no other client in this process can close it under us.
    """
    import chromadb

    spelling = _take_spelling(str(path))
    # Not released when this fails: chromadb keeps a System that failed to start cached
    # under its path, so that spelling would only ever give the broken System again.
    client = chromadb.PersistentClient(path=spelling, settings=_chroma_settings())
    return _Connection(client, spelling)


def _take_spelling(path: str) -> str:
    """The shortest spelling of `path` that no open client uses."""
    with _SPELLINGS_LOCK:
        spelling = path
        while spelling in _SPELLINGS_IN_USE:
            spelling += "/."
        _SPELLINGS_IN_USE.add(spelling)
        return spelling


def _release_spelling(spelling: str) -> None:
    with _SPELLINGS_LOCK:
        _SPELLINGS_IN_USE.discard(spelling)


# ------------------------------------------------------------------ the store's folder


def store_path_error(store_dir: Path, exc: OSError) -> StoreError:
    """An OSError on the store's folder as one line naming the folder and the problem:
    a file in the way, or a folder this process cannot write (permissions, a read-only
    file system). The OSError alone names a lock file, or nothing a user can act on."""
    in_the_way = _file_in_the_way(store_dir)
    if in_the_way is not None:
        return in_the_way
    return StoreError(
        f"cannot write to the store folder {store_dir} ({exc.strerror or one_line(exc)}); "
        "make it writable or choose another --store"
    )


def _file_in_the_way(store_dir: Path) -> StoreError | None:
    """The error for a store path that is a file, or lies under one; else None."""
    for path in (store_dir, *store_dir.parents):
        if path.is_dir():
            return None
        if path.exists():
            problem = "is a file" if path == store_dir else f"cannot be made: {path} is a file"
            return StoreError(f"the store folder {store_dir} {problem}; choose another --store")
    return None


def make_folder(folder: Path, store_dir: Path) -> None:
    """Make `folder` (the store folder or one inside it), or raise a one-line StoreError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise store_path_error(store_dir, exc) from exc


def store_file_lock(
    store_dir: Path,
    name: str,
    wait_seconds: float,
    busy: Callable[[Path], BaseException],
    poll_seconds: float = LOCK_POLL_SECONDS,
    on_first_wait: Callable[[], None] | None = None,
    read_only_ok: bool = False,
) -> FileLock:
    """A FileLock on the file `name` in the store folder (see FileLock), or a one-line
    StoreError when the folder cannot hold it."""
    try:
        return FileLock(
            store_dir / name, wait_seconds, busy, poll_seconds, on_first_wait, read_only_ok
        )
    except OSError as exc:
        raise store_path_error(store_dir, exc) from exc


# ---------------------------------------------------------------------------- locking


def access_lock(store_dir: Path, wait_seconds: float) -> FileLock:
    """The lock every use of an embedded Chroma folder takes, in every process.

    Chroma's embedded store is not safe for several processes: a System that loads the
    vector index while another process writes it fails ("Failed to apply logs to the
    hnsw segment writer") or crashes the process (a segmentation fault, seen with an
    indexer writing and a second process opening and querying). Each call into Chroma
    is short, so every one of them takes this lock (an exclusive flock, released by the
    kernel when a process dies) and a reader waits at most one write batch. A reader
    of a read-only store takes it too (a read-only handle), should another mount of
    the folder write it.
    """
    return store_file_lock(store_dir, ACCESS_LOCK_NAME, wait_seconds, _busy, read_only_ok=True)


def _busy(lock: Path) -> StoreError:
    return StoreError(
        f"the store {lock.parent} is busy (another process holds {lock.name}); try again"
    )


class _NoLock:
    """A Chroma server serializes its own clients."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ store


class Store:
    """The chunk collection in Chroma plus the manifest; one per store folder.

    Every Chroma call runs under the access lock (embedded Chroma) and is retried once
    on a fresh connection (a restarted Chroma server, a System closed by `close` while
    a query was still running); if that fails too, it is a one-line StoreError.
    """

    def __init__(
        self, settings: Settings, embed_identity: str, create: bool = True, rebuild: bool = False
    ) -> None:
        self.settings = settings
        self.embed_identity = embed_identity
        self.dir = settings.store_dir
        local = not settings.chroma_url  # a server keeps the manifest too (ServerManifest)
        if local and not create and not (self.dir / MANIFEST_NAME).exists():
            raise StoreError(f"no index in {self.dir}; run `rag index` first")
        if not rebuild:  # --rebuild writes our own files beside foreign ones, deleting none
            self._check_folder()
        make_folder(self.dir, self.dir)
        self._connection: _Connection | None = None
        self._access: FileLock | _NoLock = _NoLock()
        self._dim: int | None = None  # of the stored vectors, once known
        try:
            self.manifest = self._open_manifest(create)
            # Read before Chroma is loaded: a change in between shows as not current.
            self._opened = self.freshness()
            self._check_identity(self.manifest.get_meta("embed_model"))
            if local:
                self._access = access_lock(self.dir, settings.lock_wait)
            # A reader's embedded Chroma loads on its first call: a search answered from
            # the saved snapshot (rag.keyword_cache) never pays chromadb's import (0.5 s).
            self._collection: Collection | None = None
            if create or not local:
                with self._access:
                    self._collection = self._open(create)
        except BaseException:
            self.close()
            raise

    def _open(self, create: bool) -> Collection:
        if self._connection is None:
            self._connection = _connect(self.settings)
        return self._open_collection(self._connection.client, create)

    def _open_manifest(self, create: bool) -> Manifest | ServerManifest:
        if not self.settings.chroma_url:
            return Manifest(self.dir / MANIFEST_NAME)
        self._connection = _connect_server(self.settings.chroma_url)
        return ServerManifest(self._connection.client, self.settings.collection,
                              self.settings.chroma_url, create)  # fmt: skip

    def docs_folders(self) -> list[Path]:
        """Where the documents folder this store indexes is, as its last index run
        recorded it: beside the store as it was then (first), and at its full path
        then. Empty before a run recorded it."""
        relative = self.manifest.get_meta(DOCS_FROM_STORE_META_KEY)
        absolute = self.manifest.get_meta(DOCS_META_KEY)
        found = [Path(os.path.normpath(self.dir.resolve() / relative))] if relative else []
        found += [Path(absolute)] if absolute else []
        return list(dict.fromkeys(found))

    def docs_folder(self) -> Path | None:
        """The documents folder this store indexes: the recorded place that exists,
        else the first one; None before an index run recorded it."""
        folders = self.docs_folders()
        return next((f for f in folders if f.is_dir()), folders[0] if folders else None)

    def remember_docs_folder(self, folder: Path) -> None:
        """Record `folder` as the one this store indexes (written only when it moved)."""
        folder = folder.resolve()
        values = {
            DOCS_META_KEY: str(folder),
            DOCS_FROM_STORE_META_KEY: os.path.relpath(folder, self.dir.resolve()),
        }
        if any(self.manifest.get_meta(key) != value for key, value in values.items()):
            self.manifest.set_meta(values)

    @property
    def location(self) -> str:
        if self.settings.chroma_url:
            return f"{self.settings.chroma_url} (collection {self.settings.collection})"
        return str((self.dir / CHROMA_DIR_NAME).resolve())

    def _check_folder(self) -> None:
        """Refuse a folder that holds something other than a rag store."""
        in_the_way = _file_in_the_way(self.dir)
        if in_the_way is not None:
            raise in_the_way
        if not self.dir.exists():
            return
        ours = {*MANIFEST_FILES, CHROMA_DIR_NAME, KEYWORD_DIR_NAME}
        names = {p.name for p in self.dir.iterdir()}
        if names and not names & ours and not names <= {INDEX_LOCK_NAME, ACCESS_LOCK_NAME}:
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

    def _open_collection(self, client: ClientAPI, create: bool) -> Collection:
        name = self.settings.collection
        try:
            if create:
                collection = client.get_or_create_collection(
                    name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"embed_model": self.embed_identity, "format": STORE_FORMAT},
                    embedding_function=None,
                )
            else:
                collection = client.get_collection(name, embedding_function=None)
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
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._access.close()

    def freshness(self) -> tuple[int, object]:
        """Changes when any process changes the index: (generation, manifest identity).

        The identity (the SQLite file's, or the server collection's id) catches a
        `--rebuild` elsewhere, which starts a manifest whose generation may repeat.
        """
        if isinstance(self.manifest, ServerManifest):
            return self.manifest.generation(), self.manifest.identity()
        return self.manifest.generation(), file_identity(self.dir / MANIFEST_NAME)

    def is_current(self) -> bool:
        """False once another process changed the index after this Store was opened."""
        try:
            return self.freshness() == self._opened
        except (sqlite3.Error, UserError):  # replaced, damaged or unreachable: re-open
            return False

    # --- every Chroma call goes through here -----------------------------------
    def _call(self, operation: Callable[[Collection], T]) -> T:
        with self._access:
            if self._collection is None:
                self._collection = self._open(create=False)
            try:
                return operation(self._collection)
            except UserError:
                raise
            except Exception:
                pass  # one retry on a fresh connection, below
            try:
                collection = self._reconnect()
                return operation(collection)
            except UserError:
                raise
            except Exception as exc:
                raise StoreError(self._failure(exc)) from exc

    def _reconnect(self) -> Collection:
        old, self._connection = self._connection, _connect(self.settings)
        if old is not None:
            old.close()
        try:
            self._collection = self._connection.client.get_collection(
                self.settings.collection, embedding_function=None
            )
            return self._collection
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

    def _pages(self, include: Include) -> Iterator[GetResult]:
        """Every row of the collection, READ_PAGE at a time (Chroma caps one read)."""
        offset = 0
        while True:
            page = self._call(
                lambda c, at=offset: c.get(include=include, limit=READ_PAGE, offset=at)
            )
            yield page
            if len(page["ids"]) < READ_PAGE:
                return
            offset += len(page["ids"])

    # --- writes -----------------------------------------------------------------
    def upsert(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        if len(chunks):
            self.check_dimension(int(embeddings.shape[1]))
        for start in range(0, len(chunks), WRITE_BATCH):
            part = chunks[start : start + WRITE_BATCH]
            vectors = embeddings[start : start + WRITE_BATCH].astype(np.float32)
            self._call(
                lambda c, part=part, vectors=vectors: c.upsert(
                    ids=[x.chunk_id for x in part],
                    embeddings=vectors,
                    documents=[x.text for x in part],
                    metadatas=[x.metadata() for x in part],
                )
            )

    def delete(self, ids: Iterable[str]) -> None:
        ids = sorted(set(ids))
        for start in range(0, len(ids), WRITE_BATCH):
            batch = ids[start : start + WRITE_BATCH]
            self._call(lambda c, batch=batch: c.delete(ids=batch))

    def know_dimension(self, dim: int) -> None:
        """The stored vectors' size, when known without asking Chroma (a snapshot)."""
        if self._dim is None:
            self._dim = dim

    def check_dimension(self, dim: int) -> None:
        """Refuse vectors of another size than the stored ones: an embedder that is not
        the one the store was built with, whatever its name says (an embedding server
        serving another model). Chroma's own error would blame the store."""
        if self._dim is None:
            page = self._call(lambda c: c.get(limit=1, include=["embeddings"]))
            stored = _embeddings(page)
            if not stored:
                return  # empty: the first write sets the size
            self._dim = len(stored[0])
        if dim != self._dim:
            raise StoreError(
                f"the embedder gives {dim}-dimensional vectors, but this index holds "
                f"{self._dim}-dimensional ones (embedding model {self.embed_identity!r}): "
                "the embedding model is not the one the index was built with; fix "
                "RAG_EMBED_BASE_URL / RAG_EMBED_SERVER_MODEL or run `rag index --rebuild`"
            )

    # --- reads ------------------------------------------------------------------
    def count(self) -> int:
        return int(self._call(lambda c: c.count()))

    def all_ids(self) -> set[str]:
        return {i for page in self._pages([]) for i in page["ids"]}

    def chunks(self, ids: Sequence[str]) -> list[Chunk]:
        """These chunks' text and metadata (ids not found are left out)."""
        found: list[Chunk] = []
        for start in range(0, len(ids), READ_PAGE):
            batch = list(ids[start : start + READ_PAGE])
            page = self._call(lambda c, b=batch: c.get(ids=b, include=["documents", "metadatas"]))
            found.extend(chunk for _, chunk in _chunks(page))
        return found

    def all_chunks(self) -> list[Chunk]:
        """Every chunk's text and metadata (no vectors): for keyword search."""
        pages = self._pages(["documents", "metadatas"])
        return [chunk for page in pages for _, chunk in _chunks(page)]

    def all_chunks_and_embeddings(self) -> tuple[list[Chunk], np.ndarray]:
        """Every chunk and its stored embedding, row by row ([n, dim] float32)."""
        chunks: list[Chunk] = []
        vectors: list[np.ndarray] = []
        for page in self._pages(["embeddings", "documents", "metadatas"]):
            embeddings = _embeddings(page)
            for row, chunk in _chunks(page):
                chunks.append(chunk)
                vectors.append(embeddings[row])
        matrix = np.stack(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)
        return chunks, matrix

    def embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embeddings of these chunks (ids not found are left out)."""
        if not ids:
            return {}
        page = self._call(lambda c: c.get(ids=list(ids), include=["embeddings"]))
        return dict(zip(page["ids"], _embeddings(page), strict=True))

    def nearest(
        self, embedding: np.ndarray, k: int, where: dict[str, str] | None = None
    ) -> list[tuple[str, float]]:
        """The ids of the k nearest chunks (matching `where`) with their cosine
        similarity, best first: no texts, so a server sends a few bytes per hit."""
        result = self._query(embedding, k, where, ["distances"])
        if result is None:
            return []
        distances = (result["distances"] or [[]])[0]
        return [(i, 1.0 - float(d)) for i, d in zip(result["ids"][0], distances, strict=True)]

    def query(
        self, embedding: np.ndarray, k: int, where: dict[str, str] | None = None
    ) -> list[tuple[Chunk, float]]:
        """The k nearest chunks (matching `where`) with their cosine similarity."""
        result = self._query(embedding, k, where, ["documents", "metadatas", "distances"])
        if result is None:
            return []
        ids, documents = result["ids"][0], (result["documents"] or [[]])[0]
        metadatas, distances = (result["metadatas"] or [[]])[0], (result["distances"] or [[]])[0]
        # A System loaded before another process deleted chunks may still find them in
        # its vector index; their rows are gone (no metadata), so they are left out.
        return [
            (Chunk.from_store(i, d or "", dict(m)), 1.0 - float(dist))
            for i, d, m, dist in zip(ids, documents, metadatas, distances, strict=True)
            if m
        ]

    def _query(
        self, embedding: np.ndarray, k: int, where: dict[str, str] | None, include: Include
    ) -> QueryResult | None:
        if k <= 0:
            return None
        self.check_dimension(int(embedding.shape[-1]))
        vector = embedding.astype(np.float32)
        return self._call(
            lambda c: c.query(query_embeddings=[vector], n_results=k, where=where, include=include)
        )


def _chunks(page: GetResult) -> list[tuple[int, Chunk]]:
    """(row, chunk) for the page's rows; rows deleted by another process meanwhile
    have no metadata left and are skipped."""
    documents = page["documents"] or [""] * len(page["ids"])
    metadatas = page["metadatas"] or [None] * len(page["ids"])
    rows = zip(page["ids"], documents, metadatas, strict=True)
    return [(row, Chunk.from_store(i, d or "", dict(m))) for row, (i, d, m) in enumerate(rows) if m]


def _embeddings(page: GetResult) -> list[np.ndarray]:
    embeddings = page["embeddings"]
    if embeddings is None:
        return []
    return [np.asarray(e, dtype=np.float32) for e in embeddings]


# --------------------------------------------------------------------------- removing


def remove_store(settings: Settings) -> None:
    """Delete the store (for --rebuild): the collection, then the manifest.

    The collection is dropped through the client rather than by deleting its folder,
    so that other Systems still open on the folder keep working files; only an
    embedded store that cannot even be opened is removed from disk (the `chroma`
    folder, which is ours, and nothing else in the store folder).
    """
    if settings.chroma_url:
        connection = _connect_server(settings.chroma_url)  # unreachable: nothing deleted
        try:
            for name in (settings.collection, manifest_name(settings.collection)):
                with contextlib.suppress(Exception):  # an absent collection is fine
                    connection.client.delete_collection(name)
        finally:
            connection.close()
    else:
        access = access_lock(settings.store_dir, settings.lock_wait)
        try:
            with access:
                _drop_embedded(settings)
        finally:
            access.close()
    for name in MANIFEST_FILES:
        (settings.store_dir / name).unlink(missing_ok=True)


def _drop_embedded(settings: Settings) -> None:
    from chromadb.errors import NotFoundError

    folder = settings.store_dir / CHROMA_DIR_NAME
    connection = None
    try:
        connection = _private_client(folder)
        connection.client.delete_collection(settings.collection)
    except NotFoundError:
        pass  # nothing indexed yet; other collections in the folder stay
    except Exception:  # damaged: remove what is on disk, once this client let go of it
        if connection is not None:
            connection.close()
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        if connection is not None:
            connection.close()
