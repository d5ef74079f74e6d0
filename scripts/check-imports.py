#!/usr/bin/env python3
"""Checks that no two modules of a crate import each other, directly or
through others: the host library (src/mapreduce) and the app crate
(crates/mapreduce-app/src), with their layer folders (the crate folder's
direct subfolders). A module's imports are the `crate::NAME` paths (a
module re-exported at the crate's root) in its code, outside comments and
its tests (`#[cfg(test)] mod tests { ... }`, or a `tests.rs` file). A
folder module in a layer (`control/coordinator/`) is one module: its
`mod.rs` and its submodule files all count as `coordinator`.

usage: scripts/check-imports.py     Prints each cycle; exits 1 if any."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = [ROOT / "src" / "mapreduce", ROOT / "crates" / "mapreduce-app" / "src"]


def module_of(crate, path):
    """The crate-root module a file belongs to: its own stem, or its folder
    module's name; None for lib.rs, a layer's mod.rs, and test files."""
    parts = path.relative_to(crate).with_suffix("").parts
    below_layer = parts[1:] if len(parts) > 1 else parts
    if below_layer[0] in ("mod", "lib") or parts[-1] == "tests":
        return None
    return below_layer[0]


def imports(path, modules):
    code = path.read_text(encoding="utf-8").split("\n#[cfg(test)]\nmod tests {")[0]
    lines = (line for line in code.splitlines() if not line.strip().startswith("//"))
    return {m for m in re.findall(r"crate::([a-z_]+)", "\n".join(lines)) if m in modules}


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
        files = {}
        for path in sorted(crate.rglob("*.rs")):
            name = module_of(crate, path)
            if name is not None:
                files.setdefault(name, []).append(path)
        graph = {name: set().union(*(imports(p, set(files)) for p in paths)) - {name} for name, paths in files.items()}
        for component in cycles(graph):
            bad += 1
            edges = "; ".join(f"{v} -> {', '.join(sorted(graph[v] & set(component)))}" for v in component)
            print(f"{crate.relative_to(ROOT)}: import cycle among {', '.join(component)} ({edges})")
    print("imports: no cycles" if bad == 0 else f"imports: {bad} cycle(s)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
