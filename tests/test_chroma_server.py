"""Client/server mode: the same indexing and search against a real `chroma run`."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag.config import Settings
from rag.engine import Engine
from rag.retrieve import language_balanced_query
from rag.store import StoreError
from rag.tuning import LOCAL_VECTORS_MAX, SERVER_POOL, SERVER_POOL_MAX

from .conftest import ROOT, SEEDS

QUESTIONS = [
    "Who chairs the Vietnam Association of Science and Technology Enterprises?",
    "Wie lautet das Motto der TECHFEST Vietnam 2025?",
    "Сколько инновационных стартапов в провинции Донгнай?",
    "Hva er L2Pro?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_chroma(data: Path, port: int) -> subprocess.Popen[bytes]:
    chroma = ROOT / ".venv" / "bin" / "chroma"
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("chroma run did not start")


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start_chroma(tmp_path / "chroma-data", port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_index_and_search_through_a_chroma_server(
    docs: Path, tmp_path: Path, chroma_server: str, embedder
) -> None:
    settings = Settings.from_env(
        docs_dir=docs, store_dir=tmp_path / "store", chroma_url=chroma_server
    )
    engine = Engine(settings)
    engine._embedder = embedder  # share the session's model instead of loading another
    report = engine.index(progress=False)
    assert report.added == 5 and report.chunks > 5
    assert not (tmp_path / "store" / "chroma").exists()  # nothing embedded locally
    hits = engine.search("Hvor mange oppstartsbedrifter er det i Dong Nai?", k=3)
    assert hits[0].chunk.path == "002_d6db562a30fbc1a0.txt"
    again = engine.index(progress=False)
    assert again.unchanged == 5 and again.added == 0
    assert engine.status()["chunks"] == report.chunks


def test_unreachable_server_is_a_clear_error(docs: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store", chroma_url=url)
    with pytest.raises(StoreError, match="cannot reach the Chroma server"):
        Engine(settings).index(progress=False)


@pytest.mark.parametrize(
    ("local_max", "pool", "pool_max"),
    [(LOCAL_VECTORS_MAX, SERVER_POOL, SERVER_POOL_MAX), (0, SERVER_POOL, SERVER_POOL_MAX),
     (0, 9, 36), (0, 9, 9)],
    ids=["vectors-held", "server-ranks", "server-deepens", "server-asks-per-language"],
)  # fmt: skip
def test_server_ranks_like_the_embedded_store(
    tmp_path: Path,
    chroma_server: str,
    embedder,
    local_max: int,
    pool: int,
    pool_max: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server store's vectors held in memory, or ranked by the server (above
    LOCAL_VECTORS_MAX): either way the same language-balanced ranking of the seeds as
    the embedded store. The server is asked for the whole store; or for 9 ids for 8
    results, deepened, or then each language whose chunks beyond the pool could still
    rank asked alone, more each round.
    """
    monkeypatch.setattr("rag.keyword_cache.LOCAL_VECTORS_MAX", local_max)
    monkeypatch.setattr("rag.retrieve.SERVER_POOL", pool)
    monkeypatch.setattr("rag.retrieve.SERVER_POOL_MAX", pool_max)
    rankings = []
    for name, url in (("embedded", None), ("server", chroma_server)):
        settings = Settings.from_env(docs_dir=SEEDS, store_dir=tmp_path / name, chroma_url=url)
        engine = Engine(settings)
        engine._embedder = embedder
        engine.index(progress=False)
        store = engine.store()
        rankings.append(
            [
                [chunk.chunk_id for chunk, _ in language_balanced_query(store, vector, 8)]
                for vector in map(embedder.embed_query, QUESTIONS)
            ]
        )
    assert rankings[0] == rankings[1]


@pytest.mark.parametrize("local_max", [LOCAL_VECTORS_MAX, 0], ids=["vectors", "sums"])
def test_server_snapshot_is_saved_and_updated_with_only_the_changed_documents(
    docs: Path,
    tmp_path: Path,
    chroma_server: str,
    embedder,
    local_max: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A querying machine keeps the texts and the vectors (or, for a store above
    LOCAL_VECTORS_MAX, each document's embedding sum) locally: after an index change it
    fetches the changed document's vectors only, and what it holds equals what a fresh
    build from the server gives."""
    monkeypatch.setattr("rag.keyword_cache.LOCAL_VECTORS_MAX", local_max)
    from rag.keyword_cache import cache_path, load_snapshot
    from rag.retrieve import group_sums
    from rag.store import Store

    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "w", chroma_url=chroma_server)
    engine = Engine(settings)
    engine._embedder = embedder
    engine.index(progress=False)
    reader = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "r", chroma_url=chroma_server)
    store = Store(reader, engine.store().embed_identity, create=False)
    first = load_snapshot(store)
    assert cache_path(store).exists() and (first.sums if local_max == 0 else first.vectors.size)
    changed = sorted(docs.glob("*.txt"))
    changed[0].write_text(changed[0].read_text() + "\nA new closing line.\n")
    changed[1].unlink()
    engine.index(progress=False)
    fetched: list[str] = []
    original = Store.embeddings
    monkeypatch.setattr(
        Store, "embeddings", lambda self, ids: fetched.extend(ids) or original(self, ids)
    )
    store.close()  # what changed is seen by a Store opened since (the engine re-opens)
    store = Store(reader, engine.store().embed_identity, create=False)
    updated = load_snapshot(store)
    chunks, vectors = store.all_chunks_and_embeddings()
    assert {c.chunk_id for c in updated.index.chunks} == {c.chunk_id for c in chunks}
    if local_max:
        by_id = dict(zip([c.chunk_id for c in chunks], vectors, strict=True))
        assert updated.vectors is not None and updated.sums is None
        held = dict(zip([c.chunk_id for c in updated.index.chunks], updated.vectors, strict=True))
        assert all(np.allclose(held[i], v / np.linalg.norm(v), atol=1e-6) for i, v in by_id.items())
    else:
        fresh = group_sums(chunks, vectors)
        assert updated.sums is not None and set(updated.sums) == set(fresh)
        for group, part in fresh.items():
            assert updated.sums[group].count == part.count
            assert np.allclose(updated.sums[group].vector, part.vector, atol=1e-5)
    changed_ids = {c.chunk_id for c in chunks if c.path == changed[0].name}
    assert set(fetched) == changed_ids  # only the changed document's vectors
    store.close()


def test_watch_reports_changes_from_the_server_manifest(
    tmp_path: Path, chroma_server: str, embedder
) -> None:
    """With RAG_CHROMA_URL the watcher reads what changed from the server's manifest
    (the store folder holds none): a new file is reported added, with its chunks."""
    import threading

    from rag.watch import Watcher, WatchEvent

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "first.txt").write_text("Plimbrook has a tram.\n", "utf-8")
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "s", chroma_url=chroma_server)
    events: list[WatchEvent] = []
    stop = threading.Event()
    thread = threading.Thread(target=Watcher(settings, events.append, lambda: embedder).run,
                              args=(stop,))  # fmt: skip
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not any(e.event == "watching" for e in events) and time.monotonic() < deadline:
            time.sleep(0.1)
        (docs / "second.txt").write_text("Quorvale has a ferry.\n", "utf-8")
        while not any(e.path == "second.txt" for e in events) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=60)
    lines = [e.line()[9:] for e in events if e.path]
    assert lines == ["added first.txt (1 chunk)", "added second.txt (1 chunk)"], lines
    assert not (tmp_path / "s" / "manifest.sqlite3").exists()
