"""Bad inputs, each tried through the CLI a user types (issue 15): every config file kind, missing, empty, binary
and misplaced files and directories, benchmark files with missing columns, curated directories of another version,
a run directory of another model. Each must end in exactly one line `diabetica-jax CMD: error: ...` on stderr that
names the file (and the key or row), exit code 2, and no traceback unless asked for (--debug, DIABETICA_JAX_DEBUG).

The CLI runs in this process (`diabetica_jax.cli.main`); a case is (id, setup): the setup writes the bad input
under a fresh folder and returns the command line and the substrings the error line must hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from diabetica_jax.cli import main
from diabetica_jax.data.shards import CURATED_FORMAT

pytestmark = pytest.mark.bad_input

BINARY = bytes(range(256)) * 4  # NUL bytes and invalid UTF-8: an image or an archive where text belongs
GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00\x43\xbf\xa6\xa3\x02\x00\x00\x00"
MCQ_ROW = {"question": "Which hormone lowers blood glucose?\nA. insulin\nB. glucagon", "answer": "A"}


def _tiny_hf_config(**changes) -> dict:
    """A tiny Qwen2 config.json (what the checkpoint fixture's config reads back as)."""
    from diabetica_jax import hf
    from diabetica_jax.model import QwenConfig

    return {**hf.config_to_dict(_tiny_config(QwenConfig)), **changes}


def _tiny_config(QwenConfig, hidden: int = 32):
    return QwenConfig(family="qwen2", vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=hidden // 2, rope_theta=10000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, qkv_bias=True, qk_norm=False, max_position_embeddings=128,
                      bos_token_id=151643, eos_token_id=151645)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny but complete HF checkpoint (config.json, safetensors, the embedded Qwen2 tokenizer files)."""
    from diabetica_jax import hf
    from diabetica_jax.model import QwenConfig, create_model

    cfg = _tiny_config(QwenConfig)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    hf.save(create_model(cfg, seed=0), cfg, path, progress=False)
    return path


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _yaml(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _hf_dir(tmp: Path, config: dict | str | bytes | None) -> Path:
    """A checkpoint directory whose config.json is `config` (a dict as JSON, text or bytes as they are); None: no
    config.json written. read_config comes first, so no weights are needed to reach the error."""
    d = tmp / "ckpt"
    d.mkdir()
    if isinstance(config, dict):
        (d / "config.json").write_text(json.dumps(config))
    elif isinstance(config, str):
        (d / "config.json").write_text(config)
    elif isinstance(config, bytes):
        (d / "config.json").write_bytes(config)
    return d


TRAIN_BASE = {"model": {"preset": "tiny", "runtime": {"dtype": "float32", "remat": "none"}},
              "mesh": {"fsdp": 2}, "data": {"seq_len": 32, "global_batch": 8},
              "optim": {"lr": 1e-2, "warmup_steps": 0},
              "loop": {"steps": 1, "checkpoint_every": 1, "loss_chunk": 16, "tensorboard": False,
                       "async_checkpoint": False}}


def _train_yaml(tmp: Path, name: str = "train.yaml", **sections) -> Path:
    import yaml

    config = {k: dict(v) for k, v in TRAIN_BASE.items()}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return _yaml(tmp / name, yaml.safe_dump(config))


def _train_on(tmp: Path, curated: Path, steps: int = -1) -> tuple[list[str], Path]:
    """`train` on the curated directory; loop.steps -1 (count the data) reads it before the model is built, 1 when
    the feed does."""
    config = _train_yaml(tmp, data={"source": "curated", "path": str(curated)}, loop={**TRAIN_BASE["loop"],
                                                                                     "steps": steps})
    return ["train", str(config), "--run-dir", str(tmp / "run"), "--no-progress"], config


def _passages(n: int) -> list:
    from diabetica_jax.data.records import Record

    return [Record(id=f"p{k}", source="s", kind="passage", language="en", provenance={"file": "f", "row": k},
                   text=f"Insulin lowers blood glucose, note {k}.") for k in range(n)]


def _curated(tmp: Path, shards: int = 2, card: bool = True) -> Path:
    """A curated directory as curation leaves it: shards and a data card listing them."""
    from diabetica_jax.curate.write import write_shards

    out = tmp / "curated"
    paths = write_shards(out, _passages(4), shards)
    if card:
        (out / "data_card.json").write_text(json.dumps({"format": CURATED_FORMAT, "kept": 4,
                                                        "shards": [str(p.relative_to(out)) for p in paths]}))
    return out


def _run_dir(tmp: Path, config: dict | str) -> Path:
    """A run directory holding only train_config.json (as training writes first), here broken."""
    from diabetica_jax.configuration import load_config, to_dict
    from diabetica_jax.train.config import TrainConfig

    run = tmp / "run"
    run.mkdir()
    if isinstance(config, dict):
        valid = to_dict(load_config(TrainConfig, None, ["model.preset=tiny"]))
        for section, values in config.items():
            valid[section] = {**valid.get(section, {}), **values} if isinstance(values, dict) else values
        config = json.dumps(valid)
    (run / "train_config.json").write_text(config)
    return run


# ---- the cases: id -> setup(tmp) returning (argv, substrings the one error line must hold) -------------------

Setup = Callable[[Path], tuple[list[str], list[str]]]
CASES: dict[str, Setup] = {}


def case(name: str):
    def register(fn: Setup) -> Setup:
        CASES[name] = fn
        return fn
    return register


# train: the YAML config, data.path, and a run directory of another model (test below)

@case("train-yaml-binary")
def _(tmp):
    path = _yaml(tmp / "train.yaml", BINARY)
    return ["train", str(path), "--run-dir", str(tmp / "run")], [str(path), "not UTF-8 text"]


@case("train-yaml-empty")
def _(tmp):
    path = _yaml(tmp / "train.yaml", "# nothing but a comment\n")
    return ["train", str(path), "--run-dir", str(tmp / "run")], [str(path), "empty config file"]


@case("train-yaml-is-a-directory")
def _(tmp):
    (tmp / "train.yaml").mkdir()
    return ["train", str(tmp / "train.yaml"), "--run-dir", str(tmp / "run")], [str(tmp / "train.yaml"), "a directory"]


@case("train-yaml-wrong-type-in-list")
def _(tmp):
    path = _train_yaml(tmp, lora={"rank": 2, "targets": ["q_proj", 7]})
    return ["train", str(path), "--run-dir", str(tmp / "run")], [str(path), "lora.targets[1]", "expected a string"]


@case("train-data-path-missing")
def _(tmp):
    argv, config = _train_on(tmp, tmp / "no-such-curated", steps=1)
    return argv, ["data.path", str(tmp / "no-such-curated"), "curated directory not found"]


@case("train-curated-without-shards")
def _(tmp):
    curated = tmp / "curated"
    curated.mkdir()
    (curated / "data_card.json").write_text(json.dumps({"format": CURATED_FORMAT, "shards": []}))
    argv, _ = _train_on(tmp, curated)
    return argv, ["data.path", str(curated), "no curated shards"]


@case("train-curated-card-lists-a-missing-shard")
def _(tmp):
    curated = _curated(tmp, shards=2)
    (curated / "shards" / "curated-00001-of-00002.array_record").unlink()
    argv, _ = _train_on(tmp, curated)
    return argv, ["data.path", str(curated / "data_card.json"), "shards/curated-00001-of-00002.array_record",
                  "which is missing"]


@case("train-curated-card-not-json")
def _(tmp):
    curated = _curated(tmp, shards=1)
    (curated / "data_card.json").write_bytes(BINARY)
    argv, _ = _train_on(tmp, curated)
    return argv, ["data.path", str(curated / "data_card.json"), "not valid JSON"]


@case("train-curated-by-an-older-version")
def _(tmp):
    """Records of another schema (a chat pair as prompt/response, no kind or language), as another version
    might have written them."""
    from diabetica_jax.curate.write import write_shard_lines

    curated = tmp / "curated"
    old = [json.dumps({"id": f"r{k}", "prompt": "What lowers glucose?", "response": "Insulin."}) for k in range(3)]
    paths = write_shard_lines(curated, iter(old), len(old), 1)
    (curated / "data_card.json").write_text(json.dumps({"format": CURATED_FORMAT,
                                                        "shards": [str(p.relative_to(curated)) for p in paths]}))
    argv, _ = _train_on(tmp, curated)
    return argv, ["data.path", str(paths[0]), "record 0", "not a curated record of this version", "'prompt'"]


@case("train-curated-card-without-a-format-number")
def _(tmp):
    """A directory curated before the card carried a format number."""
    curated = _curated(tmp, shards=1)
    card = json.loads((curated / "data_card.json").read_text())
    del card["format"]
    (curated / "data_card.json").write_text(json.dumps(card))
    argv, _ = _train_on(tmp, curated)
    return argv, ["data.path", str(curated / "data_card.json"), "format: written by an older version",
                  "curate the directory again"]


# plan: a recipe (its train section) and a training config

@case("plan-recipe-wrong-type")
def _(tmp):
    path = _yaml(tmp / "recipe.yaml", "train:\n  loop: {steps: ten}\n")
    return ["plan", str(path), "--kind", "recipe", "--devices", "1"], [str(path), "train.loop.steps",
                                                                        "expected an integer"]


@case("plan-train-unknown-key")
def _(tmp):
    path = _yaml(tmp / "train" / "cfg.yaml", "optim: {learning_rate: 0.1}\n")
    return ["plan", str(path), "--devices", "1"], [str(path), "unknown key 'optim.learning_rate'"]


# curate: the YAML config and its input files

@case("curate-yaml-unknown-key")
def _(tmp):
    path = _yaml(tmp / "curate.yaml", "inputs: [{path: a.jsonl, colour: red}]\n")
    return ["curate", str(path), "--out", str(tmp / "out")], [str(path), "unknown key 'inputs[0].colour'"]


@case("curate-yaml-wrong-type")
def _(tmp):
    path = _yaml(tmp / "curate.yaml", "demo: true\nquality: {min_chars: ten}\n")
    return ["curate", str(path), "--out", str(tmp / "out")], [str(path), "quality.min_chars", "expected an integer"]


@case("curate-yaml-binary")
def _(tmp):
    path = _yaml(tmp / "curate.yaml", BINARY)
    return ["curate", str(path), "--out", str(tmp / "out")], [str(path), "not UTF-8 text"]


@case("curate-yaml-tokenizer-not-a-directory")
def _(tmp):
    path = _yaml(tmp / "curate.yaml", "demo: true\noutput: {tokenizer: no-such-checkpoint}\n")
    return ["curate", str(path), "--out", str(tmp / "out")], [str(path), "output.tokenizer",
                                                              str(tmp / "no-such-checkpoint")]


@case("curate-yaml-decontamination-file-missing")
def _(tmp):
    path = _yaml(tmp / "curate.yaml", "demo: true\ndecontamination: {benchmarks: [held-out.csv]}\n")
    return ["curate", str(path), "--out", str(tmp / "out")], [str(path), "decontamination.benchmarks[0]",
                                                              str(tmp / "held-out.csv"), "no such file"]


@case("curate-input-empty")
def _(tmp):
    path = _yaml(tmp / "qa.jsonl", "")
    return ["curate", "--input", str(path), "--out", str(tmp / "out")], [str(path), "empty file"]


@case("curate-input-binary")
def _(tmp):
    path = _yaml(tmp / "qa.jsonl", BINARY)
    return ["curate", "--input", str(path), "--out", str(tmp / "out")], [str(path), "not jsonl text", "binary data"]


@case("curate-input-gzip")
def _(tmp):
    path = _yaml(tmp / "qa.jsonl", GZIP)
    return ["curate", "--input", str(path), "--out", str(tmp / "out")], [str(path), "gzip-compressed"]


@case("curate-input-csv-named-xlsx")
def _(tmp):
    path = _yaml(tmp / "qa.csv", "question,answer\nWhat lowers glucose?,Insulin.\n")
    config = _yaml(tmp / "curate.yaml", f"inputs: [{{path: {path}, format: xlsx}}]\n")
    return ["curate", str(config), "--out", str(tmp / "out")], [str(path), "not an .xlsx workbook"]


@case("curate-input-unknown-extension")
def _(tmp):
    path = _yaml(tmp / "notes.dat", "insulin lowers glucose\n")
    return ["curate", "--input", str(path), "--out", str(tmp / "out")], [str(path), "cannot tell the format"]


@case("curate-input-directory")
def _(tmp):
    (tmp / "inputs").mkdir()
    _yaml(tmp / "inputs" / "qa.jsonl", json.dumps(MCQ_ROW) + "\n")
    return ["curate", "--input", str(tmp / "inputs"), "--out", str(tmp / "out")], [
        str(tmp / "inputs"), "not a saved Hugging Face dataset"]


@case("curate-input-dangling-symlink")
def _(tmp):
    (tmp / "qa.jsonl").symlink_to(tmp / "gone.jsonl")
    return ["curate", "--input", str(tmp / "qa.jsonl"), "--out", str(tmp / "out")], [str(tmp / "qa.jsonl"),
                                                                                      "input not found"]


@case("curate-input-missing")
def _(tmp):
    return ["curate", "--input", str(tmp / "qa.jsonl"), "--out", str(tmp / "out")], [str(tmp / "qa.jsonl"),
                                                                                      "input not found"]


@case("curate-input-fifo")
def _(tmp):
    """A named pipe (readable even as root, and a reader would block on it): refused without opening it."""
    os.mkfifo(tmp / "qa.jsonl")
    return ["curate", "--input", str(tmp / "qa.jsonl"), "--out", str(tmp / "out")], [str(tmp / "qa.jsonl"),
                                                                                      "not a regular file"]


# eval: the suite YAML, --task/--data benchmark files, a rubric, the model's config.json

@case("eval-yaml-wrong-type")
def _(tmp):
    path = _yaml(tmp / "suite.yaml", "batch_size: many\n")
    return ["eval", str(path), "--out", str(tmp / "out")], [str(path), "batch_size", "expected an integer"]


@case("eval-yaml-unknown-key")
def _(tmp):
    path = _yaml(tmp / "suite.yaml", "tasks: [{task: mcq, file: mcq.csv}]\n")
    return ["eval", str(path), "--out", str(tmp / "out")], [str(path), "unknown key 'tasks[0].file'"]


@case("eval-data-missing-column")
def _(tmp):
    path = _yaml(tmp / "mcq.csv", "question,explanation\nWhich lowers glucose? A. insulin B. glucagon,insulin\n")
    return ["eval", "--task", "mcq", "--data", str(path), "--out", str(tmp / "out")], [
        str(path), "missing column 'answer'"]


@case("eval-data-empty-answer-row")
def _(tmp):
    import csv

    path = tmp / "mcq.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["question", "answer"])
        writer.writeheader()
        writer.writerows([MCQ_ROW, {**MCQ_ROW, "answer": " "}])
    return ["eval", "--task", "mcq", "--data", str(path), "--out", str(tmp / "out")], [
        str(path), "row 1", "empty 'answer'"]


@case("eval-data-binary")
def _(tmp):
    path = _yaml(tmp / "mcq.csv", BINARY)
    return ["eval", "--task", "mcq", "--data", str(path), "--out", str(tmp / "out")], [str(path), "not csv text"]


@case("eval-data-empty")
def _(tmp):
    path = _yaml(tmp / "cloze.csv", "")
    return ["eval", "--task", "cloze", "--data", str(path), "--out", str(tmp / "out")], [str(path), "empty file"]


@case("eval-data-truncated-json")
def _(tmp):
    path = _yaml(tmp / "dialog.json", '[{"question": "How do I store insulin?", "rules": "cold"},\n {"quest')
    return ["eval", "--task", "dialog", "--data", str(path), "--out", str(tmp / "out")], [
        str(path), "not valid JSON", "line 2"]


@case("eval-rubric-binary")
def _(tmp):
    rubric = _yaml(tmp / "rubric.txt", BINARY)
    data = _yaml(tmp / "consult.jsonl", json.dumps({"question": "I feel shaky.", "answer": "Check glucose."}) + "\n")
    path = _yaml(tmp / "suite.yaml", f"tasks: [{{task: consult, files: [{data}], rubric: {rubric}}}]\n")
    return ["eval", str(path), "--out", str(tmp / "out")], [str(rubric), "not UTF-8 text"]


@case("eval-clinical-data-binary")
def _(tmp):
    path = _yaml(tmp / "consult.csv", GZIP)
    return ["eval", "--task", "consult", "--data", str(path), "--out", str(tmp / "out")], [str(path), "gzip"]


@case("eval-model-config-wrong-type")
def _(tmp):
    d = _hf_dir(tmp, _tiny_hf_config(tie_word_embeddings="false"))
    return ["eval", "--model", str(d), "--out", str(tmp / "out")], [
        str(d / "config.json"), "tie_word_embeddings", "expected true or false"]


@case("eval-protocol-not-json")
def _(tmp):
    path = _yaml(tmp / "protocol.json", '{"mcq": ')
    return ["eval", "mode=faithful", f"protocol={path}", "--out", str(tmp / "out")], [str(path),
                                                                                      "not a readable protocol file"]


@case("eval-compare-report-binary")
def _(tmp):
    """An earlier report to compare against is read before the evaluation runs, not after it."""
    (tmp / "earlier").mkdir()
    path = _yaml(tmp / "earlier" / "report.json", BINARY)
    return ["eval", "--out", str(tmp / "out"), "--compare", str(tmp / "earlier")], [str(path),
                                                                                    "not a readable report"]


# compare: report files and the protocol file

@case("compare-report-empty")
def _(tmp):
    path = _yaml(tmp / "report.json", "")
    return ["compare", str(path), "--out", str(tmp / "out")], [str(path), "not a readable report"]


@case("compare-report-binary")
def _(tmp):
    path = _yaml(tmp / "report.json", BINARY)
    return ["compare", str(path), "--out", str(tmp / "out")], [str(path), "not a readable report"]


@case("compare-report-not-an-object")
def _(tmp):
    path = _yaml(tmp / "report.json", "[1, 2]")
    return ["compare", str(path), "--out", str(tmp / "out")], [str(path), "'tasks'"]


@case("compare-protocol-not-json")
def _(tmp):
    report = _yaml(tmp / "report.json", json.dumps({"model": "m", "tasks": {}}))
    protocol = _yaml(tmp / "protocol.json", '{"published_results": ')
    return ["compare", str(report), "--out", str(tmp / "out"), "--protocol", str(protocol)], [
        str(protocol), "not a readable protocol file"]


# run: the recipe YAML

@case("run-recipe-unknown-key")
def _(tmp):
    path = _yaml(tmp / "recipe.yaml", "stages:\n  - {name: first, trian: {}}\n")
    return ["run", str(path), "--run-dir", str(tmp / "run")], [str(path), "unknown key 'stages[0].trian'"]


@case("run-recipe-binary")
def _(tmp):
    path = _yaml(tmp / "recipe.yaml", GZIP)
    return ["run", str(path), "--run-dir", str(tmp / "run")], [str(path), "not UTF-8 text"]


# export (and serve): a run directory's train_config.json

@case("export-run-dir-missing")
def _(tmp):
    return ["export", "--run-dir", str(tmp / "no-run"), "--out", str(tmp / "out")], [str(tmp / "no-run"),
                                                                                     "run directory not found"]


@case("export-train-config-wrong-type")
def _(tmp):
    run = _run_dir(tmp, {"loop": {"steps": "many"}})
    return ["export", "--run-dir", str(run), "--out", str(tmp / "out")], [
        str(run / "train_config.json"), "loop.steps", "expected an integer"]


@case("export-train-config-unknown-key")
def _(tmp):
    run = _run_dir(tmp, {"model": {"preset": "tiny", "architecture": "qwen2"}})
    return ["export", "--run-dir", str(run), "--out", str(tmp / "out")], [
        str(run / "train_config.json"), "unknown key 'model.architecture'"]


@case("export-train-config-empty")
def _(tmp):
    run = _run_dir(tmp, "")
    return ["export", "--run-dir", str(run), "--out", str(tmp / "out")], [str(run / "train_config.json"),
                                                                          "not valid JSON"]


@case("serve-run-dir-train-config-binary")
def _(tmp):
    run = tmp / "run"
    run.mkdir()
    (run / "train_config.json").write_bytes(BINARY)
    return ["serve", "--model", str(run), "--no-warmup"], [str(run / "train_config.json"), "not valid JSON"]


# generate / serve --model DIR: the checkpoint's config.json and its other files

@case("generate-config-wrong-type")
def _(tmp):
    d = _hf_dir(tmp, _tiny_hf_config(num_hidden_layers="two"))
    return ["generate", "--model", str(d)], [str(d / "config.json"), "num_hidden_layers", "expected an integer",
                                             "'two'"]


@case("generate-config-misspelled-key")
def _(tmp):
    config = _tiny_hf_config()
    config["num_hidden_layer"] = config.pop("num_hidden_layers")
    d = _hf_dir(tmp, config)
    return ["generate", "--model", str(d)], [str(d / "config.json"), "'num_hidden_layers' is missing",
                                             "'num_hidden_layer'"]


@case("generate-config-unsupported-value")
def _(tmp):
    d = _hf_dir(tmp, _tiny_hf_config(num_experts=8))
    return ["generate", "--model", str(d)], [str(d / "config.json"), "num_experts=8", "not supported"]


@case("generate-config-empty")
def _(tmp):
    d = _hf_dir(tmp, "")
    return ["generate", "--model", str(d)], [str(d / "config.json"), "empty file"]


@case("generate-config-binary")
def _(tmp):
    d = _hf_dir(tmp, BINARY)
    return ["generate", "--model", str(d)], [str(d / "config.json"), "not UTF-8 text"]


@case("generate-config-not-an-object")
def _(tmp):
    d = _hf_dir(tmp, "[64, 128]")
    return ["generate", "--model", str(d)], [str(d / "config.json"), "expected a JSON object"]


@case("generate-config-is-a-directory")
def _(tmp):
    d = _hf_dir(tmp, None)
    (d / "config.json").mkdir()
    return ["generate", "--model", str(d)], [str(d / "config.json"), "a directory, not a file"]


@case("generate-config-dangling-symlink")
def _(tmp):
    d = _hf_dir(tmp, None)
    (d / "config.json").symlink_to(tmp / "elsewhere.json")
    return ["generate", "--model", str(d)], [str(d / "config.json"), "file not found"]


@case("generate-weight-index-binary")
def _(tmp):
    d = _hf_dir(tmp, _tiny_hf_config())
    (d / "model.safetensors.index.json").write_bytes(BINARY)
    return ["generate", "--model", str(d)], [str(d / "model.safetensors.index.json"), "not a valid safetensors index"]


@case("generate-model-dir-missing")
def _(tmp):
    return ["generate", "--model", str(tmp / "no-model")], [str(tmp / "no-model"), "checkpoint directory not found"]


@case("serve-config-fifo")
def _(tmp):
    d = _hf_dir(tmp, None)
    os.mkfifo(d / "config.json")
    return ["serve", "--model", str(d), "--no-warmup"], [str(d / "config.json"), "not a regular file"]


@case("serve-config-fractional-heads")
def _(tmp):
    d = _hf_dir(tmp, _tiny_hf_config(num_attention_heads=2.5))
    return ["serve", "--model", str(d), "--no-warmup"], [str(d / "config.json"), "num_attention_heads",
                                                         "expected an integer"]


@pytest.fixture
def full_checkpoint_copy(checkpoint, tmp_path):
    return _copy_checkpoint(checkpoint, tmp_path / "ckpt-copy")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_naming_the_file(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DIABETICA_JAX_DEBUG", raising=False)
    argv, expected = CASES[name](tmp_path)
    _assert_refused(argv, expected, capsys)


def _assert_refused(argv: list[str], expected: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"diabetica-jax {argv[0]}: error: "), lines[0]
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


# ---- cases that need the complete tiny checkpoint -------------------------------------------------------------

@pytest.mark.parametrize("broken, expected", [
    ("tokenizer.json", ["tokenizer.json", "do not load"]),
    ("generation_config.json", ["generation_config.json", "not a readable JSON file"]),
])
def test_serve_refuses_a_checkpoint_with_a_broken_side_file(broken, expected, full_checkpoint_copy, capsys):
    (full_checkpoint_copy / broken).write_bytes(b'{"truncated": ')
    line = _assert_refused(["serve", "--model", str(full_checkpoint_copy), "--no-warmup"], expected, capsys)
    assert str(full_checkpoint_copy) in line


@pytest.mark.slow
def test_train_run_dir_of_another_model_is_refused(checkpoint, tmp_path, capsys):
    """A run trained from the tiny checkpoint (1 step), resumed with the tiny preset's architecture: the
    checkpoint restore refuses with 'incompatible checkpoint', in one line."""
    run = tmp_path / "run"
    first = _train_yaml(tmp_path, "first.yaml", model={"preset": "tiny", "path": str(checkpoint)})
    assert main(["train", str(first), "--run-dir", str(run), "--no-progress"]) == 0
    assert (run / "checkpoints").is_dir()
    second = _train_yaml(tmp_path, "second.yaml")  # model.preset tiny: another architecture
    _assert_refused(["train", str(second), "--run-dir", str(run), "--no-progress"],
                    [str(run / "checkpoints"), "incompatible checkpoint"], capsys)


# ---- malformed rows are rejects, not failures ---------------------------------------------------------------

def test_curate_rejects_malformed_records_with_their_row_and_goes_on(tmp_path, capsys):
    """A JSONL input with one good record, a broken line and a row that is no object, and a JSON document cut off
    in the middle: the run succeeds, the good record is kept, each bad line is in rejects.jsonl with its file, row
    and reason, and the unreadable document is one reject naming it."""
    path, cut = tmp_path / "qa.jsonl", tmp_path / "more.json"
    good = {"question": "What does insulin do in diabetes?", "answer": "It lowers blood glucose in diabetes care."}
    path.write_text(json.dumps(good) + "\n{not json\n[1, 2]\n")
    cut.write_text('[{"question": "What is HbA1c in diabetes?", "answer": "Average blood glucose over mon')
    assert main(["curate", "--input", str(path), "--input", str(cut), "--out", str(tmp_path / "out")]) == 0
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    rows = {r["provenance"]["row"]: r for r in rejects if r["provenance"]["file"] == str(path)}
    assert set(rows) == {1, 2} and all(r["stage"] == "collect" for r in rows.values())
    assert rows[1]["reason"].startswith("bad JSON") and rows[2]["reason"] == "row is not a JSON object"
    (whole,) = [r for r in rejects if r["provenance"]["file"] == str(cut)]
    assert whole["stage"] == "collect" and whole["reason"].startswith("not valid JSON (line 1 column")
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert (card["collected"], card["kept"], card["rejected_by_stage"]) == (4, 1, {"collect": 3})


# ---- the traceback when asked for -----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["--debug", "DIABETICA_JAX_DEBUG=1"])
def test_debug_shows_the_traceback_then_the_error_line(how, tmp_path, capsys, monkeypatch):
    d = _hf_dir(tmp_path, _tiny_hf_config(num_hidden_layers="two"))
    argv = ["generate", "--model", str(d)]
    if how == "--debug":
        monkeypatch.delenv("DIABETICA_JAX_DEBUG", raising=False)
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("DIABETICA_JAX_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "ConfigError" in err and "HFCheckpointError" in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("diabetica-jax generate: error: ") and str(d / "config.json") in last
