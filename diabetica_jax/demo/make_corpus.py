"""Regenerate the demo corpus and mini benchmarks from facts.py:  python -m diabetica_jax.demo.make_corpus

The corpus deliberately contains what curation must catch: exact and near duplicates, off-topic and
low-quality records, malformed lines, a GBK-encoded file, and planted copies (some lightly edited)
of mini-benchmark items.
"""

from __future__ import annotations

import csv
import io
import json

from diabetica_jax.demo import BENCHMARK_DIR, CORPUS_DIR
from diabetica_jax.demo.facts import (
    BENCH_CLOZE,
    BENCH_DIALOG,
    BENCH_DOMAIN_TEXT,
    BENCH_GENERAL_MCQ,
    BENCH_GENERAL_TEXT,
    BENCH_MCQ,
    FACTS,
)

NOTICE = "DEMO DATA written by the diabetica-jax team for pipeline tests. NOT FOR CLINICAL USE."
# The clinical tasks' demo items are written by hand, not from facts.py: this script leaves them as they are
# and keeps their notice in benchmarks/NOTICE.txt.
CLINICAL_NOTICE = """mini_consult.jsonl, mini_educate.jsonl and mini_summarize.jsonl (the clinical tasks' demo items, every row marked
in its `source` field) are synthetic, written by diabetica-jax, not for clinical use: invented questions, notes
and reference texts, not taken from any patient or publication, and not reviewed by clinicians."""
LETTERS = "ABCDE"


def diabetica_mcq_text(stem: str, options: list[str], full_width: bool = False) -> str:
    if full_width:  # the format variation of real files: 选项A：... with full-width colons
        return stem + "\n" + "\n".join(f"选项{LETTERS[i]}：{o}" for i, o in enumerate(options))
    return f"Question: {stem}\n" + "\n".join(f"Option {LETTERS[i]}: {o}" for i, o in enumerate(options))


def write_csv(path, header, rows, encoding="utf-8-sig"):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def main() -> None:
    CORPUS_DIR.mkdir(exist_ok=True)
    BENCHMARK_DIR.mkdir(exist_ok=True)
    (CORPUS_DIR / "NOTICE.txt").write_text(NOTICE + "\n")

    qa = [{"question": q, "answer": a} for fact in FACTS for q, a in fact["qa"]]
    (CORPUS_DIR / "qa.jsonl").write_bytes(jsonl(qa))

    instructions = []
    for fact in FACTS:
        (q_zh, a_zh), (q_en, a_en) = fact["qa"]
        instructions.append({"instruction": "请以内分泌科医生的身份回答患者的问题。", "input": "患者问：" + q_zh, "output": a_zh})
        instructions.append({"instruction": "Answer the patient's question as a diabetes educator.",
                             "input": "Patient: " + q_en, "output": a_en})
    (CORPUS_DIR / "instructions.jsonl").write_bytes(jsonl(instructions))

    mcq_rows = [(diabetica_mcq_text(stem, options), f"{key}：{options[LETTERS.index(key)]}")
                for stem, options, key in (fact["mcq"] for fact in FACTS[:16])]
    write_csv(CORPUS_DIR / "mcq.csv", ["question", "answer"], mcq_rows)
    gbk_rows = [(diabetica_mcq_text(stem, options, full_width=True), f"{key}：{options[LETTERS.index(key)]}")
                for stem, options, key in (fact["mcq"] for fact in FACTS[16:])]
    write_csv(CORPUS_DIR / "mcq_gbk.csv", ["question", "answer"], gbk_rows, encoding="gbk")

    for lang, index in (("zh", 0), ("en", 1)):
        title = "糖尿病诊疗要点（演示资料）" if lang == "zh" else "Diabetes care essentials (demo material)"
        sections = [f"# {title}", f"> {NOTICE}"]
        for start in range(0, len(FACTS), 5):
            group = FACTS[start : start + 5]
            heading = group[0]["qa"][index][0].rstrip("？?")
            sections.append(f"## {heading}")
            sections.extend(fact["qa"][index][1] for fact in group)
        (CORPUS_DIR / f"guideline_{lang}.md").write_text("\n\n".join(sections) + "\n", encoding="utf-8")

    dialogues = []
    for i in range(0, len(FACTS) - 1, 2):
        for index, system in ((0, "你是一名耐心的糖尿病专科医生。"), (1, None)):
            (q1, a1), (q2, a2) = FACTS[i]["qa"][index], FACTS[i + 1]["qa"][index]
            follow = "那另外，" if index == 0 else "Also, "
            turns = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                {"role": "user", "content": follow + q2}, {"role": "assistant", "content": a2},
            ]
            dialogues.append({"messages": turns})
    (CORPUS_DIR / "dialogues.jsonl").write_bytes(jsonl(dialogues))

    noise = [
        # off-topic
        {"question": "How do I bake a chocolate sponge cake?", "answer": "Whisk eggs and sugar, fold in flour and cocoa, bake at 180 °C for 25 minutes."},
        {"question": "Who won the football match last night?", "answer": "The home team won the football match two to one after extra time."},
        {"question": "今天股票市场行情怎么样？", "answer": "今天股票市场整体上涨，科技板块领涨，成交量有所放大。"},
        {"question": "推荐一部好看的电影吧。", "answer": "可以看看这部科幻电影，剧情紧凑，特效也很出色。"},
        {"question": "What is the capital of Australia?", "answer": "The capital of Australia is Canberra, not Sydney."},
        {"question": "怎么提高游戏的段位？", "answer": "多练习基本操作，熟悉地图，和固定队友配合打游戏。"},
        {"question": "Is bitcoin a good investment?", "answer": "Cryptocurrency prices are volatile; only invest what you can afford to lose."},
        {"question": "彩票中奖的概率有多大？", "answer": "彩票头奖的中奖概率通常只有千万分之一左右。"},
        # quality problems
        {"question": "血糖?", "answer": "好"},
        {"question": "糖尿病患者锟斤拷锟斤拷锟斤拷锟斤拷饮食注意锟斤拷锟斤拷锟斤拷锟斤拷事项", "answer": "锟斤拷锟斤拷锟斤拷锟斤拷锟斤拷锟斤拷锟斤拷锟斤拷"},
        {"question": "What about insulin insulin insulin?", "answer": " ".join(["insulin dose insulin dose"] * 30)},
        {"question": "血糖高怎么办", "answer": "控制饮食控制饮食控制饮食控制饮食控制饮食控制饮食控制饮食控制饮食控制饮食控制饮食控制饮食控制饮食"},
    ]
    noise += qa[0:6]  # exact duplicates
    near = []
    for q, a in (FACTS[6]["qa"][0], FACTS[7]["qa"][1], FACTS[9]["qa"][0], FACTS[12]["qa"][1], FACTS[17]["qa"][0]):
        tail = "（具体请遵医嘱）" if "。" in a else " Ask your care team for details."
        near.append({"question": q.replace("？", "?").replace("What", "what"), "answer": a + tail})
    noise += near  # near duplicates: punctuation, case and a short added clause
    # planted mini-benchmark items: two verbatim, two lightly edited, a cloze and a dialogue question
    for stem, options, key in BENCH_MCQ[:2]:
        noise.append({"question": diabetica_mcq_text(stem, options), "answer": f"{key}：{options[LETTERS.index(key)]}"})
    for stem, options, key in BENCH_MCQ[2:4]:
        edited = stem.replace("下列", "以下") + "？"
        noise.append({"question": diabetica_mcq_text(edited, list(options)), "answer": f"{key}：{options[LETTERS.index(key)]}"})
    noise.append({"question": BENCH_CLOZE[0][0], "answer": BENCH_CLOZE[0][1]})
    noise.append({"question": BENCH_DIALOG[0][0].replace("医生，", "大夫您好，"), "answer": "建议监测凌晨3点血糖，并就诊调整晚间用药。"})
    lines = jsonl(noise)
    lines += b'{"question": "broken json line, "answer": 1\n'
    lines += b'{"question": "\xe7\xb3\x96\xe5\xb0\xbf\xe7\x97\x85\xe6\x98\xaf\xe4\xbb\x80\xe4\xb9\x88", "answer"\n'
    lines += json.dumps({"question": "糖尿病患者可以吃水果吗？"}, ensure_ascii=False).encode() + b"\n"  # no answer
    lines += b'{"question": "\xff\xfe bytes in no known encoding \xff", "answer": "x"}\n'
    (CORPUS_DIR / "noise.jsonl").write_bytes(lines)

    write_csv(BENCHMARK_DIR / "mini_mcq.csv", ["question", "answer"],
              [(diabetica_mcq_text(s, o), f"{k}：{o[LETTERS.index(k)]}") for s, o, k in BENCH_MCQ])
    write_csv(BENCHMARK_DIR / "mini_general_mcq.csv", ["question", "answer"],
              [(diabetica_mcq_text(s, o), f"{k}：{o[LETTERS.index(k)]}") for s, o, k in BENCH_GENERAL_MCQ])
    write_csv(BENCHMARK_DIR / "mini_cloze.csv", ["resource", "question", "answer"],
              [("demo", q, a) for q, a in BENCH_CLOZE], encoding="gbk")
    (BENCHMARK_DIR / "mini_dialog.jsonl").write_bytes(
        jsonl([{"id": i + 1, "question": q, "rules": r} for i, (q, r) in enumerate(BENCH_DIALOG)]))
    for name, texts in (("mini_domain_text.jsonl", BENCH_DOMAIN_TEXT), ("mini_general_text.jsonl", BENCH_GENERAL_TEXT)):
        (BENCHMARK_DIR / name).write_bytes(jsonl([{"id": i + 1, "text": t} for i, t in enumerate(texts)]))
    (BENCHMARK_DIR / "NOTICE.txt").write_text(NOTICE + "\n" + CLINICAL_NOTICE + "\n")


if __name__ == "__main__":
    main()
