"""The engine's shape (docs/architecture.md): sub-packages by idea, imports only downwards, no circles.

Every ``import`` in ``tumorseg_core`` (at module level or inside a function) is read with
``ast``. A module may import from its own sub-package and from the sub-packages its layer
lists below; nothing imports back up, and no two modules import each other, directly or
through others. The engine never imports Slicer, Qt or VTK.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tumorseg_core

ROOT = Path(tumorseg_core.__file__).resolve().parent

#: What each part of the engine may import (besides itself). Keep docs/architecture.md in step.
ALLOWED = {
    "errors": set(),
    "options": {"errors"},
    "imaging": {"errors", "options"},
    "models": {"errors"},
    "synthetic": {"errors", "imaging"},
    "modelpkg": {"errors", "options", "imaging", "models"},
    "interactive": {"errors", "imaging"},
    "dicom": {"errors", "imaging"},
    "measurement": {"errors", "imaging", "dicom"},
    "inference": {"errors", "options", "imaging", "models", "modelpkg", "interactive"},
    "clicknet": {"errors", "models", "modelpkg", "interactive"},
    "evaluation": {"errors", "options", "imaging", "inference", "modelpkg", "dicom", "measurement"},
    "training": {"errors", "options", "imaging", "models", "modelpkg", "inference", "synthetic", "evaluation", "interactive",
                 "clicknet"},
    "worker": {"errors", "options", "imaging", "inference", "modelpkg", "dicom", "measurement", "clicknet"},
    "commands": {"errors", "options", "imaging", "models", "modelpkg", "inference", "interactive", "synthetic", "clicknet",
                 "evaluation", "training", "worker", "dicom", "measurement", "__init__"},
    "cli": {"errors", "options", "commands", "inference", "__init__"},
    "__init__": {"errors", "options", "inference", "modelpkg", "dicom", "measurement"},
    "__main__": {"cli"},
}
FORBIDDEN_TOP = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(["tumorseg_core", *parts])


def _part(module: str) -> str:
    """The sub-package (or top-level module) a dotted module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Dotted tumorseg_core modules imported anywhere in ``path``; also returns foreign top-level names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, foreign = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (found if alias.name.startswith("tumorseg_core") else foreign).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use tumorseg_core.… absolute imports)"
            module = node.module or ""
            if module == "tumorseg_core":
                found.update(f"tumorseg_core.{a.name}" for a in node.names)
            elif module.startswith("tumorseg_core."):
                found.add(module)
            else:
                foreign.add(module)
    return found, foreign


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        found, foreign = _imports(path)
        name = _module_name(path)
        assert not {f.split(".")[0] for f in foreign} & FORBIDDEN_TOP, f"{name} imports Slicer/Qt/VTK"
        modules[name] = found
    known = set(modules)

    def resolve(target: str) -> str:
        # "from tumorseg_core.imaging import io" names the module tumorseg_core.imaging.io
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        return target

    return {name: {resolve(t) for t in targets} - {name} for name, targets in modules.items()}


def test_every_part_is_a_known_layer():
    parts = {_part(m) for m in _graph()}
    assert parts <= set(ALLOWED), f"new part(s) {parts - set(ALLOWED)}: add them to ALLOWED and docs/architecture.md"


def test_imports_only_go_down():
    wrong = []
    for name, targets in _graph().items():
        own = _part(name)
        for target in targets:
            other = _part(target)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target.startswith("tumorseg_core.") and target.count(".") >= 1 and target in graph:
                if _is_package_init(target) and node.startswith(target + "."):
                    continue  # a submodule importing its own package's __init__ (docstring only) is fine
                if state.get(target) == 1:
                    cycles.append(stack[stack.index(target):] + [target])
                elif target not in state:
                    visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_package_init(module: str) -> bool:
    return (ROOT / Path(*module.split(".")[1:]) / "__init__.py").is_file()


def test_sub_packages_say_what_they_own_and_may_import():
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc.split()) >= 25, f"{init.parent.name}/__init__.py needs a docstring: what it owns, what it may import"
        assert "import" in doc, f"{init.parent.name}/__init__.py: say what it may import"
