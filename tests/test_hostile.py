"""Hostile input, end to end: one `rag index --json` over the seeds plus every bad file.

Small fixtures are committed in tests/data/hostile/ (encrypted.pdf is
tests/data/de_article.pdf encrypted with pypdf's `PdfWriter.encrypt(user_password=
"secret", algorithm="RC4-128")`); big ones, links, odd names and the folder named like
a file are made here at test time. Each bad file must be skipped with its reason, every
good one indexed, and nothing indexed before lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.answer import build_messages, fixed_messages, prompt_file
from rag.config import Settings
from rag.engine import Engine
from rag.llm import Message

from .conftest import ROOT, SEEDS
from .test_faults import hash_index
from .test_index import assert_consistent, run_index

HOSTILE = Path(__file__).resolve().parent / "data" / "hostile"
ODD_NAMES = ("a b.txt", "résumé ü.txt", "$(rm -rf x);`ls`.txt")
MB = 1024 * 1024

# path -> the start of the reason it is skipped with
EXPECTED_SKIPS = {
    "empty.txt": "empty file",
    "whitespace.txt": "only whitespace",
    "binary.txt": "binary content",
    "corrupt.pdf": "corrupt PDF",
    "encrypted.pdf": "encrypted PDF",
    "table.xlsx": "corrupt .xlsx file",  # a spreadsheet that is no ZIP container
    "huge.txt": "file too large (52,428,801 bytes, limit 52,428,800 bytes)",
    "link_outside.txt": "symbolic link to outside the documents folder",
    "loop.txt": "symbolic link loop",
}
# x.txt is a folder: scanned like any other, never opened as a file
GOOD = {"nul_bytes.txt", "injection.txt", "x.txt/inside.md", *ODD_NAMES}


def hostile_folder(docs: Path) -> None:
    """Add every hostile case to `docs` (which already holds the seeds)."""
    for path in HOSTILE.iterdir():
        shutil.copy(path, docs / path.name)
    for name in ODD_NAMES:
        (docs / name).write_text(f"The file {name} is about the Kvistholm ferry.\n", "utf-8")
    with open(docs / "huge.txt", "wb") as handle:  # just over the 50 MB limit
        handle.truncate(50 * MB + 1)
    outside = docs.parent / "secret.txt"
    outside.write_text("A secret outside the documents folder.\n", encoding="utf-8")
    (docs / "link_outside.txt").symlink_to(outside)
    (docs / "loop.txt").symlink_to(docs / "loop.txt")
    (docs / "x.txt").mkdir()
    (docs / "x.txt" / "inside.md").write_text("# Inside\n\nThe Orvelund mill.\n", "utf-8")


def test_one_cli_run_over_every_hostile_file(tmp_path: Path, embedder) -> None:
    docs, store = tmp_path / "docs", tmp_path / "store"
    shutil.copytree(SEEDS, docs)
    settings = Settings.from_env(docs_dir=docs, store_dir=store)
    run_index(settings, embedder)
    seeds = {p.name for p in SEEDS.iterdir()}
    hostile_folder(docs)
    env = {**os.environ, "RAG_DOCS": str(docs), "RAG_STORE": str(store)}
    proc = subprocess.run(
        [sys.executable, "-m", "rag.cli", "index", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert skipped.keys() == EXPECTED_SKIPS.keys(), skipped
    for path, reason in skipped.items():
        assert reason.startswith(EXPECTED_SKIPS[path]) and "\n" not in reason, (path, reason)
    assert (report["added"], report["unchanged"], report["removed"]) == (len(GOOD), 5, 0)
    assert report["files"] == len(seeds | GOOD)
    # The store equals a clean index of the good files (the bad ones cannot be read).
    for name in EXPECTED_SKIPS:
        (docs / name).unlink()
    assert_consistent(settings)


@pytest.mark.slow
def test_a_2_mb_line_without_sentence_breaks_is_indexed(tmp_path: Path) -> None:
    """Cut into token-sized pieces in bounded time (embedded by HashEmbedder: the real
    model would take a minute for its ~2,000 chunks and prove nothing more)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SEEDS / "004_c121dd273e78537b.txt", docs / "seed.txt")
    words = " ".join(f"ord{i % 977}x" for i in range(300_000))
    (docs / "long.txt").write_text(words[: 2 * MB], encoding="utf-8")
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store")
    started = time.perf_counter()
    report = hash_index(settings)
    assert time.perf_counter() - started < 120
    assert report.added == 2 and report.skipped == []
    assert report.chunks > 1000
    assert_consistent(settings)


class RecordingBackend:
    """An LLM that records the messages it is sent and cites source 1."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def stream(self, messages: list[Message]):  # type: ignore[no-untyped-def]
        self.messages = list(messages)
        yield "The crane K-77 is inspected every 90 days [1]."


def test_instructions_inside_a_document_are_data(tmp_path: Path, embedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(HOSTILE / "injection.txt", docs / "injection.txt")
    shutil.copy(SEEDS / "000_a90688048cff79fb.txt", docs / "seed.txt")
    settings = Settings.from_env(docs_dir=docs, store_dir=tmp_path / "store")
    run_index(settings, embedder)
    engine = Engine(settings)
    engine._embedder = embedder
    question = "How often is the crane K-77 inspected?"

    extractive = engine.ask(question, llm="none")
    recorder = RecordingBackend()
    engine._backends["local"] = recorder  # type: ignore[assignment]
    generated = engine.ask(question, llm="local")
    for answer in (extractive, generated):
        assert not answer.refused and answer.citations
        assert {c.path for c in answer.citations} == {"injection.txt"}
        for citation in answer.citations:  # every quote is verbatim at its lines
            lines = (docs / citation.path).read_text("utf-8").splitlines()
            first, last = citation.lines
            assert citation.quote in "\n".join(lines[first - 1 : last])

    # What the model was sent: the system prompt and the worked examples as written,
    # the document as data in the last user message only.
    *fixed, user = recorder.messages
    assert tuple(fixed) == fixed_messages()
    system = fixed[0]
    assert (system.role, user.role) == ("system", "user")
    assert system.content == prompt_file("system.txt").strip()
    assert "K-77" in user.content
    assert not any("K-77" in m.content or "IGNORE PREVIOUS" in m.content for m in fixed)
    assert build_messages(question, [], "en")[0] == system
