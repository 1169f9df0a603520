"""`diabetica-jax run` with a GRPO stage after SFT: chained, evaluated after each stage, resumed when killed."""

import dataclasses
import json

import pytest
from test_run import DEMO

from diabetica_jax.demo import synthetic_mcq
from diabetica_jax.pipeline.config import load_run_config
from diabetica_jax.pipeline.run import run
from diabetica_jax.train import loop
from diabetica_jax.train.rollouts import ROLLOUTS_FILE

TINY = ["train.loop.steps=3", "train.loop.checkpoint_every=1", "train.data.seq_len=128", "train.data.global_batch=4",
        "train.loop.loss_chunk=16", "train.mesh.fsdp=2", "train.optim.warmup_steps=0", "export.verify=false",
        "eval.tasks=[{task: mcq, files: ['embedded:mini_mcq.csv'], limit: 2}]",
        "general=[{task: mcq, files: ['embedded:mini_general_mcq.csv'], limit: 2}]"]


def grpo_run(items):
    """SFT on the curated MCQs, then GRPO on the synthetic items (groups of 2, 4-token replies), each evaluated."""
    return TINY + [
        "stages=[{name: instruct, eval: true, train: {data: {kinds: [mcq]}}}, "
        f"{{name: reason, train: {{method: grpo, grpo: {{items: '{items}', group_size: 2, max_new_tokens: 4, "
        "temperature: 1.0}, optim: {lr: 1.0e-3}}}]"]


@pytest.mark.slow
def test_sft_then_grpo_through_the_runner_evaluates_each_stage_and_resumes(tmp_path, monkeypatch):
    items = synthetic_mcq.write_items(tmp_path / "items.csv", 8)
    config = load_run_config(DEMO, grpo_run(items))
    result = run(config, tmp_path, progress=False)
    assert result["stages"] == {"curate": "done", "train instruct": "done", "train reason": "done", "eval": "done",
                                "export": "done"}
    reason = json.loads((tmp_path / "train-reason" / "train_config.json").read_text())
    assert reason["method"] == "grpo" and reason["model"]["init_from"] == str(tmp_path / "train-instruct")
    rollouts = [json.loads(line) for line in (tmp_path / "train-reason" / ROLLOUTS_FILE).read_text().splitlines()]
    assert len(rollouts) == 3 * 4 and {r["step"] for r in rollouts} == {1, 2, 3}
    # domain and general evaluation before training and after each stage
    rows = json.loads((tmp_path / "eval" / "learning.json").read_text())
    assert [r["point"] for r in rows] == ["base", "instruct", "reason"]
    assert all("domain_mcq_answered" in r and isinstance(r["general_mcq_accuracy"], float) for r in rows)
    assert "- reason: 3 steps logged" in (tmp_path / "summary.md").read_text()

    # the GRPO stage again, preempted after its first step (its checkpoint saved, as on SIGTERM): the rerun
    # resumes the stage and ends where the uninterrupted one did
    straight = tmp_path / "train-reason-straight"
    (tmp_path / "train-reason").rename(straight)
    train = loop.train

    def preempted_in_grpo(cfg, out, **kwargs):
        if cfg.method != "grpo":
            return train(cfg, out, **kwargs)
        return dataclasses.replace(train(cfg, out, stop_after=1, **kwargs), preempted=True)

    monkeypatch.setattr(loop, "train", preempted_in_grpo)
    with pytest.raises(SystemExit, match="rerun the same command to resume"):
        run(config, tmp_path, progress=False)
    monkeypatch.undo()
    assert len((tmp_path / "train-reason" / "metrics.jsonl").read_text().splitlines()) == 1
    again = run(config, tmp_path, progress=False)
    assert again["stages"]["train instruct"] == "skipped (up to date)" and again["stages"]["train reason"] == "done"
    for name in ("metrics.jsonl", ROLLOUTS_FILE):
        resumed = [json.loads(line) for line in (tmp_path / "train-reason" / name).read_text().splitlines()]
        whole = [json.loads(line) for line in (straight / name).read_text().splitlines()]
        key = ("loss", "reward") if name == "metrics.jsonl" else ("item", "seed", "text", "reward")
        assert [[r[k] for k in key] for r in resumed] == [[r[k] for k in key] for r in whole]


def test_a_stage_missing_what_it_reads_fails_before_any_work(tmp_path):
    from diabetica_jax.configuration import ConfigFileError

    missing = grpo_run(tmp_path / "no-items.csv")
    with pytest.raises(ConfigFileError, match=r"stages\[1\]\.train\.grpo\.items: .*no-items\.csv not found"):
        run(load_run_config(DEMO, missing), tmp_path / "run", progress=False)
    uncurated = TINY + ["stages=[{name: prefer, train: {method: dpo, preference: {pairs: curated}}}]"]
    with pytest.raises(ConfigFileError, match=r"stages\[0\]\.train\.preference\.pairs: curated reads the curated "
                                              r"pairs, but curate\.pairs\.backend is none"):
        run(load_run_config(DEMO, uncurated), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "data").exists()
