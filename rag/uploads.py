"""Saving files uploaded in the browser into the documents folder, safely.

The name comes from the browser, so it is untrusted: only its last path component is
kept, normalized to NFC, without control characters or leading dots (a dot file would
be hidden from the indexer), and the final path is checked to lie directly inside the
documents folder. A name that is taken gets a numeric suffix; nothing is overwritten.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rag.config import SUPPORTED_EXTENSIONS, Settings
from rag.indexer import IndexReport
from rag.records import UserError

# Room for a "-999" suffix under the 255-byte name limit of common file systems.
MAX_NAME_BYTES = 240
MAX_SUFFIX = 999
_SEPARATORS = re.compile(r"[/\\]")


def safe_name(name: str) -> str:
    """The file name to store `name` under; UserError when none is usable."""
    base = _SEPARATORS.split(unicodedata.normalize("NFC", name))[-1]
    base = "".join(ch for ch in base if not unicodedata.category(ch).startswith("C"))
    base = base.strip().lstrip(". ").strip()
    if not base:
        raise UserError(f"the file name {name!r} cannot be used: rename the file")
    suffix = Path(base).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        kind = suffix or "no extension"
        raise UserError(
            f"{base}: unsupported file type ({kind}); upload {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return _shorten(base)


def _shorten(name: str) -> str:
    """Cut the stem so the UTF-8 name fits MAX_NAME_BYTES, keeping the extension."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    path = Path(name)
    budget = MAX_NAME_BYTES - len(path.suffix.encode())
    stem = path.stem.encode()[:budget].decode(errors="ignore").rstrip()
    return stem + path.suffix


def save_upload(docs_dir: Path, name: str, data: bytes, max_bytes: int) -> Path:
    """Write `data` into `docs_dir` under a safe, unused name and return the path.

    Uploading the same bytes under the same name again returns the existing file
    instead of making a copy. Raises UserError with a one-line reason.
    """
    filename = safe_name(name)
    if not data:
        raise UserError(f"{filename} is empty: nothing to index")
    if len(data) > max_bytes:
        raise UserError(f"{filename} is too large ({_mb(len(data))} MB, limit {_mb(max_bytes)} MB)")
    try:
        docs_dir.mkdir(parents=True, exist_ok=True)
        root = docs_dir.resolve(strict=True)
        return _write_new(root, filename, data)
    except OSError as exc:
        raise UserError(
            f"{filename} could not be saved in {docs_dir} ({exc.strerror or exc}); "
            "check that the documents folder is writable"
        ) from exc


def _write_new(root: Path, filename: str, data: bytes) -> Path:
    # Written to a hidden temporary file first (the indexer and the folder watcher skip
    # dot files), then linked under its final name: a reader never sees half a file,
    # and os.link fails instead of overwriting when the name was taken meanwhile.
    tmp = root / f".upload-{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        for candidate in _candidates(filename):
            target = _inside(root, candidate)
            if _same_file(target, data):
                return target
            if _claim(tmp, target):
                return target
    finally:
        tmp.unlink(missing_ok=True)
    raise UserError(f"{filename}: too many files with this name; rename it and upload again")


def _candidates(filename: str) -> list[str]:
    path = Path(filename)
    return [filename] + [f"{path.stem}-{n}{path.suffix}" for n in range(1, MAX_SUFFIX + 1)]


def _inside(root: Path, filename: str) -> Path:
    """root/filename, refusing anything that would land outside `root`."""
    target = root / filename
    # safe_name leaves no separators; this is the belt to its braces. An existing
    # symbolic link under this name is never written through (os.link does not follow
    # it and fails), so checking the real parent folder is enough.
    if filename in (".", "..") or target.parent.resolve() != root:
        raise UserError(f"{filename}: refusing to write outside the documents folder")
    return target


def _same_file(target: Path, data: bytes) -> bool:
    if target.is_symlink() or not target.is_file():
        return False
    try:
        return target.stat().st_size == len(data) and target.read_bytes() == data
    except OSError:
        return False


def _claim(tmp: Path, target: Path) -> bool:
    """Give `tmp`'s content the name `target` unless that name exists; True on success."""
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        # File systems without hard links: a plain rename, after checking the name.
        if os.path.lexists(target):
            return False
        os.rename(tmp, target)
        return True


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f}"


# ------------------------------------------------------------------ upload, then index


class Indexes(Protocol):
    """What add_uploads needs of rag.engine.Engine."""

    settings: Settings

    def index(self, rebuild: bool = False, progress: bool = True) -> IndexReport: ...


@dataclass
class UploadResult:
    saved: list[str] = field(default_factory=list)  # names now in the documents folder
    errors: list[str] = field(default_factory=list)  # one line per file not added
    report: IndexReport | None = None


def add_uploads(
    engine: Indexes,
    files: Sequence[tuple[str, bytes]],
    step: Callable[[str], None] = lambda message: None,
) -> UploadResult:
    """Save (name, bytes) uploads into the documents folder and index them at once.

    A file that is saved but turns out unreadable is removed again (when this upload
    created it), so a bad upload leaves the folder as it was. `step` hears progress.
    """
    settings = engine.settings
    result = UploadResult()
    saved: dict[str, tuple[Path, bool]] = {}  # relative path -> (path, created now)
    for name, data in files:
        try:
            path, new = _save_noting_new(settings, name, data)
        except UserError as exc:
            result.errors.append(str(exc))
            step(f"not added: {exc}")
            continue
        saved[path.relative_to(settings.docs_dir.resolve()).as_posix()] = (path, new)
        step(f"saved {path.name}")
    if not saved:
        return result
    step("indexing ...")
    result.report = engine.index(progress=False)
    unreadable = {s.path: s.reason for s in result.report.skipped if s.path in saved}
    for rel, (path, new) in saved.items():
        if rel not in unreadable:
            result.saved.append(path.name)
            continue
        result.errors.append(f"{path.name} cannot be read: {unreadable[rel]}")
        if new:
            path.unlink(missing_ok=True)
    return result


def _save_noting_new(settings: Settings, name: str, data: bytes) -> tuple[Path, bool]:
    """save_upload, and whether it created the file (not an identical existing one)."""
    existing = settings.docs_dir / safe_name(name)
    existed = os.path.lexists(existing)
    path = save_upload(settings.docs_dir, name, data, settings.max_file_bytes)
    return path, not existed or path.name != existing.name
