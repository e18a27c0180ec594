"""`rag watch`: keep the index in step with the documents folder as files come and go.

watchdog reports changes; after a burst has settled and the changed files have stopped
growing, one indexing round runs `rag.indexer.index_folder` on the whole folder. That
is the same incremental run as `rag index` (unchanged files are skipped by content
hash, without the model: well under a second for a few hundred files), so the watcher
inherits its crash safety (pending/done marks), its lock against a second indexer and
its handling of bad files, instead of a second, targeted code path that could drift
from it. What changed is read from the manifest before and after the round, and
logged one line per file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rag.config import ConfigError, Settings
from rag.files import file_identity
from rag.indexer import IndexReport, PassageEmbedder, index_folder, require_docs_folder
from rag.manifest import MANIFEST_NAME, FileRecord, Manifest, StoreError
from rag.records import UserError, one_line

# Quiet time after the last event before a round starts: a copy of many files or an
# editor's save (write temp, rename) arrives as a burst of events.
DEBOUNCE_SECONDS = 0.25
# A changed file's size and modification time must hold this long: a file still being
# written (a slow copy, a download) is not indexed half-way.
STABLE_SECONDS = 0.25
# After a failed round (a locked or unreachable store), wait this long before retrying.
RETRY_SECONDS = 5.0
# A round even without events: a safety net for events the OS did not deliver (a
# network file system, an inotify watch limit reached).
RESCAN_SECONDS = 60.0
POLL_SECONDS = 0.05

# Reading a file (the indexer does) is not a change; these events are ignored.
_READ_EVENTS = frozenset({"opened", "closed_no_write"})


@dataclass
class WatchEvent:
    """One line of the watch log."""

    time: str
    event: str  # added, updated, removed, renamed, skipped, error, watching
    path: str = ""
    chunks: int | None = None
    detail: str = ""  # the reason of a skip or error; the old path of a rename

    def line(self) -> str:
        chunks = f"({self.chunks} chunk{'' if self.chunks == 1 else 's'})"
        if self.event == "renamed":
            return f"{self.time} renamed {self.detail} -> {self.path} {chunks}"
        if self.event in ("added", "updated"):
            return f"{self.time} {self.event} {self.path} {chunks}"
        if self.event == "removed":
            return f"{self.time} removed {self.path}"
        if self.event == "skipped":
            return f"{self.time} skipped {self.path}: {self.detail}"
        return f"{self.time} {self.event}: {self.detail}"

    def json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in ("", None)}
        return json.dumps(data, ensure_ascii=False)


# (content hash, chunk count) per indexed path
_Snapshot = dict[str, tuple[str, int]]


def describe(
    before: _Snapshot, after: _Snapshot, skipped: dict[str, str], stamp: str
) -> list[WatchEvent]:
    """The per-file events that turn `before` into `after`, plus the new skips.

    A removed path whose content reappears under a new path is a rename.
    """
    added = sorted(p for p in after if p not in before)
    removed = sorted(p for p in before if p not in after)
    events: list[WatchEvent] = []
    for path in added:
        digest, chunks = after[path]
        old = next((p for p in removed if before[p][0] == digest), None)
        if old is not None:
            removed.remove(old)
            events.append(WatchEvent(stamp, "renamed", path, chunks, old))
        else:
            events.append(WatchEvent(stamp, "added", path, chunks))
    for path in sorted(p for p in after if p in before and after[p][0] != before[p][0]):
        events.append(WatchEvent(stamp, "updated", path, after[path][1]))
    events += [WatchEvent(stamp, "removed", path) for path in removed]
    events += [WatchEvent(stamp, "skipped", p, detail=r) for p, r in sorted(skipped.items())]
    return events


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S")


class _Changes:
    """What the watchdog thread saw: changed paths and when the last one came."""

    def __init__(self, docs_dir: Path, ignored: Path) -> None:
        # watchdog reports paths under the folder as given (relative, or through a link)
        self._docs = docs_dir.absolute()
        self._ignored = ignored.absolute()
        self._lock = threading.Lock()
        self.paths: set[Path] = set()
        self.last = 0.0
        self.count = 0
        self.folder_gone = False  # the watched folder itself was deleted or moved

    def dispatch(self, event: Any) -> None:
        """watchdog's handler interface."""
        if event.event_type in _READ_EVENTS:
            return
        if event.event_type in ("deleted", "moved") and _absolute(event.src_path) == self._docs:
            self.folder_gone = True
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw and self._relevant(_absolute(raw)):
                self.put_back({_absolute(raw)})

    def put_back(self, paths: set[Path]) -> None:
        """Record changed paths (again, for files still being written)."""
        with self._lock:
            self.paths |= paths
            self.last = time.monotonic()
            self.count += 1

    def _relevant(self, path: Path) -> bool:
        # Hidden files (editors' temporary files, a store kept in the folder) are never
        # indexed, so they start no round.
        if path == self._ignored or self._ignored in path.parents:
            return False
        try:
            parts = path.relative_to(self._docs).parts
        except ValueError:
            return True
        return not any(part.startswith(".") for part in parts)

    def take(self) -> tuple[set[Path], int]:
        with self._lock:
            paths, self.paths = self.paths, set()
            return paths, self.count


def _absolute(raw: str | bytes) -> Path:
    return Path(os.path.abspath(os.fsdecode(raw)))


def _signature(paths: set[Path]) -> dict[Path, tuple[int, int] | None]:
    """Size and modification time of each path (None when it is gone)."""
    result: dict[Path, tuple[int, int] | None] = {}
    for path in paths:
        try:
            info = path.stat()
            result[path] = (info.st_size, info.st_mtime_ns)
        except OSError:
            result[path] = None
    return result


class Watcher:
    """Watches `settings.docs_dir` and re-indexes it into `settings.store_dir`."""

    def __init__(
        self,
        settings: Settings,
        emit: Callable[[WatchEvent], None],
        embedder_factory: Callable[[], PassageEmbedder] | None = None,
    ) -> None:
        self.settings = settings
        self.emit = emit
        self._factory = embedder_factory
        self._embedder: PassageEmbedder | None = None
        self.changes = _Changes(settings.docs_dir, settings.store_dir)
        self._skipped: dict[str, str] = {}
        self._dirty = True  # the first round catches up with changes made while away
        self._next_round = 0.0
        self._last_round = 0.0
        self._announced = False
        self._last_error = ""
        self.rounds = 0

    # ----------------------------------------------------------------- main loop
    def run(self, stop: threading.Event | None = None) -> None:
        """Watch until `stop` is set (or KeyboardInterrupt)."""
        stop = stop or threading.Event()
        require_docs_folder(self.settings.docs_dir)
        watched, observer = file_identity(self.settings.docs_dir), self._observe()
        try:
            while not stop.is_set():
                current = file_identity(self.settings.docs_dir)
                if current is None or self.changes.folder_gone:
                    watched = None  # a new folder may reuse the old one's inode number
                if current is not None and current != watched:
                    # The folder was deleted and made again: the OS watch died with it.
                    observer.stop()
                    self.changes.folder_gone = False
                    watched, observer, self._dirty = current, self._observe(), True
                    self._next_round = 0.0
                if self._due():
                    self._round()
                stop.wait(POLL_SECONDS)
        finally:
            observer.stop()
            observer.join(timeout=5)

    def _observe(self) -> Any:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        docs = str(self.settings.docs_dir)
        try:
            observer = Observer()
            observer.schedule(self.changes, docs, recursive=True)
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit: poll instead
            self.emit(WatchEvent(_now(), "error", detail=f"{one_line(exc)}; polling instead"))
            observer = PollingObserver(timeout=1)
            observer.schedule(self.changes, docs, recursive=True)
            observer.start()
        return observer

    def _due(self) -> bool:
        """A round is due once changes have settled and their files stopped growing."""
        now = time.monotonic()
        if now < self._next_round:
            return False
        if self.changes.count and now - self.changes.last >= DEBOUNCE_SECONDS:
            paths, seen = self.changes.take()
            if paths:
                self._dirty = True
                if not self._settled(paths, seen):
                    return False
        return self._dirty or now - self._last_round >= RESCAN_SECONDS

    def _settled(self, paths: set[Path], seen: int) -> bool:
        """True when no file in `paths` changed for STABLE_SECONDS (else they go back)."""
        first = _signature(paths)
        time.sleep(STABLE_SECONDS)
        if _signature(paths) == first and self.changes.count == seen:
            return True
        self.changes.put_back(paths)  # still being written: look again after the next wait
        return False

    # --------------------------------------------------------------------- rounds
    def _round(self) -> None:
        self._dirty = False
        self._last_round = time.monotonic()
        self.rounds += 1
        try:
            before = self._indexed()
            report = index_folder(
                self.settings, progress=False, embedder_factory=self._load_embedder
            )
            after = self._indexed()
        except Exception as exc:  # one line, and the watcher goes on
            if not self._announced and isinstance(exc, UserError | ConfigError):
                # The first round found the folder or store unusable: retrying every
                # few seconds would not fix it, and a service manager should see it.
                raise
            self._dirty = True
            self._next_round = time.monotonic() + RETRY_SECONDS
            if one_line(exc) != self._last_error:  # not the same line every 5 s
                self._last_error = one_line(exc)
                self.emit(WatchEvent(_now(), "error", detail=self._last_error))
            return
        self._last_error = ""
        for event in describe(before, after, self._new_skips(report), _now()):
            self.emit(event)
        if not self._announced:
            self._announced = True
            self.emit(self._watching(report))

    def _new_skips(self, report: IndexReport) -> dict[str, str]:
        """Skips not logged before: a file that stays bad is reported once."""
        current = {s.path: s.reason for s in report.skipped}
        new = {p: r for p, r in current.items() if self._skipped.get(p) != r}
        self._skipped = current
        return new

    def _watching(self, report: IndexReport) -> WatchEvent:
        detail = (
            f"{self.settings.docs_dir} ({report.files} files, {report.chunks} chunks "
            "indexed); waiting for changes"
        )
        return WatchEvent(_now(), "watching", detail=detail)

    def _indexed(self) -> _Snapshot:
        if self.settings.chroma_url:  # the manifest lives in the server
            return self._indexed_in_server()
        path = self.settings.store_dir / MANIFEST_NAME
        if not path.exists():  # never create one here: the store may be a foreign folder
            return {}
        manifest = Manifest(path)
        try:
            return _done(manifest.files())
        finally:
            manifest.close()

    def _indexed_in_server(self) -> _Snapshot:
        from rag.models import embedder_identity
        from rag.store import Store

        try:
            store = Store(self.settings, embedder_identity(self.settings), create=False)
        except StoreError:  # nothing indexed yet (a server down fails the round anyway)
            return {}
        try:
            return _done(store.manifest.files())
        finally:
            store.close()

    def _load_embedder(self) -> PassageEmbedder:
        """Loaded on the first file to embed, then kept for the next rounds."""
        if self._embedder is None:
            if self._factory is not None:
                self._embedder = self._factory()
            else:
                from rag.models import load_embedder

                self._embedder = load_embedder(self.settings)
        return self._embedder


def watch(settings: Settings, as_json: bool = False, stop: threading.Event | None = None) -> None:
    """Run the watcher, printing one line per event to stdout."""

    def emit(event: WatchEvent) -> None:
        print(event.json() if as_json else event.line(), flush=True)

    Watcher(settings, emit).run(stop)


def _done(files: dict[str, FileRecord]) -> _Snapshot:
    return {p: (r.content_hash, len(r.chunk_ids)) for p, r in files.items() if r.state == "done"}
