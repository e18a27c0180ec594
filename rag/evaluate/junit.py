"""`--junit PATH`: the report as JUnit XML, one testcase per golden case."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rag.evaluate.cases import ERROR
from rag.evaluate.metrics import is_number


def junit_xml(report: dict[str, Any]) -> ET.ElementTree:
    """JUnit XML: one testcase per golden case; a failure (or error) carries the reasons."""
    cases = report["cases"]
    errors = sum(ERROR in c["reasons"] for c in cases)
    failures = sum(not c["passed"] for c in cases) - errors
    seconds = sum(c["timings"].get("total_ms", 0.0) for c in cases) / 1000
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "time": f"{seconds:.3f}",
    }
    settings = report["settings"]
    root = ET.Element("testsuites", {"name": "rag eval", **counts})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": Path(settings["golden_file"]).name,
            **counts,
            "skipped": "0",
            "timestamp": settings["date"],
        },
    )
    _junit_properties(suite, report)
    for case in cases:
        _junit_case(suite, case)
    ET.indent(root)
    return ET.ElementTree(root)


def _junit_properties(suite: ET.Element, report: dict[str, Any]) -> None:
    properties = ET.SubElement(suite, "properties")
    for key in ("backend", "k", "store", "golden_file"):
        ET.SubElement(properties, "property", name=key, value=str(report["settings"][key]))
    for name, value in report["summary"].items():
        if is_number(value):
            ET.SubElement(properties, "property", name=f"metric.{name}", value=str(value))


def _junit_case(suite: ET.Element, case: dict[str, Any]) -> None:
    seconds = case["timings"].get("total_ms", 0.0) / 1000
    element = ET.SubElement(
        suite,
        "testcase",
        classname=f"golden.{case['lang']}",
        name=case["id"],
        time=f"{seconds:.3f}",
    )
    if case["passed"]:
        return
    tag = "error" if ERROR in case["reasons"] else "failure"
    failure = ET.SubElement(
        element, tag, message="; ".join(case["reasons"]), type=case["reasons"][0]
    )
    failure.text = _xml_safe(
        "\n".join(
            [
                *case["details"],
                f"question: {case['question']}",
                f"retrieved: {', '.join(case['retrieved_files']) or '-'}",
                f"answer: {case['answer']}",
            ]
        )
    )


# characters XML 1.0 cannot hold, even escaped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def write_junit(report: dict[str, Any], path: Path) -> None:
    junit_xml(report).write(path, encoding="utf-8", xml_declaration=True)
