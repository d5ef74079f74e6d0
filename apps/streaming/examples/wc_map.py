#!/usr/bin/env python3
"""Word count's map for the streaming app: `word<TAB>1` for every word of
standard input. A word is a maximal run of Unicode letters (general
category L), as the Rust word count has it; bytes that are not UTF-8 are
not letters."""
import sys
import unicodedata

out = sys.stdout
word = []
for ch in sys.stdin.buffer.read().decode("utf-8", errors="replace"):
    if unicodedata.category(ch)[0] == "L":
        word.append(ch)
    elif word:
        out.write("".join(word) + "\t1\n")
        word = []
if word:
    out.write("".join(word) + "\t1\n")
