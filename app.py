"""Streamlit chat page: a thin layout of widgets over rag.engine.

Everything that is not a widget lives in rag/ (rag.ui: what is shown, rag.uploads:
saving and indexing uploads, rag.feedback: regression cases), so it is unit-tested
without a browser. Every action catches its own errors and shows one line: the page
keeps working whatever fails.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from rag import feedback, pdf_pages, ui
from rag.config import SUPPORTED_EXTENSIONS, ConfigError, Settings
from rag.engine import Delta, Engine, Finished, Retrieved
from rag.llm import BACKENDS
from rag.records import Answer, Hit, UserError
from rag.uploads import add_uploads

log = logging.getLogger("rag.app")


@dataclass
class Options:
    backend: str
    k: int
    language: str
    status: dict[str, Any]


# ------------------------------------------------------------------------- resources


@st.cache_resource(show_spinner=False)
def load_engine(key: str, _settings: Settings) -> Engine:
    """One engine per distinct settings (`key` is their repr): models load once per
    process, and tests that change RAG_* variables get their own engine."""
    return Engine(_settings)


@st.cache_resource(show_spinner=False)
def warmed() -> set[str]:
    """The (settings, backend) pairs whose models are loaded in this process."""
    return set()


@contextmanager
def guard(action: str, keep: bool = False) -> Iterator[None]:
    """Show an action's failure as one line, never a traceback; `keep` shows it as the
    sidebar notice, which outlives the rerun that follows an action."""
    try:
        yield
    except Exception as exc:  # the page must survive anything; the log keeps the details
        if not isinstance(exc, UserError | ConfigError):
            log.exception("failed while %s", action)
        text = ui.user_message(exc, action)
        if keep:
            notify("error", text, [])
        else:
            st.error(text, icon=":material/error:")


def warm_up(engine: Engine, backend: str) -> None:
    """Load the embedder and the chosen LLM before the first question, visibly."""
    key = f"{engine.settings!r}|{backend}"
    if key in warmed():
        return
    with st.status("Loading the models ...", expanded=True) as box:
        started = time.perf_counter()
        try:
            st.write("Embedding model ...")
            _ = engine.embedder
            if backend != "none":
                st.write(f"Language model ({backend}) ...")
                # loads it and caches the fixed part of every prompt (system prompt,
                # examples): the first question then pays only for its own sources
                engine.prime(backend)
            st.write("Index ...")
            _warm_pipeline(engine)
        except (UserError, ConfigError) as exc:
            box.update(label="The models could not be loaded", state="error", expanded=True)
            st.error(ui.user_message(exc))
            return
        seconds = time.perf_counter() - started
        box.update(label=f"Models ready ({seconds:.1f} s)", state="complete", expanded=False)
    warmed().add(key)


def _warm_pipeline(engine: Engine) -> None:
    # One extractive answer opens the store, builds the keyword index and runs the
    # embedder's first passes (measured: the first question took 10 s, the next 3 s).
    # No index yet: nothing to warm; the sidebar says what to do.
    with suppress(UserError):
        engine.ask("What do these documents say?", llm="none")


# --------------------------------------------------------------------------- sidebar


def sidebar(engine: Engine) -> Options:
    settings = engine.settings
    with st.sidebar:
        st.button("New chat", icon=":material/add_comment:", on_click=new_chat, width="stretch")
        st.subheader("Answers")
        backend = st.selectbox(
            "LLM backend",
            BACKENDS,
            index=BACKENDS.index(settings.llm) if settings.llm in BACKENDS else 0,
            format_func=lambda name: ui.BACKEND_LABELS.get(name, name),
            key="backend",
        )
        k = st.slider("Number of sources (k)", 1, max(10, settings.top_k), settings.top_k, key="k")
        language = st.selectbox(
            "Answer language",
            ui.LANGUAGES,
            index=ui.LANGUAGES.index(settings.answer_language)
            if settings.answer_language in ui.LANGUAGES
            else 0,
            format_func=ui.language_label,
            key="language",
        )
        st.subheader("Documents")
        status_box = st.container()
        upload_box(engine)
        reindex_button(engine)
        show_notice()
        with status_box:
            status = corpus_status(engine, backend)
    return Options(backend, k, language, status)


def new_chat() -> None:
    st.session_state.messages = []


def corpus_status(engine: Engine, backend: str) -> dict[str, Any]:
    status: dict[str, Any] = {"error": "the index status could not be read"}
    with guard("reading the index status"):
        status = engine.status()
        problem = ui.status_problem(status)
        if problem:
            st.warning(problem, icon=":material/info:")
        st.caption("  \n".join(ui.status_rows(status, engine.settings, backend)))
    return status


def upload_box(engine: Engine) -> None:
    settings = engine.settings
    files = st.file_uploader(
        "Add documents",
        type=[ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS],
        accept_multiple_files=True,
        max_upload_size=max(1, math.ceil(settings.max_file_mb)),
        # a new key after each upload empties the widget for the next one
        key=f"uploader-{st.session_state.upload_round}",
        help=f"Saved into {settings.docs_dir} and indexed at once.",
    )
    if not files:
        return
    st.session_state.upload_round += 1
    with guard("adding the uploaded files", keep=True):
        with st.status(f"Adding {len(files)} file(s) ...", expanded=True) as box:
            result = add_uploads(engine, [(f.name, f.getvalue()) for f in files], st.write)
            box.update(label="Upload done", state="error" if result.errors else "complete")
        kind = "success" if result.saved and not result.errors else "warning"
        lines = [f"Added {', '.join(result.saved)}." if result.saved else "Nothing added."]
        if result.report:
            lines.append(ui.report_summary(result.report))
        notify(kind, lines[0], lines[1:] + result.errors)
    st.rerun()


def reindex_button(engine: Engine) -> None:
    if not st.button("Re-index folder", icon=":material/refresh:", width="stretch"):
        return
    with guard("re-indexing the documents folder", keep=True):
        with st.status(f"Re-indexing {engine.settings.docs_dir} ...", expanded=True) as box:
            report = engine.index(progress=False)
            box.update(label="Re-indexed", state="complete")
        notify("success", "Re-indexed: " + ui.report_summary(report), ui.skipped_lines(report))
    st.rerun()


def notify(kind: str, text: str, details: list[str]) -> None:
    """Keep the outcome of an action on screen across reruns, until the next one."""
    st.session_state.notice = (kind, text, details)


def show_notice() -> None:
    notice = st.session_state.get("notice")
    if not notice:
        return
    kind, text, details = notice
    show = {"success": st.success, "warning": st.warning, "error": st.error}[kind]
    show(text)
    for line in details:
        st.caption(line)


# ------------------------------------------------------------------------------ chat


def show_history(docs: Path) -> None:
    for message in st.session_state.messages:
        with st.chat_message(message["role"]):
            if message["role"] == "user":
                st.markdown(ui.escape_math(message["content"]))
            elif "answer" in message:
                answer = message["answer"]
                show_evidence(answer.retrieved, answer.refused)
                show_answer(st.empty(), answer, message["id"])
                show_extras(message, docs)
            else:
                st.error(message["error"], icon=":material/error:")


def ask(engine: Engine, question: str, options: Options) -> None:
    answers = [m["answer"] for m in st.session_state.messages if "answer" in m]
    history = ui.chat_history(answers)
    st.session_state.messages.append({"role": "user", "content": question})
    with st.chat_message("user"):
        st.markdown(ui.escape_math(question))
    message: dict[str, Any] = {"role": "assistant", "id": uuid.uuid4().hex[:8]}
    message["history"] = history
    with st.chat_message("assistant"):
        try:
            problem = ui.status_problem(options.status)
            if problem:
                raise UserError(problem)
            message["answer"] = stream_answer(engine, question, history, options, message["id"])
        except Exception as exc:  # one line on the page; the next question works again
            if not isinstance(exc, UserError | ConfigError):
                log.exception("failed while answering %r", question)
            message["error"] = ui.user_message(exc, "answering")
            st.error(message["error"], icon=":material/error:")
        else:
            show_extras(message, engine.settings.docs_dir)
    st.session_state.messages.append(message)


def stream_answer(
    engine: Engine, question: str, history: list[dict[str, str]], options: Options, msg_id: str
) -> Answer:
    """Evidence as soon as retrieval is done, then the answer as it is written."""
    evidence = st.container()
    slot = st.empty()
    slot.html('<div class="rag-wait">Searching the documents ...</div>')
    finished: list[Answer] = []

    def texts() -> Iterator[str]:
        events = engine.ask_stream(
            question, history, llm=options.backend, k=options.k, language=options.language
        )
        for event in events:
            if isinstance(event, Retrieved):
                with evidence:
                    show_evidence(event.hits, event.refused)
                slot.html('<div class="rag-wait">Writing the answer ...</div>')
            elif isinstance(event, Delta):
                yield event.text
            elif isinstance(event, Finished):
                finished.append(event.answer)

    try:
        slot.write_stream(texts)
    except Exception:
        slot.empty()  # no "Searching ..." left above the error message
        raise
    if not finished:
        raise UserError("the answer was cut short; ask again")
    show_answer(slot, finished[0], msg_id)
    return finished[0]


def show_evidence(hits: list[Hit], refused: bool) -> None:
    if hits:
        with st.expander(ui.evidence_label(len(hits), refused), icon=":material/search:"):
            st.html(ui.evidence_html(hits))


def show_answer(slot: Any, answer: Answer, msg_id: str) -> None:
    """The final answer in place of the streamed text: [n] become links to sources."""
    if answer.refused:
        slot.info(answer.answer, icon=":material/help:")
        return
    numbers = {c.n for c in answer.citations}
    slot.markdown(ui.answer_markdown(answer.answer, msg_id, numbers))


def show_extras(message: dict[str, Any], docs: Path) -> None:
    answer: Answer = message["answer"]
    show_sources(ui.sources(answer), message["id"], docs)
    st.caption(ui.timings_caption(answer))
    thumbs = st.feedback("thumbs", key=f"thumbs-{message['id']}")
    with st.expander("Save as regression case", icon=":material/playlist_add:"):
        save_case_form(message, thumbs)


def show_sources(sources: list[ui.Source], msg_id: str, docs: Path) -> None:
    """The source cards; a cited PDF page gets a toggle that shows the page, with the
    quote marked, next to its card."""
    plain: list[str] = []  # cards without a page, drawn together
    for source in sources:
        card = ui.source_html(source, msg_id)
        if not source.pdf_page:
            plain.append(card)
            continue
        if plain:
            st.html("".join(plain))
            plain = []
        key = f"page-{msg_id}-{source.n}"
        if not st.session_state.get(key):
            st.html(card)
            st.toggle(ui.page_label(source), key=key)
            continue
        left, right = st.columns([2, 3], gap="small")  # the page a little wider
        with left:
            st.html(card)
            st.toggle(ui.page_label(source), key=key)
        with right:
            show_pdf_page(source, msg_id, docs)
    if plain:
        st.html("".join(plain))


@st.cache_data(max_entries=24, show_spinner=False)
def page_image(path: str, mtime_ns: int, page: int, quotes: tuple[str, ...]) -> pdf_pages.PageImage:
    """A rendered page, cached per (file, its mtime, page, quotes): an edited file is
    drawn again, and at most 24 pages (a few MB) are kept."""
    del mtime_ns  # only part of the cache key
    return pdf_pages.render_pdf_page(Path(path), page, quotes)


def show_pdf_page(source: ui.Source, msg_id: str, docs: Path) -> None:
    """The cited page as an image, its quote marked, and the PDF to download; a file
    outside the documents folder, gone, or without that page gets one line instead."""
    with guard("showing the PDF page"):
        path = pdf_pages.resolve_pdf(docs, source.path)
        with st.spinner(f"Drawing page {source.pdf_page} ..."):
            image = page_image(
                str(path), path.stat().st_mtime_ns, source.pdf_page or 0, tuple(source.quotes)
            )
        st.image(image.png, caption=ui.page_caption(source, image.pages, image.marked))
        st.download_button(
            f"Download {source.file}",
            data=path.read_bytes(),
            file_name=path.name,
            mime="application/pdf",
            key=f"pdf-{msg_id}-{source.n}",
            on_click="ignore",
            icon=":material/download:",
        )


def save_case_form(message: dict[str, Any], thumbs: int | None) -> None:
    answer: Answer = message["answer"]
    msg_id = message["id"]
    if message.get("saved"):
        st.success(f"Saved as {message['saved']} in {feedback.SAVED_CASES.name}.")
        return
    phrase = st.text_input(
        "Key phrase the answer must contain",
        feedback.salient_phrase(answer.answer) if not answer.refused else "",
        key=f"phrase-{msg_id}",
    )
    answerable = st.checkbox(
        "The documents answer this question", not answer.refused, key=f"answerable-{msg_id}"
    )
    cited = feedback.cited_files(answer)
    files = list(dict.fromkeys(cited + [h.chunk.path.rsplit("/", 1)[-1] for h in answer.retrieved]))
    expected = st.multiselect("Files that hold the answer", files, cited, key=f"files-{msg_id}")
    if st.button("Save case", key=f"save-{msg_id}", icon=":material/save:"):
        with guard("saving the regression case"):
            case = feedback.build_case(
                answer, message["history"], phrase, thumbs, answerable, expected
            )
            feedback.save_case(feedback.SAVED_CASES, case)
            message["saved"] = case["id"]
            st.success(f"Saved as {case['id']} in {feedback.SAVED_CASES.name}.")


# ------------------------------------------------------------------------------ page


def main() -> None:
    st.set_page_config(page_title="Ask your documents", page_icon="📚")
    st.html(ui.CSS)
    st.session_state.setdefault("messages", [])
    st.session_state.setdefault("upload_round", 0)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        st.error(f"{exc}: fix the setting and restart the app.")
        st.stop()
    engine = load_engine(repr(settings), settings)
    options = sidebar(engine)
    st.title("Ask your documents")
    st.caption("Answers quote your files; click a [n] to see its source.")
    warm_up(engine, options.backend)
    show_history(engine.settings.docs_dir)
    question = st.chat_input("Ask a question about your documents")
    if question and question.strip():
        ask(engine, question.strip(), options)


main()
