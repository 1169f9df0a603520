"""Metrics, each small enough to check by hand.

- accuracy + 95% Wilson interval (the benchmarks are small: 235 and 77 items);
- ROUGE-1/2/L F1 over characters. `keep_whitespace=True` is the paper's computation (faithful mode): the raw
  characters of both strings, whitespace included, no normalisation. The project's own mode drops
  whitespace characters (`keep_whitespace=False`). Empty output (either string has no characters to
  compare, or, for ROUGE-2, fewer than two): F1 0.0 in both modes. The paper used its own character
  functions, not a package: its rouge_n returns 0 on empty output, its rouge_l divides by zero (the script
  fails); a faithful run scores such an item 0.0 for ROUGE-L too rather than aborting;
- BLEU, two of them, named by their tokens:
  `bleu_word` is the paper's: nltk `sentence_bleu` over `nltk.word_tokenize(text.lower())` tokens with
  `SmoothingFunction().method4`. `word_tokenize` needs nltk's punkt data (`punkt_tab` since nltk 3.8.2) for
  its sentence splitter; where punkt_tab is not installed (no network here) the same tokenizer runs with
  `preserve_line=True`, which skips the sentence splitting. The only difference: a period that ends a
  sentence *other than the last* stays attached to its word ("resistance. it" -> 'resistance.', 'it'
  instead of 'resistance', '.', 'it'); the last sentence's period is split off either way. An unspaced Chinese answer is one token, so this BLEU is close
  to exact match on Chinese (1.0 when identical, 0.0 otherwise). `bleu_word_tokenizer()` says which was used.
  `bleu_char` is the project's own: the same sentence_bleu and smoothing over non-whitespace characters
  (not the paper's computation). Both give 0.0 for an empty candidate or reference;
- judge scores: `parse_score` (the project's own, robust) and `parse_score_original` (the paper's rule).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return (float("nan"), float("nan"))
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # At 0% and 100% centre and half are equal in exact arithmetic, but float rounding can leave
    # the bound a hair on the wrong side of p (0.0 < 3e-17); the interval always contains p.
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def _chars(text: str, keep_whitespace: bool = False) -> list[str]:
    return list(text) if keep_whitespace else [c for c in text if not c.isspace()]


def _f1(overlap: int, candidate: int, reference: int) -> float:
    if overlap == 0 or candidate == 0 or reference == 0:
        return 0.0
    precision, recall = overlap / candidate, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(candidate: str, reference: str, n: int, keep_whitespace: bool = False) -> float:
    def grams(chars):
        return Counter(tuple(chars[i : i + n]) for i in range(len(chars) - n + 1))

    c, r = grams(_chars(candidate, keep_whitespace)), grams(_chars(reference, keep_whitespace))
    return _f1(sum((c & r).values()), sum(c.values()), sum(r.values()))


def rouge_l(candidate: str, reference: str, keep_whitespace: bool = False) -> float:
    c, r = _chars(candidate, keep_whitespace), _chars(reference, keep_whitespace)
    if not c or not r:
        return 0.0
    previous = [0] * (len(r) + 1)
    for a in c:
        current = [0]
        for j, b in enumerate(r):
            current.append(previous[j] + 1 if a == b else max(previous[j + 1], current[j]))
        previous = current
    return _f1(previous[-1], len(c), len(r))


def _sentence_bleu(candidate: list[str], reference: list[str]) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not candidate or not reference:
        return 0.0
    return float(sentence_bleu([reference], candidate, smoothing_function=SmoothingFunction().method4))


def bleu_char(candidate: str, reference: str) -> float:
    """The project's own BLEU: over non-whitespace characters (not the paper's: see bleu_word)."""
    return _sentence_bleu(_chars(candidate), _chars(reference))


def _punkt_available() -> bool:
    """nltk's sentence splitter data is installed: `punkt_tab`, which word_tokenize loads since nltk 3.8.2
    (the old pickled `punkt` alone does not serve it)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        return True
    except LookupError:
        return False


def word_tokens(text: str) -> list[str]:
    """nltk `word_tokenize(text.lower())`, with `preserve_line=True` when punkt_tab is not installed (or
    cannot be loaded)."""
    from nltk import word_tokenize

    if _punkt_available():
        try:
            return word_tokenize(text.lower())
        except LookupError:  # e.g. punkt_tab present without the language's data
            pass
    return word_tokenize(text.lower(), preserve_line=True)


def bleu_word_tokenizer() -> str:
    return ("nltk word_tokenize (punkt_tab)" if _punkt_available()
            else "nltk word_tokenize(preserve_line=True): punkt_tab not installed, sentence splitting skipped")


def bleu_word(candidate: str, reference: str) -> float:
    """The paper's BLEU: sentence_bleu over nltk word_tokenize(text.lower()) tokens, smoothing method 4."""
    return _sentence_bleu(word_tokens(candidate), word_tokens(reference))


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


def parse_score_original(reply: str) -> float | None:
    """The paper's score rule, step by step as protocol.json `dialog.judge.score` states it:
    the reply NFKC-normalised; i = reply.find('Score: ') (the FIRST occurrence; -1 when absent, so the
    reply's last character is read); s = reply[i:].strip().replace('Score: ', '').replace('\\n', '');
    10.0 if s starts with '10', else float(s[0]). None (dropped from the mean, counted as unparsed) where the
    original fails: s empty or s[0] not a digit. So 'Score: 7.5' -> 7, 'Score: 12' -> 1, 'Score: **10**' and
    '[9]' -> None, 'Score: 8 ... Score: 3' -> 8, 'Score：8' -> NFKC 'Score:8' has no 'Score: ' -> last char 8."""
    text = unicodedata.normalize("NFKC", reply or "")
    i = text.find("Score: ")
    s = text[i:].strip().replace("Score: ", "").replace("\n", "")
    if s.startswith("10"):
        return 10.0
    try:
        return float(s[0])
    except (IndexError, ValueError):
        return None
