"""The click network: a learned answer to a user's clicks, for the interactive session.

Owns the cube the network sees around a click (:mod:`.grid`), its input channels (:mod:`.inputs`),
its architecture (:mod:`.network`), the shipped weights loaded safely and run (:mod:`.predict`) and
the session every door opens, with or without the network (:mod:`.session`). :mod:`.grid` and
:mod:`.inputs` are numpy and SimpleITK only (Slicer's UI process may import them); the rest needs torch.
Training lives in :mod:`tumorseg_core.training.clicknet`.

May import: ``tumorseg_core.errors``, ``.models`` (the U-Net), ``.modelpkg`` (sha256 checks, strict
loading) and ``.interactive`` (the session, its crop).
"""
