"""tumorseg_core.evaluation.evaluate and the `tumorseg evaluate` command on tiny label maps written here."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.commands import evaluate as evaluate_command
from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.evaluation import evaluate as evaluation
from tumorseg_core.imaging.io import write_labelmap
from tumorseg_core.imaging.segments import SegmentInfo
from tumorseg_core.options import SegmentOptions

SPACING = (1.0, 1.0, 2.0)  # x, y, z
SHAPE = (8, 12, 12)  # z, y, x


def write_labels(path: Path, array: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def cube(z0: int, y0: int, x0: int, n: int = 4, value: int = 1) -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8)
    out[z0:z0 + n, y0:y0 + n, x0:x0 + n] = value
    return out


@pytest.fixture
def folders(tmp_path):
    """pred/ and truth/ with three cases: perfect, half overlap (Dice 0.5), tumor-free."""
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    write_labels(truth / "a.nii.gz", cube(2, 2, 2))
    write_labels(pred / "a.nii.gz", cube(2, 2, 2))
    write_labels(truth / "b.nii.gz", cube(2, 2, 2))
    write_labels(pred / "b.nrrd", cube(2, 2, 4))  # overlap 4*4*2 of 64 -> Dice 0.5
    write_labels(truth / "c.nii", np.zeros(SHAPE))
    write_labels(pred / "c.mha", np.zeros(SHAPE))
    return pred, truth


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_case_name_strips_known_extensions():
    assert evaluation.case_name("x/case_01.seg.nrrd") == "case_01"
    assert evaluation.case_name("case_01.nii.gz") == "case_01"
    assert evaluation.case_name("case.v2.mha") == "case.v2"
    assert evaluation.case_name("notes.txt") is None


def test_evaluate_folders_rows_and_summary(folders):
    rows = evaluation.evaluate_folders(*folders, labels={1: "Tumor"})
    by_case = {r["case"]: r for r in rows}
    assert sorted(by_case) == ["a", "b", "c"]
    assert by_case["a"]["dice"] == 1.0 and by_case["a"]["hd95"] == 0.0
    assert by_case["b"]["dice"] == pytest.approx(0.5)
    assert by_case["b"]["volume_truth_mm3"] == pytest.approx(64 * 2.0)
    # tumor-free case: both empty -> Dice 1, sensitivity undefined
    assert by_case["c"]["dice"] == 1.0 and math.isnan(by_case["c"]["sensitivity"])

    summary = evaluation.summarize(rows)
    tumor = summary[1]
    assert tumor["name"] == "Tumor" and tumor["cases"] == 3
    assert tumor["metrics"]["dice"]["mean"] == pytest.approx((1 + 0.5 + 1) / 3)
    sens = tumor["metrics"]["sensitivity"]
    assert (sens["n"], sens["excluded"]) == (2, 1)
    assert sens["mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert (tumor["lesions_truth"], tumor["lesions_found"], tumor["lesions_fp"]) == (2, 2, 0)
    table = evaluation.format_table(summary)
    assert "Tumor (1)" in table and "0.833 ± 0.289" in table and "[1 excl]" in table
    # Median next to the mean (the bar is a median), lesions by diameter.
    assert tumor["metrics"]["dice"]["median"] == pytest.approx(1.0)
    assert "Dice (median)" in table and table.split("Dice (median)")[1].split()[0] == "1.000"
    by_size = sum(tumor[f"lesions_truth_{b}"] for b in ("lt10mm", "10to20mm", "ge20mm"))
    assert by_size == tumor["lesions_truth"] == 2
    assert "found, diameter < 10 mm" in table


def test_automatic_labels_fill_absent_ones(tmp_path):
    truth = cube(1, 1, 1) + cube(4, 6, 6, n=3, value=2)
    write_labels(tmp_path / "t" / "x.nii.gz", truth)
    write_labels(tmp_path / "p" / "x.nii.gz", truth)
    write_labels(tmp_path / "t" / "y.nii.gz", cube(1, 1, 1))  # no label 2 anywhere in case y
    write_labels(tmp_path / "p" / "y.nii.gz", cube(1, 1, 1))
    rows = evaluation.evaluate_folders(tmp_path / "p", tmp_path / "t")
    assert [(r["case"], r["label"], r["name"]) for r in rows] == [
        ("x", 1, "label_1"), ("x", 2, "label_2"), ("y", 1, "label_1"), ("y", 2, "label_2")]
    assert rows[3]["dice"] == 1.0 and math.isnan(rows[3]["sensitivity"]) and rows[3]["lesions_truth"] == 0


def test_write_csv_round_trip(folders, tmp_path):
    rows = evaluation.evaluate_folders(*folders, labels={1: "Tumor"})
    out = evaluation.write_csv(rows, tmp_path / "out.csv")
    with open(out, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == list(evaluation.CSV_COLUMNS)
    assert [r["case"] for r in read] == ["a", "b", "c"]
    assert float(read[1]["dice"]) == pytest.approx(0.5)
    assert read[2]["sensitivity"] == "nan"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_grid_mismatch_names_the_case(tmp_path):
    write_labels(tmp_path / "t" / "case7.nii.gz", cube(2, 2, 2))
    write_labels(tmp_path / "p" / "case7.nii.gz", cube(2, 2, 2), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="case 'case7'.*grid"):
        evaluation.evaluate_folders(tmp_path / "p", tmp_path / "t")


def test_missing_prediction_and_unreadable_file(folders):
    pred, truth = folders
    (pred / "b.nrrd").unlink()
    with pytest.raises(InputError, match=r"1 truth case\(s\) have no prediction \(b\)"):
        evaluation.evaluate_folders(pred, truth)
    (pred / "b.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="could not read"):
        evaluation.evaluate_folders(pred, truth)


def test_float_probabilities_are_rejected(tmp_path):
    write_labels(tmp_path / "t" / "a.nii.gz", cube(2, 2, 2))
    image = sitk.GetImageFromArray(cube(2, 2, 2).astype(np.float32) * 0.7)
    image.SetSpacing(SPACING)
    (tmp_path / "p").mkdir()
    sitk.WriteImage(image, str(tmp_path / "p" / "a.nii.gz"))
    with pytest.raises(InputError, match="non-integer"):
        evaluation.evaluate_folders(tmp_path / "p", tmp_path / "t")


def test_command_prints_table_and_writes_csv(folders, tmp_path, capsys):
    pred, truth = folders
    out_csv = tmp_path / "res.csv"
    code = evaluate_command.run(parse(["--pred", str(pred), "--truth", str(truth), "--csv", str(out_csv),
                                       "--labels", '{"1": "Tumor"}', "--tolerance-mm", "1"]))
    assert code == 0
    stdout = capsys.readouterr().out
    assert "3 case(s), surface Dice tolerance 1 mm" in stdout
    assert "Tumor (1)" in stdout and "Dice" in stdout and "HD95 (mm)" in stdout
    assert len(out_csv.read_text().strip().splitlines()) == 1 + 3


def test_command_grid_mismatch_raises_user_error(tmp_path):
    write_labels(tmp_path / "t" / "a.nii.gz", cube(2, 2, 2))
    write_labels(tmp_path / "p" / "a.nii.gz", cube(2, 2, 2), origin=(5.0, 0.0, 0.0))
    with pytest.raises(TumorSegError, match="case 'a'"):
        evaluate_command.run(parse(["--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t")]))


def test_cli_exit_code_2_on_grid_mismatch(tmp_path, capsys):
    pytest.importorskip("tumorseg_core.commands.train")  # the CLI imports every command module
    from tumorseg_core.cli import main

    write_labels(tmp_path / "t" / "a.nii.gz", cube(2, 2, 2))
    write_labels(tmp_path / "p" / "a.nii.gz", cube(2, 2, 2), origin=(5.0, 0.0, 0.0))
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t")]) == 2
    assert "error: case 'a'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    ([], "nothing to evaluate"),
    (["--pred", "p"], "go together"),
    (["--pred", "p", "--truth", "t", "--model", "m"], "not both"),
    (["--pred", "p", "--truth", "t", "--tolerance-mm", "-1"], "tolerance"),
    (["--pred", "p", "--truth", "t", "--labels", '{"x": "Tumor"}'], "labels"),
    (["--pred", "p", "--truth", "t", "--labels", "{bad json"], "not valid JSON"),
    (["--pred", "p", "--truth", "t", "--tta"], "--tta needs --model"),
    (["--pred", "p", "--truth", "t", "--no-cascade"], "--cascade/--no-cascade needs --model"),
    (["--pred", "p", "--truth", "t", "--cascade"], "--cascade/--no-cascade needs --model"),
    (["--pred", "p", "--truth", "t", "--no-postprocess"], "--no-postprocess needs --model"),
    (["--pred", "p", "--truth", "t", "--overlap", "0.25"], "--overlap needs --model"),
    (["--pred", "p", "--truth", "t", "--window-batch", "2"], "--window-batch needs --model"),
    (["--pred", "p", "--truth", "t", "--device", "cpu"], "--device needs --model"),
    (["--pred", "p", "--truth", "t", "--quality", "fast"], "--quality needs --model"),
    (["--pred", "p", "--truth", "t", "--backend", "torch"], "--backend needs --model"),
])
def test_command_argument_errors(argv, match):
    with pytest.raises(TumorSegError, match=match):
        evaluate_command.run(parse(argv))


def test_labels_from_json_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"1": "Tumor", "2": "Edema"}')
    assert evaluate_command.parse_labels(str(path)) == {1: "Tumor", 2: "Edema"}


def test_evaluate_model_on_paired_folders(tmp_path, monkeypatch):
    """evaluate_model with a stand-in Segmenter (no network): finds cases, channels, labels."""
    data = tmp_path / "data"
    for case, shift in (("p1", 0), ("p2", 2)):
        for channel in (0, 1):
            write_labels(data / "imagesTr" / f"{case}_{channel:04d}.nii.gz", cube(2, 2, 2) * 50 + channel)
        write_labels(data / "labelsTr" / f"{case}.nii.gz", cube(2, 2, 2 + shift))
    write_labels(data / "imagesTr" / "unlabelled_0000.nii.gz", cube(2, 2, 2))

    calls, written = [], []

    class FakeSegmenter:
        def __init__(self, model, device="auto", **options):
            self.manifest = SimpleNamespace(segments=[SegmentInfo(1, "Tumor", (0.9, 0.3, 0.2))], num_inputs=2)

        def segment(self, images, cancel=None):
            calls.append([Path(p).name for p in images])
            first = sitk.ReadImage(str(images[0]))
            return sitk.Cast(first > 0, sitk.sitkUInt8)

        def segment_to_file(self, images, output, progress=None, cancel=None):
            written.append(Path(output).name)
            labels = self.segment(images, cancel=cancel)
            write_labelmap(labels, output, segments=self.manifest.segments)
            return labels

    import tumorseg_core.inference.segmenter as pipeline

    monkeypatch.setattr(pipeline, "Segmenter", FakeSegmenter)
    save = tmp_path / "saved"
    rows = evaluation.evaluate_model("fake", data, save_dir=save)
    assert calls == [["p1_0000.nii.gz", "p1_0001.nii.gz"], ["p2_0000.nii.gz", "p2_0001.nii.gz"]]
    assert [(r["case"], r["name"]) for r in rows] == [("p1", "Tumor"), ("p2", "Tumor")]
    assert rows[0]["dice"] == 1.0 and rows[1]["dice"] == pytest.approx(0.5)
    assert sorted(p.name for p in save.iterdir()) == ["p1.nii.gz", "p2.nii.gz"]
    assert written == ["p1.nii.gz", "p2.nii.gz"]  # saved predictions are written by the Segmenter
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(save / "p2.nii.gz")))
    np.testing.assert_array_equal(saved, cube(2, 2, 2) > 0)
    calls.clear()
    assert evaluation.evaluate_model("fake", data) == rows  # without save_dir: nothing written
    assert len(calls) == 2 and written == ["p1.nii.gz", "p2.nii.gz"]


def test_command_passes_tta_and_cascade_to_the_segmenter(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_labels(data / "images" / "a.nii.gz", cube(2, 2, 2) * 50)
    write_labels(data / "labels" / "a.nii.gz", cube(2, 2, 2))
    seen = []

    class FakeSegmenter:
        def __init__(self, model, device="auto", **options):
            seen.append(options)
            self.manifest = SimpleNamespace(segments=[SegmentInfo(1, "Tumor", (0.9, 0.3, 0.2))], num_inputs=1)

        def segment(self, images, cancel=None):
            return sitk.Cast(sitk.ReadImage(str(images[0])) > 0, sitk.sitkUInt8)

    import tumorseg_core.inference.segmenter as pipeline

    monkeypatch.setattr(pipeline, "Segmenter", FakeSegmenter)
    assert evaluate_command.run(parse(["--model", "fake", "--data", str(data), "--tta", "--no-cascade"])) == 0
    # every SegmentOptions field but the device (a keyword of its own) reaches the Segmenter
    expected = SegmentOptions(tta=True, cascade=False).to_dict()
    del expected["device"]
    assert seen == [expected]
    assert seen[0]["tta"] is True and seen[0]["cascade"] is False
    assert "1 case(s)" in capsys.readouterr().out
