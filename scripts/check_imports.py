"""No import cycles among the modules of hiergeo and gazetteer, and no module importing from a
layer above its own, counting every import statement (function-local ones too, as they run
when the function does).

    python scripts/check_imports.py        # prints cycles and upward imports, exits 1 if any

The layers, from the geography up to the commands, are :data:`LAYERS`: a module may import
from its own layer and the ones below. ``__main__`` modules, and the ``if __name__ ==
"__main__":`` guard of a library module, belong to the command layer (they run only as
``python -m ...``).

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

#: The library's floors, lowest first: module-name prefixes per layer (the longest prefix
#: names a module's layer). A new top-level module or package must be placed here.
LAYERS = (
    ("geography", ("gazetteer",)),
    ("foundation", ("hiergeo", "hiergeo.version", "hiergeo.registry", "hiergeo.files",
                    "hiergeo.devices")),
    ("maths", ("hiergeo.geometry", "hiergeo.metrics")),
    ("tree embedding", ("hiergeo.embedding",)),
    ("model", ("hiergeo.model",)),
    ("losses", ("hiergeo.losses",)),
    ("config", ("hiergeo.config",)),
    ("data and prediction", ("hiergeo.data", "hiergeo.predict")),
    ("features, reports, baselines", ("hiergeo.features", "hiergeo.importing", "hiergeo.reports",
                                      "hiergeo.baselines")),
    ("evaluation", ("hiergeo.evaluate", "hiergeo.score")),
    ("training and export", ("hiergeo.train", "hiergeo.export")),
    ("the Python API", ("hiergeo.geolocate",)),
    ("commands", ("hiergeo.cli",)),
)


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
        lazy |= {id(n) for guard in tree.body if _is_main_guard(guard) for n in ast.walk(guard)}
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


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``: runs only as ``python -m module``, where the module is
    a command's entry point (the command layer), never when the library imports it."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and len(node.test.comparators) == 1
            and isinstance(node.test.comparators[0], ast.Constant)
            and node.test.comparators[0].value == "__main__")


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


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s layer (``__main__`` modules: the commands);
    raises ``KeyError`` for a module no layer names."""
    if module.split(".")[-1] == "__main__":
        return len(LAYERS) - 1
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    if found is None:
        raise KeyError(f"{module} is in no layer of scripts/check_imports.py's LAYERS")
    return found


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(module, imported)`` pairs where a module imports from a layer above its own."""
    return sorted((m, t) for m, ts in edges.items() for t in ts if layer_of(t) > layer_of(m))


def main() -> int:
    mods = modules()
    edges = graph(mods)
    found = cycles(edges)
    for group in found:
        print("import cycle: " + " -> ".join(group))
    up = upward(edges)
    for m, t in up:
        print(f"upward import: {m} ({LAYERS[layer_of(m)][0]}) imports {t} "
              f"({LAYERS[layer_of(t)][0]})")
    print(f"{len(found)} import cycles and {len(up)} upward imports among {len(mods)} "
          f"modules in {len(LAYERS)} layers")
    return 1 if found or up else 0


if __name__ == "__main__":
    sys.exit(main())
