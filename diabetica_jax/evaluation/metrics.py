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
- judge scores: `parse_score` (the project's own, robust; it lives in `llm.scores`, curation's pair judge reads scores too) and `parse_score_original` (the paper's rule);
- for the clinical tasks: ROUGE-1/2/L F1 over word tokens (`rouge_words`, tokens by `rouge_tokens`: the text
  NFKC-normalised and lower-cased, split at whitespace and punctuation, each CJK character a token of its
  own), and the mean of ratings with a 95% Student t interval (`mean_ci95`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

from diabetica_jax.llm.scores import parse_score as parse_score  # re-exported beside parse_score_original


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


def _rouge_n_f1(candidate: list[str], reference: list[str], n: int) -> float:
    """ROUGE-N F1 of two token sequences (characters or words): clipped n-gram overlap."""
    def grams(tokens):
        return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    c, r = grams(candidate), grams(reference)
    return _f1(sum((c & r).values()), sum(c.values()), sum(r.values()))


def _rouge_l_f1(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 of two token sequences: the longest common subsequence over each length."""
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for a in candidate:
        current = [0]
        for j, b in enumerate(reference):
            current.append(previous[j] + 1 if a == b else max(previous[j + 1], current[j]))
        previous = current
    return _f1(previous[-1], len(candidate), len(reference))


def rouge_n(candidate: str, reference: str, n: int, keep_whitespace: bool = False) -> float:
    return _rouge_n_f1(_chars(candidate, keep_whitespace), _chars(reference, keep_whitespace), n)


def rouge_l(candidate: str, reference: str, keep_whitespace: bool = False) -> float:
    return _rouge_l_f1(_chars(candidate, keep_whitespace), _chars(reference, keep_whitespace))


# Chinese, Japanese and Korean scripts: written without spaces, so each character counts as a word
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# one CJK character, or a run of letters and digits (word characters less the underscore and CJK)
_ROUGE_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def rouge_tokens(text: str) -> list[str]:
    """The tokens word-level ROUGE compares: the text NFKC-normalised (full-width letters and digits become
    ASCII) and lower-cased, then split at whitespace and punctuation: every run of letters and digits is a
    token, every CJK character is a token of its own, and punctuation and symbols are dropped. So
    "HbA1c 7.2%, on Metformin" -> ['hba1c', '7', '2', 'on', 'metformin'] and "血糖高" -> ['血', '糖', '高']."""
    return _ROUGE_TOKEN.findall(unicodedata.normalize("NFKC", text or "").lower())


def rouge_words(candidate: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 over `rouge_tokens` (clinical summaries against a reference summary):
    {'rouge1', 'rouge2', 'rougeL'}. No stemming, no stop words; 0.0 where either side has no token (ROUGE-2:
    no bigram)."""
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    return {"rouge1": _rouge_n_f1(c, r, 1), "rouge2": _rouge_n_f1(c, r, 2), "rougeL": _rouge_l_f1(c, r)}


def _t_central_probability(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom, exactly, from the finite
    series in theta = atan(t / sqrt(df)) (Abramowitz & Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # sin(theta) * (1 + c^2/2 + c^4 (1*3)/(2*4) + ... up to c^(df-2))
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    # odd: (2/pi) * (theta + sin(theta) * (c + c^3 (2/3) + c^5 (2*4)/(3*5) + ... up to c^(df-2)))
    term = math.cos(theta)
    total = term if df > 1 else 0.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * total)


def t_critical(df: int, level: float = 0.95) -> float:
    """The two-sided critical value of Student's t: P(|T| < value) = level (0.95: the 0.975 quantile, 12.706
    for df 1, 2.776 for df 4, 1.984 for df 100). Bisection on the exact distribution up to df 1000; above,
    the Cornish-Fisher expansion around the normal quantile (error below 1e-8 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df > 1000:
        z = _normal_quantile((1 + level) / 2)
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    low, high = 0.0, 1.0
    while _t_central_probability(high, df) < level:
        high *= 2
    for _ in range(200):  # the bracket halves each step: far below float precision long before 200
        middle = (low + high) / 2
        if _t_central_probability(middle, df) < level:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2


def _normal_quantile(p: float) -> float:
    """The standard normal quantile, by bisection on erf (used for very large samples only)."""
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        if 0.5 * (1 + math.erf(middle / math.sqrt(2))) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def mean_ci95(values) -> dict:
    """The mean of `values` (None entries left out) with its 95% Student t interval:
    {'mean', 'ci95': [low, high], 'n', 'std'}, where the interval is mean +- t(0.975, n-1) * s / sqrt(n) and
    s the sample standard deviation (ddof 1). It assumes the items are a sample of the questions one cares
    about; it is not clipped to a rating scale, so with few items it can reach past the scale's ends, which
    says how little a handful of items tells. One value: `ci95` None (no spread to estimate); no value:
    `mean` None too. Identical values give a zero-width interval."""
    numbers = [float(v) for v in values if v is not None]
    n = len(numbers)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "std": None}
    mean = sum(numbers) / n
    if n == 1:
        return {"mean": mean, "ci95": None, "n": 1, "std": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in numbers) / (n - 1))
    half = t_critical(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n, "std": std}


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
