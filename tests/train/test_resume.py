"""Checkpoints: preemption and resume give exactly the uninterrupted losses; other meshes and hosts too."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from train_helpers import (
    REPO,
    cli_env,
    free_port,
    losses,
    run_cli,
    tiny_config,
    train_command,
    two_processes,
    write_config,
)

from diabetica_jax.train.loop import train

MESH = {"fsdp": 4, "tensor": 2}


def _reference(hf_path, tmp_path, steps_total, steps):
    cfg = tiny_config(hf_path, f"loop.steps={steps_total}", "mesh.fsdp=4", "mesh.tensor=2")
    result = train(cfg, tmp_path / "reference", progress=False, stop_after=steps)
    return {h["step"]: h["loss"] for h in result.history}


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted_and_resumes_on_another_mesh(hf_checkpoints, tmp_path):
    path = hf_checkpoints["qwen2_untied"]
    config = write_config(path, tmp_path / "train.yaml", mesh=MESH, loop={"steps": 400, "checkpoint_every": 1000})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_command(config, run_dir), env=cli_env(8), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "preempted (SIGTERM), checkpoint saved" in out
    stopped = max(losses(run_dir))
    assert 3 <= stopped < 400
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [stopped]

    # same mesh: rerunning continues from the checkpoint, bit for bit
    resumed = run_cli(train_command(config, run_dir, "--stop-after", "4"))
    assert resumed.returncode == 0, resumed.stderr
    interrupted = losses(run_dir)
    assert max(interrupted) == stopped + 4
    reference = _reference(path, tmp_path, 400, stopped + 4)
    assert interrupted == reference

    # another mesh and device count: same losses within float tolerance
    other = tmp_path / "other"
    subprocess.run(["cp", "-r", str(run_dir), str(other)], check=True)
    (other / "metrics.jsonl").write_text("")
    moved = run_cli(train_command(config, other, "--stop-after", "4", "mesh.fsdp=2", "mesh.tensor=1"), devices=2)
    assert moved.returncode == 0, moved.stderr
    after_move = losses(other)
    assert sorted(after_move) == list(range(stopped + 5, stopped + 9))
    full_reference = _reference(path, tmp_path / "ref2", 400, stopped + 8)
    np.testing.assert_allclose([after_move[s] for s in sorted(after_move)],
                               [full_reference[s] for s in sorted(after_move)], rtol=1e-5)


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume_like_one(hf_checkpoints, tmp_path):
    path = hf_checkpoints["qwen3"]
    config = write_config(path, tmp_path / "train.yaml", mesh=MESH, loop={"steps": 6, "checkpoint_every": 3})
    run_dir = tmp_path / "multi"
    two_processes(config, run_dir, "--stop-after", "3")
    assert sorted(losses(run_dir)) == [1, 2, 3]
    # resume through the launch script, as a user would
    launched = subprocess.run(
        ["bash", str(REPO / "launch" / "local_cpu.sh"), "2", "4", "train", str(config), "--run-dir", str(run_dir),
         "--no-progress"],
        env={**cli_env(4), "PORT": str(free_port()), "PYTHON": sys.executable}, capture_output=True, text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    multi = losses(run_dir)
    assert sorted(multi) == list(range(1, 7))
    single = _reference(path, tmp_path, 6, 6)
    np.testing.assert_allclose([multi[s] for s in range(1, 7)], [single[s] for s in range(1, 7)], rtol=1e-5)
