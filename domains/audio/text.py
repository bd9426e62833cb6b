"""Text front end for speech models: normalisation, one symbol table, characters or phonemes.

What a model sees is a LongTensor of ids into :func:`symbols`, a single table shared by both
kinds of input, so a checkpoint records one vocabulary:

* id 0 is the padding symbol ``"_"``;
* then the word boundary ``" "`` and the kept punctuation ``! ' , - . ?`` (prosody cues);
* then the 26 lowercase letters ``a``–``z`` (character input, and the fallback for words the
  dictionary lacks, as in Tacotron/Grad-TTS's text front ends);
* then the 39 ARPAbet phonemes of the CMU Pronouncing Dictionary, written ``"@AA"`` … ``"@ZH"``.
  pocketsphinx ships that dictionary without stress marks (``cmudict-en-us.dict``, 134 860 entries),
  so the phonemes carry none.

:func:`normalize` is the one place text is cleaned: Unicode folded to ASCII (``é`` → ``e``),
abbreviations expanded (``Dr.`` → ``doctor``), numbers spelled out (``42`` → ``forty two``,
``3.5`` → ``three point five``, ``2nd`` → ``second``, ``1990`` → ``nineteen ninety``,
``$5`` → ``five dollars``, ``10%`` → ``ten percent``), lowercased, ``; :`` and brackets turned
into commas, quotes dropped. Characters outside the table are dropped (``strict=True`` refuses
them instead); text with nothing speakable left is a ValueError.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

PAD = "_"
PUNCTUATION = (" ", "!", "'", ",", "-", ".", "?")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
PHONEMES = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
            "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH",
            "UW", "V", "W", "Y", "Z", "ZH")
_SYMBOLS: Tuple[str, ...] = (PAD, *PUNCTUATION, *LETTERS, *("@" + p for p in PHONEMES))
_ID: Dict[str, int] = {s: i for i, s in enumerate(_SYMBOLS)}


def symbols() -> List[str]:
    """The symbol table: index i is the symbol of id i (pad, punctuation, letters, ``@``-phonemes)."""
    return list(_SYMBOLS)


# ---------------------------------------------------------------- numbers
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}


def _below_thousand(n: int) -> str:
    words = []
    if n >= 100:
        words.append(_ONES[n // 100] + " hundred")
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10]))
    elif n > 0 or not words:
        words.append(_ONES[n])
    return " ".join(words)


def number_to_words(n: int) -> str:
    """An integer in words, e.g. ``1234`` -> ``"one thousand two hundred thirty four"``.

    Cardinals up to 10**15 - 1; larger magnitudes are read digit by digit."""
    if not isinstance(n, int):
        raise ValueError(f"number_to_words takes an int, got {type(n).__name__}")
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= 10 ** 15:
        return " ".join(_ONES[int(d)] for d in str(n))
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words.append(_below_thousand(n // scale) + " " + name)
            n %= scale
    if n or not words:
        words.append(_below_thousand(n))
    return " ".join(words)


def _year(n: int) -> str:
    """Years 1100-1999 and 2010-2099 as pairs ("nineteen ninety"); 2000-2009 as a cardinal."""
    hi, lo = divmod(n, 100)
    if 2000 <= n < 2010:
        return number_to_words(n)
    if lo == 0:
        return number_to_words(hi) + " hundred"
    return number_to_words(hi) + (" oh " + _ONES[lo] if lo < 10 else " " + number_to_words(lo))


def _ordinal(n: int) -> str:
    words = number_to_words(n).split(" ")
    last = words[-1]
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join(words[:-1] + [last])


def _spell_number(token: str) -> str:
    """Digits (with optional thousands commas and one decimal point) in words."""
    token = token.replace(",", "")
    if "." in token:
        whole, frac = token.split(".", 1)
        return (number_to_words(int(whole)) if whole else "zero") + " point " + " ".join(_ONES[int(d)] for d in frac)
    n = int(token)
    if len(token) == 4 and 1100 <= n <= 2099:
        return _year(n)
    if len(token) > 1 and token.startswith("0"):        # "007", phone-like: digit by digit
        return " ".join(_ONES[int(d)] for d in token)
    return number_to_words(n)


_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "ms": "miz", "dr": "doctor", "st": "saint", "jr": "junior",
                  "sr": "senior", "vs": "versus", "etc": "et cetera", "prof": "professor", "gen": "general",
                  "capt": "captain", "lt": "lieutenant", "col": "colonel", "co": "company", "no": "number"}
_RE_ABBREV = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.(?=\s|$)", re.IGNORECASE)
_RE_MONEY = re.compile(r"\$\s?(\d[\d,]*(?:\.\d+)?)")
_RE_PERCENT = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?%")
_RE_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_RE_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+")
_TRANSLATE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                            "\u2014": ",", ";": ",", ":": ",", "(": ",", ")": ",", "[": ",", "]": ",",
                            "{": ",", "}": ",", '"': " ", "&": " and ", "+": " plus ", "@": " at ",
                            "=": " equals ", "/": " ", "\n": " ", "\t": " "})
_ALLOWED = set(PUNCTUATION) | set(LETTERS)


def _money(m: "re.Match[str]") -> str:
    amount = m.group(1).replace(",", "")
    if "." in amount:
        dollars, cents = amount.split(".", 1)
        cents = (cents + "00")[:2]
        words = number_to_words(int(dollars or 0)) + (" dollar" if int(dollars or 0) == 1 else " dollars")
        if int(cents):
            words += " " + number_to_words(int(cents)) + (" cent" if int(cents) == 1 else " cents")
        return words
    n = int(amount)
    return number_to_words(n) + (" dollar" if n == 1 else " dollars")


def unknown_characters(text: str) -> List[str]:
    """The characters of ``text`` that :func:`normalize` would drop (outside the symbol table)."""
    return sorted(set(_prenormalize(text)) - _ALLOWED)


def _prenormalize(text: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _RE_ABBREV.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], text)
    text = _RE_MONEY.sub(_money, text)
    text = _RE_PERCENT.sub(lambda m: _spell_number(m.group(1)) + " percent", text)
    text = _RE_ORDINAL.sub(lambda m: _ordinal(int(m.group(1))), text)
    text = _RE_NUMBER.sub(lambda m: " " + _spell_number(m.group(0)) + " ", text)
    return text.translate(_TRANSLATE).lower()


_RE_PUNCT_RUN = re.compile(r"\s*[!,.?](?:\s*[!,.?])*\s*")


def _punct_run(m: "re.Match[str]") -> str:
    """A run of marks (", .", "...", "?!") becomes one: "?" if asked, else the last of ". !", else ","."""
    marks = [c for c in m.group(0) if c in "!.?"]
    return ("?" if "?" in marks else marks[-1] if marks else ",") + " "


def normalize(text: str, *, strict: bool = False) -> str:
    """Text as the models read it: lowercase ASCII words, numbers spelled out, kept punctuation only.

    Characters outside the symbol table are dropped; with ``strict=True`` they raise ValueError.
    Raises ValueError for empty text or text with no letters left."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("empty text: there is nothing to say")
    pre = _prenormalize(text)
    unknown = sorted(set(pre) - _ALLOWED)
    if unknown and strict:
        raise ValueError(f"text has characters outside the symbol table: {unknown}; "
                         f"valid: letters a-z (any case, accents are folded), digits, and {''.join(PUNCTUATION)}")
    out = "".join(c if c in _ALLOWED else " " for c in pre)
    out = re.sub(r"(?<![a-z'])-+|-+(?![a-z'])", ",", out)   # a dash between spaces is a pause
    out = _RE_PUNCT_RUN.sub(_punct_run, " " + out + " ")  # one mark per pause, then a space
    out = re.sub(r"\s+", " ", out)
    out = re.sub(r"^[ !',.?-]+", "", out).strip()       # no leading punctuation
    if not any(c in LETTERS for c in out):
        raise ValueError(f"text {text[:60]!r} has nothing speakable after normalisation"
                         + (f" (unknown characters {unknown})" if unknown else ""))
    return out


# ---------------------------------------------------------------- the CMU dictionary
def cmudict_path() -> Path:
    """Where pocketsphinx's wheel keeps the CMU dictionary (``model/en-us/cmudict-en-us.dict``)."""
    try:
        import pocketsphinx
    except ImportError:
        raise ValueError("phoneme input needs the CMU dictionary shipped in the 'pocketsphinx' package; "
                         "pip install pocketsphinx (or use phonemes=False for characters)") from None
    p = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    if not p.is_file():
        raise ValueError(f"the CMU dictionary is missing from the pocketsphinx install ({p})")
    return p


@functools.lru_cache(maxsize=1)
def cmudict() -> Dict[str, Tuple[str, ...]]:
    """word -> ARPAbet phonemes (the first pronunciation of each word; variants ``word(2)`` are skipped)."""
    table: Dict[str, Tuple[str, ...]] = {}
    with open(cmudict_path(), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2 or parts[0].endswith(")"):
                continue
            table.setdefault(parts[0], tuple(parts[1:]))
    return table


def _word_phonemes(word: str, table: Dict[str, Tuple[str, ...]]) -> List[str]:
    """Phoneme symbols of one word; letters for words the dictionary lacks (hyphen parts looked up alone)."""
    if word in table:
        return ["@" + p for p in table[word]]
    if "-" in word.strip("-"):
        out: List[str] = []
        for i, part in enumerate(p for p in word.split("-") if p):
            out += (["-"] if i else []) + _word_phonemes(part, table)
        return out
    bare = word.strip("'-")
    if bare != word and bare in table:
        return ["@" + p for p in table[bare]]
    return [c for c in word if c in _ID]


_RE_TOKEN = re.compile(r"[a-z'\-]+|[!,.?]| ")


def tokenize(text: str, *, phonemes: bool = True, strict: bool = False) -> List[str]:
    """The symbol sequence of ``text`` (normalised first): phonemes with letter fallback, or characters."""
    norm = normalize(text, strict=strict)
    if not phonemes:
        return list(norm)
    table = cmudict()
    out: List[str] = []
    for tok in _RE_TOKEN.findall(norm):
        out += _word_phonemes(tok, table) if tok[0] in LETTERS or tok[0] in "'-" else [tok]
    return out


def encode(text: str, *, phonemes: bool = True, strict: bool = False) -> torch.Tensor:
    """Ids (LongTensor (L,)) of ``text`` in the table of :func:`symbols`.

    ``phonemes=True`` looks words up in the CMU dictionary (letters for unknown words);
    ``phonemes=False`` keeps the normalised characters. Empty or unspeakable text is a ValueError."""
    return torch.tensor([_ID[s] for s in tokenize(text, phonemes=phonemes, strict=strict)], dtype=torch.long)


def decode(ids: "torch.Tensor | Sequence[int]") -> str:
    """Readable text of an id sequence: letters and punctuation as they are, phonemes in braces; pads dropped."""
    seq = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    bad = [i for i in seq if not isinstance(i, int) or not 0 <= i < len(_SYMBOLS)]
    if bad:
        raise ValueError(f"ids out of range [0, {len(_SYMBOLS)}): {bad[:5]}")
    out, phones = [], []
    for i in seq:
        s = _SYMBOLS[i]
        if s.startswith("@"):
            phones.append(s[1:])
            continue
        if phones:
            out.append("{" + " ".join(phones) + "}")
            phones = []
        if s != PAD:
            out.append(s)
    if phones:
        out.append("{" + " ".join(phones) + "}")
    return "".join(out)
