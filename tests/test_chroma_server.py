"""Client/server mode: the same indexing and search against a real `chroma run`."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import Settings
from rag.engine import Engine
from rag.retrieve import language_balanced_query
from rag.store import StoreError

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


def test_server_ranks_like_the_embedded_store(tmp_path: Path, chroma_server: str, embedder) -> None:
    """Server mode asks Chroma per language; the embedded store ranks in memory.

    Both must give the same language-balanced ranking of the seeds.
    """
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
