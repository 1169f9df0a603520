"""The curation configuration (`diabetica-jax curate CONFIG`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from diabetica_jax.configuration import ConfigFileError, FieldError, build, config_data, field, require_positive
from diabetica_jax.data.records import KINDS
from diabetica_jax.data.tables import FORMATS, check_content, detect_format, missing_input
from diabetica_jax.errors import MissingInput
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
    path: str = field("", "file or directory to read (relative paths: to the config file)",
                      path=lambda entry: entry.get("format") != "hf_hub")  # a hub dataset's name is no path
    format: Literal[FORMATS] = field(
        "auto", "file format (auto: from the file name; hf_hub: `path` is a dataset name on the hub)")
    kind: Literal[("auto", *KINDS)] = field("auto", "record kind (auto: from the fields)")
    source: str | None = field(None, "source name in the data card (default: the file name)")
    fields: dict[str, str] = field({}, "column renames, e.g. {answer: response}")

    def __post_init__(self):
        if not self.path:
            raise FieldError("path", "missing")

    def column(self, name: str) -> str:
        """The column holding field `name` in this input."""
        return self.fields.get(name, name)


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

    def __post_init__(self):
        require_positive(self, "shingle", "num_perm", "bands")
        if self.num_perm % self.bands:
            raise FieldError("num_perm", f"{self.num_perm} does not divide into bands={self.bands}")


def _names_a_directory(section: dict) -> bool:
    """semantic_dedup.model is a checkpoint directory (a path to resolve) unless it names a model preset."""
    from diabetica_jax.hf.presets import list_presets  # on first use: the bridge imports JAX

    model = section.get("model")
    return isinstance(model, str) and model not in list_presets()


@dataclasses.dataclass(frozen=True)
class SemanticDedupSection:
    enabled: bool = field(False, "drop records whose embedding is a near neighbour of an earlier kept one (SemDeDup)")
    model: str = field("tiny", "embedding model: a Hugging Face checkpoint directory, or a preset with random weights "
                               "(tiny: a weak embedder, for tests; use a real checkpoint)", path=_names_a_directory)
    threshold: float = field(0.95, "cosine similarity at or above which a record is a semantic duplicate")
    max_tokens: int = field(128, "tokens of each record embedded (the rest is cut off)")
    batch_size: int = field(32, "records per embedding batch (on CPU 16-32 run fastest; more on an accelerator)")
    clusters: int | None = field(None, "k-means clusters searched separately (default: about sqrt(records))")
    iterations: int = field(10, "k-means Lloyd iterations")
    seed: int = field(0, "k-means initialisation (and a preset's random weights)")

    def __post_init__(self):
        require_positive(self, "max_tokens", "batch_size", "iterations")
        if self.clusters is not None:
            require_positive(self, "clusters")
        if not 0.0 < self.threshold <= 1.0:
            raise FieldError("threshold", f"must be in (0, 1], got {self.threshold}")
        if not self.model:
            raise FieldError("model", "missing: a checkpoint directory or a preset name")


@dataclasses.dataclass(frozen=True)
class DecontaminationSection:
    benchmarks: list[str] = field([], "evaluation files or directories whose items must not leak into training "
                                      "(csv/jsonl/xlsx)", path=True)
    embedded_benchmarks: bool = field(True, "also protect the project's embedded mini benchmarks")
    n: int = field(8, "n-gram length in units")
    threshold: float = field(0.5, "drop a record holding this share of a benchmark item's n-grams")

    def __post_init__(self):
        require_positive(self, "n")


@dataclasses.dataclass(frozen=True)
class WriterSection(BackendSection):
    """A backend whose replies become training text (augment's teacher, refine's model)."""

    max_tokens: int = field(768, "longest reply, in tokens")

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "max_tokens")


@dataclasses.dataclass(frozen=True)
class AugmentSection(WriterSection):
    qa_per_passage: int = field(3, "question-answer pairs to write per passage (0: none)")
    min_grounding: float = field(0.5, "share of a generated answer's words that must appear in its passage")
    explain_mcqs: bool = field(True, "replace each MCQ's answer with the teacher's explanation of the keyed option")
    dialogue_turns: int = field(0, "patient-doctor dialogue per passage with this many user+assistant pairs (0: none)")
    dialogue_min_support: float = field(0.6, "share of each doctor turn's content words that must occur in the "
                                             "passage (every number must)")
    mcq_rationales: bool = field(False, "add, per MCQ, a fluent answer reasoning to the keyed option (a new record)")
    rationale_reveal_key: bool = field(True, "tell the teacher the keyed option when asking for a rationale (false: "
                                             "it answers on its own, kept only when it agrees with the key)")
    cloze_per_passage: int = field(0, "fill-in-the-blank items to write per passage (0: none)")
    cloze_min_similarity: float = field(0.8, "share of a filled-in cloze sentence that must line up with one "
                                             "passage sentence")

    def __post_init__(self):
        super().__post_init__()
        for name in ("qa_per_passage", "dialogue_turns", "cloze_per_passage"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be 0 (off) or positive, got {getattr(self, name)}")
        for name in ("min_grounding", "dialogue_min_support", "cloze_min_similarity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FieldError(name, f"must be in [0, 1], got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RefineSection(WriterSection):
    min_recall: float = field(0.6, "share of the reference's words a rewrite must keep (non-MCQ)")


PAIR_KINDS = ("mcq", "cloze", "qa", "dialogue")


@dataclasses.dataclass(frozen=True)
class PairsSection(WriterSection):
    """The base model answers each kept record's question; a reply that is wrong by the record's rule becomes
    the rejected side of a preference pair whose chosen side is the record's own (keyed, grounded) answer."""

    kinds: list[Literal[PAIR_KINDS]] = field(list(PAIR_KINDS), "record kinds that make pairs")
    min_support: float = field(0.6, "qa/dialogue: a reply with less than this share of its content words in the "
                                    "reference (or a number the reference lacks) is wrong")
    temperature: float = field(0.0, "sampling temperature of the base model's replies (0: greedy)")
    judge: BackendSection = field(BackendSection(), "judge rating, 1 to 10, the reference and each reply that passes "
                                  "its kind's rule (none: the rules alone decide)")
    judge_margin: float = field(1.0, "with a judge: a reply rated at least this much below the reference is wrong")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.min_support <= 1.0:
            raise FieldError("min_support", f"must be in [0, 1], got {self.min_support}")
        if self.temperature < 0:
            raise FieldError("temperature", f"must be 0 or more, got {self.temperature}")
        if not 0.0 < self.judge_margin <= 9.0:
            raise FieldError("judge_margin", f"must be in (0, 9] (scores run 1 to 10), got {self.judge_margin}")


@dataclasses.dataclass(frozen=True)
class OutputSection:
    shards: int = field(2, "ArrayRecord shard files to write")
    tokenizer: str | None = field(None, "checkpoint directory whose tokenizer measures token lengths and writes the "
                                        "token store training reads (default: Qwen2)", path=True)
    hf_dataset: bool = field(True, "also write the kept records as a Hugging Face `datasets` dataset (a second copy)")

    def __post_init__(self):
        require_positive(self, "shards")


ENGINES = ("local", "datatrove")
# what an executor option may be: YAML scalars, a list of them, or a mapping (Slurm's sbatch_args)
OptionValue = str | int | float | bool | list[str] | dict[str, str | int | float]


@dataclasses.dataclass(frozen=True)
class EngineSection:
    name: Literal[ENGINES] = field(
        "local", "what runs the per-record scan: local (a process pool on this machine) or datatrove (its local, "
        "Slurm or Ray executor; pip install 'diabetica-jax[engine]')")
    workers: int = field(0, "scan processes (0: one per CPU core; 1: in this process, no pool); datatrove: tasks "
                            "running at once")
    unit_mb: int = field(16, "inputs larger than this are scanned in slices of about this many MB")
    executor: Literal[("local", "slurm", "ray")] = field("local", "datatrove's executor (engine datatrove)")
    executor_options: dict[str, OptionValue] = field(
        {}, "arguments of datatrove's executor, checked before anything is submitted (slurm: partition, time "
            "(quoted), cpus_per_task, mem_per_cpu_gb, venv_path, sbatch_args, ...; ray: cpus_per_task, ...); "
            "on the command line engine.executor_options.partition=cpu")
    timeout_s: float | None = field(None, "datatrove: stop with the units that have no result when none finished "
                                          "for this many seconds (a hung task; default: no limit)")
    resume: bool = field(True, "datatrove: a rerun of an interrupted curation with the same inputs and settings "
                               "reuses the units already finished (false: start afresh)")
    work_dir: str | None = field(None, "where units spill their records (default OUT/work; on a cluster: a path "
                                       "every node shares)", path=True)

    def __post_init__(self):
        require_positive(self, "unit_mb")
        if self.workers < 0:
            raise FieldError("workers", f"must be >= 0, got {self.workers}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise FieldError("timeout_s", f"must be a positive number of seconds, got {self.timeout_s}")
        if self.name == "local":
            if self.executor != "local":
                raise FieldError("executor", f"{self.executor} runs through datatrove: set engine.name=datatrove")
            if self.executor_options:
                raise FieldError("executor_options", "only read with engine.name=datatrove")
            return
        from diabetica_jax.curate import datatrove_engine

        try:
            datatrove_engine.require_datatrove()
        except ImportError as e:
            raise FieldError("name", str(e)) from None
        datatrove_engine.check_options(self.executor, dict(self.executor_options))

    def processes(self) -> int:
        import os

        return self.workers or os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    inputs: list[InputSection] = field([], "input files")
    demo: bool = field(False, "add the embedded demo corpus to the inputs")
    relevance: RelevanceSection = field(RelevanceSection(), "diabetes relevance filter")
    quality: QualitySection = field(QualitySection(), "quality filter")
    dedup: DedupSection = field(DedupSection(), "exact and near duplicate removal")
    semantic_dedup: SemanticDedupSection = field(SemanticDedupSection(), "embedding-based duplicate removal (off "
                                                                         "by default)")
    decontamination: DecontaminationSection = field(DecontaminationSection(), "benchmark decontamination")
    augment: AugmentSection = field(AugmentSection(), "teacher augmentation")
    refine: RefineSection = field(RefineSection(), "self-distillation by the base model")
    pairs: PairsSection = field(PairsSection(), "preference pairs: the base model's wrong replies against the "
                                                "records' answers (written to pairs.jsonl for train.method dpo)")
    output: OutputSection = field(OutputSection(), "shards and data card")
    engine: EngineSection = field(EngineSection(), "how the per-record work is spread over processes or a cluster")

    def __post_init__(self):
        if not self.inputs and not self.demo:
            raise FieldError("inputs", "none given: list files here, pass --input, or set demo: true")


def load_curate_config(path: str | None, overrides: list[str] | None = None, inputs: list[str] | None = None) -> CurateConfig:
    """load_config(CurateConfig, ...) plus `curate --input` files, which join the config's inputs, checked
    with `check_inputs` (and decontamination.benchmarks, which must exist, and output.tokenizer, which must be a
    directory) so that a wrong input file stops the command before any work.

    Without a config file and input files, the embedded demo corpus is the input.
    """
    data, source = config_data(CurateConfig, path, overrides)
    if not path:
        data.setdefault("demo", not inputs)
    if inputs:
        data["inputs"] = list(data.get("inputs") or []) + [{"path": p} for p in inputs]
    cfg = build(CurateConfig, data, source)
    check_inputs(cfg)
    for i, benchmark in enumerate(cfg.decontamination.benchmarks):
        if not Path(benchmark).exists():
            raise ConfigFileError(f"{source}: decontamination.benchmarks[{i}]: {benchmark}: no such file or directory")
    if cfg.output.tokenizer is not None and not Path(cfg.output.tokenizer).is_dir():
        raise ConfigFileError(f"{source}: output.tokenizer: {cfg.output.tokenizer}: not a checkpoint directory "
                              "(its tokenizer measures token lengths and writes the token store)")
    return cfg


def check_inputs(cfg: CurateConfig) -> None:
    """Refuse the input files that cannot be read at all, naming them: missing (FileNotFoundError), a directory
    that is no saved Hugging Face dataset, not a regular file, empty, binary where text is expected, or not the
    workbook or Parquet file the format says (InputError, tables.detect_format / check_content). Rows that
    cannot be read are not checked here: they become rejects while collecting."""
    for entry in cfg.inputs:
        if entry.format == "hf_hub":
            continue
        path = Path(entry.path)
        if not path.exists():
            raise MissingInput(missing_input(path))  # names a symbolic link loop or a dangling link
        if entry.format == "auto":
            detect_format(path)
        elif not path.is_dir():
            check_content(path, entry.format)
