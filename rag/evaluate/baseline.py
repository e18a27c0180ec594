"""`--baseline REPORT`: what changed since an earlier report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.evaluate.metrics import is_number
from rag.records import UserError


def load_report(path: Path) -> dict[str, Any]:
    """An earlier `rag eval --report` file, checked enough to be compared with."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"baseline report not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"baseline report {path} is not readable JSON ({exc})") from None
    cases = data.get("cases") if isinstance(data, dict) else None
    if (
        not isinstance(data.get("summary") if isinstance(data, dict) else None, dict)
        or not isinstance(cases, list)
        or not all(isinstance(c, dict) and "id" in c and "passed" in c for c in cases)
    ):
        raise UserError(f"baseline report {path} is not a `rag eval --report` file")
    return data


def compare(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per-case changes (newly failing / passing, added, removed) and metric deltas."""
    before = {c["id"]: c for c in baseline["cases"]}
    after = {c["id"]: c for c in report["cases"]}
    common = [i for i in after if i in before]
    return {
        "baseline_date": baseline.get("settings", {}).get("date"),
        "newly_failing": [
            {"id": i, "reasons": after[i]["reasons"]}
            for i in common
            if before[i]["passed"] and not after[i]["passed"]
        ],
        "newly_passing": [
            {"id": i, "reasons_before": before[i].get("reasons", [])}
            for i in common
            if not before[i]["passed"] and after[i]["passed"]
        ],
        "added": [i for i in after if i not in before],
        "removed": [i for i in before if i not in after],
        "metrics": _metric_deltas(report["summary"], baseline["summary"]),
    }


def _metric_deltas(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deltas = {}
    for name, value in after.items():
        old = before.get(name)
        if is_number(value) or is_number(old):
            change = value - old if is_number(value) and is_number(old) else None
            deltas[name] = {"before": old, "after": value, "delta": change}
    return deltas
