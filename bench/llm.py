"""llama.cpp builds and quantizations side by side (prints JSON; not a test).

For every build given with --build NAME=PATH (PATH holds a `llama_cpp` package, e.g. a
`pip install --target` folder; `-` is the one installed in this environment) and every
quantization given with --quant, a fresh process with that build first on sys.path
loads the model with n_threads=2 (as the app does on 2 cores) and measures:
- prefill tokens/s for 300- and 600-token prompts (text of seeds/; the KV cache is
  cleared before each, so no cached prefix helps);
- decode tokens/s over 64 greedy tokens after the 300-token prompt.
Figures are medians over --rounds processes per pair (rounds interleave the pairs) times
--reps repetitions in each, after a warm-up; every sample is kept.

The machine may be shared: 2 threads on 2 cores lose half their speed (more: OpenMP
threads spin) when anything else runs. So each worker starts once the cores have been
idle for a second (or after --idle-wait s), and a sample during which the process got
less than --min-share of both cores is taken again (up to --tries times); each sample's
share is reported, so a contended figure shows as one.
Each result names the CPU backend library the process really mapped (/proc/self/maps).

    .venv/bin/python bench/llm.py --build avx2=/tmp/lcp-avx2 --build dispatch=/tmp/lcp-dl \
        [--quant q4_k_m --quant q4_0] [--repack auto|on|off|both] [--rounds 3] [--reps 2]

q4_0, iq4_nl, q8_0, f16, bf16 and q4_k are the packaged Q4_K_M requantized once into
the model cache (allow_requantize): llama.cpp repacks q4_0 and iq4_nl for faster CPU
prompt processing, q8_0's int8 blocks go straight into AVX-512 VNNI dot products, and
bf16 matrices into AVX-512 BF16 ones (prompt processing is compute-bound; decoding reads
every weight per token, so the wider types decode slower). q4_k requantizes only the
Q6_K matrices of Q4_K_M's mix (ffn_down and attn_v of half the layers) to Q4_K, since
on x86 llama.cpp repacks Q4_K but Q6_K only on ARM. Its Q4_K matrices are copied
unchanged, and the output matrix stays Q6_K (only the last prompt token's logits are
computed, so it costs no prompt time).

--repack loads the model with or without llama.cpp's weight repacking (its CPU_REPACK
buffer, rag.llm.weight_repacking); `auto` measures what the app does on this CPU
(RAG_LLM_REPACK), `both` measures the two side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.cpu import cpu_model  # noqa: E402

THREADS = 2
PROMPTS = (300, 600)
DECODE = 64
N_CTX = 4096  # the app's context window (RAG_LLM_CONTEXT default)
N_BATCH = 512  # the app's batch
# llama.cpp's llama_ftype of each requantized type
REQUANT_FTYPES = {"q4_0": 2, "q8_0": 7, "iq4_nl": 25, "f16": 1, "bf16": 32, "q4_k": 15}
# Types quantized "pure" (every matrix to the ftype's base type) but for the output
# matrix, kept at Q6_K: llama.cpp copies a tensor already of its target type unchanged.
PURE_KEEP_OUTPUT = {"q4_k"}
GGML_TYPE_Q6_K = 14


# ------------------------------------------------------------------- in the worker


def _mapped_cpu_backends() -> list[str]:
    """The ggml CPU backend libraries this process has mapped: the truth, not the plan."""
    names = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "libggml-cpu" in path:
            names.add(Path(path).name)
    return sorted(names)


def _load_backends(llama_cpp: Any) -> None:
    """A dynamic-backend build searches its compiled-in folder (the app's environment):
    load the CPU variants next to this build's libraries instead, so builds never mix.

    Through libllama's handle: the wheel holds libggml.so and libggml.so.0 as two copies,
    each with its own backend registry, and libllama uses the .so.0 one.
    """
    import ctypes

    lib = llama_cpp.llama_cpp._lib
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    if lib.ggml_backend_reg_count() == 0:  # a static build has registered its CPU already
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        lib.ggml_backend_load_all_from_path(str(lib_dir).encode())


def _seed_tokens(llm: Any) -> list[int]:
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "seeds").iterdir()))
    tokens = llm.tokenize(text.encode(), add_bos=False)
    if len(tokens) < max(PROMPTS):
        raise SystemExit(f"seeds/ give {len(tokens)} tokens, need {max(PROMPTS)}")
    return tokens


class _Clock:
    """Wall time and this process's share of the 2 cores over a block."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.share = (time.process_time() - self.cpu) / (self.wall * THREADS)


def _prefill(llm: Any, tokens: list[int]) -> tuple[float, float]:
    llm.reset()  # the next eval drops the whole KV cache
    with _Clock() as clock:
        llm.eval(tokens)
    return len(tokens) / clock.wall, clock.share


def _decode(llm: Any, llama_cpp: Any, count: int) -> tuple[float, float]:
    """Greedy tokens one at a time, as a streamed answer is made (argmax costs ~0.1 ms)."""
    import numpy as np

    n_vocab = llm.n_vocab()
    with _Clock() as clock:
        for _ in range(count):
            logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            llm.eval([int(np.ctypeslib.as_array(logits, (n_vocab,)).argmax())])
    return count / clock.wall, clock.share


class _Samples:
    """Samples per figure; one taken while others had the cores is taken again."""

    def __init__(self, min_share: float, tries: int) -> None:
        self.min_share, self.tries = min_share, tries
        self.rates: dict[str, list[float]] = {}
        self.shares: dict[str, list[float]] = {}
        self.retaken = 0

    def take(self, key: str, measure: Callable[[], tuple[float, float]]) -> None:
        for attempt in range(self.tries):
            rate, share = measure()
            if share >= self.min_share or attempt == self.tries - 1:
                break
            self.retaken += 1
        self.rates.setdefault(key, []).append(round(rate, 2))
        self.shares.setdefault(key, []).append(round(share, 2))


def worker(
    model: Path, reps: int, min_share: float, tries: int, flash_attn: bool, repack: bool
) -> dict[str, Any]:
    """One build, one model: load, warm up, then `reps` rounds of each measurement."""
    import llama_cpp

    from rag.llm import weight_repacking

    _load_backends(llama_cpp)
    started = time.perf_counter()
    with weight_repacking(repack):
        llm = llama_cpp.Llama(
            model_path=str(model),
            n_threads=THREADS,
            n_threads_batch=THREADS,
            n_ctx=N_CTX,
            n_batch=N_BATCH,
            flash_attn=flash_attn,
            verbose=False,
        )
    load_s = time.perf_counter() - started
    tokens = _seed_tokens(llm)
    _prefill(llm, tokens[:32])  # warm-up: first touch of the weights
    _decode(llm, llama_cpp, 4)
    samples = _Samples(min_share, tries)
    short = tokens[: PROMPTS[0]]
    for _ in range(reps):
        for n in PROMPTS:
            samples.take(f"prefill_{n}", lambda n=n: _prefill(llm, tokens[:n]))
        # decode after the short prompt, prefilled anew (untimed) for each attempt
        samples.take("decode", lambda: (_prefill(llm, short), _decode(llm, llama_cpp, DECODE))[1])
    return {
        "llama_cpp": str(Path(llama_cpp.__file__).parent),
        "cpu_backend": _mapped_cpu_backends(),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "load_s": round(load_s, 2),
        "samples": samples.rates,
        "cpu_share": samples.shares,
        "retaken": samples.retaken,
    }


def requantize_gguf(src: Path, dest: Path, threads: int, quant: str) -> Path:
    """`src` requantized to `quant` (REQUANT_FTYPES) into `dest`, which appears only
    when done."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.allow_requantize = REQUANT_FTYPES[quant], threads, True
    if quant in PURE_KEEP_OUTPUT:
        params.pure, params.output_tensor_type = True, GGML_TYPE_Q6_K
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        if llama_cpp.llama_model_quantize(bytes(src), bytes(tmp), ctypes.byref(params)):
            raise RuntimeError(f"llama_model_quantize failed on {src}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def requantize_worker(src: Path, dest: Path, quant: str) -> dict[str, Any]:
    started = time.perf_counter()
    requantize_gguf(src, dest, threads=THREADS, quant=quant)
    return {
        "path": str(dest),
        "bytes": dest.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
    }


# ------------------------------------------------------------------- orchestration


def _idle_fraction(seconds: float = 1.0) -> float:
    """Share of all cores idle over `seconds` (/proc/stat), this process being asleep."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def _wait_idle(limit_s: float) -> float:
    """Wait (up to limit_s) until the cores are idle; returns the seconds waited."""
    started = time.perf_counter()
    while _idle_fraction() < 0.9 and time.perf_counter() - started < limit_s:
        pass
    return round(time.perf_counter() - started, 1)


def _run(build: str, args: list[str]) -> dict[str, Any]:
    """This script in a fresh process with `build` first on sys.path; its JSON reply."""
    env = dict(os.environ)
    if build != "-":
        env["PYTHONPATH"] = os.pathsep.join([build, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {args} with {build} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _models(quants: list[str], requant_build: str) -> tuple[dict[str, Path], dict[str, Any]]:
    from rag.config import Settings
    from rag.models import ensure_llm_gguf

    packaged = ensure_llm_gguf(Settings.from_env().cache_dir)
    models, requant = {"q4_k_m": packaged}, {}
    for quant in (q for q in quants if q in REQUANT_FTYPES):
        dest = packaged.with_name(packaged.name.replace("q4_k_m", quant))
        if not dest.is_file():  # made once; remove the file to time it again
            requant[quant] = _run(requant_build, ["--requantize", str(packaged), str(dest), quant])
        models[quant] = dest
    return {q: models[q] for q in quants}, requant


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One (build, quant) over all rounds: medians (and bests) of every sample."""
    rates: dict[str, list[float]] = {}
    shares: dict[str, list[float]] = {}
    for run in runs:
        for key, values in run["samples"].items():
            rates.setdefault(key, []).extend(values)
            shares.setdefault(key, []).extend(run["cpu_share"][key])
    return {k: _median(v) for k, v in rates.items()} | {
        "best": {k: max(v) for k, v in rates.items()},
        "cpu_backend": sorted({b for r in runs for b in r["cpu_backend"]}),
        "llama_cpp": runs[0]["llama_cpp"],
        "system_info": runs[0]["system_info"],
        "load_s": _median([r["load_s"] for r in runs]),
        "waited_idle_s": [r["waited_idle_s"] for r in runs],
        "retaken": sum(r["retaken"] for r in runs),
        "samples": rates,
        "cpu_share": shares,
    }


def _label(result: dict[str, Any]) -> str:
    flash = "+flash_attn" if result["flash_attn"] == "on" else ""
    unpacked = "+no_repack" if result["repack"] == "off" else ""
    return f"{result['build']}/{result['quant']}{flash}{unpacked}"


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    keys = [f"prefill_{n}" for n in PROMPTS] + ["decode"]
    shares = {k: _median(v) for k, v in result["cpu_share"].items()}
    return {k: result[k] for k in keys} | {
        "best": result["best"],
        "median_cpu_share": shares,
        "cpu_backend": result["cpu_backend"],
    }


def _repack_modes(choice: str) -> list[str]:
    if choice == "both":
        return ["on", "off"]
    if choice == "auto":
        from rag.config import Settings
        from rag.cpu import cpu_flags, repacks_weights

        return ["on" if repacks_weights(Settings.from_env().llm_repack, cpu_flags()) else "off"]
    return [choice]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--quant", action="append", choices=["q4_k_m", *REQUANT_FTYPES])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per pair")
    parser.add_argument("--reps", type=int, default=2, help="repetitions in each process")
    parser.add_argument("--min-share", type=float, default=0.9, help="of 2 cores, per sample")
    parser.add_argument("--tries", type=int, default=4, help="attempts per sample")
    parser.add_argument("--idle-wait", type=float, default=120, help="max s to wait for idle")
    parser.add_argument(
        "--flash-attn",
        choices=["off", "on", "both"],
        default="off",
        help="llama.cpp's flash attention (the app runs without it); both: side by side",
    )
    parser.add_argument(
        "--repack",
        choices=["auto", "on", "off", "both"],
        default="auto",
        help="llama.cpp's weight repacking (auto: as the app decides on this CPU, "
        "RAG_LLM_REPACK); both: side by side",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--requantize", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = _parse()
    if args.worker:
        flash, repack = args.flash_attn == "on", args.repack == "on"
        result = worker(args.worker, args.reps, args.min_share, args.tries, flash, repack)
        print(json.dumps(result))
        return
    if args.requantize:
        src, dest, quant = args.requantize
        print(json.dumps(requantize_worker(Path(src), Path(dest), quant)))
        return
    builds = dict(b.split("=", 1) for b in args.build) or {"installed": "-"}
    models, requant = _models(args.quant or ["q4_k_m"], list(builds.values())[-1])
    flash_modes = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.flash_attn]
    repack_modes = _repack_modes(args.repack)
    pairs = [
        (b, q, fa, rp) for b in builds for q in models for fa in flash_modes for rp in repack_modes
    ]
    runs: dict[tuple[str, ...], list[dict[str, Any]]] = {pair: [] for pair in pairs}
    worker_args = ["--reps", str(args.reps), "--min-share", str(args.min_share)]
    worker_args += ["--tries", str(args.tries)]
    # Rounds interleave the pairs (ABAB, not AABB), so a busy spell on the machine hits
    # every pair alike instead of whichever ran during it.
    for _ in range(args.rounds):
        for build, quant, flash, repack in pairs:
            waited = _wait_idle(args.idle_wait)
            modes = ["--flash-attn", flash, "--repack", repack]
            run = _run(builds[build], ["--worker", str(models[quant]), *worker_args, *modes])
            runs[(build, quant, flash, repack)].append(run | {"waited_idle_s": waited})
    results = [
        {"build": b, "quant": q, "flash_attn": fa, "repack": rp, "model": str(models[q])}
        | _merge(runs[(b, q, fa, rp)])
        for b, q, fa, rp in pairs
    ]
    report = {
        "cpu": cpu_model(),
        "threads": THREADS,
        "rounds": args.rounds,
        "reps_per_round": args.reps,
        "units": "tokens/s: medians of rounds x reps samples; best: the highest sample; "
        "cpu_share: the share of 2 cores the worker got for each sample (1.0: all of both)",
        "summary": {_label(r): _summary(r) for r in results},
        "requantize": requant,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
