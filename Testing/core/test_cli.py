"""The tumorseg command line: argument handling and one-line errors (no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tumorseg_core import cli
from tumorseg_core.commands.segment import parse_point


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tumorseg_core", *args], capture_output=True, encoding="utf-8",
                          cwd=cwd, timeout=300)


def test_negative_seed_values_are_joined_to_their_option():
    argv = ["segment", "a.nii", "--seed", "-48,43,6", "--background", "-1.5,-2,-3e", "-o", "x.nii"]
    joined = cli._join_negative_values(argv)
    assert "--seed=-48,43,6" in joined
    # Not a number list: left for argparse to complain about.
    assert "--background" in joined and "-1.5,-2,-3e" in joined


def test_parse_point_accepts_lps_triples_and_refuses_others():
    assert parse_point("-48,43.5,6") == (-48.0, 43.5, 6.0)
    for bad in ("1,2", "a,b,c", "1,2,3,4"):
        with pytest.raises(Exception, match="X,Y,Z"):
            parse_point(bad)


def test_parser_accepts_plain_negative_seed_form():
    parser = cli.build_parser()
    args = parser.parse_args(cli._join_negative_values(["segment", "img.nii.gz", "--seed", "-48,43,6", "-o", "o.nii"]))
    assert args.seed == ["-48,43,6"]


def test_unknown_option_is_one_error_line_with_exit_2(tmp_path):
    result = run_cli("segment", "x.nii.gz", "-o", str(tmp_path / "o.nii.gz"), "--bogus")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")


def test_bad_output_extension_refused_before_work(tmp_path):
    image = tmp_path / "missing.nii.gz"
    result = run_cli("segment", str(image), "-o", str(tmp_path / "out.png"))
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and ".seg.nrrd" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_missing_output_folder_refused(tmp_path):
    result = run_cli("segment", "x.nii.gz", "-o", str(tmp_path / "nope" / "out.nii.gz"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_info_json_reports_versions_and_devices():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["packages"]["SimpleITK"] != "not installed"
    assert "devices" in report and report["cpu_count"] >= 1


def test_train_data_flag_replaces_the_configs_data(tmp_path, monkeypatch):
    """`tumorseg train CONFIG --data DIR`: a config without data (the coarse cascade network's) gets it here."""
    from tumorseg_core.commands.train import _source_config, overrides_from_args
    from tumorseg_core.training.config import check_config, merge_config

    config = tmp_path / "coarse.json"
    config.write_text(json.dumps({"spacing": [3.0, 3.0, 3.0]}))
    monkeypatch.chdir(tmp_path)
    parser = cli.build_parser()
    args = parser.parse_args(["train", str(config), "--data", "distill", "-o", "out"])
    merged = merge_config(_source_config(args.source), overrides_from_args(args))
    assert merged["data"] == str((tmp_path / "distill").resolve()) and merged["spacing"] == [3.0, 3.0, 3.0]
    check_config(merged)
    args = parser.parse_args(["train", str(config), "--data", "synthetic:4", "-o", "out"])
    assert overrides_from_args(args)["data"] == "synthetic:4"
    with pytest.raises(Exception, match="no training data"):
        check_config(merge_config(_source_config(str(config)), {}))


def test_train_hard_negatives_flag_sets_the_share_and_keeps_the_configs_mining_model(tmp_path):
    from tumorseg_core.commands.train import config_from_args

    parser = cli.build_parser()
    config = tmp_path / "tune.json"
    config.write_text(json.dumps({"data": "synthetic:4", "hard_negatives": {"model": "/m", "fraction": 0.2}}))
    args = parser.parse_args(["train", str(config), "-o", "out", "--hard-negatives", "0.5"])
    assert config_from_args(args)["hard_negatives"] == {"model": "/m", "fraction": 0.5}
    assert config_from_args(parser.parse_args(["train", str(config), "-o", "out"]))["hard_negatives"]["fraction"] == 0.2
    args = parser.parse_args(["train", "synthetic:4", "-o", "out", "--init-weights", "default", "--hard-negatives", "1"])
    assert config_from_args(args)["hard_negatives"] == {"fraction": 1.0}
