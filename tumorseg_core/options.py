"""Every choice a user makes for one segmentation, defined once for every door.

:class:`SegmentOptions` is what ``tumorseg segment`` parses, what ``tumorseg_core.segment``
and :class:`~tumorseg_core.inference.segmenter.Segmenter` take as keyword arguments, what
the Slicer Logic sends to the background worker (``"options"`` in the request) and what
the module's and the effect's combo boxes offer. The choices (:data:`DEVICES`,
:data:`BACKENDS`, :data:`QUALITIES`, :data:`LABELMAP_EXTENSIONS`) are exported from here,
and every value is validated here, once, with a one-line error naming the option.

Plain Python (no torch, no SimpleITK): Slicer's UI process imports it to fill its combo boxes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from tumorseg_core.errors import TumorSegError

#: Where the network runs. ``auto``: CUDA, then MPS, then the CPU; ``cuda:N`` picks a GPU too.
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Inference engines (``inference/backends``); ``auto``: the fastest installed for the device.
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: Network arithmetic. ``auto``: the package's INT8 network on the CPU when it has one
#: (``tumorseg quantize``), else float32; ``int8`` requires it; ``fp32`` never uses it.
PRECISIONS = ("auto", "fp32", "int8")
#: Presets of the sliding window. ``normal`` is the model's own settings (its manifest).
QUALITIES = ("fast", "normal", "tta")
QUALITY_LABELS = {
    "fast": "Fast (windows do not overlap)",
    "normal": "Normal (the model's own settings)",
    "tta": "Best (test-time augmentation, slower)",
}
_QUALITY_PRESETS: Dict[str, Dict[str, Any]] = {
    "fast": {"overlap": 0.0},
    "normal": {},
    "tta": {"tta": True},
}
#: Label map formats by extension (``.seg.nrrd`` is a 3D Slicer segmentation).
LABELMAP_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
MAX_WINDOW_BATCH = 256
_CUDA_INDEX = re.compile(r"^cuda:\d{1,2}$")

Point = Tuple[float, float, float]


def check_device(value: Any) -> str:
    """``value`` as a device name (one of :data:`DEVICES` or ``cuda:N``); TumorSegError otherwise."""
    text = str(value).strip().lower()
    if text in DEVICES or _CUDA_INDEX.match(text):
        return text
    raise TumorSegError(f"unknown device {value!r}; use one of {', '.join(DEVICES)} or cuda:N")


def _choice(value: Any, choices: Sequence[str], name: str) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise TumorSegError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")
    return text


def _point(value: Any, name: str) -> Point:
    try:
        point = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise TumorSegError(f"{name} {value!r} is not a point; give X, Y, Z in LPS millimetres")
    return point  # type: ignore[return-value]


def _optional_bool(value: Any, name: str) -> Optional[bool]:
    if value is None or isinstance(value, bool):
        return value
    raise TumorSegError(f"option {name} must be true, false or unset, got {value!r}")


@dataclass(frozen=True)
class SegmentOptions:
    """The options of one segmentation; ``None`` means "the model's own setting".

    Attributes:
        device: one of :data:`DEVICES` or ``cuda:N``.
        backend: one of :data:`BACKENDS`.
        quality: one of :data:`QUALITIES`, a preset of ``overlap`` and ``tta``; values given
            explicitly win over the preset.
        overlap: sliding-window overlap in [0, 1).
        tta: flip test-time augmentation.
        window_batch: windows per network call (1..256).
        precision: one of :data:`PRECISIONS`.
        postprocess: apply the manifest's postprocessing rules.
        cascade: the ROI cascade (coarse pass first); ``False``: every window.
        skip_background: do not run the windows that lie wholly outside the body (air,
            table); they count as background. ``False``: run every window.
        seeds_lps / background_lps: clicked points (LPS mm): keep the lesions at the seeds,
            drop those marked as background.
    """

    device: str = "auto"
    backend: str = "auto"
    quality: str = "normal"
    overlap: Optional[float] = None
    tta: Optional[bool] = None
    window_batch: Optional[int] = None
    precision: str = "auto"
    postprocess: bool = True
    cascade: Optional[bool] = None
    skip_background: bool = True
    seeds_lps: Tuple[Point, ...] = field(default_factory=tuple)
    background_lps: Tuple[Point, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalized values are set once, here
        set_(self, "device", check_device(self.device))
        set_(self, "backend", _choice(self.backend, BACKENDS, "backend"))
        set_(self, "precision", _choice(self.precision, PRECISIONS, "precision"))
        set_(self, "quality", _choice(self.quality, QUALITIES, "quality"))
        if self.overlap is not None:
            if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)) \
                    or not 0.0 <= float(self.overlap) < 1.0:
                raise TumorSegError(f"overlap must be a number in [0, 1), got {self.overlap!r}; try 0.5")
            set_(self, "overlap", float(self.overlap))
        set_(self, "tta", _optional_bool(self.tta, "tta"))
        set_(self, "cascade", _optional_bool(self.cascade, "cascade"))
        if not isinstance(self.postprocess, bool):
            raise TumorSegError(f"option postprocess must be true or false, got {self.postprocess!r}")
        if not isinstance(self.skip_background, bool):
            raise TumorSegError(f"option skip_background must be true or false, got {self.skip_background!r}")
        if self.window_batch is not None:
            if isinstance(self.window_batch, bool) or not isinstance(self.window_batch, int) \
                    or not 1 <= self.window_batch <= MAX_WINDOW_BATCH:
                raise TumorSegError(f"window batch must be a whole number from 1 to {MAX_WINDOW_BATCH}, "
                                    f"got {self.window_batch!r}")
        for name in ("seeds_lps", "background_lps"):
            points = getattr(self, name) or ()
            if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
                raise TumorSegError(f"option {name} must be a list of X, Y, Z points")
            set_(self, name, tuple(_point(p, name) for p in points))

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        """Every option's name, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "SegmentOptions":
        """Options from keyword arguments or a worker request's ``options`` object.

        An unknown name is a TumorSegError listing the known ones.
        """
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise TumorSegError(f"unknown segment option(s) {', '.join(unknown)}; known: {', '.join(cls.names())}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "SegmentOptions":
        """A copy with ``changes`` applied (validated like the original)."""
        return SegmentOptions.from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (the worker request's ``options``)."""
        out = dataclasses.asdict(self)
        out["seeds_lps"] = [list(p) for p in self.seeds_lps]
        out["background_lps"] = [list(p) for p in self.background_lps]
        return out

    @property
    def window_overlap(self) -> Optional[float]:
        """The overlap to run with: the explicit one, else the quality preset's, else None (the model's)."""
        if self.overlap is not None:
            return self.overlap
        return _QUALITY_PRESETS[self.quality].get("overlap")

    @property
    def use_tta(self) -> bool:
        """Whether to run flip test-time augmentation: the explicit choice, else the quality preset's."""
        if self.tta is not None:
            return self.tta
        return bool(_QUALITY_PRESETS[self.quality].get("tta", False))


#: The ROI cascade as a three-way choice (Slicer's combo box): the model's default, on, off.
CASCADE_CHOICES = ("auto", "on", "off")


def cascade_from_choice(choice: str) -> Optional[bool]:
    """``"auto"`` -> None (the model's default), ``"on"`` -> True, ``"off"`` -> False."""
    return {"auto": None, "on": True, "off": False}[_choice(choice, CASCADE_CHOICES, "cascade choice")]
