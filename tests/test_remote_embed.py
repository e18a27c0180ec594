"""Embedding through a server (RAG_EMBED_BASE_URL): a real `rag serve` process for the
vectors, and a small fake OpenAI-style server in this process for the failures."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.config import Settings
from rag.e5_remote import RETRY_DELAYS, EmbedServerError, RemoteE5
from rag.engine import Engine
from rag.indexer import index_folder
from rag.models import Embedder, embedder_identity, load_embedder, packaged_identity
from rag.records import UserError
from rag.store import Store, StoreError

from .conftest import ROOT
from .test_chroma_server import free_port
from .test_server import Served, start_server

KEY = "embed-key-5678"
DONG_NAI = "How many innovative startups does Dong Nai have?"
CHANGED = "002_d6db562a30fbc1a0.txt"


def _env(store: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    return env | {"RAG_STORE": str(store), "PYTHONUNBUFFERED": "1"} | extra


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`rag serve` as an embedding server only: no index, no LLM, an API key."""
    store = tmp_path_factory.mktemp("embed-server") / "store"
    served = start_server(_env(store, RAG_API_KEY=KEY), "--llm", "none")
    yield served
    served.stop()


def remote(tmp_path: Path, docs: Path, url: str, **overrides: Any) -> Settings:
    values = {"embed_base_url": f"{url}/v1", "embed_api_key": KEY} | overrides
    return Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store", **values)


def _open(settings: Settings) -> Store:
    return Store(settings, embedder_identity(settings), create=False)


def _stored(settings: Settings) -> tuple[list[Any], np.ndarray]:
    store = _open(settings)
    try:
        return store.all_chunks_and_embeddings()
    finally:
        store.close()


# ------------------------------------------------------------------ the real server


def test_index_through_the_server_gives_the_in_process_vectors(
    docs: Path, tmp_path: Path, embed_server: Served, embedder: Embedder
) -> None:
    settings = remote(tmp_path, docs, embed_server.url)
    assert embedder_identity(settings) == packaged_identity()  # the packaged e5, served
    report = index_folder(settings, progress=False)
    assert report.added == 5 and report.chunks > 5
    chunks, vectors = _stored(settings)
    local = embedder.embed_passages([c.text for c in chunks])
    cosines = (vectors * local).sum(axis=1)
    assert len(chunks) == report.chunks and cosines.min() >= 0.999

    answer = Engine(settings).ask(DONG_NAI, llm="none")
    assert not answer.refused and answer.citations
    for citation in answer.citations:
        first, last = citation.lines
        lines = (docs / citation.path).read_text(encoding="utf-8").splitlines()
        quoted = " ".join(" ".join(lines[first - 1 : last]).split())
        assert " ".join(citation.quote.split()) in quoted
    # One identity: the store the server's vectors built is searched in-process too.
    local_settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store")
    engine = Engine(local_settings)
    engine._embedder = embedder
    assert engine.search(DONG_NAI, 3)[0].chunk.path == CHANGED


def test_the_endpoint_speaks_openai(embed_server: Served, embedder: Embedder) -> None:
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{embed_server.url}/v1", api_key=KEY)
    texts = ["passage: Đồng Nai có 120 công ty khởi nghiệp.", "query: Hva er L2Pro?"]
    # The client asks for base64 (and decodes it) unless told "float".
    for options in ({}, {"encoding_format": "float"}):
        result = client.embeddings.create(model=packaged_identity(), input=texts, **options)
        assert [d.index for d in result.data] == [0, 1] and result.model == packaged_identity()
        vectors = np.array([d.embedding for d in result.data])
        assert vectors.shape == (2, 384)
        # raw: the client's prefixes are the only ones (embed_raw adds none)
        assert np.allclose((vectors * embedder.embed_raw(texts)).sum(axis=1), 1.0, atol=1e-3)
    one = client.embeddings.create(model=packaged_identity(), input="query: x")
    assert len(one.data) == 1 and one.usage.total_tokens == 2
    assert packaged_identity() in [m.id for m in client.models.list()]
    with pytest.raises(NotFoundError, match="embeds with the model"):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_a_wrong_key_is_the_servers_message(
    docs: Path, tmp_path: Path, embed_server: Served
) -> None:
    settings = remote(tmp_path, docs, embed_server.url, embed_api_key="wrong")
    with pytest.raises(EmbedServerError, match="HTTP 401: missing or wrong API key") as caught:
        load_embedder(settings)
    assert "\n" not in str(caught.value)


def test_a_server_that_goes_down_loses_nothing(docs: Path, tmp_path: Path) -> None:
    served = start_server(_env(tmp_path / "server-store"), "--llm", "none")
    settings = remote(tmp_path, docs, served.url, embed_api_key="")
    try:
        first = index_folder(settings, progress=False)
    finally:
        served.stop()
    before, _ = _stored(settings)
    (docs / CHANGED).write_text("Dong Nai has many startups.\n" * 40, encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(EmbedServerError, match="cannot be reached"):
        index_folder(settings, progress=False)
    assert time.monotonic() - started < sum(RETRY_DELAYS) + 10  # bounded retries
    after, _ = _stored(settings)
    assert sorted(c.chunk_id for c in after) == sorted(c.chunk_id for c in before)
    store = _open(settings)
    try:
        record = store.manifest.files()[CHANGED]
        assert record.state == "done" and store.manifest.chunk_count() == first.chunks
    finally:
        store.close()
    # The CLI says it in one line, exit code 1; a later run still finds the old version.
    cli = _cli(settings, "index", "--json")
    assert cli.returncode == 1 and cli.stderr.count("\n") == 1
    assert cli.stderr.startswith("error: the embedding server at ")
    in_process = Engine(Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store"))
    assert any(h.chunk.path == CHANGED for h in in_process.search(DONG_NAI, 5))


def test_an_interrupted_run_keeps_the_groups_it_wrote(
    docs: Path, tmp_path: Path, fake: Fake
) -> None:
    for path in sorted(docs.iterdir()):  # twice the seeds: more than one group of chunks
        (docs / f"copy_{path.name}").write_bytes(path.read_bytes())
    healthy = fake.answer
    fake.answer = lambda body, n: healthy(body, n) if n <= 3 else (500, b"overloaded")
    settings = remote(tmp_path, docs, fake.url)
    with pytest.raises(EmbedServerError, match="HTTP 500: overloaded"):
        index_folder(settings, progress=False)  # the probe and the first group's 2 requests
    store = _open(settings)
    try:
        files = store.manifest.files()
        assert 0 < len(files) < 10 and all(r.state == "done" for r in files.values())
        assert store.count() == store.manifest.chunk_count()
    finally:
        store.close()
    fake.answer = healthy
    report = index_folder(settings, progress=False)
    assert report.unchanged == len(files) and report.added == 10 - len(files)


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = _env(
        settings.store_dir,
        RAG_DOCS=str(settings.docs_dir),
        RAG_EMBED_BASE_URL=settings.embed_base_url,
    )
    command = [sys.executable, "-m", "rag.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ a fake server


class Fake:
    """An OpenAI-style /v1/embeddings whose answers the test decides."""

    def __init__(self) -> None:
        self.answer: Callable[[dict[str, Any], int], tuple[int, Any]] = self.vectors(384)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(body)
                    number = len(fake.requests)
                status, payload = fake.answer(body, number)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def vectors(dim: int, scale: float = 3.0) -> Callable[[dict[str, Any], int], tuple[int, Any]]:
        """Vectors that depend on the text (not normalized: `scale` long)."""

        def answer(body: dict[str, Any], _: int) -> tuple[int, Any]:
            rows = []
            for i, text in enumerate(body["input"]):
                rng = np.random.default_rng(abs(hash(text)) % 2**32)
                v = rng.normal(size=dim)
                rows.append({"index": i, "embedding": (scale * v / np.linalg.norm(v)).tolist()})
            return 200, {"object": "list", "data": rows[::-1], "model": body["model"]}

        return answer


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = Fake()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _remote_e5(fake: Fake, **options: Any) -> RemoteE5:
    return RemoteE5(f"{fake.url}/v1", "some-model", **options)


def test_batches_in_order_concurrent_and_normalized(fake: Fake) -> None:
    model = _remote_e5(fake, batch_size=3, concurrency=2)
    embedder = Embedder(model, "remote:some-model", 3, {"passage": "passage: "}, "remote")
    texts = [f"text {i}" for i in range(10)]
    vectors = embedder.embed_passages(texts)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # the server's were 3 long
    sent = fake.requests[1:]  # the first was the dimension probe
    assert all(len(r["input"]) <= 3 for r in sent)
    assert sorted(t for r in sent for t in r["input"]) == sorted(f"passage: {t}" for t in texts)
    again = embedder.embed_passages(texts[4:5])  # rows come back by "index", not by order
    assert np.allclose(again[0], vectors[4], atol=1e-6)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda body, n: (200, b"<html>oops</html>"), "not an embeddings list"),
        (lambda body, n: (200, {"data": [{"index": 0, "embedding": [1.0, 0.0]}]}), "1 vectors"),
        (lambda body, n: (400, {"error": {"message": "input too long"}}), "HTTP 400: input too"),
        (lambda body, n: (422, {"detail": "bad field"}), "HTTP 422: bad field"),
        (lambda body, n: (200, {"data": [{"index": i, "embedding": []} for i in range(9)]}), None),
    ],
)
def test_wrong_answers_are_one_line(
    fake: Fake, answer: Callable[..., tuple[int, Any]], message: str | None
) -> None:
    fake.answer = answer
    model = _remote_e5(fake, concurrency=1)  # both texts in one request
    with pytest.raises(EmbedServerError) as caught:
        model.encode(["a", "b"])
    text = str(caught.value)
    assert text.startswith(f"the embedding server at {fake.url}/v1 ") and "\n" not in text
    assert message is None or message in text
    assert isinstance(caught.value, UserError)


def test_5xx_is_retried_then_reported(fake: Fake) -> None:
    fake.answer = lambda body, n: (
        (503, {"error": {"message": "loading"}}) if n < 3 else (Fake.vectors(4)(body, n))
    )
    assert _remote_e5(fake).encode(["a"]).shape == (1, 4)  # two 503s, then an answer
    fake.answer = lambda body, n: (500, {"error": {"message": "model crashed"}})
    fake.requests.clear()
    with pytest.raises(EmbedServerError, match="HTTP 500: model crashed"):
        _remote_e5(fake).encode(["a"])
    assert len(fake.requests) == len(RETRY_DELAYS) + 1


def test_a_slow_server_times_out(fake: Fake) -> None:
    def slow(body: dict[str, Any], n: int) -> tuple[int, Any]:
        time.sleep(2)
        return Fake.vectors(4)(body, n)

    fake.answer = slow
    with pytest.raises(EmbedServerError, match="did not answer in time"):
        _remote_e5(fake, timeout=0.5).encode(["a"])


def test_the_wrong_dimension_against_a_store_is_refused(
    docs: Path, tmp_path: Path, fake: Fake, embedder: Embedder
) -> None:
    """A server that claims the packaged e5 but is not: its vectors do not fit."""
    local = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store")
    index_folder(local, progress=False, embedder_factory=lambda: embedder)
    before, _ = _stored(local)
    fake.answer = Fake.vectors(8)
    settings = remote(tmp_path, docs, fake.url)  # the packaged model's name, 8 dimensions
    (docs / CHANGED).write_text("Dong Nai has many startups.\n", encoding="utf-8")
    with pytest.raises(StoreError, match="8-dimensional vectors, but this index holds 384"):
        index_folder(settings, progress=False)
    with pytest.raises(StoreError, match="8-dimensional"):
        Engine(settings).search(DONG_NAI, 3)
    assert len(_stored(local)[0]) == len(before)


def test_another_server_model_needs_a_rebuild(
    docs: Path, tmp_path: Path, fake: Fake, embedder: Embedder
) -> None:
    local = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store")
    index_folder(local, progress=False, embedder_factory=lambda: embedder)
    other = remote(tmp_path, docs, fake.url, embed_server_model="bge-m3")
    assert embedder_identity(other) == "remote:bge-m3"
    with pytest.raises(StoreError, match="built with the embedding model .* not 'remote:bge-m3'"):
        index_folder(other, progress=False)
    assert not fake.requests  # refused before anything was embedded
    rebuilt = index_folder(other, rebuild=True, progress=False)
    assert rebuilt.added == 5
    assert not fake.requests[1]["input"][0].startswith("passage: ")  # not an e5 name
    with pytest.raises(StoreError, match="built with the embedding model 'remote:bge-m3'"):
        Engine(local).search(DONG_NAI, 3)


def test_a_server_claiming_the_packaged_model_must_answer_as_it(fake: Fake) -> None:
    fake.answer = lambda body, n: (200, Fake.vectors(4)(body, n)[1] | {"model": "bge-m3"})
    model = RemoteE5(f"{fake.url}/v1", packaged_identity(), check_model=True)
    with pytest.raises(EmbedServerError, match="answered with the model 'bge-m3'"):
        model.encode(["a"])


def test_a_server_that_is_not_there(docs: Path, tmp_path: Path) -> None:
    settings = remote(tmp_path, docs, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(EmbedServerError, match="cannot be reached"):
        load_embedder(settings)
