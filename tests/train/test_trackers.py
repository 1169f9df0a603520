"""Weights & Biases (offline) and MLflow (a local file store) beside metrics.jsonl: the run config, every logged
step's metrics (the same numbers as metrics.jsonl), the same tracked run continued on resume, the pipeline's
evaluation tables, and a clear refusal when a tracker's package is missing."""

import importlib.util
import json

import pytest
from train_helpers import losses, tiny_config

from diabetica_jax.configuration import ConfigFileError, FieldError
from diabetica_jax.train.loop import train
from diabetica_jax.train.trackers import IDS_FILE, Trackers, TrackingSection

wandb = pytest.importorskip("wandb", reason="W&B is in the test extra: pip install -e '.[test]'")
mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is in the test extra: pip install -e '.[test]'")

from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _wandb_records(path):
    """The protobuf records of an offline run's .wandb file (LevelDB's log layout after a 7-byte W&B header:
    32 KiB blocks of [crc32 4][length 2][type 1] chunks; 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, partial = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial)
            yield record


def _wandb_logged(run_dir):
    """(the config's top-level keys, {step: train/loss}) of the one offline run under RUN_DIR/wandb."""
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    config, loss = set(), {}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config |= {item.key for item in record.config.update}
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            if "train/loss" in items:
                loss[items["_step"]] = items["train/loss"]
    return config, loss


def _mlflow_run(run_dir):
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run_id = json.loads((run_dir / IDS_FILE).read_text())["mlflow"]
    return client, client.get_run(run_id)


@pytest.mark.slow
def test_training_logs_config_and_every_step_to_wandb_and_mlflow(hf_checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    tracking = ["tracking.backends=[wandb, mlflow]", "tracking.project=trackers-test"]
    train(tiny_config(hf_checkpoints["qwen2_tied"], "loop.steps=3", *tracking), run_dir, progress=False)
    logged = losses(run_dir)

    client, run = _mlflow_run(run_dir)
    assert run.info.status == "FINISHED"
    assert run.data.params["loop.steps"] == "3" and run.data.params["optim.lr"] == "0.01"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert history == pytest.approx(logged, abs=1e-6)
    assert {"train/tokens_per_s", "train/grad_norm"} <= set(run.data.metrics)

    config, wandb_loss = _wandb_logged(run_dir)
    assert {"model", "loop", "optim", "tracking"} <= config
    assert wandb_loss == pytest.approx(logged, abs=1e-6)

    # more steps on the same run directory: the same tracked runs go on
    ids = json.loads((run_dir / IDS_FILE).read_text())
    train(tiny_config(hf_checkpoints["qwen2_tied"], "loop.steps=5", *tracking), run_dir, progress=False)
    assert json.loads((run_dir / IDS_FILE).read_text()) == ids
    client, run = _mlflow_run(run_dir)
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == [1, 2, 3, 4, 5]
    assert run.data.params["loop.steps"] == "3"  # parameters are the run's first; metrics carry on


def test_evaluation_tables_and_files(tmp_path):
    """What the pipeline logs after its evaluation: the learning table and reports, as tables and files."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.md").write_text("# summary\n")
    trackers = Trackers(TrackingSection(backends=["mlflow"]), out, {"points": ["base", "trained"]}, name="demo-eval")
    rows = [{"point": "base", "domain_perplexity": 150.0}, {"point": "trained", "domain_perplexity": 40.0,
                                                             "domain_mcq_ci95": [0.1, 0.4]}]
    trackers.log_table("learning", rows)
    trackers.log_file(out / "summary.md")
    trackers.close()
    client, run = _mlflow_run(out)
    assert run.info.run_name == "demo-eval" and run.info.status == "FINISHED"
    assert {"tables", "summary.md"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    table = json.loads(open(client.download_artifacts(run.info.run_id, "tables/learning.json", str(tmp_path))).read())
    assert table["columns"] == ["point", "domain_perplexity", "domain_mcq_ci95"]
    assert [row[1] for row in table["data"]] == [150.0, 40.0]

    # evaluated again: a tracked run of its own (its table is not appended to the first's); a failure says so
    again = Trackers(TrackingSection(backends=["mlflow"]), out, {}, name="demo-eval", resume=False)
    again.log_table("learning", rows[:1])
    again.close(failed=True)
    client, second = _mlflow_run(out)
    assert second.info.run_id != run.info.run_id and second.info.status == "FAILED"


def test_a_missing_tracker_package_is_refused_with_the_fix(hf_checkpoints, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigFileError, match=r"tracking.backends.*wandb is not installed.*\[trackers\]"):
        tiny_config(hf_checkpoints["qwen2_tied"], "tracking.backends=[wandb]")
    with pytest.raises(FieldError, match="named twice"):
        TrackingSection(backends=["mlflow", "mlflow"])
