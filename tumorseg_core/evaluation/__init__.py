"""How good a segmentation is: metrics and evaluating folders or a model on labelled data.

Owns the numpy metrics on boolean masks with physical spacing and an explicit empty-mask
policy (:mod:`.metrics`: Dice, HD95, surface Dice, lesion detection, ...) and evaluating
prediction folders against truth folders or running a model over a data set and
summarizing per label (:mod:`.evaluate`, behind ``tumorseg evaluate``).

May import: ``tumorseg_core.errors``, ``tumorseg_core.options``, ``tumorseg_core.imaging``,
``tumorseg_core.modelpkg`` and ``tumorseg_core.inference`` (to run a model); training uses
the metrics, never the other way round.
"""
