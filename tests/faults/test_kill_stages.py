"""kill -9 during export, curation and evaluation, then the same command again: it finishes, and what it wrote is
what an uninterrupted run writes, nothing lost or duplicated; the killed run leaves nothing that passes for a
finished result.

The kill lands at a chosen point, never at random. Where the stage shows from outside that it is in the middle
of its work, the test watches for that and kills it: a curation's spill file of its second unit, an endpoint
request of the evaluation. Where it does not (an export takes a second), the CLI runs under KILL_AT_CALL, which
wraps one named function of the package so that the process SIGKILLs itself when that function is called the
N-th time; the function is the point (an export's or a curation's second shard file, an evaluation's second
report), so the package carries no test hook.

Uninterrupted references run in this process (`main`, the same command); killed runs and reruns are
subprocesses of the real CLI.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from train_helpers import REPO, cli_env, run_cli, tiny_config

from diabetica_jax import hf
from diabetica_jax.cli import main
from diabetica_jax.hf import HFCheckpointError

pytestmark = pytest.mark.fault

# python -c KILL_AT_CALL MODULE.NAME N ARGS...: the CLI with ARGS, SIGKILLed when MODULE.NAME is called the N-th
# time (before that call runs). A name that no longer exists fails the command, and the test with it.
KILL_AT_CALL = """
import importlib, os, signal, sys
module_name, name = sys.argv[1].rsplit(".", 1)
nth = int(sys.argv[2])
module = importlib.import_module(module_name)
original = getattr(module, name)
calls = 0
def wrapped(*args, **kwargs):
    global calls
    calls += 1
    if calls == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(module, name, wrapped)
from diabetica_jax.cli import main
sys.exit(main(sys.argv[3:]))
"""
CLI = [sys.executable, "-m", "diabetica_jax.cli"]
DEADLINE = 240  # seconds a child may take to reach the kill point, or to finish


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """`command` on one CPU device; past the deadline it is killed and the test fails with its stderr."""
    try:
        return run_cli(command, devices=1, timeout=DEADLINE)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        shown = " ".join(arg for arg in command if "\n" not in arg)  # not KILL_AT_CALL's code
        pytest.fail(f"{shown} still running after {DEADLINE} s (killed):\n{stderr[-4000:]}")


def _killed_at_call(target: str, nth: int, args: list[str]) -> None:
    """Run the CLI with `args` until `target`'s nth call kills it; fail unless SIGKILL ended it."""
    proc = _run([sys.executable, "-c", KILL_AT_CALL, target, str(nth), *args])
    assert proc.returncode == -signal.SIGKILL, (
        f"expected a SIGKILL at call {nth} of {target}, got exit code {proc.returncode}:\n{proc.stderr[-4000:]}")


def _killed_when(args: list[str], reached, what: str, log: Path) -> None:
    """Start the CLI with `args`, SIGKILL it as soon as `reached()` is true; fail (the child killed, its stderr in
    the message) if it exits first or the deadline passes."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(CLI + args, env=cli_env(1), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + DEADLINE
        while not reached():
            if proc.poll() is not None:
                pytest.fail(f"the command exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {DEADLINE} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"it finished before the kill:\n{log.read_text()[-4000:]}"


def _rerun(args: list[str]) -> None:
    proc = _run(CLI + args)
    assert proc.returncode == 0, f"the rerun failed ({proc.returncode}):\n{proc.stderr[-4000:]}"


# -- export ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(hf_checkpoints, tmp_path_factory) -> Path:
    """A two-step training run of a tiny Qwen2 checkpoint (its source has a generation_config.json to copy), with a
    checkpoint after each step."""
    from diabetica_jax.train.loop import train

    run = tmp_path_factory.mktemp("export") / "run"
    train(tiny_config(hf_checkpoints["qwen2_untied"], "loop.steps=2", "loop.checkpoint_every=1"), run, progress=False)
    return run


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.slow
def test_export_killed_after_its_first_shard_leaves_no_checkpoint_and_the_rerun_writes_the_same_files(
        trained_run, tmp_path, ledger):
    from transformers import AutoConfig

    export = ["export", "--run-dir", str(trained_run), "--max-shard-size", "40KB"]
    reference, out = tmp_path / "reference", tmp_path / "hf"
    assert main([*export, "--out", str(reference)]) == 0  # step 2, the latest
    # OUT already holds an earlier export of step 1: the same files, other weights
    assert main([*export, "--step", "1", "--out", str(out)]) == 0
    earlier = _files(out)
    assert sorted(earlier) == sorted(_files(reference)) and earlier != _files(reference)

    _killed_at_call("diabetica_jax.hf.exporter.write_safetensors", 2, [*export, "--out", str(out)])
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) == 1 and shards[0].startswith("model-00001-of-"), shards  # killed mid-weights
    # step 1's config, index and other shards are gone: no loader reads a mix of the two steps
    assert not (out / "config.json").exists() and not (out / "model.safetensors.index.json").exists()
    with pytest.raises(ValueError, match="config.json"):  # transformers
        AutoConfig.from_pretrained(out)
    with pytest.raises(HFCheckpointError, match="config.json"):  # this package's loader
        hf.load(out, progress=False)

    _rerun([*export, "--out", str(out)])
    expected, written = _files(reference), _files(out)
    assert len(expected) > 5 and any(name.startswith("model-00002-of-") for name in expected)
    wrong = sorted(name for name in expected if written.get(name) != expected[name])
    ledger.lost(len(wrong), len(expected))
    assert not wrong, f"differ from the uninterrupted export: {wrong}"
    assert sorted(written) == sorted(expected)  # no stray file (a partial config, the earlier weights)


# -- curation -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Four synthetic JSONL files (four scan units), each with planted duplicates, off-topic and broken rows."""
    from diabetica_jax.demo.synthetic_qa import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        write_corpus(root / f"part{i}.jsonl", 300, seed=i)
    return [root / f"part{i}.jsonl" for i in range(4)]


def _curate_args(files: list[Path], out: Path) -> list[str]:
    inputs = ", ".join(f"{{path: {json.dumps(str(f))}}}" for f in files)
    return ["curate", "demo=false", f"inputs=[{inputs}]", "output.hf_dataset=false", "engine.workers=1",
            "--out", str(out)]


@pytest.fixture(scope="module")
def curated_reference(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curated") / "reference"
    assert main(_curate_args(corpus, out)) == 0
    return out


def _curation(out: Path) -> tuple[list[str], list[str], dict]:
    """(kept ids in shard order, rejects.jsonl lines, data card without its timings) of a finished curation."""
    from diabetica_jax.data.shards import shard_records

    card = json.loads((out / "data_card.json").read_text(encoding="utf-8"))
    card.pop("seconds")
    return [r.id for r in shard_records(out)], (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines(), card


def _assert_same_curation(out: Path, reference: Path, ledger) -> None:
    kept, rejects, card = _curation(out)
    ref_kept, ref_rejects, ref_card = _curation(reference)
    assert len(ref_kept) > 1000 and len(ref_rejects) > 50
    missing = len(set(ref_kept) - set(kept)) + sum((Counter(ref_rejects) - Counter(rejects)).values())
    ledger.lost(missing, len(ref_kept) + len(ref_rejects))
    assert missing == 0
    assert len(kept) == len(set(kept)) and kept == ref_kept  # same ids, in order, none twice
    assert rejects == ref_rejects  # same rejected records, stages and reasons, none twice
    assert card == ref_card
    assert not (out / "work").exists() and not list(out.glob("*.partial"))


def test_curation_killed_mid_scan_reruns_to_the_same_kept_and_rejected_records(corpus, curated_reference, tmp_path,
                                                                               ledger):
    out = tmp_path / "curated"
    args = _curate_args(corpus, out)
    # unit 1's spill file appears when unit 0 is done and unit 1 starts; units 2 and 3 are still to come
    _killed_when(args, lambda: (out / "work" / "unit-000001.spill").exists(), "scan of the second unit",
                 tmp_path / "stderr.txt")
    assert (out / "work" / "unit-000000.spill").is_file()
    assert not (out / "shards").exists() and not (out / "data_card.json").exists()
    _rerun(args)
    _assert_same_curation(out, curated_reference, ledger)


@pytest.mark.slow
def test_curation_killed_between_shards_keeps_the_earlier_shards_whole_and_reruns_to_the_same_records(
        corpus, curated_reference, tmp_path, ledger):
    from diabetica_jax.data.shards import shard_records

    out = tmp_path / "curated"
    assert main(_curate_args(corpus[:2], out)) == 0  # an earlier, finished curation of two of the files in OUT
    earlier_ids = [r.id for r in shard_records(out)]
    assert 0 < len(earlier_ids) < len(_curation(curated_reference)[0])

    args = _curate_args(corpus, out)
    _killed_at_call("array_record.python.array_record_module.ArrayRecordWriter", 2, args)  # shard 1 of 2 written
    # the shards readers see are the earlier run's, whole and unmixed; its card is gone: no finished curation
    assert [r.id for r in shard_records(out)] == earlier_ids
    assert not (out / "data_card.json").exists()
    assert len(list((out / "work" / "shards").glob("curated-*"))) == 1  # the new first shard, set aside
    _rerun(args)
    _assert_same_curation(out, curated_reference, ledger)
    assert not (out / "shards.partial").exists()


# -- evaluation -----------------------------------------------------------------------------------------------

EVAL_TASKS = ("mcq", "cloze", "dialog")


def _answer(messages, model) -> str:
    """A deterministic reply per prompt: a letter and some words."""
    crc = zlib.crc32(messages[-1]["content"].encode())
    return f"{'ABCDE'[crc % 5]}. Check glucose {crc % 97} times."


class Gate:
    """The fake endpoint's reply function: answers until request `block_from` arrives, then holds that request and
    every later one (`arrived` is set) until `open()`."""

    def __init__(self, block_from: int | None = None):
        self.block_from, self.count = block_from, 0
        self.arrived, self.released, self.lock = threading.Event(), threading.Event(), threading.Lock()

    def __call__(self, messages, model):
        with self.lock:
            n, self.count = self.count, self.count + 1
        if self.block_from is not None and n >= self.block_from:
            self.arrived.set()
            self.released.wait(DEADLINE)
        return _answer(messages, model)

    def open(self):
        self.block_from = None
        self.released.set()


def _eval_args(url: str, out: Path, *overrides: str) -> list[str]:
    return ["eval", str(REPO / "eval" / "demo.yaml"), "--out", str(out), "--model", "openai:fake", "--endpoint", url,
            *overrides]


@pytest.fixture(scope="module")
def eval_reference(tmp_path_factory) -> tuple[Path, int]:
    """(the uninterrupted evaluation's output, the requests it sent)."""
    out = tmp_path_factory.mktemp("eval") / "reference"
    with FakeOpenAI(_answer) as server:
        assert main(_eval_args(server.base_url, out)) == 0
    return out, len(server.requests)


def _reports(out: Path) -> dict[str, dict]:
    return {name: json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
            for name in ("report", *(f"report_{task}" for task in EVAL_TASKS))}


def _assert_same_reports(out: Path, reference: Path, ledger) -> None:
    reports, expected = _reports(out), _reports(reference)
    missing = checked = 0
    for task in EVAL_TASKS:
        ids = [(item["file"], item["id"]) for item in reports[f"report_{task}"]["items"]]
        ref_ids = [(item["file"], item["id"]) for item in expected[f"report_{task}"]["items"]]
        assert len(ids) == len(set(ids)), f"{task}: an item twice"
        missing += len(set(ref_ids) - set(ids))
        checked += len(ref_ids)
    ledger.lost(missing, checked)
    assert missing == 0 and checked == 20
    assert reports == expected  # items, metrics and the summary: the run's reports carry no timings
    assert not list(out.glob("*.partial"))


@pytest.mark.slow
def test_evaluation_killed_mid_generation_reruns_only_the_unanswered_items(eval_reference, tmp_path, ledger):
    reference, requests = eval_reference
    out, gate = tmp_path / "eval", Gate(block_from=12)  # of 21: ten MCQ items, the logprobs probe, cloze ...
    with FakeOpenAI(gate) as server:
        try:
            args = _eval_args(server.base_url, out)
            _killed_when(args, gate.arrived.is_set, "the 13th request", tmp_path / "stderr.txt")
        finally:
            gate.open()
        assert not (out / "report.json").exists()
        answered = len(list((out / "cache" / "model" / "greedy").glob("*.json")))
        assert 0 < answered <= 12
        before = len(server.requests)
        _rerun(args)
        asked = len(server.requests) - before
    assert asked == requests - answered  # each item asked for once in all, the answered ones not again
    _assert_same_reports(out, reference, ledger)


@pytest.mark.slow
def test_evaluation_killed_between_reports_leaves_no_finished_report_and_reruns_to_the_same_reports(
        eval_reference, tmp_path, ledger):
    reference, _ = eval_reference
    out = tmp_path / "eval"
    with FakeOpenAI(_answer) as server:
        assert main(_eval_args(server.base_url, out, "name=earlier")) == 0  # an earlier run's reports in OUT
        args = _eval_args(server.base_url, out)
        _killed_at_call("diabetica_jax.evaluation.runner._write_text", 2, args)  # after report_mcq.json
        # this run's MCQ report beside the earlier run's others, and no report.json claiming they are one result
        assert json.loads((out / "report_mcq.json").read_text())["model"] == "openai:fake"
        assert json.loads((out / "report_cloze.json").read_text())["model"] == "earlier"
        assert not (out / "report.json").exists()
        before = len(server.requests)
        _rerun(args)
        assert len(server.requests) == before  # every reply came from the cache
    _assert_same_reports(out, reference, ledger)
