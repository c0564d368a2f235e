"""The interactive session every door opens: answered by the shipped click network when it can run here.

The click network needs torch; Slicer's Python may not have it yet (the module installs it on
demand). Without torch, or without the network's folder, the session is the model-free one
(:class:`tumorseg_core.interactive.InteractiveSession` alone), and the log says why once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import SimpleITK as sitk

from tumorseg_core.interactive import InteractiveSession

logger = logging.getLogger(__name__)

_loaded: dict[Path, object] = {}


def click_network(folder: Optional[Path] = None) -> Optional[object]:
    """The click network of ``folder`` (default: the shipped one), loaded once; None when it cannot run here."""
    try:
        from tumorseg_core.clicknet.predict import ClickNet, shipped_folder
    except ImportError as exc:  # torch or safetensors missing
        logger.info("clicks are answered without the click network (%s); install torch to use it", exc)
        return None
    folder = Path(folder) if folder is not None else shipped_folder()
    if folder not in _loaded:
        if not (folder / "manifest.json").is_file():
            logger.info("no click network in %s; clicks are answered without it", folder)
            return None
        _loaded[folder] = ClickNet(folder)
    return _loaded[folder]


def interactive_session(image: sitk.Image, use_network: bool = True, folder: Optional[Path] = None) -> InteractiveSession:
    """A session on ``image``: with the click network when ``use_network`` and it can run, else model-free."""
    return InteractiveSession(image, estimator=click_network(folder) if use_network else None)
