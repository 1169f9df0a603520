"""The fault-injection suite's table: faults injected and survived, bad inputs tried and refused clearly, records lost.

    python bench/faults.py [--out bench/results/faults_cpu.json] [-- extra pytest arguments]
    python bench/faults.py --ledger LEDGER.json   # the table of a run made with DIABETICA_FAULTS_TABLE=LEDGER.json

It runs `pytest tests/faults` and the fault and bad-input tests of the serve and cluster suites (kill -9
mid-step, mid-save, during export, curation and evaluation; damaged checkpoints; a full disk; endpoint
timeouts, 5xx, 429, malformed and empty replies; SIGTERM to one of two processes; lost and hung Slurm tasks;
bad inputs through every command and bad requests to `serve`) with the ledger (tests/fault_ledger.py)
writing its counts, then prints them as the markdown table of docs/reliability.md (between its
`<!-- faults-table:start -->` and `<!-- faults-table:end -->` markers), with the counts per test file, and saves them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tests/faults is all faults and CLI bad inputs; from the others, the tests marked so (serve's refused requests,
# lost and hung cluster tasks, executor options)
SUITE = ["tests/faults", "tests/serve/test_serve.py", "tests/serve/test_serve_conformance.py", "tests/serve/test_serve_limits.py",
         "tests/curate/test_clusters.py"]
ROWS = [("faults injected", "faults_injected"), ("faults survived", "faults_survived"),
        ("bad inputs tried", "bad_inputs_tried"), ("bad inputs refused with a clear error", "bad_inputs_refused_clearly"),
        ("records checked after a fault", "records_checked"), ("records lost", "records_lost"),
        ("skipped (with the reason in the pytest output)", "skipped")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "faults_cpu.json"))
    parser.add_argument("--ledger", help="print the table of this ledger (e.g. from the whole suite) instead of running")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()
    if args.ledger:
        result = json.loads(Path(args.ledger).read_text())
        _print_table(result)
        Path(args.out).write_text(json.dumps({"table": result["table"], "source": "the whole suite's ledger",
                                              "cpu_cores": os.cpu_count(), "tests": result["tests"]}, indent=2) + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.json"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", *SUITE, "-m", "fault or bad_input",
                               "-p", "no:cacheprovider", *args.pytest_args], cwd=REPO, env={**os.environ, "DIABETICA_FAULTS_TABLE": str(ledger)})
        seconds = time.perf_counter() - started
        if not ledger.is_file():
            print("the suite wrote no ledger (did it collect any test?)", file=sys.stderr)
            return 1
        result = json.loads(ledger.read_text())
    _print_table(result)
    print(f"\n{seconds:.0f} s on {os.cpu_count()} CPU cores; pytest exit code {done.returncode}")
    Path(args.out).write_text(json.dumps({"table": result["table"], "seconds": round(seconds),
                                          "cpu_cores": os.cpu_count(), "pytest_exit_code": done.returncode,
                                          "tests": result["tests"]}, indent=2) + "\n")
    return done.returncode


def _print_table(result: dict) -> None:
    table = result["table"]
    by_file = Counter((row["test"].split("::")[0], row["kind"], row["outcome"]) for row in result["tests"])
    print("\n| | count |\n|---|---:|")
    for label, key in ROWS:
        print(f"| {label} | {table[key]} |")
    print("\n| test file | kind | passed | failed | skipped |\n|---|---|---:|---:|---:|")
    for path, kind in sorted({(p, k) for p, k, _ in by_file}):
        counts = [by_file[(path, kind, outcome)] for outcome in ("passed", "failed", "skipped")]
        print(f"| {Path(path).name} | {kind} | " + " | ".join(map(str, counts)) + " |")


if __name__ == "__main__":
    sys.exit(main())
