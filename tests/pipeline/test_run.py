"""`diabetica-jax run` on the embedded default, reduced: every stage's outputs, skipping, and resuming."""

import json
import signal
import subprocess
import time

import pytest
from fake_openai import FakeOpenAI
from train_helpers import REPO, cli_env

from diabetica_jax.pipeline.config import load_run_config
from diabetica_jax.pipeline.run import run

DEMO = str(REPO / "configs" / "recipes" / "demo.yaml")
SMALL = ["train.loop.steps=4", "train.loop.checkpoint_every=2", "train.data.seq_len=128", "train.data.global_batch=4",
         "train.loop.loss_chunk=16", "train.mesh.fsdp=2", "train.optim.warmup_steps=1",
         "eval.tasks=[{task: mcq, files: ['embedded:mini_mcq.csv'], limit: 3}, "
         "{task: cloze, files: ['embedded:mini_cloze.csv'], limit: 2}, "
         "{task: dialog, files: ['embedded:mini_dialog.jsonl'], limit: 1}]", "export.verify_prompts=2",
         # the recipe's stages, without the instruct stage's own step count
         "stages=[{name: adapt, eval: true, train: {data: {kinds: [passage], loss_on: all}}}, "
         "{name: instruct, train: {data: {kinds: [qa, mcq, dialogue, cloze]}}}]"]


def _base_model(messages, model):
    """The fake base model curation asks for the rejected sides: option A to every MCQ, a number to the rest."""
    return "A" if "\nB. " in messages[-1]["content"] else "Perhaps 42 units, I am not sure."


def with_preference_stage(base_url, instruct_lr=1.0e-2):
    """SMALL's stages and a third, DPO from the instructed weights on the pairs curation made: the records'
    answers over the base model's (at `base_url`) wrong replies."""
    return SMALL[:-1] + [
        "curate.pairs.backend=openai", f"curate.pairs.base_url={base_url}", "curate.pairs.model=base",
        "stages=[{name: adapt, eval: true, train: {data: {kinds: [passage], loss_on: all}}}, "
        f"{{name: instruct, train: {{data: {{kinds: [qa, mcq, dialogue, cloze]}}, optim: {{lr: {instruct_lr}}}}}}}, "
        "{name: prefer, train: {method: dpo, preference: {pairs: curated}, data: {epochs: 4}}}]"]


@pytest.mark.slow
def test_demo_pipeline_end_to_end_then_skips_finished_stages(tmp_path):
    """The demo's stages, then a preference stage on curated pairs (SFT -> pairs -> DPO), each evaluated after it."""
    with FakeOpenAI(_base_model) as server:
        _end_to_end_then_skips(tmp_path, server.base_url)


def _end_to_end_then_skips(tmp_path, base_url):
    config = with_preference_stage(base_url)
    result = run(load_run_config(DEMO, config), tmp_path, progress=False)
    assert result["stages"] == {"curate": "done", "train adapt": "done", "train instruct": "done",
                                "train prefer": "done", "eval": "done", "export": "done"}
    card = json.loads((tmp_path / "data" / "data_card.json").read_text())
    assert (card["collected"], card["kept"]) == (194, 159) and list((tmp_path / "data" / "shards").iterdir())
    # pairs: every MCQ not keyed A, and every other record with an answer (the number is in none of them)
    pairs = card["pairs"]
    assert pairs["pairs"] > 50 and pairs["by_kind"]["mcq"] < card["kept_by_kind"]["mcq"]
    assert pairs["pairs"] == len((tmp_path / "data" / "pairs.jsonl").read_text().splitlines())
    for stage in ("train-adapt", "train-instruct"):  # the demo's two stages, the second from the first
        metrics = (tmp_path / stage / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(m)["step"] for m in metrics] == [1, 2, 3, 4]
    adapt = json.loads((tmp_path / "train-adapt" / "train_config.json").read_text())
    assert adapt["data"]["kinds"] == ["passage"] and adapt["data"]["loss_on"] == "all"
    for run_name in ("base", "prefer"):
        report = json.loads((tmp_path / "eval" / run_name / "report.json").read_text())
        assert report["tasks"]["mcq"]["n_items"] == 3 and report["tasks"]["cloze"]["n_items"] == 2
    verify = json.loads((tmp_path / "hf" / "verify.json").read_text())
    assert verify["identical"] and verify["prompts"] == 2
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    summary = (tmp_path / "summary.md").read_text()
    for heading in ("## Data", "## Training", "## Evaluation", "## What training changed, per stage", "## Export"):
        assert heading in summary
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "eval" / "comparison.png").is_file()
    # stages: the second continues the first's checkpoint; forgetting measured before training and after each
    instruct = json.loads((tmp_path / "train-instruct" / "train_config.json").read_text())
    assert instruct["model"]["init_from"] == str(tmp_path / "train-adapt")
    prefer = json.loads((tmp_path / "train-prefer" / "train_config.json").read_text())
    assert prefer["method"] == "dpo" and prefer["model"]["init_from"] == str(tmp_path / "train-instruct")
    dpo = [json.loads(m) for m in (tmp_path / "train-prefer" / "metrics.jsonl").read_text().splitlines()]
    # the reference is the instructed model the stage starts from: the first step's loss is log 2
    assert abs(dpo[0]["loss"] - 0.6931472) < 1e-5 and "rewards/accuracy" in dpo[0]
    rows = json.loads((tmp_path / "eval" / "learning.json").read_text())
    assert [r["point"] for r in rows] == ["base", "adapt", "instruct", "prefer"]
    assert all(isinstance(r["general_mcq_accuracy"], float) and r["general_perplexity"] > 1 for r in rows)
    # the eval tasks where the stages ask (adapt) and after the last; general ones after every stage
    assert [r["point"] for r in rows if "domain_mcq_answered" in r] == ["base", "adapt", "prefer"]
    assert "- adapt: 4 steps logged" in summary and "- prefer: 4 steps logged" in summary
    assert (tmp_path / "learning.png").is_file()

    again = run(load_run_config(DEMO, config), tmp_path, progress=False)
    assert set(again["stages"].values()) == {"skipped (up to date)"}
    assert again["seconds"] == result["seconds"]  # a rerun reports the times the stages took when they ran
    rows = (tmp_path / "summary.md").read_text().splitlines()[6:12]
    assert [r.split("|")[3].strip() for r in rows] == [f"{s:.0f}" for s in result["seconds"].values()]
    # an evaluation setting changes: only evaluation reruns
    changed = run(load_run_config(DEMO, config + ["eval.batch_size=2"]), tmp_path, progress=False)
    assert changed["stages"] == {"curate": "skipped (up to date)", "train adapt": "skipped (up to date)",
                                 "train instruct": "skipped (up to date)", "train prefer": "skipped (up to date)",
                                 "eval": "done", "export": "skipped (up to date)"}
    # a middle stage's setting changes: it and every stage after it rerun, the stage before it does not
    later = run(load_run_config(DEMO, with_preference_stage(base_url, 0.004) + ["eval.batch_size=2"]), tmp_path,
                progress=False)
    assert later["stages"] == {"curate": "skipped (up to date)", "train adapt": "skipped (up to date)",
                               "train instruct": "done", "train prefer": "done", "eval": "done", "export": "done"}
    assert json.loads((tmp_path / "train-instruct" / "train_config.json").read_text())["optim"]["lr"] == 0.004


@pytest.mark.slow
def test_a_run_killed_during_a_middle_stage_resumes_when_rerun(tmp_path):
    args = ["python", "-m", "diabetica_jax.cli", "run", DEMO, "--run-dir", str(tmp_path), "--no-progress",
            "train.loop.steps=30", "train.loop.checkpoint_every=1000", "train.data.seq_len=64",
            "train.data.global_batch=4", "train.loop.loss_chunk=16", "eval.tasks=[{task: mcq, files: "
            "['embedded:mini_mcq.csv'], limit: 1}]", "eval_base=false", "export.verify=false", SMALL[-1]]
    proc = subprocess.Popen(args, env=cli_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "train-adapt" / "metrics.jsonl"  # killed in the first of the two stages
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "rerun the same command to resume" in err
    stopped = len(metrics.read_text().splitlines())
    assert 2 <= stopped < 30 and not (tmp_path / "train-adapt" / ".stage.json").exists()
    # the same command (same hash) continues from its checkpoint to the end
    proc = subprocess.run(args, env=cli_env(1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 31))  # no step trained twice, none skipped
    later = [json.loads(line)["step"] for line in (tmp_path / "train-instruct" / "metrics.jsonl").read_text().splitlines()]
    assert later == list(range(1, 31))  # and the next stage ran from it
    assert "curate           skipped (up to date)" in proc.stdout and "train adapt      done" in proc.stdout
