"""Faithful mode out of the box: the paper's protocol shipped with the package, read when no protocol is given."""

import fnmatch
import json
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from benchmark_files import DIABETICA
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import load_config
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.evaluation.prompts import default_protocol_path, from_protocol
from diabetica_jax.evaluation.runner import evaluate, mode_prompts

# The MCQ prompt of the Diabetica repository's evaluation/mcq_eval.py (addPrompt after the question), written
# out here so the test does not only compare the shipped file with itself.
PAPER_MCQ = "{question}\n请根据题干和选项，给出唯一的最佳答案。输出内容仅为选项英文字母，不要输出任何其他内容。不要输出汉字。"
PROVENANCE = ("repository", "repository_path", "commit", "licence", "note")  # keys the shipped file adds


def _shipped() -> dict:
    return json.loads(default_protocol_path().read_text(encoding="utf-8"))


@pytest.mark.shared
def test_the_shipped_protocol_is_the_shared_one_with_its_provenance_added():
    shipped, shared = _shipped(), json.loads((DIABETICA / "protocol.json").read_text(encoding="utf-8"))
    # the paper's data, exactly: prompts, decoding, scoring rules, judge, published numbers, training recipe;
    # only the provenance keys and the mcq file notes (where A2 is, how to pool) are the shipped file's own
    assert [k for k in shipped if k not in PROVENANCE] == list(shared)
    for key in shared:
        if key != "mcq":
            assert shipped[key] == shared[key], key
    assert {k: v for k, v in shipped["mcq"].items() if k != "files"} == {
        k: v for k, v in shared["mcq"].items() if k != "files"}
    # and faithful mode reads the same from both (`protocol`, the record of the file read, aside)
    read = [vars(from_protocol(p)) | {"protocol": None} for p in (default_protocol_path(), DIABETICA / "protocol.json")]
    assert read[0] == read[1]


def test_the_shipped_protocol_records_source_commit_and_licence():
    shipped = _shipped()
    assert shipped["repository"] == "https://github.com/waltonfuture/Diabetica"
    assert shipped["repository_path"] == "evaluation/" and shipped["commit"] == "3cb419e"
    assert "waltonfuture/Diabetica" in shipped["source"] and "3cb419e" in shipped["source"]
    licence = shipped["licence"]
    assert (licence["name"], licence["copyright"]) == ("MIT", "Copyright (c) 2024 Lai Wei")
    folder = resources.files("diabetica_jax.evaluation").joinpath("protocols")
    text = folder.joinpath(licence["file"]).read_text(encoding="utf-8")
    assert "MIT License" in text and licence["copyright"] in text and "Permission is hereby granted" in text
    assert any("ZhiCheng_MCQ_A2.csv" in f and "evaluation/data/" in f for f in shipped["mcq"]["files"])
    # a wheel carries both files: package-data names them
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["diabetica_jax"]
    for name in ("diabetica.json", licence["file"]):
        assert any(fnmatch.fnmatch(f"evaluation/protocols/{name}", p) for p in patterns), name


def test_faithful_mode_needs_no_protocol_file():
    cfg = EvalConfig(mode="faithful")
    prompts = mode_prompts(cfg, "faithful")
    assert prompts.mcq_rule == "first_letter" and prompts.score_rule == "first_digit"
    assert prompts.mcq == PAPER_MCQ and prompts.system == "You are a helpful assistant."
    assert prompts.decoding["mcq"] == {"max_new_tokens": 32}
    assert prompts.protocol["path"] == str(default_protocol_path()) and prompts.protocol["commit"] == "3cb419e"
    assert load_config(EvalConfig, None, ["modes=[own, faithful]"]).protocol is None  # both modes validate too


def _endpoint_eval(tmp_path, server, *extra):
    cfg = load_config(EvalConfig, None, [
        "mode=faithful", "model.path=openai:fake", f"endpoint.base_url={server.base_url}",
        "tasks=[{task: mcq, files: ['embedded:mini_mcq.csv'], limit: 4}]", *extra])
    return evaluate(cfg, tmp_path, progress=False)


def test_faithful_report_records_the_protocol_and_keeps_the_original_letter_rule(tmp_path):
    # "Answer: B" scores as A: the original takes the first A-E character anywhere in the reply
    with FakeOpenAI(lambda messages, model: "Answer: B") as server:
        result = _endpoint_eval(tmp_path, server)
    assert result["protocol"] == {"path": str(default_protocol_path()), "source": _shipped()["source"],
                                  "repository": "https://github.com/waltonfuture/Diabetica", "commit": "3cb419e"}
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["protocol"] == result["protocol"]
    items = json.loads((tmp_path / "report_mcq.json").read_text(encoding="utf-8"))["items"]
    assert len(items) == 4 and all(i["prediction"] == "A" for i in items)
    assert all(i["correct"] == (i["answer"] == "A") for i in items)
    assert all(i["prompt"].endswith(PAPER_MCQ.removeprefix("{question}")) for i in items)
    assert result["published"]["mcq_pooled_accuracy_pct"]["Diabetica-7B"] == 87.2
    assert str(default_protocol_path()) in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_a_protocol_file_still_overrides_the_shipped_one(tmp_path):
    own = {**_shipped(), "commit": "0000000"}
    own["mcq"] = {**own["mcq"], "user_prompt": "{question}\n只答字母。"}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(own, ensure_ascii=False), encoding="utf-8")
    with FakeOpenAI(lambda messages, model: "B") as server:
        result = _endpoint_eval(tmp_path / "out", server, f"protocol={path}")
    assert result["protocol"]["path"] == str(path) and result["protocol"]["commit"] == "0000000"
    items = json.loads((tmp_path / "out" / "report_mcq.json").read_text(encoding="utf-8"))["items"]
    assert all(i["prompt"].endswith("\n只答字母。") for i in items)


def test_own_mode_alone_reads_no_protocol(tmp_path):
    with FakeOpenAI(lambda messages, model: "B") as server:
        result = _endpoint_eval(tmp_path, server, "mode=own")
    assert result["protocol"] is None and result["published"] == {}


def test_compare_defaults_to_the_shipped_published_rows_only_when_the_reports_carry_none(tmp_path):
    from diabetica_jax.evaluation.compare import write_comparison

    report = {"model": "m", "mode": "own", "tasks": {"mcq": {"n_items": 4, "accuracy": 0.5}}, "published": {}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    result = write_comparison([tmp_path / "run"], tmp_path / "cmp")
    published = _shipped()["published_results"]
    models = set(published["mcq_pooled_accuracy_pct"]) | set(published["dialog_gpt4_judge_mean"])
    assert {r["model"] for r in result["rows"] if r["published"]} == models
    assert json.loads(Path(result["json"]).read_text(encoding="utf-8"))["protocol"] == str(default_protocol_path())
    # reports that carry published numbers keep theirs
    report["published"] = {"mcq_pooled_accuracy_pct": {"Model-X": 50.0}}
    (tmp_path / "run" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    rows = write_comparison([tmp_path / "run"], tmp_path / "cmp2")["rows"]
    assert [r["model"] for r in rows if r["published"]] == ["Model-X"]


def test_the_cli_runs_faithful_mode_on_one_file_without_a_protocol(tmp_path, capsys):
    """`diabetica-jax eval mode=faithful --task mcq --data FILE --out DIR` with the tiny random model."""
    from diabetica_jax.cli import main
    from diabetica_jax.demo import BENCHMARK_DIR

    out = tmp_path / "out"
    assert main(["eval", "mode=faithful", "--task", "mcq", "--data", str(BENCHMARK_DIR / "mini_mcq.csv"),
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["mode"] == "faithful" and report["protocol"]["path"] == str(default_protocol_path())
    assert report["tasks"]["mcq"]["n_items"] == 10 and report["tasks"]["mcq"]["decoding"]["max_new_tokens"] == 32
    assert "Diabetica-7B" in capsys.readouterr().out  # the published rows, for reference
