"""The GRPO stage (method: grpo) after a format-only SFT stage, on the synthetic MCQ set: rollouts logged per item
and reproducible, rewards by the MCQ answer rule, exact resume."""

import json
import re

import pytest
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import load_config
from diabetica_jax.curate.write import write_shards
from diabetica_jax.demo import synthetic_mcq
from diabetica_jax.evaluation.prompts import OWN
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.loop import train
from diabetica_jax.train.rollouts import ROLLOUTS_FILE

COMMON = ["model.preset=tiny", "model.runtime.dtype=float32", "model.runtime.remat=none", "mesh.fsdp=2",
          "data.seq_len=128", "loop.loss_chunk=32", "loop.tensorboard=false", "loop.async_checkpoint=false",
          "optim.warmup_steps=0"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """The tiny preset taught to answer with a letter (random letters: no keys learnt)."""
    root = tmp_path_factory.mktemp("grpo")
    records = synthetic_mcq.format_records(32, system=OWN.system, template=OWN.mcq)
    write_shards(root / "curated", records, 1)
    run_dir = root / "sft"
    cfg = load_config(TrainConfig, None, COMMON + [
        "data.source=curated", f"data.path={root / 'curated'}", "data.global_batch=8", "data.packing=none",
        "data.epochs=20", "optim.lr=1e-2", "loop.steps=24", "loop.checkpoint_every=24"])
    train(cfg, run_dir, progress=False)
    return run_dir, synthetic_mcq.write_items(root / "items.csv", 16)


def grpo_config(sft_run, *overrides):
    run_dir, items = sft_run
    return load_config(TrainConfig, None, COMMON + [
        "method=grpo", f"grpo.items={items}", f"model.init_from={run_dir}", "grpo.group_size=4",
        "grpo.max_new_tokens=4", "grpo.temperature=0.7", "data.global_batch=8", "data.epochs=10", "optim.lr=3e-3",
        "loop.steps=4",
        "loop.checkpoint_every=2", *overrides])


def read(run_dir, name):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def _judge(messages, model):
    """A fake judge: 10 for a reply that opens with the keyed letter, 4 for another, no score for an empty one."""
    prompt = messages[-1]["content"]
    key = re.search(r"The correct option is ([A-D])", prompt).group(1)
    reply = prompt.split("Answer to grade:\n", 1)[1].split("\n\nCheck the answer", 1)[0].strip()
    if not reply:
        return "I cannot grade an empty answer."
    return "Score: 10" if reply.startswith(key) else "Score: 4"


@pytest.mark.slow
def test_grpo_rolls_out_rewards_and_resumes_exactly(sft_run, tmp_path):
    with FakeOpenAI(_judge) as judge:
        _rolls_out_rewards_and_resumes(sft_run, tmp_path, ["grpo.judge.backend=openai", "grpo.judge.model=judge",
                                                           f"grpo.judge.base_url={judge.base_url}",
                                                           "grpo.judge_weight=0.5"])


def _rolls_out_rewards_and_resumes(sft_run, tmp_path, judged):
    straight = tmp_path / "straight"
    train(grpo_config(sft_run, *judged), straight, progress=False)
    rollouts = read(straight, ROLLOUTS_FILE)
    assert len(rollouts) == 4 * 8 and {r["step"] for r in rollouts} == {1, 2, 3, 4}
    for r in rollouts:  # every completion logged with what the rule read, the judge's rating and the reward
        scored = {True: 10.0, False: 4.0}[r["text"].strip().startswith(r["expected"])] if r["text"].strip() else None
        assert r["judge_score"] == scored and r["expected"] in "ABCD"
        assert r["judge_reward"] == (0.0 if scored is None else pytest.approx(0.5 * (scored - 1) / 9))
        assert r["reward"] == pytest.approx(float(r["answer"] == r["expected"]) + r["judge_reward"])
    assert {r["judge_status"] for r in rollouts} <= {"scored", "unparsed"}
    # the SFT stage taught the format: completions commit to letters, and some earn the reward
    assert sum(r["answer"] is not None for r in rollouts) >= 8 and any(r["answer"] == r["expected"] for r in rollouts)
    metrics = read(straight, "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m, step in zip(metrics, (1, 2, 3, 4)):
        assert m["reward"] == pytest.approx(sum(r["reward"] for r in rollouts if r["step"] == step) / 8)
    assert any(m["grad_norm"] > 0 for m in metrics)

    resumed = tmp_path / "resumed"
    train(grpo_config(sft_run, *judged), resumed, progress=False, stop_after=2)
    train(grpo_config(sft_run, *judged), resumed, progress=False)
    again = read(resumed, ROLLOUTS_FILE)
    assert [(r["item"], r["seed"], r["text"]) for r in again] == [(r["item"], r["seed"], r["text"]) for r in rollouts]
    assert [m["loss"] for m in read(resumed, "metrics.jsonl")] == [m["loss"] for m in metrics]
