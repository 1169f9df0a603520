"""Bad input that used to get through (issue 16): YAML alias bombs and nesting thousands deep, NaN and infinite
learning rates, batch sizes no host could hold, multi-line YAML syntax errors; checkpoint config.json files with a
negative rms_norm_eps or a million layers; prompts that tokenize to nothing; two processes in one run directory.

Each is tried through the CLI in this process, as in test_bad_inputs_cli.py: exactly one line `diabetica-jax CMD:
error: ...` on stderr naming the file (or override) and the key, exit code 2, no traceback, before any work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import diabetica_jax.cli.commands  # noqa: F401 (loaded here, so the timed refusals below do not count its import)
from diabetica_jax.cli import main
from tests.faults.test_bad_inputs_cli import (  # noqa: F401 (checkpoint: the module's tiny HF checkpoint fixture)
    _assert_refused,
    _copy_checkpoint,
    _hf_dir,
    _tiny_hf_config,
    _train_yaml,
    _yaml,
    checkpoint,
)

pytestmark = pytest.mark.bad_input

ROOT = Path(__file__).resolve().parents[2]


def _bomb(levels: int = 6) -> str:
    """A YAML "billion laughs": nine aliases of nine aliases ..., `levels` deep (9**levels values expanded, 531,441
    at six), in a few hundred bytes."""
    names = "abcdefghij"[:levels]
    lines = [f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{prev}'] * 9)}]" for prev, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def _refused_fast(argv, expected, capsys, seconds: float = 1.0) -> str:
    start = time.perf_counter()
    line = _assert_refused(argv, expected, capsys)
    assert time.perf_counter() - start < seconds, f"refused only after {time.perf_counter() - start:.1f} s"
    assert len(line) < 400, f"a line of {len(line)} characters"
    return line


def _train_with(tmp: Path, *overrides: str) -> list[str]:
    """`train CONFIG --run-dir RUN OVERRIDES` with the small training config of test_bad_inputs_cli.py."""
    return ["train", str(_train_yaml(tmp)), "--run-dir", str(tmp / "run"), *overrides]


# ---- config files and overrides ------------------------------------------------------------------------------

def test_an_alias_bomb_in_a_value_is_refused_at_once_in_a_short_line(tmp_path, capsys):
    path = _yaml(tmp_path / "train.yaml", _bomb() + "loop: {steps: *f}\n")
    _refused_fast(["train", str(path), "--run-dir", str(tmp_path / "run")],
                  [str(path), "f (line 6, column 4)", "more than 100000 values", "aliases"], capsys)


def test_an_alias_bomb_where_a_path_is_read_is_refused_too(tmp_path, capsys):
    """model.path is a path field: relative paths in it are joined onto the file's folder, a walk of the value."""
    path = _yaml(tmp_path / "train.yaml", _bomb() + "model: {path: *f}\n")
    _refused_fast(["train", str(path), "--run-dir", str(tmp_path / "run")], [str(path), "more than 100000"], capsys)


def test_a_structure_containing_itself_is_refused(tmp_path, capsys):
    path = _yaml(tmp_path / "train.yaml", "lora: {targets: &t [q_proj, *t]}\n")
    _refused_fast(["train", str(path), "--run-dir", str(tmp_path / "run")],
                  [str(path), "lora.targets", "alias *t is inside the node it names"], capsys)


def test_aliases_within_the_bounds_still_work(tmp_path):
    from diabetica_jax.configuration import load_config
    from diabetica_jax.train.config import TrainConfig

    path = _yaml(tmp_path / "train.yaml", "optim: {lr: &lr 0.001, min_lr_ratio: 0.1}\nlora: {rank: 4, alpha: *lr}\n")
    assert load_config(TrainConfig, path).lora.alpha == 0.001


@pytest.mark.parametrize("override, expected", [
    ("a." * 5000 + "a=1", ["a key of 5001 dotted parts", "at most 32 deep"]),
    ("loop.steps=" + "[" * 5000 + "]" * 5000, ["loop.steps=[[[[", "nested deeper than 32 levels"]),
    ("stages=" + "{a: " * 5000 + "1" + "}" * 5000, ["nested deeper than 32 levels"]),
], ids=["key-5000-deep", "list-value-5000-deep", "mapping-value-5000-deep"])
def test_an_override_nested_thousands_deep_is_one_line(override, expected, tmp_path, capsys):
    _refused_fast(_train_with(tmp_path, override), ["override", *expected], capsys)


def test_a_config_file_nested_thousands_deep_is_one_line(tmp_path, capsys):
    path = _yaml(tmp_path / "train.yaml", "loop: {steps: " + "[" * 5000 + "]" * 5000 + "}\n")
    _refused_fast(["train", str(path), "--run-dir", str(tmp_path / "run")],
                  [str(path), "loop.steps[0][0]", "nested deeper than 32 levels"], capsys)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_a_non_finite_learning_rate_is_refused(value, tmp_path, capsys):
    _assert_refused(_train_with(tmp_path, f"optim.lr={value}"),
                    ["optim.lr", "must be a finite number"], capsys)
    assert not (tmp_path / "run").exists()


def test_a_non_finite_number_in_a_file_names_the_file_and_key(tmp_path, capsys):
    path = _train_yaml(tmp_path, lora={"rank": 2, "alpha": float("inf")})  # yaml.safe_dump writes .inf
    _assert_refused(["train", str(path), "--run-dir", str(tmp_path / "run")],
                    [str(path), "lora.alpha", "must be a finite number, got inf"], capsys)


@pytest.mark.parametrize("override, expected", [
    ("optim.b1=1.0", ["optim.b1", "must be in [0, 1)"]),
    ("optim.b2=-0.1", ["optim.b2", "must be in [0, 1)"]),
    ("optim.weight_decay=-0.1", ["optim.weight_decay", "must be >= 0"]),
    ("optim.clip_norm=-1", ["optim.clip_norm", "must be >= 0 (0 disables clipping)"]),
    ("optim.min_lr_ratio=2", ["optim.min_lr_ratio", "must be in [0, 1]"]),
    ("optim.eps=0", ["optim.eps", "must be positive"]),
    ("lora.alpha=0", ["lora.alpha", "must be positive"]),
    ("loop.peak_tflops=0", ["loop.peak_tflops", "must be positive"]),
])
def test_optimizer_settings_out_of_range_are_refused(override, expected, tmp_path, capsys):
    _assert_refused(_train_with(tmp_path, override), expected, capsys)


@pytest.mark.parametrize("override, expected", [
    ("data.global_batch=100000000000", ["data.global_batch", "100000000000 is beyond the largest possible",
                                        "2**31 tokens per step"]),
    ("data.global_batch=1e11", ["data.global_batch", "expected an integer, got '1e11'"]),
    ("data.seq_len=10000000", ["data.seq_len", "beyond the largest possible"]),
    ("data.workers=100000", ["data.workers", "beyond the largest possible"]),
    ("lora.rank=1000000000", ["lora.rank", "beyond the largest possible"]),
])
def test_sizes_no_host_could_hold_are_refused_before_any_work(override, expected, tmp_path, capsys):
    _refused_fast(_train_with(tmp_path, override), expected, capsys)
    assert not (tmp_path / "run").exists()


def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, capsys):
    path = _yaml(tmp_path / "train.yaml", "optim:\n  lr: [1, 2\nloop: {steps: 3}\n")
    _assert_refused(["train", str(path), "--run-dir", str(tmp_path / "run")],
                    [str(path), "not valid YAML at line 3, column 5", "expected ',' or ']'",
                     "flow sequence at line 2, column 7"], capsys)


def test_a_yaml_value_python_cannot_build_is_one_line(tmp_path, capsys):
    """PyYAML raises ValueError (no YAMLError) for a date like 2024-13-45."""
    path = _yaml(tmp_path / "curate.yaml", "demo: true\nseed: 2024-13-45\n")
    _assert_refused(["curate", str(path), "--out", str(tmp_path / "out")],
                    [str(path), "line 2, column 7", "month must be in 1..12"], capsys)


def _theta(value: float) -> dict:
    """rope_theta in both the transformers 4 (top level) and 5 (rope_parameters) forms the tiny config writes."""
    return {"rope_theta": value, "rope_parameters": {"rope_type": "default", "rope_theta": value}}


# ---- checkpoint config.json ----------------------------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ({"rms_norm_eps": -1}, ["rms_norm_eps", "must be in (0, 0.1]", "got -1"]),
    ({"rms_norm_eps": 0}, ["rms_norm_eps", "must be in (0, 0.1]"]),
    (_theta(float("nan")), ["rope_theta", "must be a finite number, got nan"]),
    (_theta(float("inf")), ["rope_theta", "must be a finite number"]),
    (_theta(-10000.0), ["rope_theta", "must be greater than 1"]),
    ({"num_hidden_layers": 1_000_000}, ["num_hidden_layers", "1000000 is beyond any model"]),
    ({"vocab_size": 10**12}, ["vocab_size", "beyond any model"]),
    ({"hidden_size": 10**9}, ["hidden_size", "beyond any model"]),
    ({"hidden_size": 100_000, "intermediate_size": 1_000_000, "num_hidden_layers": 4096, "num_attention_heads": 25,
      "num_key_value_heads": 25, "head_dim": 4000}, ["num_hidden_layers", "parameters, beyond any model"]),
], ids=["eps-negative", "eps-zero", "theta-nan", "theta-inf", "theta-negative", "million-layers", "vocab-huge",
        "hidden-huge", "params-huge"])
def test_checkpoint_config_values_out_of_range_are_refused_at_once(change, expected, tmp_path, capsys):
    d = _hf_dir(tmp_path, _tiny_hf_config(**change))  # json.dumps writes NaN / Infinity, as Python's json reads
    _refused_fast(["generate", "--model", str(d)], [str(d / "config.json"), *expected], capsys)


def test_a_million_layers_with_the_real_weights_is_refused_at_once(checkpoint, tmp_path, capsys):  # noqa: F811 (the fixture)
    d = _copy_checkpoint(checkpoint, tmp_path / "ckpt")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1_000_000}))
    _refused_fast(["serve", "--model", str(d), "--no-warmup"], [str(d / "config.json"), "num_hidden_layers"], capsys)


def test_a_config_json_nested_thousands_deep_is_one_line(tmp_path, capsys):
    d = _hf_dir(tmp_path, '{"architectures": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _refused_fast(["generate", "--model", str(d)], [str(d / "config.json"), "nested too deeply"], capsys)


# ---- prompts the tokenizer makes nothing of ------------------------------------------------------------------

def test_an_empty_raw_prompt_is_one_line(capsys):
    _assert_refused(["generate", "--raw", "--prompt", "", "--max-new-tokens", "2"],
                    ["--prompt ''", "the embedded Qwen2 tokenizer", "no token ids", "it is empty"], capsys)


def test_a_tokenizer_that_maps_the_prompt_to_nothing_is_one_line(checkpoint, tmp_path, capsys):  # noqa: F811 (the fixture)
    """A BPE tokenizer whose vocabulary holds only the special tokens, and no unknown token: the tokenizers library
    drops every character it has no token for, so any text encodes to []."""
    from tokenizers import Tokenizer, models

    d = _copy_checkpoint(checkpoint, tmp_path / "ckpt")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (d / f).unlink(missing_ok=True)
    tokenizer = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0, "<|im_end|>": 1}, merges=[]))
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_end|>"])
    tokenizer.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                         "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    _assert_refused(["generate", "--model", str(d), "--raw", "--prompt", "What lowers glucose?",
                     "--max-new-tokens", "2"],
                    ["--prompt 'What lowers glucose?'", f"the tokenizer of {d}", "no token ids",
                     "check the checkpoint's tokenizer files"], capsys)


# ---- two processes in one run directory ----------------------------------------------------------------------

class _Holder:
    """Another process holding a directory's lock (as a running `train` or `curate` does) until stopped."""

    def __init__(self, directory: Path, what: str):
        code = ("import sys; from diabetica_jax.run_lock import hold_lock; "
                f"lock = hold_lock({str(directory)!r}, {what!r}); print('held', flush=True); sys.stdin.read()")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        cwd=ROOT, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def stop(self) -> None:
        """Killed, not ended: the lock file keeps its record, and the kernel alone releases the flock."""
        self.process.kill()
        self.process.wait()


@pytest.mark.slow
def test_a_second_training_in_one_run_directory_is_refused_then_runs_once_the_first_ends(tmp_path, capsys):
    run = tmp_path / "run"
    config = _train_yaml(tmp_path)
    holder = _Holder(run, "training")
    try:
        line = _assert_refused(["train", str(config), "--run-dir", str(run), "--no-progress"],
                               [str(run), "in use by training", f"pid {holder.process.pid}"], capsys)
        assert "wait for it to end, or use another directory" in line
        assert not (run / "train_config.json").exists() and not (run / "checkpoints").exists()  # no work done
    finally:
        holder.stop()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.process.pid  # a dead holder's record: no matter
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    assert (run / "checkpoints").is_dir() and (run / ".lock").read_text() == ""  # released: left empty


def test_a_second_curation_into_one_output_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    qa = _yaml(tmp_path / "qa.jsonl", json.dumps({"question": "What does insulin do in diabetes?",
                                                  "answer": "It lowers blood glucose in diabetes care."}) + "\n")
    argv = ["curate", "--input", str(qa), "--out", str(out)]
    holder = _Holder(out, "curation")
    try:
        _assert_refused(argv, [str(out), "in use by curation", f"pid {holder.process.pid}"], capsys)
        assert not (out / "data_card.json").exists()
    finally:
        holder.stop()
    assert main(argv) == 0 and (out / "data_card.json").is_file()
