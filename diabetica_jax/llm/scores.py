"""Reading a 1-10 score out of a judge model's free-text reply: the project's own rule, shared by the
evaluation's judge (open dialogue, GRPO's judge reward) and curation's pair judge."""

from __future__ import annotations

import re
import unicodedata

_SCORE_PATTERNS = [
    # "Score: 8", "Score: **10**", "score = [9]", "评分：7.5分", "Score：8" (NFKC makes the colon ASCII)
    re.compile(r"(?:score|rating|评分|得分|分数)\W{0,8}?(\d+(?:\.\d+)?)", re.I),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b"),  # "8/10"
]
_BARE_SCORE = re.compile(r"^\W*(\d+(?:\.\d+)?)\W*$")  # a last line holding only a number: "[9]", "**9**"


def parse_score(reply: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The project's own judge-score rule, robust to formatting: the reply NFKC-normalised (full-width colon and
    digits become ASCII); the LAST `Score: 8` / `Score: **10**` / `Score: [9]` / `评分：7.5分` in the reply (the
    judge is asked to reason first and score last, so when it writes a score twice the final verdict counts:
    "Score: 8 ... Score: 3" -> 3); else the last `8/10`; else a last non-empty line holding only a number
    (`[9]`, `**9**`). Decimals are kept (7.5). None when there is none or it is out of [low, high]
    (recorded as unparsed, never as zero)."""
    text = unicodedata.normalize("NFKC", reply or "")
    for pattern in _SCORE_PATTERNS:
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return value if low <= value <= high else None
    lines = [line for line in text.splitlines() if line.strip()]
    bare = _BARE_SCORE.match(lines[-1]) if lines else None
    if bare:
        value = float(bare.group(1))
        return value if low <= value <= high else None
    return None
