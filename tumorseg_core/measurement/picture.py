"""A PNG of the measured lesions: per lesion, its RECIST slice with the outline and both diameters.

One panel per lesion (a grid of panels in one PNG): the image's slice at the lesion's
RECIST level (the image grid's slice plane, see :mod:`.diameters`), cropped around the
lesion with a margin and shown with square pixels, the lesion's outline, the long axis
(red) and the short axis (yellow) with their lengths in mm. The slice is shown the way a
radiologist looks at it where the grid allows: for an axial grid the patient's left on
the right, anterior at the top (columns and rows are flipped to achieve that; never
rotated). Pillow draws it; the file is written atomically.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.measurement.labelmap import on_image_grid
from tumorseg_core.measurement.lesions import find_lesions
from tumorseg_core.measurement.physical import Physical
from tumorseg_core.measurement.table import LesionMeasurement, MeasurementTable, check_table_path, write_bytes

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
PANEL = 320  # panel width and height of the picture area, pixels
HEADER = 22  # caption band above each panel, pixels
MAX_PANELS = 64
MARGIN_MM = 12.0
OUTLINE_RGB = (60, 220, 90)
LONG_RGB = (240, 60, 40)
SHORT_RGB = (250, 210, 40)
# Display sign per LPS axis: screen right / down is +L, +P and -S (radiological convention).
_DESIRED_SIGN = np.array([1.0, 1.0, -1.0])


def _flip(axis_vector: np.ndarray) -> bool:
    """Whether an in-plane grid axis runs against the display convention (see _DESIRED_SIGN)."""
    dominant = int(np.argmax(np.abs(axis_vector)))
    return bool(np.sign(axis_vector[dominant]) != _DESIRED_SIGN[dominant])


def _grey(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(values, [1, 99])
    return (np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _panel(row: LesionMeasurement, mask_slice: np.ndarray, image_slice: np.ndarray, physical: Physical,
           font) -> "object":
    """One RGB panel (PIL image, PANEL x PANEL + HEADER) of one lesion."""
    from PIL import Image, ImageDraw

    step = physical.axis_step_mm()  # mm per pixel along x (columns) and y (rows)
    ys, xs = np.nonzero(mask_slice)
    margin = np.ceil(MARGIN_MM / step[:2]).astype(int)
    x0, x1 = max(xs.min() - margin[0], 0), min(xs.max() + margin[0] + 1, mask_slice.shape[1])
    y0, y1 = max(ys.min() - margin[1], 0), min(ys.max() + margin[1] + 1, mask_slice.shape[0])
    width_mm, height_mm = (x1 - x0) * step[0], (y1 - y0) * step[1]
    scale = PANEL / max(width_mm, height_mm)  # display pixels per mm
    w, h = max(int(round(width_mm * scale)), 1), max(int(round(height_mm * scale)), 1)
    grey = Image.fromarray(_grey(image_slice[y0:y1, x0:x1].astype(np.float64))).resize((w, h), Image.BILINEAR)
    mask_up = np.asarray(Image.fromarray(mask_slice[y0:y1, x0:x1].astype(np.uint8) * 255).resize(
        (w, h), Image.NEAREST)) > 0
    rgb = np.repeat(np.asarray(grey)[..., None], 3, axis=2).copy()
    rgb[mask_up & ~ndimage.binary_erosion(mask_up, iterations=2, border_value=0)] = OUTLINE_RGB
    flip_x, flip_y = _flip(physical.matrix[:, 0]), _flip(physical.matrix[:, 1])
    rgb = rgb[::-1 if flip_y else 1, ::-1 if flip_x else 1]
    canvas = Image.new("RGB", (PANEL, PANEL + HEADER), (0, 0, 0))
    left, top = (PANEL - w) // 2, HEADER + (PANEL - h) // 2
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (left, top))
    draw = ImageDraw.Draw(canvas)

    def to_pixel(point_lps: tuple[float, float, float]) -> tuple[float, float]:
        index = np.linalg.solve(physical.matrix, np.asarray(point_lps) - physical.origin)  # (i, j, k)
        px = (index[0] - x0 + 0.5) * step[0] * scale
        py = (index[1] - y0 + 0.5) * step[1] * scale
        return (left + (w - px if flip_x else px), top + (h - py if flip_y else py))

    for ends, color, length in ((row.recist_long_ends_lps, LONG_RGB, row.recist_long_mm),
                                (row.recist_short_ends_lps, SHORT_RGB, row.recist_short_mm)):
        a, b = to_pixel(ends[0]), to_pixel(ends[1])
        draw.line([a, b], fill=color, width=2)
        for x, y in (a, b):
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)
        anchor = max((a, b), key=lambda p: p[0])
        text = f"{length:.1f} mm"
        tx = min(anchor[0] + 5, PANEL - draw.textlength(text, font=font) - 2)
        ty = min(max(anchor[1] - 8, HEADER), PANEL + HEADER - 16)
        draw.text((tx, ty), text, fill=color, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    caption = (f"#{row.lesion_id} {row.segment}  slice {row.recist_slice}  "
               f"{row.recist_long_mm:.1f} x {row.recist_short_mm:.1f} mm  {row.volume_ml:.2f} mL")
    draw.text((4, 3), caption, fill=(255, 255, 255), font=font)
    return canvas


def render_png(table: MeasurementTable, labels: sitk.Image, image: Optional[sitk.Image] = None) -> bytes:
    """The picture of ``table`` (measured on ``labels``, with ``image``) as PNG bytes.

    Without an image the label map itself is shown. An empty table gives one panel saying so.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    if image is not None:
        labels = on_image_grid(labels, image, "image")
    physical = Physical.of(labels)
    labels_zyx = sitk.GetArrayViewFromImage(labels)
    volume = sitk.GetArrayViewFromImage(image) if image is not None else labels_zyx
    masks = {lesion.lesion_id: lesion for lesion in find_lesions(labels_zyx)}
    rows = table.rows[:MAX_PANELS]
    if len(table.rows) > MAX_PANELS:
        logger.warning("the picture shows the first %d of %d lesions", MAX_PANELS, len(table.rows))
    panels = []
    for row in rows:
        lesion = masks[row.lesion_id]
        z = row.recist_slice
        mask_slice = np.zeros(labels_zyx.shape[1:], dtype=bool)
        mask_slice[lesion.box[1:]] = lesion.mask[z - lesion.box[0].start]
        panels.append(_panel(row, mask_slice, np.asarray(volume[z]), physical, font))
    if not panels:
        blank = Image.new("RGB", (PANEL, PANEL // 4), (0, 0, 0))
        ImageDraw.Draw(blank).text((10, 10), "no lesions (the label map is empty)", fill=(255, 255, 255), font=font)
        panels = [blank]
    columns = math.ceil(math.sqrt(len(panels)))
    rows_n = math.ceil(len(panels) / columns)
    pw, ph = panels[0].size
    sheet = Image.new("RGB", (columns * (pw + 4) + 4, rows_n * (ph + 4) + 4), (40, 40, 40))
    for n, panel in enumerate(panels):
        sheet.paste(panel, (4 + (n % columns) * (pw + 4), 4 + (n // columns) * (ph + 4)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(table: MeasurementTable, labels: sitk.Image, image: Optional[sitk.Image], path: PathLike) -> Path:
    """Write :func:`render_png` to ``path`` (``.png``) atomically; returns the path."""
    check_table_path(path, (".png",))
    return write_bytes(path, ".png", render_png(table, labels, image))
