"""Segment a tumor without the GUI, with the same Logic the module uses.

In the Slicer application (the TumorSeg extension installed)::

    Slicer --no-main-window --python-script Testing/slicer/headless_example.py -- input.nii.gz out.seg.nrrd

With plain Python and the ``slicer-core`` wheel (MRML without the application)::

    python Testing/slicer/headless_example.py input.nii.gz out.seg.nrrd [--model NAME_OR_PATH] [--device cpu]

Several input images are the model's channels, in the order its manifest names them
(e.g. ``t1c.nii.gz flair.nii.gz out.seg.nrrd``); the last path is the output. A user
error prints one ``error:`` line and exits with code 2, writing nothing.
"""

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("tumorseg.headless")

QUALITY_OPTIONS = {"fast": {"overlap": 0.25, "tta": False}, "normal": {"overlap": 0.5}, "tta": {"overlap": 0.5, "tta": True}}


def _ensure_module_on_path() -> None:
    """Inside Slicer the module folder is on sys.path; from a source checkout add it."""
    module_dir = Path(__file__).resolve().parents[2] / "TumorSegmentation"
    if module_dir.is_dir() and str(module_dir) not in sys.path:
        sys.path.insert(0, str(module_dir))


def _app():
    import slicer

    return getattr(slicer, "app", None)


def new_scene():
    """Slicer's scene in the application; a fresh one (with segmentation converters) headless."""
    import slicer

    if _app() is not None:
        return slicer.mrmlScene
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    return slicer.vtkMRMLScene()


def load_volume(scene, path: Path):
    """A scalar volume node with the file's geometry (oblique directions kept)."""
    import slicer

    if _app() is not None:
        return slicer.util.loadVolume(str(path), {"show": False})
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"could not read the image {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def save_segmentation(scene, node, path: Path) -> None:
    import slicer

    if _app() is not None:
        if not slicer.util.saveNode(node, str(path)):
            raise OSError(f"could not write {path}")
        return
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise OSError(f"could not write {path}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Segment tumors headless with TumorSegmentationLogic.")
    parser.add_argument("paths", nargs="+", help="input image(s) then the output .seg.nrrd")
    parser.add_argument("--model", default="default", help="installed model name or package path")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quality", default="normal", choices=sorted(QUALITY_OPTIONS))
    argv = list(argv)
    if argv[:1] == ["--"]:  # the separator of `Slicer ... --python-script script.py -- ARGS`
        argv = argv[1:]
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one input image and the output path")
    return args


def run(argv) -> int:
    args = parse_args(argv)
    *inputs, output = [Path(p) for p in args.paths]
    if not output.name.endswith(".seg.nrrd"):
        raise ValueError(f"the output must be a .seg.nrrd file, got {output.name}")
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise ValueError(f"input image not found: {', '.join(missing)}")

    _ensure_module_on_path()
    from TumorSegmentationLib import TumorSegmentationLogic

    scene = new_scene()
    volumes = [load_volume(scene, path) for path in inputs]
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", output.name[: -len(".seg.nrrd")])
    last = {"percent": -10}

    def progress(fraction: float, message: str) -> None:
        percent = int(100 * fraction)
        if percent >= last["percent"] + 10 or fraction >= 1.0:
            last["percent"] = percent
            logger.info("%3d%% %s", percent, message)

    logic = TumorSegmentationLogic()
    try:
        logic.process(volumes, segmentation, model=args.model, device=args.device, waitForCompletion=True,
                      progressCallback=progress, options=QUALITY_OPTIONS[args.quality])
    finally:
        logic.shutdown()
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    output.parent.mkdir(parents=True, exist_ok=True)
    save_segmentation(scene, segmentation, output)
    logger.info("wrote %s with segments: %s", output, ", ".join(names) or "(none)")
    return 0


def main(argv) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from tumorseg_core.errors import TumorSegError
    except ImportError:
        _ensure_module_on_path()  # inside Slicer tumorseg_core sits in the module folder
        from tumorseg_core.errors import TumorSegError
    try:
        return run(argv)
    except (TumorSegError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 2


if __name__ == "__main__":
    status = main(sys.argv[1:])
    try:
        import slicer

        application = getattr(slicer, "app", None)
    except ImportError:
        application = None
    if application is not None:
        slicer.util.exit(status)  # --python-script would otherwise leave Slicer running
    else:
        sys.exit(status)
