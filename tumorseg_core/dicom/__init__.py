"""DICOM objects beyond plain image series: the source series with its UIDs, and DICOM SEG out and in.

Owns finding and reading a DICOM series together with its per-slice datasets and UIDs
(:mod:`.series`), writing a label map as a DICOM Segmentation object against the source
instances (:mod:`.seg_write`), reading a DICOM SEG back into a label map with segment names
and codes (:mod:`.seg_read`), the SNOMED codes and colors of segments in DICOM terms
(:mod:`.codes`) and the one reader of "a label map file or a DICOM SEG" (:mod:`.labels`).
Pixel data of series are read by :mod:`tumorseg_core.imaging.io` (SimpleITK), so the volume and
the slice order are the ones every other door sees. Images are SimpleITK images in LPS;
arrays are (z, y, x).

May import: ``tumorseg_core.errors`` and ``tumorseg_core.imaging`` only (plus numpy,
SimpleITK, pydicom and highdicom, imported lazily where heavy; never torch).
"""
