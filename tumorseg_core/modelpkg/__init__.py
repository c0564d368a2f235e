"""Model packages: the safe file format every TumorSeg model travels in.

Owns the manifest (:mod:`.manifest`: validation, typed accessors such as ``segments`` and
``predictor_settings()``, the optional ``cascade`` section), the package itself
(:mod:`.package`: open = verify every sha256 first, safe zip extraction, safetensors
weights, write atomically, list and install models; ``read_manifest`` for the UI process)
and importing foreign models into packages (:mod:`.convert`, the only place a checkpoint
is read, always ``weights_only``; nnU-Net v2 folders in :mod:`.nnunet_import`; MONAI
bundles read as data in :mod:`.monai_bundle`, their ``monai`` manifest section in
:mod:`.monai_section`, the package in :mod:`.monai_import`).

May import: ``tumorseg_core.errors``, ``tumorseg_core.options``, ``tumorseg_core.imaging``
(segment descriptions) and ``tumorseg_core.models`` (the architecture registry). Torch is
imported lazily, only to load or write weights.
"""
