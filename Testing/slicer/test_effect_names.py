"""Static checks of the Qt adapter of the Tumor effect (it cannot be imported without Slicer's Qt).

Every ``self.<name>`` the effect reads is assigned, defined or inherited; the effect
registers as "Tumor" with a real icon; the mode list is the logic's; the class name
Slicer's ``setPythonSource`` looks up is what ``registerEffect`` provides.
"""

from __future__ import annotations

import ast
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "TumorSegmentation" / "TumorSegmentationLib"
EFFECT = LIB / "effect.py"
ICON = REPO / "TumorSegmentation" / "Resources" / "Icons" / "TumorEffect.png"
# Members of AbstractScriptedSegmentEditorEffect (Slicer's Python base class) the effect may use.
BASE_MEMBERS = {"scriptedEffect", "register", "cleanup", "rasToXy", "xyzToRas", "xyToRas", "xyzToIjk", "xyToIjk",
                "setWidgetMinMaxStepFromImageSpacing"}


def effect_class() -> ast.ClassDef:
    tree = ast.parse(EFFECT.read_text(encoding="utf-8"))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TumorSegmentEditorEffect"]
    assert len(classes) == 1
    return classes[0]


def test_every_self_attribute_used_exists():
    cls = effect_class()
    defined = set(BASE_MEMBERS) | {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    used = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            if isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            else:
                used.add(node.attr)
    missing = sorted(used - defined)
    assert not missing, f"self.<name> used but never assigned/defined: {missing}"


def test_scripted_effect_calls_are_slicer_api():
    """Only qSlicerSegmentEditorAbstractEffect/ScriptedEffect members are called on scriptedEffect."""
    api = {"addOptionsWidget", "addLabeledOptionsWidget", "parameter", "setParameter", "setParameterDefault",
           "parameterSetNode", "saveStateForUndo", "modifySelectedSegmentByLabelmap", "referenceGeometryImage",
           "confirmCurrentSegmentVisible", "name", "title", "perSegment", "requireSegments"}
    tree = ast.parse(EFFECT.read_text(encoding="utf-8"))
    calls = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Attribute) and node.value.attr == "scriptedEffect"}
    calls |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
              and isinstance(node.value, ast.Name) and node.value.id == "scriptedEffect"}
    assert calls and calls <= api, sorted(calls - api)


def test_registered_name_title_and_modes():
    cls = effect_class()
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assigned = {t.attr: n.value.value for n in ast.walk(init) if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Attribute) and isinstance(n.value, ast.Constant)}
    assert assigned["name"] == "Tumor" and assigned["title"] == "Tumor"
    sys.path.insert(0, str(LIB.parent))
    try:
        from TumorSegmentationLib import effect_logic
    finally:
        sys.path.remove(str(LIB.parent))
    assert effect_logic.MODES == ("Auto", "Seed", "Refine")
    assert "el.MODES" in ast.unparse(cls)  # the combo is filled from the logic's list


def test_icon_is_a_real_small_png():
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) in {(21, 21), (32, 32)}
    assert 'os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "TumorEffect.png")' in \
        EFFECT.read_text(encoding="utf-8")


def test_register_effect_provides_the_class_slicer_looks_up():
    """setPythonSource() looks for <file base name>Effect on sys.modules[<parent folder name>]."""
    source = EFFECT.read_text(encoding="utf-8")
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"registerEffect", "scriptedEffectClassName"} <= set(functions)
    # Slicer's rule (qSlicerSegmentEditorScriptedEffect.cxx): base name, "Effect" appended unless present.
    assert EFFECT.stem + "Effect" == "effectEffect"
    naming = ast.unparse(functions["scriptedEffectClassName"])
    assert "name.endswith('Effect')" in naming and "name + 'Effect'" in naming
    register = ast.unparse(functions["registerEffect"])
    assert "setattr(sys.modules['TumorSegmentationLib'], scriptedEffectClassName(), TumorSegmentEditorEffect)" \
        in register
    assert register.index("setattr(") < register.index("setPythonSource(")
    assert EFFECT.parent.name == "TumorSegmentationLib"
    assert not (LIB.parent / "Resources" / "UI" / "TumorEffect.ui").exists()  # widgets are built in code
