"""Every `diabetica-jax ...` command that the README and the manual (docs/*.md) show parses, names config files
that exist, overrides keys its config has, and reads `runs/...` folders that a `run` shown in them writes; every
`python bench/...` script exists.

Commands come from every ```bash / ```sh block (each line), every ```console block and plain ``` output block (the
`$ ` lines); commands quoted inline in prose are checked too, but a fragment that does not parse
(`diabetica-jax curate`, `--debug ...`) only for its paths. Placeholders (/data/..., DIR, FILE) are parsed but not
looked for on disk.
"""

import dataclasses
import functools
import re
import shlex
from pathlib import Path

import pytest

from diabetica_jax.cli import build_parser
from diabetica_jax.cli.shorthands import SHORTHAND

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_ENDS = {"&&", "||", "|", ";", ">", ">>"}


@dataclasses.dataclass
class Command:
    where: str  # file:line, for the failure message
    words: list[str]  # from `diabetica-jax` (or `python`) to the end of the command
    inline: bool  # quoted in prose: may be a fragment


@dataclasses.dataclass
class Block:
    where: str  # file:line of the opening fence
    language: str
    commands: int  # the diabetica-jax / python bench commands found in it


def _words(text: str) -> list[str]:
    words = shlex.split(text, comments=True)
    for i, word in enumerate(words):
        if word == "diabetica-jax" or (word == "python" and i + 1 < len(words) and words[i + 1].startswith("bench/")):
            tail = words[i:]
            return tail[:next((j for j, w in enumerate(tail) if w in SHELL_ENDS), len(tail))]
    return []


def _commands() -> tuple[list[Command], list[Block]]:
    found, blocks = [], []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        line_of = functools.partial(_line_of, doc, text)
        fences = list(re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S))
        for fence in fences:
            language, body = fence.group(1), fence.group(2)
            if language not in ("", "bash", "sh", "console"):
                continue  # yaml, python: no commands
            start, before = fence.start(2), len(found)
            logical, first = "", None
            for offset, line in _lines(body):
                if language in ("", "console") and not line.startswith("$ "):
                    continue  # output shown in the block
                first = start + offset if first is None else first
                logical += line[2:] if line.startswith("$ ") else line
                if logical.endswith("\\"):
                    logical = logical[:-1] + " "  # continuation
                    continue
                if words := _words(logical):
                    found.append(Command(line_of(first), words, inline=False))
                logical, first = "", None
            blocks.append(Block(line_of(fence.start()), language, len(found) - before))
        prose = text
        for fence in reversed(fences):  # blank the blocks (keeping offsets), then read the `inline code`
            prose = prose[:fence.start()] + re.sub(r"[^\n]", " ", fence.group()) + prose[fence.end():]
        for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
            code = " ".join(span.group(1).split())
            if code.startswith(("diabetica-jax ", "python bench/")):
                words = [w for w in _words(code) if w not in ("...", "…")]
                if words and not (len(words) > 1 and words[1].endswith(":")):  # not an error message quoted
                    found.append(Command(line_of(span.start()), words, inline=True))
    return found, blocks


def _line_of(doc: Path, text: str, pos: int) -> str:
    return f"{doc.relative_to(REPO)}:{text.count(chr(10), 0, pos) + 1}"


def _lines(body: str):
    offset = 0
    for line in body.splitlines(keepends=True):
        yield offset, line.rstrip("\n").strip()
        offset += len(line)


COMMANDS, BLOCKS = _commands()


def _is_placeholder(path: str) -> bool:
    return path.startswith("/") or path.isupper() or "<" in path


def _parse_lm_eval(command: Command) -> None:
    """`diabetica-jax lm-eval ...` hands its arguments to lm-eval: they must parse as lm-eval's run command."""
    pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")
    from lm_eval._cli import HarnessCLI

    rest = command.words[2:]
    try:
        HarnessCLI()._parser.parse_args(rest if rest[:1] in (["run"], ["ls"], ["validate"]) else ["run", *rest])
    except SystemExit:
        raise AssertionError(f"{command.where}: lm-eval does not take: {shlex.join(command.words)}") from None


def _parse(command: Command):
    """The parsed arguments (overrides placed the way main() places them), or None for a prose fragment (or for
    an lm-eval command, checked by lm-eval's parser)."""
    if command.words[1:2] == ["lm-eval"]:
        return _parse_lm_eval(command)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(command.words[1:])
    except SystemExit:
        if command.inline:
            return None
        raise AssertionError(f"{command.where}: does not parse: {shlex.join(command.words)}") from None
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        if command.inline:
            return None
        raise AssertionError(f"{command.where}: unrecognized arguments {stray or extra}: {shlex.join(command.words)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def _repo_file_words(command: Command) -> list[str]:
    """The words that name a config file or a bench script of this repository (config slot or anywhere)."""
    return [w for w in command.words[1:] if re.fullmatch(r"(configs|eval|bench)/[\w./-]+\.(ya?ml|py)", w)]


def _load(args, config: str | None) -> None:
    """Build the command's config from the file and the overrides, as the command does (keys, types, values),
    without the checks that input files exist (the inputs the docs show are placeholders)."""
    from diabetica_jax.cli import commands
    from diabetica_jax.configuration import build, config_data, load_config
    from diabetica_jax.curate.config import CurateConfig
    from diabetica_jax.evaluation.config import EvalConfig
    from diabetica_jax.pipeline.config import load_run_config
    from diabetica_jax.train.config import TrainConfig

    overrides = list(getattr(args, "overrides", None) or [])
    if args.command == "train":
        load_config(TrainConfig, config, overrides)
    elif args.command == "plan" and config:
        if commands._config_kind(config, args.kind) == "recipe":
            load_run_config(config, overrides)
        else:
            load_config(TrainConfig, config, overrides)
    elif args.command == "run":
        load_run_config(config, overrides)
    elif args.command == "eval":
        args.config = config
        load_config(EvalConfig, *commands.eval_config_and_overrides(args))
    elif args.command in ("serve", "generate", "chat"):
        from diabetica_jax.cli.generate_config import ChatConfig, GenerateConfig
        from diabetica_jax.serve.config import ServeConfig

        args.config = config
        settings = {"serve": ServeConfig, "generate": GenerateConfig, "chat": ChatConfig}[args.command]
        load_config(settings, *commands._config_and_overrides(args))
    elif args.command == "curate":
        args.config = config
        config, overrides = commands._config_and_overrides(args)
        data, source = config_data(CurateConfig, config, overrides)
        if not config:
            data.setdefault("demo", not args.input)
        data["inputs"] = list(data.get("inputs") or []) + [{"path": p} for p in args.input or []]
        build(CurateConfig, data, source)


@functools.cache
def _run_folders() -> dict[str, set[str]]:
    """For every `run RECIPE --run-dir DIR` shown: DIR -> the folders that run writes in it (its stages')."""
    from diabetica_jax.pipeline.config import load_run_config
    from diabetica_jax.pipeline.run import Stage, training_stages

    folders = {}
    for command in COMMANDS:
        args = _parse(command)
        if args is None or args.command != "run" or not (REPO / args.config).is_file():
            continue
        cfg = load_run_config(str(REPO / args.config), args.overrides)
        run_dir = Path(args.run_dir)
        trainings = training_stages(cfg, run_dir, Stage(run_dir, "data", ""))
        # the curation, evaluation and export stages' folders: as pipeline.run.run names them
        folders[args.run_dir.rstrip("/")] = {"data", "eval", "hf", *(t.stage.dir.name for t in trainings)}
    return folders


def test_commands_were_found():
    words = {c.words[1] for c in COMMANDS if not c.inline}
    assert {"run", "train", "eval", "serve", "curate", "chat", "generate", "export", "compare", "plan"} <= words
    assert any(c.words[:2] == ["python", "bench/faults.py"] for c in COMMANDS)


def test_every_shell_block_shows_a_command():
    """A ```bash / ```sh / ```console block from which no command was read is one this test does not check."""
    shell = [b for b in BLOCKS if b.language in ("bash", "sh", "console")]
    assert {b.where.split(":")[0] for b in shell} >= {"README.md", "docs/curate.md", "docs/train.md",
                                                       "docs/evaluate.md", "docs/export.md", "docs/serve.md"}
    assert not [b.where for b in shell if not b.commands]


def test_the_demo_run_folders_come_from_the_recipe():
    folders = _run_folders()["runs/demo"]
    assert {"train-adapt", "train-instruct", "data", "eval", "hf"} == folders


# Commands the docs show right that the code refuses (a bug outside the CLI): strict, so the fix shows here.
KNOWN_BUGS: dict[str, str] = {}  # a command's first word -> why it fails (an xfail, strict)


def _params():
    for command in COMMANDS:
        bugs = [why for word, why in KNOWN_BUGS.items() if any(w.startswith(word) for w in command.words)]
        marks = [pytest.mark.xfail(reason=bugs[0], strict=True)] if bugs else []
        yield pytest.param(command, marks=marks, id=f"{command.where} {' '.join(command.words[:3])}")


@pytest.mark.parametrize("command", _params())
def test_readme_command(command, monkeypatch):
    missing = [w for w in _repo_file_words(command) if not (REPO / w).is_file()]
    assert not missing, f"{command.where}: no such file in the repository: {missing}"
    if command.words[0] == "python":
        return  # a bench script: its existence is the check
    args = _parse(command)
    if args is None:
        return  # a fragment in prose: its paths were the check
    config = getattr(args, "config", None)
    if config and not _is_placeholder(config) and "=" not in config:
        assert (REPO / config).is_file(), f"{command.where}: config {config} is not in the repository"
        config = str(REPO / config)
    elif config and "=" not in config:
        config = None  # a placeholder (CONFIG, /data/...): check the overrides against the defaults
    monkeypatch.chdir(REPO)  # curate's `key=value` in the config slot is told from a file this way
    _load(args, config)
    folders = _run_folders()
    for option in ("model", "run_dir"):  # what a command reads from a run's folders
        path = getattr(args, option, None) or vars(args).get(f"{SHORTHAND}model.path" if option == "model" else "")
        if not isinstance(path, str) or args.command == "run":
            continue
        for run_dir, written in folders.items():
            if path.startswith(run_dir + "/"):
                folder = path[len(run_dir) + 1:].split("/")[0]
                assert folder in written, (f"{command.where}: --{option.replace('_', '-')} {path}: a run into "
                                           f"{run_dir} writes {sorted(written)}, not {folder}")
