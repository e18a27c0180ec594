"""A real browser on the real page: headless Chromium drives `streamlit run app.py`.

Asks a seed question, waits for the evidence and the streamed answer, checks that a
citation names the right seed file and that its [n] leads to it, and saves a
screenshot (tests/artifacts/chat.png) plus the measured timings
(tests/artifacts/browser-timings-<llm>.json). The backend is the extractive one
(RAG_LLM=none); BROWSER_TEST_LLM=local measures the packaged LLM instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rag.config import Settings
from rag.indexer import index_folder

from .test_formats import make_pdf

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--headless=new",
    "--disable-gpu",
]
QUESTION = "How many innovative startups are there in Dong Nai?"
SEED_FILE = "002_d6db562a30fbc1a0.txt"
LLM = os.environ.get("BROWSER_TEST_LLM", "none")
PDF_PAGES = [
    "Harbour report 2025. This report describes the harbour of Vardo and its services.",
    "The breakwater of Vardo was rebuilt in 1987 by the coastal agency.\n"
    "Its length is now 410 metres.",
    "The ferry Nordlys carries 240 passengers between Vardo and Kiberg.",
]
START_TIMEOUT_S = 240  # server start plus model warm-up on a busy 2-core machine
ANSWER_TIMEOUT_S = 480 if LLM == "local" else 120

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (`make browser` installs it)",
    ),
]

# Records, in the page's own clock, when the new assistant message first shows the
# evidence, its first answer text, and its final sources (or a refusal / an error).
OBSERVER_JS = """
(before) => {
  const t = {start: performance.now()};
  window.__ragTimes = t;
  const assistant = () => {
    const all = [...document.querySelectorAll('[data-testid="stChatMessage"]')].filter(
      m => m.querySelector('[data-testid="stChatMessageAvatarAssistant"]'));
    return all.length > before ? all[all.length - 1] : null;
  };
  const check = () => {
    const m = assistant();
    if (!m) return;
    const now = performance.now();
    if (!t.evidence && m.querySelector('[data-testid="stExpander"]')) t.evidence = now;
    if (!t.token) {
      for (const md of m.querySelectorAll('[data-testid="stMarkdownContainer"]')) {
        if (!md.closest('[data-testid="stExpander"]') && md.innerText.trim()) {
          t.token = now; t.tokenText = md.innerText.slice(0, 80); break;
        }
      }
    }
    if (!t.done && m.querySelector('.rag-source, [data-testid="stAlert"]')) t.done = now;
  };
  new MutationObserver(check).observe(document.body,
    {subtree: true, childList: true, characterData: true});
}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def corpus(tmp_path: Path, embedder: Any) -> dict[str, str]:
    """RAG_* variables for a tmp copy of the seeds, indexed before the server starts."""
    docs, store = tmp_path / "docs", tmp_path / "store"
    shutil.copytree(ROOT / "seeds", docs)
    settings = Settings.from_env(docs_dir=docs, store_dir=store, chroma_url="")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(RAG_DOCS=str(docs), RAG_STORE=str(store), RAG_LLM=LLM)
    return env


@pytest.fixture
def server(corpus: dict[str, str]) -> Iterator[dict[str, Any]]:
    with _streamlit(corpus, "streamlit.log") as running:
        yield running


@pytest.fixture
def pdf_server(tmp_path: Path, embedder: Any) -> Iterator[dict[str, Any]]:
    """The page over a documents folder holding one 3-page PDF, with the "none" backend."""
    docs, store = tmp_path / "docs", tmp_path / "store"
    docs.mkdir()
    make_pdf(docs / "harbour.pdf", PDF_PAGES)
    settings = Settings.from_env(docs_dir=docs, store_dir=store, chroma_url="")
    index_folder(settings, progress=False, embedder_factory=lambda: embedder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(RAG_DOCS=str(docs), RAG_STORE=str(store), RAG_LLM="none")
    with _streamlit(env, "streamlit-pdf.log") as running:
        yield running


@contextmanager
def _streamlit(env: dict[str, str], log_name: str) -> Iterator[dict[str, Any]]:
    """`streamlit run app.py` on a free port; yields its URL and when it was started."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    log = open(ARTIFACTS / log_name, "w")  # noqa: SIM115 (closed below)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
        + ["--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process)
        yield {"url": url, "started": started}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}; see tests/artifacts")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail("streamlit did not answer its health check in time")


def test_chat_in_a_real_browser(server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server["url"])
            chat_input = page.get_by_test_id("stChatInputTextArea")
            # The chat input is drawn after the models are warm: that is "ready".
            chat_input.wait_for(state="visible", timeout=START_TIMEOUT_S * 1000)
            ready_s = time.perf_counter() - server["started"]

            page.evaluate(OBSERVER_JS, 0)
            chat_input.fill(QUESTION)
            chat_input.press("Enter")
            sources = page.locator(".rag-source")
            sources.first.wait_for(timeout=ANSWER_TIMEOUT_S * 1000)
            times = page.evaluate("window.__ragTimes")

            assert SEED_FILE in sources.first.inner_text()
            assert sources.first.locator("mark").count() >= 1
            expect(page.get_by_text("Evidence (")).to_be_visible()
            page.wait_for_timeout(500)  # let the last frame settle for the picture
            page.screenshot(path=str(ARTIFACTS / "chat.png"))

            link = page.locator("a[href^='#src-']").first
            target = link.get_attribute("href")
            link.click()
            assert page.evaluate("location.hash") == target
            expect(page.locator(f"[id='{target[1:]}']")).to_be_in_viewport()
        finally:
            browser.close()

    measured = {
        "llm": LLM,
        "page_ready_s": round(ready_s, 2),
        "evidence_s": _seconds(times, "evidence"),
        "first_token_s": _seconds(times, "token"),
        "sources_s": _seconds(times, "done"),
        "first_text": times.get("tokenText"),
    }
    (ARTIFACTS / f"browser-timings-{LLM}.json").write_text(json.dumps(measured, indent=2))
    print(json.dumps(measured))
    assert measured["evidence_s"] is not None and measured["first_token_s"] is not None
    assert measured["evidence_s"] <= measured["first_token_s"]  # evidence comes first


def _seconds(times: dict[str, Any], key: str) -> float | None:
    return round((times[key] - times["start"]) / 1000, 2) if key in times else None


def test_pdf_citation_shows_its_page(pdf_server: dict[str, Any]) -> None:
    """A PDF citation's "Show page 2" draws that page, quote marked, beside the card."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(pdf_server["url"])
            chat_input = page.get_by_test_id("stChatInputTextArea")
            chat_input.wait_for(state="visible", timeout=START_TIMEOUT_S * 1000)
            chat_input.fill("When was the breakwater of Vardo rebuilt?")
            chat_input.press("Enter")
            card = page.locator(".rag-source", has_text="harbour.pdf")
            card.first.wait_for(timeout=ANSWER_TIMEOUT_S * 1000)
            assert "p. 2" in card.first.inner_text()

            page.get_by_text("Show page 2").first.click()
            image = page.locator('[data-testid="stImage"] img').first
            image.wait_for(timeout=60_000)
            expect(image).to_be_visible()
            assert image.evaluate("img => img.complete && img.naturalWidth") > 500
            expect(page.get_by_text("page 2 of 3 · the quote is marked")).to_be_visible()
            expect(page.get_by_role("button", name="Download harbour.pdf")).to_be_visible()
            # the page sits beside its card (two columns), not below it
            card_box, image_box = card.first.bounding_box(), image.bounding_box()
            assert card_box and image_box and image_box["x"] > card_box["x"] + 100
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "chat-pdf-page.png"))
        finally:
            browser.close()
