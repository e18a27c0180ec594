"""Settings: defaults, RAG_* variables, explicit overrides, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.config import ConfigError, Settings, env_name


def test_defaults() -> None:
    settings = Settings()
    assert settings.docs_dir == Path("seeds") and settings.store_dir == Path(".rag")
    assert settings.llm == "local" and settings.chroma_url is None


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_DOCS", "/tmp/my-docs")
    monkeypatch.setenv("RAG_STORE", "/tmp/my-store")
    monkeypatch.setenv("RAG_TOP_K", "9")
    monkeypatch.setenv("RAG_REFUSAL_THRESHOLD", "0.5")
    monkeypatch.setenv("RAG_LLM", "none")
    settings = Settings.from_env()
    assert settings.docs_dir == Path("/tmp/my-docs")
    assert settings.store_dir == Path("/tmp/my-store")
    assert (settings.top_k, settings.refusal_threshold, settings.llm) == (9, 0.5, "none")


def test_explicit_overrides_win_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_TOP_K", "9")
    settings = Settings.from_env(top_k=3, docs_dir=None)
    assert settings.top_k == 3 and settings.docs_dir == Path("seeds")


def test_bad_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_TOP_K", "many")
    with pytest.raises(ConfigError, match="RAG_TOP_K='many'"):
        Settings.from_env()


def test_folder_variables_have_short_names() -> None:
    assert env_name("docs_dir") == "RAG_DOCS"
    assert env_name("store_dir") == "RAG_STORE"
    assert env_name("llm_base_url") == "RAG_LLM_BASE_URL"


@pytest.mark.parametrize(
    ("field", "default", "written", "read", "bad", "message"),
    [
        ("llm_repack", "auto", "OFF", "off", "fast",
         "RAG_LLM_REPACK='fast' must be one of: auto, on, off"),
        ("followup_rewrite", "rules", "LLM", "llm", "model",
         "RAG_FOLLOWUP_REWRITE='model' must be one of"),
        ("answer_language", "auto", "DE", "de", "xx",
         "RAG_ANSWER_LANGUAGE='xx' must be 'auto' or one of: da, de, en"),
    ],
)  # fmt: skip
def test_a_choice_setting_takes_one_of_its_words_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    default: str,
    written: str,
    read: str,
    bad: str,
    message: str,
) -> None:
    assert getattr(Settings.from_env(), field) == default
    monkeypatch.setenv(env_name(field), written)
    assert getattr(Settings.from_env(), field) == read
    monkeypatch.setenv(env_name(field), bad)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env()


def test_a_backend_name_is_read_in_any_case_and_checked_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAG_LLM", "NONE")
    assert Settings.from_env().llm == "none"
    monkeypatch.setenv("RAG_LLM", "bogus")  # not only at the first question's answer
    with pytest.raises(ConfigError, match="RAG_LLM='bogus' must be one of: local, openai, none"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RAG_TOP_K", "0", "RAG_TOP_K=0 is out of range: it must be at least 1"),
        ("RAG_REFUSAL_THRESHOLD", "5", "RAG_REFUSAL_THRESHOLD=5.0 is out of range: it must be"),
        ("RAG_REFUSAL_THRESHOLD", "nan", "RAG_REFUSAL_THRESHOLD=nan is out of range"),
        ("RAG_MAX_FILE_MB", "-1", "RAG_MAX_FILE_MB=-1.0 is out of range: it must be at least 0.01"),
        ("RAG_CHUNK_TOKENS", "0", "RAG_CHUNK_TOKENS=0 is out of range"),
        ("RAG_HISTORY_TURNS", "-2", "RAG_HISTORY_TURNS=-2 is out of range: it must be at least 0"),
        ("RAG_SERVE_PORT", "70000", "RAG_SERVE_PORT=70000 is out of range: it must be from 0"),
        ("RAG_EMBED_SERVER_TIMEOUT", "-1", "RAG_EMBED_SERVER_TIMEOUT=-1.0 is out of range"),
        ("RAG_CHUNK_OVERLAP", "200", "RAG_CHUNK_OVERLAP=200 must be less than RAG_CHUNK_TOKENS"),
    ],
)  # fmt: skip
def test_a_number_out_of_its_range_is_refused_naming_the_range(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    # a threshold of 5 would refuse every question, a top_k of 0 find nothing: silently
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        Settings.from_env()
    assert str(error.value).startswith(message)


def test_the_range_is_checked_on_explicit_values_too() -> None:
    with pytest.raises(ConfigError, match="RAG_REFUSAL_THRESHOLD=-0.5 is out of range"):
        Settings.from_env(refusal_threshold=-0.5)
    assert Settings.from_env(refusal_threshold=0).refusal_threshold == 0.0  # the gate off
