"""What the model and the judge are asked: the project's own prompts, or a protocol file's (faithful mode)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from diabetica_jax.configuration import InputError


@dataclasses.dataclass(frozen=True)
class Prompts:
    system: str | None
    mcq: str  # format strings with {question}
    cloze: str
    dialog: str
    judge: str  # {question}, {rules}, {answer}
    mcq_rule: str = "picked"  # picked: the option the reply commits to; first_letter: first A-E character
    score_rule: str = "last"  # last: last score-like number; first_digit: the protocol's original parser
    decoding: dict = dataclasses.field(default_factory=dict)  # task -> {max_new_tokens, repetition_penalty}
    judge_temperature: float = 0.0
    judge_max_tokens: int = 1024
    judge_model: str | None = None  # the protocol's judge model (faithful); None: the eval config's judge.model
    seed: int = 42  # the first seed of sampled (faithful) runs; the protocol's
    published: dict = dataclasses.field(default_factory=dict)
    protocol: dict | None = None  # the protocol file read: {path, source, repository, commit}; None for OWN


OWN = Prompts(
    system="You are a careful assistant for diabetes care. Answer accurately and concisely.",
    mcq="下面是一道单项选择题，请只回答最佳选项的字母（A–E）。\n\n{question}",
    cloze="请在括号（）处填写最恰当的内容，只输出要填写的内容。\n\n{question}",
    dialog="{question}",
    judge=(
        "You grade a diabetes care answer against a physician's rules.\n"
        "Question:\n{question}\n\nRules the answer must satisfy:\n{rules}\n\nAnswer to grade:\n{answer}\n\n"
        "Check the answer against each rule, explain briefly, and finish with a line \"Score: N\" where N is "
        "from 1 (fails every rule or is unsafe) to 10 (satisfies every rule, accurate and safe)."
    ),
    decoding={"mcq": {"max_new_tokens": 16}, "cloze": {"max_new_tokens": 32},
              "dialog": {"max_new_tokens": 512, "repetition_penalty": 1.1}},
)


def default_protocol_path() -> Path:
    """The paper's protocol shipped with the package (protocols/diabetica.json, recorded from the Diabetica
    repository's evaluation scripts, MIT licence beside it): what faithful mode and `compare` read when no
    protocol file is given."""
    return Path(str(resources.files("diabetica_jax.evaluation").joinpath("protocols", "diabetica.json")))


def from_protocol(path: str | Path) -> Prompts:
    """Prompts, decoding and scoring rules as a protocol file (layout of Diabetica's protocol.json) gives them."""
    try:
        protocol = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not a readable protocol file ({e})") from None
    if not isinstance(protocol, dict):
        raise InputError(f"{path}: not a protocol file (expected a JSON object, got {type(protocol).__name__})")
    try:
        cloze = protocol["fill_in_the_blank"]
        placeholder = cloze.get("placeholder", "<question>")
        judge = protocol["dialog"]["judge"]
        judge_prompt = (judge["prompt"].replace("{", "{{").replace("}", "}}")
                        .replace("<instruction>", "{question}").replace("<rule>", "{rules}").replace("<output>", "{answer}"))

        def decoding(section):
            d = protocol[section].get("decoding") or {}
            return {k: d[k] for k in ("max_new_tokens", "repetition_penalty") if k in d}

        return Prompts(
            system=protocol.get("system_prompt"),
            mcq=protocol["mcq"]["user_prompt"],
            cloze=cloze["user_prompt"].replace("{", "{{").replace("}", "}}").replace(placeholder, "{question}"),
            dialog=protocol["dialog"]["user_prompt"],
            judge=judge_prompt,
            mcq_rule="first_letter",
            score_rule="first_digit",
            decoding={"mcq": decoding("mcq"), "cloze": decoding("fill_in_the_blank"), "dialog": decoding("dialog")},
            judge_temperature=float(judge.get("temperature", 0.0)),
            judge_max_tokens=int(judge.get("max_tokens", 1024)),
            judge_model=judge.get("model"),
            seed=int((protocol["mcq"].get("decoding") or {}).get("seed", 42)),
            published=protocol.get("published_results", {}),
            # which paper settings a report ran with: the file and the upstream commit it records
            protocol={"path": str(path), **{k: protocol.get(k) for k in ("source", "repository", "commit")}},
        )
    except KeyError as e:
        raise ValueError(f"{path}: protocol file lacks {e.args[0]!r}") from None
