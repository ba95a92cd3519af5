"""No import cycles among the modules of hiergeo and gazetteer, counting every import
statement (function-local ones too, as they run when the function does).

    python scripts/check_imports.py        # prints the cycles, exits 1 if there are any

``from package import name`` counts as importing ``package.name`` when that is a module, and
``package`` (its ``__init__``) otherwise; importing ``a.b.c`` also runs ``a`` and ``a.b``'s
``__init__``, so it counts as importing them too (except the packages the importing module is
in: those are already running). A package's ``__init__`` importing its own
modules is an edge like any other, except inside a module ``__getattr__`` (the lazy-export
pattern: it runs only when that name is asked for, never because a submodule was imported).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hiergeo", "gazetteer")


def modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``)."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def graph(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of ``mods`` it imports."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, (f, is_pkg) in mods.items():
        here = m.split(".") if is_pkg else m.split(".")[:-1]
        tree = ast.parse(f.read_text(encoding="utf-8"))
        lazy = {id(n) for fn in tree.body if is_pkg and isinstance(fn, ast.FunctionDef)
                and fn.name == "__getattr__" for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if id(node) in lazy:
                continue
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                found = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            for t in found:  # a module and every package above it run (but m's own
                parts = t.split(".")  # packages, which are running already)
                edges[m].update(q for q in (".".join(parts[:i]) for i in range(1, len(parts)))
                                if not m.startswith(q + "."))
                edges[m].add(t)
        edges[m] = {t for t in edges[m] if t in mods and t != m}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    mods = modules()
    found = cycles(graph(mods))
    for group in found:
        print("import cycle: " + " -> ".join(group))
    print(f"{len(found)} import cycles among {len(mods)} modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
