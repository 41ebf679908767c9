#!/usr/bin/env python3
"""Import circles between the modules of each crate of the workspace.

Reads every `use crate::…`, `use super::…` and inline `crate::a::b` path in a crate's `src/`,
maps each to the module (file) it names, and prints the strongly connected components of
that graph with more than one module. Edges between a module and its own ancestors are
ignored (a child using its parent's items, or a parent declaring its children, is nesting,
not a circle). Exit status 1 when any crate has a circle.

usage: scripts/import-cycles.py [CRATE_DIR…]   (default: every workspace member)
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
    """Module path (tuple) -> file, for every .rs file under src."""
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


def resolve(mods, here, kind, segs):
    base = () if kind == "crate" else here[:-1]
    while segs and segs[0] == "super":
        base, segs = base[:-1], segs[1:]
    path = base + tuple(segs)
    while path and path not in mods:
        path = path[:-1]
    return path


def edges(mods):
    graph = {m: set() for m in mods}
    for here, file in mods.items():
        text = strip(open(file, encoding="utf-8").read())
        # A file that is a directory's mod.rs is `here`; its `super` is its parent.
        is_dir_mod = file.endswith(("mod.rs", "lib.rs", "main.rs"))
        ctx = here + ("_",) if is_dir_mod else here
        targets = []
        for kind, head, body in GROUP.findall(text):
            prefix = [s for s in head.split("::") if s]
            for item in re.split(r",", body):
                item = item.strip().split(" as ")[0].strip()
                item = re.sub(r"[{}]", "", item)
                segs = [s for s in item.split("::") if s and s != "self"]
                targets.append((kind, prefix + segs[:1]))
        for kind, rest in PATH.findall(text):
            targets.append((kind, [s for s in rest.split("::") if s]))
        for kind, segs in targets:
            to = resolve(mods, ctx, kind, segs)
            if to == here or here[: len(to)] == to or to[: len(here)] == here:
                continue
            graph[here].add(to)
    return graph


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
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    crates = sys.argv[1:] or members()
    circles = 0
    for crate in crates:
        src = os.path.join(ROOT, crate, "src")
        if not os.path.isdir(src):
            continue
        mods = modules(src)
        found = sccs(edges(mods))
        circles += len(found)
        for comp in found:
            names = ", ".join("::".join(m) or "(root)" for m in comp)
            print(f"{crate}: circle of {len(comp)}: {names}")
    print(f"{circles} import circle(s) in {len(crates)} crate(s)")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
