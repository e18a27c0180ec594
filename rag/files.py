"""What the steps need of files as such: a content hash, an identity, a lock.

The lowest step of the flow (files -> documents -> chunks -> store -> ...): it imports
nothing from rag, so every other module may use it.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# How often a waiting lock is tried again. Short: the store's access lock is held for
# a few milliseconds at a time, and a reader should not wait much longer than that.
LOCK_POLL_SECONDS = 0.005


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes, read in blocks (files may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode): changes when the path is deleted and made again, even with the
    same name and content; None when nothing is there."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def lock_exclusively(
    handle: IO[Any],
    wait_seconds: float,
    poll_seconds: float = LOCK_POLL_SECONDS,
    on_first_wait: Callable[[], None] | None = None,
) -> bool:
    """Take an exclusive flock on the open file, waiting up to `wait_seconds`.

    False when another holder kept it that long. The kernel releases a flock when its
    process dies, so a killed holder never blocks anyone. `on_first_wait` is called
    once, when the lock is found taken (to say that we wait).
    """
    deadline = time.monotonic() + wait_seconds
    waited = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if not waited and on_first_wait is not None:
                on_first_wait()
            waited = True
            time.sleep(poll_seconds)


def unlock(handle: IO[Any]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)


class FileLock:
    """An exclusive lock on a file, across processes and the threads of this one.

    Re-entrant: nested `with` blocks of one thread take it once. The file stays open
    until `close`. Taking it waits up to `wait_seconds`, then raises `busy(path)`.
    With `read_only_ok`, an existing lock file that cannot be opened for writing (a
    read-only folder) is locked through a read-only handle, which flock accepts.
    """

    def __init__(
        self,
        path: Path,
        wait_seconds: float,
        busy: Callable[[Path], BaseException],
        poll_seconds: float = LOCK_POLL_SECONDS,
        on_first_wait: Callable[[], None] | None = None,
        read_only_ok: bool = False,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = _open_lock_file(path, read_only_ok)
        self._threads = threading.RLock()  # flock does not exclude threads sharing the fd
        self._depth = 0
        self._wait = wait_seconds
        self._busy = busy
        self._poll = poll_seconds
        self._on_first_wait = on_first_wait

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._depth == 0 and not lock_exclusively(
                self._handle, self._wait, self._poll, self._on_first_wait
            ):
                raise self._busy(self.path)
        except BaseException:
            self._threads.release()
            raise
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            unlock(self._handle)
        self._threads.release()

    def close(self) -> None:
        self._handle.close()


def _open_lock_file(path: Path, read_only_ok: bool) -> IO[str]:
    try:
        return open(path, "a+")  # noqa: SIM115 (held open until FileLock.close)
    except OSError:
        if not (read_only_ok and path.is_file()):
            raise
        return open(path)  # noqa: SIM115
