"""Training under faults: kill -9 mid-step and mid-save, damaged checkpoints, a full disk, SIGTERM to one of two
processes. Each ends on the losses of the uninterrupted run, or stops before any work with one line saying what
to do; a damaged checkpoint is never trained over or replaced silently."""

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import (
    cli_env,
    finish_processes,
    losses,
    run_cli,
    start_processes,
    train_command,
    two_processes,
    write_config,
)

from diabetica_jax.cli import main
from diabetica_jax.configuration import load_config
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.loop import train

STEPS = 8
LOOP = {"steps": STEPS, "checkpoint_every": 2, "keep_checkpoints": 3, "async_checkpoint": True}
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def config(hf_checkpoints, tmp_path_factory) -> Path:
    return write_config(hf_checkpoints["qwen2_untied"], tmp_path_factory.mktemp("cfg") / "train.yaml", loop=LOOP)


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory) -> dict[int, float]:
    """The losses of the run no fault touched (8 emulated devices, like the CLI runs below)."""
    cfg = load_config(TrainConfig, config)
    return {h["step"]: h["loss"] for h in train(cfg, tmp_path_factory.mktemp("ref") / "run", progress=False).history}


@pytest.fixture(scope="module")
def six_steps(config, tmp_path_factory) -> Path:
    """A run stopped after step 6, with checkpoints 2, 4 and 6 (copied by each test that damages one)."""
    run_dir = tmp_path_factory.mktemp("six") / "run"
    train(load_config(TrainConfig, config), run_dir, progress=False, stop_after=6)
    assert _steps(run_dir) == [2, 4, 6]
    return run_dir


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def _metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_completes_like_uninterrupted(run_dir, uninterrupted, ledger):
    got = losses(run_dir)
    missing = set(uninterrupted) - set(got)
    ledger.lost(len(missing), len(uninterrupted))
    assert not missing and _metric_steps(run_dir) == sorted(uninterrupted)  # every step once, none twice
    assert got == uninterrupted


@pytest.mark.fault
@pytest.mark.slow
def test_kill_9_mid_step_then_rerun_ends_on_the_uninterrupted_losses(config, uninterrupted, tmp_path, ledger):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_command(config, run_dir), env=cli_env(8), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 240
    while not metrics.is_file() or len(metrics.read_text().splitlines()) < 5:  # past the checkpoint of step 4
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill: move the kill earlier"
    assert max(_steps(run_dir)) < STEPS
    rerun = run_cli(train_command(config, run_dir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_completes_like_uninterrupted(run_dir, uninterrupted, ledger)


@pytest.mark.fault
@pytest.mark.slow
def test_kill_9_while_an_async_checkpoint_is_written(config, uninterrupted, tmp_path, ledger):
    run_dir = tmp_path / "run"
    # tests/faults/kill_after_save.py: the CLI, killed as soon as the save of step 4 has started writing
    killed = run_cli([sys.executable, str(HERE / "kill_after_save.py"), "4", *train_command(config, run_dir)[3:]])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.isdigit()]
    assert _steps(run_dir) == [2] and any("tmp" in name for name in leftovers), leftovers  # killed mid-write

    rerun = run_cli(train_command(config, run_dir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.isdigit()] == []  # cleaned up
    _assert_completes_like_uninterrupted(run_dir, uninterrupted, ledger)


def _truncate_largest_array(step_dir: Path) -> None:
    largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                  key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)


DAMAGE = {
    "truncated array file": _truncate_largest_array,
    "deleted manifest": lambda step_dir: (step_dir / "state" / "manifest.ocdbt").unlink(),
    "garbage metadata": lambda step_dir: (step_dir / "meta" / "metadata").write_text("{not json"),
}


@pytest.mark.fault
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_newest_readable(damage, config, six_steps, uninterrupted,
                                                                     tmp_path, caplog, ledger):
    run_dir = tmp_path / "run"
    shutil.copytree(six_steps, run_dir)
    DAMAGE[damage](run_dir / "checkpoints" / "6")
    damaged_files = sorted(p.relative_to(run_dir / "checkpoints" / "6") for p in (run_dir / "checkpoints" / "6").rglob("*"))

    with caplog.at_level(logging.WARNING):
        train(load_config(TrainConfig, config), run_dir, progress=False)
    warning = next(r.getMessage() for r in caplog.records if "instead of the damaged" in r.getMessage())
    assert "checkpoint of step 4 instead of the damaged one of step 6" in warning
    # set aside, untouched, where the warning says; the rerun saved its own step 6 beside it
    (aside,) = (run_dir / "damaged_checkpoints").iterdir()
    assert str(aside) in warning and aside.name.startswith("6-")
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == damaged_files
    assert _steps(run_dir) == [4, 6, 8]
    # the steps redone after the fallback replace the abandoned ones in metrics.jsonl (kept aside too)
    superseded = [json.loads(line)["step"] for line in (run_dir / "metrics_superseded.jsonl").read_text().splitlines()]
    assert superseded == [5, 6]
    _assert_completes_like_uninterrupted(run_dir, uninterrupted, ledger)


@pytest.mark.fault
def test_no_readable_checkpoint_stops_before_any_work_with_one_line(config, six_steps, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(six_steps, run_dir)
    for step in (2, 4, 6):
        DAMAGE["garbage metadata"](run_dir / "checkpoints" / str(step))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    assert main(["train", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"diabetica-jax train: error: {run_dir / 'checkpoints'}: no checkpoint can be read back")
    assert "steps 6, 4, 2 damaged" in line and "restore the directory from a backup, or move it away" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing touched


def _can_mount_tmpfs(where: Path) -> str | None:
    """None when `unshare` can mount a private tmpfs here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {where}"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"


@pytest.mark.fault
@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_says_why(config, uninterrupted, tmp_path, ledger):
    mount = tmp_path / "disk"
    mount.mkdir()
    reason = _can_mount_tmpfs(mount)
    if reason:
        pytest.skip(reason)
    run_dir, copy = mount / "run", tmp_path / "copy"
    train_cmd = " ".join(train_command(config, run_dir))
    # In a private mount namespace: train to the checkpoint of step 2 on a 24 MB tmpfs, fill it but 40 KB (the
    # metrics lines fit, a checkpoint does not), train on until the save of step 4 fails, then free the space and
    # rerun. Each phase's output and exit code are kept outside the tmpfs, which vanishes with the namespace.
    script = f"""
        mount -t tmpfs -o size=24m tmpfs {mount}
        {train_cmd} --stop-after 2 > {tmp_path}/1.out 2>&1; echo $? > {tmp_path}/1.rc
        head -c 100000000 /dev/zero > {mount}/filler 2>/dev/null
        truncate -s -40K {mount}/filler
        {train_cmd} > {tmp_path}/2.out 2>&1; echo $? > {tmp_path}/2.rc
        ls {run_dir}/checkpoints > {tmp_path}/2.ls
        rm {mount}/filler
        {train_cmd} > {tmp_path}/3.out 2>&1; echo $? > {tmp_path}/3.rc
        cp -r {run_dir} {copy}
    """
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=cli_env(8),
                          capture_output=True, text=True, timeout=600)
    out = {i: (tmp_path / f"{i}.out").read_text() for i in (1, 2, 3)}
    rc = {i: int((tmp_path / f"{i}.rc").read_text()) for i in (1, 2, 3)}
    assert rc[1] == 0 and done.returncode == 0, out[1][-3000:] + done.stderr
    assert rc[2] != 0 and "Traceback" not in out[2], out[2][-3000:]
    (line,) = [x for x in out[2].splitlines() if x.startswith("diabetica-jax train: error:")]
    assert "saving the checkpoint of step 4 failed: no space left on the device" in line
    assert "the checkpoint of step 2 is kept; free space and rerun to resume from it" in line
    # step 2 stays committed beside the failed save's temporary folder, which the rerun removes
    assert [name for name in (tmp_path / "2.ls").read_text().split() if name.isdigit()] == ["2"]
    assert rc[3] == 0, out[3][-3000:]
    assert all(p.name.isdigit() for p in (copy / "checkpoints").iterdir())
    _assert_completes_like_uninterrupted(copy, uninterrupted, ledger)


def _wait_for_steps(run_dir, n, procs, timeout=240):
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while not metrics.exists() or len(metrics.read_text().splitlines()) < n:
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise AssertionError("training did not start: " + "\n".join(p.communicate()[1][-2000:] for p in procs))
        time.sleep(0.2)


@pytest.mark.fault
@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_saved_step(hf_checkpoints, tmp_path, ledger):
    # Orbax saves collectively: if only the signalled process stopped to save, the other would run on
    # and the two would hang or write mismatched checkpoints. They must agree on the step.
    config = write_config(hf_checkpoints["qwen3"], tmp_path / "train.yaml", mesh={"fsdp": 4, "tensor": 2},
                          loop={"steps": 400, "checkpoint_every": 1000})
    run_dir = tmp_path / "run"
    procs = start_processes(config, run_dir)
    try:
        _wait_for_steps(run_dir, 3, procs)
        procs[1].send_signal(signal.SIGTERM)  # only the non-writing process hears it
    finally:
        results = finish_processes(procs, timeout=120)
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert "preempted (SIGTERM), checkpoint saved" in results[0][0]
    saved_at = [re.findall(r"SIGTERM \(to (this|another) process\): checkpoint saved at step (\d+)", err)
                for _, err in results]
    assert [who for (who, _), in saved_at] == ["another", "this"]
    steps = {int(step) for (_, step), in saved_at}
    stopped = max(losses(run_dir))
    assert steps == {stopped} and 3 <= stopped < 400
    assert _steps(run_dir) == [stopped]

    # rerunning both resumes from that checkpoint: every step once
    two_processes(config, run_dir, "--stop-after", "2")
    ledger.lost(len(set(range(1, stopped + 3)) - set(losses(run_dir))), stopped + 2)
    assert _metric_steps(run_dir) == list(range(1, stopped + 3))
