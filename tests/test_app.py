"""The Streamlit page, driven in-process by streamlit.testing.v1.AppTest.

Real store (Chroma in a tmp folder, built from a copy of the seeds), the real packaged
embedder (the session fixture, handed to the engine so it loads once), the extractive
backend (RAG_LLM=none) for speed. Every test gets its own copy of the index and its own
RAG_* environment, so app.py's cached engine is a new one per test (its cache key is
the settings).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

import rag.engine
from rag import feedback
from rag.config import Settings
from rag.indexer import index_folder

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
TIMEOUT = 180  # seconds per script run; generous for a loaded 2-core machine
DONG_NAI = "How many innovative startups are there in Dong Nai?"
DONG_NAI_FILE = "002_d6db562a30fbc1a0.txt"
BRIDGE = (
    "The Zorblat bridge in Lumeria was opened in 1987.\n"
    "The Zorblat bridge is 742 metres long and carries two railway tracks.\n"
)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> tuple[Path, Path]:
    """Seeds indexed once per module; tests copy it."""
    root = tmp_path_factory.mktemp("seeded")
    docs, store = root / "docs", root / "store"
    shutil.copytree(SEEDS, docs)
    settings = Settings.from_env(docs_dir=docs, store_dir=store, chroma_url="")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    return docs, store


@pytest.fixture
def env(
    tmp_path: Path, seeded: tuple[Path, Path], embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Path]]:
    """A private copy of the seeded docs and store, selected through RAG_* variables."""
    docs, store = tmp_path / "docs", tmp_path / "store"
    shutil.copytree(seeded[0], docs)
    shutil.copytree(seeded[1], store)
    for name in ("RAG_CHROMA_URL", "RAG_REFUSAL_THRESHOLD", "RAG_ANSWER_LANGUAGE", "RAG_TOP_K"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAG_DOCS", str(docs))
    monkeypatch.setenv("RAG_STORE", str(store))
    monkeypatch.setenv("RAG_LLM", "none")
    # The engine loads the embedder itself; give it the session's (same model, loaded once).
    monkeypatch.setattr(rag.engine, "load_embedder", lambda settings: embedder)
    monkeypatch.setattr(feedback, "SAVED_CASES", tmp_path / "saved.jsonl")
    yield {"docs": docs, "store": store, "saved": tmp_path / "saved.jsonl"}


def start() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    _no_exception(at)
    return at


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input[0].set_value(question).run()
    _no_exception(at)
    return at


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def last_message(at: AppTest) -> dict[str, Any]:
    return at.session_state["messages"][-1]


def texts(elements: Any) -> list[str]:
    return [e.value for e in elements]


def source_blocks(at: AppTest) -> list[str]:
    return [h.value for h in at.get("html") if 'class="rag-source"' in h.value]


def button(at: AppTest, label: str) -> Any:
    return next(b for b in at.button if b.label == label)


# ------------------------------------------------------------------------------ tests


def test_page_loads_with_corpus_status(env: dict[str, Path]) -> None:
    at = start()
    status = "\n".join(texts(at.sidebar.caption))
    assert "**5** files · **61** chunks" in status or "**5** files" in status
    assert "multilingual-e5-small" in status and "LLM: none" in status
    assert [s.label for s in at.status] == [at.status[0].label]
    assert at.status[0].label.startswith("Models ready")
    assert not at.error and not at.sidebar.warning


def test_question_gets_a_cited_answer(env: dict[str, Path]) -> None:
    at = ask(start(), DONG_NAI)
    message = last_message(at)
    answer = message["answer"]
    assert not answer.refused and "90" in answer.answer
    assert [e.label for e in at.expander][0] == f"Evidence ({len(answer.retrieved)} passages)"
    # the final answer links [1] to the anchor on its source block
    anchor = f"src-{message['id']}-1"
    assert any(f"[[1]](#{anchor})" in md for md in texts(at.markdown))
    blocks = source_blocks(at)
    assert len(blocks) == 1
    assert f'id="{anchor}"' in blocks[0] and DONG_NAI_FILE in blocks[0]
    assert "<mark>I Dong Nai er det etablert" in blocks[0]
    assert 'href="https://nhandan.vn/' in blocks[0]
    assert any("backend none" in c for c in texts(at.caption))
    assert len(at.feedback) == 1 and not at.error


def test_follow_up_uses_the_history(env: dict[str, Path]) -> None:
    at = ask(ask(start(), DONG_NAI), "And what about Quang Ninh?")
    first, follow_up = (m["answer"] for m in at.session_state["messages"][1::2])
    # the engine saw the history: Quang Ninh asked what was asked of Dong Nai
    assert follow_up.search_query.startswith("Quang Ninh")
    assert "innovative startups" in follow_up.search_query
    assert DONG_NAI_FILE in {c.file for c in follow_up.citations}
    assert len(at.chat_message) == 4
    # each message has its own anchors: the same [1] of two answers never collides
    ids = [m["id"] for m in at.session_state["messages"][1::2]]
    assert len(set(ids)) == 2 and len(source_blocks(at)) >= 2
    button(at, "New chat").click().run()
    assert at.session_state["messages"] == [] and len(at.chat_message) == 0


def test_upload_becomes_searchable(env: dict[str, Path]) -> None:
    at = start()
    uploader = at.sidebar.file_uploader[0]
    assert set(uploader.allowed_type) >= {".txt", ".md", ".pdf", ".docx", ".html"}
    uploader.upload("../../Zorblat notes.md", BRIDGE.encode(), "text/markdown").run()
    _no_exception(at)
    assert (env["docs"] / "Zorblat notes.md").read_text() == BRIDGE
    assert not (env["docs"].parent / "Zorblat notes.md").exists()
    assert texts(at.sidebar.success) == ["Added Zorblat notes.md."]
    assert any("1 added" in c for c in texts(at.sidebar.caption))
    assert "**6** files" in "\n".join(texts(at.sidebar.caption))
    assert len(at.sidebar.file_uploader) == 1 and not at.sidebar.file_uploader[0].value
    answer = last_message(ask(at, "How long is the Zorblat bridge?"))["answer"]
    assert "742" in answer.answer
    assert {c.file for c in answer.citations} == {"Zorblat notes.md"}


def test_unreadable_upload_is_reported_and_not_kept(env: dict[str, Path]) -> None:
    at = start()
    at.sidebar.file_uploader[0].upload("scan.pdf", b"%PDF-1.4 not really", "application/pdf")
    at.run()
    _no_exception(at)
    assert texts(at.sidebar.warning) == ["Nothing added."]
    assert any("scan.pdf cannot be read" in c for c in texts(at.sidebar.caption))
    assert not (env["docs"] / "scan.pdf").exists()


def test_reindex_reports_what_changed(env: dict[str, Path]) -> None:
    docs = env["docs"]
    (docs / "bridge.txt").write_text(BRIDGE, encoding="utf-8")
    (docs / "000_a90688048cff79fb.txt").unlink()
    (docs / "broken.docx").write_bytes(b"not a zip")
    at = start()
    button(at, "Re-index folder").click().run()
    _no_exception(at)
    notice = texts(at.sidebar.success)
    assert len(notice) == 1 and "1 added, 0 updated, 1 removed, 4 unchanged, 1 skipped" in notice[0]
    assert any(c.startswith("`broken.docx`: ") for c in texts(at.sidebar.caption))
    answer = last_message(ask(at, "How long is the Zorblat bridge?"))["answer"]
    assert {c.file for c in answer.citations} == {"bridge.txt"}


def test_refusal_is_shown_as_a_refusal(env: dict[str, Path], monkeypatch: Any) -> None:
    monkeypatch.setenv("RAG_REFUSAL_THRESHOLD", "0.99")  # nothing is close enough
    at = ask(start(), "What is the population of Hanoi?")
    answer = last_message(at)["answer"]
    assert answer.refused
    assert texts(at.info) == ["I could not find this in the sources."]
    assert source_blocks(at) == []
    assert "not enough to answer" in at.expander[0].label
    assert not any("[[" in md for md in texts(at.markdown))


def test_answer_language_setting(env: dict[str, Path]) -> None:
    at = start()
    at.sidebar.selectbox(key="language").set_value("de").run()
    answer = last_message(ask(at, DONG_NAI))["answer"]
    assert answer.language == "de" and answer.answer.startswith("Aus den Quellen:")


def test_unreachable_chroma_server(env: dict[str, Path], monkeypatch: Any) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAG_CHROMA_URL", f"http://127.0.0.1:{port}")
    at = start()
    warning = texts(at.sidebar.warning)
    assert len(warning) == 1 and warning[0].startswith("cannot reach the Chroma server")
    assert "unset RAG_CHROMA_URL" in warning[0]
    at = ask(at, DONG_NAI)
    assert texts(at.error) == [warning[0]]
    assert "error" in last_message(at)
    assert len(at.chat_input) == 1  # still usable


def test_empty_store_asks_to_index_then_works(env: dict[str, Path], monkeypatch: Any) -> None:
    empty = env["store"].parent / "empty-store"
    empty.mkdir()
    monkeypatch.setenv("RAG_STORE", str(empty))
    at = ask(start(), DONG_NAI)
    index_message = "Index your documents: click **Re-index folder** in the sidebar."
    assert texts(at.sidebar.warning) == [index_message]
    assert texts(at.error) == [index_message]
    button(at, "Re-index folder").click().run()
    _no_exception(at)
    assert "5 added" in texts(at.sidebar.success)[0]
    assert not at.sidebar.warning
    answer = last_message(ask(at, DONG_NAI))["answer"]
    assert DONG_NAI_FILE in {c.file for c in answer.citations}


def test_missing_model_is_a_message(env: dict[str, Path], monkeypatch: Any) -> None:
    monkeypatch.undo()  # the real loader, for a model that is not there
    monkeypatch.setenv("RAG_DOCS", str(env["docs"]))
    monkeypatch.setenv("RAG_STORE", str(env["store"]))
    monkeypatch.setenv("RAG_LLM", "none")
    monkeypatch.setenv("RAG_EMBED_MODEL", str(env["docs"] / "no-such-model"))
    at = start()
    assert at.status[0].state == "error"
    errors = texts(at.error)
    assert any("not available offline" in e and "RAG_EMBED_MODEL" in e for e in errors)
    assert len(at.chat_input) == 1


def test_llm_server_down_is_a_message(env: dict[str, Path], monkeypatch: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAG_LLM_BASE_URL", f"http://127.0.0.1:{port}/v1")
    at = start()
    at.sidebar.selectbox(key="backend").set_value("openai").run()
    (error,) = texts(ask(at, DONG_NAI).error)
    assert error.startswith(f"the LLM server at http://127.0.0.1:{port}/v1 did not answer")
    assert 'choose the LLM backend "none" in the sidebar' in error
    at.sidebar.selectbox(key="backend").set_value("none").run()
    assert not last_message(ask(at, DONG_NAI))["answer"].refused  # the page still works


def test_unexpected_failure_is_one_line(env: dict[str, Path], monkeypatch: Any) -> None:
    at = start()
    with monkeypatch.context() as patch:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom\nTraceback (most recent call last): ...")

        patch.setattr(rag.engine.Engine, "ask_stream", broken)
        (error,) = texts(ask(at, DONG_NAI).error)
    assert error.startswith("Something went wrong while answering (RuntimeError: boom)")
    assert "Traceback" not in error
    assert "answer" in last_message(ask(at, DONG_NAI))  # the next question works


def test_save_regression_case(env: dict[str, Path]) -> None:
    at = ask(start(), DONG_NAI)
    message = last_message(at)
    at.feedback[0].set_value(1).run()  # thumbs up
    phrase = at.text_input(key=f"phrase-{message['id']}")
    assert phrase.value == "90"  # the answer's first number, for the user to confirm
    button(at, "Save case").click().run()
    _no_exception(at)
    cases = _cases(env["saved"])
    assert cases == [
        {
            "id": cases[0]["id"],
            "question": DONG_NAI,
            "lang": "en",
            "expected_sources": [DONG_NAI_FILE],
            "must_contain_any": ["90"],
            "answerable": True,
            "tags": ["saved-from-ui", "thumbs-up"],
        }
    ]
    assert cases[0]["id"].startswith("ui-")
    assert any(f"Saved as {cases[0]['id']}" in s for s in texts(at.success))
    at.run()
    assert not [b for b in at.button if b.label == "Save case"]  # saved once


def test_save_follow_up_thumbs_down_with_a_corrected_phrase(env: dict[str, Path]) -> None:
    at = ask(ask(start(), DONG_NAI), "And what about Quang Ninh?")
    message = last_message(at)
    at.feedback[1].set_value(0).run()
    at.text_input(key=f"phrase-{message['id']}").set_value("500").run()
    next(b for b in at.button if b.key == f"save-{message['id']}").click().run()
    (case,) = _cases(env["saved"])
    assert case["question"] == "And what about Quang Ninh?"
    assert case["must_contain_any"] == ["500"]
    assert case["tags"] == ["saved-from-ui", "thumbs-down", "followup"]
    assert [m["role"] for m in case["history"]] == ["user", "assistant"]
    assert case["history"][0]["content"] == DONG_NAI


def _cases(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
