"""Judge rubrics of the clinical tasks: a text file the user can replace, and the judge's JSON ratings read back.

A rubric file (the defaults are `evaluation/rubrics/<task>.txt`):

    # Lines starting with '#' are comments: never sent to the judge.
    scale: 1-5
    [readability]
    5 = plain words and short sentences a patient follows on first reading
    1 = ...
    [safety]
    ...

`scale: LOW-HIGH` (whole numbers, LOW < HIGH) is the range of every rating, and higher is better on every
dimension (write the guidance that way: a dimension about a fault, such as hallucination, rates its absence).
Each `[name]` line opens a dimension; its name (lower-case letters, digits and underscores) is the JSON key the
judge answers with and the key of the report, and the lines under it, up to the next `[name]`, are its guidance,
sent to the judge as written. The file is read once, before any model is loaded, so a bad rubric stops the run
with its file and line.

The judge is asked for one JSON object holding every dimension. `parse_ratings` reads the reply robustly: the
whole reply as JSON, else a ```json fenced block, else the last `{...}` in the prose that holds a dimension
key; keys are matched case-insensitively with spaces or hyphens for underscores; a value may be a number, a
numeric string ("4", "4/5") or an object with a `score` / `rating` / `value`. Where no JSON object holds a
dimension, `name: 4` or `"name" = 4` anywhere in the reply counts (a judge that wrote prose, or JSON with a
trailing comma). A dimension that is missing, not a number or outside the scale is None, never 0 and never
clipped: the report counts it as unparsed and leaves it out of the mean.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from diabetica_jax.configuration import read_text_file
from diabetica_jax.evaluation.data import EvalDataError

RUBRIC_DIR = Path(__file__).resolve().parent / "rubrics"
_DIMENSION = re.compile(r"^\[([a-z][a-z0-9_]*)\]$")
_SCALE = re.compile(r"^scale\s*:\s*(\d+)\s*-\s*(\d+)\s*$", re.IGNORECASE)


class RubricError(EvalDataError):
    """A rubric file that cannot be used; names the file and line."""


@dataclasses.dataclass(frozen=True)
class Rubric:
    path: str
    low: int
    high: int
    dimensions: dict[str, str]  # name -> guidance, in the file's order

    @property
    def names(self) -> list[str]:
        return list(self.dimensions)

    def text(self) -> str:
        """What the judge reads: each dimension with its guidance."""
        return "\n\n".join(f"{name} ({self.low}-{self.high}):\n{guidance}" if guidance else
                           f"{name} ({self.low}-{self.high})" for name, guidance in self.dimensions.items())

    def reply_format(self) -> str:
        """The JSON object the judge is asked to reply with, values as placeholders."""
        return "{" + ", ".join(f'"{name}": <{self.low}-{self.high}>' for name in self.dimensions) + "}"


def default_rubric_path(task: str) -> Path:
    return RUBRIC_DIR / f"{task}.txt"


def load_rubric(path: str | Path) -> Rubric:
    path = Path(path)
    text = read_text_file(path, "rubric file", RubricError)
    scale: tuple[int, int] | None = None
    dimensions: dict[str, list[str]] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if current is None and not line:
            continue
        if current is None and _SCALE.match(line):
            low, high = (int(g) for g in _SCALE.match(line).groups())
            if low >= high:
                raise RubricError(f"{path}: line {number}: scale {low}-{high}: the low end must be below the high")
            scale = (low, high)
            continue
        if line.startswith("["):
            match = _DIMENSION.match(line)
            if not match:
                raise RubricError(f"{path}: line {number}: {line!r} is not a dimension name (lower-case letters, "
                                  "digits and underscores in brackets, e.g. [readability])")
            current = match.group(1)
            if current in dimensions:
                raise RubricError(f"{path}: line {number}: dimension {current!r} given twice")
            dimensions[current] = []
            continue
        if current is None:
            raise RubricError(f"{path}: line {number}: {line[:60]!r} before the first [dimension] "
                              "(only 'scale: LOW-HIGH' and '#' comments go there)")
        dimensions[current].append(raw.rstrip())
    if scale is None:
        raise RubricError(f"{path}: no 'scale: LOW-HIGH' line before the dimensions")
    if not dimensions:
        raise RubricError(f"{path}: no dimension: write one [name] line per rated dimension")
    return Rubric(str(path), scale[0], scale[1],
                  {name: "\n".join(lines).strip() for name, lines in dimensions.items()})


# ----------------------------------------------------------------------------------- reading the judge's reply


def _normal_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _json_objects(reply: str) -> list[dict]:
    """Every JSON object the reply holds, in reading order: the whole reply, fenced blocks, brace spans."""
    candidates = [reply.strip()] + re.findall(r"```(?:json)?\s*(.*?)```", reply, re.DOTALL | re.IGNORECASE)
    depth, start = 0, None
    for i, ch in enumerate(reply):  # top-level {...} spans (braces inside strings are rare in a rating reply)
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                candidates.append(reply[start : i + 1])
    objects = []
    for text in candidates:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def _rating(value, low: int, high: int) -> float | None:
    """A number within [low, high] from a JSON value, or None."""
    if isinstance(value, dict):
        value = next((value[k] for k in ("score", "rating", "value") if k in value), None)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = re.match(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*\d+(?:\.\d+)?)?\s*(?:out of \d+)?\s*$", value, re.IGNORECASE)
        if not match:
            return None
        number = float(match.group(1))
    else:
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def parse_ratings(reply: str | None, rubric: Rubric) -> dict[str, float | None]:
    """{dimension: rating or None} for every dimension of the rubric (see the module docstring)."""
    reply = reply or ""
    wanted = set(rubric.names)
    chosen: dict = {}
    for obj in _json_objects(reply):  # the last object that names a dimension: a judge's final verdict
        normal = {_normal_key(k): v for k, v in obj.items()}
        if wanted & set(normal):
            chosen = normal
    ratings = {}
    for name in rubric.names:
        if name in chosen:
            ratings[name] = _rating(chosen[name], rubric.low, rubric.high)
            continue
        # no JSON verdict for it: the last "name: 4" (quoted or not, spaces or hyphens for underscores)
        spelled = r"[\s_\-]".join(re.escape(part) for part in name.split("_"))
        found = re.findall(rf"(?<![a-z0-9_])[\"']?{spelled}[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)(?![\d.])",
                           reply, re.IGNORECASE)
        ratings[name] = _rating(float(found[-1]), rubric.low, rubric.high) if found else None
    return ratings
