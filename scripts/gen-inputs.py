#!/usr/bin/env python3
"""Regenerate the sample texts in inputs/ (deterministic; no network, no books).

usage: scripts/gen-inputs.py [OUTDIR]     (default: inputs/ beside this script's parent)

Writes eight files of invented prose, 150-450 KB each, whose words follow a
Zipf-like distribution over a vocabulary built from syllables, sprinkled with
punctuation, numbers, accented and non-Latin letters, letter-like symbols
that are *not* letters (Ⅻ, Devanagari vowel signs), and, in one file, bytes
that are not valid UTF-8. Two names contain "tom" and "sherlock", which the
lab's early_exit test app treats as slow keys.
"""
import itertools
import os
import random
import sys

FILES = [
    ("tom-the-tinker.txt", 310_000),
    ("sherlock-and-the-stove.txt", 420_000),
    ("a-modest-almanac.txt", 180_000),
    ("letters-from-the-coast.txt", 450_000),
    ("the-clockmakers-daughter.txt", 260_000),
    ("notes-on-orchards.txt", 150_000),
    ("voyage-of-the-heron.txt", 390_000),
    ("winter-accounts.txt", 220_000),
]

ONSETS = ["", "b", "br", "c", "ch", "d", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pr",
          "qu", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "y", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "oo", "ou", "y"]
CODAS = ["", "", "n", "r", "s", "t", "nd", "ll", "ck", "ng", "st", "rk"]
EXOTIC = ["café", "naïve", "Straße", "façade", "smörgåsbord", "Ærø", "Ωmega", "東京", "北京",
          "Москва", "tʰe", "ǅemal", "piñata", "İstanbul", "ﬁne"]
NON_LETTERS = ["Ⅻ", "किताब", "42", "3.14", "1999", "½", "—", "…", "«", "»"]
PUNCT = [",", ",", ".", ".", ";", ":", "!", "?", " -", "'s", "\""]


def vocabulary(rng, size):
    words = set()
    while len(words) < size:
        n = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        words.add("".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(n)))
    return sorted(words)


def zipf_cumulative_weights(n):
    return list(itertools.accumulate(1.0 / (rank + 1) ** 1.07 for rank in range(n)))


def text(rng, vocab, cum_weights, size, invalid_bytes):
    out = bytearray()
    line = []
    while len(out) < size:
        r = rng.random()
        if r < 0.004:
            word = rng.choice(EXOTIC)
        elif r < 0.006:
            word = rng.choice(NON_LETTERS)
        else:
            word = rng.choices(vocab, cum_weights=cum_weights)[0]
            if rng.random() < 0.08:
                word = word.capitalize()
        if rng.random() < 0.12:
            word += rng.choice(PUNCT)
        line.append(word)
        if len(line) >= rng.randint(6, 14):
            out += (" ".join(line) + "\n").encode("utf-8")
            if invalid_bytes and rng.random() < 0.02:
                out += rng.choice([b"\xff", b"ab\xc3(cd", b"x\xe2\x82y", b"\xed\xa0\x80z", b"\x80\x80"]) + b"\n"
            line = []
    return bytes(out)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "inputs")
    os.makedirs(outdir, exist_ok=True)
    rng = random.Random(6_5840)
    vocab = vocabulary(rng, 12_000)
    rng.shuffle(vocab)
    cum_weights = zipf_cumulative_weights(len(vocab))
    for i, (name, size) in enumerate(FILES):
        data = text(rng, vocab, cum_weights, size, invalid_bytes=(i == 3))
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
