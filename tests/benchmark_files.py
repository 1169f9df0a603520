"""Where the paper's public benchmark files are: DIABETICA_BENCHMARKS, else ../shared/benchmarks/diabetica beside the
checkout. Tests import it from here (`from conftest import` would find whichever conftest.py was imported last)."""

import os
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DIABETICA = Path(os.environ.get("DIABETICA_BENCHMARKS") or SHARED / "benchmarks" / "diabetica")
