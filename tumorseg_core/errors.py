"""Exceptions that front doors turn into one-line messages.

Every error a *user* can cause (bad file, bad model package, wrong number of inputs,
cancel) is a :class:`TumorSegError`. Its message is one line saying what is wrong and
what to do; the CLI prints it as ``error: <message>`` and exits with code 2, the Slicer
Logic shows it in the status line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TumorSegError(Exception):
    """A problem with the user's input, model or environment (not a bug)."""


class InputError(TumorSegError):
    """An input image is unusable: unreadable, wrong dimension, NaN/Inf, empty, mismatched."""


class ModelPackageError(TumorSegError):
    """A model package is missing, corrupt, tampered with or names an unknown architecture."""


class ModelAlreadyInstalledError(ModelPackageError):
    """Installing a model whose name is already taken in the models folder (``name``, ``folder``)."""

    def __init__(self, name: str, folder: object) -> None:
        super().__init__(f"a model named {name!r} is already installed in {folder}; remove it or overwrite")
        self.name = name
        self.folder = folder


class CancelledError(TumorSegError):
    """The user cancelled a running segmentation."""

    def __init__(self, message: str = "cancelled by the user; nothing was written") -> None:
        super().__init__(message)
