"""The report and the baseline diff as text for the terminal."""

from __future__ import annotations

from typing import Any

_SUMMARY_ROWS = (
    ("hit@1", "answerable: an expected file ranked first"),
    ("hit@3", "answerable: an expected file in the first three files"),
    ("mrr", "answerable: mean 1/rank of the first expected file"),
    ("citation_validity", "citations that are verbatim, on their lines, retrieved"),
    ("cited_source_precision", "cited files that are expected (answered cases)"),
    ("must_contain_rate", "answerable cases whose answer has the facts"),
    ("refusal_accuracy", "unanswerable cases refused"),
    ("false_refusal_rate", "answerable cases refused"),
    ("answer_language_rate", "answers in the question's language"),
    ("latency_p50_ms", "total time per answer, median"),
    ("latency_p95_ms", "total time per answer, 95th percentile"),
    ("first_token_p50_ms", "time to first token, median"),
    ("first_token_p95_ms", "time to first token, 95th percentile"),
)


def format_report(report: dict[str, Any]) -> str:
    """The table of cases and the summary, for the terminal."""
    return "\n".join([*_case_table(report["cases"]), "", *_summary_lines(report)])


def _case_table(cases: list[dict[str, Any]]) -> list[str]:
    width = max([len(c["id"]) for c in cases] + [2])
    lines = [f"{'id':<{width}}  result  reasons"]
    for case in cases:
        verdict = "pass" if case["passed"] else "FAIL"
        lines.append(f"{case['id']:<{width}}  {verdict:<6}  {', '.join(case['reasons'])}".rstrip())
        lines += [f"{'':<{width}}          {detail}" for detail in case["details"]]
    return lines


def _summary_lines(report: dict[str, Any]) -> list[str]:
    summary, settings = report["summary"], report["settings"]
    lines = [
        f"{summary['cases']} cases: {summary['passed']} passed, {summary['failed']} failed "
        f"(backend {settings['backend']}, k {settings['k']}; {summary['answerable']} "
        f"answerable, {summary['unanswerable']} unanswerable, {summary['citations']} citations)"
    ]
    lines += [f"  {name:<24}{number(summary[name]):>9}   {about}" for name, about in _SUMMARY_ROWS]
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    return lines


def format_comparison(diff: dict[str, Any]) -> str:
    """Per-case changes and metric deltas against a baseline report."""
    lines = [f"compared with the baseline of {diff.get('baseline_date') or 'unknown date'}:"]
    for label, key, reasons in (
        ("newly failing", "newly_failing", "reasons"),
        ("newly passing", "newly_passing", "reasons_before"),
    ):
        entries = [f"{e['id']} ({', '.join(e[reasons])})" for e in diff[key]]
        lines.append(f"  {label}: {', '.join(entries) or 'none'}")
    for label in ("added", "removed"):
        if diff[label]:
            lines.append(f"  {label} cases: {', '.join(diff[label])}")
    lines.append(f"  {'metric':<24}{'before':>9}{'after':>9}{'delta':>9}")
    for name, change in diff["metrics"].items():
        before, after, delta = change["before"], change["after"], change["delta"]
        lines.append(f"  {name:<24}{number(before):>9}{number(after):>9}{_signed(delta):>9}")
    return "\n".join(lines)


def _signed(delta: float | None) -> str:
    if delta is None:
        return "n/a"
    if delta == 0:
        return "0"
    if isinstance(delta, int):
        return f"{delta:+d}"
    return f"{delta:+.3f}" if abs(delta) <= 1 else f"{delta:+.1f}"


def number(value: object) -> str:
    """A metric's value as shown: 3 decimals for rates, 1 for counts and times."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if value <= 1 else f"{value:.1f}"
    return str(value)
