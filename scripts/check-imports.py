#!/usr/bin/env python3
"""Checks that no two modules of a crate import each other, directly or
through others: the host library (src/mapreduce) and the app crate
(crates/mapreduce-app/src), with their layer folders. A module's imports
are the `crate::NAME` paths (a module re-exported at the crate's root)
in its code, outside comments and its `#[cfg(test)] mod tests`.

usage: scripts/check-imports.py     Prints each cycle; exits 1 if any."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = [ROOT / "src" / "mapreduce", ROOT / "crates" / "mapreduce-app" / "src"]


def imports(path, modules):
    code = path.read_text(encoding="utf-8").split("\n#[cfg(test)]\nmod tests")[0]
    lines = (line for line in code.splitlines() if not line.strip().startswith("//"))
    return {m for m in re.findall(r"crate::([a-z_]+)", "\n".join(lines)) if m in modules and m != path.stem}


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    bad = 0
    for crate in CRATES:
        files = {p.stem: p for p in crate.rglob("*.rs") if p.stem not in ("mod", "lib")}
        graph = {name: imports(path, set(files)) for name, path in files.items()}
        for component in cycles(graph):
            bad += 1
            edges = "; ".join(f"{v} -> {', '.join(sorted(graph[v] & set(component)))}" for v in component)
            print(f"{crate.relative_to(ROOT)}: import cycle among {', '.join(component)} ({edges})")
    print("imports: no cycles" if bad == 0 else f"imports: {bad} cycle(s)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
