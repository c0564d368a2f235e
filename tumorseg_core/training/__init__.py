"""Training internals: preprocessing cache, checkpoints, distributed helpers, validation.

The public entry point is :func:`tumorseg_core.train.train`; the command is ``tumorseg train``.
"""
