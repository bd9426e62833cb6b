"""Text front end: exact normalisation, numbers in words, CMU phonemes with letter fallback, clear errors."""
from __future__ import annotations

import pytest
import torch

from polydiff.domains.audio import text as T


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (101, "one hundred one"),
    (1234, "one thousand two hundred thirty four"), (1_000_000, "one million"),
    (2_000_000_017, "two billion seventeen"), (-5, "minus five"),
])
def test_number_to_words(n, words):
    assert T.number_to_words(n) == words


@pytest.mark.parametrize("raw, norm", [
    ("Hello, World!", "hello, world!"),
    ("Dr. Smith paid $5.50 for 2 apples.", "doctor smith paid five dollars fifty cents for two apples."),
    ("In 1990 it rose 10% on the 21st.", "in nineteen ninety it rose ten percent on the twenty first."),
    ("Pi is 3.14; e is 2.72", "pi is three point one four, e is two point seven two"),
    ("Café “naïve” (really)...", "cafe naive, really."),
    ("Wait -- what?!", "wait, what?"),
    ("a well-known co-op", "a well-known co-op"),
])
def test_normalize(raw, norm):
    assert T.normalize(raw) == norm


def test_symbol_table():
    syms = T.symbols()
    assert syms[0] == "_" and len(set(syms)) == len(syms) == 1 + 7 + 26 + 39
    assert {"@AA", "@ZH", "a", "z", " ", "?"} <= set(syms)


def test_characters_round_trip():
    ids = T.encode("It's 2 o'clock!", phonemes=False)
    assert ids.dtype == torch.long and ids.dim() == 1 and int(ids.min()) > 0
    assert T.decode(ids) == T.normalize("It's 2 o'clock!") == "it's two o'clock!"


def test_phonemes_from_cmudict_with_letter_fallback():
    syms = T.symbols()
    toks = [syms[i] for i in T.encode("The cat, zxqv.")]
    assert toks == ["@DH", "@AH", " ", "@K", "@AE", "@T", ",", " ", "z", "x", "q", "v", "."]
    assert T.cmudict()["speech"] == ("S", "P", "IY", "CH")
    # a hyphenated word missing from the dictionary is looked up part by part
    assert T.decode(T.encode("zebra-cat")) == "{Z IY B R AH}-{K AE T}"


def test_bad_text_is_a_clear_error():
    for bad in ("", "   ", "\u4e16\u754c", "?!"):
        with pytest.raises(ValueError, match="nothing"):
            T.encode(bad)
    with pytest.raises(ValueError, match="outside the symbol table"):
        T.encode("hello \u4e16", strict=True)
    assert T.decode(T.encode("hello \u4e16", phonemes=False)) == "hello"      # dropped by default
    assert T.unknown_characters("hello \u4e16") == ["\u4e16"]
    with pytest.raises(ValueError, match="str"):
        T.encode(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        T.decode([0, 999])
