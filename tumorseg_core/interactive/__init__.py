"""Model-free and click-driven segmentation: what the Segment Editor effect's Seed and Refine do.

Owns growing a lesion from clicks (:mod:`.seeds`, ``segment_from_seeds``), the radial
intensity profile that finds a lesion's levels and edge (:mod:`.profile`), morphology in
millimetres on anisotropic grids (:mod:`.morphology`) and refining a model's result by
clicks, keeping the lesions pointed at (:mod:`.refine`), and the interactive session of
clicks, a box and scribbles (:class:`InteractiveSession`, :mod:`.session`: working grid
:mod:`.crop`, features :mod:`.features`, classifier :mod:`.classifier`, random walker
:mod:`.walker`). numpy, scipy and SimpleITK only.

May import: ``tumorseg_core.errors`` and ``tumorseg_core.imaging``; never torch, never a model.
"""

from tumorseg_core.interactive.session import InteractiveSession

__all__ = ["InteractiveSession"]
