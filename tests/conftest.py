"""Shared fixtures: real models (loaded once per session), temporary folders and stores."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"

from rag.config import Settings  # noqa: E402

if TYPE_CHECKING:
    from .test_faults import ChromaServer

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real packaged e5 embedder, loaded once for the whole session."""
    from rag.models import load_embedder

    return load_embedder(Settings.from_env())


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A private copy of the seed corpus."""
    folder = tmp_path / "docs"
    shutil.copytree(SEEDS, folder)
    return folder


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {"docs_dir": tmp_path / "docs", "store_dir": tmp_path / "store"}
        values.update(overrides)
        return Settings.from_env(**values)

    return build


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    """A `chroma run` server on its own data folder, which a test may stop and start."""
    from .test_faults import ChromaServer

    server = ChromaServer(tmp_path / "chroma-data")
    server.start()
    yield server
    server.stop()
