"""Incremental indexing into a real Chroma with the real packaged embedder."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.chunking import chunk_document
from rag.config import Settings
from rag.engine import Engine
from rag.indexer import index_folder
from rag.ingest import read_document
from rag.models import embedder_identity
from rag.records import UserError
from rag.store import Store, StoreError

from .conftest import DATA, ROOT, SEEDS

SEED_NAMES = sorted(p.name for p in SEEDS.iterdir())


def run_index(settings: Settings, embedder: object, **kwargs: object):  # type: ignore[no-untyped-def]
    return index_folder(settings, progress=False, embedder_factory=lambda: embedder, **kwargs)


def no_model() -> object:
    raise AssertionError("the embedding model must not be loaded for an unchanged folder")


def store_ids(settings: Settings) -> tuple[set[str], set[str]]:
    """(ids in Chroma, ids the manifest says are done) — they must always agree."""
    store = Store(settings, embedder_identity(settings), create=False)
    try:
        files = store.manifest.files()
        assert all(r.state == "done" for r in files.values())
        return store.all_ids(), {i for r in files.values() for i in r.chunk_ids}
    finally:
        store.close()


def expected_ids(settings: Settings) -> set[str]:
    """The ids a clean index of the folder must hold: re-chunk every readable file."""
    ids: set[str] = set()
    for path in sorted(settings.docs_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            doc = read_document(path, settings.docs_dir, settings.max_file_bytes)
            chunks = chunk_document(doc, settings.chunk_tokens, settings.chunk_overlap)
            ids |= {c.chunk_id for c in chunks}
    return ids


def assert_consistent(settings: Settings) -> None:
    in_chroma, in_manifest = store_ids(settings)
    assert in_chroma == in_manifest == expected_ids(settings)


def test_first_index_adds_every_seed(docs: Path, make_settings, embedder) -> None:
    settings = make_settings()
    report = run_index(settings, embedder)
    assert report.added == 5 and report.files == 5
    assert report.updated == report.removed == report.unchanged == 0
    assert report.skipped == []
    assert report.chunks > 5
    assert_consistent(settings)


def test_unchanged_folder_is_skipped_without_the_model(docs: Path, make_settings, embedder) -> None:
    settings = make_settings()
    first = run_index(settings, embedder)
    again = index_folder(settings, progress=False, embedder_factory=no_model)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 5)
    assert again.chunks == first.chunks


def test_modify_delete_and_add(docs: Path, make_settings, embedder) -> None:
    settings = make_settings()
    run_index(settings, embedder)
    target = docs / SEED_NAMES[4]
    target.write_text(target.read_text(encoding="utf-8") + "\nEn ny setning om Hanoi.\n", "utf-8")
    (docs / SEED_NAMES[0]).unlink()
    shutil.copy(DATA / "ru_cp1251.txt", docs / "new.txt")
    report = run_index(settings, embedder)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 3)
    assert_consistent(settings)


def test_rename_reuses_no_chunk_of_the_old_path(docs: Path, make_settings, embedder) -> None:
    settings = make_settings()
    run_index(settings, embedder)
    before, _ = store_ids(settings)
    (docs / SEED_NAMES[2]).rename(docs / "renamed.txt")
    report = run_index(settings, embedder)
    assert (report.added, report.removed, report.unchanged) == (1, 1, 4)
    after, _ = store_ids(settings)
    store = Store(settings, embedder_identity(settings), create=False)
    paths = {c.path for c in store.all_chunks()}
    store.close()
    assert SEED_NAMES[2] not in paths and "renamed.txt" in paths
    assert before & after  # the untouched files kept their chunks
    assert_consistent(settings)


def test_bad_files_are_skipped_and_nothing_indexed_is_lost(
    docs: Path, make_settings, embedder
) -> None:
    settings = make_settings(max_file_mb=0.05)
    run_index(settings, embedder)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "binary.txt").write_bytes(bytes(range(256)) * 20)
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "table.xlsx").write_bytes(b"PK\x03\x04 whatever")
    (docs / "big.txt").write_text("Hanoi. " * 20000, encoding="utf-8")
    outside = docs.parent / "outside.txt"
    outside.write_text("Secret text outside the folder.", encoding="utf-8")
    (docs / "link.txt").symlink_to(outside)
    # a previously indexed file overwritten with garbage keeps its last good version
    (docs / SEED_NAMES[1]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    report = run_index(settings, embedder)
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == {
        "empty.txt",
        "binary.txt",
        "corrupt.pdf",
        "table.xlsx",
        "big.txt",
        "link.txt",
        SEED_NAMES[1],
    }
    assert all(reason and "\n" not in reason for reason in reasons.values())
    assert "previous version kept" in reasons[SEED_NAMES[1]]
    assert report.files == 5 and report.removed == 0
    in_chroma, in_manifest = store_ids(settings)
    assert in_chroma == in_manifest


def test_other_embedding_model_is_refused_naming_rebuild(
    docs: Path, make_settings, embedder
) -> None:
    settings = make_settings()
    run_index(settings, embedder)
    other = make_settings(embed_model="intfloat/some-other-model")
    with pytest.raises(StoreError, match="--rebuild"):
        index_folder(other, progress=False, embedder_factory=no_model)


def test_rebuild_starts_from_scratch(docs: Path, make_settings, embedder) -> None:
    settings = make_settings()
    run_index(settings, embedder)
    report = run_index(settings, embedder, rebuild=True)
    assert report.added == 5 and report.unchanged == 0
    assert_consistent(settings)


def test_a_snapshot_of_the_empty_store_is_built_anew_once_files_arrive(
    docs: Path, make_settings, embedder
) -> None:
    # a search while a rebuild has emptied the collection saved a snapshot with no
    # rows; updating it with the files indexed next must not fail on the vectors' width
    from rag.keyword_cache import load_snapshot

    settings = make_settings()
    stash = docs.parent / "stash"
    docs.rename(stash)
    docs.mkdir()
    run_index(settings, embedder)
    store = Store(settings, embedder_identity(settings), create=False)
    try:
        assert load_snapshot(store).index.chunks == []
        for path in stash.iterdir():
            shutil.copy(path, docs / path.name)
        run_index(settings, embedder)
        snapshot = load_snapshot(store)
        assert len(snapshot.index.chunks) == len(expected_ids(settings))
        assert snapshot.vectors is not None
        assert snapshot.vectors.shape[0] == len(snapshot.index.chunks)
    finally:
        store.close()


def test_foreign_store_folder_is_refused(
    docs: Path, make_settings, embedder, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="rebuild"):
        run_index(make_settings(store_dir=foreign), embedder)
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize("inside", ["", "sub"], ids=["the-file", "under-it"])
def test_store_path_that_is_a_file_is_a_one_line_error(
    docs: Path, make_settings, tmp_path: Path, inside: str
) -> None:
    blocker = tmp_path / "storefile"
    blocker.write_text("mine", encoding="utf-8")
    store = blocker / inside if inside else blocker
    for rebuild in (False, True):
        with pytest.raises(StoreError, match=re.escape(f"{blocker} is a file")) as caught:
            index_folder(make_settings(store_dir=store), rebuild, False, no_model)
        assert str(store) in str(caught.value) and "\n" not in str(caught.value)
    assert blocker.read_text(encoding="utf-8") == "mine"


def test_read_only_store_folder_is_a_one_line_error(
    docs: Path, make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a read-only mount, faked: as root, chmod would not stop the writes
    def read_only(path: Path, *args: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr("rag.store.FileLock", read_only)
    settings = make_settings()
    with pytest.raises(StoreError) as caught:
        index_folder(settings, progress=False, embedder_factory=no_model)
    assert str(caught.value) == (
        f"cannot write to the store folder {settings.store_dir} (Read-only file system); "
        "make it writable or choose another --store"
    )


def _notes(folder: Path, *names: str) -> Path:
    """A small documents folder: one short file per name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.txt").write_text(f"The {name} ferry crosses the fjord.\n", "utf-8")
    return folder


def test_another_docs_folder_is_refused_unless_rebuild(
    make_settings, embedder, tmp_path: Path
) -> None:
    settings = make_settings(docs_dir=_notes(tmp_path / "notes", "Oslo", "Bergen"))
    run_index(settings, embedder)
    other = make_settings(docs_dir=_notes(tmp_path / "note", "Hanoi"))
    with pytest.raises(UserError, match=r"indexes the documents folder .*notes, not .*note:"):
        index_folder(other, progress=False, embedder_factory=no_model)
    assert_consistent(settings)  # nothing removed
    status = Engine(make_settings()).status()  # the default RAG_DOCS is not shown
    assert status["docs"] == str((tmp_path / "notes").resolve()) and status["files"] == 2
    report = run_index(other, embedder, rebuild=True)
    assert (report.added, report.files) == (1, 1)
    assert Engine(make_settings()).status()["docs"] == str((tmp_path / "note").resolve())


def test_an_emptied_docs_folder_is_refused_unless_rebuild(
    make_settings, embedder, tmp_path: Path
) -> None:
    settings = make_settings(docs_dir=_notes(tmp_path / "notes", "Oslo", "Bergen"))
    run_index(settings, embedder)
    for path in settings.docs_dir.iterdir():  # a drive not mounted: the bare mount point
        path.unlink()
    with pytest.raises(UserError, match="no documents to index: .* remove all 2 indexed files"):
        index_folder(settings, progress=False, embedder_factory=no_model)
    assert len(store_ids(settings)[0]) == 2
    report = run_index(settings, embedder, rebuild=True)  # emptied on purpose
    assert (report.files, report.chunks) == (0, 0)


def test_a_store_moved_with_its_docs_folder_or_alone_still_indexes_it(
    embedder, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    _notes(before / "docs", "Oslo", "Bergen")
    run_index(Settings.from_env(docs_dir=before / "docs", store_dir=before / "store"), embedder)
    after = tmp_path / "after"
    before.rename(after)  # a project folder moved (or copied) with its store
    moved = Settings.from_env(docs_dir=after / "docs", store_dir=after / "store")
    report = index_folder(moved, progress=False, embedder_factory=no_model)
    assert (report.unchanged, report.removed) == (2, 0)
    (after / "store").rename(tmp_path / "store")  # then the store alone
    alone = Settings.from_env(docs_dir=after / "docs", store_dir=tmp_path / "store")
    report = index_folder(alone, progress=False, embedder_factory=no_model)
    assert (report.unchanged, report.removed) == (2, 0)
    assert Engine(alone).status()["docs"] == str((after / "docs").resolve())


def test_a_store_without_a_recorded_folder_adopts_the_next_one(
    make_settings, embedder, tmp_path: Path
) -> None:
    import sqlite3

    settings = make_settings(docs_dir=_notes(tmp_path / "notes", "Oslo"))
    run_index(settings, embedder)
    db = sqlite3.connect(settings.store_dir / "manifest.sqlite3")  # as made before the record
    with db:
        db.execute("DELETE FROM meta WHERE key LIKE 'docs_dir%'")
    db.close()
    other = make_settings(docs_dir=_notes(tmp_path / "other", "Hanoi"))
    report = run_index(other, embedder)
    assert (report.added, report.removed, report.files) == (1, 1, 1)
    with pytest.raises(UserError, match="indexes the documents folder"):
        index_folder(settings, progress=False, embedder_factory=no_model)


def test_missing_docs_folder_is_a_clear_error(make_settings, embedder, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        run_index(make_settings(docs_dir=tmp_path / "nope"), embedder)


def test_docs_path_that_is_a_file_is_not_a_folder(make_settings, tmp_path: Path) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("Hanoi.", encoding="utf-8")
    with pytest.raises(
        UserError, match=f"^the documents folder {re.escape(str(afile))} is not a folder$"
    ):
        index_folder(make_settings(docs_dir=afile), progress=False, embedder_factory=no_model)


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rag.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _big_corpus(folder: Path, copies: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        for seed in SEEDS.iterdir():
            text = seed.read_text(encoding="utf-8")
            (folder / f"{i:03d}_{seed.name}").write_text(f"Kopie {i}.\n{text}", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_done", [0, 3])
def test_killed_indexer_is_completed_by_the_next_run(tmp_path: Path, kill_after_done: int) -> None:
    """SIGKILL before and after some files are done; the rerun leaves no orphan or duplicate."""
    docs, store = tmp_path / "docs", tmp_path / "store"
    _big_corpus(docs, 8)
    env = {**os.environ, "RAG_DOCS": str(docs), "RAG_STORE": str(store)}
    proc = _cli("index", "--json", env=env)
    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _done_files(store) > kill_after_done or (kill_after_done == 0 and _pending(store)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the indexer finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = _cli("index", "--json", env=env)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    report = json.loads(out)
    assert report["files"] == 40 and report["skipped"] == []
    assert_consistent(settings)


def _manifest_rows(store: Path, where: str) -> int:
    import sqlite3

    path = store / "manifest.sqlite3"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(path, timeout=1)
        try:
            return db.execute(f"SELECT COUNT(*) FROM files WHERE {where}").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def _done_files(store: Path) -> int:
    return _manifest_rows(store, "state = 'done'")


def _pending(store: Path) -> bool:
    return _manifest_rows(store, "state = 'pending'") > 0


def test_cli_index_search_status_json(docs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAG_DOCS": str(docs), "RAG_STORE": str(tmp_path / "store")}
    out, err = _cli("index", "--json", env=env).communicate(timeout=600)
    report = json.loads(out)
    assert set(report) == {
        "files",
        "chunks",
        "added",
        "updated",
        "removed",
        "unchanged",
        "skipped",
        "seconds",
    }
    out, err = _cli("search", "Dong Nai startups", "-k", "3", "--json", env=env).communicate(
        timeout=600
    )
    hits = json.loads(out)
    assert len(hits) == 3
    assert set(hits[0]) == {"rank", "file", "path", "lines", "score", "text", "chunk_id", "via"}
    assert [h["rank"] for h in hits] == [1, 2, 3]
    out, err = _cli("status", "--json", env=env).communicate(timeout=600)
    status = json.loads(out)
    assert status["files"] == 5 and status["chunks"] == report["chunks"]
    assert status["last_indexed"]
    # bytes that are not UTF-8 in the question (a Latin-1 terminal): searched, not a crash
    raw = subprocess.run(
        [sys.executable, "-m", "rag.cli", "search", b"Dong Nai \xff", "-k", "1", "--json"],
        env=env, cwd=ROOT, capture_output=True, timeout=600,
    )  # fmt: skip
    assert raw.returncode == 0 and json.loads(raw.stdout)[0]["rank"] == 1, raw.stderr
    # rag chat: a question, its follow-up, and a line of bytes that are not UTF-8
    chat = subprocess.run(
        [sys.executable, "-m", "rag.cli", "chat", "--llm", "none"],
        input=b"How many innovative startups does Dong Nai have?\nAnd Quang Ninh?\n\xff\xfe?\n",
        env=env, cwd=ROOT, capture_output=True, timeout=600,
    )  # fmt: skip
    assert chat.returncode == 0 and b"Traceback" not in chat.stderr, chat.stderr
    assert chat.stdout.count(b"\n> ") == 4 and b"90" in chat.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "?!"), "error: the question has no words or numbers to search for"),
        (("ask", "🤔🔥", "--llm", "none"), "error: the question has no words or numbers"),
        (("search", "Dong Nai", "-k", "0"), "argument -k: 0 passages find nothing"),
        (("chat", "--llm", "none"), "error: no index in"),  # at once, not at each question
        (("eval", "tests/qa/golden.jsonl", "--report", "/nonexistent/r.json"),
         "error: --report /nonexistent/r.json: the folder /nonexistent does not exist"),
    ],
)  # fmt: skip
def test_cli_refuses_what_would_find_nothing_before_any_work(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    env = {**os.environ, "RAG_STORE": str(tmp_path / "empty-store"), "RAG_SERVER": "off"}
    out, err = _cli(*args, env=env).communicate(timeout=300)
    assert out == "" and message in err and "Traceback" not in err


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "RAG_STORE": str(tmp_path / "empty-store")}
    proc = _cli("search", "anything", env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert err.strip().count("\n") == 0 and err.startswith("error:")
    assert "Traceback" not in err


def test_cli_status_of_a_missing_store_exits_1(tmp_path: Path) -> None:
    env = {**os.environ, "RAG_STORE": str(tmp_path / "missing")}
    for json_flag in ([], ["--json"]):
        proc = _cli("status", *json_flag, env=env)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        assert err.startswith("error: no index in") and err.strip().count("\n") == 0
        if json_flag:
            assert "no index in" in json.loads(out)["error"]  # the models' status too
            assert "embed_model" in json.loads(out)
