"""`serve` names a model after its run and says when it is a demo; /health counts clients' requests only.

Tiny models only: a random preset, and its export written into a pipeline run's layout (RUN_DIR/hf).
"""

import json

import httpx
import pytest
from starlette.testclient import TestClient

from diabetica_jax import hf
from diabetica_jax.configuration import load_config, to_dict
from diabetica_jax.model import create_model
from diabetica_jax.serve import ServedModel, ServeLimits
from diabetica_jax.serve import model as serve_model
from diabetica_jax.serve.app import create_app
from diabetica_jax.serve.model import served_name
from diabetica_jax.serve.server import BackgroundServer
from diabetica_jax.train import run_dir
from diabetica_jax.train.config import TrainConfig

LIMITS = ServeLimits(slots=2, max_prompt_tokens=32, max_new_tokens=8, max_waiting=4)


def _stage(path, marker=".stage.json"):
    """A folder as `diabetica-jax run` leaves a stage: with its marker file (pipeline/run.py Stage)."""
    path.mkdir(parents=True)
    (path / marker).write_text(json.dumps({"hash": "0"}))
    return path


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """The tiny preset exported as the demo pipeline does: runs/demo/hf, beside the run's summary."""
    run = tmp_path_factory.mktemp("runs") / "demo"
    config = hf.preset_config("tiny")
    out = _stage(run / "hf")
    hf.save(create_model(config, seed=0), config, out, tokenizer=hf.load_tokenizer(None), progress=False)
    (run / "summary.md").write_text("# demo\n")
    return out


def _listed(served: ServedModel) -> dict:
    with TestClient(create_app(served)) as client:
        return client.get("/v1/models").json()["data"][0]


def test_stage_folders_of_a_pipeline_run_are_named_after_the_run(tmp_path):
    run = tmp_path / "runs" / "demo"
    assert served_name(_stage(run / "hf")) == "demo"
    assert served_name(_stage(run / "train", ".started.json"), step=30) == "demo-step30"  # a training in progress
    assert served_name(_stage(run / "train-instruct"), step=30) == "demo-instruct-step30"
    # anything else keeps its own name: a run directory of `diabetica-jax train`, an export outside a pipeline
    (tmp_path / "runs" / "clinic-7b").mkdir()
    assert served_name(tmp_path / "runs" / "clinic-7b", step=500) == "clinic-7b-step500"
    (tmp_path / "elsewhere" / "hf").mkdir(parents=True)
    assert served_name(tmp_path / "elsewhere" / "hf") == "hf"


def test_an_export_in_a_run_is_served_under_the_runs_name_and_marked_demo(demo_export):
    served = ServedModel.load(str(demo_export), limits=LIMITS)
    try:
        listed = _listed(served)
        assert served.name == listed["id"] == "demo" and listed["demo"] is True
        assert listed["description"] == "demo model: tiny weights (9.8M parameters)"
        assert listed["parameters"] == hf.preset_config("tiny").num_params()
    finally:
        served.close()


def test_name_overrides_and_a_large_checkpoint_is_no_demo(demo_export, monkeypatch):
    monkeypatch.setattr(serve_model, "DEMO_MAX_PARAMS", 1_000_000)  # the 9.8M-parameter export counts as large
    served = ServedModel.load(str(demo_export), name="clinic", limits=LIMITS)  # --name
    try:
        listed = _listed(served)
        assert listed["id"] == "clinic" and listed["demo"] is False and listed["description"] is None
    finally:
        served.close()


def test_a_run_stage_is_served_under_the_run_and_stage_names(tmp_path, monkeypatch):
    stage = _stage(tmp_path / "demo" / "train-instruct")
    (stage / "train_config.json").write_text(json.dumps(to_dict(load_config(TrainConfig, None, []))))
    config = hf.preset_config("tiny")
    # the checkpoint itself is not the point here (and training one takes a while): its step is
    monkeypatch.setattr(run_dir, "trained_model", lambda source, step, mesh: (create_model(config), config, 30))
    monkeypatch.setattr(serve_model, "DEMO_MAX_PARAMS", 1_000_000)  # not by its size: its config names tiny
    served = ServedModel.load(str(stage), limits=LIMITS)
    try:
        listed = _listed(served)
        assert served.name == listed["id"] == "demo-instruct-step30" and listed["demo"] is True
        assert listed["description"] == "demo model: tiny weights (9.8M parameters)"
    finally:
        served.close()


@pytest.fixture(scope="module")
def warmed():
    """A random preset, warmed up as `serve` starts it; no test here generates before the /health one."""
    served = ServedModel.load("", limits=LIMITS, warmup=True)
    yield served
    served.close()


def test_models_marks_a_random_preset_as_demo(warmed):
    listed = _listed(warmed)
    assert listed["id"] == "tiny-random" and listed["demo"] is True
    assert listed["description"] == "demo model: tiny preset, random weights"


def test_health_counts_client_requests_not_the_warmup(warmed):
    assert warmed.batcher.compilations > 0  # the warm-up did run requests
    with BackgroundServer(create_app(warmed)) as running:
        health = httpx.get(f"{running.url}/health").json()
        assert (health["admitted"], health["finished"], health["steps"]) == (0, {}, 0)
        reply = httpx.post(f"{running.url}/v1/chat/completions", timeout=60, json={
            "model": warmed.name, "max_tokens": 3, "messages": [{"role": "user", "content": "hello"}]})
        assert reply.status_code == 200
        health = httpx.get(f"{running.url}/health").json()
        assert health["admitted"] == 1 and sum(health["finished"].values()) == 1
        assert health["steps"] <= 2  # 3 tokens at most: the prefill chose the first, decode steps the rest
