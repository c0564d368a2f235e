"""The optional ``int8`` section of a model manifest: the package's INT8 networks.

``tumorseg quantize`` adds one quantized ONNX graph per ensemble member (static
post-training quantization, QDQ format: int8 weights per output channel, uint8
activations calibrated on preprocessed windows) and describes them here::

    "int8": {
      "networks": ["fold0.int8.onnx"],   # one per ensemble weight file, in sorted weight-file order
      "window": [64, 64, 64],            # x y z: the graph's fixed window (= patch_size)
      "quantizer": "onnxruntime 1.32.0 quantize_static QDQ per-channel",
      "calibration": "synthetic:8",      # what the activations were calibrated on
      "dice_to_fp32": 0.995,             # Dice of INT8 vs float32 labels over those cases
      "max_dice_drop": 0.02              # the budget the quantizer checked (1 - dice_to_fp32 <= it)
    }

A 2.5D model's (``unet25d``) graphs are its slice-mode network: the centre-slice 2D network
on one-plane tiles ``(1, C*(2k+1), 1, y, x)`` of the patch's x and y
(:mod:`~tumorseg_core.inference.slice_mode`), and the 3D sliding window of such a package
(``tumorseg segment`` of a whole volume) runs float32. ``window`` still equals ``patch_size``,
so a reader that knows the section but not slice-mode INT8 opens the package and runs slice
mode in float32; its whole-volume segmentation refuses the graphs' shape ("quantize the
package again") instead.

The graphs are files of the package, so ``files`` lists their sha256 and
:func:`~tumorseg_core.modelpkg.package.open_package` verifies them like the weights; they
are read as data (ONNX protobuf, never pickle) and hashed again when loaded. The section
needs no new ``format_version``: a reader that does not know it warns about an unknown
field and runs the float32 weights, which is still correct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from tumorseg_core.errors import ModelPackageError

_KEYS = ("networks", "window", "quantizer", "calibration", "dice_to_fp32", "max_dice_drop")


def _fail(field: str, problem: str) -> ModelPackageError:
    return ModelPackageError(f"manifest field 'int8.{field}' {problem}; fix manifest.json or quantize the package again")


@dataclass(frozen=True)
class Int8Spec:
    """A validated ``int8`` section.

    Attributes:
        networks: one ONNX file name per ensemble member (the package's weight files, sorted).
        window_xyz: the graphs' fixed window (x, y, z), equal to the manifest's patch size.
        quantizer, calibration: how the graphs were made (free text, for people).
        dice_to_fp32, max_dice_drop: the accuracy check ``tumorseg quantize`` passed (or None).
    """

    networks: Tuple[str, ...]
    window_xyz: Tuple[int, int, int]
    quantizer: str = ""
    calibration: str = ""
    dice_to_fp32: Optional[float] = None
    max_dice_drop: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        """The section as it is written into ``manifest.json``."""
        out: Dict[str, Any] = {"networks": list(self.networks), "window": list(self.window_xyz),
                               "quantizer": self.quantizer, "calibration": self.calibration}
        if self.dice_to_fp32 is not None:
            out["dice_to_fp32"] = self.dice_to_fp32
        if self.max_dice_drop is not None:
            out["max_dice_drop"] = self.max_dice_drop
        return out


def _fraction(value: Any, field: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise _fail(field, "must be a number from 0 to 1")
    return float(value)


def check_int8_section(section: Any, files: Mapping[str, str], ensemble: Sequence[str],
                       patch_xyz: Sequence[int]) -> Int8Spec:
    """Validate ``section`` against the package's ``files``, its ensemble weight files and its patch size."""
    if not isinstance(section, dict):
        raise _fail("", "must be a JSON object")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise _fail(unknown[0], f"is unknown (known: {', '.join(_KEYS)})")
    networks = section.get("networks")
    if not isinstance(networks, list) or len(networks) != len(ensemble):
        raise _fail("networks", f"must list one ONNX file per ensemble weight file ({len(ensemble)})")
    for name in networks:
        if not isinstance(name, str) or not name.endswith(".onnx") or name not in files:
            raise _fail("networks", f"has {name!r}, which is not an .onnx file that 'files' lists")
    if len(set(networks)) != len(networks):
        raise _fail("networks", "names one file twice")
    window = section.get("window")
    if not isinstance(window, list) or [int(w) if isinstance(w, int) and not isinstance(w, bool) else None
                                        for w in window] != [int(p) for p in patch_xyz]:
        raise _fail("window", f"must equal patch_size {list(patch_xyz)} (the graphs have a fixed window)")
    for key in ("quantizer", "calibration"):
        if not isinstance(section.get(key, ""), str):
            raise _fail(key, "must be a string")
    return Int8Spec(tuple(networks), tuple(int(w) for w in window),  # type: ignore[arg-type]
                    section.get("quantizer", ""), section.get("calibration", ""),
                    _fraction(section.get("dice_to_fp32"), "dice_to_fp32"),
                    _fraction(section.get("max_dice_drop"), "max_dice_drop"))
