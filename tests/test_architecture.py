"""The package layout of docs/architecture.md holds: every module sits in a stage package, the
module graph (imports at any depth, including inside functions) has no cycle, and no module
imports from a higher layer or from another stage except through the documented API."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "replisynth"

# Lowest first. A module may import from its own package and from lower layers; the stage
# packages (one layer) import each other only through STAGE_API. Mirrors docs/architecture.md.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("config",),
    ("io",),
    ("stats",),
    ("fit",),
    ("disclosure",),
    ("extract", "synthesize", "pin", "verify"),
    ("workflow",),
]
# stage package -> modules of other stages it may import (the documented engine API)
STAGE_API: dict[str, set[str]] = {
    "extract": {"replisynth.synthesize.entities"},
    "pin": {"replisynth.synthesize.entities", "replisynth.synthesize.refine"},
    "verify": {"replisynth.synthesize.plan"},
}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> project modules it imports, anywhere in its body."""
    mods = module_files(root)
    top = root.name
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def known(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _imported(name, path, node)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            for t in targets:
                if t == top or t.startswith(top + "."):
                    hit = known(t)
                    if hit and hit != name:
                        graph[name].add(hit)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            on.difference_update(comp)
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(graph: dict[str, set[str]], top: str = "replisynth") -> list[str]:
    """Modules outside a layered package, and imports that go up or sideways between stages."""
    layer = {pkg: i for i, group in enumerate(LAYERS) for pkg in group}
    bad = []

    def package(mod: str) -> str | None:
        parts = mod.split(".")
        return parts[1] if len(parts) > 1 else None

    for mod in sorted(graph):
        pkg = package(mod)
        if mod == top:
            bad += [
                f"{top}/__init__.py imports {t}: the root must import nothing"
                for t in sorted(graph[mod])
            ]
            continue
        if pkg not in layer:
            bad.append(f"{mod}: not inside a layered package ({', '.join(layer)})")
            continue
        for target in sorted(graph[mod]):
            tpkg = package(target)
            if target == top or tpkg == pkg or tpkg not in layer:
                continue
            if layer[tpkg] > layer[pkg]:
                bad.append(f"{mod} imports {target}: {tpkg} is a higher layer than {pkg}")
            elif layer[tpkg] == layer[pkg] and target not in STAGE_API.get(pkg, set()):
                bad.append(
                    f"{mod} imports {target}: stage {pkg} may use {tpkg} only through STAGE_API"
                )
    return bad


def test_the_package_has_no_import_cycle() -> None:
    cycles = find_cycles(import_graph(SRC))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_upward_or_across_stages() -> None:
    bad = layer_violations(import_graph(SRC))
    assert not bad, "\n".join(bad)


def test_the_map_in_docs_matches_the_tree() -> None:
    """docs/architecture.md names every module file and no file that does not exist, and lists
    the layers in the order encoded here."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    packages = {pkg for group in LAYERS for pkg in group}
    named = {m for m in re.findall(r"`(\w+/\w+\.py)`", doc) if m.split("/")[0] in packages}
    on_disk = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "__init__.py"}
    assert sorted(on_disk - named) == [], "modules missing from docs/architecture.md"
    assert sorted(named - on_disk) == [], "docs/architecture.md names modules that do not exist"
    order = [m for m in re.findall(r"^\| *(\d+) *\| *([\w, ]+?) *\|", doc, re.M)]
    assert [tuple(p.strip() for p in pkgs.split(",")) for _, pkgs in order] == LAYERS


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "replisynth" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "replisynth"


def test_the_checks_catch_a_hidden_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """A cycle through an import inside a function, and a core module importing a stage, are
    both reported (the checks can fail)."""
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/errors.py": "def f():\n    from replisynth.pin.pin import g\n",
            "pin/__init__.py": "",
            "pin/pin.py": "from ..core import errors\n\ndef g():\n    from . import shape\n",
            "pin/shape.py": "import replisynth.pin.pin as p\n",
            "verify/__init__.py": "",
            "verify/verify.py": "from replisynth.pin.shape import x\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["replisynth.pin.pin"] == {"replisynth.core.errors", "replisynth.pin.shape"}
    cycles = find_cycles(graph)
    assert cycles == [["replisynth.core.errors", "replisynth.pin.pin", "replisynth.pin.shape"]]
    bad = layer_violations(graph)
    assert any("replisynth.core.errors imports replisynth.pin.pin" in b for b in bad)
    assert any("stage verify may use pin only through STAGE_API" in b for b in bad)


def test_a_flat_module_is_reported(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path, {"__init__.py": "", "xmom.py": "from .refine import a\n", "refine.py": "a = 1\n"}
    )
    bad = layer_violations(import_graph(pkg))
    assert "replisynth.xmom: not inside a layered package" in bad[1]
