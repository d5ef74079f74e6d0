#!/usr/bin/env python3
"""An inverted index's map for the streaming app: `word<TAB>file` once per
distinct word of standard input, where file is the input this map task
reads, as the framework names it in `mapreduce_map_input_file` (Hadoop
Streaming's variable). Words as in wc_map.py."""
import os
import sys
import unicodedata

document = os.environ["mapreduce_map_input_file"]
seen = set()
word = []
for ch in sys.stdin.buffer.read().decode("utf-8", errors="replace") + " ":
    if unicodedata.category(ch)[0] == "L":
        word.append(ch)
    elif word:
        seen.add("".join(word))
        word = []
for w in seen:
    sys.stdout.write(w + "\t" + document + "\n")
