"""The shape of the code: packages in layers, imports one way, no circles, no imports at the bottom.

Read from the source with ``ast`` (nothing is imported), so it holds for
every module whether a test imports it or not. ``if TYPE_CHECKING:`` blocks
are not imports at run time and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "busi_web"
# From the bottom up. A unit (a subpackage or a top-level module) imports only from its own unit or a lower
# layer: never a higher layer, and never another unit of its own layer.
LAYERS = [
    {"busi_web.errors", "busi_web.config"},  # the one user-error type; settings
    {"busi_web.hookspecs", "busi_web.specs"},  # the plugin contract
    {"busi_web.plugins", "busi_web.store", "busi_web.directory"},
    {"busi_web.data", "busi_web.explain", "busi_web.dicom", "busi_web.report", "busi_web.datasets"},
    {"busi_web.model", "busi_web.pacs"},
    {"busi_web.evaluation"},
    {"busi_web.training", "busi_web.diagnosis"},
    {"busi_web.services"},
    {"busi_web.web", "busi_web.cli"},
    {"busi_web.app"},
    {"busi_web.console", "busi_web.testing", "busi_web.gunicorn_conf", "busi_web"},
    {"busi_web.pytest_plugin"},  # the testing kit's pytest fixtures
]
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}
BASICS = LAYERS[0] | LAYERS[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """``(imported busi_web module, statement, at module level)`` for every run-time import of the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, ast.stmt, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}: relative import; write busi_web.… in full"
                if (child.module or "").split(".")[0] == "busi_web":
                    for alias in child.names:  # `from busi_web.store import run_files` imports a module too
                        sub = f"{child.module}.{alias.name}"
                        found.append((sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                                      else child.module, child, top))
            elif isinstance(child, ast.Import):
                found.extend((a.name, child, top) for a in child.names if a.name.split(".")[0] == "busi_web")
            visit(child, inner)

    visit(tree, True)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in modules()}
    assert units <= set(LAYER), f"place these in LAYERS: {sorted(units - set(LAYER))}"


def test_imports_go_down_the_layers_and_never_sideways():
    wrong = []
    for name, path in modules().items():
        mine = unit_of(name)
        for target, stmt, _top in imports(path):
            theirs = unit_of(target)
            if theirs == mine:
                continue
            if LAYER[theirs] >= LAYER[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{stmt.lineno} {mine} (layer {LAYER[mine]}) imports "
                             f"{theirs} (layer {LAYER[theirs]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles_between_modules():
    graph = {name: {t for t, _s, _top in imports(path) if t != name} for name, path in modules().items()}
    circles = _cycles({n: {t for t in ts if t in graph} for n, ts in graph.items()})
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_imports_at_the_bottom_of_a_module():
    late = []
    for path in modules().values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        seen_code = False
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                seen_code = True
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and seen_code:
                late.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not late, "imports after the first definition: " + ", ".join(late)


def test_an_import_inside_a_function_says_why():
    lines_of = {}
    silent = []
    for path in modules().values():
        for _target, stmt, top in imports(path) + _third_party_inner(path):
            if top:
                continue
            lines = lines_of.setdefault(path, path.read_text(encoding="utf-8").splitlines())
            here, above = lines[stmt.lineno - 1], lines[stmt.lineno - 2] if stmt.lineno > 1 else ""
            if "#" not in here and not above.strip().startswith("#"):
                silent.append(f"{path.relative_to(ROOT)}:{stmt.lineno}")
    assert not silent, "imports inside functions need a comment saying what they save: " + ", ".join(silent)


def test_the_contract_and_the_store_know_nothing_of_torch_or_flask():
    heavy = {"torch", "torchvision", "flask", "flask_socketio"}
    for name, path in modules().items():
        if unit_of(name) in BASICS | {"busi_web.plugins", "busi_web.store"}:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    roots = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    roots = {(node.module or "").split(".")[0]}
                else:
                    continue
                assert not roots & heavy or _is_type_only(tree, node), f"{name} imports {roots & heavy}"


def _is_type_only(tree: ast.Module, target: ast.stmt) -> bool:
    return any(_type_checking(n) and target in ast.walk(n) for n in tree.body)


def _third_party_inner(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """Imports of other packages inside functions (they need a reason as much as ours do)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    out.append(("", inner, False))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_test_module_imports_another():
    """Shared test code lives in conftest.py or tests/helpers.py, never in a test module that others import."""
    wrong = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or "test_" in (node.module or "")
                                                     or (node.module or "").endswith("conftest")):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not wrong, wrong
