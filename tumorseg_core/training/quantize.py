"""``tumorseg quantize``: a model package plus its INT8 networks, checked against float32 first.

For TumorSeg's 3D sliding-window packages the steps are below. A 2.5D model (``unet25d``)
quantizes its slice-mode network instead: calibration on the tiles slice mode cuts, the
check on label maps segmented by axial slices (:mod:`~tumorseg_core.training.quantize_slices`);
the steps 3 to 5 are the same.

1. Calibration cases: ``synthetic:N`` phantoms on the model's grid (its modality, about
   1.5 windows per side) or the first cases of a dataset ``tumorseg train`` reads
   (:func:`~tumorseg_core.training.datasets.load_dataset`), each preprocessed exactly as
   inference does (``Segmenter.prepare``: read, align, resample to the model grid,
   normalize) into a (C, z, y, x) float32 volume.
2. Calibration windows: the sliding-window grid of each volume (the model's overlap),
   spread evenly, at most ``max_windows`` in all.
3. Each ensemble network's float32 ONNX export (the export cache the CPU backends use) is
   quantized (:mod:`~tumorseg_core.inference.backends.quantize_graph`).
4. Accuracy: every calibration case is segmented on the model grid with float32 and with
   INT8 (the backend ``auto`` picks for INT8). The agreement is the Dice of the INT8 vs
   the float32 labels over the voxels of all cases together (mean over the output's label
   values; both empty: 1); pooled, because a case whose only foreground is a blob of a
   hundred voxels would otherwise weigh as much as the rest. The drop is
   ``1 - agreement``. Over ``max_dice_drop`` every convolution of the two finest resolution
   stages (:func:`~tumorseg_core.inference.backends.quantize_graph.stage_nodes`: a U-Net's
   encoder and decoder levels 0 and 1, their up-convolutions and the output convolution) is
   kept in float32 and the check runs again; still over, nothing is written (InputError
   saying by how much). The per-case Dice is reported too. (On the shipped default model
   keeping only the first and last convolution, or only level 0, missed 0.98 on the
   benchmark phantoms; levels 0 and 1 reached it: benchmarks/README.md.)
5. The package is written (``modelpkg/derive.py``) with the graphs as ``fold<i>.int8.onnx``
   files and the manifest's ``int8`` section, and verified.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tumorseg_core.errors import InputError
from tumorseg_core.evaluation.metrics import dice
from tumorseg_core.inference.backends import LazyNetworks
from tumorseg_core.inference.backends.export import ExportSpec, ensure_onnx
from tumorseg_core.inference.backends.quantize_graph import (
    conv_nodes,
    quantize_graph,
    quantizer_name,
    stage_nodes,
)
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.inference.roi_windows import windows_to_run
from tumorseg_core.inference.segmenter import Segmenter
from tumorseg_core.inference.slice_mode import ARCHITECTURE as SLICE_MODE_ARCHITECTURE
from tumorseg_core.inference.sliding_window import pad_to_window
from tumorseg_core.modelpkg.derive import check_package_output, write_derived_package
from tumorseg_core.modelpkg.package import ModelPackage, open_package

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION = "synthetic:8"
DEFAULT_MAX_DICE_DROP = 0.02
MAX_CALIBRATION_CASES = 64
_SYNTHETIC = re.compile(r"^synthetic:(\d+)$")

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_package` did.

    Attributes:
        output: the new package folder.
        dice_to_fp32: the INT8-vs-float32 label Dice over all calibration cases' voxels (model grid).
        case_dice: that Dice per case.
        windows: calibration windows used per network.
        float_nodes: convolutions kept in float32 (empty unless the all-INT8 try missed the budget).
        backend: the backend that ran the INT8 check (``openvino`` or ``onnxruntime``).
    """

    output: Path
    dice_to_fp32: float
    case_dice: tuple[float, ...]
    windows: int
    float_nodes: tuple[str, ...] = field(default_factory=tuple)
    backend: str = ""


def parse_calibration(text: str) -> tuple[str, Any]:
    """``("synthetic", N)`` or ``("dataset", Path)`` for a ``--calibration`` value; InputError if neither."""
    value = str(text).strip()
    match = _SYNTHETIC.match(value)
    if match:
        n = int(match.group(1))
        if not 1 <= n <= MAX_CALIBRATION_CASES:
            raise InputError(f"--calibration {value}: give 1 to {MAX_CALIBRATION_CASES} synthetic cases")
        return "synthetic", n
    if value.startswith("synthetic"):
        raise InputError(f"--calibration {value!r} is not synthetic:N; e.g. synthetic:8")
    path = Path(value).expanduser()
    if not path.exists():
        raise InputError(f"calibration data {path} not found; give a dataset folder, dataset.json, CSV or synthetic:N")
    return "dataset", path


def _phantom_modalities(modalities: Sequence[str], index: int) -> list[str]:
    """The synthetic modality (mri, ct, pet) of each model input for phantom ``index``."""
    out = []
    for name in modalities:
        text = name.lower()
        has = [m for m, keys in (("ct", ("ct",)), ("mri", ("mr", "t1", "t2", "flair")), ("pet", ("pet", "suv")))
               if any(k in text for k in keys)]
        if len(modalities) == 1 and len(has) != 1:
            has = ["mri", "ct"]  # "CT or MRI", or a name that says neither: alternate
        if not has:
            raise InputError(f"cannot make synthetic phantoms for the model input {name!r}; "
                             "give --calibration with a dataset of such images")
        out.append(has[index % len(has)])
    return out


def calibration_images(package: ModelPackage, calibration: str, seed: int = 0) -> list[list[Any]]:
    """One list of input images (SimpleITK images or paths, model input order) per calibration case.

    Phantoms are about 1.5 windows per side; a 2.5D model's (whose patch is a thin stack) are
    1.5 tiles along every axis, so that slice mode has slices to walk through."""
    kind, value = parse_calibration(calibration)
    manifest = package.manifest
    if kind == "dataset":
        from tumorseg_core.training.datasets import load_dataset

        cases = load_dataset(value).cases[:MAX_CALIBRATION_CASES]
        if not cases:
            raise InputError(f"calibration data {value} holds no cases; give a dataset with images")
        return [list(case.images) for case in cases]
    from tumorseg_core.synthetic import make_multimodal_phantom, make_phantom

    patch = list(manifest.patch_size_xyz)
    if manifest.architecture == SLICE_MODE_ARCHITECTURE:
        patch[2] = max(patch[0], patch[1])
    size = [int(math.ceil(1.5 * p)) for p in patch]  # 1.5 windows (tiles) per side
    out = []
    for i in range(int(value)):
        mods = _phantom_modalities(manifest.input_modalities, i)
        grid = {"size_xyz": size, "spacing_xyz": manifest.spacing_xyz}
        if len(mods) == 1:
            out.append([make_phantom(seed + i, modality=mods[0], **grid).image])
        else:
            out.append(list(make_multimodal_phantom(seed + i, mods, **grid).images))
    return out


def calibration_windows(volumes: Sequence[np.ndarray], patch_zyx: Sequence[int], overlap: float,
                        max_windows: int) -> list[np.ndarray]:
    """Up to ``max_windows`` (1, C, z, y, x) windows of the (C, z, y, x) volumes, spread evenly over each."""
    quota = max(1, max_windows // max(1, len(volumes)))
    pz, py, px = (int(p) for p in patch_zyx)
    windows = []
    for volume in volumes:
        padded, _ = pad_to_window(volume, patch_zyx)
        starts = windows_to_run(padded.shape[1:], patch_zyx, overlap)
        picks = np.unique(np.linspace(0, len(starts) - 1, min(quota, len(starts))).round().astype(int))
        for k in picks:
            z, y, x = starts[k]
            windows.append(np.ascontiguousarray(padded[None, :, z:z + pz, y:y + py, x:x + px], dtype=np.float32))
    return windows[:max_windows]


def label_agreement(a: np.ndarray, b: np.ndarray, values: Sequence[int]) -> float:
    """Mean over label ``values`` of the Dice of ``a == v`` vs ``b == v``, (z, y, x) label maps (both empty: 1)."""
    return float(np.mean([dice(a == v, b == v) for v in values]))


def pooled_agreement(labels: Sequence[np.ndarray], reference: Sequence[np.ndarray], values: Sequence[int]) -> float:
    """:func:`label_agreement` over the voxels of all cases together ((z, y, x) label maps, pairwise)."""
    return label_agreement(np.concatenate([np.ravel(a) for a in labels]),
                           np.concatenate([np.ravel(b) for b in reference]), values)


class WindowCalibration:
    """Calibration windows, float32 graphs and label maps of a 3D sliding-window package (model grid).

    Args:
        package: an opened package; ``cases``: one list of input images per calibration case;
        max_windows: most windows in all.
    """

    def __init__(self, package: ModelPackage, cases: Sequence[Sequence[Any]], max_windows: int) -> None:
        manifest = package.manifest
        self.package = package
        segmenter = Segmenter(package, "cpu")
        self.volumes = [segmenter.prepare(images)[0] for images in cases]
        overlap = float(manifest.inference.get("overlap", 0.5))
        self.windows = calibration_windows(self.volumes, manifest.patch_size_zyx, overlap, max_windows)
        self.graphs_fp32: list[Path] = []
        for weights in package.weight_files:
            spec = ExportSpec(lambda w=weights: _load_one(package, w), f"{package.sha256}:{weights.name}",
                              tuple(manifest.patch_size_zyx), manifest.num_inputs)
            self.graphs_fp32.append(ensure_onnx(spec) / "model.onnx")

    def labels(self, graphs: Optional[Sequence[bytes]] = None) -> tuple[list[np.ndarray], str]:
        """``(label map (z, y, x) uint8 per case on the model grid, backend used)``: float32 or INT8 ``graphs``."""
        package = self.package
        if graphs is None:
            predictor = Predictor.from_package(package, device="cpu", backend="auto", precision="fp32")
        else:
            settings = package.manifest.predictor_settings()
            networks = LazyNetworks(lambda: package.load_networks("cpu"), len(package.weight_files))
            predictor = Predictor(networks, device="cpu", backend="auto",
                                  int8_graphs=[lambda d=d: d for d in graphs], **settings)
        return [predictor.predict(volume) for volume in self.volumes], predictor.backend


def quantize_package(
    model: Any,
    out_dir: Path | str,
    calibration: str = DEFAULT_CALIBRATION,
    max_dice_drop: float = DEFAULT_MAX_DICE_DROP,
    overwrite: bool = False,
    max_windows: int = 32,
    progress: Optional[ProgressFn] = None,
) -> QuantizeReport:
    """Quantize ``model`` (a package name, path or ``ModelPackage``) into ``out_dir``; see the module docstring."""
    if isinstance(max_dice_drop, bool) or not isinstance(max_dice_drop, (int, float)) \
            or not 0 <= float(max_dice_drop) <= 1:
        raise InputError(f"--max-dice-drop must be a number from 0 to 1, got {max_dice_drop!r}; e.g. 0.02")
    if int(max_windows) < 1:
        raise InputError(f"max_windows must be at least 1, got {max_windows}")
    package = model if isinstance(model, ModelPackage) else open_package(model)
    manifest = package.manifest
    if manifest.nnunet is not None or manifest.monai is not None or manifest.architecture == "onnx":
        raise InputError(f"model '{manifest.name}' is an imported nnU-Net, MONAI or ONNX model; "
                         "tumorseg quantize handles TumorSeg's own sliding-window and 2.5D packages")
    out = check_package_output(Path(out_dir), package, overwrite)  # before the work
    parse_calibration(calibration)
    say = progress or (lambda message: logger.info("%s", message))

    say(f"preparing calibration cases ({calibration})")
    cases = calibration_images(package, calibration)
    if manifest.architecture == SLICE_MODE_ARCHITECTURE:
        from tumorseg_core.training.quantize_slices import SliceCalibration

        job: Any = SliceCalibration(package, cases, int(max_windows))
        unit = "tile"
    else:
        job = WindowCalibration(package, cases, int(max_windows))
        unit = "window"
    windows, graphs_fp32 = job.windows, job.graphs_fp32
    say(f"{len(cases)} calibration case(s), {len(windows)} {unit}(s)")

    say("float32 labels of the calibration cases")
    reference, _ = job.labels()
    values = [s.value for s in manifest.segments]

    float_nodes: tuple[str, ...] = ()
    for attempt in range(2):
        if attempt:
            float_nodes = tuple(sorted({n for g in graphs_fp32 for n in stage_nodes(g, levels=2)}))
            say(f"keeping the {len(float_nodes)} convolution(s) of the two finest resolution stages in float32 "
                f"({', '.join(float_nodes)}) and trying again")
        say("quantizing" + (f" {len(graphs_fp32)} networks" if len(graphs_fp32) > 1 else ""))
        graphs = [quantize_graph(g, windows, [n for n in float_nodes if n in conv_nodes(g)]) for g in graphs_fp32]
        labels, backend = job.labels(graphs)
        case_dice = tuple(label_agreement(a, r, values) for a, r in zip(labels, reference))
        agreement = pooled_agreement(labels, reference, values)
        del labels
        say(f"INT8 vs float32 label Dice on {len(cases)} case(s): {agreement:.4f} (per case: mean "
            f"{np.mean(case_dice):.4f}, min {min(case_dice):.4f}; {backend})")
        if 1.0 - agreement <= float(max_dice_drop) + 1e-12:
            break
    else:
        raise InputError(f"INT8 labels agree with float32 at Dice {agreement:.4f} on {len(cases)} calibration "
                         f"case(s) (drop {1 - agreement:.4f} > --max-dice-drop {max_dice_drop}); nothing written; "
                         "calibrate on more or other cases, allow a larger drop, or keep the float32 model")

    names = [f"{w.stem}.int8.onnx" for w in package.weight_files]
    old = manifest.int8.networks if manifest.int8 is not None else ()
    section = {"networks": names, "window": list(manifest.patch_size_xyz), "quantizer": quantizer_name(),
               "calibration": str(calibration), "dice_to_fp32": round(agreement, 6),
               "max_dice_drop": float(max_dice_drop)}
    write_derived_package(package, out, dict(zip(names, graphs)), {"int8": section}, drop_files=old,
                          overwrite=overwrite)
    open_package(out)
    say(f"wrote {out}")
    return QuantizeReport(out, agreement, case_dice, len(windows), float_nodes, backend)


def _load_one(package: ModelPackage, weights: Path) -> Any:
    """The float32 network of one weight file, on the CPU (only when its ONNX export is not cached)."""
    return package.load_networks("cpu")[package.weight_files.index(weights)]
