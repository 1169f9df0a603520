"""Deterministic lexical checks that teacher output says only what its passage says.

Units are those of `data.text.units` (Chinese characters one by one, other words whole, after NFKC,
lower case and punctuation removal).

content words   the units of a text minus function words (a short English and Chinese list, below)
                and minus digit runs (numbers are checked on their own)
numbers         digit runs in the NFKC text that are not glued to a Latin letter before them
                (the 1 of HbA1c and the 2 of SGLT2 are parts of names), thousands commas dropped and
                trailing decimal zeros stripped, so 7.0 and 7 are the same number; ranges give both
                ends (15–20 -> 15, 20); numbers written as words are not read
turn support    for a dialogue's doctor (assistant) turn: the share of its distinct content words that
                occur among the passage's units, and the list of its numbers missing from the passage
cloze span      the answer occurs in the passage after NFKC and whitespace collapsing, and where it
                begins or ends with a Latin letter or digit, not inside a longer word (`ear` is no
                span of `years`)
cloze alignment the filled-in sentence against each passage sentence (the passage cut after 。！？!?,
                after a full stop followed by whitespace, and at line breaks): the share of its units
                that difflib's SequenceMatcher (no autojunk) matches in order, and whether every unit
                of the answer is among the matched ones, in the best-matching sentence. A clause copied
                out of a longer sentence still lines up fully; a passage span put into another
                sentence's blank does not line up at the answer
"""

from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher

from diabetica_jax.data.text import units

FUNCTION_WORDS_EN = frozenset(
    "a an the and or but if then than so of to in on at by for with from as is are was were be been being it its "
    "this that these those there here you your i me my we our us he she they them his her their what which who "
    "whom when where why how do does did have has had can could will would should may might must also just very "
    "about into over up out all any each some such only too again both other yes no not ok okay well please thank "
    "thanks hello hi dear sure let s t don".split())
FUNCTION_WORDS_ZH = frozenset("的了是在和有我你您他她它们这那就也都而及与或吗呢吧啊呀哦嗯么个很还要会能可以对之于为等好请谢")
FUNCTION_WORDS = FUNCTION_WORDS_EN | FUNCTION_WORDS_ZH

_NUMBER = re.compile(r"(?<![A-Za-z\d.])\d+(?:,\d{3})*(?:\.\d+)?")
_SENTENCE_END = re.compile(r"(?<=[。！？!?])|\n+|(?<=[.])\s+")
_LATIN_OR_DIGIT = re.compile(r"[A-Za-z0-9]")


def numbers(text: str) -> list[str]:
    """The numbers in `text`, canonical (no thousands commas, no trailing decimal zeros), in order."""
    out = []
    for raw in _NUMBER.findall(unicodedata.normalize("NFKC", text)):
        number = raw.replace(",", "")
        if "." in number:
            number = number.rstrip("0").rstrip(".")
        out.append(number)
    return out


def content_words(text: str) -> list[str]:
    """Distinct content units of `text`, in order of first appearance."""
    seen: dict[str, None] = {}
    for unit in units(text):
        if unit not in FUNCTION_WORDS and not unit.isdigit():
            seen.setdefault(unit, None)
    return list(seen)


def turn_support(turn: str, passage: str) -> tuple[float, list[str], list[str]]:
    """(share of the turn's content words found in the passage, those not found, numbers not in the passage)."""
    vocabulary = set(units(passage))
    words = content_words(turn)
    missing = [w for w in words if w not in vocabulary]
    support = 1.0 - len(missing) / len(words) if words else 1.0
    known = set(numbers(passage))
    missing_numbers = list(dict.fromkeys(n for n in numbers(turn) if n not in known))
    return support, missing, missing_numbers


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def is_span(answer: str, passage: str) -> bool:
    """Whether `answer` is a span of `passage` (NFKC, whitespace collapsed, not cut out of a longer word)."""
    answer, passage = _collapse(answer), _collapse(passage)
    if not answer:
        return False
    before = r"(?<![A-Za-z0-9])" if _LATIN_OR_DIGIT.match(answer[0]) else ""
    after = r"(?![A-Za-z0-9])" if _LATIN_OR_DIGIT.match(answer[-1]) else ""
    return re.search(before + re.escape(answer) + after, passage) is not None


def sentences(passage: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(passage) if s and s.strip()]


def cloze_alignment(left: str, answer: str, right: str, passage: str) -> tuple[float, bool, str]:
    """(best share of the filled-in sentence's units matched in order by one passage sentence, whether the
    answer's units are all matched in that sentence, that sentence). Ties prefer a sentence holding the answer."""
    head, middle, tail = units(left), units(answer), units(right)
    filled = head + middle + tail
    answer_at = range(len(head), len(head) + len(middle))
    best = (0.0, False, "")
    if not filled:
        return best
    for sentence in sentences(passage):
        matcher = SequenceMatcher(None, filled, units(sentence), autojunk=False)
        matched = {i for block in matcher.get_matching_blocks() for i in range(block.a, block.a + block.size)}
        candidate = (len(matched) / len(filled), all(i in matched for i in answer_at), sentence)
        if candidate[:2] > best[:2]:
            best = candidate
    return best
