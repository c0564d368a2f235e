"""Python dependencies of TumorSeg inside Slicer: check, plan, install, explain failures.

Installing into Slicer's Python is the most common failure of AI extensions (proxies,
no network, no wheel for this Python), so this module:

- checks on the first Apply, never at import, and without importing torch (a loaded
  torch DLL cannot be upgraded on Windows; versions come from package metadata);
- plans the work in a Qt-free function (:func:`plan_installation`, unit-tested):
  torch through the PyTorch extension (light-the-torch picks the CUDA build that
  matches the driver) when it is installed, the rest with ``slicer.packaging.pip_ensure``
  (Slicer >= 5.12) or ``slicer.util.pip_install`` (older Slicer);
- never reinstalls SimpleITK or numpy: they belong to Slicer, and replacing them breaks
  Slicer itself. When they are missing or too old the plan says "update Slicer";
- turns pip's output into one plain sentence (:func:`classify_pip_error`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import io
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

logger = logging.getLogger(__name__)

REQUESTER = "Tumor Segmentation"

# distribution name -> (import name, minimum version)
REQUIREMENTS = {
    "torch": ("torch", "2.1"),
    "monai": ("monai", "1.3"),
    "SimpleITK": ("SimpleITK", "2.2"),
    "safetensors": ("safetensors", "0.4"),
    "scipy": ("scipy", "1.10"),
    # The fast CPU path (issue: fast on a laptop): OpenVINO runs the exported model ~2x faster than torch.
    "openvino": ("openvino", "2024.0"),
    "numpy": ("numpy", "1.22"),
    # Imported nnU-Net models: PlainConvUNet / ResidualEncoderUNet (pure torch).
    "dynamic-network-architectures": ("dynamic_network_architectures", "0.4"),
    # Measurements (marching-cubes surface, RECIST picture) and DICOM SEG export.
    "scikit-image": ("skimage", "0.21"),
    "Pillow": ("PIL", "9"),
    "pydicom": ("pydicom", "2.4"),
    "highdicom": ("highdicom", "0.22"),
}
SLICER_OWNED = ("SimpleITK", "numpy")
MIN_PYTHON = (3, 9)


class DependencyError(RuntimeError):
    """Dependencies are missing and could not be installed; the message says why in plain words."""


class InstallCancelled(DependencyError):
    """The user declined the installation TumorSeg asked for."""


def version_tuple(version: str) -> tuple:
    """Numeric release part of a version: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``, ``"1.3rc1"`` -> ``(1, 3)``."""
    parts = []
    for piece in str(version).split("+")[0].split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def is_at_least(version: Optional[str], minimum: str) -> bool:
    """True when ``version`` is installed and not older than ``minimum`` (missing parts count as 0)."""
    if not version:
        return False
    have, need = version_tuple(version), version_tuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def find_versions(requirements: Mapping = REQUIREMENTS) -> dict:
    """Installed version of each distribution, or None when it is not importable.

    Uses package metadata plus ``find_spec`` (which does not run the package), so torch
    is not loaded into Slicer's process by the check.
    """
    found = {}
    for dist, (module, _minimum) in requirements.items():
        if importlib.util.find_spec(module) is None:
            found[dist] = None
            continue
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            # Importable but without metadata (e.g. built into Slicer's tree): ask the module.
            try:
                found[dist] = str(getattr(importlib.import_module(module), "__version__", "0"))
            except Exception as exc:  # a broken install is "not importable"
                logger.warning("%s is present but does not import: %s", module, exc)
                found[dist] = None
    return found


@dataclass
class InstallStep:
    """One installation action: ``channel`` is "pytorch-extension" or "pip"."""

    channel: str
    requirements: list


@dataclass
class InstallPlan:
    """What must happen before TumorSeg can run; empty ``steps`` and ``blocked`` mean nothing."""

    steps: list = field(default_factory=list)
    blocked: list = field(default_factory=list)
    satisfied: dict = field(default_factory=dict)

    @property
    def needed(self) -> bool:
        return bool(self.steps or self.blocked)

    @property
    def requirements(self) -> list:
        return [req for step in self.steps for req in step.requirements]

    def describe(self) -> str:
        """Plain-words summary for a confirmation dialog or the log."""
        lines = []
        for step in self.steps:
            how = "with the PyTorch extension" if step.channel == "pytorch-extension" else "with pip"
            lines.append(f"Install {', '.join(step.requirements)} {how}")
        lines.extend(self.blocked)
        if not lines:
            return "All Python packages TumorSeg needs are installed: " + ", ".join(
                f"{name} {version}" for name, version in self.satisfied.items())
        return "\n".join(lines)


def plan_installation(
    found_versions: Mapping,
    pytorch_extension: bool = True,
    python_version: tuple = tuple(sys.version_info[:3]),
    requirements: Mapping = REQUIREMENTS,
) -> InstallPlan:
    """Decide what to install from the versions found (None = missing).

    torch goes through the PyTorch extension when ``pytorch_extension`` (it knows which
    CUDA build fits the driver), otherwise through pip like the rest. SimpleITK and
    numpy are never installed: a missing or old one is a ``blocked`` message.
    """
    plan = InstallPlan()
    if tuple(python_version[:2]) < MIN_PYTHON:
        plan.blocked.append(
            f"This Slicer runs Python {'.'.join(map(str, python_version[:3]))}; TumorSeg needs Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer: install a current 3D Slicer release")
        return plan
    pip_requirements = []
    for dist, (_module, minimum) in requirements.items():
        version = found_versions.get(dist)
        if is_at_least(version, minimum):
            plan.satisfied[dist] = version
            continue
        if dist in SLICER_OWNED:
            state = f"version {version} is older than {minimum}" if version else "it is missing"
            plan.blocked.append(
                f"{dist} comes with Slicer and {state}; TumorSeg does not replace it: "
                "install a current 3D Slicer release")
            continue
        requirement = f"{dist}>={minimum}"
        if dist == "torch" and pytorch_extension:
            plan.steps.insert(0, InstallStep("pytorch-extension", [requirement]))
        elif dist == "torch":
            pip_requirements.insert(0, requirement)
        else:
            pip_requirements.append(requirement)
    if pip_requirements:
        plan.steps.append(InstallStep("pip", pip_requirements))
    return plan


# (kind, patterns, plain explanation); the first kind whose pattern occurs wins.
_PIP_FAILURES = (
    ("proxy", (r"ProxyError", r"407 Proxy", r"Cannot connect to proxy", r"Tunnel connection failed"),
     "The download went through a proxy that refused it. Set the HTTPS_PROXY environment variable "
     "(ask your IT department for the address) before starting Slicer, then try again."),
    ("ssl", (r"SSLError", r"CERTIFICATE_VERIFY_FAILED", r"certificate verify failed"),
     "A secure connection to the Python package index failed, usually because a company firewall or proxy "
     "inspects traffic. Ask IT to allow pypi.org and files.pythonhosted.org, or install from another network."),
    ("no-network", (r"NewConnectionError", r"Failed to establish a new connection", r"Temporary failure in name resolution",
                    r"Name or service not known", r"getaddrinfo failed", r"Network is unreachable",
                    r"nodename nor servname", r"Read timed out", r"ConnectTimeout", r"No route to host"),
     "This computer could not reach the Python package index (no network connection or it is blocked). "
     "Connect to the internet and try again."),
    ("wrong-python", (r"No matching distribution found", r"Could not find a version that satisfies",
                      r"requires a different Python", r"Requires-Python", r"is not a supported wheel on this platform"),
     "No build of a required package exists for this Slicer's Python version or operating system. "
     "Install a current 3D Slicer release, or a TumorSeg version made for this Slicer."),
    ("permission", (r"Permission denied", r"Access is denied", r"\[WinError 5\]", r"\[Errno 13\]"),
     "Slicer's folder is not writable by your user. Reinstall Slicer into a folder you own "
     "(for example in your home folder), or run it once as the user who installed it."),
    ("disk-full", (r"No space left on device", r"\[Errno 28\]"),
     "The disk is full. Free a few gigabytes (PyTorch needs about 3 GB) and try again."),
    ("file-in-use", (r"\[WinError 32\]", r"being used by another process"),
     "A file of the package is in use. Restart Slicer and install before running a segmentation."),
    ("long-path", (r"\[WinError 206\]", r"filename or extension is too long"),
     "Windows refused a long file path. Install Slicer in a shorter folder such as C:\\Slicer, "
     "or enable long paths in Windows."),
)


def classify_pip_error(text: str) -> tuple:
    """``(kind, plain sentence)`` for pip's output; kind "unknown" when nothing matches."""
    for kind, patterns, explanation in _PIP_FAILURES:
        if any(re.search(pattern, text or "", re.IGNORECASE) for pattern in patterns):
            return kind, explanation
    return ("unknown", "Installing the Python packages failed. The details are in the Python console "
                       "(View > Python Console); please include them when reporting the problem.")


class _TeeOutput(io.TextIOBase):
    """Passes writes through to the original stream and keeps the last lines for diagnosis
    (Slicer's pip helpers print pip's output instead of attaching it to the exception)."""

    def __init__(self, original, max_chars: int = 50000):
        super().__init__()
        self._original = original
        self._buffer = io.StringIO()
        self._max_chars = max_chars

    def write(self, text):
        if self._original is not None:
            self._original.write(text)
        self._buffer.write(text)
        if self._buffer.tell() > 2 * self._max_chars:
            tail = self._buffer.getvalue()[-self._max_chars:]
            self._buffer = io.StringIO()
            self._buffer.write(tail)
        return len(text)

    def flush(self):
        if self._original is not None:
            self._original.flush()

    def captured(self) -> str:
        return self._buffer.getvalue()


def _error_text(exc: BaseException, captured: str) -> str:
    parts = [captured, str(exc)]
    for attribute in ("output", "stderr", "stdout"):
        value = getattr(exc, attribute, None)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value:
            parts.append(str(value))
    return "\n".join(parts)


def _install_torch(requirement: str) -> None:
    import PyTorchUtils  # the PyTorch extension's module; present because the extension depends on it

    minimum = requirement[len("torch"):]
    # The user already agreed to the whole plan (_confirm_in_slicer): no second question.
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=minimum)
    if torch is None:
        raise DependencyError("PyTorch could not be installed; see the Python console, or install the PyTorch extension.")


def _pip_install(requirements: list) -> None:
    import slicer

    # monai depends on torch and numpy. Letting pip resolve them would replace the PyTorch
    # extension's CUDA build with a PyPI wheel and could replace Slicer's numpy, so the
    # packages Slicer owns (and torch) are skipped and the rest installed without them.
    skip = [*SLICER_OWNED, "torch"]
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        # The user already agreed to the whole plan (_confirm_in_slicer): turn pip_ensure's own
        # question off (its keyword changed name between Slicer releases).
        accepted = inspect.signature(packaging.pip_ensure).parameters
        no_prompt = {name: False for name in ("prompt_install", "prompt") if name in accepted}
        packaging.pip_ensure(requirements, skip_packages=skip, requester=REQUESTER, **no_prompt)
    else:
        # Slicer < 5.12: pip_install takes pip's arguments; --no-deps for the same reason.
        slicer.util.pip_install(["--no-deps", *requirements])


def _confirm_in_slicer(plan: InstallPlan) -> bool:
    import slicer

    return bool(slicer.util.confirmOkCancelDisplay(
        "TumorSeg needs these Python packages and will install them now:\n\n" + plan.describe()
        + "\n\nThis changes Slicer's Python environment. Continue?", windowTitle="TumorSeg - Python packages"))


def ensure_dependencies(
    find: Callable[[], Mapping] = find_versions,
    install_torch: Callable[[str], None] = _install_torch,
    pip_install: Callable[[list], None] = _pip_install,
    pytorch_extension: Optional[bool] = None,
    confirm: Callable[[InstallPlan], bool] = _confirm_in_slicer,
) -> InstallPlan:
    """Check and, where needed, install; raise :class:`DependencyError` with a plain message.

    Call it from the first Apply (inside Slicer). The user is asked once (``confirm``) for
    the whole plan; declining raises :class:`InstallCancelled`. The installers are parameters
    so the control flow is testable; the defaults need Slicer. ``pytorch_extension`` None means
    "use it when its PyTorchUtils module is importable".
    """
    if pytorch_extension is None:
        pytorch_extension = importlib.util.find_spec("PyTorchUtils") is not None
    plan = plan_installation(find(), pytorch_extension=pytorch_extension)
    if not plan.needed:
        logger.info(plan.describe())
        return plan
    if plan.blocked:
        raise DependencyError("\n".join(plan.blocked))
    if not confirm(plan):
        raise InstallCancelled(f"Installing {', '.join(plan.requirements)} was cancelled; "
                               "TumorSeg cannot run without them.")
    logger.info("TumorSeg installs Python packages:\n%s", plan.describe())
    torch_was_loaded = "torch" in sys.modules
    tee = _TeeOutput(sys.stdout)
    original_stdout, sys.stdout = sys.stdout, tee
    try:
        for step in plan.steps:
            if step.channel == "pytorch-extension":
                install_torch(step.requirements[0])
            else:
                pip_install(step.requirements)
    except DependencyError:
        raise
    except Exception as exc:
        kind, explanation = classify_pip_error(_error_text(exc, tee.captured()))
        logger.error("Installing %s failed (%s): %s", ", ".join(plan.requirements), kind, exc)
        raise DependencyError(explanation) from exc
    finally:
        sys.stdout = original_stdout
    still_missing = plan_installation(find(), pytorch_extension=pytorch_extension)
    if still_missing.needed:
        raise DependencyError("The installation finished but these are still missing:\n" + still_missing.describe()
                              + "\nRestart Slicer and try again.")
    if torch_was_loaded and any(req.startswith("torch") for req in plan.requirements):
        logger.warning("PyTorch was upgraded after it was loaded; restart Slicer before running a segmentation")
    return plan
