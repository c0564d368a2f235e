"""TumorSeg's interactive session against Slicer's Grow from seeds, with one simulated user.

For every lesion (connected component of the truth) of every case in ``--data`` (the
``tumorseg evaluate --data`` layout: ``images/`` + ``labels/``; the first channel is used),
the simulated user clicks at the lesion's deepest point (the maximum of its distance
transform, in mm), then up to 4 corrective clicks, each at the deepest point of the
largest error region (missed lesion: a foreground click; leak: a background click).
Both methods get the same clicks, placed from their own errors:

* TumorSeg: :class:`tumorseg_core.interactive.InteractiveSession`, one ``add_click`` each;
* Grow from seeds: ``vtkImageGrowCutSegment`` from slicer-core, driven as Slicer's effect
  drives it (a seed label image, 1 = lesion, 2 = background; the seeds' bounding box grown
  by 20 %, at least 3 voxels; seed locality factor 0); each click is a 2 mm sphere of its segment.
  Grow from seeds needs a background segment from the start: it gets the surface of a box
  of +-30 mm around the first click, the background a user paints around a lesion (TumorSeg
  assumes the same implicitly: the border of its working grid is background).

Dice is measured against the one lesion on the image's grid. Prints, per method, the
median / mean Dice after 1..5 interactions, the minimum after 5 and the time per
interaction; ``--json`` writes every number, ``--report`` prints the table of saved ones::

    python benchmarks/interactive_vs_growcut.py --data /tmp/eval20 --json /tmp/interactive.json
    python benchmarks/interactive_vs_growcut.py --data D --shard 0/2 --json a.json &   # side by side
    python benchmarks/interactive_vs_growcut.py --data D --shard 1/2 --json b.json
    python benchmarks/interactive_vs_growcut.py --report a.json b.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLICKS = 5
CLICK_MM = 2.0
BACKGROUND_BOX_MM = 30.0
EXTENT_GROWTH = 0.2  # Slicer's Grow from seeds without a mask
MIN_EXTENT_MARGIN = 3

logger = logging.getLogger("interactive_vs_growcut")


def deepest_point(mask: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    """(z, y, x) index of the voxel of ``mask`` farthest from its outside (mm)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))  # type: ignore[return-value]


def next_click(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]
               ) -> Optional[tuple[tuple[int, int, int], bool]]:
    """The corrective click: deepest point of the largest error region and whether it is foreground."""
    best = None
    for fg, err in ((True, truth & ~pred), (False, pred & ~truth)):
        lab, n = ndimage.label(err)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), lab == k + 1, fg)
    if best is None:
        return None
    return deepest_point(best[1], spacing_zyx), best[2]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def index_to_lps(image: sitk.Image, zyx: Sequence[int]) -> tuple[float, float, float]:
    return image.TransformIndexToPhysicalPoint(tuple(int(v) for v in zyx[::-1]))


class TumorSegUser:
    """TumorSeg's interactive session, one click at a time."""

    name = "TumorSeg"

    def __init__(self, image: sitk.Image) -> None:
        from tumorseg_core.interactive import InteractiveSession

        self.session = InteractiveSession(image)

    def click(self, zyx: Sequence[int], foreground: bool) -> np.ndarray:
        result = self.session.add_click(index_to_lps(self.session.image, zyx), foreground)
        return sitk.GetArrayFromImage(result) > 0


class ClickNetUser(TumorSegUser):
    """TumorSeg's interactive session answered by the click network (:mod:`tumorseg_core.clicknet`)."""

    name = "TumorSegNet"
    folder: Optional[Path] = None  # None: the shipped click network

    def __init__(self, image: sitk.Image) -> None:
        from tumorseg_core.clicknet.session import click_network, interactive_session

        if click_network(self.folder) is None:
            raise SystemExit(f"no click network in {self.folder or 'the shipped folder'}; give --click-model DIR")
        self.session = interactive_session(image, folder=self.folder)


class GrowCutUser:
    """Slicer's Grow from seeds (``vtkImageGrowCutSegment``) with seeds painted as 2 mm spheres."""

    name = "GrowFromSeeds"

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self.array = sitk.GetArrayFromImage(image)
        self.spacing_zyx = np.asarray(image.GetSpacing())[::-1]
        self.seeds = np.zeros(self.array.shape, dtype=np.int16)
        self.started = False

    def _sphere(self, zyx: Sequence[int], radius_mm: float) -> np.ndarray:
        r = np.maximum(np.ceil(radius_mm / self.spacing_zyx).astype(int), 0)
        lo = np.maximum(np.asarray(zyx) - r, 0)
        hi = np.minimum(np.asarray(zyx) + r + 1, self.array.shape)
        out = np.zeros(self.array.shape, dtype=bool)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d2 = (((zz - zyx[0]) * self.spacing_zyx[0]) ** 2 + ((yy - zyx[1]) * self.spacing_zyx[1]) ** 2
              + ((xx - zyx[2]) * self.spacing_zyx[2]) ** 2)
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = d2 <= radius_mm ** 2
        out[tuple(zyx)] = True
        return out

    def _background_box(self, zyx: Sequence[int]) -> np.ndarray:
        r = np.ceil(BACKGROUND_BOX_MM / self.spacing_zyx).astype(int)
        lo = np.maximum(np.asarray(zyx) - r, 0)
        hi = np.minimum(np.asarray(zyx) + r, np.asarray(self.array.shape) - 1)
        box = np.zeros(self.array.shape, dtype=bool)
        box[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
        inner = np.zeros_like(box)
        inner[lo[0] + 1:hi[0], lo[1] + 1:hi[1], lo[2] + 1:hi[2]] = True
        return box & ~inner

    def click(self, zyx: Sequence[int], foreground: bool) -> np.ndarray:
        if not self.started:
            self.seeds[self._background_box(zyx)] = 2
            self.started = True
        self.seeds[self._sphere(zyx, CLICK_MM)] = 1 if foreground else 2
        return grow_from_seeds(self.array, self.seeds, self.spacing_zyx) == 1


def grow_from_seeds(intensity: np.ndarray, seeds: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Slicer's Grow from seeds on (z, y, x) arrays: the label per voxel (0 outside the grown extent)."""
    import vtk
    from slicer import vtkImageGrowCutSegment
    from vtk.util import numpy_support

    idx = np.nonzero(seeds)
    lo = np.array([int(i.min()) for i in idx])
    hi = np.array([int(i.max()) for i in idx])
    margin = np.maximum(MIN_EXTENT_MARGIN, (EXTENT_GROWTH * (hi - lo)).astype(int))
    lo = np.maximum(lo - margin, 0)
    hi = np.minimum(hi + margin, np.asarray(seeds.shape) - 1)
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))

    def to_vtk(arr: np.ndarray, vtk_type: int) -> "vtk.vtkImageData":
        img = vtk.vtkImageData()
        img.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
        img.SetSpacing(float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0]))
        data = numpy_support.numpy_to_vtk(np.ascontiguousarray(arr).ravel(), deep=True, array_type=vtk_type)
        img.GetPointData().SetScalars(data)
        return img

    grow = vtkImageGrowCutSegment()
    grow.SetIntensityVolume(to_vtk(intensity[box].astype(np.float32), vtk.VTK_FLOAT))
    grow.SetSeedLabelVolume(to_vtk(seeds[box].astype(np.int16), vtk.VTK_SHORT))
    grow.SetDistancePenalty(0.0)  # the effect's SeedLocalityFactor, default 0
    grow.Update()
    out_img = grow.GetOutput()
    out = numpy_support.vtk_to_numpy(out_img.GetPointData().GetScalars()).reshape(seeds[box].shape)
    full = np.zeros(seeds.shape, dtype=np.int16)
    full[box] = out
    return full


METHODS = {"TumorSeg": TumorSegUser, "TumorSegNet": ClickNetUser, "GrowFromSeeds": GrowCutUser}


def simulate(make_user: Callable[[sitk.Image], object], image: sitk.Image, truth: np.ndarray,
             clicks: int = CLICKS) -> tuple[list[float], list[float]]:
    """Dice and seconds after each of up to ``clicks`` interactions (the last Dice repeats when perfect)."""
    spacing = np.asarray(image.GetSpacing())[::-1]
    user = make_user(image)
    point, fg = deepest_point(truth, spacing), True
    dices: list[float] = []
    times: list[float] = []
    for _ in range(clicks):
        t0 = time.perf_counter()
        pred = user.click(point, fg)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
        dices.append(dice(pred, truth))
        nxt = next_click(pred, truth, spacing)
        if nxt is None:
            break
        point, fg = nxt
    dices += [dices[-1]] * (clicks - len(dices))
    return dices, times


def lesions(label: np.ndarray) -> list[np.ndarray]:
    lab, n = ndimage.label(label > 0)
    return [lab == k for k in range(1, n + 1)]


def main(argv: Optional[list[str]] = None) -> int:
    from tumorseg_core.evaluation.evaluate import find_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cases", type=int, default=0, help="only the first N cases (0: all)")
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th case from the K-th (run shards side by side)")
    parser.add_argument("--report", type=Path, nargs="+", help="only print the table of these --json files")
    parser.add_argument("--min-ml", type=float, default=0.0,
                        help="leave out truth components smaller than this (mL; fragments of infiltrative lesions)")
    parser.add_argument("--methods", default="TumorSeg,GrowFromSeeds",
                        help=f"comma-separated, of {', '.join(METHODS)} (TumorSegNet: the click network)")
    parser.add_argument("--click-model", type=Path, help="TumorSegNet's click-network folder (default: the shipped one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tumorseg_core").setLevel(logging.WARNING)
    if args.report:
        print(format_table([r for f in args.report for r in json.loads(f.read_text()) if r["volume_ml"] >= args.min_ml]))
        return 0
    if args.data is None:
        parser.error("--data is required")
    k, n = (int(v) for v in args.shard.split("/"))
    images, labels = find_data(args.data)
    cases = sorted(images)[:args.cases or None][k::n]
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    methods = {m: METHODS[m] for m in args.methods.split(",")}
    ClickNetUser.folder = args.click_model
    rows = []
    for case in cases:
        image = sitk.Cast(sitk.ReadImage(str(images[case][0])), sitk.sitkFloat32)
        truth_img = sitk.ReadImage(str(labels[case]))
        truth_all = sitk.GetArrayFromImage(truth_img) > 0
        for k, truth in enumerate(lesions(truth_all)):
            volume = float(truth.sum() * np.prod(image.GetSpacing()))
            if volume < 1000.0 * args.min_ml:
                continue
            row = {"case": case, "lesion": k, "volume_ml": volume / 1000.0}
            for name, make in methods.items():
                d, t = simulate(make, image, truth)
                row[name] = {"dice": d, "seconds": t}
            logger.info("%s lesion %d (%.1f mL): %s", case, k, volume / 1000.0, " | ".join(
                f"{name} " + " ".join(f"{v:.2f}" for v in row[name]["dice"]) for name in methods))
            rows.append(row)
            if args.json:  # after every lesion: a long run that stops keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1))
    if not rows:
        print("no lesion in the data")
        return 1
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table: per method, median / mean Dice after 1..5 interactions, min after 5, seconds per click."""
    head = ("| method | " + " | ".join(f"Dice@{k + 1} median / mean" for k in range(CLICKS))
            + " | min@5 | s per interaction (median / max) |")
    lines = [f"{len(rows)} lesions", "", head, "|---" * (CLICKS + 3) + "|"]
    for name in [m for m in METHODS if rows and m in rows[0]]:
        d = np.array([r[name]["dice"] for r in rows])
        t = np.concatenate([r[name]["seconds"] for r in rows])
        cells = [f"{np.median(d[:, k]):.3f} / {np.mean(d[:, k]):.3f}" for k in range(CLICKS)]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {d[:, -1].min():.3f} | {np.median(t):.2f} / {t.max():.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
