"""The preference stage (method: dpo) end to end on the tiny preset: it starts at the reference, learns the
preference, accumulates exactly, resumes exactly, and rejects the pairs it cannot use with their reasons."""

import json

import numpy as np
import pytest

from diabetica_jax.configuration import InputError, load_config
from diabetica_jax.train.config import TrainConfig
from diabetica_jax.train.loop import train
from diabetica_jax.train.pair_feed import REFERENCE_FILE, REJECTS_FILE

LETTERS = "ABCD"


def write_pairs(path, n=8, extra=()):
    """MCQ-like pairs: the keyed letter is chosen, a refusal rejected (one direction to learn)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            key = LETTERS[i % 4]
            f.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}: which option lowers HbA1c?",
                                "chosen": f"The answer is {key}.", "rejected": "I cannot tell which option."}) + "\n")
        for line in extra:
            f.write(line + "\n")
    return path


def dpo_config(pairs, *overrides):
    base = ["model.preset=tiny", "method=dpo", f"preference.pairs={pairs}", "data.seq_len=128",
            "data.global_batch=4", "data.epochs=10", "optim.lr=1e-2", "optim.warmup_steps=0", "loop.steps=6", "loop.checkpoint_every=3",
            "loop.loss_chunk=32", "loop.tensorboard=false", "loop.async_checkpoint=false", "mesh.fsdp=2"]
    return load_config(TrainConfig, None, base + list(overrides))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


@pytest.fixture(scope="module")
def straight_run(pairs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dpo")
    train(dpo_config(pairs), run_dir, progress=False)
    return run_dir


@pytest.mark.slow
def test_dpo_starts_at_the_reference_and_learns_the_preference(straight_run):
    history = metrics(straight_run)
    first, last = history[0], history[-1]
    # policy == reference on the first step: every margin 0, the loss log 2
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert abs(first["rewards/margin"]) < 1e-5 and first["pairs"] == 4
    assert last["loss"] < 0.5 * np.log(2) and last["rewards/margin"] > 0.5 and last["rewards/accuracy"] == 1.0
    assert (straight_run / REFERENCE_FILE).is_file()


@pytest.mark.slow
def test_dpo_resumes_exactly_and_reads_its_reference_back(pairs, straight_run, tmp_path):
    cfg = dpo_config(pairs)
    train(cfg, tmp_path, progress=False, stop_after=3)
    written = (tmp_path / REFERENCE_FILE).stat().st_mtime_ns
    train(cfg, tmp_path, progress=False)
    assert (tmp_path / REFERENCE_FILE).stat().st_mtime_ns == written  # read back, not recomputed
    resumed, straight = metrics(tmp_path), metrics(straight_run)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(resumed, straight):
        assert a["loss"] == b["loss"] and a["rewards/margin"] == b["rewards/margin"]


@pytest.mark.slow
def test_accumulated_micro_batches_equal_one_batch(pairs, tmp_path):
    """grad_accum 2 gives the loss and gradient norm of the whole batch at once, for DPO and for ORPO (whose
    NLL is a token mean over the whole batch)."""
    for loss in ("sigmoid", "orpo"):
        runs = []
        for accum in (1, 2):
            run_dir = tmp_path / f"{loss}{accum}"
            train(dpo_config(pairs, f"data.grad_accum={accum}", f"preference.loss={loss}", "loop.steps=2",
                             "preference.pairs_per_row=2", "data.seq_len=256", "data.global_batch=2", "mesh.fsdp=1"),
                  run_dir, progress=False)
            runs.append(metrics(run_dir))
        for a, b in zip(*runs):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
            assert a["pairs"] == b["pairs"] == 4


@pytest.mark.slow
def test_unusable_pairs_are_rejected_with_their_reason(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=4, extra=[
        "{not json",
        json.dumps({"id": "no-rejected", "prompt": "Why?", "chosen": "Because."}),
        json.dumps({"id": "same", "prompt": "Why?", "chosen": "Because.", "rejected": "Because."}),
        json.dumps({"id": "long", "prompt": "why " * 200, "chosen": "Yes.", "rejected": "No."}),
    ])
    run_dir = tmp_path / "run"
    train(dpo_config(pairs, "loop.steps=1"), run_dir, progress=False)
    rejects = {r["id"]: r for r in map(json.loads, (run_dir / REJECTS_FILE).read_text().splitlines())}
    assert set(rejects) == {"pairs.jsonl:5", "no-rejected", "same", "long"}
    assert "not JSON" in rejects["pairs.jsonl:5"]["reason"]
    assert rejects["no-rejected"]["field"] == "rejected" and rejects["no-rejected"]["reason"] == "missing"
    assert "exceed a pair's 128" in rejects["long"]["reason"]

    nothing = tmp_path / "none.jsonl"
    nothing.write_text("{not json\n")
    with pytest.raises(InputError, match="preference.pairs=.*none.jsonl: no usable pair .*not JSON"):
        train(dpo_config(nothing), tmp_path / "run2", progress=False)


def test_dpo_configs_fail_before_any_work(tmp_path):
    from diabetica_jax.configuration import ConfigFileError

    cases = {
        "preference.pairs": ["method=dpo"],
        "preference.reference": ["method=dpo", "preference.pairs=p.jsonl", "preference.loss=orpo",
                                 f"preference.reference={tmp_path}"],
        "preference.label_smoothing": ["preference.label_smoothing=0.5"],
        # the curated pairs sit beside curated data only
        "preference.pairs: curated names the pairs beside curated data": ["method=dpo", "preference.pairs=curated"],
        # a judge reward needs a judge, and a judge a weight
        "grpo.judge_weight: a judge reward needs both": ["grpo.judge_weight=0.5"],
        "grpo.judge_weight: a judge reward needs both judge.backend": ["grpo.judge.backend=openai",
                                                                       "grpo.judge.model=j"],
    }
    for key, overrides in cases.items():
        with pytest.raises(ConfigFileError, match=key.replace(".", r"\.")):
            load_config(TrainConfig, None, overrides)
    curated = load_config(TrainConfig, None, ["method=dpo", "preference.pairs=curated", "data.source=curated",
                                              f"data.path={tmp_path}"])
    assert curated.pairs_file == str(tmp_path / "pairs.jsonl")
    with pytest.raises(InputError, match="missing.jsonl: preference pairs file not found"):
        train(dpo_config(tmp_path / "missing.jsonl"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
