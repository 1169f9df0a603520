"""Text utilities shared by the curation stages: decoding, normalisation, language, n-grams.

Decoding policy: input files are UTF-8 (with or without BOM) or GBK (decoded as its superset
GB18030). Bytes that are not UTF-8 go to `charset-normalizer`, and GBK is accepted only when it is
among its readings and (nearly, see GBK_MARGIN) as little chaotic as the best; anything else (Big5, Shift-JIS, ...) is refused with the encoding
it looks like, never decoded. Big5 and Shift-JIS bytes are often valid GBK byte for byte, so trying
GBK blindly would turn them into mojibake; and detection on short inputs (a line, a cell) is not
reliable enough to decode them as what it guesses, so they become rejects that name the guess.
Detection needs bytes: decide once per file, not per line.
"""

from __future__ import annotations

import re
import unicodedata

# charset-normalizer's names for the GB family (it reports GBK and GB2312 text as gb18030)
GB_FAMILY = {"gb18030", "gbk", "gb2312", "cp936"}
# GBK is the expected legacy encoding here, so it wins near-ties: short GBK text often reads a few
# hundredths less chaotic as cp949 (0.06 vs 0.0), while Big5 bytes are not read as GB18030 at all
# and Shift-JIS prose reads 0.1 worse
GBK_MARGIN = 0.07


def decode(data: bytes) -> tuple[str, str]:
    """(text, "utf-8" | "gbk") for UTF-8, UTF-8 with BOM or GBK bytes; otherwise a
    UnicodeDecodeError whose `reason` names the encoding the bytes look like."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    # UTF-16/32 without a BOM is a frequent false reading of short CJK byte strings; it cannot be
    # right for a file of lines anyway
    guesses = [m for m in from_bytes(data) if not m.encoding.startswith(("utf_16", "utf_32"))]
    least = min((m.chaos for m in guesses), default=None)
    if any(m.encoding in GB_FAMILY and m.chaos <= least + GBK_MARGIN for m in guesses):
        try:
            return data.decode("gb18030"), "gbk"
        except UnicodeDecodeError:  # the detector only sampled the bytes
            pass
    looks_like = f"looks like {guesses[0].encoding}" if guesses else "no encoding detected"
    raise UnicodeDecodeError("utf-8/gbk", data, 0, len(data), f"{looks_like}, not UTF-8 or GBK")


def undecodable(error: UnicodeDecodeError) -> str:
    """A reject reason for bytes `decode` refused: 'undecodable bytes: looks like big5, not UTF-8 or GBK'."""
    return f"undecodable bytes: {error.reason}"


# What no record's text may hold: C0 control characters other than the whitespace ones (tab, line feed, vertical
# tab, form feed, carriage return) and DEL, which mean binary data, not prose; and lone UTF-16 surrogates (a JSON
# escape such as \ud800 without its pair), which have no UTF-8 form, so the record could not be written out.
_BAD_CHARACTER = re.compile("[\x00-\x08\x0e-\x1f\x7f\ud800-\udfff]")


def bad_character(text: str) -> str | None:
    """Why `text` cannot be a record's text ('binary data: control character U+0000'), or None when it can."""
    found = _BAD_CHARACTER.search(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        return f"not valid Unicode: a lone surrogate U+{code:04X}"
    return f"binary data: control character U+{code:04X}"


def escape_bad_characters(text: str) -> str:
    """`text` with the characters `bad_character` refuses written as \\uXXXX escapes: safe to write as UTF-8 and
    to show in a reject."""
    return _BAD_CHARACTER.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_SPACE = re.compile(r"\s+")
# everything but letters, digits and whitespace (str.isalnum / str.isspace, checked code point by code point)
_NOT_WORD = re.compile(r"[^\w\s]|_")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def _ascii_table(keep) -> bytes:
    """A bytes.translate table mapping the ASCII characters `keep` refuses to a space."""
    return bytes(c if keep(chr(c)) else 32 for c in range(128)) + bytes(range(128, 256))


# ASCII text (most English records) takes byte-level fast paths, built from the same regular
# expressions so that they cannot disagree with the general ones
_WORD_OR_SPACE_ASCII = _ascii_table(lambda ch: not _NOT_WORD.match(ch))
_LATIN_ASCII = bytes(c for c in range(128) if _LATIN.match(chr(c)))


def normalize(text: str) -> str:
    """Canonical form for exact dedup and overlap: NFKC (full-width -> ASCII), lower case, no
    punctuation, whitespace collapsed."""
    if text.isascii():  # NFKC leaves ASCII alone
        return " ".join(text.lower().encode().translate(_WORD_OR_SPACE_ASCII).decode().split())
    text = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return " ".join(text.split())  # whitespace runs (str.isspace, as regex \s) -> one space, none at the ends


def language(text: str) -> str:
    """'zh' or 'en' by script: Chinese when CJK characters are at least a fifth of the letters."""
    if text.isascii():
        raw = text.encode()
        return "en" if len(raw) - len(raw.translate(None, _LATIN_ASCII)) else "unknown"
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk + latin == 0:
        return "unknown"
    return "zh" if cjk >= 0.2 * (cjk + latin / 5) else "en"


def units(text: str) -> list[str]:
    """Comparison units: Chinese characters one by one, other words whole (after normalize)."""
    return normalized_units(normalize(text))


def normalized_units(normalized: str) -> list[str]:
    """`units` of text that is already `normalize`d (curation normalises each record once)."""
    if not _CJK.search(normalized):
        return normalized.split()
    return _UNIT.findall(normalized)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    return unit_ngrams(units(text), n)


def unit_ngrams(u: list[str], n: int) -> set[tuple[str, ...]]:
    """The distinct runs of `n` units (all of them as one when there are fewer than n)."""
    if len(u) < n:
        return {tuple(u)} if u else set()
    return {tuple(u[i : i + n]) for i in range(len(u) - n + 1)}
