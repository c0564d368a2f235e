"""Device selection, the ``tumorseg info`` device report and CPU thread setup.

"GPU not detected" is a top user complaint, so a device that was asked for but is not
there is a one-line :class:`TumorSegError` that says what to use instead, never a
silent fallback; ``"auto"`` is the only name that picks whatever is available.

``import torch`` costs ~200 MB and ~1.5 s per process; a CPU run with an exported backend
(OpenVINO, ONNX Runtime) does not need it, so :func:`device_name` decides "the CPU"
without importing torch when no GPU driver is present.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import sys
from typing import TYPE_CHECKING, Any

from tumorseg_core.errors import TumorSegError
from tumorseg_core.options import check_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

logger = logging.getLogger(__name__)



def _mps_available() -> bool:
    """True when Apple's Metal backend can run (torch built with it and a GPU present)."""
    torch = import_torch()

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a user's device name into a ``torch.device``.

    ``"auto"`` picks CUDA, then MPS, then the CPU. ``"cuda"``, ``"cuda:N"`` and
    ``"mps"`` must be available, otherwise a :class:`TumorSegError` says so. A
    ``torch.device`` is returned unchanged (for callers that already chose one).
    """
    torch = import_torch()

    if isinstance(name, torch.device):
        return name
    key = check_device(name)  # the one list of device names (tumorseg_core.options)
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if key == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", key)
    if match:
        if not torch.cuda.is_available():
            raise TumorSegError("CUDA was requested but no GPU is available; use --device cpu or auto")
        if match.group(1) is not None:
            index = int(match.group(1))
            count = torch.cuda.device_count()
            if index >= count:
                raise TumorSegError(
                    f"GPU {index} was requested but only {count} GPU(s) are visible; use cuda:0..cuda:{count - 1}"
                )
            return torch.device("cuda", index)
        return torch.device("cuda")
    if key == "mps":
        if not _mps_available():
            raise TumorSegError("MPS (Apple GPU) was requested but is not available; use --device cpu or auto")
        return torch.device("mps")
    raise AssertionError(f"check_device accepted {key!r} but resolve_device has no rule for it")


# Device files a GPU driver creates on Linux: NVIDIA, NVIDIA Jetson (nvgpu), AMD ROCm
# (torch.cuda too) and WSL's GPU. Any of them present: ask torch.
_LINUX_GPU_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/nvhost-ctrl-gpu",
                    "/sys/module/nvgpu", "/dev/kfd", "/dev/dxg")


def gpu_may_be_present() -> bool:
    """False only when it is certain, without importing torch, that torch would find no GPU.

    With torch already imported it is asked directly. On Linux a GPU needs a driver whose
    device files exist; elsewhere (macOS: MPS, Windows) only torch can tell, so True.
    """
    loaded = sys.modules.get("torch")
    if loaded is not None:
        return bool(loaded.cuda.is_available() or _mps_available())
    if platform.system() == "Linux":
        return any(os.path.exists(path) for path in _LINUX_GPU_FILES)
    return True


def device_name(name: Any = "auto") -> str:
    """The device a name resolves to, as a string (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Same rules and errors as :func:`resolve_device`, but ``"cpu"``, and ``"auto"`` on a
    machine without a GPU driver, never import torch.
    """
    key = str(name).strip().lower()
    if key == "cpu" or (key == "auto" and not gpu_may_be_present()):
        return "cpu"
    return str(resolve_device(name))


def usable_cpu_count() -> int:
    """CPUs this process may run on (honours taskset/cgroup affinity where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# The thread count a front door asked for (configure_threads); None: every usable core.
_configured_threads: int | None = None


def configure_threads(n: int | None = None) -> int:
    """Set the CPU inference threads (torch and the exported backends); default: ``OMP_NUM_THREADS``
    when it is set (:func:`threads_from_environment`), else every usable core.

    nnU-Net v2.5 capped ``torch.set_num_threads`` at 8 globally, and users with more
    cores reported CPU inference several times slower (nnU-Net #2690). CPU inference
    is the slow path we care about, so by default we use all usable cores. This
    changes process-wide torch state, which is why the engine never calls it on its
    own: the front doors (CLI, worker) call it once at start-up. Returns the count set.
    torch is not imported for it: :func:`import_torch` applies the count when torch is
    first needed, and the exported backends read :func:`configured_threads` when they load.
    """
    global _configured_threads
    count = (threads_from_environment() or usable_cpu_count()) if n is None else int(n)
    if count < 1:
        raise TumorSegError(f"the thread count must be at least 1, got {count}; omit it to use all cores")
    _configured_threads = count
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
    logger.debug("CPU inference uses %d threads", count)
    return count


def threads_from_environment() -> int | None:
    """``OMP_NUM_THREADS`` when it is a positive whole number, else None.

    A user (or a job scheduler) who sets it expects every door to honour it, as torch itself
    does; the CLI's ``--threads`` still wins. On a shared 2-core machine training with 2
    threads under load was 5x slower per step than with ``OMP_NUM_THREADS=1``.
    """
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def configured_threads() -> int:
    """Threads for CPU inference: the configured count, else ``OMP_NUM_THREADS``, else every usable core."""
    if _configured_threads is not None:
        return _configured_threads
    return threads_from_environment() or usable_cpu_count()


def import_torch() -> Any:
    """``import torch``, with the thread count of :func:`configure_threads` applied."""
    import torch

    if _configured_threads is not None and torch.get_num_threads() != _configured_threads:
        torch.set_num_threads(_configured_threads)
    return torch


def device_report() -> dict[str, Any]:
    """What ``tumorseg info`` prints about compute: torch build, GPUs, MPS, threads.

    Keys: ``torch``, ``python``, ``platform``, ``cuda_available``, ``cuda_version``,
    ``cudnn_version``, ``gpus`` (list of ``{index, name, memory_gib, capability}``),
    ``mps_available``, ``cpu_count``, ``torch_threads``, ``auto_device``.
    """
    import torch

    cuda_ok = torch.cuda.is_available()
    gpus: list[dict[str, Any]] = []
    if cuda_ok:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    cudnn = torch.backends.cudnn.version() if cuda_ok else None
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": cuda_ok,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "gpus": gpus,
        "mps_available": _mps_available(),
        "cpu_count": usable_cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "auto_device": str(resolve_device("auto")),
    }
