"""The curation configuration (`diabetica-jax curate CONFIG`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from diabetica_jax.configuration import ConfigFileError, apply_overrides, build, field, load_yaml
from diabetica_jax.llm.config import BackendSection

# Weighted bilingual terms. Strong signals of diabetes content weigh 2, related clinical context 1;
# a record needs a score of 2 (one strong term, or two related ones) unless configured otherwise.
POSITIVE_TERMS = {
    "diabetes": 2, "diabetic": 2, "糖尿病": 2, "insulin": 2, "胰岛素": 2, "hba1c": 2, "糖化血红蛋白": 2,
    "glucose": 2, "血糖": 2, "hypoglycemia": 2, "hypoglycaemia": 2, "低血糖": 2, "hyperglycemia": 2, "高血糖": 2,
    "metformin": 2, "二甲双胍": 2, "sglt2": 2, "glp 1": 2, "dpp 4": 2, "sulfonylurea": 2, "磺脲": 2,
    "ketoacidosis": 2, "酮症": 2, "胰岛": 2, "islet": 2, "gestational diabetes": 2, "妊娠糖尿病": 2,
    "obesity": 1, "肥胖": 1, "retinopathy": 1, "视网膜病变": 1, "nephropathy": 1, "肾病": 1, "neuropathy": 1,
    "神经病变": 1, "blood pressure": 1, "血压": 1, "cholesterol": 1, "血脂": 1, "diet": 1, "饮食": 1,
    "exercise": 1, "运动": 1, "weight": 1, "体重": 1, "kidney": 1, "cardiovascular": 1, "心血管": 1,
    "endocrine": 1, "内分泌": 1, "metabolic": 1, "代谢": 1, "pancreas": 1, "胰腺": 1, "carbohydrate": 1, "碳水": 1,
}
NEGATIVE_TERMS = {
    "football": 2, "足球": 2, "stock market": 2, "股票": 2, "movie": 2, "电影": 2, "video game": 2, "游戏": 2,
    "lottery": 2, "彩票": 2, "cryptocurrency": 2, "比特币": 2, "celebrity": 2, "明星": 2,
}


@dataclasses.dataclass(frozen=True)
class InputSection:
    path: str = field("", "file or directory to read (relative paths: to the config file)")
    format: Literal["auto", "jsonl", "json", "csv", "xlsx", "parquet", "hf_disk", "hf_hub", "text"] = field(
        "auto", "file format (auto: from the file name; hf_hub: `path` is a dataset name on the hub)")
    kind: Literal["auto", "mcq", "qa", "dialogue", "passage", "cloze"] = field("auto", "record kind (auto: from the fields)")
    source: str | None = field(None, "source name in the data card (default: the file name)")
    fields: dict[str, str] = field({}, "column renames, e.g. {answer: response}")


@dataclasses.dataclass(frozen=True)
class RelevanceSection:
    positive: dict[str, float] = field(dict(POSITIVE_TERMS), "diabetes terms and their weights")
    negative: dict[str, float] = field(dict(NEGATIVE_TERMS), "off-topic terms and their (subtracted) weights")
    min_score: float = field(2.0, "keep a record when its score reaches this")


@dataclasses.dataclass(frozen=True)
class QualitySection:
    min_chars: int = field(10, "shortest record kept")
    max_chars: int = field(20000, "longest record kept")
    max_garbage_ratio: float = field(0.1, "largest share of garbage or mojibake characters")
    max_repetition: float = field(0.3, "largest share of repeated 3-grams")


@dataclasses.dataclass(frozen=True)
class DedupSection:
    near_threshold: float = field(0.8, "MinHash Jaccard at or above which a record is a near duplicate")
    shingle: int = field(5, "shingle length in units (Chinese characters or words)")
    num_perm: int = field(128, "MinHash permutations")
    bands: int = field(32, "LSH bands (num_perm must divide by it)")


@dataclasses.dataclass(frozen=True)
class DecontaminationSection:
    benchmarks: list[str] = field([], "evaluation files whose items must not leak into training (csv/jsonl/xlsx)")
    embedded_benchmarks: bool = field(True, "also protect the project's embedded mini benchmarks")
    n: int = field(8, "n-gram length in units")
    threshold: float = field(0.5, "drop a record holding this share of a benchmark item's n-grams")


@dataclasses.dataclass(frozen=True)
class AugmentSection(BackendSection):
    qa_per_passage: int = field(3, "question-answer pairs to write per passage")
    min_grounding: float = field(0.5, "share of a generated answer's words that must appear in its passage")


@dataclasses.dataclass(frozen=True)
class RefineSection(BackendSection):
    min_recall: float = field(0.6, "share of the reference's words a rewrite must keep (non-MCQ)")


@dataclasses.dataclass(frozen=True)
class OutputSection:
    shards: int = field(2, "ArrayRecord shard files to write")
    tokenizer: str | None = field(None, "checkpoint directory whose tokenizer measures token lengths (default: Qwen2)")


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    inputs: list[InputSection] = field([], "input files")
    demo: bool = field(False, "add the embedded demo corpus to the inputs")
    relevance: RelevanceSection = field(RelevanceSection(), "diabetes relevance filter")
    quality: QualitySection = field(QualitySection(), "quality filter")
    dedup: DedupSection = field(DedupSection(), "exact and near duplicate removal")
    decontamination: DecontaminationSection = field(DecontaminationSection(), "benchmark decontamination")
    augment: AugmentSection = field(AugmentSection(), "teacher augmentation")
    refine: RefineSection = field(RefineSection(), "self-distillation by the base model")
    output: OutputSection = field(OutputSection(), "shards and data card")


def load_curate_config(path: str | None, overrides: list[str] | None = None, inputs: list[str] | None = None) -> CurateConfig:
    data = load_yaml(path) if path else {"demo": not inputs}
    source = str(path) if path else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
    if inputs:
        data["inputs"] = list(data.get("inputs") or []) + [{"path": p} for p in inputs]
    if path:  # input paths in a config file are relative to it
        base = Path(path).parent
        for item in data.get("inputs") or []:
            if isinstance(item, dict) and "path" in item and not Path(str(item["path"])).is_absolute():
                item["path"] = str(base / item["path"])
    cfg = build(CurateConfig, data, source)
    validate_curate(cfg, source)
    return cfg


def validate_curate(cfg: CurateConfig, source: str) -> None:
    if not cfg.inputs and not cfg.demo:
        raise ConfigFileError(f"{source}: no inputs: list some under `inputs`, pass --input, or set demo: true")
    for i, item in enumerate(cfg.inputs):
        if not item.path:
            raise ConfigFileError(f"{source}: inputs[{i}].path is missing")
    if cfg.dedup.num_perm % cfg.dedup.bands:
        raise ConfigFileError(f"{source}: dedup.num_perm={cfg.dedup.num_perm} does not divide into {cfg.dedup.bands} bands")
    for name in ("augment", "refine"):
        section = getattr(cfg, name)
        if section.backend != "none" and not section.model:
            raise ConfigFileError(f"{source}: {name}.model is required with backend {section.backend!r}")
