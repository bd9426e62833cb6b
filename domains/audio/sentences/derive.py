"""Derive the shipped sentence lists (train.txt, test.txt) from WordNet 3.0's example sentences.

Run once by a maintainer; the outputs are committed, so users never need WordNet:

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wn
    python domains/audio/sentences/derive.py wn/usr/share/wordnet

Steps (deterministic):
1. every double-quoted usage example in data.noun, data.verb, data.adj and data.adv;
2. keep those of 6-14 words made of letters, apostrophes, hyphens and commas only (no digits, no
   other symbols), no capitalised word except the first and "I", every word in the CMU
   dictionary shipped with pocketsphinx (so the recogniser can hear each word); first letter
   capitalised, a full stop added when there is no final mark; duplicates dropped;
3. shuffle with random.Random(20261122);
4. test: the first 60 sentences holding a word that occurs in at most 2 kept sentences and is
   at least 4 letters long; all such rare words of a test sentence are its "new words";
5. train: the remaining sentences that contain none of the new words, the first 5000 of them.
"""
from __future__ import annotations

import random
import re
import sys
from collections import Counter
from pathlib import Path

from polydiff.domains.audio.text import cmudict

N_TEST, N_TRAIN, SEED = 60, 5000, 20261122
HERE = Path(__file__).resolve().parent
_OK = re.compile(r"^[A-Za-z][A-Za-z' ,\-]*[A-Za-z][.?!]?$")


def words(sentence: str) -> list:
    return [w.strip("'-") for w in re.findall(r"[A-Za-z'\-]+", sentence.lower()) if w.strip("'-")]


def main(wordnet_dir: str) -> None:
    table = cmudict()
    found = []
    for part in ("noun", "verb", "adj", "adv"):
        text = (Path(wordnet_dir) / f"data.{part}").read_text(encoding="latin-1")
        found += re.findall(r'"([^"]+)"', text)
    seen, kept = set(), []
    for s in found:
        s = " ".join(s.split())
        if not _OK.match(s) or not 6 <= len(s.split()) <= 14:
            continue
        toks = s.rstrip(".?!").split()
        if any(re.search(r"[A-Z]", t) for t in toks[1:] if t.strip(",") not in ("I", "I'm", "I'll", "I've", "I'd")):
            continue
        if any(w not in table and not all(p in table for p in w.split("-")) for w in words(s)):
            continue
        s = s[0].upper() + s[1:]
        if s[-1] not in ".?!":
            s += "."
        if s.lower() not in seen:
            seen.add(s.lower())
            kept.append(s)
    random.Random(SEED).shuffle(kept)
    count = Counter(w for s in kept for w in set(words(s)))
    test, new = [], set()
    for s in kept:
        rare = {w for w in words(s) if count[w] <= 2 and len(w) >= 4}
        if rare:
            test.append(s)
            new |= rare
        if len(test) == N_TEST:
            break
    test_set = set(test)
    train = [s for s in kept if s not in test_set and not new & set(words(s))][:N_TRAIN]
    (HERE / "test.txt").write_text("\n".join(test) + "\n")
    (HERE / "train.txt").write_text("\n".join(train) + "\n")
    print(f"{len(found)} examples, {len(kept)} kept; wrote {len(train)} train, {len(test)} test "
          f"({len(new)} new words)")


if __name__ == "__main__":
    main(sys.argv[1])
