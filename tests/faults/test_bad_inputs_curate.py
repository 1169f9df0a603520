"""Bad input files given to `diabetica-jax curate`, each as a user met it: curation never dies on one bad record and
never loses one silently. A malformed record is a reject in rejects.jsonl (file, row, reason) and the run goes on,
with kept + rejected = collected; a file that cannot be read at all is refused before any work in one line naming
it (exit code 2), or, when that shows only while reading it, is one reject naming the file.

The CLI runs in this process (`diabetica_jax.cli.main`), as in test_bad_inputs_cli.py.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from diabetica_jax.cli import main

pytestmark = pytest.mark.bad_input

DEEP = 10_000  # far past the interpreter's recursion limit


def _qa(k: int) -> dict:
    """A distinct, relevant, long enough QA row (kept by every filter)."""
    topics = ["insulin lowers blood glucose", "metformin reduces hepatic glucose output", "HbA1c reflects glucose",
              "foot ulcers need daily checks", "hypoglycaemia needs fast sugar", "retinopathy screening is yearly"]
    return {"question": f"In diabetes care, why is it said that {topics[k % len(topics)]} (case {k})?",
            "answer": f"Because {topics[k % len(topics)]}; patient number {k} was told so by the diabetes clinic."}


def _curate(tmp: Path, ledger, *inputs: Path) -> tuple[dict, list[dict], list[dict]]:
    """Curate the inputs through the CLI; (data card, rejects, kept records). The run must succeed and account for
    every collected record (kept or rejected: none lost, which the ledger counts)."""
    out = tmp / "out"
    code = main(["curate", *[a for p in inputs for a in ("--input", str(p))], "--out", str(out)])
    assert code == 0
    card = json.loads((out / "data_card.json").read_text())
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    from diabetica_jax.data.shards import shard_records

    kept = [r.to_json() for r in shard_records(out)]
    ledger.lost(card["collected"] - len(kept) - len(rejects), card["collected"])
    assert card["kept"] + card["rejected"] == card["collected"] == len(kept) + len(rejects)
    return card, rejects, kept


def _collect_rejects(rejects: list[dict], path: Path) -> dict:
    """The collect-stage rejects of one file, by row."""
    return {r["provenance"].get("row"): r for r in rejects if r["stage"] == "collect"
            and r["provenance"]["file"] == str(path)}


def _refused(argv: list[str], expected: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("diabetica-jax curate: error: "), lines[0]
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


# ---- nesting deeper than any reader can walk -------------------------------------------------------------------

def test_a_deeply_nested_jsonl_line_is_a_reject_and_the_rest_is_kept(tmp_path, ledger):
    """Lines nested 10k levels (an array, an object) and one nested 500 levels inside a field (json.loads reads it;
    whatever walks it later might not): each a reject naming its row; the good lines around them are kept."""
    path = tmp_path / "qa.jsonl"
    lines = [json.dumps(_qa(0)),
             "[" * DEEP + "]" * DEEP,
             '{"a":' * DEEP + "1" + "}" * DEEP,
             json.dumps({**_qa(3), "meta": json.loads("[" * 500 + "]" * 500)}),
             json.dumps(_qa(4))]
    path.write_text("\n".join(lines) + "\n")
    card, rejects, kept = _curate(tmp_path, ledger, path)
    bad = _collect_rejects(rejects, path)
    assert set(bad) == {1, 2, 3}
    assert all(re.match(r"nested deeper than \d+ levels", r["reason"]) for r in bad.values())
    assert "'meta'" in bad[3]["reason"]
    assert {r["provenance"]["row"] for r in kept} == {0, 4}


def test_a_json_document_nested_too_deep_is_one_reject_naming_it(tmp_path, ledger):
    deep, good = tmp_path / "deep.json", tmp_path / "good.jsonl"
    deep.write_text("[" * DEEP + "]" * DEEP)
    good.write_text(json.dumps(_qa(1)) + "\n")
    card, rejects, kept = _curate(tmp_path, ledger, deep, good)
    (whole,) = [r for r in rejects if r["provenance"]["file"] == str(deep)]
    assert whole["stage"] == "collect" and "row" not in whole["provenance"]
    assert "nested deeper than" in whole["reason"]
    assert len(kept) == 1


def test_a_csv_messages_cell_nested_too_deep_is_a_reject(tmp_path, ledger):
    """A chat column holding JSON text: parsed while making the record, so checked there too."""
    import csv

    path = tmp_path / "chat.csv"
    turns = [{"role": "user", "content": _qa(2)["question"]}, {"role": "assistant", "content": _qa(2)["answer"]}]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(turns)])
        writer.writerow(["[" * DEEP + "]" * DEEP])
        writer.writerow([json.dumps(["a turn that is no object", "another"])])
    card, rejects, kept = _curate(tmp_path, ledger, path)
    bad = _collect_rejects(rejects, path)
    assert set(bad) == {1, 2} and "nested deeper than" in bad[1]["reason"]
    assert bad[2]["reason"] == "turn 0 is not an object with a role and content"
    assert len(kept) == 1


def test_numbers_too_long_to_convert_are_rejects(tmp_path, ledger):
    """json.loads refuses integers of more than 4300 digits with a ValueError that is no JSONDecodeError."""
    path, doc = tmp_path / "qa.jsonl", tmp_path / "doc.json"
    path.write_text(json.dumps(_qa(0)) + "\n" + '{"question": 1' + "0" * 5000 + "}\n")
    doc.write_text("[1" + "0" * 5000 + "]")
    card, rejects, kept = _curate(tmp_path, ledger, path, doc)
    assert "digits" in _collect_rejects(rejects, path)[1]["reason"]
    assert "digits" in _collect_rejects(rejects, doc)[None]["reason"]
    assert len(kept) == 1


# ---- characters no record may hold ------------------------------------------------------------------------------

def test_a_lone_surrogate_is_a_reject_naming_the_field(tmp_path, ledger):
    r"""`\ud800` without its pair decodes to a string that has no UTF-8 form: writing the record out would fail."""
    path = tmp_path / "notes.jsonl"
    text = "diabetes insulin \\ud800 glucose management for adults with type 2 diabetes and raised HbA1c"
    path.write_text("\n".join([json.dumps(_qa(0)),
                               '{"text": "' + text + '"}',
                               '{"question": "What does insulin do?", "answer": "ok", "no\\udfffte": "x"}',
                               json.dumps({"messages": [{"role": "user", "content": _qa(5)["question"]},
                                                        {"role": "assistant", "content": "glucose \ud800"}]},
                                          ensure_ascii=True)]) + "\n")
    card, rejects, kept = _curate(tmp_path, ledger, path)
    bad = _collect_rejects(rejects, path)
    assert set(bad) == {1, 2, 3}
    assert bad[1]["reason"] == "not valid Unicode: a lone surrogate U+D800 in field 'text'"
    assert "lone surrogate U+DFFF in a field name" in bad[2]["reason"]
    assert bad[3]["reason"] == "not valid Unicode: a lone surrogate U+D800 in field 'messages[1].content'"
    assert "\\ud800" in bad[1]["raw"]  # the raw text keeps the escape, readable
    assert len(kept) == 1


def test_nul_bytes_past_the_binary_sniff_are_rejects_with_their_row(tmp_path, ledger):
    """The binary sniff reads the first 64 KB: a NUL after it in a CSV, in a JSONL value (a \\u0000 escape) or in a
    text document is a reject naming the row and the field; nothing with a NUL reaches the training samples."""
    csv_path, jsonl, doc = tmp_path / "qa.csv", tmp_path / "qa.jsonl", tmp_path / "notes.txt"
    rows = [_qa(k) for k in range(1200)]
    lines = ["question,answer"] + [f'"{r["question"]}","{r["answer"]}"' for r in rows]
    nul_row = 1100
    lines[1 + nul_row] = f'"{rows[nul_row]["question"]}","insulin\x00\x00\x01binary"'
    csv_path.write_text("\n".join(lines) + "\n")
    assert len("\n".join(lines[:1 + nul_row]).encode()) > 1 << 16
    jsonl.write_text(json.dumps(_qa(0)) + "\n" + json.dumps({"question": _qa(1)["question"], "answer": "a\x00b"}) + "\n")
    paragraphs = [f"Diabetes note {k}: insulin and glucose, diet and exercise for patient {k}." for k in range(2000)]
    paragraphs[1900] = "Diabetes note with \x00\x00 binary junk."
    doc.write_text("\n\n".join(paragraphs) + "\n")
    card, rejects, kept = _curate(tmp_path, ledger, csv_path, jsonl, doc)
    assert _collect_rejects(rejects, csv_path)[nul_row]["reason"] == \
        "binary data: control character U+0000 in field 'answer'"
    assert _collect_rejects(rejects, jsonl)[1]["reason"] == "binary data: control character U+0000 in field 'answer'"
    (passage,) = _collect_rejects(rejects, doc).values()
    assert passage["reason"].startswith("binary data: control character U+0000")
    assert not any("\\u0000" in json.dumps(r) for r in kept)


# ---- a zip bomb named .xlsx ---------------------------------------------------------------------------------------

def _xlsx_bomb(path: Path, padding: int) -> Path:
    """A valid workbook (two rows) whose sheet XML is padded with `padding` spaces: tiny packed, huge unpacked."""
    import openpyxl

    book = openpyxl.Workbook()
    book.active.append(["question", "answer"])
    book.active.append([_qa(0)["question"], _qa(0)["answer"]])
    plain = path.with_name("plain.xlsx")
    book.save(plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(b"</sheetData>", b" " * padding + b"</sheetData>")
            dst.writestr(info.filename, data)
    plain.unlink()
    return path


def test_an_xlsx_zip_bomb_is_refused_before_it_is_opened(tmp_path, capsys):
    bomb = _xlsx_bomb(tmp_path / "qa.xlsx", 48 << 20)
    assert bomb.stat().st_size < 1 << 20
    line = _refused(["curate", "--input", str(bomb), "--out", str(tmp_path / "out")],
                    [str(bomb), "zip bomb", "times its packed size"], capsys)
    assert "MiB" in line
    assert not (tmp_path / "out").exists()  # before any work
    config = tmp_path / "curate.yaml"  # the format given, not read from the name
    config.write_text(f"inputs: [{{path: {bomb}, format: xlsx}}]\n")
    _refused(["curate", str(config), "--out", str(tmp_path / "out")], [str(bomb), "zip bomb"], capsys)


def test_a_workbook_with_padding_under_the_limits_is_read(tmp_path, ledger):
    """Sizes and ratios under the limits are not refused: a small but very compressible sheet is read."""
    card, rejects, kept = _curate(tmp_path, ledger, _xlsx_bomb(tmp_path / "qa.xlsx", 1 << 20))
    assert len(kept) == 1 and not rejects


# ---- symbolic links that lead nowhere ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["self-loop", "two-link-loop", "loop-inside-a-directory", "directory-loop"])
def test_a_symbolic_link_loop_is_named(layout, tmp_path, capsys):
    if layout == "self-loop":  # ln -s loop loop
        given = link = tmp_path / "loop"
        os.symlink("loop", link)
    elif layout == "two-link-loop":
        given = link = tmp_path / "a.jsonl"
        os.symlink("b.jsonl", link)
        os.symlink("a.jsonl", tmp_path / "b.jsonl")
    elif layout == "loop-inside-a-directory":
        (tmp_path / "inputs").mkdir()
        given = link = tmp_path / "inputs" / "qa.jsonl"
        os.symlink("qa.jsonl", link)
    else:
        link = tmp_path / "data"
        os.symlink("data", link)
        given = link / "qa.jsonl"
    line = _refused(["curate", "--input", str(given), "--out", str(tmp_path / "out")],
                    [str(given), "symbolic link loop", str(link)], capsys)
    assert "not found" not in line


def test_a_dangling_symbolic_link_names_its_target(tmp_path, capsys):
    (tmp_path / "qa.jsonl").symlink_to(tmp_path / "moved" / "qa.jsonl")
    _refused(["curate", "--input", str(tmp_path / "qa.jsonl"), "--out", str(tmp_path / "out")],
             [str(tmp_path / "qa.jsonl"), "dangling symbolic link to " + str(tmp_path / "moved" / "qa.jsonl")],
             capsys)
