"""The embedded demo corpus and mini benchmarks (written by the diabetica-jax team; demo data, not for
clinical use). `make_corpus.py` regenerates the files in corpus/ and benchmarks/ from facts.py."""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
CORPUS_DIR = DEMO_DIR / "corpus"
BENCHMARK_DIR = DEMO_DIR / "benchmarks"
# Reading order: the clean sources first, so duplicates are reported against the noisy copies.
DEMO_FILES = ("qa.jsonl", "instructions.jsonl", "mcq.csv", "mcq_gbk.csv", "dialogues.jsonl", "guideline_zh.md",
              "guideline_en.md", "noise.jsonl")
