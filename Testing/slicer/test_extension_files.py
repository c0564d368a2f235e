"""Mechanical checks of the Slicer extension that need neither Slicer nor Qt.

(a) every Python file and resource the module needs at run time is listed in
    TumorSegmentation/CMakeLists.txt (a forgotten file is missing from the installed
    extension, which no test running from the source tree would notice);
(b) every ``self.ui.<name>`` the Python code uses is an objectName in the .ui;
(c) every ``SlicerParameterName`` in the .ui is a field of the parameter class, with a
    widget that parameterNodeWrapper can bind to it;
(d) the .ui is well-formed with unique object names, declared custom widgets, and
    every MRML selector receives the scene.
"""

import ast
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "TumorSegmentation") not in sys.path:
    sys.path.insert(0, str(ROOT / "TumorSegmentation"))
MODULE_DIR = ROOT / "TumorSegmentation"
LIB_DIR = MODULE_DIR / "TumorSegmentationLib"
CORE_DIR = ROOT / "tumorseg_core"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "TumorSegmentation.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
WIDGET_SOURCES = [MODULE_DIR / "TumorSegmentation.py", LIB_DIR / "widget.py"]

SKIP_PARTS = {"__pycache__", ".pytest_cache"}


def _files(folder: Path, want_py: bool) -> list:
    """Files under ``folder`` (posix, relative to it): .py files or everything else."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if not path.is_file() or SKIP_PARTS & set(rel.parts) or any(p.startswith(".") for p in rel.parts):
            continue
        if path.suffix == ".pyc":
            continue
        if (path.suffix == ".py") == want_py:
            found.append(rel.as_posix())
    return sorted(found)


def _strip_comments(text: str) -> str:
    """Remove CMake ``#`` comments, keeping ``#`` inside quoted strings (URLs)."""
    out, in_quotes, in_comment = [], False, False
    for char in text:
        if in_comment:
            if char == "\n":
                in_comment = False
                out.append(char)
            continue
        if char == '"':
            in_quotes = not in_quotes
        elif char == "#" and not in_quotes:
            in_comment = True
            continue
        out.append(char)
    return "".join(out)


def parse_cmake_sets(text: str) -> dict:
    """``set(NAME item item ...)`` blocks of a CMake file, comments removed, ${MODULE_NAME} expanded."""
    text = _strip_comments(text)
    variables = {}
    for match in re.finditer(r'\bset\(\s*(\w+)((?:\s+(?:"[^"]*"|[^\s)"]+))*)\s*\)', text):
        name, body = match.group(1), match.group(2)
        variables[name] = [item.strip('"') for item in re.findall(r'"[^"]*"|\S+', body)]
    module_name = variables.get("MODULE_NAME", ["TumorSegmentation"])[0]
    for name, items in variables.items():
        variables[name] = [item.replace("${MODULE_NAME}", module_name) for item in items]
    return variables


@pytest.fixture(scope="module")
def cmake():
    assert MODULE_CMAKE.is_file(), "TumorSegmentation/CMakeLists.txt is missing"
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    return text, parse_cmake_sets(text)


def _missing_message(missing: list, variable: str) -> str:
    lines = "\n".join(f"  {item}" for item in missing)
    return f"not listed in {variable} of TumorSegmentation/CMakeLists.txt (add these lines):\n{lines}"


def test_module_scripts_listed(cmake):
    _, sets = cmake
    listed = set(sets["MODULE_PYTHON_SCRIPTS"])
    expected = ["TumorSegmentation.py"] + [f"TumorSegmentationLib/{p}" for p in _files(LIB_DIR, want_py=True)]
    missing = [p for p in expected if p not in listed]
    assert not missing, _missing_message(missing, "MODULE_PYTHON_SCRIPTS")


def test_module_resources_listed(cmake):
    _, sets = cmake
    listed = set(sets["MODULE_PYTHON_RESOURCES"])
    expected = [f"Resources/{p}" for p in _files(MODULE_DIR / "Resources", want_py=False)]
    assert "Resources/UI/TumorSegmentation.ui" in expected and "Resources/Icons/TumorSegmentation.png" in expected
    missing = [p for p in expected if p not in listed]
    assert not missing, _missing_message(missing, "MODULE_PYTHON_RESOURCES")


def test_engine_scripts_and_model_files_listed(cmake):
    _, sets = cmake
    scripts = set(sets["TUMORSEG_CORE_PYTHON_SCRIPTS"])
    missing = [f"tumorseg_core/{p}" for p in _files(CORE_DIR, want_py=True) if f"tumorseg_core/{p}" not in scripts]
    assert not missing, _missing_message(missing, "TUMORSEG_CORE_PYTHON_SCRIPTS")
    resources = set(sets.get("TUMORSEG_CORE_PYTHON_RESOURCES", []))
    data = [f"tumorseg_core/{p}" for p in _files(CORE_DIR, want_py=False)]
    missing = [p for p in data if p not in resources]
    assert not missing, _missing_message(missing, "TUMORSEG_CORE_PYTHON_RESOURCES")


def test_every_listed_file_exists(cmake):
    """slicerMacroBuildScriptedModule stops the configure step on a nonexistent file."""
    _, sets = cmake
    absent = [item for item in sets["MODULE_PYTHON_SCRIPTS"] + sets["MODULE_PYTHON_RESOURCES"]
              if not (MODULE_DIR / item).is_file()]
    absent += [item for item in sets["TUMORSEG_CORE_PYTHON_SCRIPTS"] + sets.get("TUMORSEG_CORE_PYTHON_RESOURCES", [])
               if not (ROOT / item).is_file()]
    assert not absent, f"listed in TumorSegmentation/CMakeLists.txt but not in the tree: {absent}"


def test_build_calls(cmake):
    text, sets = cmake
    # ../ paths would be copied beside qt-scripted-modules, off sys.path and not installed.
    assert not [s for s in sets["MODULE_PYTHON_SCRIPTS"] if s.startswith("..")]
    assert re.search(r"slicerMacroBuildScriptedModule\([^)]*WITH_GENERIC_TESTS", text)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", text)
    engine_call = re.search(r"ctkMacroCompilePythonScript\(([^)]*)\)", text)
    assert engine_call, "the engine must be copied with its own ctkMacroCompilePythonScript call"
    args = engine_call.group(1)
    assert re.search(r"SOURCE_DIR\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\.", args)
    assert re.search(r"DESTINATION_DIR\s+\$\{CMAKE_BINARY_DIR\}/\$\{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}", args)
    assert "NO_INSTALL_SUBDIR" in args and "${TUMORSEG_CORE_PYTHON_SCRIPTS}" in args


def test_top_level_cmake():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    sets = parse_cmake_sets(text)
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                 "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert sets.get(name), f"{name} is not set"
    assert "PyTorch" in sets["EXTENSION_DEPENDS"]
    assert re.search(r"add_subdirectory\(\s*TumorSegmentation\s*\)", text)
    assert sets["EXTENSION_ICONURL"][0].endswith("Resources/Icons/TumorSegmentation.png")


@pytest.mark.parametrize("path", [MODULE_DIR / "Resources/Icons/TumorSegmentation.png",
                                  ROOT / "Resources/Icons/TumorSegmentation.png"])
def test_icon_is_128px_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


# -- .ui --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_tree():
    return ET.parse(UI_FILE)  # (d) raises on malformed XML


def _widgets(tree) -> dict:
    return {w.get("name"): w for w in tree.iter("widget")}


def _dynamic_string(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name and prop.get("stdset") == "0":
            return prop.findtext("string")
    return None


def test_ui_object_names_unique(ui_tree):
    names = [e.get("name") for tag in ("widget", "layout", "spacer", "action") for e in ui_tree.iter(tag)]
    assert all(names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate objectName in the .ui: {duplicates}"
    root = ui_tree.getroot()
    assert root.tag == "ui" and root.findtext("class") == "TumorSegmentation"
    assert root.find("widget").get("class") == "qMRMLWidget"


def test_ui_custom_widgets_declared_and_scene_connected(ui_tree):
    widgets = _widgets(ui_tree)
    declared = {c.findtext("class") for c in ui_tree.iter("customwidget")}
    used = {w.get("class") for w in widgets.values() if not w.get("class").startswith("Q")}
    assert used <= declared, f"custom widget classes without a <customwidget>: {used - declared}"
    receivers = {c.findtext("receiver") for c in ui_tree.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    selectors = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers, f"selectors that never get the scene: {selectors - receivers}"


def _ui_names_used(path: Path) -> set:
    """Attribute names read from ``self.ui``/``ui`` in a Python file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "ui") or (isinstance(owner, ast.Name) and owner.id == "ui"):
                names.add(node.attr)
    return names


@pytest.mark.parametrize("path", WIDGET_SOURCES, ids=lambda p: p.name)
def test_python_ui_names_exist(ui_tree, path):
    used = _ui_names_used(path)
    missing = sorted(used - set(_widgets(ui_tree)))
    assert not missing, f"{path.name} uses widgets that are not in TumorSegmentation.ui: {missing}"


def _parameter_fields() -> dict:
    """{field: annotation AST} of the @parameterNodeWrapper class, plus the names of choice lists.

    The choice lists are module-level lists or names imported from ``tumorseg_core.options``
    (the engine's own choices: the module offers what the CLI and the worker take).
    """
    from tumorseg_core import options

    tree = ast.parse((LIB_DIR / "parameters.py").read_text(encoding="utf-8"))
    constants = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, (ast.List, ast.Tuple))}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "tumorseg_core.options":
            constants.update({alias.asname or alias.name: getattr(options, alias.name) for alias in node.names})
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list)]
    assert len(classes) == 1 and classes[0].name == "TumorSegmentationParameterNode"
    fields = {n.target.id: n.annotation for n in classes[0].body if isinstance(n, ast.AnnAssign)}
    return fields, constants


def _choices(annotation, constants):
    for node in ast.walk(annotation):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Choice":
            arg = node.args[0]
            if isinstance(arg, ast.Call) and getattr(arg.func, "id", None) == "list":  # Choice(list(DEVICES))
                arg = arg.args[0]
            return list(constants[arg.id]) if isinstance(arg, ast.Name) else ast.literal_eval(arg)
    return None


def test_parameter_names_bind(ui_tree):
    from tumorseg_core import options

    fields, constants = _parameter_fields()
    bound = {}
    for name, widget in _widgets(ui_tree).items():
        parameter = _dynamic_string(widget, "SlicerParameterName")
        if parameter:
            assert parameter in fields, f"{name} binds '{parameter}', not a field of TumorSegmentationParameterNode"
            assert parameter not in bound, f"'{parameter}' is bound twice"
            bound[parameter] = widget
    expected = {f"inputVolume{i}" for i in range(4)} | {"device", "quality", "backend", "cascade", "outputSegmentation",
                                                       "uncertainty"}
    assert set(bound) == expected
    for parameter, widget in bound.items():
        annotation = ast.unparse(fields[parameter])
        if widget.get("class") == "qMRMLNodeComboBox":
            node_types = [s.text for s in widget.iter("string") if s.text and s.text.startswith("vtkMRML")]
            assert node_types == [annotation], f"{parameter}: .ui nodeTypes {node_types} vs {annotation}"
        elif widget.get("class") == "QComboBox":
            # parameterNodeWrapper refuses a QComboBox bound to a field without Choice.
            choices = _choices(fields[parameter], constants)
            assert choices, f"{parameter} is bound to a QComboBox but has no Choice annotation"
            mirror = {"device": options.DEVICES, "quality": options.QUALITIES, "backend": options.BACKENDS,
                      "cascade": options.CASCADE_CHOICES}[parameter]
            assert choices == list(mirror), f"{parameter}: parameters.py and tumorseg_core.options disagree"
        elif widget.get("class") == "QCheckBox":
            assert annotation == "bool", f"{parameter} is bound to a QCheckBox but is annotated {annotation}"
        else:
            pytest.fail(f"{parameter}: no rule for widget class {widget.get('class')}")


_CMAKE_STUBS = """
set(CMAKE_CURRENT_SOURCE_DIR "@MODULE_DIR@")
set(CMAKE_BINARY_DIR "@BUILD_DIR@")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.13/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
# Stand-ins that report what Slicer's and CTK's macros would copy, and where to.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(f ${MY_SCRIPTS} ${MY_RESOURCES})
    message("COPY|${CMAKE_CURRENT_SOURCE_DIR}|${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}|${f}")
  endforeach()
endmacro()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(f ${MY_SCRIPTS} ${MY_RESOURCES})
    message("COPY|${MY_SOURCE_DIR}|${MY_DESTINATION_DIR}|${f}")
  endforeach()
endmacro()
macro(slicer_add_python_unittest)
  message("UNITTEST|${ARGN}")
endmacro()
include("@MODULE_DIR@/CMakeLists.txt")
"""


def test_cmake_copies_everything_into_the_scripted_module_folder(tmp_path):
    """Runs the real TumorSegmentation/CMakeLists.txt with stand-in macros (cmake -P).

    ctkMacroCompilePythonScript copies <SOURCE_DIR>/<path> to <DESTINATION_DIR>/<path>; every
    destination must stay inside qt-scripted-modules/ (on sys.path in Slicer, and installed).
    """
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    script = tmp_path / "check.cmake"
    script.write_text(_CMAKE_STUBS.replace("@MODULE_DIR@", MODULE_DIR.as_posix()).replace("@BUILD_DIR@", build.as_posix()))
    result = subprocess.run([cmake, "-P", str(script)], capture_output=True, encoding="utf-8", timeout=60)
    assert result.returncode == 0, result.stderr
    copies = [line.split("|")[1:] for line in result.stderr.splitlines() if line.startswith("COPY|")]
    scripted = (build / "lib/Slicer-5.13/qt-scripted-modules").resolve()
    assert copies
    targets = set()
    for source_dir, dest_dir, item in copies:
        assert (Path(source_dir) / item).is_file(), f"{item} does not exist under {source_dir}"
        target = (Path(dest_dir) / item).resolve()
        assert target.is_relative_to(scripted), f"{item} would be copied outside qt-scripted-modules: {target}"
        assert target not in targets, f"{item} is copied twice"
        targets.add(target)
    relative = {t.relative_to(scripted).as_posix() for t in targets}
    assert {"TumorSegmentation.py", "TumorSegmentationLib/logic.py", "tumorseg_core/__init__.py",
            "Resources/UI/TumorSegmentation.ui"} <= relative
    assert "UNITTEST|SCRIPT;TumorSegmentation.py" in result.stderr
