#!/usr/bin/env python3
"""Word count's combiner for the streaming app: standard input is
`word<TAB>count` lines sorted by word; prints `word<TAB>sum` per word, a
pair again, so that the reduce (wc_reduce.py) reads it as it reads the
map's."""
import sys

current, total = None, 0
for line in sys.stdin.buffer:
    key, _, value = line.rstrip(b"\n").partition(b"\t")
    if key != current:
        if current is not None:
            sys.stdout.buffer.write(current + b"\t" + str(total).encode() + b"\n")
        current, total = key, 0
    total += int(value)
if current is not None:
    sys.stdout.buffer.write(current + b"\t" + str(total).encode() + b"\n")
