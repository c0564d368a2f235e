"""The benchmark scripts' measured code paths run (no timing: they are only smoke-tested here).

``benchmarks/`` is not imported by the package, so an engine change that breaks a script
would otherwise go unnoticed until the next benchmark session.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

pytest.importorskip("monai")

from model_factory import make_tiny_package  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def oblique_image(tmp_path, make_sphere_image, rotation_direction):
    image, _ = make_sphere_image(radius_mm=6.0, noise=2.0, size_xyz=(30, 26, 14), spacing=(0.9, 1.1, 2.5),
                                 origin=(4.0, -7.0, 12.0), direction=rotation_direction("z", 25.0))
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, image


def test_cpu_vs_monai_sides_give_labels_on_the_input_grid(tmp_path, oblique_image):
    bench = _load("cpu_vs_monai")
    package = str(make_tiny_package(tmp_path / "pkg", postprocessing=[{"label": 1, "min_volume_mm3": 5.0}]))
    path, image = oblique_image
    outs = {}
    for side, run in (("baseline", bench.run_baseline), ("tumorseg", lambda *a: bench.run_tumorseg(*a, None))):
        outs[side] = tmp_path / f"{side}.nii.gz"
        assert run(str(path), package, str(outs[side])) > 0
        result = sitk.ReadImage(str(outs[side]))
        assert result.GetSize() == image.GetSize() and result.GetDirection() == pytest.approx(image.GetDirection())
    # Same window grid and Gaussian on both sides: the same labels.
    assert bench.dice(str(outs["baseline"]), str(outs["tumorseg"])) == pytest.approx(1.0)


def test_stage_breakdown_reports_every_stage(tmp_path, monkeypatch, capsys):
    bench = _load("stage_breakdown")
    package = str(make_tiny_package(tmp_path / "pkg"))
    monkeypatch.setitem(bench.CASES, "mri160", ((24, 24, 16), (2.0, 2.0, 2.0), "mri", 3))  # a small phantom
    bench.main(["--case", "mri160", "--model", package, "--backend", "torch", "--json", "--work", str(tmp_path)])
    report = capsys.readouterr().out
    for stage in ("read", "resample+normalize", "network+stitching", "postprocess", "labels to input grid"):
        assert stage in report
    assert float(report.split('"total_s": ')[1].split("}")[0]) > 0


def test_make_eval_phantoms_writes_pairs_on_the_requested_grid(tmp_path):
    bench = _load("make_eval_phantoms")
    assert bench.main([str(tmp_path), "-n", "2", "--first-seed", "7", "--size", "40", "36", "24",
                       "--spacing", "2", "2", "3"]) == 0
    for name in ("case_00", "case_01"):
        image = sitk.ReadImage(str(tmp_path / "images" / f"{name}.nii.gz"))
        truth = sitk.ReadImage(str(tmp_path / "labels" / f"{name}.nii.gz"))
        assert image.GetSize() == truth.GetSize() == (40, 36, 24)
        assert image.GetSpacing() == pytest.approx((2.0, 2.0, 3.0))
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path / "x"), "--size", "40", "36", "24"])


def test_distillation_set_and_attach_cascade_make_a_package_whose_cascade_runs(tmp_path, monkeypatch,
                                                                               oblique_image):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    fine = make_tiny_package(tmp_path / "fine")
    distill = _load("make_distillation_set")
    assert distill.main([str(tmp_path / "set"), "-n", "2", "--model", str(fine), "--max-size", "24"]) == 0
    for image in sorted((tmp_path / "set" / "images").iterdir()):
        label = sitk.ReadImage(str(tmp_path / "set" / "labels" / image.name))
        assert label.GetSize() == sitk.ReadImage(str(image)).GetSize()  # the model's labels, on the image grid
    spacing = json.loads((fine / "manifest.json").read_text())["spacing"]
    coarse = make_tiny_package(tmp_path / "coarse", seed=1, spacing=[2 * s for s in spacing])
    attach = _load("attach_cascade")
    assert attach.main([str(fine), str(coarse), "-o", str(tmp_path / "both"), "--threshold", "0.2"]) == 0
    from tumorseg_core.package import open_package
    from tumorseg_core.pipeline import Segmenter

    package = open_package(tmp_path / "both")
    spec = package.manifest.cascade
    assert (spec.factor, spec.threshold, spec.default) == (2.0, 0.2, True)
    assert [p.name for p in package.weight_files] == ["fold0.safetensors"]
    path, _ = oblique_image
    image = sitk.ReadImage(str(path))  # the file's grid (NIfTI stores the direction in float32)
    result = Segmenter(package, device="cpu", backend="torch").segment([str(path)])
    assert result.GetSize() == image.GetSize() and result.GetDirection() == image.GetDirection()
    assert result.GetOrigin() == image.GetOrigin() and result.GetSpacing() == image.GetSpacing()
