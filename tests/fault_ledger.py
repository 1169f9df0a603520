"""The fault-injection ledger: every test marked `fault` is one injected fault, every test marked `bad_input` one
bad input tried through the CLI (tests/faults/) or the HTTP API (the serve tests that send a request `serve` must
refuse); a passing test survived the fault or refused the input clearly. tests/conftest.py registers these hooks. Tests that compare records report how many went missing with `ledger.lost(n)` (and assert 0).

At the end of the session the table is printed; with DIABETICA_FAULTS_TABLE=PATH it is also written there as JSON
(bench/faults.py does this and prints the table of docs/reliability.md).

The counts travel on the test reports (user_properties), and only the process that reports the session counts them:
under pytest-xdist (`-n 2`) the workers run the tests and the controller, which gets every report, keeps the ledger.
"""

from __future__ import annotations

import json
import os

import pytest

_TALLY = {"fault": [0, 0], "bad_input": [0, 0]}  # kind: [tried, passed]
_LOST = {"records_lost": 0, "records_checked": 0}
_ROWS: list[dict] = []


_ROW, _LOST_KEY = "fault_ledger_row", "fault_ledger_lost"
_COUNTING = [True]  # False in an xdist worker: its reports are counted by the controller


class Ledger:
    def __init__(self, item):
        self._item = item

    def lost(self, missing: int, checked: int) -> None:
        """`missing` of `checked` records (ids, items, rows) did not come through a fault."""
        self._item.user_properties.append((_LOST_KEY, (missing, checked)))


@pytest.fixture
def ledger(request) -> Ledger:
    return Ledger(request.node)


def pytest_configure(config):
    _COUNTING[0] = not hasattr(config, "workerinput")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    kind = next((k for k in _TALLY if item.get_closest_marker(k)), None)
    if kind is None:
        return
    # one count per test: its call phase, or its setup when that failed or skipped
    if report.when == "call" or (report.when == "setup" and not report.passed):
        report.user_properties.append((_ROW, {"test": item.nodeid, "kind": kind, "outcome": report.outcome}))


def pytest_runtest_logreport(report):
    if not _COUNTING[0]:
        return
    for key, value in report.user_properties:
        if key == _ROW:
            _ROWS.append(value)
            if value["outcome"] != "skipped":
                _TALLY[value["kind"]][0] += 1
                _TALLY[value["kind"]][1] += value["outcome"] == "passed"
        elif key == _LOST_KEY and report.when == "teardown":  # the item's properties ride on each later report
            _LOST["records_lost"] += value[0]
            _LOST["records_checked"] += value[1]


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
