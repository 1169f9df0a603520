"""Curation: the Diabetica files parse, every filter works on the demo corpus, the teacher path is robust."""

import json
import re

import pytest
from benchmark_files import DIABETICA
from fake_openai import FakeOpenAI

from diabetica_jax.curate.collect import collect
from diabetica_jax.curate.config import InputSection, load_curate_config
from diabetica_jax.curate.pipeline import curate
from diabetica_jax.data.mcq import MCQParseError, parse_answer, parse_question
from diabetica_jax.data.records import Record, Reject


def _split(items):
    items = list(items)
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Reject)]


@pytest.mark.shared
def test_every_diabetica_mcq_parses_with_its_answer_letter():
    records, rejects = _split(collect(InputSection(str(DIABETICA / "ZhiCheng_MCQ_A1.csv"))))
    assert len(records) == 235 and not rejects
    assert all(r.kind == "mcq" and r.answer in r.options and len(r.options) == 5 for r in records)
    first = records[0]
    assert first.answer == "E" and first.options["E"].startswith("促肾上腺皮质激素")
    assert first.messages[1]["content"] == f"E. {first.options['E']}"


@pytest.mark.shared
def test_cloze_file_is_decoded_from_gbk():
    raw = (DIABETICA / "fill-in-the-blank.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    records, rejects = _split(collect(InputSection(str(DIABETICA / "fill-in-the-blank.csv"))))
    assert len(records) == 35 and not rejects
    assert all(r.kind == "cloze" and "（）" in r.messages[0]["content"] for r in records)
    assert records[0].messages[0]["content"].startswith("糖尿病是指一组以") and records[0].language == "zh"


@pytest.mark.shared
def test_xlsx_with_renamed_columns():
    records, rejects = _split(collect(InputSection(str(DIABETICA / "120_benchmark.xlsx"), fields={"answer": "response"})))
    assert len(records) == 120 and not rejects and {r.kind for r in records} == {"qa"}
    unmapped = list(collect(InputSection(str(DIABETICA / "120_benchmark.xlsx"))))
    assert all(isinstance(r, Reject) and r.reason == "missing field 'answer'" for r in unmapped)
    assert unmapped[0].provenance == {"file": str(DIABETICA / "120_benchmark.xlsx"), "row": 0}


@pytest.mark.parametrize("text", [
    "Question: 下列哪项正确\nOption A: 甲\nOption B: 乙\nOption C: 丙",
    "下列哪项\n正确\n选项A：甲\n选项B：乙\n选项C：丙",
    "下列哪项正确\n(A) 甲\n（B）乙\nC、丙",
    "下列哪项正确\nA. 甲\nB．乙\nC: 丙",
])
def test_mcq_format_variations(text):
    stem, options = parse_question(text)
    assert stem.replace(" ", "") == "下列哪项正确" and options == {"A": "甲", "B": "乙", "C": "丙"}
    for answer in ("B：乙", "B:乙", "B", "答案：B", "（B）"):
        assert parse_answer(answer, options) == "B"
    with pytest.raises(MCQParseError, match="letter E is not among"):
        parse_answer("E：戊", options)


def test_other_formats(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "二甲双胍的常见不良反应？", "answer": "胃肠道反应。"}, {"question": "", "answer": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "notes.md").write_text("# 胰岛素\n\n胰岛素需冷藏保存。\n\n## 注射\n\n轮换注射部位。\n", encoding="utf-8")
    for path in (tmp_path / "qa.parquet", tmp_path / "hf"):
        records, rejects = _split(collect(InputSection(str(path))))
        assert len(records) == 1 and records[0].kind == "qa"
        assert rejects[0].reason == "missing field 'question'" and rejects[0].provenance["row"] == 1
    passages, _ = _split(collect(InputSection(str(tmp_path / "notes.md"))))
    assert [p.text for p in passages] == ["胰岛素\n胰岛素需冷藏保存。", "注射\n轮换注射部位。"]


def _fake_teacher(messages, model):
    prompt = messages[-1]["content"]
    if model == "base-model":  # refinement: echo the reference, except where told to lose content
        reference = prompt.split("Reference answer:\n", 1)[1]
        if "维生素B12" in reference:
            return "请咨询医生。"
        if reference.startswith("Answer: C"):
            return "A. something else"
        return "In other words: " + reference
    if prompt.startswith("You are preparing study material"):
        passage = prompt.split("Passage:\n", 1)[1]
        if "肾功能" in passage:  # a passage whose teacher call always fails
            return 500
        sentences = [s for s in re.split(r"(?<=[。.])\s*", passage) if len(s) > 15][:2]
        pairs = [{"question": f"What does the passage say ({i})?", "answer": s} for i, s in enumerate(sentences)]
        pairs.append({"question": "Unrelated?", "answer": "Zebras migrate across the Serengeti every year."})
        return json.dumps(pairs, ensure_ascii=False)
    letter = re.search(r'Begin with "Answer: ([A-E])"', prompt).group(1)
    if "磺脲类" in prompt:
        return "Answer: B. It is the other one."  # picks the wrong option
    if "TIR" in prompt:
        return ("sleep", 2.0, f"Answer: {letter}")  # slower than the timeout
    return f"Answer: {letter}. Because the guideline says so."


def test_demo_curation_end_to_end_with_a_fake_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_TEACHER_KEY", "sk-test-secret")
    with FakeOpenAI(_fake_teacher) as server:
        overrides = [
            "demo=true", "augment.backend=openai", f"augment.base_url={server.base_url}", "augment.model=teacher",
            "augment.api_key_env=DEMO_TEACHER_KEY", "augment.timeout=0.5", "augment.retries=2",
            "refine.backend=openai", f"refine.base_url={server.base_url}", "refine.model=base-model",
        ]
        card = curate(load_curate_config(None, overrides), tmp_path / "out", progress=False)
        auth = {(r["model"], h) for r, h in zip(server.requests, server.auth_headers)}
        assert auth == {("teacher", "Bearer sk-test-secret"), ("base-model", None)}  # the key goes only where asked

    stages = {s["name"]: (s["entered"], s["kept"], s["rejected"]) for s in card["stages"]}
    assert stages == {
        "collect": (194, 190, 4), "relevance": (190, 182, 8), "quality": (182, 178, 4),
        "exact_dedup": (178, 172, 6), "near_dedup": (172, 165, 7), "decontaminate": (165, 159, 6),
        "augment": (159, 156, 3),
    }
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    reasons = [r["reason"] for r in rejects]
    # malformed input: kept as rejects with their reasons, and the run went on
    assert sum(r.startswith("bad JSON") for r in reasons) == 2
    assert "missing field 'answer'" in reasons and any(r.startswith("undecodable bytes") for r in reasons)
    # planted benchmark items, also the edited ones, are gone
    overlaps = [r for r in rejects if r["stage"] == "decontaminate"]
    assert len(overlaps) == 6 and any("以下" in json.dumps(r["record"], ensure_ascii=False) for r in overlaps)
    # teacher: wrong option, HTTP errors and timeouts are retried then rejected with the reason
    augment_reasons = sorted(r["reason"] for r in rejects if r["stage"] == "augment" and "record" in r
                             and r["record"]["kind"] != "qa")
    assert "explanation picks B, the key is A" in augment_reasons
    assert any("teacher failed after 2 attempts: HTTP 500" in r for r in augment_reasons)
    assert any("teacher failed after 2 attempts: timeout" in r for r in augment_reasons)
    assert card["augment"]["generated"] == card["augment"]["generated_kept"] + card["augment"]["generated_rejected"]
    assert card["augment"]["generated_rejected"] >= 10  # one ungrounded pair per passage
    assert card["kept"] + card["rejected"] == card["collected"] + card["generated"]
    assert card["refine"]["rewritten"] > 100 and card["refine"]["kept_original:lost key content"] >= 2
    assert card["refine"]["kept_original:changed or lost the option"] >= 1
    for name in ("data_card.json", "data_card.md", "data_card.png", "rejects.jsonl", "samples.jsonl"):
        assert (tmp_path / "out" / name).is_file()
    assert len(list((tmp_path / "out" / "shards").glob("*.array_record"))) == 2
    assert "sk-test-secret" not in (tmp_path / "out" / "data_card.json").read_text()

    # a rerun pays nothing twice: successful calls come from the cache
    with FakeOpenAI(_fake_teacher) as server:
        overrides = [o.replace(o.split("=", 1)[1], server.base_url) if "base_url" in o else o for o in overrides]
        again = curate(load_curate_config(None, overrides), tmp_path / "out", progress=False)
    passages_and_mcqs = card["stages"][-2]["by_kind"]["passage"] + card["stages"][-2]["by_kind"]["mcq"]
    assert again["kept"] == card["kept"] and again["augment"]["cache_hits"] == passages_and_mcqs - 2
    assert again["augment"]["calls"] == 2 * 2  # only the two failing records are tried again


def test_config_errors_name_the_key():
    from diabetica_jax.configuration import ConfigFileError

    with pytest.raises(ConfigFileError, match="augment.model: required with backend 'openai'"):
        load_curate_config(None, ["augment.backend=openai"])
    with pytest.raises(ConfigFileError, match="unknown key 'quality.min_len'"):
        load_curate_config(None, ["quality.min_len=3"])


@pytest.mark.slow
def test_hub_dataset_without_a_network_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="some-org/diabetes-qa: cannot load this dataset from the Hugging Face hub"):
        list(collect(InputSection("some-org/diabetes-qa", format="hf_hub")))


@pytest.mark.slow
def test_local_model_backend_answers_through_the_engine():
    from diabetica_jax.llm.local import LocalModel

    teacher = LocalModel("tiny")
    reply = teacher.chat([{"role": "user", "content": "什么是糖尿病？"}], max_tokens=4, temperature=0.0)
    assert isinstance(reply, str) and reply == teacher.chat([{"role": "user", "content": "什么是糖尿病？"}], 4, 0.0)
    assert teacher.name == "local:tiny"


@pytest.mark.parametrize("reply, letter", [
    ("Answer: C", "C"), ("答案：D", "D"), ("B. Metformin first", "B"), ("正确答案是（E）", "E"),
    ("The answer is a combination of diet and drugs. Answer: C", "C"),  # the article "a" is no option
    ("No letter committed here", None),
])
def test_picked_option_reads_the_letter_a_reply_commits_to(reply, letter):
    from diabetica_jax.data.mcq import picked_option

    assert picked_option(reply) == letter
