"""What this machine's CPU is and can do, as Linux reports it (/proc/cpuinfo).

One reader for the app (which llama.cpp kernels to prefer), the benchmarks (which
machine a figure was taken on) and the build tests (which instruction sets to expect).
Other systems report nothing: an empty flag set and "unknown".
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


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
