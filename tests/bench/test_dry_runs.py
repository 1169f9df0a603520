"""Benchmark scripts' --dry-run modes: every measurement runs once at tiny shapes on CPU, so a script that no
longer matches the code it measures fails here, not on the next (scarce) accelerator session."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(script: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow  # a fresh process importing jax and compiling eight tiny programs: about 11 s
def test_attention_backends_dry_run_prints_every_row():
    out = _dry_run("attention_backends.py")
    assert re.match(r"cuDNN private API takes offsets \(packed layouts\): (True|False)\n", out), out
    for row in ("causal", "segments", "packed M=2", "packed M=16"):
        assert re.search(rf"^  {re.escape(row)} +xla +ran once", out, re.M), (row, out)
        assert re.search(rf"^  {re.escape(row)} +cudnn +skipped: no NVIDIA GPU", out, re.M), (row, out)
    # the packed rows: attention under the mask rebuilt from lengths and offsets agrees with segment ids
    layout_errors = [float(e) for e in re.findall(r"^  packed M=\d+ +layout max\|d\| vs xla (\S+)", out, re.M)]
    assert len(layout_errors) == 2 and max(layout_errors) < 1e-2, out


def _has_revision(rev: str) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True)
    return found.returncode == 0


@pytest.mark.slow  # a dozen fresh processes, each importing jax and compiling tiny programs: a few minutes
def test_gpu_session_dry_run_runs_every_step_and_prints_one_table(tmp_path):
    """bench/gpu_session.sh --dry-run: every benchmark of the device call, at tiny shapes on CPU, with the
    before tree made from git; the table lists each decode and training row beside `before`."""
    script = (ROOT / "bench" / "gpu_session.sh").read_text()
    before_rev = re.search(r"^BEFORE_REV=(\w+)", script, re.M).group(1)
    if not _has_revision(before_rev):
        pytest.skip(f"needs a git checkout holding revision {before_rev} (the session's before tree)")
    env = {**os.environ, "OUT": str(tmp_path)}
    env.pop("XLA_FLAGS", None)  # the subprocesses run one CPU device, as the device call runs one GPU
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "failed, exit" not in out and "stopped at its limit" not in out, out
    decode = [json.loads(line) for line in (tmp_path / "generate.jsonl").read_text().splitlines()]
    assert {(r["label"], r["batch"]) for r in decode} == {
        (label, b) for label in ("before", "before, bf16 weights", "cast once + carried cache", "+ unrolled layers")
        for b in (1, 2)}
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(train) == 4 and all(r["tokens_per_s"] > 0 for r in train)
    table = (tmp_path / "table.md").read_text()
    for label in ("| before |", "| cast once + carried cache |", "packed attention", "+ bf16 first moment"):
        assert label in table, table
    assert "1.00x" in table  # the before rows are the reference of their own columns
