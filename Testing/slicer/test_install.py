"""Dependency planning, pip error classification and the install control flow (no Slicer)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "TumorSegmentation") not in sys.path:
    sys.path.insert(0, str(ROOT / "TumorSegmentation"))

from TumorSegmentationLib import install  # noqa: E402

ALL_GOOD = {"torch": "2.13.0+cpu", "monai": "1.6.1", "SimpleITK": "2.5.7", "safetensors": "0.8.0", "scipy": "1.17.1",
            "openvino": "2026.4.1", "numpy": "2.4.6", "dynamic-network-architectures": "0.4.3", "scikit-image": "0.26.0",
            "Pillow": "13.0.0", "pydicom": "3.0.2", "highdicom": "0.28.2"}


@pytest.mark.parametrize("version, minimum, ok", [
    ("2.13.0+cpu", "2.1", True), ("2.1", "2.1", True), ("2.1.0", "2.1", True), ("2.0.1", "2.1", False),
    ("1.10", "1.9", True), ("1.3rc1", "1.3", True), ("0.4.5", "0.4", True), (None, "1.0", False), ("", "1.0", False),
])
def test_is_at_least(version, minimum, ok):
    assert install.is_at_least(version, minimum) is ok


def test_nothing_to_do_when_all_present():
    plan = install.plan_installation(ALL_GOOD, python_version=(3, 12, 1))
    assert not plan.needed and plan.steps == [] and plan.blocked == []
    assert plan.satisfied == ALL_GOOD
    assert "torch 2.13.0+cpu" in plan.describe()


def test_torch_through_pytorch_extension_rest_through_pip():
    found = dict(ALL_GOOD, torch=None, monai=None, safetensors="0.3.1")
    plan = install.plan_installation(found, pytorch_extension=True, python_version=(3, 12, 1))
    assert [(s.channel, s.requirements) for s in plan.steps] == [
        ("pytorch-extension", ["torch>=2.1"]), ("pip", ["monai>=1.3", "safetensors>=0.4"])]
    assert plan.requirements == ["torch>=2.1", "monai>=1.3", "safetensors>=0.4"]
    assert "with the PyTorch extension" in plan.describe()


def test_torch_through_pip_without_the_extension():
    plan = install.plan_installation(dict(ALL_GOOD, torch="2.0.1", monai=None), pytorch_extension=False,
                                     python_version=(3, 12, 1))
    assert [(s.channel, s.requirements) for s in plan.steps] == [("pip", ["torch>=2.1", "monai>=1.3"])]


@pytest.mark.parametrize("package", ["SimpleITK", "numpy"])
@pytest.mark.parametrize("version", [None, "1.0"])
def test_slicer_owned_packages_are_never_installed(package, version):
    plan = install.plan_installation(dict(ALL_GOOD, **{package: version}), python_version=(3, 12, 1))
    assert plan.steps == []
    assert plan.needed and len(plan.blocked) == 1
    assert package in plan.blocked[0] and "install a current 3D Slicer" in plan.blocked[0]
    assert ("missing" in plan.blocked[0]) == (version is None)


def test_old_python_is_blocked():
    plan = install.plan_installation({}, python_version=(3, 8, 10))
    assert plan.steps == [] and "Python 3.8.10" in plan.blocked[0]


@pytest.mark.parametrize("text, kind", [
    ("pip._vendor.urllib3.exceptions.ProxyError: ('Cannot connect to proxy.', OSError('Tunnel connection failed: 407 Proxy Authentication Required'))", "proxy"),
    ("SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))", "ssl"),
    ("NewConnectionError('<...>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')", "no-network"),
    ("ERROR: Could not find a version that satisfies the requirement monai>=1.3 (from versions: none)\nERROR: No matching distribution found for monai>=1.3", "wrong-python"),
    ("ERROR: Package 'monai' requires a different Python: 3.8.10 not in '>=3.9'", "wrong-python"),
    ("ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: '/opt/Slicer/lib'", "permission"),
    ("OSError: [Errno 28] No space left on device", "disk-full"),
    ("[WinError 32] The process cannot access the file because it is being used by another process", "file-in-use"),
    ("OSError: [WinError 206] The filename or extension is too long", "long-path"),
    ("Segmentation fault", "unknown"),
    ("", "unknown"),
])
def test_classify_pip_error(text, kind):
    got, explanation = install.classify_pip_error(text)
    assert got == kind
    assert explanation and "\n" not in explanation


def AGREE(plan):
    return True


class Recorder:
    def __init__(self, versions_sequence, fail=None):
        self.versions = list(versions_sequence)
        self.calls = []
        self.fail = fail

    def find(self):
        return self.versions.pop(0) if len(self.versions) > 1 else self.versions[0]

    def torch(self, requirement):
        self.calls.append(("torch", requirement))

    def pip(self, requirements):
        self.calls.append(("pip", list(requirements)))
        if self.fail:
            print("Collecting monai>=1.3")  # Slicer's helpers print pip's output
            print(self.fail)
            raise subprocess.CalledProcessError(1, "pip install")


def test_ensure_dependencies_does_nothing_when_satisfied():
    rec = Recorder([ALL_GOOD])
    plan = install.ensure_dependencies(find=rec.find, install_torch=rec.torch, pip_install=rec.pip, confirm=AGREE)
    assert not plan.needed and rec.calls == []


def test_ensure_dependencies_installs_then_rechecks():
    rec = Recorder([dict(ALL_GOOD, torch=None, monai=None), ALL_GOOD])
    install.ensure_dependencies(find=rec.find, install_torch=rec.torch, pip_install=rec.pip, confirm=AGREE, pytorch_extension=True)
    assert rec.calls == [("torch", "torch>=2.1"), ("pip", ["monai>=1.3"])]
    rec = Recorder([dict(ALL_GOOD, torch=None), ALL_GOOD])
    install.ensure_dependencies(find=rec.find, install_torch=rec.torch, pip_install=rec.pip, confirm=AGREE, pytorch_extension=False)
    assert rec.calls == [("pip", ["torch>=2.1"])]


def test_ensure_dependencies_explains_pip_failure_from_printed_output():
    rec = Recorder([dict(ALL_GOOD, monai=None)],
                   fail="WARNING: Retrying ... NewConnectionError: Failed to establish a new connection")
    stdout = sys.stdout
    with pytest.raises(install.DependencyError, match="could not reach the Python package index"):
        install.ensure_dependencies(find=rec.find, install_torch=rec.torch, pip_install=rec.pip, confirm=AGREE)
    assert sys.stdout is stdout  # the capture is undone


def test_ensure_dependencies_blocked_and_declined_and_still_missing():
    rec = Recorder([dict(ALL_GOOD, numpy=None)])
    with pytest.raises(install.DependencyError, match="numpy comes with Slicer"):
        install.ensure_dependencies(find=rec.find, install_torch=rec.torch, pip_install=rec.pip, confirm=AGREE)
    assert rec.calls == []

    asked = []

    def decline(plan):
        asked.append(plan.requirements)
        return False

    rec = Recorder([dict(ALL_GOOD, monai=None)])
    with pytest.raises(install.InstallCancelled, match="was cancelled"):
        install.ensure_dependencies(find=rec.find, install_torch=rec.torch, pip_install=rec.pip, confirm=decline)
    assert rec.calls == [] and len(asked) == 1  # asked once, nothing installed
    rec = Recorder([dict(ALL_GOOD, monai=None)])  # pip "succeeds" but nothing changed
    with pytest.raises(install.DependencyError, match="still missing"):
        install.ensure_dependencies(find=rec.find, install_torch=rec.torch, pip_install=rec.pip, confirm=AGREE)


def test_find_versions_reads_metadata_without_importing():
    sys.modules.pop("safetensors", None)
    found = install.find_versions({"numpy": ("numpy", "1.0"), "safetensors": ("safetensors", "0.4"),
                                   "no-such-dist": ("no_such_module_tumorseg", "1.0")})
    assert install.is_at_least(found["numpy"], "1.22")
    assert found["safetensors"] and "safetensors" not in sys.modules
    assert found["no-such-dist"] is None


def test_every_runtime_dependency_of_the_engine_is_installed_in_slicer():
    """What pyproject.toml says the engine needs at run time, Slicer's installer checks and installs."""
    import re
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0] for spec in pyproject["project"]["dependencies"]}

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    missing = {norm(n) for n in needed} - {norm(n) for n in install.REQUIREMENTS}
    assert not missing, f"add these to TumorSegmentationLib/install.py REQUIREMENTS: {sorted(missing)}"
