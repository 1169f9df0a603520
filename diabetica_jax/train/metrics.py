"""Per-step metrics: a progress bar, RUN_DIR/metrics.jsonl and TensorBoard.

Metrics of step k are fetched from the device only after step k+1 has been dispatched, so logging
never stalls the accelerator; the wall time between two fetches is the step time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm


def _supersede_after(path: Path, step: int) -> None:
    """A run resumed from the checkpoint of `step` redoes the steps after it: their records (written before a
    crash, or before falling back to an older checkpoint) move to metrics_superseded.jsonl, and a line cut
    short by a kill is dropped, so metrics.jsonl holds each step once."""
    if not path.is_file():
        return
    kept, superseded = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the partial last line of a killed run
        (kept if isinstance(record, dict) and record.get("step", 0) <= step else superseded).append(line)
    if superseded:
        with open(path.with_name(f"{path.stem}_superseded.jsonl"), "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in superseded))
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        *,
        start_step: int,
        total_steps: int,
        tokens_per_step: int,
        flops_per_step: float,
        peak_flops: float | None,
        log_every: int = 1,
        tensorboard: bool = True,
        enabled: bool = True,
        progress: bool = True,
        name: str = "train",
        trackers=None,
    ):
        self.enabled = enabled
        self.tokens_per_step, self.flops_per_step, self.peak_flops = tokens_per_step, flops_per_step, peak_flops
        self.log_every = log_every
        self.pending: tuple[int, Any] | None = None
        self.last_time = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        self.trackers = trackers  # train/trackers.py Trackers (W&B, MLflow), closed with this logger
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _supersede_after(run_dir / "metrics.jsonl", start_step)
        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", disable=not progress,
                        dynamic_ncols=True)

    def push(self, step: int, metrics: Any) -> None:
        """Hand over step `step`'s metrics (device arrays); the previous step's are written now."""
        previous, self.pending = self.pending, (step, metrics)
        if previous is not None:
            self._write(*previous)

    def on_step(self, info) -> None:
        """The train loop's hook (train/loop.py StepInfo: `step` counts this step)."""
        self.push(info.step - 1, info.metrics)

    def on_end(self, info) -> None:
        self.close()

    def close(self) -> None:
        if self.pending is not None:
            self._write(*self.pending)
            self.pending = None
        if self.enabled:
            self.bar.close()
            self.file.close()
            if self.writer is not None:
                self.writer.close()
        if self.trackers is not None:
            self.trackers.close()

    def _write(self, step: int, metrics: Any) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        seconds, self.last_time = now - self.last_time, now
        record = {"step": step + 1, **values, "tokens": (step + 1) * self.tokens_per_step,
                  "step_time_s": seconds, "tokens_per_s": self.tokens_per_step / seconds,
                  "mfu": (self.flops_per_step / seconds / self.peak_flops) if self.peak_flops else None}
        self.history.append(record)
        if not self.enabled:
            return
        self.bar.update(step + 1 - self.bar.n)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if (step + 1) % self.log_every == 0:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            if self.writer is not None:
                for key, value in record.items():
                    if key != "step" and value is not None:
                        self.writer.add_scalar(f"train/{key}", value, step + 1)
            if self.trackers is not None:
                self.trackers.log_metrics(step + 1, record)
