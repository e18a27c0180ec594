"""The installed llama.cpp build: runtime CPU dispatch, never AMX, and it runs the model.

`make setup` builds llama-cpp-python with one CPU backend per x86 level
(GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS); at run time ggml loads the best one this CPU
can run. The AMX variant (sapphirerapids) is deleted after install: its kernels crashed
on the first decode on an AMX machine. These tests fail if an AMX backend is installed,
if the loaded backend is not the best one installed for this CPU, or if no backend loads.
The checks run in fresh processes started in an empty folder, so they see what the app
sees (ggml also searches the working directory; that must not be what makes it work).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rag.cpu import cpu_flags

from .conftest import ROOT

AMX_VARIANTS = ("sapphirerapids",)  # the x86 variants of GGML_CPU_ALL_VARIANTS with AMX
AMX_INSN = re.compile(r"\s(ldtilecfg|sttilecfg|tileloadd\w*|tilestored|tilezero|tdp\w+)\s")

PROBE = r"""
import ctypes, json, sys
from pathlib import Path
import llama_cpp

llama_cpp.llama_backend_init()  # what Llama() does first: ggml_backend_load_all()
maps = Path("/proc/self/maps").read_text().split("\n")
mapped = sorted({l.split()[-1] for l in maps if "libggml-cpu" in l})
scores = {}
for path in sorted(Path(mapped[0]).parent.glob("libggml-cpu-*.so")) if mapped else []:
    score = getattr(ctypes.CDLL(str(path)), "ggml_backend_score", None)
    scores[path.name] = score() if score else None
info = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"mapped": mapped, "scores": scores, "info": info}))
"""

# A one-token decode, with llama.cpp's load log on stderr (it names the CPU_REPACK
# buffer it fills). argv[2]: "on"/"off" loads through rag.llm's weight-repacking
# switch, "default" as llama.cpp does by itself.
DECODE = r"""
import contextlib, json, sys
import llama_cpp, numpy as np
from rag.llm import weight_repacking

mode = sys.argv[2]
with weight_repacking(mode == "on") if mode != "default" else contextlib.nullcontext():
    llm = llama_cpp.Llama(model_path=sys.argv[1], n_threads=2, n_ctx=256, verbose=True)
llm.eval(llm.tokenize(b"The capital of France is", add_bos=False))
logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), (llm.n_vocab(),))
print(json.dumps({"finite": bool(np.isfinite(logits).all()),
                  "next": llm.detokenize([int(logits.argmax())]).decode(errors="replace")}))
"""


def _lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")  # without loading the libraries here
    assert spec and spec.origin, "llama-cpp-python is not installed: run `make setup`"
    return Path(spec.origin).parent / "lib"


def _run(script: str, cwd: Path, *args: str) -> dict[str, Any]:
    return _run_logged(script, cwd, *args)[0]


def _run_logged(script: str, cwd: Path, *args: str) -> tuple[dict[str, Any], str]:
    """The script's JSON result and its stderr; `rag` importable from any folder."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _amx_instructions(lib: Path) -> list[str]:
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(lib)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({m.group(1) for m in AMX_INSN.finditer(out)})


def test_no_amx_cpu_backend_is_installed() -> None:
    backends = sorted(_lib_dir().glob("libggml-cpu*.so*"))
    assert backends, f"no ggml CPU backend in {_lib_dir()}"
    named = [p.name for p in backends if any(v in p.name for v in AMX_VARIANTS)]
    assert not named, f"AMX backend(s) installed: {named}; `make setup` deletes them"
    if shutil.which("objdump") is None:
        pytest.skip("objdump not found: AMX instructions not scanned")
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = dict(zip(backends, pool.map(_amx_instructions, backends), strict=True))
    amx = {p.name: insns for p, insns in found.items() if insns}
    assert not amx, f"AMX instructions in CPU backend(s): {amx}"


def test_loads_the_best_installed_cpu_backend_without_amx(tmp_path: Path) -> None:
    probe = _run(PROBE, tmp_path)
    assert probe["mapped"], "no ggml CPU backend loaded (ggml_backend_load_all found none)"
    assert len(probe["mapped"]) == 1, f"several CPU backends loaded: {probe['mapped']}"
    loaded = Path(probe["mapped"][0])
    assert loaded.parent == _lib_dir().resolve(), f"loaded {loaded}, not the installed one"
    scores = probe["scores"]
    assert scores, f"{loaded.name}: a build without runtime CPU dispatch; run `make setup`"
    assert scores[loaded.name] == max(s or 0 for s in scores.values()) > 0, scores
    assert "AMX_INT8 = 1" not in probe["info"], probe["info"]


def test_loaded_backend_uses_the_widest_vectors_of_this_cpu(tmp_path: Path) -> None:
    flags = cpu_flags()
    info = _run(PROBE, tmp_path)["info"]
    if "avx512f" in flags and "avx512bw" in flags:
        assert "AVX512 = 1" in info, info
    elif "avx2" in flags:
        assert "AVX2 = 1" in info, info


@pytest.mark.llm
def test_the_packaged_model_decodes_on_the_loaded_backend(tmp_path: Path) -> None:
    from rag.config import Settings
    from rag.models import ensure_llm_gguf

    gguf = ensure_llm_gguf(Settings.from_env().cache_dir)
    out = _run(DECODE, tmp_path, str(gguf), "default")
    assert out["finite"] and out["next"].strip() == "Paris", out


@pytest.mark.llm
@pytest.mark.parametrize("repack", ["on", "off"])
def test_the_model_decodes_with_and_without_weight_repacking(tmp_path: Path, repack: str) -> None:
    from rag.config import Settings
    from rag.models import ensure_llm_gguf

    gguf = ensure_llm_gguf(Settings.from_env().cache_dir)
    out, log = _run_logged(DECODE, tmp_path, str(gguf), repack)
    assert out["finite"] and out["next"].strip() == "Paris", out
    if repack == "off":  # what RAG_LLM_REPACK=auto picks on AVX-512 VNNI
        assert "CPU_REPACK" not in log, log[-2000:]
    elif "avx2" in cpu_flags():  # llama.cpp repacks Q4_K for AVX2 and wider
        assert "CPU_REPACK model buffer" in log, log[-2000:]
