#!/usr/bin/env python3
"""An inverted index's reduce for the streaming app: standard input is
`word<TAB>file` lines sorted by word; prints `word n file1,file2,...` per
word, the distinct files sorted, as the built-in indexer does."""
import sys


def flush(word, documents):
    if word is not None:
        names = sorted(documents)
        sys.stdout.buffer.write(word + b" " + str(len(names)).encode() + b" " + b",".join(names) + b"\n")


current, documents = None, set()
for line in sys.stdin.buffer:
    key, _, value = line.rstrip(b"\n").partition(b"\t")
    if key != current:
        flush(current, documents)
        current, documents = key, set()
    documents.add(value)
flush(current, documents)
