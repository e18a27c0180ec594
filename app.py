"""Streamlit chat page: a thin shell over rag.engine (the full UI comes with the UI issue)."""

from __future__ import annotations

import streamlit as st

from rag.engine import Engine
from rag.records import UserError


@st.cache_resource(show_spinner="Loading models ...")
def engine() -> Engine:
    return Engine()


st.set_page_config(page_title="Sources chat", page_icon="📚")
st.title("Ask your documents")
try:
    status = engine().status()
    st.caption(f"{status['files']} files, {status['chunks']} chunks indexed")
except UserError as exc:
    st.error(str(exc))
query = st.text_input("Search the sources")
if query:
    try:
        for hit in engine().search(query):
            c = hit.chunk
            st.markdown(f"**{c.path}** lines {c.first_line}-{c.last_line} · {hit.score:.3f}")
            st.write(c.text)
    except UserError as exc:
        st.error(str(exc))
