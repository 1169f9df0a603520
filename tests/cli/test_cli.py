"""The command line itself: `--help` without the heavy libraries, every option documented with its default,
eval's --mode, input errors still mapped after the lazy import, and the chat REPL's own commands."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diabetica_jax.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("jax", "flax", "transformers", "torch", "orbax")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_help_of_every_command_imports_no_heavy_library():
    # A fresh interpreter (this one has them loaded): parse `--help` of the top level and of every command,
    # and a usage error, the way `python -m diabetica_jax.cli ...` does, then list what got imported.
    code = f"""
import contextlib, io, json, sys
from diabetica_jax.cli import build_parser, main
names = [None] + sorted(build_parser()._subparsers._group_actions[0].choices)
codes = {{}}
for name in names:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(([name] if name else []) + ["--help"])
        except SystemExit as e:
            codes[str(name)] = e.code
with contextlib.redirect_stderr(io.StringIO()):
    try:
        main(["eval"])  # no --out: a usage error, answered before any import
    except SystemExit as e:
        codes["usage error"] = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["codes"].pop("usage error") == 2
    assert set(result["codes"]) == {"None", *_subcommands(build_parser())}
    assert set(result["codes"].values()) == {0}


def test_module_entry_point_help_imports_no_heavy_library():
    code = ("import runpy, sys\nsys.argv = ['diabetica_jax.cli', 'serve', '--help']\n"
            "try:\n    runpy.run_module('diabetica_jax.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    assert "--max-waiting" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_parser_choices_equal_the_library_constants():
    from diabetica_jax.cli import choices
    from diabetica_jax.evaluation.config import MODES, TASKS

    assert choices.TASKS == TASKS and choices.EVAL_MODES == MODES


def test_options_are_shorthands_of_config_keys(tmp_path):
    from diabetica_jax.cli.commands import _config_and_overrides
    from diabetica_jax.configuration import load_config
    from diabetica_jax.serve import ServeConfig

    args = build_parser().parse_args(["serve", "--port", "8001", "--max-tokens", "64", "--no-warmup", "--dtype",
                                      "bfloat16", "--model", "/data/ckpt"])
    config, overrides = _config_and_overrides(args)
    assert config is None and "port=8001" in overrides and "limits.max_new_tokens=64" in overrides
    by_flags = load_config(ServeConfig, config, overrides)
    assert by_flags == load_config(ServeConfig, None, ["port=8001", "limits.max_new_tokens=64", "warmup=false",
                                                       "model.runtime.dtype=bfloat16", "model.path=/data/ckpt"])
    settings = tmp_path / "serve.yaml"
    settings.write_text("port: 9000\nlimits: {slots: 2}\n")
    args = build_parser().parse_args(["serve", str(settings), "--port", "8001"])  # the option wins over the file
    cfg = load_config(ServeConfig, *_config_and_overrides(args))
    assert (cfg.port, cfg.limits.slots, cfg.host) == (8001, 2, "127.0.0.1")

    from diabetica_jax.cli.generate_config import GenerateConfig

    args = build_parser().parse_args(["generate", "--prompt", "Q: what is HbA1c?", "--prompt", "and", "--mesh",
                                      "fsdp=4,tensor=2", "--temperature", "0.5"])
    cfg = load_config(GenerateConfig, *_config_and_overrides(args))
    assert (cfg.prompts, cfg.mesh, cfg.temperature) == (["Q: what is HbA1c?", "and"], {"fsdp": 4, "tensor": 2}, 0.5)


def test_every_option_has_help():
    parser = build_parser()
    missing = [f"{name or 'diabetica-jax'} {action.dest}"
               for name, p in [(None, parser), *_subcommands(parser).items()]
               for action in p._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert missing == []


def test_help_shows_the_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: no default cut by wrapping
    commands = _subcommands(build_parser())
    serve = commands["serve"].format_help()
    for shown in ("(default: 127.0.0.1)", "(default: 8000)", "(default: 8)", "(default: 1024)", "(default: 512)",
                  "(default: 64)", "(default: tiny)"):
        assert shown in serve
    assert "(default: None)" not in serve and "(default: False)" not in serve  # absent defaults stay unsaid
    assert "(default: 512)" in commands["chat"].format_help()  # set_defaults shows too
    generate = commands["generate"].format_help()
    assert "(default: 0)" in generate and "(default: 1.0)" in generate  # zero defaults are shown
    assert "(default: 5GB)" in commands["export"].format_help()


def test_eval_mode_flag_becomes_the_mode_override(tmp_path):
    from diabetica_jax.cli.commands import eval_config_and_overrides

    args = build_parser().parse_args(["eval", "--mode", "faithful", "--task", "mcq", "--data", "A1.csv",
                                      "--out", str(tmp_path)])
    config, overrides = eval_config_and_overrides(args)
    assert config is None and "mode=faithful" in overrides
    assert "mode=own" in eval_config_and_overrides(build_parser().parse_args(["eval", "--mode", "own", "--out", "x"]))[1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--mode", "fast", "--out", "x"])


def test_errors_are_still_one_line_after_the_lazy_import(tmp_path, capsys):
    assert main(["eval", "--task", "mcq", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "diabetica-jax eval: error: eval: --task and --data go together"
    assert main(["train", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err


# -- the chat REPL ---------------------------------------------------------------------------------------------


class _Tokenizer:
    """Characters as token ids; no chat template, so a prompt is the messages' contents, one paragraph each."""

    chat_template = None

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class _Engine:
    def __init__(self):
        self.prompts: list[str] = []

    def stream(self, ids, max_new_tokens, sampling):
        self.prompts.append("".join(chr(i) for i in ids))
        yield from (ord(c) for c in "ok")


def _chat(lines: list[str], system: str | None = None) -> tuple[_Engine, str]:
    from diabetica_jax.generate.chat import repl

    engine, script, out = _Engine(), iter(lines), []

    def read(prompt):
        try:
            return next(script)
        except StopIteration:
            raise EOFError from None

    def write(*args, end="\n", flush=False):
        out.append(" ".join(map(str, args)) + end)

    repl(engine, _Tokenizer(), None, 8, system, read=read, write=write)
    return engine, "".join(out)


def test_chat_commands_are_answered_locally():
    engine, out = _chat(["/help", "/nonsense x", "hello", "/reset", "again", "/exit", "never read"])
    assert "/reset" in out and "/system TEXT" in out  # the /help list
    assert "unknown command /nonsense" in out
    assert "conversation cleared" in out
    assert engine.prompts == ["hello\n", "again\n"]  # no command reached the model; /reset forgot "hello"
    assert out.count("assistant> ok") == 2


def test_chat_system_prompt_and_slash_escape():
    engine, out = _chat(["hi", "/system be brief", "//etc/hosts?", "/system", "x", "/quit"], system="first")
    assert engine.prompts[0] == "first\n\nhi\n"
    assert engine.prompts[1] == "be brief\n\n/etc/hosts?\n"  # a new system prompt starts a new conversation
    assert engine.prompts[2] == "x\n"  # /system alone: none
    assert "system prompt set" in out and "no system prompt" in out


def test_chat_ends_at_end_of_input():
    engine, _ = _chat(["hello"])
    assert engine.prompts == ["hello\n"]
