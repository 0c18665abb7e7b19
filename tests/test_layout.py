"""The package's layout: layers that import only downward, no circles, small modules that say what they hold,
and every name the notebooks use still importable the way they import it.

These tests read the source (``ast``), so they also see imports made lazily inside functions.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitsurvey"
NOTEBOOKS = ROOT / "notebooks"
MAX_LINES = 600

# Bottom to top. A module may import from its own layer or below. The three top-level compatibility modules
# (mixers, efficiency360, leaderboard) only re-export for the notebooks, so they sit at the top.
LAYERS: list[tuple[str, ...]] = [
    ("_compat", "paths", "checks", "device", "progress", "metrics"),
    ("results", "data", "survey"),
    ("models",),
    ("profiles",),
    ("strategies", "checkpoints"),
    ("train", "measure", "distributed"),
    ("studies", "plots"),
    ("notebooks", "book", "__main__", "gpu", "mixers", "efficiency360", "leaderboard", "__init__"),
]


def _modules() -> dict[str, Path]:
    """Dotted names below ``vitsurvey`` (``models.vit``, ``measure``, ``__init__``) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"vitsurvey/{module}: not in any layer of tests/test_layout.py; add it to LAYERS")


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _package_of(module: str, path: Path) -> list[str]:
    parts = module.split(".") if module != "__init__" else []
    return parts if path.name == "__init__.py" else parts[:-1]


def internal_imports(module: str) -> set[str]:
    """Modules of the package that ``module`` imports at run time (type-checking-only imports left out)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for n in ast.walk(node))
    package = _package_of(module, path)
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vitsurvey."):
                    targets.add(alias.name.removeprefix("vitsurvey."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.level - 1 > len(package):
                    raise AssertionError(f"{module}: relative import beyond the package")
            elif node.module and node.module.split(".")[0] == "vitsurvey":
                base, node_module = [], node.module.removeprefix("vitsurvey").lstrip(".")
                stem = node_module.split(".") if node_module else []
                for alias in node.names:
                    candidate = ".".join([*stem, alias.name])
                    targets.add(candidate if candidate in MODULES else ".".join(stem) or "__init__")
                continue
            else:
                continue
            stem = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:
                candidate = ".".join([*stem, alias.name])
                targets.add(candidate if candidate in MODULES else ".".join(stem) or "__init__")
    return {t for t in targets if t in MODULES and t != module}


GRAPH = {m: internal_imports(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_its_layer_or_below(module):
    upward = sorted(t for t in GRAPH[module] if layer_of(t) > layer_of(module) and not module.startswith(t + "."))
    assert not upward, f"vitsurvey/{module} (layer {layer_of(module)}) imports from a higher layer: {upward}"


def test_no_import_circles():
    def package_chain(m: str) -> set[str]:
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    # a subpackage's __init__ re-exporting its own modules is not a circle
    edges = {m: {t for t in ts if t not in package_chain(m) and not t.startswith(m + ".")} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small_and_documented(module):
    path = MODULES[module]
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it (limit {MAX_LINES})"
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(doc.split()) >= 5, f"{path.relative_to(ROOT)} needs a docstring saying what it holds"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "__main__"))
def test_public_names_listed_and_present(module):
    mod = importlib.import_module("vitsurvey" if module == "__init__" else f"vitsurvey.{module}")
    if module == "__init__" or (MODULES[module].name == "__init__.py" and module in ("strategies", "studies")):
        return  # the package roots hold subpackages, not names
    names = getattr(mod, "__all__", None)
    assert names is not None, f"vitsurvey/{module} lists no __all__"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"vitsurvey/{module}.__all__ names what it does not define: {missing}"
    assert len(set(names)) == len(names), f"vitsurvey/{module}.__all__ repeats a name"


def _notebook_code() -> list[tuple[str, str]]:
    cells = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cells.append((path.name, "".join(cell["source"])))
    return cells


def _notebook_names() -> list[tuple[str, str, str]]:
    """(notebook, module, attribute) for every ``alias.attribute`` whose alias a notebook imported from vitsurvey,
    and (notebook, module, name) for every ``from vitsurvey.x import name``."""
    uses: set[tuple[str, str, str]] = set()
    by_notebook: dict[str, str] = {}
    for name, source in _notebook_code():
        by_notebook[name] = by_notebook.get(name, "") + source + "\n"
    for name, source in by_notebook.items():
        aliases: dict[str, str] = {}
        for line in source.splitlines():
            m = re.match(r"\s*from vitsurvey(\.[\w.]+)? import (.+)$", line)
            if not m:
                continue
            base = "vitsurvey" + (m.group(1) or "")
            for item in m.group(2).split(","):
                parts = item.strip().split(" as ")
                target = parts[0].strip()
                alias = parts[-1].strip()
                sub = f"{base}.{target}"
                try:
                    importlib.import_module(sub)
                    aliases[alias] = sub
                except ImportError:
                    uses.add((name, base, target))
        for alias, module in aliases.items():
            for m in re.finditer(rf"(?<![\w.]){re.escape(alias)}\.([A-Za-z_]\w*)", source):
                uses.add((name, module, m.group(1)))
    return sorted(uses)


@pytest.mark.parametrize("notebook,module,name", _notebook_names())
def test_notebooks_names_importable(notebook, module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{notebook} uses {module}.{name}, which no longer exists"


def test_every_notebook_import_line_runs():
    for name, source in _notebook_code():
        for line in source.splitlines():
            if re.match(r"(from vitsurvey[\w.]* import |import vitsurvey)", line.strip()):
                exec(compile(line.strip(), name, "exec"), {})
