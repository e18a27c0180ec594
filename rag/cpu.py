"""What this machine's CPU is and can do, as Linux reports it (/proc/cpuinfo).

One reader for the app (which llama.cpp kernels to prefer), the benchmarks (which
machine a figure was taken on) and the build tests (which instruction sets to expect).
Other systems report nothing: an empty flag set and "unknown".
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# CPUs whose llama.cpp build (the zen4 variant measured) runs prompts faster from the
# model's own Q4_K/Q6_K layout than from the repacked one (see repacks_weights).
TILED_PROMPT_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni"})


def _field(name: str) -> str:
    try:
        lines = CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


@cache
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags ("avx2", "avx512_vnni", ...)."""
    return frozenset(_field("flags").split())


def cpu_model() -> str:
    """The CPU's model name, for reports."""
    return _field("model name") or "unknown"


def repacks_weights(setting: str, flags: frozenset[str]) -> bool:
    """Whether llama.cpp should repack the model's weights (RAG_LLM_REPACK).

    Repacking (its CPU_REPACK buffer) interleaves Q4_K rows for its own matrix kernels,
    and a repacked matrix no longer goes to llama.cpp's tiled matmul, which processes
    prompts faster on AVX-512 VNNI. Measured with bench/llm.py --repack both on a Zen 4
    (zen4 variant): unpacked, prompts ~1.4x faster and decoding ~0.8x; on the AVX2
    build prompt speed is the same either way and repacked weights decode faster. An
    answer's first token is mostly its prompt, so `auto` unpacks where the tiled kernel
    wins and repacks elsewhere; unpacked weights also stay memory-mapped (~0.6 GB less
    resident memory).
    """
    if setting != "auto":
        return setting == "on"
    return not TILED_PROMPT_FLAGS.issubset(flags)
