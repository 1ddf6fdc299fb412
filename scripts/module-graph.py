#!/usr/bin/env python3
"""The import graph of src/, by module, and its cycles.

    scripts/module-graph.py            # prints edges and cycles; exit 1 if there is a cycle
    scripts/module-graph.py --dot      # Graphviz

A module is a file under src/ (`src/consume/ordered.rs` is `consume::ordered`, `mod.rs` is its
directory's module). An edge A -> B is a path `crate::B...` or `super::...` written in A
(imports and inline paths). Everything inside one broker adapter's folder counts as that
adapter (`kafka`, `memory`, ...): cycles inside an adapter are its own business, and a parent
module naming its children (`mod x; pub use self::x::...`) is not an edge.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
ADAPTERS = {"kafka", "memory", "rabbitmq", "nats"}


def module_of(path: pathlib.Path) -> tuple:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def node(parts: tuple, modules: set) -> str:
    if parts and parts[0] in ADAPTERS:
        return parts[0]
    # The longest prefix that is a module file.
    for n in range(len(parts), 0, -1):
        if parts[:n] in modules:
            return "::".join(parts[:n])
    return "crate"


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def expand_use_groups(text: str) -> list:
    """`crate::a::{b, c::d}` -> crate::a::b, crate::a::c::d (one level of braces is enough)."""
    paths = []
    for m in re.finditer(r"\b(crate|super(?:::super)*)((?:::\w+)*)::\{([^{}]*)\}", text):
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                paths.append(m.group(1) + m.group(2) + "::" + item)
            elif item == "self":
                paths.append(m.group(1) + m.group(2))
    for m in re.finditer(r"\b(crate|super(?:::super)*)((?:::\w+)+)", text):
        paths.append(m.group(1) + m.group(2))
    return paths


def main() -> int:
    files = sorted(SRC.rglob("*.rs"))
    modules = {module_of(f) for f in files}
    edges = set()
    for f in files:
        here = module_of(f)
        src = node(here, modules)
        is_dir_module = f.name == "mod.rs" or f.name == "lib.rs"
        for path in expand_use_groups(strip_comments(f.read_text())):
            segs = path.split("::")
            if segs[0] == "crate":
                target = tuple(segs[1:])
            else:
                ups = segs.count("super")
                # `super` of a mod.rs is its directory's parent; of a file, its directory.
                base = list(here) if is_dir_module else list(here[:-1]) + [here[-1]]
                base = base[: len(base) - ups]
                target = tuple(base) + tuple(s for s in segs if s != "super")
            dst = node(target, modules)
            if dst != src and dst != "crate" and src != "crate":
                # A parent naming its own children is structure, not a dependency.
                if dst.startswith(src + "::"):
                    continue
                edges.add((src, dst))
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    # Strongly connected components (Tarjan).
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted({x for e in edges for x in e}):
        if v not in index:
            visit(v)
    if "--dot" in sys.argv:
        print("digraph eventscope {")
        for a, b in sorted(edges):
            print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    for a, b in sorted(edges):
        print(f"{a} -> {b}")
    if sccs:
        print()
        for comp in sccs:
            inner = sorted((a, b) for a, b in edges if a in comp and b in comp)
            print("cycle: " + ", ".join(comp))
            for a, b in inner:
                print(f"    {a} -> {b}")
        return 1
    print("\nno cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
