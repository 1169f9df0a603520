"""Multiple-choice questions: parse a stem plus `Option X: ...` lines and an answer like `B：...`, render
them canonically, and find the option a free-text reply commits to (curation and evaluation share it).

Tolerant of the variations real files have: ASCII or full-width colons and brackets, `A.` / `A、`
/ `(A)` labels, a `Question:` prefix or none, stray line breaks inside the stem or an option,
and answers given as a bare letter, `B：text`, or `答案：B`.
"""

from __future__ import annotations

import re
import unicodedata

LETTERS = "ABCDEFGH"
_OPTION = re.compile(
    r"^\s*(?:Option\s*|选项\s*)?[(（]?([A-H])[)）]?\s*[:：.、．)]\s*(.*)$", re.IGNORECASE
)
_QUESTION_PREFIX = re.compile(r"^\s*(?:Question|问题|题目)\s*[:：]\s*", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*(?:答案|Answer)?\s*[:：]?\s*[(（]?([A-Ha-h])(?![A-Za-z])")


class MCQParseError(ValueError):
    pass


def parse_question(text: str) -> tuple[str, dict[str, str]]:
    """(stem, {letter: option text}); raises MCQParseError when fewer than two options are found."""
    stem_lines: list[str] = []
    options: dict[str, str] = {}
    current: str | None = None
    for raw_line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw_line.strip()
        if not line:
            continue
        match = _OPTION.match(unicodedata.normalize("NFKC", line))
        # an option line must carry the next letter in sequence: a stem line that merely looks
        # like "C: ..." in the middle of the text is not taken for an option
        if match and match.group(1).upper() == LETTERS[len(options)]:
            current = match.group(1).upper()
            options[current] = match.group(2).strip()
        elif current is not None:  # a line break inside an option
            options[current] = f"{options[current]} {line}".strip()
        else:
            stem_lines.append(line)
    stem = _QUESTION_PREFIX.sub("", " ".join(stem_lines)).strip() if stem_lines else ""
    stem = re.sub(r"\s+", " ", stem)
    if len(options) < 2:
        raise MCQParseError(f"found {len(options)} option line(s); an MCQ needs at least two")
    if not stem:
        raise MCQParseError("no question stem before the options")
    return stem, options


def parse_answer(text: str, options: dict[str, str]) -> str:
    """The keyed letter; raises MCQParseError when missing or outside the options."""
    match = _ANSWER.match(unicodedata.normalize("NFKC", str(text or "")))
    if not match:
        raise MCQParseError(f"answer {str(text)[:40]!r} does not start with an option letter")
    letter = match.group(1).upper()
    if letter not in options:
        raise MCQParseError(f"answer letter {letter} is not among the options {sorted(options)}")
    return letter


def render(stem: str, options: dict[str, str]) -> str:
    """The canonical text of a question: stem, then one `X. option` line each."""
    return stem + "\n" + "\n".join(f"{k}. {v}" for k, v in sorted(options.items()))


# A letter counts only as a standalone token: never inside a word (the "B" of "Basal", the "C" of "HbA1c").
_NOT_IN_WORD = r"(?<![A-Za-z0-9])([A-H])(?![A-Za-z0-9])"
_PICK = [
    # the keyword in any case, the letter upper case only: "the answer is a combination" names no option
    re.compile(r"(?i:answer|答案|正确答案|最佳答案|选择|选)\s*(?i:is|为|是|应为|应选)?\s*[:：]?\s*[(（]?\s*"
               + _NOT_IN_WORD),
    # the reply opens with the letter: "B", "B.", "B、", "(B)", "B 二甲双胍", "B二甲双胍"
    re.compile(r"^\s*[(（]?" + _NOT_IN_WORD),
    # "B." / "B、" / "B)" opening a later line, as in "Reasoning...\nB. metformin"
    re.compile(r"(?m)^\s*[(（]?" + _NOT_IN_WORD + r"[)）]?\s*[.:：、．)]"),
    # a bracketed letter anywhere: "(B)", "（B）"
    re.compile(r"[(（]\s*([A-H])\s*[)）]"),
]

# What `picked_option` reads, in words, for reports.
PICKED_RULE = ("standalone letter: 'Answer: B' / '答案：B', a reply opening with the letter ('B', 'B.', '(B)'), "
               "'B.' opening a line, or '(B)'; never a letter inside a word")


def picked_option(text: str) -> str | None:
    """The option letter an answer commits to, read as a standalone token (PICKED_RULE); None if none."""
    text = unicodedata.normalize("NFKC", text)
    for pattern in _PICK:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return None
