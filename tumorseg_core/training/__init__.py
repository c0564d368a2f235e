"""Training a model package: data, augmentation, losses, the training loop and its outputs.

Owns data sources (:mod:`.datasets`: MSD, paired folders, CSV, JSON; :mod:`.synthetic_data`
for ``synthetic:N``), the preprocessing cache (:mod:`.cache`), patches and crops
(:mod:`.patches`, :mod:`.foreground_crop`), augmentation (:mod:`.augment`), losses
(:mod:`.losses`), hard examples (:mod:`.hard_negatives`), configuration (:mod:`.config`),
setup, checkpoints, validation, DDP helpers, and the loop itself
(:func:`tumorseg_core.training.trainer.train`, behind ``tumorseg train``).

May import: ``tumorseg_core.errors``, ``.options``, ``.imaging``, ``.models``, ``.modelpkg``,
``.inference`` (hard-example mining runs the model), ``.synthetic`` and ``.evaluation``
(validation metrics). Nothing below training imports it.
"""
