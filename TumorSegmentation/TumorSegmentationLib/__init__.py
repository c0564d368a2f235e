"""TumorSegmentation module library: Qt-free logic used by the module, the effect and scripts.

``from TumorSegmentationLib import TumorSegmentationLogic`` (with ``TumorSegmentation/``
on ``sys.path``) works in the Slicer application and headless with slicer-core.
The Logic is imported lazily, so submodules that need neither MRML nor VTK (e.g. the
widget's decision helpers) can be imported and tested without ``slicer``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TumorSegmentationLogic"]


def __getattr__(name: str) -> Any:
    if name == "TumorSegmentationLogic":
        from .logic import TumorSegmentationLogic

        return TumorSegmentationLogic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
