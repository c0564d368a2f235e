"""Model packages: the safe file format every TumorSeg model travels in.

Owns the manifest (:mod:`.manifest`: validation, typed accessors such as ``segments`` and
``predictor_settings()``, the optional ``cascade`` section), the package itself
(:mod:`.package`: open = verify every sha256 first, safe zip extraction, safetensors
weights, write atomically, list and install models; ``read_manifest`` for the UI process)
and conversion of foreign checkpoints into packages (:mod:`.convert`, the only place a
checkpoint is read, always ``weights_only``).

May import: ``tumorseg_core.errors``, ``tumorseg_core.options``, ``tumorseg_core.imaging``
(segment descriptions) and ``tumorseg_core.models`` (the architecture registry). Torch is
imported lazily, only to load or write weights.
"""
