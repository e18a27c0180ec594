"""The evaluator itself (rag.evaluate, `rag eval`): fast, no models, hand-made answers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rag import cli
from rag.config import Settings
from rag.evaluate import (
    ERROR,
    INVALID_CITATION,
    MISSING_FACT,
    NOT_REFUSED,
    NOT_RETRIEVED,
    REFUSED_WRONGLY,
    WRONG_FILE_FIRST,
    CaseResult,
    GoldenCase,
    build_report,
    citation_problems,
    compare,
    evaluate_case,
    format_comparison,
    format_report,
    junit_xml,
    load_golden,
    load_report,
    missed_thresholds,
    missing_facts,
    parse_thresholds,
    percentile,
    retrieval_metrics,
    score_case,
    summarize,
    write_junit,
)
from rag.records import Answer, Chunk, Citation, Document, Hit, UserError

GOLDEN = Path(__file__).resolve().parent / "qa" / "golden.jsonl"

# Two small "files". In a.txt file line 2 is blank, so text lines are file lines 1, 3, 4.
DOCS = {
    "a.txt": Document(
        path="a.txt",
        text="Alpha heading\nThe fund holds 2028 targets.\nThe chair is Hoang Duc Thao.",
        line_numbers=[1, 3, 4],
        language="en",
        content_hash="a",
    ),
    "b.txt": Document(
        path="b.txt",
        text="Beta heading\nDong Nai has about 90 startups.",
        line_numbers=[1, 2],
        language="en",
        content_hash="b",
    ),
}


def lookup(path: str) -> Document:
    if path not in DOCS:
        raise UserError("file not found")
    return DOCS[path]


def english(text: str) -> str:  # stands in for lingua: no model in these tests
    return "en"


def hit(path: str, rank: int) -> Hit:
    chunk = Chunk(
        chunk_id=f"{path}-{rank}",
        path=path,
        index=0,
        text=DOCS[path].text if path in DOCS else "x",
        start_char=0,
        end_char=10,
        first_line=1,
        last_line=2,
        language="en",
        content_hash="h",
    )
    return Hit(chunk=chunk, score=1.0 / rank, rank=rank)


def cite(n: int, path: str, line: int, quote: str) -> Citation:
    return Citation(n=n, file=path, path=path, lines=(line, line), quote=quote)


def answer(
    text: str,
    retrieved: Sequence[str],
    citations: Sequence[Citation] = (),
    refused: bool = False,
    total_ms: float = 100.0,
) -> Answer:
    return Answer(
        question="q",
        language="en",
        answer=text,
        refused=refused,
        citations=list(citations),
        retrieved=[hit(p, i) for i, p in enumerate(retrieved, start=1)],
        backend="none",
        timings={"retrieve_ms": 10.0, "first_token_ms": total_ms / 2, "total_ms": total_ms},
    )


def case(
    case_id: str,
    expected: Sequence[str] = (),
    any_of: Sequence[str] = (),
    all_of: Sequence[str] = (),
    lang: str = "en",
) -> GoldenCase:
    return GoldenCase(
        id=case_id,
        question=f"question {case_id}?",
        lang=lang,
        expected_sources=tuple(expected),
        must_contain_any=tuple(any_of),
        answerable=bool(expected),
        must_contain_all=tuple(all_of),
    )


CHAIR = cite(1, "a.txt", 4, "The chair is Hoang Duc Thao.")
STARTUPS = cite(1, "b.txt", 2, "Dong Nai has about 90 startups.")


def sample_results() -> list[CaseResult]:
    """Five judged cases, one of each kind of verdict."""
    pairs = [
        # right file first, fact present, valid citation: passes
        (
            case("ok", ["a.txt"], ["Hoang Duc Thao"]),
            answer("«The chair is Hoang Duc Thao.» [1]", ["a.txt", "b.txt"], [CHAIR], total_ms=100),
        ),
        # expected file second, fact missing; cites an unexpected (but retrieved) file
        (
            case("second", ["b.txt"], ["startups"], ["2028"]),
            answer("About 90 startups [1].", ["a.txt", "b.txt"], [STARTUPS], total_ms=200),
        ),
        # expected file never retrieved, and refused
        (
            case("missed", ["c.txt"], ["x"]),
            answer("Not found in the sources.", ["a.txt"], refused=True, total_ms=300),
        ),
        # unanswerable but answered, with a quote that is not in the file
        (
            case("answered"),
            answer(
                "It is 8 million [1].", ["a.txt"], [cite(1, "a.txt", 3, "8 million")], total_ms=400
            ),
        ),
        # unanswerable and refused: passes
        (case("refused"), answer("Not found.", ["b.txt"], refused=True, total_ms=500)),
    ]
    return [score_case(c, a, lookup, english) for c, a in pairs]


# ----------------------------------------------------------------------- golden file


def test_the_golden_set_loads() -> None:
    cases = load_golden(GOLDEN)
    assert len(cases) == 70
    assert len({c.id for c in cases}) == 70
    assert all(c.expected_sources for c in cases if c.answerable)
    assert any(c.history for c in cases)


VALID = {
    "id": "x-1",
    "question": "Who?",
    "lang": "en",
    "expected_sources": ["a.txt"],
    "must_contain_any": ["A"],
    "answerable": True,
}


def with_changes(**changes: Any) -> str:
    data = {k: v for k, v in {**VALID, **changes}.items() if v is not ...}
    return json.dumps(data)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x-2", "question": ', "bad JSON"),
        ("[1, 2]", "bad JSON: a case must be an object"),
        (with_changes(lang=...), 'missing key "lang"'),
        (with_changes(answerable=...), 'missing key "answerable"'),
        (with_changes(must_contain=["A"]), 'unknown key "must_contain"'),
        (with_changes(answerable="yes"), 'wrong type: "answerable" must be true or false'),
        (with_changes(expected_sources="a.txt"), 'wrong type: "expected_sources" must be a list'),
        (with_changes(must_contain_any=[30]), '"must_contain_any" must be a list of strings'),
        (with_changes(history=[{"role": "bot", "content": "hi"}]), 'wrong type: "history"'),
        (with_changes(id=7), 'wrong type: "id" must be a string'),
        (with_changes(question=" "), '"question" is empty'),
        (with_changes(lang="xx"), 'unknown lang "xx"'),
        (with_changes(answerable=False), '"answerable": false but "expected_sources"'),
        (with_changes(expected_sources=[]), '"answerable": true needs at least one file'),
        (with_changes(must_contain_any=[]), '"answerable": true needs at least one fact'),
        (with_changes(must_not_contain=[" "]), '"must_not_contain" holds an empty string'),
        (with_changes(id="x-1"), "duplicate id 'x-1' (first on line 1)"),
    ],
)
def test_malformed_golden_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    golden = tmp_path / "golden.jsonl"
    # a blank line in between: line numbers are the file's, not the cases'
    golden.write_text(json.dumps(VALID) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        load_golden(golden)
    text = str(error.value)
    assert text.startswith(f"{golden}, line 3: ")
    assert message in text
    assert "\n" not in text


def test_empty_or_missing_golden_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="golden file not found"):
        load_golden(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n \n", encoding="utf-8")
    with pytest.raises(UserError, match="no cases"):
        load_golden(tmp_path / "empty.jsonl")


def test_optional_keys_are_read(tmp_path: Path) -> None:
    history = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    line = with_changes(must_contain_all=["B"], history=history, tags=["followup"])
    (tmp_path / "g.jsonl").write_text(line, encoding="utf-8")
    (loaded,) = load_golden(tmp_path / "g.jsonl")
    assert loaded.must_contain_all == ("B",)
    assert loaded.history == tuple(history)
    assert loaded.tags == ("followup",)


# ------------------------------------------------------------------ per-case verdicts


def test_verdicts_and_reasons() -> None:
    ok, second, missed, answered, refused = sample_results()
    assert ok.passed and ok.reasons == []
    assert second.reasons == [WRONG_FILE_FIRST, MISSING_FACT]
    assert 'no "2028"' in second.details[1]
    assert missed.reasons == [NOT_RETRIEVED, REFUSED_WRONGLY]
    assert answered.reasons == [NOT_REFUSED, INVALID_CITATION]
    assert refused.passed


def test_citation_problems() -> None:
    retrieved = ["a.txt", "b.txt"]
    assert citation_problems(CHAIR, retrieved, lookup) == []
    assert citation_problems(CHAIR, ["b.txt"], lookup) == ["a.txt was not retrieved"]
    wrong_line = cite(1, "a.txt", 3, CHAIR.quote)
    assert citation_problems(wrong_line, retrieved, lookup) == ["quote not on lines 3-3"]
    not_verbatim = cite(1, "a.txt", 4, "The chair is Hoang Duc Thao")  # fine: a substring
    assert citation_problems(not_verbatim, retrieved, lookup) == []
    invented = cite(1, "a.txt", 4, "The chair is someone else.")
    assert citation_problems(invented, retrieved, lookup) == ["quote not in a.txt"]
    outside = cite(1, "a.txt", 9, CHAIR.quote)
    assert citation_problems(outside, retrieved, lookup) == [
        "lines 9-9 outside the file's text (1-4)"
    ]
    gone = cite(1, "c.txt", 1, "x")
    assert citation_problems(gone, ["c.txt"], lookup) == ["c.txt unreadable: file not found"]


def test_a_marker_without_a_citation_is_an_invalid_citation() -> None:
    result = score_case(
        case("c", ["a.txt"], ["Thao"]),
        answer("Hoang Duc Thao [1] chairs it [2].", ["a.txt"], [CHAIR]),
        lookup,
        english,
    )
    assert result.reasons == [INVALID_CITATION]
    assert [c.valid for c in result.citations] == [True, False]
    assert "[2] in the answer has no citation" in result.details[0]


def test_must_contain_is_case_insensitive_and_ignores_markers() -> None:
    assert missing_facts("The FUND [1].", ["fund"]) == []
    assert missing_facts("by 2030 [1]", [" 30"]) == ['none of " 30"']  # " 30" is not "2030"
    assert missing_facts("about 30 new", [" 30"]) == []
    assert missing_facts("see [42]", ["42"]) == ['none of "42"']  # a marker is not a fact
    assert missing_facts("Hoàng Đức Thảo", ["hoa\u0300ng"]) == []  # decomposed accents
    assert missing_facts("140 and 16", ["140"], ["140", "16", "2024"]) == ['no "2024"']
    assert missing_facts("anything", []) == []


def test_an_unexpected_exception_fails_only_its_case() -> None:
    class Broken:
        def ask(self, question: str, **kwargs: Any) -> Answer:
            raise RuntimeError("chroma went away\nwith details")

    result = evaluate_case(Broken(), case("x", ["a.txt"]), lookup)
    assert result.reasons == [ERROR]
    assert result.details == ["error: RuntimeError: chroma went away"]


def test_a_user_error_stops_the_run() -> None:
    class NoStore:
        def ask(self, question: str, **kwargs: Any) -> Answer:
            raise UserError("no index in .rag; run `rag index` first")

    with pytest.raises(UserError):
        evaluate_case(NoStore(), case("x", ["a.txt"]), lookup)


# ---------------------------------------------------------------------------- metrics


def test_summary_arithmetic() -> None:
    summary = summarize(sample_results(), backend="local")
    assert (summary["cases"], summary["passed"], summary["failed"]) == (5, 2, 3)
    assert (summary["answerable"], summary["unanswerable"]) == (3, 2)
    # ranks of the first expected file: 1, 2, none
    assert summary["hit@1"] == pytest.approx(1 / 3)
    assert summary["hit@3"] == pytest.approx(2 / 3)
    assert summary["mrr"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    # citations: ok's (valid), second's (valid), answered's (not verbatim)
    assert (summary["citations"], summary["invalid_citations"]) == (3, 1)
    assert summary["citation_validity"] == pytest.approx(2 / 3)
    # answered answerable cases: ok cites a.txt (expected), second cites b.txt (expected)
    assert summary["cited_source_precision"] == 1.0
    assert summary["must_contain_rate"] == pytest.approx(1 / 3)
    assert summary["refusal_accuracy"] == 0.5
    assert summary["false_refusal_rate"] == pytest.approx(1 / 3)
    assert (summary["answerable_refused"], summary["unanswerable_answered"]) == (1, 1)
    # the three answers that were not refused were all "detected" as English
    assert summary["answer_language_rate"] == 1.0
    assert summary["latency_p50_ms"] == 300.0
    assert summary["latency_p95_ms"] == 480.0
    assert summary["first_token_p50_ms"] == 150.0
    assert summary["notes"] == []


def test_cited_source_precision_counts_unexpected_files() -> None:
    result = score_case(
        case("c", ["b.txt"], ["Thao"]),
        answer(
            "Hoang Duc Thao [1], 90 startups [2].",
            ["b.txt", "a.txt"],
            [CHAIR, cite(2, "b.txt", 2, STARTUPS.quote)],
        ),
        lookup,
        english,
    )
    assert result.passed  # citing an unexpected file is not a failure, only less precise
    assert summarize([result], "none")["cited_source_precision"] == 0.5


def test_nothing_to_measure_is_none_and_extractive_runs_get_a_note() -> None:
    refused = score_case(case("r"), answer("No.", ["a.txt"], refused=True), lookup, english)
    summary = summarize([refused], backend="none")
    assert summary["hit@1"] is None and summary["citation_validity"] is None
    assert summary["answer_language_rate"] is None
    assert "extractive" in summary["notes"][0]


def test_retrieval_metrics_on_plain_file_lists() -> None:
    rankings = [(["a", "b"], ["a"]), (["b", "c", "a"], ["a"]), ([], ["a"]), (["x/b"], ["b"])]
    metrics = retrieval_metrics(rankings)
    assert metrics["hit@1"] == 0.5  # "x/b" matches the expected file name "b"
    assert metrics["hit@3"] == 0.75
    assert metrics["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 1) / 4)
    assert retrieval_metrics([]) == {"hit@1": None, "hit@3": None, "mrr": None}


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1, 101))), 95) == pytest.approx(95.05)


# ------------------------------------------------------------------------- thresholds


def test_thresholds_floor_ceiling_and_not_measured() -> None:
    summary = {"hit@1": 0.85, "false_refusal_rate": 0.1, "citation_validity": None}
    thresholds = parse_thresholds(
        ["hit@1=0.9", "false_refusal_rate=0.05", "citation_validity=1", "hit@1=0.8"]
    )
    assert missed_thresholds(summary, thresholds) == [
        "hit@1 = 0.850, below the minimum 0.9",
        "false_refusal_rate = 0.100, above the maximum 0.05",
        "citation_validity was not measured (n/a), required 1",
    ]
    assert missed_thresholds({"hit@1": 0.9}, parse_thresholds(["hit@1=0.9"])) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hit@5=0.9", "unknown metric 'hit@5'"),
        ("hit@1", "expected METRIC=VALUE"),
        ("=0.9", "expected METRIC=VALUE"),
        ("hit@1=high", "'high' is not a number"),
    ],
)
def test_bad_thresholds_are_errors(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_thresholds([spec])


class FakeEngine:
    """Refuses every question after retrieving a.txt: no model, no document reads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.asked: list[tuple[str, list[dict[str, str]], str | None, int | None]] = []

    def ask(
        self,
        question: str,
        history: Sequence[dict[str, str]] | None = None,
        llm: str | None = None,
        k: int | None = None,
    ) -> Answer:
        self.asked.append((question, list(history or []), llm, k))
        return answer("Not found in the sources.", ["a.txt"], refused=True)


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeEngine]:
    """A two-case golden file and `rag eval` wired to a FakeEngine."""
    history = [{"role": "user", "content": "First?"}, {"role": "assistant", "content": "A."}]
    golden = tmp_path / "golden.jsonl"
    lines = [
        dict(VALID, history=history),
        dict(VALID, id="x-2", answerable=False, expected_sources=[]),
    ]
    golden.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    engine = FakeEngine(Settings.from_env(docs_dir=tmp_path, store_dir=tmp_path / "store", top_k=4))
    monkeypatch.setattr(cli, "_engine", lambda args: engine)
    return golden, engine


def test_cli_eval_asks_every_case_with_its_history(
    fake_cli: tuple[Path, FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    golden, engine = fake_cli
    assert cli.main(["eval", str(golden), "--llm", "none", "--json"]) == 0
    assert engine.asked[0] == (
        "Who?",
        [{"role": "user", "content": "First?"}, {"role": "assistant", "content": "A."}],
        "none",
        4,
    )
    report = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in report["cases"]] == ["x-1", "x-2"]
    assert report["cases"][0]["reasons"] == [REFUSED_WRONGLY]
    assert report["settings"]["backend"] == "none" and report["settings"]["k"] == 4
    assert report["summary"]["hit@1"] == 1.0 and report["summary"]["refusal_accuracy"] == 1.0


def test_cli_eval_exit_codes(
    fake_cli: tuple[Path, FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    golden, _ = fake_cli
    met = ["--min", "hit@1=0.9", "--min", "refusal_accuracy=1"]
    assert cli.main(["eval", str(golden), "--llm", "none", *met]) == 0
    table = capsys.readouterr().out
    assert "x-1  FAIL    refused wrongly" in table and "x-2  pass" in table
    missed = [*met, "--min", "false_refusal_rate=0", "--min", "must_contain_rate=0.5"]
    assert cli.main(["eval", str(golden), "--llm", "none", *missed]) == 1
    err = capsys.readouterr().err
    assert "threshold missed: false_refusal_rate = 1.000, above the maximum 0" in err
    assert "threshold missed: must_contain_rate = 0.000, below the minimum 0.5" in err
    assert "hit@1" not in err


def test_cli_eval_errors_are_one_line(
    fake_cli: tuple[Path, FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    golden, engine = fake_cli
    assert cli.main(["eval", str(golden), "--min", "recall=0.9"]) == 1
    assert capsys.readouterr().err.startswith("error: --min recall=0.9: unknown metric 'recall'")
    golden.write_text(golden.read_text(encoding="utf-8") + '{"id": "x-3"}\n', encoding="utf-8")
    assert cli.main(["eval", str(golden)]) == 1
    assert capsys.readouterr().err == f'error: {golden}, line 3: missing key "question"\n'
    assert engine.asked == []  # nothing is asked before the arguments are known to be good


def test_cli_eval_writes_report_junit_and_compares(
    fake_cli: tuple[Path, FakeEngine], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden, _ = fake_cli
    first, xml = tmp_path / "first.json", tmp_path / "eval.xml"
    assert cli.main(["eval", str(golden), "--report", str(first), "--junit", str(xml)]) == 0
    assert load_report(first)["summary"]["cases"] == 2
    assert ET.parse(xml).getroot().get("failures") == "1"
    capsys.readouterr()
    assert cli.main(["eval", str(golden), "--baseline", str(first)]) == 0
    out = capsys.readouterr().out
    assert "newly failing: none" in out and "newly passing: none" in out


# ------------------------------------------------------------------------------ JUnit


def sample_report() -> dict[str, Any]:
    results = sample_results()
    errored = CaseResult(case("boom", ["a.txt"]))
    errored.fail(ERROR, "RuntimeError: \x00bad byte")
    settings = Settings.from_env(docs_dir="docs", store_dir="store")
    return build_report([*results, errored], settings, Path("qa/golden.jsonl"), "none")


def test_junit_xml_structure(tmp_path: Path) -> None:
    path = tmp_path / "eval.xml"
    write_junit(sample_report(), path)
    root = ET.parse(path).getroot()  # parses: control characters were replaced
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "golden.jsonl"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "3", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "ok",
        "second",
        "missed",
        "answered",
        "refused",
        "boom",
    ]
    assert cases[0].get("classname") == "golden.en" and cases[0].get("time") == "0.100"
    assert list(cases[0]) == []
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == "wrong file first; missing fact"
    assert failure.get("type") == WRONG_FILE_FIRST
    assert "question: question second?" in (failure.text or "")
    assert cases[5].find("error") is not None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["backend"] == "none"
    assert float(properties["metric.hit@1"]) == pytest.approx(0.25)


def test_junit_is_valid_for_an_all_passing_run() -> None:
    report = sample_report()
    report["cases"] = [c for c in report["cases"] if c["passed"]]
    suite = junit_xml(report).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"


def test_human_report_has_a_table_and_the_summary() -> None:
    text = format_report(sample_report())
    assert "second    FAIL    wrong file first, missing fact" in text
    assert "6 cases: 2 passed, 4 failed (backend none" in text
    assert "hit@1" in text and "0.250" in text
    assert "note: answer_language_rate" in text


# --------------------------------------------------------------------------- baseline


def test_baseline_diff() -> None:
    before = sample_report()
    after = json.loads(json.dumps(before))
    cases = {c["id"]: c for c in after["cases"]}
    cases["ok"].update(passed=False, reasons=[MISSING_FACT])
    cases["second"].update(passed=True, reasons=[])
    after["cases"] = [c for c in after["cases"] if c["id"] != "boom"]
    after["cases"].append({**cases["refused"], "id": "new"})
    after["summary"]["hit@1"] = 0.5
    diff = compare(after, before)
    assert diff["newly_failing"] == [{"id": "ok", "reasons": [MISSING_FACT]}]
    assert diff["newly_passing"] == [
        {"id": "second", "reasons_before": [WRONG_FILE_FIRST, MISSING_FACT]}
    ]
    assert (diff["added"], diff["removed"]) == (["new"], ["boom"])
    assert diff["metrics"]["hit@1"] == {"before": 0.25, "after": 0.5, "delta": 0.25}
    assert diff["metrics"]["cases"]["delta"] == 0
    text = format_comparison(diff)
    assert "newly failing: ok (missing fact)" in text
    assert "newly passing: second (wrong file first, missing fact)" in text
    assert "added cases: new" in text and "removed cases: boom" in text
    assert "+0.250" in text


def test_a_bad_baseline_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="baseline report not found"):
        load_report(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="not readable JSON"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"summary": {}, "cases": [{"x": 1}]}', encoding="utf-8")
    with pytest.raises(UserError, match="not a `rag eval --report` file"):
        load_report(tmp_path / "other.json")


def test_a_follow_up_may_repeat_the_figures_the_user_asked_about_before() -> None:
    # "In 2025?" then "And Dong Nai?": the answer's 2025 comes from the conversation,
    # as the answer path allows it (rag.stages.check), so the claim is supported
    class Answers:
        def ask(self, question: str, **kwargs: Any) -> Answer:
            return answer("In 2025 Dong Nai has about 90 startups [1].", ["b.txt"], [STARTUPS])

    history = (
        {"role": "user", "content": "How many startups did Can Tho have in 2025?"},
        {"role": "assistant", "content": "About 40 [1]."},
    )
    follow_up = replace(case("x", ["b.txt"], ["90"]), question="And Dong Nai?", history=history)
    assert evaluate_case(Answers(), follow_up, lookup, detect=english).claim_checks == [True]
    alone = replace(follow_up, history=())
    assert evaluate_case(Answers(), alone, lookup, detect=english).claim_checks == [False]
