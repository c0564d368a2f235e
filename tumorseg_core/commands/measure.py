"""Measure each lesion of a segmentation: volume, RECIST diameters, 3D diameter, shape, intensity, PET SUV.

Prints a table on stdout unless --csv or --json is given. Every length and point is in
physical space (mm, LPS); see README.md, "Measure a segmentation", for the columns.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("seg", metavar="SEG",
                        help="the label map to measure: .seg.nrrd (segment names from its header), .nii.gz, "
                             ".nii, .nrrd or .mha (0 is background), or a DICOM SEG of the image's series")
    parser.add_argument("--image", required=True, metavar="IMAGE",
                        help="the image on the label map's grid whose intensities are summarised (HU on CT): "
                             "NIfTI, NRRD, MHA or a DICOM folder (required)")
    parser.add_argument("--pet", default=None, metavar="PET",
                        help="a PET image on the same grid for SUVmax/SUVpeak/MTV/TLG: a DICOM folder or file "
                             "(SUV factor from its headers) or an image file with --suv-factor (default: none)")
    parser.add_argument("--suv-factor", type=float, default=None, metavar="F",
                        help="multiply the PET voxels by F to get SUV, instead of reading the DICOM headers "
                             "(default: from the headers)")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="write the table as CSV, one row per lesion (default: not written)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the table and per-segment totals as JSON (default: not written)")
    parser.add_argument("--png", default=None, metavar="FILE",
                        help="write a picture: each lesion's RECIST slice with its outline and both diameters "
                             "(default: not written)")


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.dicom.labels import read_label_file
    from tumorseg_core.imaging.io import read_image
    from tumorseg_core.measurement.compute import measure
    from tumorseg_core.measurement.picture import render_png
    from tumorseg_core.measurement.table import check_table_path, write_bytes

    # Every output is checked before any work, and everything is computed before anything is written.
    for path, extensions in ((args.csv, (".csv",)), (args.json, (".json",)), (args.png, (".png",))):
        if path is not None:
            check_table_path(path, extensions)
    if args.suv_factor is not None and args.pet is None:
        raise InputError("--suv-factor needs --pet; give the PET image too")
    image = read_image(args.image)
    # A DICOM SEG is read onto the image's grid; another label map must lie on it (measure checks).
    labels, segments = read_label_file(args.seg, reference=image, resample=False)
    table = measure(labels, image=image, pet=args.pet, suv_factor=args.suv_factor, segments=segments or None)
    picture = render_png(table, labels, image) if args.png else None
    if args.csv:
        table.to_csv(args.csv)
        logger.info("wrote %s", args.csv)
    if args.json:
        table.to_json(args.json)
        logger.info("wrote %s", args.json)
    if picture is not None:
        write_bytes(args.png, ".png", picture)
        logger.info("wrote %s", args.png)
    if not (args.csv or args.json):
        sys.stdout.write(table.to_text())
    return 0
