"""The store's typed interface to Chroma: paging, one System per store, no private API.

Fast: a tiny embedded Chroma with 4-dimensional vectors, no models.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rag.store
from rag.config import Settings
from rag.store import Store, StoreError, _private_client

from .test_retrieve import text_chunk

RAG = Path(__file__).resolve().parent.parent / "rag"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(Settings.from_env(store_dir=tmp_path / "store"), "test-embedder")
    yield opened
    opened.close()


def test_reads_page_through_everything(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rag.store, "READ_PAGE", 2)  # 5 rows: pages of 2, 2 and 1
    chunks = [text_chunk(f"c{i}", f"Chunk number {i}.", "en" if i % 2 else "de") for i in range(5)]
    vectors = np.eye(5, 4, dtype=np.float32) + 0.1
    store.upsert(chunks, vectors)
    assert store.count() == 5
    assert store.all_ids() == {c.chunk_id for c in chunks}
    assert sorted(c.chunk_id for c in store.all_chunks()) == [c.chunk_id for c in chunks]
    listed, matrix = store.all_chunks_and_embeddings()
    by_id = {c.chunk_id: row for c, row in zip(listed, matrix, strict=True)}
    assert all(np.allclose(by_id[c.chunk_id], v) for c, v in zip(chunks, vectors, strict=True))
    assert set(store.embeddings(["c1", "missing"])) == {"c1"}
    assert store.embeddings([]) == {}
    nearest, similarity = store.query(vectors[3], 1)[0]
    assert nearest.chunk_id == "c3" and similarity == pytest.approx(1.0, abs=1e-5)
    german = store.query(vectors[3], 5, where={"language": "de"})
    assert {c.chunk_id for c, _ in german} == {"c0", "c2", "c4"}
    ids = store.nearest(vectors[3], 2)
    assert ids[0][0] == "c3" and ids[0][1] == pytest.approx(1.0, abs=1e-5) and len(ids) == 2
    assert {i for i, _ in store.nearest(vectors[3], 5, where={"language": "en"})} == {"c1", "c3"}
    store.delete(["c0", "c1"])
    assert store.all_ids() == {"c2", "c3", "c4"}


def test_each_client_loads_the_folder_in_a_chroma_system_of_its_own(tmp_path: Path) -> None:
    """Why a re-opened Store sees what was written after another one loaded the index.

    chromadb shares one System among the clients of one path; rag.store spells the
    folder differently per client to get one each. If a chromadb upgrade changes how
    Systems are shared, this fails: then see rag.store._private_client.
    """
    writer = _private_client(tmp_path)
    reader = _private_client(tmp_path)
    try:
        assert writer.spelling != reader.spelling
        written = writer.client.get_or_create_collection(
            "probe", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        written.upsert(ids=["x"], embeddings=[[1.0, 0.0, 0.0, 0.0]], metadatas=[{"k": 1}])
        read = reader.client.get_collection("probe", embedding_function=None)
        assert read.query(query_embeddings=[[1.0, 0.0, 0.0, 0.0]], n_results=2)["ids"] == [["x"]]
        written.upsert(ids=["y"], embeddings=[[0.0, 1.0, 0.0, 0.0]], metadatas=[{"k": 2}])
        # the reader's System keeps the vector index it loaded: it is not the writer's
        seen = read.query(query_embeddings=[[0.0, 1.0, 0.0, 0.0]], n_results=2)["ids"][0]
        assert "y" not in seen, "chromadb now shares one System between rag.store's clients"
        writer.close()  # stops the writer's System only
        assert read.count() == 2
        fresh = _private_client(tmp_path)
        try:
            found = fresh.client.get_collection("probe", embedding_function=None).query(
                query_embeddings=[[0.0, 1.0, 0.0, 0.0]], n_results=1
            )
            assert found["ids"] == [["y"]]  # a fresh System loads what is on disk
        finally:
            fresh.close()
    finally:
        writer.close()
        reader.close()
    assert not {s for s in rag.store._SPELLINGS_IN_USE if s.startswith(str(tmp_path))}


def test_no_chroma_outside_the_store_and_no_private_chromadb_name() -> None:
    private = re.compile(r"SharedSystemClient|_identifier_to_|clear_system_cache|\._system\b")
    for path in RAG.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not private.search(text), f"{path}: private chromadb API"
        # rag.server_manifest: the manifest's own collection in a Chroma server
        if path.name not in {"store.py", "server_manifest.py"}:
            assert not re.search(r"^\s*(?:import|from) chromadb", text, re.M), path
            assert "collection." not in text, f"{path}: a Chroma call outside rag/store.py"


def test_a_folder_that_failed_to_open_opens_once_repaired(tmp_path: Path) -> None:
    """chromadb keeps a System that failed to start cached under its path: the next
    client of the same process must not get it (`rag index --rebuild` after damage)."""
    folder = tmp_path / "chroma"
    first = _private_client(folder)
    first.client.get_or_create_collection("probe", embedding_function=None)
    first.close()
    sqlite = folder / "chroma.sqlite3"
    os.truncate(sqlite, sqlite.stat().st_size // 2)
    with pytest.raises(Exception):  # noqa: B017 (chromadb raises several kinds)
        _private_client(folder)
    shutil.rmtree(folder)
    repaired = _private_client(folder)
    try:
        assert repaired.client.get_or_create_collection("probe", embedding_function=None)
    finally:
        repaired.close()


# ------------------------------------------------------------------ a read-only store


def _indexed_store(tmp_path: Path) -> Settings:
    """A small store of two chunks, with the manifest naming them, then closed."""
    settings = Settings.from_env(store_dir=tmp_path / "store")
    writer = Store(settings, "test-embedder")
    try:
        chunks = [text_chunk(f"c{i}", f"Chunk number {i}.", "en") for i in range(2)]
        writer.upsert(chunks, np.eye(2, 4, dtype=np.float32) + 0.1)
        writer.manifest.mark_pending([(c.path, c.chunk_id, [c.chunk_id]) for c in chunks])
        writer.manifest.mark_done([(c.path, c.chunk_id, [c.chunk_id], "en", "") for c in chunks])
    finally:
        writer.close()
    return settings


def _say_read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """os.access answers as on a read-only mount of `folder` (as root, which these tests
    may run as, chmod stops no write)."""
    real = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if mode & os.W_OK and Path(os.fsdecode(path)).is_relative_to(folder):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_read_only_store_is_read_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _indexed_store(tmp_path)
    _say_read_only(monkeypatch, settings.store_dir)
    reader = Store(settings, "test-embedder", create=False)
    try:
        assert reader.manifest.read_only
        assert set(reader.manifest.files()) == {"c0.txt", "c1.txt"}
        assert reader.manifest.chunk_count() == reader.count() == 2
        with pytest.raises(StoreError, match=r"cannot write to the store folder .*\(read-only\)"):
            reader.manifest.forget(["c0.txt"])
    finally:
        reader.close()


def test_a_read_only_store_chroma_cannot_open_is_not_called_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _indexed_store(tmp_path)
    _say_read_only(monkeypatch, settings.store_dir)

    def chromadb_on_a_read_only_folder(path: Path) -> None:
        raise RuntimeError("error returned from database: attempt to write a readonly database")

    monkeypatch.setattr(rag.store, "_private_client", chromadb_on_a_read_only_folder)
    reader = Store(settings, "test-embedder", create=False)
    try:
        with pytest.raises(StoreError) as caught:
            reader.count()
    finally:
        reader.close()
    message = str(caught.value)
    assert "cannot be opened read-only" in message and "writable" in message
    assert "--rebuild" not in message and "damaged" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_a_store_folder_without_write_permission_is_read(tmp_path: Path) -> None:
    settings = _indexed_store(tmp_path)
    folders = [settings.store_dir, *settings.store_dir.rglob("*")]
    for path in folders:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        reader = Store(settings, "test-embedder", create=False)
        try:
            assert reader.manifest.read_only
            assert set(reader.manifest.files()) == {"c0.txt", "c1.txt"}
        finally:
            reader.close()
    finally:
        for path in folders:
            path.chmod(path.stat().st_mode | 0o200)
