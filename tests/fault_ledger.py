"""The fault-injection ledger: every test marked `fault` is one injected fault, every test marked `bad_input` one
bad input tried through the CLI (tests/faults/) or the HTTP API (the serve tests that send a request `serve` must
refuse); a passing test survived the fault or refused the input clearly. tests/conftest.py registers these hooks. Tests that compare records report how many went missing with `ledger.lost(n)` (and assert 0).

At the end of the session the table is printed; with DIABETICA_FAULTS_TABLE=PATH it is also written there as JSON
(bench/faults.py does this and prints the table of docs/reliability.md).
"""

from __future__ import annotations

import json
import os

import pytest

_TALLY = {"fault": [0, 0], "bad_input": [0, 0]}  # kind: [tried, passed]
_LOST = {"records_lost": 0, "records_checked": 0}
_ROWS: list[dict] = []


class Ledger:
    def lost(self, missing: int, checked: int) -> None:
        """`missing` of `checked` records (ids, items, rows) did not come through a fault."""
        _LOST["records_lost"] += missing
        _LOST["records_checked"] += checked


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    kind = next((k for k in _TALLY if item.get_closest_marker(k)), None)
    if kind is None:
        return
    # one count per test: its call phase, or its setup when that failed or skipped
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped:
            _ROWS.append({"test": item.nodeid, "kind": kind, "outcome": "skipped"})
            return
        _TALLY[kind][0] += 1
        _TALLY[kind][1] += report.passed
        _ROWS.append({"test": item.nodeid, "kind": kind, "outcome": report.outcome})


def table() -> dict:
    return {"faults_injected": _TALLY["fault"][0], "faults_survived": _TALLY["fault"][1],
            "bad_inputs_tried": _TALLY["bad_input"][0], "bad_inputs_refused_clearly": _TALLY["bad_input"][1],
            **_LOST, "skipped": sum(r["outcome"] == "skipped" for r in _ROWS)}


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    figures = table()
    terminalreporter.write_sep("-", "fault-injection ledger")
    for name, value in figures.items():
        terminalreporter.write_line(f"{name.replace('_', ' '):28s} {value}")
    path = os.environ.get("DIABETICA_FAULTS_TABLE")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"table": figures, "tests": _ROWS}, f, indent=2)
