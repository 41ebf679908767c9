#!/usr/bin/env python3
"""Import circles between the modules of each crate of the workspace.

Reads every `use crate::...`, `use super::...` and inline `crate::a::b` path in a crate's
`src/` (outside `#[cfg(test)]`), maps each to the module (file) it names, and lifts each use
to the two sibling modules it connects: `a::x::y` using `b::z` is `a` depending on `b`, one
level below their common parent. A child using its parent (or a parent its child) is
nesting, not a dependency between rooms. Prints every set of siblings that depend on each
other in a circle (the strongly connected components), at any level. Exit status 1 when
there is one.

usage: scripts/import-cycles.py [--max N] [CRATE_DIR...]   (default: every workspace member)

--max N: exit 0 with at most N circles (for a change that must pass through one).
"""
import os
import re
import sys
import tomllib


def workspace_root():
    """The nearest directory at or above the current one whose Cargo.toml is a workspace."""
    here = os.getcwd()
    while True:
        manifest = os.path.join(here, "Cargo.toml")
        if os.path.exists(manifest) and "[workspace]" in open(manifest).read():
            return here
        if os.path.dirname(here) == here:
            sys.exit("import-cycles: run inside the workspace")
        here = os.path.dirname(here)


ROOT = workspace_root()


def members():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        return tomllib.load(f)["workspace"]["members"]


def modules(src):
    """Module path (tuple) -> file, for every .rs file under src (binaries aside)."""
    found = {}
    for dirpath, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            if rel and rel[0] == "bin":
                continue
            found[tuple(rel)] = os.path.join(dirpath, name)
    return found


PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*?)\}", re.S)


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    # Test modules may use anything of their parent.
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def resolve(mods, ctx, kind, segs):
    base = () if kind == "crate" else ctx[:-1]
    while segs and segs[0] == "super":
        base, segs = base[:-1], segs[1:]
    path = base + tuple(segs)
    while path and path not in mods:
        path = path[:-1]
    return path


def edges(mods):
    """Module -> the modules its code names."""
    graph = {m: set() for m in mods}
    for here, file in mods.items():
        text = strip(open(file, encoding="utf-8").read())
        # In a directory's mod.rs, `super` is the directory's parent.
        ctx = here + ("_",) if file.endswith(("mod.rs", "lib.rs", "main.rs")) else here
        targets = []
        for kind, head, body in GROUP.findall(text):
            prefix = [s for s in head.split("::") if s]
            for item in body.split(","):
                item = re.sub(r"[{}]", "", item.strip().split(" as ")[0])
                segs = [s for s in item.split("::") if s and s != "self"]
                targets.append((kind, prefix + segs[:1]))
        for kind, rest in PATH.findall(text):
            targets.append((kind, [s for s in rest.split("::") if s]))
        for kind, segs in targets:
            to = resolve(mods, ctx, kind, segs)
            if to != here:
                graph[here].add(to)
    return graph


def sibling_graph(graph):
    """Each use lifted to the siblings it connects, grouped by their common parent."""
    lifted = {}
    for a, targets in graph.items():
        for b in targets:
            common = 0
            while common < min(len(a), len(b)) and a[common] == b[common]:
                common += 1
            if common == len(a) or common == len(b):
                continue  # nesting
            group = lifted.setdefault(a[:common], {})
            src, dst = a[: common + 1], b[: common + 1]
            group.setdefault(src, set()).add(dst)
            group.setdefault(dst, set())
    return lifted


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    args = sys.argv[1:]
    allowed = 0
    if args[:1] == ["--max"]:
        if len(args) < 2 or not args[1].isdigit():
            sys.exit("import-cycles: --max takes a number")
        allowed, args = int(args[1]), args[2:]
    crates = args or members()
    circles = 0
    for crate in crates:
        src = os.path.join(ROOT, crate, "src")
        if not os.path.isdir(src):
            continue
        for _, group in sorted(sibling_graph(edges(modules(src))).items()):
            for comp in sccs(group):
                circles += 1
                names = ", ".join("::".join(m) for m in comp)
                print(f"{crate}: circle of {len(comp)}: {names}")
    print(f"{circles} import circle(s) in {len(crates)} crate(s)")
    if circles > allowed:
        print(f"import-cycles: more than the {allowed} allowed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
