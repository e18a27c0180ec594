"""Faults: killed indexers and watchers, a second indexer, queries during indexing, a
Chroma server that goes away, damaged and foreign store folders.

After every fault the next run must leave the store exactly as a clean index would:
Chroma ids == manifest ids == the ids computed from the files (tests.test_index).
Kills at exact points (inside a write, inside a deletion) are made by the indexer's own
process: a small program patches Store.upsert / Store.delete to SIGKILL itself half-way,
then runs the real CLI. It embeds with HashEmbedder, a fast stand-in, because recovery
does not depend on what the vectors are (tests/test_index.py kills the real model run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rag.indexer
from rag.config import Settings
from rag.engine import Engine
from rag.indexer import index_folder, store_lock
from rag.models import embedder_identity
from rag.records import Hit
from rag.server_manifest import GENERATION_TTL
from rag.store import Store, StoreError

from .conftest import ROOT, SEEDS
from .test_chroma_server import free_port, start_chroma
from .test_index import _done_files, _pending, assert_consistent, run_index, store_ids
from .test_watch import SMALL_SEEDS, small_corpus, wait_until

EMBED_DIM = 384  # multilingual-e5-small; a store holds one dimension


class HashEmbedder:
    """Deterministic unit vectors from the text's hash: instant, model-free."""

    dim = EMBED_DIM

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        rows = [self._vector(text) for text in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), EMBED_DIM)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    @staticmethod
    def _vector(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(EMBED_DIM).astype(np.float32)
        return vector / np.linalg.norm(vector)


def hash_index(settings: Settings, **kwargs: object):  # type: ignore[no-untyped-def]
    return index_folder(settings, progress=False, embedder_factory=HashEmbedder, **kwargs)


# The indexer's process, killing itself at `point`: "upsertN" half-way through the N-th
# write, "delete" half-way through deleting a removed file's chunks, "none" never.
KILLER = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
import rag.engine, rag.indexer, rag.models, rag.store
from tests.test_faults import HashEmbedder

point, command = sys.argv[1], sys.argv[2:]
for module in (rag.engine, rag.indexer, rag.models):
    module.load_embedder = lambda settings: HashEmbedder()
rag.indexer.GROUP_CHUNKS = 4  # a group per file or so: kills can fall between them
upsert, delete = rag.store.Store.upsert, rag.store.Store.delete
writes = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def killing_upsert(self, chunks, vectors):
    writes.append(1)
    if point == f"upsert{len(writes)}":
        half = max(1, len(chunks) // 2)
        upsert(self, chunks[:half], vectors[:half])
        die()
    upsert(self, chunks, vectors)

def killing_delete(self, ids):
    ids = sorted(set(ids))
    if ids and point == "delete":
        delete(self, ids[: max(1, len(ids) // 2)])
        die()
    delete(self, ids)

rag.store.Store.upsert, rag.store.Store.delete = killing_upsert, killing_delete
from rag.cli import main
sys.exit(main(command))
"""


def cli_env(docs: Path, store: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "RAG_DOCS": str(docs), "RAG_STORE": str(store), **extra}


def killer(point: str, *command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", KILLER, point, *command],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# The real `rag watch`, whose first write stalls after it lands: the round's pending window
# stays open until the test kills the process (left alone, it lasts milliseconds and a
# poll can miss it).
STALLING_WATCHER = """
import os, sys, time
sys.path.insert(0, os.getcwd())
import rag.store

upsert = rag.store.Store.upsert

def stalling_upsert(self, chunks, vectors):
    upsert(self, chunks, vectors)
    time.sleep(600)

rag.store.Store.upsert = stalling_upsert
from rag.cli import main
sys.exit(main(sys.argv[1:]))
"""


def rag_cli(*args: str, env: dict[str, str], timeout: float = 300) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "rag.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 1, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def all_seeds(folder: Path) -> Path:
    shutil.copytree(SEEDS, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


# ------------------------------------------------------------------ killed indexer


@pytest.mark.parametrize(
    ("point", "done_before_kill"),
    [("upsert1", 0), ("upsert3", 2)],
    ids=["before-any-file-done", "mid-run"],
)
def test_killed_indexer_is_completed_by_the_next_run(
    tmp_path: Path, point: str, done_before_kill: int
) -> None:
    docs, store = all_seeds(tmp_path / "docs"), tmp_path / "store"
    proc = killer(point, "index", env=cli_env(docs, store))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert _done_files(store) == done_before_kill and _pending(store)
    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    in_chroma, _ = _raw_ids(settings)
    assert in_chroma  # the killed write left rows that only the pending marks account for
    report = hash_index(settings)
    assert report.files == 5 and report.added == 5 - done_before_kill
    assert report.unchanged == done_before_kill
    assert_consistent(settings)


def test_indexer_killed_while_deleting_a_removed_file(tmp_path: Path) -> None:
    docs, store = all_seeds(tmp_path / "docs"), tmp_path / "store"
    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    hash_index(settings)
    before, _ = store_ids(settings)
    removed = sorted(docs.iterdir())[1]
    removed.unlink()
    proc = killer("delete", "index", env=cli_env(docs, store))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    half_deleted, _ = _raw_ids(settings)
    assert len(half_deleted) < len(before) and _pending(store)
    report = hash_index(settings)  # its recovery finishes the deletion
    assert report.files == 4 and removed.name not in _raw_ids(settings)[1]
    assert_consistent(settings)


def test_watcher_killed_while_deleting_a_removed_file(tmp_path: Path) -> None:
    docs, store = all_seeds(tmp_path / "docs"), tmp_path / "store"
    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    hash_index(settings)
    proc = killer("delete", "watch", env=cli_env(docs, store))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "watching:" in line, line
        sorted(docs.iterdir())[2].unlink()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _pending(store)
    hash_index(settings)
    assert_consistent(settings)


def test_watcher_killed_mid_round_with_the_real_model(tmp_path: Path, embedder) -> None:
    docs, store = small_corpus(tmp_path / "docs"), tmp_path / "store"
    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    run_index(settings, embedder)
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLING_WATCHER, "watch"],
        env=cli_env(docs, store),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert "watching:" in (proc.stdout.readline() if proc.stdout else "")
        for name in sorted(p.name for p in SEEDS.iterdir() if p.name not in SMALL_SEEDS):
            shutil.copy(SEEDS / name, docs / name)
        wait_until(lambda: _pending(store), 180, "the round to mark files pending")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = run_index(settings, embedder)
    assert report.files == 5
    assert_consistent(settings)


def _raw_ids(settings: Settings) -> tuple[set[str], dict[str, str]]:
    """Chroma's ids and each manifest row's state, whatever state the store is in."""
    store = Store(settings, embedder_identity(settings), create=False)
    try:
        return store.all_ids(), {p: r.state for p, r in store.manifest.files().items()}
    finally:
        store.close()


# -------------------------------------------------------------- a second indexer


@pytest.fixture
def indexed_small(tmp_path: Path) -> Settings:
    settings = Settings.from_env(docs_dir=small_corpus(tmp_path / "docs"), store_dir=tmp_path / "s")
    hash_index(settings)
    return settings


def _hold_lock(store_dir: Path, release: threading.Event, held: threading.Event) -> None:
    with store_lock(store_dir, wait_seconds=0):
        held.set()
        release.wait(60)


@pytest.fixture
def lock_holder(indexed_small: Settings) -> Iterator[threading.Event]:
    release, held = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold_lock, args=(indexed_small.store_dir, release, held))
    thread.start()
    assert held.wait(10)
    yield release
    release.set()
    thread.join(timeout=10)


def test_second_indexer_waits_for_the_first(indexed_small: Settings, lock_holder) -> None:
    env = cli_env(indexed_small.docs_dir, indexed_small.store_dir, RAG_LOCK_WAIT="120")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag.cli", "index", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = ""
    while proc.stderr and not first.startswith("waiting for another indexer on"):
        first = proc.stderr.readline()
        assert first, "the second indexer ended without waiting"
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting
    lock_holder.set()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["unchanged"] == 2
    assert_consistent(indexed_small)


def test_second_indexer_gives_up_after_rag_lock_wait(indexed_small: Settings, lock_holder) -> None:
    env = cli_env(indexed_small.docs_dir, indexed_small.store_dir, RAG_LOCK_WAIT="1")
    started = time.monotonic()
    rc, _, err = rag_cli("index", env=env)
    assert time.monotonic() - started >= 1.0
    last = err.strip().splitlines()[-1]
    assert_one_line_error(rc, last + "\n", "another indexer is still writing to")
    assert err.startswith("waiting for another indexer")
    lock_holder.set()
    assert_consistent(indexed_small)


# ---------------------------------------------------- queries while another indexes


def test_queries_during_indexing_by_another_process_always_answer(tmp_path: Path, embedder) -> None:
    docs, store = small_corpus(tmp_path / "docs"), tmp_path / "store"
    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    run_index(settings, embedder)
    engine = Engine(settings)
    engine._embedder = embedder
    engine.search("Hanoi", k=3)
    for seed in sorted(SEEDS.iterdir()):
        if seed.name not in SMALL_SEEDS:
            shutil.copy(seed, docs / seed.name)
            text = seed.read_text(encoding="utf-8")
            (docs / f"copy_{seed.name}").write_text(f"Kopie.\n{text}", encoding="utf-8")
    stop = threading.Event()
    results: list[list[Hit]] = []
    errors: list[BaseException] = []
    stores: set[int] = set()

    def query_loop() -> None:
        questions = ["Hvor mange oppstartsbedrifter?", "Hanoi startups", "Wie viele Firmen?"]
        while not stop.is_set():
            try:
                results.append(engine.search(questions[len(results) % 3], k=3))
                stores.add(id(engine.store()))
            except BaseException as exc:  # any error at all fails the test
                errors.append(exc)

    thread = threading.Thread(target=query_loop)
    thread.start()
    try:
        rc, out, err = rag_cli("index", "--json", env=cli_env(docs, store), timeout=600)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert rc == 0, err
    assert json.loads(out)["added"] == 6
    assert errors == []
    assert len(results) >= 5 and all(len(hits) == 3 for hits in results)
    assert len(stores) >= 2  # the engine re-opened the store while the indexer ran
    final = {h.chunk.path for h in engine.search("Kopie", k=5)}
    assert any(path.startswith("copy_") for path in final)
    assert_consistent(settings)


# ------------------------------------------------------------- the Chroma server


class ChromaServer:
    """`chroma run` on a fixed port and data folder, to stop and start again."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_chroma(self.data, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def test_cli_through_a_chroma_server_that_goes_down_and_comes_back(
    tmp_path: Path, chroma: ChromaServer
) -> None:
    docs, store = small_corpus(tmp_path / "docs"), tmp_path / "store"
    env = cli_env(docs, store, RAG_CHROMA_URL=chroma.url)
    rc, out, err = rag_cli("index", "--json", env=env)
    assert rc == 0, err
    assert json.loads(out)["added"] == 2
    question = "Hvor mange oppstartsbedrifter er det i Dong Nai?"
    rc, out, err = rag_cli("ask", question, "--llm", "none", "--json", env=env)
    assert rc == 0, err
    answer = json.loads(out)
    assert answer["citations"] and answer["retrieved"] and answer["backend"] == "none"

    chroma.stop()
    for command in (["search", question], ["ask", question, "--llm", "none"], ["index"]):
        rc, _, err = rag_cli(*command, env=env)
        assert_one_line_error(rc, err, f"cannot reach the Chroma server at {chroma.url}")

    chroma.start()  # the same data folder on the same port
    rc, out, err = rag_cli("search", question, "-k", "2", "--json", env=env)
    assert rc == 0, err
    assert [hit["rank"] for hit in json.loads(out)] == [1, 2]


def test_engine_survives_a_server_restart_and_a_kill_mid_run(
    tmp_path: Path, chroma: ChromaServer, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = small_corpus(tmp_path / "docs")
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "s", chroma_url=chroma.url)
    engine = Engine(settings)
    engine._embedder = embedder
    engine.index(progress=False)
    assert engine.search("Hanoi", k=2)

    chroma.stop()
    # A search needs the server for the index's generation only (the texts and vectors
    # are in the local snapshot), which is read again GENERATION_TTL after the last read.
    time.sleep(GENERATION_TTL + 0.2)
    with pytest.raises(StoreError, match=f"Chroma server at {chroma.url}") as failure:
        engine.search("Hanoi", k=2)
    assert "\n" not in str(failure.value)
    chroma.start()
    assert len(engine.search("Hanoi", k=2)) == 2  # the same engine, reconnected

    # The server dies while the indexer writes its second group.
    for seed in sorted(SEEDS.iterdir()):
        shutil.copy(seed, docs / seed.name)
    monkeypatch.setattr(rag.indexer, "GROUP_CHUNKS", 8)
    writes: list[int] = []
    upsert = Store.upsert

    def upsert_then_stop(self: Store, chunks, vectors) -> None:  # type: ignore[no-untyped-def]
        writes.append(1)
        if len(writes) == 2:
            chroma.stop()
        upsert(self, chunks, vectors)

    monkeypatch.setattr(Store, "upsert", upsert_then_stop)
    with pytest.raises(StoreError, match="Chroma server") as failure:
        engine.index(progress=False)
    assert "\n" not in str(failure.value)
    monkeypatch.setattr(Store, "upsert", upsert)
    chroma.start()
    report = engine.index(progress=False)
    assert report.files == 5
    assert_consistent(settings)
    assert engine.search("Hanoi", k=2)


# ----------------------------------------------------- damaged and foreign stores


def _garbage_manifest(store: Path) -> None:
    for name in ("manifest.sqlite3-wal", "manifest.sqlite3-shm"):
        (store / name).unlink(missing_ok=True)
    (store / "manifest.sqlite3").write_bytes(b"this is not SQLite at all\n" * 100)


def _truncated_chroma(store: Path) -> None:
    path = store / "chroma" / "chroma.sqlite3"
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    "damage", [_garbage_manifest, _truncated_chroma], ids=["manifest-garbage", "chroma-truncated"]
)
def test_damaged_store_names_rebuild_and_rebuild_works(
    indexed_small: Settings, damage, embedder
) -> None:
    damage(indexed_small.store_dir)
    env = cli_env(indexed_small.docs_dir, indexed_small.store_dir)
    for command in (["search", "Hanoi"], ["index"]):
        rc, _, err = rag_cli(*command, env=env)
        assert_one_line_error(rc, err, "`rag index --rebuild`")
    report = run_index(indexed_small, embedder, rebuild=True)
    assert report.added == 2
    assert_consistent(indexed_small)


def test_lost_chroma_folder_is_rebuilt_by_a_plain_index(indexed_small: Settings, embedder) -> None:
    shutil.rmtree(indexed_small.store_dir / "chroma")
    env = cli_env(indexed_small.docs_dir, indexed_small.store_dir)
    rc, _, err = rag_cli("search", "Hanoi", env=env)
    assert_one_line_error(rc, err, "run `rag index`")
    report = run_index(indexed_small, embedder)
    assert report.added == 2
    assert_consistent(indexed_small)


def test_foreign_store_folder_is_refused_and_rebuild_keeps_its_files(tmp_path: Path) -> None:
    docs, store = small_corpus(tmp_path / "docs"), tmp_path / "mine"
    (store / "photos").mkdir(parents=True)
    foreign = {
        "notes.txt": b"my notes",
        "photos/cat.jpg": b"\xff\xd8\xff not really",
        "data.sqlite3": b"someone else's database",
    }
    for name, data in foreign.items():
        (store / name).write_bytes(data)
    env = cli_env(docs, store)
    rc, _, err = rag_cli("index", env=env)
    assert_one_line_error(rc, err, "not a rag store", "`rag index --rebuild`")
    rc, out, err = rag_cli("index", "--rebuild", "--json", env=env)
    assert rc == 0, err
    assert json.loads(out)["added"] == 2
    for name, data in foreign.items():
        assert (store / name).read_bytes() == data
    assert_consistent(Settings.from_env(docs_dir=docs, store_dir=store))
