"""`--min METRIC=VALUE`: the metrics a run must reach."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.evaluate.text import number
from rag.records import UserError

# Metrics that --min accepts, and whether higher is better. For lower-is-better metrics
# (rates of mistakes, counts of mistakes, latencies) the --min value is a ceiling.
METRICS: dict[str, bool] = {
    "pass_rate": True,
    "hit@1": True,
    "hit@3": True,
    "mrr": True,
    "citation_validity": True,
    "cited_source_precision": True,
    "must_contain_rate": True,
    "refusal_accuracy": True,
    "false_refusal_rate": False,
    "answer_language_rate": True,
    "failed": False,
    "errors": False,
    "invalid_citations": False,
    "answerable_refused": False,
    "unanswerable_answered": False,
    "latency_p50_ms": False,
    "latency_p95_ms": False,
    "first_token_p50_ms": False,
    "first_token_p95_ms": False,
}


@dataclass(frozen=True)
class Threshold:
    """--min METRIC=VALUE: a floor, or a ceiling for lower-is-better metrics."""

    metric: str
    value: float

    def missed(self, summary: dict[str, Any]) -> str | None:
        """Why the summary misses this threshold; None when it is met."""
        actual = summary.get(self.metric)
        if actual is None:
            return f"{self.metric} was not measured (n/a), required {self.value:g}"
        if METRICS[self.metric] and actual < self.value:
            return f"{self.metric} = {number(actual)}, below the minimum {self.value:g}"
        if not METRICS[self.metric] and actual > self.value:
            return f"{self.metric} = {number(actual)}, above the maximum {self.value:g}"
        return None


def parse_thresholds(specs: Sequence[str]) -> list[Threshold]:
    """METRIC=VALUE strings as thresholds; a UserError for unknown metrics or bad values."""
    thresholds = []
    for spec in specs:
        name, sep, raw = spec.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--min {spec}: expected METRIC=VALUE, e.g. hit@1=0.9")
        if name not in METRICS:
            raise UserError(
                f"--min {spec}: unknown metric {name!r}; use one of {', '.join(METRICS)}"
            )
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"--min {spec}: {raw.strip()!r} is not a number") from None
        thresholds.append(Threshold(name, value))
    return thresholds


def missed_thresholds(summary: dict[str, Any], thresholds: Sequence[Threshold]) -> list[str]:
    return [miss for t in thresholds if (miss := t.missed(summary))]
