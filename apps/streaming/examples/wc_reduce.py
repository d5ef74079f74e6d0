#!/usr/bin/env python3
"""Word count's reduce for the streaming app: standard input is
`word<TAB>count` lines sorted by word; prints `word total` per word."""
import sys

current, total = None, 0
for line in sys.stdin.buffer:
    key, _, value = line.rstrip(b"\n").partition(b"\t")
    if key != current:
        if current is not None:
            sys.stdout.buffer.write(current + b" " + str(total).encode() + b"\n")
        current, total = key, 0
    total += int(value)
if current is not None:
    sys.stdout.buffer.write(current + b" " + str(total).encode() + b"\n")
