"""Input encodings: UTF-8 and GBK decode; Big5 (often valid GBK byte for byte) is a reject that names
what it looks like, never GBK mojibake."""

import json

import pytest

from diabetica_jax.curate.collect import collect
from diabetica_jax.curate.config import InputSection
from diabetica_jax.data.records import Record, Reject
from diabetica_jax.data.tables import read_rows
from diabetica_jax.data.text import decode
from diabetica_jax.demo import CORPUS_DIR

BIG5_REASON = "undecodable bytes: looks like big5, not UTF-8 or GBK"
QA = [("糖尿病的典型症狀是什麼？", "多飲、多尿、多食和體重減輕。"),
      ("空腹血糖的正常範圍是多少？", "3.9至6.1毫摩爾每升。"),
      ("胰島素應該如何保存？", "未開封的胰島素應冷藏於2至8攝氏度。")]


def _big5(text: str) -> bytes:
    data = text.encode("big5")
    data.decode("gb18030")  # the trap: these bytes are valid GBK too, so a blind fallback reads mojibake
    return data


def _split(items):
    items = list(items)
    return [i for i in items if not isinstance(i, Reject)], [i for i in items if isinstance(i, Reject)]


def test_decode_accepts_utf8_and_gbk_and_names_big5():
    assert decode("糖尿病".encode("utf-8-sig")) == ("糖尿病", "utf-8")
    text, encoding = decode((CORPUS_DIR / "mcq_gbk.csv").read_bytes())
    assert encoding == "gbk" and "糖尿病" in text
    assert decode("\n".join(q + "," + a for q, a in QA).encode("gbk"))[1] == "gbk"  # traditional characters in GBK
    with pytest.raises(UnicodeDecodeError) as error:
        decode(_big5("\n".join(q + "," + a for q, a in QA)))
    assert error.value.reason == "looks like big5, not UTF-8 or GBK"


def test_big5_csv_rows_are_rejects_with_the_reason(tmp_path):
    path = tmp_path / "big5.csv"
    path.write_bytes(_big5("question,answer\n" + "".join(f"{q},{a}\n" for q, a in QA) + "What is HbA1c?,Mean glucose.\n"))
    rows, rejects = _split([row for _, row in read_rows(path, "csv")])
    assert [r.reason for r in rejects] == [BIG5_REASON] * 3 and [r.provenance["row"] for r in rejects] == [0, 1, 2]
    assert rows == [{"question": "What is HbA1c?", "answer": "Mean glucose."}]  # the plain ASCII row is fine
    # through curation's collect stage as well: rejects, no mojibake'd records
    records, rejects = _split(collect(InputSection(str(path))))
    assert len(rejects) == 3 and {r.reason for r in rejects} == {BIG5_REASON} and len(records) == 1


def test_big5_jsonl_rows_are_rejects_with_the_reason(tmp_path):
    path = tmp_path / "big5.jsonl"
    lines = [json.dumps({"question": q, "answer": a}, ensure_ascii=False) for q, a in QA]
    path.write_bytes(_big5("\n".join(lines + ['{"question": "What is HbA1c?", "answer": "Mean glucose."}']) + "\n"))
    rows, rejects = _split([row for _, row in read_rows(path, "jsonl")])
    assert [r.reason for r in rejects] == [BIG5_REASON] * 3
    assert rows == [{"question": "What is HbA1c?", "answer": "Mean glucose."}]


def test_a_gbk_jsonl_file_decodes_line_by_line(tmp_path):
    # short lines alone are ambiguous to the detector; the file as a whole is not
    questions = ["每周运动多久？", "低血糖怎么办？", "选项A：60分钟", "糖化血红蛋白目标？", "二甲双胍的副作用？"]
    path = tmp_path / "gbk.jsonl"
    path.write_bytes("\n".join(json.dumps({"question": q, "answer": "A"}, ensure_ascii=False) for q in questions).encode("gbk"))
    rows, rejects = _split([row for _, row in read_rows(path, "jsonl")])
    assert not rejects and [r["question"] for r in rows] == questions


def test_a_big5_document_is_a_reject_not_passages(tmp_path):
    path = tmp_path / "guide.md"
    path.write_bytes(_big5("# 糖尿病飲食\n\n" + "\n\n".join(a for _, a in QA) + "\n"))
    items = list(collect(InputSection(str(path))))
    assert not any(isinstance(i, Record) for i in items)
    assert len(items) == 1 and items[0].reason.startswith("undecodable bytes")
