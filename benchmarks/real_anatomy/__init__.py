"""Real-anatomy evaluation and training sets (issue #20 part 1): real scans with simulated lesions.

Real volumes come from packages (:mod:`.fetch_sources`: Debian ``mricron-data`` and
``invesalius-examples``, PyPI ``nilearn``), are loaded as LPS SimpleITK images with their
masks and tissue classes (:mod:`.sources`, :mod:`.tissue`), receive realistic lesions
(:mod:`.lesions`, :mod:`.placement`), are re-acquired at another slice thickness and
orientation with bias field and noise (:mod:`.acquisition`) and written as cases that
``tumorseg evaluate --data`` reads (:mod:`.cases`); :mod:`.score` turns ``tumorseg evaluate
--csv`` rows into issue #20's numbers. Entry script: ``benchmarks/make_real_anatomy_set.py``.
"""
