"""The manifest kept in the Chroma server, for RAG_CHROMA_URL: nothing stays local.

Same interface as rag.manifest.Manifest (the indexer, store, gate and engine call only
its public methods), stored in a collection of its own beside the chunks, named
`<collection>.manifest`: one record per file (id "file:<path>", the FileRecord as JSON
in the document) and one per meta key (id "meta:<key>"). One record per key, so a
querying process that saves the gate calibration never overwrites the generation an
indexer wrote a moment before. A second machine with an empty store folder reads
everything from here, so its `rag status` and answers are those of the indexer's.

Writers: Chroma has no transactions, but creating a collection whose name exists
fails atomically in the server. So an indexer holds a lease, the collection
`<collection>.lock` (who, until when); a second indexer, on any machine, waits up to
RAG_LOCK_WAIT and then refuses with one line. A lease whose holder died expires after
RAG_CHROMA_LEASE seconds; the holder renews it before every manifest write. As a
second guard every write also checks that the generation is still the one this
indexer last saw (optimistic compare): an indexer whose lease expired and was taken
over stops with "another indexer changed the index; run again" instead of writing over
the newer index. A lease, rather than compare-and-set alone, because Chroma cannot
compare-and-set one record atomically: two indexers could both pass the compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from rag.manifest import FileRecord, StoreError
from rag.records import UserError, one_line

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

T = TypeVar("T")
READ_PAGE = 5000
# A querying process re-reads the generation at most this often: every search asks it
# two or three times (is the store current, are the caches), each a round trip to the
# server; another machine's index change is then seen within this many seconds.
GENERATION_TTL = 1.0
WRITE_BATCH = 1000
# Chroma stores a vector with every record; the manifest's records need none.
_NO_VECTOR = [1.0]


def manifest_name(collection: str) -> str:
    return f"{collection}.manifest"


def lock_name(collection: str) -> str:
    return f"{collection}.lock"


class ServerManifest:
    """The manifest as records of a Chroma server collection (see the module doc)."""

    def __init__(self, client: ClientAPI, collection: str, url: str, create: bool = True) -> None:
        self.client = client
        self.name = manifest_name(collection)
        self.url = url
        self._lock = threading.RLock()
        self._lease: Lease | None = None
        self._expected: int | None = None  # the generation this writer last saw
        self._generation: tuple[float, int] | None = None  # (read at, value)
        try:
            if create:
                self._coll = client.get_or_create_collection(self.name, embedding_function=None)
            else:
                self._coll = client.get_collection(self.name, embedding_function=None)
        except Exception as exc:
            if not create:
                raise StoreError(
                    f"no index in the Chroma server at {url} (collection {collection!r}); "
                    "run `rag index` first"
                ) from exc
            raise StoreError(self._failure(exc)) from exc

    # --- plumbing ---------------------------------------------------------------
    def _failure(self, exc: BaseException) -> str:
        return (
            f"the Chroma server at {self.url} failed ({one_line(exc)}); "
            "check that it is running (`chroma run --path DIR`), then try again"
        )

    def _call(self, operation: Callable[[Collection], T]) -> T:
        """One retry on the collection looked up afresh (a restarted server)."""
        with self._lock:
            try:
                return operation(self._coll)
            except UserError:
                raise
            except Exception:
                pass
            try:
                self._coll = self.client.get_collection(self.name, embedding_function=None)
                return operation(self._coll)
            except Exception as exc:
                raise StoreError(self._failure(exc)) from exc

    def _get(self, **query: Any) -> list[tuple[str, str]]:
        """(id, document) of every matching record, READ_PAGE at a time."""
        rows: list[tuple[str, str]] = []
        while True:
            offset = len(rows)
            page = self._call(
                lambda c, at=offset: c.get(
                    include=["documents"], limit=READ_PAGE, offset=at, **query
                )
            )
            rows.extend(zip(page["ids"], page["documents"] or [], strict=True))
            if len(page["ids"]) < READ_PAGE:
                return rows

    def _put(self, records: dict[str, str], kind: str) -> None:
        items = list(records.items())
        for start in range(0, len(items), WRITE_BATCH):
            part = items[start : start + WRITE_BATCH]
            self._call(
                lambda c, part=part: c.upsert(
                    ids=[i for i, _ in part],
                    documents=[d for _, d in part],
                    metadatas=[{"kind": kind}] * len(part),
                    embeddings=[_NO_VECTOR] * len(part),
                )
            )

    # --- the Manifest interface -------------------------------------------------
    def close(self) -> None:
        pass  # the client belongs to the Store

    def identity(self) -> str:
        """Changes when the manifest is made anew (`rag index --rebuild`)."""
        return str(self._coll.id)

    def hold(self, lease: Lease | None) -> None:
        """Writes from now on renew `lease` and check the generation first."""
        self._lease = lease
        self._expected = self._read_generation() if lease is not None else None

    def get_meta(self, key: str) -> str | None:
        page = self._call(lambda c: c.get(ids=[f"meta:{key}"], include=["documents"]))
        documents = page["documents"] or []
        return documents[0] if documents else None

    def set_meta(self, values: dict[str, str]) -> None:
        self._put({f"meta:{k}": v for k, v in values.items()}, "meta")

    def files(self) -> dict[str, FileRecord]:
        rows = self._get(where={"kind": "file"})
        records = [FileRecord(**json.loads(document)) for _, document in rows]
        return {r.path: r for r in sorted(records, key=lambda r: r.path)}

    def chunk_count(self) -> int:
        return sum(len(r.chunk_ids) for r in self.files().values() if r.state == "done")

    def mark_pending(self, changes: Sequence[tuple[str, str, list[str]]]) -> None:
        """As Manifest.mark_pending: every id these files may leave behind, first."""
        self._check_writer()
        known = self._records(path for path, _, _ in changes)
        now = time.time()
        updated = {}
        for path, content_hash, new_ids in changes:
            old = known.get(path)
            owned = set(new_ids) | (set(old.chunk_ids) | set(old.pending_ids) if old else set())
            base = old or FileRecord(path, content_hash, [], "pending", [], "", "", now)
            updated[path] = FileRecord(
                path, content_hash, base.chunk_ids, "pending", sorted(owned),
                base.language, base.url, base.indexed_at,
            )  # fmt: skip
        self._save(updated.values())

    def mark_done(self, done: Sequence[tuple[str, str, list[str], str, str]]) -> None:
        self._check_writer()
        now = time.time()
        self._save(
            FileRecord(path, h, list(ids), "done", [], lang, url, now)
            for path, h, ids, lang, url in done
        )
        self._bump_generation()

    def forget(self, paths: Iterable[str]) -> None:
        self._check_writer()
        ids = [f"file:{p}" for p in paths]
        for start in range(0, len(ids), WRITE_BATCH):
            batch = ids[start : start + WRITE_BATCH]
            self._call(lambda c, batch=batch: c.delete(ids=batch))
        self._bump_generation()

    def generation(self) -> int:
        """The generation, as read at most GENERATION_TTL seconds ago."""
        now = time.monotonic()
        if self._generation is None or now - self._generation[0] > GENERATION_TTL:
            self._generation = (now, self._read_generation())
        return self._generation[1]

    def _read_generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    # --- helpers ------------------------------------------------------------------
    def _records(self, paths: Iterable[str]) -> dict[str, FileRecord]:
        ids = [f"file:{p}" for p in paths]
        if not ids:
            return {}
        page = self._call(lambda c: c.get(ids=ids, include=["documents"]))
        records = [FileRecord(**json.loads(d)) for d in page["documents"] or []]
        return {r.path: r for r in records}

    def _save(self, records: Iterable[FileRecord]) -> None:
        self._put({f"file:{r.path}": json.dumps(asdict(r)) for r in records}, "file")

    def _check_writer(self) -> None:
        """Refuse to write over an index another indexer changed since we last saw it."""
        if self._lease is not None:
            self._lease.renew()
        if self._expected is not None and self._read_generation() != self._expected:
            raise UserError("another indexer changed the index; run again")

    def _bump_generation(self) -> None:
        # A new manifest starts from the clock in milliseconds, as the SQLite one does,
        # so a rebuilt index never repeats a generation that caches keyed on it saw.
        current = self._read_generation()
        new = current + 1 if current else time.time_ns() // 1_000_000
        self.set_meta({"generation": str(new), "last_indexed": str(time.time())})
        self._generation = (time.monotonic(), new)
        if self._expected is not None:
            self._expected = new


# ---------------------------------------------------------------------------- lease


class Lease:
    """One indexer at a time across machines: the collection `<collection>.lock`."""

    def __init__(self, client: ClientAPI, collection: str, url: str, seconds: float) -> None:
        self.client = client
        self.name = lock_name(collection)
        self.url = url
        self.seconds = seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.id: str | None = None

    def _metadata(self) -> dict[str, str | float]:
        return {"owner": self.owner, "expires": time.time() + self.seconds}

    def acquire(self, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        while True:
            holder = self._try_acquire()
            if self.id is not None:
                return
            if holder is None:
                continue  # an expired lease was moved aside, or released: try again
            if time.monotonic() >= deadline:
                raise UserError(
                    f"another indexer ({holder}) is writing to the Chroma server at "
                    f"{self.url}; try again when it has finished"
                )
            time.sleep(0.5)

    def _try_acquire(self) -> str | None:
        """Who holds the lease, when not this Lease (sets `id` once held)."""
        try:
            created = self.client.create_collection(
                self.name, metadata=self._metadata(), embedding_function=None
            )
        except Exception as exc:
            if "exist" not in str(exc).lower():
                message = f"cannot lock the Chroma server at {self.url} ({one_line(exc)})"
                raise StoreError(message) from exc
            return self._holder_or_expire()
        self.id = str(created.id)
        _LIVE.add(self.owner)
        return None

    def _holder_or_expire(self) -> str | None:
        """Who holds the lease; an expired one is moved aside (None: try again)."""
        try:
            held = self.client.get_collection(self.name, embedding_function=None)
        except Exception:
            return None  # released meanwhile
        meta = held.metadata or {}
        owner = str(meta.get("owner", "unknown"))
        if float(meta.get("expires", 0)) > time.time() and not _dead_here(owner):
            return owner
        # Renamed by its id, not deleted by name: if another process moved it aside and
        # took a fresh lease meanwhile, this touches only the stale one.
        with contextlib.suppress(Exception):
            held.modify(name=f"{self.name}.stale.{uuid.uuid4().hex[:8]}")
            self.client.delete_collection(held.name)
        return None

    def renew(self) -> None:
        """Extend the lease; refuse if it expired and another indexer took it."""
        try:
            held = self.client.get_collection(self.name, embedding_function=None)
        except Exception as exc:
            raise UserError("another indexer changed the index; run again") from exc
        if str(held.id) != self.id:
            raise UserError("another indexer changed the index; run again")
        held.modify(metadata=self._metadata())

    def release(self) -> None:
        with contextlib.suppress(Exception):  # a server gone: the lease expires by itself
            held = self.client.get_collection(self.name, embedding_function=None)
            if str(held.id) == self.id:
                self.client.delete_collection(self.name)
        self.id = None
        _LIVE.discard(self.owner)


# Owners of the leases this process holds now.
_LIVE: set[str] = set()


def _dead_here(owner: str) -> bool:
    """A lease of this machine whose holder is gone: its process died, or it is this
    process's and was not released (the server was down when its run failed). Such a
    lease need not be waited out."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner not in _LIVE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


@contextlib.contextmanager
def server_lease(
    client: ClientAPI, collection: str, url: str, seconds: float, wait_seconds: float
) -> Iterator[Lease]:
    lease = Lease(client, collection, url, seconds)
    lease.acquire(wait_seconds)
    try:
        yield lease
    finally:
        lease.release()
