"""The manifest: which files are indexed, with which content hash and chunk ids.

SQLite, in the store folder beside Chroma. Every change to Chroma is bracketed by it:
ids are written as "pending" before Chroma is touched and "done" after, so a run killed
at any moment leaves enough to remove every chunk it may have written (no orphan, no
duplicate). Its generation moves with every change, which is how other processes (and
the per-store caches) learn that the index changed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.records import UserError

MANIFEST_NAME = "manifest.sqlite3"
# The manifest and SQLite's files beside it (write-ahead log, shared memory).
MANIFEST_FILES = (MANIFEST_NAME, f"{MANIFEST_NAME}-wal", f"{MANIFEST_NAME}-shm")


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
        # A store on a read-only mount, or in a folder this user may not write, is read
        # as it is: searching it needs no write.
        self.read_only = not _writable(path)
        try:
            self.db = _open_read_only(path) if self.read_only else _open(path)
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from exc

    def _unusable(self, exc: sqlite3.DatabaseError) -> StoreError:
        if self.read_only:  # not known to be damaged: advising a rebuild would lose it
            return StoreError(
                f"the store's manifest {self.path} cannot be read in its read-only folder "
                f"({exc}); make {self.path.parent} writable, then try again"
            )
        return StoreError(
            f"the store's manifest {self.path} is damaged or not a rag store ({exc}); "
            "run `rag index --rebuild`"
        )

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:  # else SQLite's "attempt to write a readonly database"
            raise StoreError(
                f"cannot write to the store folder {self.path.parent} (read-only); "
                "make it writable or choose another --store"
            )
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def hold(self, lease: object) -> None:
        """Nothing to do: the store folder's index.lock already keeps a second local
        indexer out (rag.server_manifest needs a lease across machines)."""

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


_SCHEMA = """
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


def _writable(path: Path) -> bool:
    """Whether this process may write the manifest (and SQLite its files beside it)."""
    if not os.access(path.parent, os.W_OK):
        return False
    return not path.exists() or os.access(path, os.W_OK)


def _connect(target: str | Path, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(
        target, timeout=30, isolation_level=None, check_same_thread=False, uri=uri
    )


def _open(path: Path) -> sqlite3.Connection:
    db = _connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def _open_read_only(path: Path) -> sqlite3.Connection:
    """The manifest opened for reading only. A WAL database needs its -shm file, which
    a read-only folder may not have and cannot get: then it is opened as immutable
    (nothing can change it through this folder anyway)."""
    uri = path.resolve().as_uri()
    try:
        return _checked(_connect(f"{uri}?mode=ro", uri=True))
    except sqlite3.OperationalError:
        return _checked(_connect(f"{uri}?immutable=1", uri=True))


def _checked(db: sqlite3.Connection) -> sqlite3.Connection:
    """`db`, once a read shows it usable (SQLite opens files lazily)."""
    try:
        db.execute("SELECT COUNT(*) FROM files").fetchone()
    except BaseException:
        db.close()
        raise
    return db


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
