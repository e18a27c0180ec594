"""rag.uploads: browser uploads land safely in the documents folder and get indexed."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rag.config import Settings
from rag.indexer import IndexReport
from rag.records import Skipped, UserError
from rag.uploads import MAX_NAME_BYTES, add_uploads, safe_name, save_upload

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd.txt", "passwd.txt"),
        ("C:\\Users\\me\\notes.md", "notes.md"),
        ("/abs/path/a.docx", "a.docx"),
        (".hidden.txt", "hidden.txt"),
        ("...dots.html", "dots.html"),
        ("  spaced name .txt ", "spaced name .txt"),
        ("a\x00b\x1fc.txt", "abc.txt"),
        ("Upper.TXT", "Upper.TXT"),
    ],
)
def test_safe_name_keeps_only_a_plain_basename(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_safe_name_is_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "Hà Nội.txt")
    assert decomposed != "Hà Nội.txt"
    assert safe_name(decomposed) == unicodedata.normalize("NFC", "Hà Nội.txt")


@pytest.mark.parametrize("name", ["", "   ", "..", "...", "dir/", "../", "\x00"])
def test_safe_name_refuses_names_without_a_file(name: str) -> None:
    with pytest.raises(UserError, match="cannot be used"):
        safe_name(name)


@pytest.mark.parametrize("name", ["tool.exe", "archive.tar.gz", "README", ".txt", "x.txt."])
def test_safe_name_refuses_unsupported_types(name: str) -> None:
    with pytest.raises(UserError, match="unsupported file type"):
        safe_name(name)


def test_safe_name_shortens_long_names_keeping_the_extension() -> None:
    name = "ы" * 300 + ".md"
    short = safe_name(name)
    assert short.endswith(".md")
    assert len(short.encode()) <= MAX_NAME_BYTES


def test_save_upload_writes_into_the_folder(tmp_path: Path) -> None:
    docs = tmp_path / "docs"  # created on demand
    path = save_upload(docs, "../../outside.txt", b"hello", MB)
    assert path == docs.resolve() / "outside.txt"
    assert path.read_bytes() == b"hello"
    assert not (tmp_path / "outside.txt").exists()
    assert sorted(p.name for p in docs.iterdir()) == ["outside.txt"]  # no temp file left


def test_save_upload_adds_a_suffix_on_collision(tmp_path: Path) -> None:
    first = save_upload(tmp_path, "notes.md", b"one", MB)
    second = save_upload(tmp_path, "notes.md", b"two", MB)
    third = save_upload(tmp_path, "sub/notes.md", b"three", MB)
    assert [first.name, second.name, third.name] == ["notes.md", "notes-1.md", "notes-2.md"]
    assert first.read_bytes() == b"one"  # never overwritten


def test_save_upload_same_bytes_again_reuses_the_file(tmp_path: Path) -> None:
    first = save_upload(tmp_path, "notes.md", b"same", MB)
    assert save_upload(tmp_path, "notes.md", b"same", MB) == first
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]


def test_save_upload_never_writes_through_a_symlink(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("keep me")
    (docs / "secret.txt").symlink_to(outside)
    path = save_upload(docs, "secret.txt", b"overwrite?", MB)
    assert path.name == "secret-1.txt"
    assert outside.read_text() == "keep me"


def test_save_upload_limits(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"too large \(2\.0 MB, limit 1\.0 MB\)"):
        save_upload(tmp_path, "big.txt", b"x" * (2 * MB), MB)
    with pytest.raises(UserError, match="empty"):
        save_upload(tmp_path, "empty.txt", b"", MB)
    with pytest.raises(UserError, match="unsupported"):
        save_upload(tmp_path, "run.sh", b"echo", MB)
    assert list(tmp_path.iterdir()) == []


def test_save_upload_into_a_folder_that_refuses_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The OS's refusal is simulated: chmod does not stop root, which runs CI.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(UserError, match=r"could not be saved .*Permission denied") as info:
        save_upload(tmp_path, "a.txt", b"x", MB)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_save_upload_reason_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        save_upload(tmp_path, "a\nb.exe", b"x", MB)
    assert "\n" not in str(info.value)


@dataclass
class FakeEngine:
    """Indexes by listing the folder; a file holding b"broken" is "unreadable"."""

    settings: Settings
    runs: int = 0
    seen: list[str] = field(default_factory=list)

    def index(self, rebuild: bool = False, progress: bool = True) -> IndexReport:
        self.runs += 1
        files = sorted(p for p in self.settings.docs_dir.iterdir() if not p.name.startswith("."))
        self.seen = [p.name for p in files]
        broken = [p.name for p in files if p.read_bytes() == b"broken"]
        return IndexReport(
            files=len(files) - len(broken),
            added=len(files) - len(broken),
            skipped=[Skipped(name, "not a valid PDF") for name in broken],
        )


def test_add_uploads_saves_then_indexes_once(tmp_path: Path) -> None:
    engine = FakeEngine(Settings(docs_dir=tmp_path))
    steps: list[str] = []
    result = add_uploads(engine, [("a.txt", b"alpha"), ("b.md", b"beta")], steps.append)
    assert result.saved == ["a.txt", "b.md"] and result.errors == []
    assert engine.runs == 1 and engine.seen == ["a.txt", "b.md"]
    assert result.report is not None and result.report.added == 2
    assert steps == ["saved a.txt", "saved b.md", "indexing ..."]


def test_add_uploads_reports_rejected_and_unreadable_files(tmp_path: Path) -> None:
    engine = FakeEngine(Settings(docs_dir=tmp_path, max_file_mb=0.001))
    files = [("ok.txt", b"fine"), ("bad.pdf", b"broken"), ("x.exe", b"1"), ("big.txt", b"x" * 5000)]
    result = add_uploads(engine, files)
    assert result.saved == ["ok.txt"]
    assert len(result.errors) == 3
    assert any("bad.pdf cannot be read: not a valid PDF" in e for e in result.errors)
    assert not (tmp_path / "bad.pdf").exists()  # an unreadable upload leaves no trace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.txt"]


def test_add_uploads_keeps_an_existing_file_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "bad.pdf").write_bytes(b"broken")  # the user's own file, already there
    engine = FakeEngine(Settings(docs_dir=tmp_path))
    result = add_uploads(engine, [("bad.pdf", b"broken")])
    assert (tmp_path / "bad.pdf").exists()
    assert result.errors == ["bad.pdf cannot be read: not a valid PDF"]


def test_add_uploads_does_not_index_when_nothing_was_saved(tmp_path: Path) -> None:
    engine = FakeEngine(Settings(docs_dir=tmp_path))
    result = add_uploads(engine, [("x.exe", b"1")])
    assert engine.runs == 0 and result.report is None and result.saved == []
