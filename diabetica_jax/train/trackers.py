"""Experiment trackers beside metrics.jsonl and TensorBoard: Weights & Biases and MLflow, each optional.

A run asks for them by name (`tracking.backends: [wandb, mlflow]`); a backend whose package is not installed is
refused when the config is read, before any work. Each logs the run config once, every logged step's metrics,
tables (the pipeline's evaluation figures) and files (the data card, summary.md). W&B runs offline by default
(no network is needed; `wandb sync RUN_DIR/wandb` uploads later) and reads its key from WANDB_API_KEY itself;
MLflow writes a local file store under RUN_DIR/mlruns unless `mlflow_uri` names a server. A rerun of the same
run directory continues the same tracked run (its ids are kept in RUN_DIR/trackers.json); W&B's offline mode
cannot resume, so each rerun is an offline run under the same id, which `wandb sync` joins. Steps redone after
the last checkpoint are logged again: MLflow keeps both values of such a step, W&B the first.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Literal

from diabetica_jax.configuration import FieldError, field

BACKENDS = ("wandb", "mlflow")
PACKAGE = {"wandb": "wandb", "mlflow": "mlflow"}  # the import each needs (mlflow-skinny provides mlflow too)
IDS_FILE = "trackers.json"


@dataclasses.dataclass(frozen=True)
class TrackingSection:
    backends: list[Literal[BACKENDS]] = field([], "experiment trackers besides metrics.jsonl and TensorBoard: "
                                              "wandb, mlflow (optional extras; empty: none)")
    project: str = field("diabetica-jax", "W&B project / MLflow experiment name")
    run_name: str | None = field(None, "the tracked run's name (default: the run directory's name)")
    wandb_mode: Literal["offline", "online"] = field("offline", "W&B: offline writes RUN_DIR/wandb for `wandb "
                                                     "sync` (no network); online uploads (key: WANDB_API_KEY)")
    mlflow_uri: str | None = field(None, "MLflow tracking URI (default: a file store in RUN_DIR/mlruns)")

    def __post_init__(self):
        if len(set(self.backends)) != len(self.backends):
            raise FieldError("backends", f"{self.backends}: a backend named twice")
        for name in self.backends:
            if importlib.util.find_spec(PACKAGE[name]) is None:
                raise FieldError("backends", f"{name} is not installed (pip install 'diabetica-jax[trackers]')")


def flat(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and printed values (what MLflow takes as parameters)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


class Trackers:
    """The trackers a run asked for, opened on one run directory. Calls with no backend do nothing."""

    def __init__(self, section: TrackingSection, run_dir: Path, config: dict, name: str | None = None,
                 resume: bool = True):
        """`resume`: continue the tracked runs RUN_DIR/trackers.json names (a training resumed); False: new ones
        (an evaluation run again: its tables are its own)."""
        self.backends = []
        if not section.backends:
            return
        run_dir = Path(run_dir)
        ids_path = run_dir / IDS_FILE
        ids = json.loads(ids_path.read_text(encoding="utf-8")) if resume and ids_path.is_file() else {}
        run_name = section.run_name or name or run_dir.resolve().name
        try:
            for backend in section.backends:
                opened = {"wandb": _Wandb, "mlflow": _Mlflow}[backend](section, run_dir, run_name, ids.get(backend))
                self.backends.append(opened)
                opened.log_config(config)
                ids[backend] = opened.run_id
        except BaseException:
            self.close(failed=True)  # the ones already open
            raise
        run_dir.mkdir(parents=True, exist_ok=True)
        ids_path.write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")

    def log_metrics(self, step: int, values: dict) -> None:
        numbers = {k: float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and v == v}
        for backend in self.backends:
            backend.log_metrics(step, numbers)

    def log_table(self, name: str, rows: list[dict]) -> None:
        """Rows of one table (e.g. the learning table: one row per evaluation point); absent cells are empty."""
        columns = list(dict.fromkeys(k for row in rows for k in row))
        for backend in self.backends:
            backend.log_table(name, columns, [[_cell(row.get(c)) for c in columns] for row in rows])

    def log_file(self, path: Path) -> None:
        if Path(path).is_file():
            for backend in self.backends:
                backend.log_file(Path(path))

    def close(self, failed: bool = False) -> None:
        """End the tracked runs, as failed when the run raised (MLflow status FAILED, W&B exit code 1)."""
        backends, self.backends = self.backends, []
        for backend in backends:
            backend.close(failed)


def _cell(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


class _Wandb:
    def __init__(self, section: TrackingSection, run_dir: Path, name: str, run_id: str | None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=section.project, name=name, dir=str(run_dir), mode=section.wandb_mode,
                              id=run_id, resume="allow", reinit="create_new")
        self.run_id = self.run.id

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, step: int, values: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def log_table(self, name: str, columns: list[str], data: list[list]) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=data)})

    def log_file(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _Mlflow:
    def __init__(self, section: TrackingSection, run_dir: Path, name: str, run_id: str | None):
        from mlflow.tracking import MlflowClient

        uri = section.mlflow_uri
        if uri is None:  # the default, a file store: MLflow 3 keeps it (in maintenance) behind an opt-in
            uri = (Path(run_dir).resolve() / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(section.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(section.project)
        if run_id is None:
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        params = [Param(k, v[:6000]) for k, v in flat(config).items() if k not in logged]  # a resumed run keeps its own
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_metrics(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"train/{k}", v, now, step) for k, v in values.items()])

    def log_table(self, name: str, columns: list[str], data: list[list]) -> None:
        self.client.log_table(self.run_id, {c: [row[i] for row in data] for i, c in enumerate(columns)},
                              artifact_file=f"tables/{name}.json")  # apart from the files logged

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
