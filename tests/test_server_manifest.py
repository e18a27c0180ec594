"""Server mode that needs nothing local: the manifest lives in a real `chroma run`."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rag.config import Settings
from rag.engine import Engine
from rag.indexer import index_folder
from rag.records import UserError
from rag.server_manifest import GENERATION_TTL, Lease, ServerManifest
from rag.store import StoreError, connect_server

from .test_faults import ChromaServer, cli_env, rag_cli

QUESTION = "Hvor mange oppstartsbedrifter er det i Dong Nai?"
NEW_FILE = "Die Firma Quellwerk baut in Haiphong die Pumpe ZX-4711.\n"


def engine_for(docs: Path, store: Path, url: str, embedder, **extra: object) -> Engine:  # type: ignore[no-untyped-def]
    engine = Engine(Settings.from_env(docs_dir=docs, store_dir=store, chroma_url=url, **extra))
    engine._embedder = embedder  # share the session's model instead of loading another
    return engine


def test_a_second_machine_with_an_empty_store_folder_answers(
    docs: Path, tmp_path: Path, chroma: ChromaServer, embedder
) -> None:
    indexer = engine_for(docs, tmp_path / "a", chroma.url, embedder)
    report = indexer.index(progress=False)
    # Machine B: an empty store folder, no documents folder; a process of its own.
    env = cli_env(tmp_path / "nothing", tmp_path / "b", RAG_CHROMA_URL=chroma.url)
    rc, out, err = rag_cli("ask", QUESTION, "--llm", "none", "--json", env=env)
    assert rc == 0, err
    answer = json.loads(out)
    assert answer["citations"] and not answer["refused"]
    cited = answer["citations"][0]
    assert (docs / cited["path"]).read_text().count(cited["quote"].splitlines()[0]) >= 1
    rc, out, err = rag_cli("status", "--json", env=env)
    assert rc == 0, err
    assert json.loads(out)["files"] == 5 and json.loads(out)["chunks"] == report.chunks

    reader = engine_for(tmp_path / "nothing", tmp_path / "b2", chroma.url, embedder)
    assert reader.status()["files"] == 5
    (docs / "new.txt").write_text(NEW_FILE)
    indexer.index(progress=False)
    time.sleep(GENERATION_TTL)  # how long B may go on trusting the generation it read
    assert reader.status()["files"] == 6  # B sees A's new file ...
    assert reader.search("ZX-4711", k=1)[0].chunk.path == "new.txt"  # ... and finds it


def test_two_concurrent_indexers_one_refuses_and_nothing_breaks(
    docs: Path, tmp_path: Path, chroma: ChromaServer, embedder
) -> None:
    first_embeds, refused = threading.Event(), threading.Event()

    class Waiting:
        """The real embedder, holding indexer A mid-run until B has tried."""

        def embed_passages(self, texts: list[str]) -> np.ndarray:
            first_embeds.set()
            refused.wait(60)
            return embedder.embed_passages(texts)

    settings_a = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "a", chroma_url=chroma.url)
    errors: list[BaseException] = []

    def run_a() -> None:
        try:
            index_folder(settings_a, progress=False, embedder_factory=Waiting)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run_a)
    thread.start()
    assert first_embeds.wait(120)
    other = tmp_path / "other-docs"  # machine B, its own folders
    shutil.copytree(docs, other)
    settings_b = Settings.from_env(
        docs_dir=other, store_dir=tmp_path / "b", chroma_url=chroma.url, lock_wait=1.0
    )
    with pytest.raises(UserError, match="another indexer .* is writing to the Chroma server"):
        index_folder(settings_b, progress=False, embedder_factory=lambda: embedder)
    refused.set()
    thread.join(300)
    assert not errors
    # B again, now that A has finished: nothing to do, and the store is whole.
    again = index_folder(settings_b, progress=False, embedder_factory=lambda: embedder)
    assert again.unchanged == 5 and again.added == again.removed == 0
    reader = engine_for(docs, tmp_path / "c", chroma.url, embedder)
    assert reader.store().count() == reader.status()["chunks"] == again.chunks


def test_an_expired_lease_is_taken_over_and_its_holder_refuses(
    docs: Path, tmp_path: Path, chroma: ChromaServer, embedder
) -> None:
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "a", chroma_url=chroma.url)
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    client = connect_server(chroma.url).client
    stale = Lease(client, settings.collection, chroma.url, seconds=0.5)
    stale.acquire(0)  # an indexer that then hangs past its lease
    manifest = ServerManifest(client, settings.collection, chroma.url)
    manifest.hold(stale)
    time.sleep(1.0)
    (docs / "new.txt").write_text(NEW_FILE)
    report = index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    assert report.added == 1  # the dead holder's lease did not block this one
    with pytest.raises(UserError, match="another indexer changed the index; run again"):
        manifest.mark_pending([("x.txt", "h", ["x-0"])])
    assert "x.txt" not in manifest.files()


def test_server_down_is_one_line_and_nothing_is_lost(
    docs: Path, tmp_path: Path, chroma: ChromaServer, embedder
) -> None:
    engine_for(docs, tmp_path / "a", chroma.url, embedder).index(progress=False)
    reader = engine_for(tmp_path / "nothing", tmp_path / "b", chroma.url, embedder)
    before = reader.status()
    chroma.stop()
    with pytest.raises(StoreError, match=f"Chroma server at {chroma.url}") as failure:
        reader.search(QUESTION)
    assert "\n" not in str(failure.value)
    fresh = engine_for(tmp_path / "nothing", tmp_path / "c", chroma.url, embedder)
    assert "cannot reach the Chroma server" in fresh.status()["error"]
    chroma.start()
    assert reader.search(QUESTION)[0].chunk.path == "002_d6db562a30fbc1a0.txt"
    after = fresh.status()
    assert (after["files"], after["chunks"]) == (before["files"], before["chunks"])
