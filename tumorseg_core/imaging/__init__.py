"""Images in, label maps out: everything about voxels and their physical grid.

Owns reading and checking images (NIfTI, NRRD, MHA, DICOM series; :mod:`.io`), writing label
maps atomically with Slicer's ``.seg.nrrd`` header (:mod:`.io`, :mod:`.seg_nrrd`), what a label
value means (:mod:`.segments`), grids and resampling (:mod:`.geometry`, streamed slab by slab
in :mod:`.stream_resample` over :mod:`.nifti_slabs`), intensity preprocessing
(:mod:`.preprocess`), label postprocessing (:mod:`.postprocess`) and the demo's overlay PNG
(:mod:`.overlay`). Images are SimpleITK images in LPS; arrays are (z, y, x).

May import: ``tumorseg_core.errors`` and ``tumorseg_core.options`` only (numpy, scipy and
SimpleITK; never torch): model packages, networks and inference build on it, not the reverse.
"""
