"""Text utilities shared by the curation stages: decoding, normalisation, language, n-grams."""

from __future__ import annotations

import re
import unicodedata

ENCODINGS = ("utf-8-sig", "gb18030")  # UTF-8 (with or without BOM), then GBK's superset


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding) for UTF-8, UTF-8 with BOM or GBK bytes; UnicodeDecodeError if none fits."""
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding), "gbk" if encoding == "gb18030" else encoding.replace("-sig", "")
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("utf-8/gbk", data, 0, len(data), "neither UTF-8 nor GBK")


_SPACE = re.compile(r"\s+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def normalize(text: str) -> str:
    """Canonical form for exact dedup and overlap: NFKC (full-width -> ASCII), lower case, no
    punctuation, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return _SPACE.sub(" ", text).strip()


def language(text: str) -> str:
    """'zh' or 'en' by script: Chinese when CJK characters are at least a fifth of the letters."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk + latin == 0:
        return "unknown"
    return "zh" if cjk >= 0.2 * (cjk + latin / 5) else "en"


def units(text: str) -> list[str]:
    """Comparison units: Chinese characters one by one, other words whole (after normalize)."""
    out: list[str] = []
    for token in normalize(text).split():
        if _CJK.search(token):
            word = ""
            for ch in token:
                if _CJK.match(ch):
                    if word:
                        out.append(word)
                        word = ""
                    out.append(ch)
                else:
                    word += ch
            if word:
                out.append(word)
        else:
            out.append(token)
    return out


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    u = units(text)
    if len(u) < n:
        return {tuple(u)} if u else set()
    return {tuple(u[i : i + n]) for i in range(len(u) - n + 1)}
