"""Small training configs over the tiny HF checkpoints, and subprocess launchers for the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from diabetica_jax.configuration import load_config
from diabetica_jax.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_config(hf_path: Path, *overrides: str) -> TrainConfig:
    base = [
        f"model.path={hf_path}", "model.runtime.dtype=float32", "model.runtime.remat=none",
        "data.seq_len=32", "data.global_batch=8", "optim.lr=1e-2", "optim.warmup_steps=1",
        "loop.steps=6", "loop.checkpoint_every=3", "loop.loss_chunk=16", "loop.tensorboard=false",
        "loop.async_checkpoint=false",
    ]
    return load_config(TrainConfig, None, base + list(overrides))


def cli_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_config(hf_path: Path, path: Path, **sections) -> Path:
    """A YAML training config for the tiny checkpoint (sections override the defaults here)."""
    import yaml

    config = {
        "model": {"path": str(hf_path), "runtime": {"dtype": "float32", "remat": "none"}},
        "data": {"seq_len": 32, "global_batch": 8},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "loop": {"steps": 6, "checkpoint_every": 3, "loss_chunk": 16, "tensorboard": False},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(config: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "diabetica_jax.cli", "train", str(config), "--run-dir", str(run_dir),
            "--no-progress", *overrides]


def run_cli(args: list[str], devices: int = 8, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=cli_env(devices), capture_output=True, text=True, timeout=timeout, **kwargs)


def losses(run_dir: Path) -> dict[int, float]:
    import json

    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(config: Path, run_dir: Path, *overrides: str, processes: int = 2,
                    devices: int = 4) -> list[subprocess.Popen]:
    """`diabetica-jax train` as PROCESSES local processes joined through jax.distributed (like launch/local_cpu.sh)."""
    port = free_port()
    return [
        subprocess.Popen(
            train_command(config, run_dir, *overrides, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                          str(processes), "--process-id", str(i)),
            env=cli_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(processes)
    ]


def finish_processes(procs: list[subprocess.Popen], timeout: int = 300) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process once all exit; kills the rest if one hangs (a stuck collective)."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def two_processes(config, run_dir, *extra):
    """Both processes of a 2-process run to the end; each must exit 0."""
    procs = start_processes(config, run_dir, *extra)
    results = finish_processes(procs)
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return results


def curated_training(tmp_path: Path, *overrides: str) -> list[str]:
    """Curate the embedded demo corpus under tmp_path and return train overrides for the tiny preset on it
    (two fsdp devices, synchronous checkpoints, no TensorBoard); `overrides` come last and win."""
    from diabetica_jax.curate.config import load_curate_config
    from diabetica_jax.curate.pipeline import curate

    curate(load_curate_config(None), tmp_path / "curated", progress=False)
    return ["model.preset=tiny", "model.runtime.dtype=float32", "model.runtime.remat=none", "data.source=curated",
            f"data.path={tmp_path / 'curated'}", "mesh.fsdp=2", "loop.tensorboard=false",
            "loop.async_checkpoint=false", *overrides]


class Numbered:
    """A tokenizer stand-in: passage "k:n" is n - 1 ids (below 512, the first k + 1) and then the end token 0."""

    unk_token_id = eos_token_id = None

    def convert_tokens_to_ids(self, token):
        return 0

    def encode(self, text, add_special_tokens=False):
        k, n = map(int, text.split(":"))
        return [k + 1] + [(13 * k + i) % 500 + 1 for i in range(n - 2)]

    # chat records: the token store encodes every kind once (data.kinds selects later); no ChatML, no assistant mask
    def apply_chat_template(self, messages, tokenize=False):
        return " ".join(m["content"] for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1] * len(text.split())}


def assert_resumes_with_the_next_batches(make_batches, skip: int = 5) -> None:
    """An iterator over `make_batches()` saved after `skip` batches (through JSON, as the checkpoint stores its
    state) and restored into a fresh one yields exactly the batches an uninterrupted iterator yields next."""
    import json

    import numpy as np

    from diabetica_jax.data.loader import FrozenIteratorState

    reference = list(make_batches())
    iterator = iter(make_batches())
    for _ in range(skip):
        next(iterator)
    saved = json.loads(FrozenIteratorState(iterator.get_state()).get_state())
    fresh = iter(make_batches())
    fresh.set_state(saved)
    rest = list(fresh)
    assert len(rest) == len(reference) - skip
    for a, b in zip(rest, reference[skip:]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
