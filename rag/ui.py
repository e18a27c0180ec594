"""What the Streamlit page shows, as plain strings: citations, evidence, status, errors.

No Streamlit import here, so every piece of presentation logic is unit-testable and
app.py stays a thin layout of widgets.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rag.citations import MARKER, marker_numbers
from rag.config import ConfigError, Settings
from rag.indexer import IndexReport
from rag.languages import LANGUAGES as REGISTRY
from rag.records import Answer, Chunk, Citation, Hit, UserError, one_line

EMPTY_INDEX = "Index your documents: click **Re-index folder** in the sidebar."
NO_DOCUMENTS = (
    "Nothing is indexed yet: upload documents in the sidebar, or add files to {docs} "
    "and click **Re-index folder**."
)
LANGUAGES = ("auto", *REGISTRY)  # the answer languages: the registry's (rag.languages)


def language_label(code: str) -> str:
    """The answer-language choice as shown: "auto (the question's)", "Deutsch (de)"."""
    if code == "auto":
        return "auto (the question's)"
    info = REGISTRY.get(code)
    return f"{info.native} ({code})" if info else code


BACKEND_LABELS = {
    "local": "local (llama.cpp, offline)",
    "openai": "openai (compatible server)",
    "none": "none (quotes only, fastest)",
}

# The engine's messages are written for the terminal; in the browser the same advice
# points at the sidebar.
_UI_HINTS = (
    ("run `rag index` first", "click **Re-index folder** in the sidebar"),
    ("run `rag index` (or `rag index --rebuild`)", "click **Re-index folder** in the sidebar"),
    ("or use --llm none", 'or choose the LLM backend "none" in the sidebar'),
    ("or unset RAG_CHROMA_URL", "or unset RAG_CHROMA_URL and restart the app"),
)


# ------------------------------------------------------------------------------ errors


def user_message(exc: BaseException, action: str = "") -> str:
    """One line for the page: a UserError's own words, else a generic line."""
    if isinstance(exc, UserError | ConfigError) and str(exc).strip():
        return _ui_hints(one_line(exc))
    doing = f" while {action}" if action else ""
    return (
        f"Something went wrong{doing} ({type(exc).__name__}: {one_line(exc, 160)}). "
        "The page still works: try again; the details are in the server log."
    )


def _ui_hints(text: str) -> str:
    for terminal, browser in _UI_HINTS:
        if browser not in text:  # idempotent: a message may pass through here twice
            text = text.replace(terminal, browser)
    return text


# ------------------------------------------------------------------------------ status


def status_problem(status: dict[str, Any]) -> str | None:
    """Why questions cannot be answered now, or None when the index is usable."""
    error = status.get("error")
    if error:
        return EMPTY_INDEX if "no index in" in error else user_message(UserError(error))
    if not status.get("chunks"):
        return NO_DOCUMENTS.format(docs=f"`{status.get('docs', 'the documents folder')}`")
    return None


def status_rows(status: dict[str, Any], settings: Settings, backend: str) -> list[str]:
    """Markdown lines describing the corpus and the models in use."""
    languages = ", ".join(status.get("languages") or []) or "–"
    rows = [
        f"**{status.get('files', 0)}** files · **{status.get('chunks', 0)}** chunks"
        f" · languages: {languages}",
        f"Last indexed: {_when(status.get('last_indexed'))}",
        f"Embedder: {status.get('embed_identity') or status.get('embed_model')}",
        f"LLM: {llm_label(backend, settings, status)}",
        f"Documents: `{settings.docs_dir}`",
    ]
    return rows


def llm_label(backend: str, settings: Settings, status: dict[str, Any]) -> str:
    if backend == "local":
        name = Path(str(status.get("llm_path", ""))).name or settings.llm_model
        return name + ("" if status.get("llm_present", True) else " (missing: run `rag setup`)")
    if backend == "openai":
        return f"{settings.llm_model} at {settings.llm_base_url}"
    return "none: answers quote the sources"


def _when(iso: str | None) -> str:
    if not iso:
        return "never"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


def report_summary(report: IndexReport) -> str:
    """One line for an indexing run, like `rag index` prints it."""
    return (
        f"{report.files} files, {report.chunks} chunks: {report.added} added, "
        f"{report.updated} updated, {report.removed} removed, {report.unchanged} unchanged, "
        f"{len(report.skipped)} skipped ({report.seconds:.1f} s)"
    )


def skipped_lines(report: IndexReport) -> list[str]:
    return [f"`{s.path}`: {s.reason}" for s in report.skipped]


# ---------------------------------------------------------------------------- answers


def anchor_id(msg_id: str, n: int) -> str:
    """The HTML id of source [n] of one message (unique on the page)."""
    return f"src-{msg_id}-{n}"


def answer_markdown(text: str, msg_id: str, numbers: Iterable[int]) -> str:
    """The answer as markdown, each [n] with a source turned into a link to that source."""
    known = set(numbers)

    def link(match: re.Match[str]) -> str:
        parts = marker_numbers(match.group(1))
        if not all(n in known for n in parts):
            return match.group(0)
        return "".join(f"[[{n}]](#{anchor_id(msg_id, n)})" for n in parts)

    return MARKER.sub(link, escape_math(text))


def escape_math(text: str) -> str:
    """Streamlit markdown reads $...$ as LaTeX; answers mean dollars."""
    return text.replace("$", r"\$")


@dataclass
class Passage:
    """One passage of a source, with the quotes of the answer found in it."""

    text: str | None  # the chunk text; None when no retrieved chunk holds the quotes
    quotes: list[str] = field(default_factory=list)


@dataclass
class Source:
    """Everything shown for one [n]: file, lines, link and the highlighted passages."""

    n: int
    file: str
    path: str
    first_line: int
    last_line: int
    url: str | None
    passages: list[Passage]
    locator: str = ""  # where a reader finds the quotes: "p. 3", "Budget › Q3 ¶ 2"
    page: int | None = None  # the first quote's page (a PDF opens there)

    @property
    def pdf_page(self) -> int | None:
        """The page the chat page can show next to the quote: a PDF's cited page."""
        return self.page if self.page and self.path.lower().endswith(".pdf") else None

    @property
    def quotes(self) -> list[str]:
        return [q for passage in self.passages for q in passage.quotes]


def page_label(source: Source) -> str:
    """The label of the control that shows a cited PDF page: "Show page 3"."""
    return f"Show page {source.pdf_page}"


def page_caption(source: Source, pages: int, marked: int) -> str:
    """The line under a shown page: where it is and whether the quote is marked."""
    where = f"{source.file} · page {source.pdf_page} of {pages}"
    if marked:
        return f"{where} · the quote is marked in yellow"
    return f"{where} · the quote could not be located in the page's text"


def sources(answer: Answer) -> list[Source]:
    """The cited sources of an answer, one per [n], in order (none for a refusal)."""
    if answer.refused:
        return []
    by_n: dict[int, list[Citation]] = {}
    for citation in answer.citations:
        by_n.setdefault(citation.n, []).append(citation)
    return [_source(n, cites, answer.retrieved) for n, cites in sorted(by_n.items())]


def _source(n: int, citations: list[Citation], hits: Sequence[Hit]) -> Source:
    first = citations[0]
    passages: dict[str, Passage] = {}
    for citation in citations:
        text = _passage_of(citation, hits)
        key = text if text is not None else f"\0{citation.quote}"
        passages.setdefault(key, Passage(text)).quotes.append(citation.quote)
    return Source(
        n=n,
        file=first.file,
        path=first.path,
        first_line=min(c.lines[0] for c in citations),
        last_line=max(c.lines[1] for c in citations),
        url=next((c.url for c in citations if c.url), None),
        passages=list(passages.values()),
        locator=_locator(citations),
        page=min((c.page for c in citations if c.page), default=None),
    )


def _locator(citations: list[Citation]) -> str:
    """The places of one source's quotes: a page range for a PDF, else each label once
    (a bare line number is left out: the lines are shown anyway)."""
    labels = [c.locator for c in citations if c.locator and not c.locator.startswith("line ")]
    pages = sorted({c.page for c in citations if c.page})
    if pages and all(label.startswith("p. ") for label in labels):
        return f"p. {pages[0]}" if len(pages) == 1 else f"pp. {pages[0]}–{pages[-1]}"
    return "; ".join(dict.fromkeys(labels))


def _passage_of(citation: Citation, hits: Sequence[Hit]) -> str | None:
    """The text of the retrieved chunk of the cited file that contains the quote."""
    for hit in hits:
        if hit.chunk.path == citation.path and _find(hit.chunk.text, citation.quote):
            return hit.chunk.text
    return None


def _find(text: str, quote: str) -> tuple[int, int] | None:
    """Where `quote` is in `text`: exactly, else with any run of white space between
    its words (a quote may cross a line break that the chunk keeps)."""
    quote = quote.strip()
    if not quote:
        return None
    start = text.find(quote)
    if start >= 0:
        return start, start + len(quote)
    pattern = r"\s+".join(re.escape(word) for word in quote.split())
    match = re.search(pattern, text)
    return match.span() if match else None


def highlight(text: str, quotes: Sequence[str]) -> str:
    """`text` as HTML-escaped markup with each quote found in it wrapped in <mark>."""
    spans = sorted(span for q in quotes if (span := _find(text, q)))
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out += [_escape(text[pos:start]), "<mark>", _escape(text[start:end]), "</mark>"]
        pos = end
    out.append(_escape(text[pos:]))
    return "".join(out)


def _escape(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def line_label(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}–{last}"


def source_html(source: Source, msg_id: str) -> str:
    """The block of one source, with the anchor its [n] links to."""
    link = ""
    if source.url and source.url.startswith(("http://", "https://")):
        url = html.escape(source.url, quote=True)
        link = (
            f' · <a href="{url}" target="_blank" rel="noopener noreferrer">original article ↗</a>'
        )
    lines = line_label(source.first_line, source.last_line)
    where = f"{html.escape(source.locator)} · " if source.locator else ""
    header = (
        f'<div class="rag-source-head"><span class="rag-n">[{source.n}]</span> '
        f"<code>{html.escape(source.file)}</code> · {where}{lines}{link}</div>"
    )
    bodies = []
    for passage in source.passages:
        if passage.text is None:  # not in a retrieved chunk: show the quotes alone
            body = "<br>".join(f"<mark>{_escape(q)}</mark>" for q in passage.quotes)
        else:
            body = highlight(passage.text, passage.quotes)
        bodies.append(f'<div class="rag-passage">{body}</div>')
    return (
        f'<div class="rag-source" id="{anchor_id(msg_id, source.n)}" '
        f'title="{html.escape(source.path, quote=True)}">{header}{"".join(bodies)}</div>'
    )


def evidence_label(count: int, refused: bool) -> str:
    noun = "passage" if count == 1 else "passages"
    if refused:
        return f"Closest passages ({count}) – not enough to answer"
    return f"Evidence ({count} {noun})"


def evidence_html(hits: Sequence[Hit]) -> str:
    """The retrieved passages, best first, as shown before the answer is written."""
    items = []
    for hit in hits:
        chunk = hit.chunk
        head = (
            f'<div class="rag-source-head"><span class="rag-n">{hit.rank or ""}.</span> '
            f"<code>{html.escape(Path(chunk.path).name)}</code> · {_chunk_place(chunk)}"
            f"{line_label(chunk.first_line, chunk.last_line)} · score {hit.score:.3f}</div>"
        )
        items.append(
            f'<div class="rag-evidence">{head}<div class="rag-passage">{_escape(chunk.text)}'
            "</div></div>"
        )
    return "".join(items)


def _chunk_place(chunk: Chunk) -> str:
    place = chunk.locator()
    return f"{html.escape(place)} · " if place and not place.startswith("line ") else ""


def chat_history(answers: Iterable[Answer]) -> list[dict[str, str]]:
    """The conversation so far as the engine takes it (failed turns are left out)."""
    history: list[dict[str, str]] = []
    for answer in answers:
        history.append({"role": "user", "content": answer.question})
        history.append({"role": "assistant", "content": answer.answer})
    return history


def timings_caption(answer: Answer) -> str:
    t = answer.timings
    parts = [f"backend {answer.backend}"]
    for key, label in (("retrieve_ms", "retrieval"), ("first_token_ms", "first token")):
        if key in t:
            parts.append(f"{label} {t[key] / 1000:.1f} s")
    if "total_ms" in t:
        parts.append(f"total {t['total_ms'] / 1000:.1f} s")
    return " · ".join(parts)


# The page's only CSS: the source and evidence blocks (st.html keeps class names).
CSS = """
<style>
.rag-source, .rag-evidence {
  border-left: 3px solid #4f8bf9; border-radius: 4px; padding: .45rem .8rem;
  margin: .45rem 0; background: rgba(79, 139, 249, .06); scroll-margin-top: 4rem;
}
.rag-evidence { border-left-color: rgba(128, 128, 128, .45); background: rgba(128,128,128,.05); }
.rag-source:target { background: rgba(255, 214, 0, .18); }
.rag-source-head { font-size: .85rem; opacity: .85; margin-bottom: .25rem; }
.rag-wait { font-size: .9rem; opacity: .6; font-style: italic; }
.rag-n { font-weight: 700; margin-right: .25rem; }
.rag-passage { font-size: .9rem; line-height: 1.5; }
.rag-passage mark { background: #ffe066; color: #111; padding: 0 .1rem; border-radius: 2px; }
</style>
"""
