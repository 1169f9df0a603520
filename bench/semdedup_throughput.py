"""Semantic dedup throughput on this machine: embedding and clustering + search, records per second.

    python bench/semdedup_throughput.py [--records 100000 --planted 0.05 --json out.json]

What it measures: --records synthetic diabetes QA records (a question from aspect x topic x population x
setting, an answer of 3 to 5 sentences drawn from a pool of filled templates), a --planted share of which
are lightly edited copies of an earlier record (two or three words swapped for synonyms, some also with two
sentences exchanged: edits that MinHash with 5-word shingles misses). The semantic_dedup stage runs on them
with the model preset (default tiny, random weights) and its default settings: embedding (tokenize, bucket,
jitted forward, mean pool), then k-means and the within-cluster search. Reported: records/s for each part,
total seconds (model load included), peak RSS, how many planted copies were dropped (and how many of those
named their own original), and how many original records were dropped too.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time

TOPICS = ["metformin", "insulin glargine", "SGLT2 inhibitors", "GLP-1 receptor agonists", "sulfonylureas",
          "DPP-4 inhibitors", "HbA1c testing", "continuous glucose monitoring", "diabetic retinopathy screening",
          "foot care", "gestational diabetes", "type 1 diabetes in children", "diabetic ketoacidosis",
          "hypoglycaemia", "carbohydrate counting", "exercise", "weight management", "blood pressure control",
          "statin therapy", "chronic kidney disease", "neuropathy", "pioglitazone", "bariatric surgery",
          "prediabetes", "insulin pumps", "sick-day rules", "alcohol", "fasting during Ramadan", "pregnancy planning",
          "driving safety"]
ASPECTS = ["What should patients know about", "How is", "When should clinicians consider", "What are the risks of",
           "What monitoring is needed with", "How do you explain", "What are common mistakes with",
           "What does the guideline say about", "Which patients benefit most from", "How should nurses teach"]
POPULATIONS = ["in older adults", "in adolescents", "during pregnancy", "with heart failure", "with obesity",
               "after a stroke", "in shift workers", "with reduced kidney function", "in newly diagnosed patients",
               "in people who live alone", "with limited health literacy", "on a low-income budget"]
SETTINGS = ["at a rural clinic", "in primary care", "on a hospital ward", "at a telehealth follow-up",
            "in a community pharmacy", "at school", "in a workplace health programme", "in a nursing home",
            "after discharge", "at a first visit"]
SUBJECTS = ["The patient", "A caregiver", "The care team", "The pharmacist", "The dietitian", "The endocrinologist",
            "A school nurse", "The family doctor", "A diabetes educator", "The hospital ward"]
VERBS = ["should review", "needs to check", "must record", "can adjust", "ought to discuss", "will usually monitor",
         "should never ignore", "may reduce", "is advised to plan", "has to confirm"]
OBJECTS = ["fasting glucose readings", "the insulin dose before meals", "signs of low blood sugar at night",
           "kidney function every year", "the feet for cuts and blisters", "blood pressure at each visit",
           "the injection sites for lumps", "carbohydrate portions at dinner", "ketones during illness",
           "the timing of long-acting insulin", "weight and waist circumference", "eye examinations with dilation",
           "cholesterol and triglyceride levels", "medication side effects such as nausea", "physical activity minutes",
           "the glucose meter calibration", "hypoglycaemia treatment supplies", "alcohol intake on weekends"]
REASONS = ["because control can change quickly", "since symptoms are easy to miss", "to prevent long-term damage",
           "as recommended by current guidance", "so that treatment can be adjusted safely",
           "because the risk rises with age", "to avoid emergency admissions", "since habits drift over months",
           "because early changes are reversible", "to keep HbA1c near the individual target"]
SYNONYMS = {"should": "ought to", "check": "verify", "record": "log", "adjust": "change", "usually": "typically",
            "reduce": "lower", "plan": "prepare", "confirm": "verify", "signs": "symptoms", "quickly": "rapidly",
            "miss": "overlook", "damage": "harm", "safely": "carefully", "early": "initial", "keep": "hold",
            "avoid": "prevent", "patient": "person", "advised": "told", "never": "not", "needs": "has"}


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(REASONS)}."


def _edit(text: str, rng: random.Random) -> str:
    """A light edit: two or three words swapped for synonyms, or two sentences exchanged plus one swap."""
    words = text.split(" ")
    swappable = [i for i, w in enumerate(words) if w.strip(".,?") in SYNONYMS]
    if rng.random() < 0.3:
        question, _, answer = text.partition("\n")
        sentences = [s for s in answer.split(". ") if s]
        if len(sentences) >= 3:
            i = rng.randrange(1, len(sentences) - 1)
            sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
            text = question + "\n" + ". ".join(s.rstrip(".") for s in sentences) + "."
            words = text.split(" ")
            swappable = [i for i, w in enumerate(words) if w.strip(".,?") in SYNONYMS][:1]
    for i in rng.sample(swappable, min(len(swappable), rng.choice([2, 3]))):
        word = words[i].strip(".,?")
        words[i] = words[i].replace(word, SYNONYMS[word])
    return " ".join(words)


def synthetic_records(n: int, planted: float, seed: int = 0):
    """n diabetes QA records and {index of a planted copy: index of its original}."""
    from diabetica_jax.data.records import Record

    rng = random.Random(seed)
    texts: list[str] = []
    copies: dict[int, int] = {}
    for index in range(n):
        if index > 10 and rng.random() < planted:
            original = rng.randrange(index)
            while original in copies:  # copy an original, so "found" has one right answer
                original = rng.randrange(index)
            copies[index] = original
            texts.append(_edit(texts[original], rng))
            continue
        question = f"{rng.choice(ASPECTS)} {rng.choice(TOPICS)} {rng.choice(POPULATIONS)} {rng.choice(SETTINGS)}?"
        answer = " ".join(_sentence(rng) for _ in range(rng.randint(3, 5)))
        texts.append(question + "\n" + answer)
    records = []
    for index, text in enumerate(texts):
        question, answer = text.split("\n", 1)
        records.append(Record(id=f"bench-{index:06d}", source="bench", kind="qa", language="en",
                              provenance={"file": "synthetic", "row": index},
                              messages=[{"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}]))
    return records, copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100000)
    parser.add_argument("--planted", type=float, default=0.05, help="share of records that are edited copies")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    from diabetica_jax.curate.config import SemanticDedupSection
    from diabetica_jax.curate.semdedup import semantic_dedup

    records, copies = synthetic_records(args.records, args.planted)
    cfg = SemanticDedupSection(enabled=True, model=args.model, threshold=args.threshold, batch_size=args.batch_size,
                               max_tokens=args.max_tokens)
    stats: dict = {}
    start = time.perf_counter()
    kept, rejects = semantic_dedup(records, cfg, stats)
    total = time.perf_counter() - start
    assert len(kept) + len(rejects) == len(records)

    index = {r.id: i for i, r in enumerate(records)}
    dropped = {index[r.record["id"]]: index[r.reason.split(" of ", 1)[1].split(" ", 1)[0]] for r in rejects}
    found = sum(1 for i in copies if i in dropped)
    own_original = sum(1 for i, o in copies.items() if dropped.get(i) == o)
    figures = {
        "records": len(records), "model": args.model, "threshold": args.threshold, "batch_size": args.batch_size,
        "max_tokens": args.max_tokens, "tokens": stats["tokens"],
        "embed_records_per_s": round(len(records) / stats["embed_seconds"], 1),
        "embed_tokens_per_s": round(stats["tokens"] / stats["embed_seconds"]),
        "search_records_per_s": round(len(records) / max(stats["search_seconds"], 1e-9), 1),
        "load_seconds": stats["load_seconds"], "embed_seconds": stats["embed_seconds"],
        "search_seconds": stats["search_seconds"], "total_seconds": round(total, 2),
        "clusters": stats["clusters"], "largest_cluster": stats["largest_cluster"],
        "pairs_compared": stats["pairs_compared"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "planted": len(copies), "planted_found": found, "planted_found_naming_own_original": own_original,
        "originals_dropped": len(dropped) - found, "dropped": len(rejects),
    }
    print(f"{len(records):,} records, {stats['tokens']:,} tokens, model {args.model}, threshold {args.threshold}")
    print(f"  embed   {figures['embed_records_per_s']:>10,.0f} records/s ({figures['embed_tokens_per_s']:,} tokens/s, "
          f"{stats['embed_seconds']:.1f} s)")
    print(f"  cluster+dedup {figures['search_records_per_s']:>10,.0f} records/s ({stats['search_seconds']:.1f} s; "
          f"{stats['clusters']} clusters, largest {stats['largest_cluster']}, {stats['pairs_compared']:,} pairs)")
    print(f"  total   {total:.1f} s (model load {stats['load_seconds']:.1f} s), peak RSS {figures['peak_rss_mib']:,.0f} MiB")
    print(f"  planted copies found {found} of {len(copies)} ({own_original} naming their own original); "
          f"originals dropped too: {figures['originals_dropped']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
