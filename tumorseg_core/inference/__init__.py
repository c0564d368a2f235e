"""Running a model: from images on any grid to a label map on the first image's exact grid.

Owns the :class:`~.segmenter.Segmenter` (read, align, resample to the model grid, normalize,
predict, postprocess, back to the input grid; ``segment_to_file`` is the one place results are
written), the sliding-window :class:`~.predictor.Predictor` and its small pure pieces
(:mod:`.sliding_window`, :mod:`.stitching`, :mod:`.tta`, :mod:`.window_batch`), the ROI
cascade (:mod:`.cascade`, :mod:`.roi_windows`), devices and threads (:mod:`.devices`) and the
exported CPU backends (:mod:`.backends`: ONNX Runtime, OpenVINO, torch).

May import: ``tumorseg_core.errors``, ``.options``, ``.imaging``, ``.models``, ``.modelpkg`` and
``.interactive`` (refining by clicks); never training, evaluation, commands or the worker.
"""
