"""Model packages: round trip, and every refusal (hashes, files, manifest, zip safety, weights)."""

from __future__ import annotations

import ast
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tumorseg_core
import tumorseg_core.modelpkg.package as package_mod
from tumorseg_core.errors import ModelAlreadyInstalledError, ModelPackageError
from tumorseg_core.imaging.segments import SegmentInfo
from tumorseg_core.modelpkg.manifest import Manifest
from tumorseg_core.modelpkg.package import (
    install_package,
    installed_models,
    open_package,
    read_manifest,
    sha256_file,
    write_package,
)
from tumorseg_core.models.registry import build_network

KWARGS = {"in_channels": 1, "out_channels": 3, "features": [2, 4]}


def make_manifest(**changes) -> dict:
    manifest = {
        "format_version": 1,
        "name": "tiny-test",
        "version": "0.1.0",
        "license": "Apache-2.0",
        "description": "tiny 3D U-Net for tests",
        "architecture": "unet3d",
        "kwargs": dict(KWARGS),
        "inputs": [{"modality": "MRI", "normalization": {"type": "zscore", "nonzero": True, "clip_percentiles": [0.5, 99.5]}}],
        "spacing": [1.0, 1.5, 2.0],
        "orientation": "LPS",
        "patch_size": [8, 4, 6],
        "output": {"type": "softmax", "labels": [
            {"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2],
             "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                             "type": ["SCT", "108369006", "Neoplasm"]}},
            {"value": 2, "name": "Edema", "color": [0.2, 0.6, 0.9]},
        ]},
        "postprocessing": [{"label": 1, "min_volume_mm3": 20, "fill_holes": True}],
        "inference": {"overlap": 0.5},
        "metrics": {"validation": {"dice": 0.5}},
        "files": {},
    }
    manifest.update(changes)
    return manifest


def tiny_nets(n: int = 2) -> list:
    nets = []
    for i in range(n):
        torch.manual_seed(i)
        nets.append(build_network("unet3d", KWARGS).eval())
    return nets


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def pkg_dir(tmp_path) -> Path:
    return write_package(tmp_path / "pkg", make_manifest(), [n.state_dict() for n in tiny_nets()], readme="# tiny\n")


def edit_manifest(pkg: Path, **changes) -> None:
    data = json.loads((pkg / "manifest.json").read_text())
    data.update(changes)
    (pkg / "manifest.json").write_text(json.dumps(data))


def test_round_trip_gives_identical_outputs(pkg_dir):
    assert sorted(p.name for p in pkg_dir.iterdir()) == ["README.md", "fold0.safetensors", "fold1.safetensors", "manifest.json"]
    pkg = open_package(pkg_dir)
    assert [p.name for p in pkg.weight_files] == ["fold0.safetensors", "fold1.safetensors"]
    loaded = pkg.load_networks("cpu")
    x = torch.randn(1, 1, 6, 4, 8)
    with torch.no_grad():
        for original, net in zip(tiny_nets(), loaded):
            assert not net.training
            torch.testing.assert_close(net(x), original(x), rtol=0, atol=0)
    assert open_package(pkg_dir).sha256 == pkg.sha256 and len(pkg.sha256) == 64


def test_manifest_accessors(pkg_dir):
    m = open_package(pkg_dir).manifest
    assert m.spacing_xyz == (1.0, 1.5, 2.0)
    assert m.patch_size_xyz == (8, 4, 6) and m.patch_size_zyx == (6, 4, 8)
    assert m.input_modalities == ["MRI"] and m.num_inputs == 1 and m.output_type == "softmax"
    assert m.orientation == "LPS" and m.size_divisor_zyx == (2, 2, 2)
    segments = m.segments
    assert all(isinstance(s, SegmentInfo) for s in segments)
    assert [(s.value, s.name) for s in segments] == [(1, "Tumor"), (2, "Edema")]
    assert segments[0].terminology["type"][1] == "108369006" and segments[1].terminology is None
    assert tuple(segments[0].color) == (0.9, 0.3, 0.2)
    assert set(m.files) == {"README.md", "fold0.safetensors", "fold1.safetensors"}
    assert m.name == "tiny-test" and m.version == "0.1.0" and m.format_version == 1
    assert m.inference == {"overlap": 0.5} and m.metrics == {"validation": {"dice": 0.5}}
    assert m.postprocessing == [{"label": 1, "min_volume_mm3": 20, "fill_holes": True}]


def test_manifest_has_no_dict_access_but_typed_accessors_and_to_dict(pkg_dir):
    """The manifest is read through typed accessors; ``to_dict()`` is the raw data, a private copy."""
    m = open_package(pkg_dir).manifest
    with pytest.raises(TypeError):
        m["name"]  # noqa: B018 - no dict access any more
    assert not hasattr(m, "get") and not hasattr(m, "labels") and not hasattr(m, "label_dicts")
    data = m.to_dict()
    expected = make_manifest()
    del data["files"], expected["files"]
    assert data == expected  # every field as written (format_version included)
    raw = m.to_dict()
    raw["output"]["labels"][0]["name"] = "changed"
    raw["inference"]["overlap"] = 0.0
    m.segments[0].terminology["type"][1] = "changed"
    assert m.segments[0].name == "Tumor" and m.inference == {"overlap": 0.5}
    assert m.segments[0].terminology["type"][1] == "108369006"  # segments are copies too
    assert Manifest(m.to_dict()).to_dict() == m.to_dict()


def test_sigmoid_segments_are_the_regions():
    manifest = make_manifest(output={"type": "sigmoid", "regions": [
        {"value": 2, "name": "Whole", "color": [0.1, 0.2, 0.3]},
        {"value": 1, "name": "Core", "color": [0.4, 0.5, 0.6]},
        {"value": 4, "name": "Enhancing", "color": [0.7, 0.8, 0.9]}]})
    manifest["files"] = {"fold0.safetensors": "a" * 64}
    m = Manifest(manifest)
    assert [(s.value, s.name) for s in m.segments] == [(2, "Whole"), (1, "Core"), (4, "Enhancing")]
    assert m.segments[2].color == (0.7, 0.8, 0.9)
    # written before 'regions' existed: a sigmoid output listing 'labels' still reads
    old = make_manifest(output={"type": "sigmoid", "labels": manifest["output"]["regions"]})
    old["files"] = manifest["files"]
    assert Manifest(old).segments == m.segments


def test_predictor_settings_softmax(pkg_dir):
    settings = open_package(pkg_dir).manifest.predictor_settings()
    assert settings == {
        "patch_size_zyx": (6, 4, 8), "num_outputs": 3, "output_type": "softmax", "in_channels": 1,
        "modalities": ["MRI"], "size_divisor": (2, 2, 2),
        "overlap": 0.5,  # the manifest's inference default
    }


def test_predictor_settings_sigmoid_with_inference_defaults():
    manifest = make_manifest(
        output={"type": "sigmoid", "regions": [
            {"value": 3, "name": "Whole", "color": [0.1, 0.2, 0.3]},
            {"value": 1, "name": "Core", "color": [0.4, 0.5, 0.6]},
            {"value": 7, "name": "Enhancing", "color": [0.7, 0.8, 0.9]}]},
        inputs=[{"modality": m, "normalization": {"type": "zscore"}} for m in ("T1", "FLAIR")],
        kwargs={**KWARGS, "in_channels": 2},
        inference={"overlap": 0.25, "tta": True, "window_batch": 3, "amp": False, "sigma_scale": 0.25,
                   "tta_axes": [0], "window_batch_gpu": None})
    manifest["files"] = {"fold0.safetensors": "a" * 64}
    settings = Manifest(manifest).predictor_settings()
    assert settings == {
        "patch_size_zyx": (6, 4, 8), "num_outputs": 3, "output_type": "sigmoid", "in_channels": 2,
        "modalities": ["T1", "FLAIR"], "size_divisor": (2, 2, 2), "region_values": [3, 1, 7],
        "overlap": 0.25, "tta": True, "window_batch": 3, "amp": False, "sigma_scale": 0.25,
    }  # inference keys a Predictor does not take are not passed on
    no_defaults = Manifest({**manifest, "inference": {"overlap": None}}).predictor_settings()
    assert not {"overlap", "tta", "window_batch", "amp", "sigma_scale"} & set(no_defaults)


@pytest.mark.parametrize("output, match", [
    ({"type": "softmax", "labels": [{"value": 1, "name": "x", "color": [1, 0, 0]}],
      "regions": [{"value": 1, "name": "x", "color": [1, 0, 0]}]}, r"output\.regions.*belongs to sigmoid"),
    ({"type": "softmax", "regions": [{"value": 1, "name": "x", "color": [1, 0, 0]}]}, r"output\.regions"),
    ({"type": "sigmoid", "labels": [{"value": 1, "name": "x", "color": [1, 0, 0]}] * 1
      + [{"value": 2, "name": "y", "color": [0, 1, 0]}, {"value": 3, "name": "z", "color": [0, 0, 1]}],
      "regions": [{"value": 1, "name": "x", "color": [1, 0, 0]}, {"value": 2, "name": "y", "color": [0, 1, 0]},
                  {"value": 3, "name": "z", "color": [0, 0, 1]}]}, r"output\.labels.*both given"),
    ({"type": "softmax", "labels": [{"value": 1, "name": "x", "color": [1, 0, 0]}], "classes": 3},
     r"output\.classes.*is unknown"),
])
def test_refused_output_shapes(output, match):
    manifest = make_manifest(output=output)
    manifest["files"] = {"fold0.safetensors": "a" * 64}
    with pytest.raises(ModelPackageError, match=match):
        Manifest(manifest)


def test_tampered_weights_refused(pkg_dir):
    weights = pkg_dir / "fold1.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="does not match its sha256"):
        open_package(pkg_dir)


def test_weights_swapped_after_open_refused(pkg_dir):
    pkg = open_package(pkg_dir)
    (pkg_dir / "fold0.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(ModelPackageError, match="changed since"):
        pkg.load_networks()


def test_missing_file_refused(pkg_dir):
    (pkg_dir / "README.md").unlink()
    with pytest.raises(ModelPackageError, match="missing 'README.md'"):
        open_package(pkg_dir)


def test_extra_file_refused(pkg_dir):
    (pkg_dir / "evil.py").write_text("import os\n")
    with pytest.raises(ModelPackageError, match="'evil.py'.*does not list"):
        open_package(pkg_dir)


def test_unknown_architecture_refused(pkg_dir):
    edit_manifest(pkg_dir, architecture="resnet_evil")
    with pytest.raises(ModelPackageError, match="unknown architecture 'resnet_evil'"):
        open_package(pkg_dir)


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"name": NaN}', "not valid JSON"),
    ("[1, 2]", "JSON object"),
])
def test_invalid_manifest_json_refused(pkg_dir, text, match):
    (pkg_dir / "manifest.json").write_text(text)
    with pytest.raises(ModelPackageError, match=match):
        open_package(pkg_dir)


def test_huge_manifest_refused(pkg_dir):
    (pkg_dir / "manifest.json").write_text(" " * (1024 * 1024 + 1))
    with pytest.raises(ModelPackageError, match="larger than 1 MB"):
        open_package(pkg_dir)


def test_manifest_missing_key_refused(pkg_dir):
    data = json.loads((pkg_dir / "manifest.json").read_text())
    del data["spacing"]
    (pkg_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match="missing required field.*spacing"):
        open_package(pkg_dir)


@pytest.mark.parametrize("changes, field", [
    ({"spacing": [1, 1]}, "spacing"),
    ({"patch_size": [8, 5, 6]}, "patch_size"),
    ({"orientation": "LLS"}, "orientation"),
    ({"name": "../evil"}, "name"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"modality": "CT", "normalization": {"type": "ct", "window": [300, -100]}}]}, "window"),
    ({"inputs": [{"modality": "T1", "normalization": {"type": "none"}}] * 2}, "in_channels"),
    ({"output": {"type": "softmax", "labels": [{"value": 3, "name": "x", "color": [1, 0, 0]}]}}, "output.labels"),
    ({"output": {"type": "softmax", "labels": [{"value": 1, "name": "x", "color": [2, 0, 0]}]}}, "color"),
    ({"output": {"type": "probability", "labels": []}}, "output.type"),
    ({"format_version": 99}, "newer"),
    ({"inference": {"overlap": 1.5}}, "overlap"),
    ({"metrics": {"validation": {"dice": float("nan")}}}, "not plain JSON"),
])
def test_invalid_manifest_fields_named(changes, field):
    manifest = make_manifest(**changes)
    manifest["files"] = {"fold0.safetensors": "a" * 64}
    with pytest.raises(ModelPackageError, match=field):
        Manifest(manifest)


def test_files_entry_with_path_refused(pkg_dir):
    data = json.loads((pkg_dir / "manifest.json").read_text())
    data["files"]["../outside.txt"] = "a" * 64
    (pkg_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match="invalid file name"):
        open_package(pkg_dir)


def test_mismatched_weight_shapes_refused(pkg_dir, tmp_path):
    other = build_network("unet3d", {"in_channels": 1, "out_channels": 3, "features": [2, 8]}).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(pkg_dir / "fold0.safetensors"))
    data = json.loads((pkg_dir / "manifest.json").read_text())
    data["files"]["fold0.safetensors"] = sha256_file(pkg_dir / "fold0.safetensors")
    (pkg_dir / "manifest.json").write_text(json.dumps(data))
    pkg = open_package(pkg_dir)  # hashes are right: the mismatch shows when loading
    with pytest.raises(ModelPackageError, match="do not match the architecture.*shape"):
        pkg.load_networks()
    with pytest.raises(ModelPackageError, match="do not match the architecture"):
        write_package(tmp_path / "bad", make_manifest(), [other])
    assert not (tmp_path / "bad").exists()


def test_write_package_refuses_existing_unless_overwrite(pkg_dir):
    with pytest.raises(ModelPackageError, match="already exists"):
        write_package(pkg_dir, make_manifest(), [tiny_nets(1)[0].state_dict()])
    write_package(pkg_dir, make_manifest(version="0.2.0"), [tiny_nets(1)[0].state_dict()], overwrite=True)
    pkg = open_package(pkg_dir)
    assert pkg.manifest.version == "0.2.0" and len(pkg.weight_files) == 1
    assert sorted(p.name for p in pkg_dir.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_package_is_readable_by_others_like_any_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_package(tmp_path / "shared", make_manifest(), [tiny_nets(1)[0].state_dict()], readme="hi")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "fold0.safetensors": 0o644, "README.md": 0o644, "manifest.json": 0o644}


def _zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, prefix + p.name)
    return zip_path


@pytest.mark.parametrize("prefix", ["", "tiny-test/"])
def test_zip_package_opens(pkg_dir, tmp_path, prefix):
    zpath = _zip_folder(pkg_dir, tmp_path / "tiny.zip", prefix)
    pkg = open_package(zpath)
    assert pkg.root.parent == tmp_path / "cache" / "packages"
    assert pkg.root.name == sha256_file(zpath)
    assert len(pkg.load_networks()) == 2
    assert open_package(zpath).root == pkg.root  # cached extraction reused, still verified
    (pkg.root / "fold0.safetensors").write_bytes(b"altered cache")
    assert len(open_package(zpath).load_networks()) == 2  # an altered cache is re-extracted


@pytest.mark.parametrize("entry", ["../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "a/../../evil.txt", "..\\evil.txt"])
def test_zip_path_traversal_refused(pkg_dir, tmp_path, entry):
    zpath = _zip_folder(pkg_dir, tmp_path / "evil.zip")
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr(zipfile.ZipInfo(entry), b"owned")
    with pytest.raises(ModelPackageError, match="unsafe entry"):
        open_package(zpath)
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in (tmp_path / "cache" / "packages").iterdir()] == []


def test_zip_symlink_and_bomb_refused(pkg_dir, tmp_path, monkeypatch):
    zpath = _zip_folder(pkg_dir, tmp_path / "link.zip")
    with zipfile.ZipFile(zpath, "a") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ModelPackageError, match="symbolic link"):
        open_package(zpath)
    monkeypatch.setattr(package_mod, "MAX_UNCOMPRESSED_BYTES", 1000)
    with pytest.raises(ModelPackageError, match="unpacks to more than"):
        open_package(_zip_folder(pkg_dir, tmp_path / "bomb.zip"))
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(ModelPackageError, match="not a readable zip"):
        open_package(tmp_path / "junk.zip")


def test_install_and_list_models(pkg_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(package_mod, "SHIPPED_DEFAULT", tmp_path / "no-default")
    monkeypatch.setattr(package_mod, "SHIPPED_REALTIME", tmp_path / "no-realtime")
    assert installed_models() == []
    dest = install_package(pkg_dir)
    assert dest == tmp_path / "models" / "tiny-test"
    with pytest.raises(ModelAlreadyInstalledError, match="already installed") as info:
        install_package(pkg_dir)
    assert isinstance(info.value, ModelPackageError)  # callers catching the general error still do
    assert info.value.name == "tiny-test" and Path(info.value.folder) == tmp_path / "models"
    install_package(_zip_folder(pkg_dir, tmp_path / "p.zip"), overwrite=True)
    assert open_package("tiny-test").root == dest
    broken = write_package(tmp_path / "models" / "broken", make_manifest(name="broken"), [tiny_nets(1)[0].state_dict()])
    (broken / "README.md").write_text("extra")  # not listed: package is broken
    infos = installed_models()
    assert [(i.key, i.name, i.version, i.input_modalities, i.source) for i in infos] == [
        ("tiny-test", "tiny-test", "0.1.0", ["MRI"], "user")]
    monkeypatch.setattr(package_mod, "SHIPPED_DEFAULT", pkg_dir)
    assert [i.key for i in installed_models()] == ["default", "tiny-test"]
    assert open_package("default").root == pkg_dir


def test_already_installed_error_from_a_zip_and_overwrite(pkg_dir, tmp_path, monkeypatch):
    zpath = _zip_folder(pkg_dir, tmp_path / "p.zip")
    dest = install_package(zpath)
    before = sha256_file(dest / "fold0.safetensors")
    with pytest.raises(ModelAlreadyInstalledError, match="'tiny-test' is already installed"):
        install_package(zpath)
    assert sha256_file(dest / "fold0.safetensors") == before  # the installed copy was left alone
    assert install_package(zpath, overwrite=True) == dest


@pytest.mark.parametrize("how", ["folder", "zip", "zipped folder", "installed name"])
def test_read_manifest_does_not_hash(pkg_dir, tmp_path, how):
    """read_manifest gives the manifest of a package whose weights were altered; open_package refuses it."""
    weights = pkg_dir / "fold1.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    if how == "folder":
        source = pkg_dir
    elif how == "installed name":
        (tmp_path / "models").mkdir()
        pkg_dir.rename(tmp_path / "models" / "tiny-test")
        source = "tiny-test"
    else:
        source = _zip_folder(pkg_dir, tmp_path / "tiny.zip", "tiny-test/" if how == "zipped folder" else "")
    m = read_manifest(source)
    assert isinstance(m, Manifest) and m.name == "tiny-test" and m.input_modalities == ["MRI"]
    assert [s.name for s in m.segments] == ["Tumor", "Edema"]
    assert m.to_dict() == json.loads((tmp_path / "models" / "tiny-test" / "manifest.json" if how == "installed name"
                                      else pkg_dir / "manifest.json").read_text())
    assert not (tmp_path / "cache").exists()  # nothing was extracted
    with pytest.raises(ModelPackageError, match="does not match its sha256"):
        open_package(source)


def test_read_manifest_still_validates(pkg_dir, tmp_path):
    edit_manifest(pkg_dir, architecture="resnet_evil")
    with pytest.raises(ModelPackageError, match="unknown architecture 'resnet_evil'"):
        read_manifest(pkg_dir)
    with pytest.raises(ModelPackageError, match="unknown architecture 'resnet_evil'"):
        read_manifest(_zip_folder(pkg_dir, tmp_path / "evil.zip"))
    (pkg_dir / "manifest.json").unlink()
    with pytest.raises(ModelPackageError, match="no manifest.json"):
        read_manifest(pkg_dir)
    with pytest.raises(ModelPackageError, match="no manifest.json"):
        read_manifest(_zip_folder(pkg_dir, tmp_path / "none.zip"))
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(ModelPackageError, match="not a readable zip"):
        read_manifest(tmp_path / "junk.zip")
    with pytest.raises(ModelPackageError, match="no model package 'nope'"):
        read_manifest("nope")


def test_installed_models_without_verifying(pkg_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(package_mod, "SHIPPED_DEFAULT", tmp_path / "no-default")
    monkeypatch.setattr(package_mod, "SHIPPED_REALTIME", tmp_path / "no-realtime")
    install_package(pkg_dir)
    altered = write_package(tmp_path / "models" / "altered", make_manifest(name="altered"),
                            [tiny_nets(1)[0].state_dict()])
    (altered / "fold0.safetensors").write_bytes(b"not the listed weights")
    invalid = write_package(tmp_path / "models" / "invalid", make_manifest(name="invalid"),
                            [tiny_nets(1)[0].state_dict()])
    (invalid / "manifest.json").write_text("{not json")
    calls = []
    monkeypatch.setattr(package_mod, "sha256_file", lambda path: calls.append(path) or "0" * 64)
    fast = installed_models(tmp_path / "models", verify=False)
    assert calls == []  # no file was hashed
    # the altered weights are listed (the worker verifies before running); a broken manifest is not
    assert [(i.key, i.name, i.input_modalities, i.source) for i in fast] == [
        ("altered", "altered", ["MRI"], "user"), ("tiny-test", "tiny-test", ["MRI"], "user")]
    monkeypatch.undo()
    monkeypatch.setattr(package_mod, "SHIPPED_DEFAULT", tmp_path / "no-default")
    monkeypatch.setattr(package_mod, "SHIPPED_REALTIME", tmp_path / "no-realtime")
    assert [i.key for i in installed_models(tmp_path / "models")] == ["tiny-test"]  # verify=True hashes


def test_missing_default_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setattr(package_mod, "SHIPPED_DEFAULT", tmp_path / "no-default")
    monkeypatch.setattr(package_mod, "SHIPPED_REALTIME", tmp_path / "no-realtime")
    with pytest.raises(ModelPackageError, match="default model is not installed"):
        open_package("default")
    with pytest.raises(ModelPackageError, match="no model package 'nope'"):
        open_package("nope")


def test_no_checkpoint_loading_outside_the_converter():
    """Only convert.py may call torch.load, always weights_only=True; nothing imports pickle."""
    root = Path(tumorseg_core.__file__).parent
    forbidden_modules = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
    checked = 0
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        checked += 1
        if path.relative_to(root).as_posix() != "modelpkg/convert.py":
            assert "torch.load(" not in text, path
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden_modules, path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in forbidden_modules, path
            elif isinstance(node, ast.Call):
                for kw in node.keywords:
                    unsafe = (kw.arg == "weights_only" and not (isinstance(kw.value, ast.Constant) and kw.value.value is True))
                    unsafe |= kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
                    assert not unsafe, f"{path}:{node.lineno}"
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", "") == "torch":
                    assert any(kw.arg == "weights_only" for kw in node.keywords), f"{path}:{node.lineno}"
    assert checked > 5
    assert "pickle" not in (root / "modelpkg" / "convert.py").read_text(encoding="utf-8")


NNUNET_KWARGS = {
    "in_channels": 1, "out_channels": 2, "n_stages": 2, "features_per_stage": [4, 8],
    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [2, 2], "n_conv_per_stage_decoder": [1],
    "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}


def _nnunet_package(tmp_path, state):
    manifest = make_manifest(architecture="nnunet_plainconv", kwargs=dict(NNUNET_KWARGS), patch_size=[8, 8, 8],
                             output={"type": "softmax", "labels": [{"value": 1, "name": "Tumor", "color": [1, 0, 0]}]})
    return write_package(tmp_path / "nnunet-pkg", manifest, [state])


def test_a_tensor_reachable_under_several_names_is_stored_once(tmp_path):
    """nnU-Net's U-Nets reach each encoder weight under four names; the package stores it once
    and the loaded network is the original, every name included."""
    from safetensors import safe_open

    torch.manual_seed(3)
    net = build_network("nnunet_plainconv", NNUNET_KWARGS).eval()
    state = net.state_dict()
    pkg = _nnunet_package(tmp_path, state)
    with safe_open(str(pkg / "fold0.safetensors"), "pt") as stored:
        keys = set(stored.keys())
    unique = {p.data_ptr() for p in net.parameters()} | {b.data_ptr() for b in net.buffers()}
    assert len(keys) == len(unique) < len(state)
    assert "encoder.stages.0.0.convs.0.conv.weight" in keys
    assert "decoder.encoder.stages.0.0.convs.0.conv.weight" not in keys
    assert "encoder.stages.0.0.convs.0.all_modules.0.weight" not in keys
    loaded = open_package(pkg).load_networks()[0]
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, state[name]), name
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    # format 5: a reader that cannot fill the aliases in refuses the package with a clear message
    assert json.loads((pkg / "manifest.json").read_text())["format_version"] == 5
    from tumorseg_core.modelpkg import manifest as manifest_module

    data = json.loads((pkg / "manifest.json").read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_module, "FORMAT_VERSION", 4)  # the reader before this format
        with pytest.raises(ModelPackageError, match="format 5 is newer than this TumorSeg supports.*update TumorSeg"):
            Manifest(data)
    from model_factory import make_tiny_package  # TumorSeg's own networks share no tensor: no bump

    assert json.loads((make_tiny_package(tmp_path / "own") / "manifest.json").read_text())["format_version"] == 1


def test_aliases_with_different_values_are_refused(tmp_path):
    torch.manual_seed(4)
    net = build_network("nnunet_plainconv", NNUNET_KWARGS).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["decoder.encoder.stages.0.0.convs.0.conv.weight"] += 1.0
    with pytest.raises(ModelPackageError, match="one tensor of the network but hold different values"):
        _nnunet_package(tmp_path, state)
    assert not (tmp_path / "nnunet-pkg").exists()
    # packages written by older TumorSeg versions store every name: they load, unless an alias was altered
    pkg = _nnunet_package(tmp_path, net.state_dict())

    def store(weights):
        save_file({k: v.contiguous().clone() for k, v in weights.items()}, str(pkg / "fold0.safetensors"))
        data = json.loads((pkg / "manifest.json").read_text())
        data["files"]["fold0.safetensors"] = sha256_file(pkg / "fold0.safetensors")
        (pkg / "manifest.json").write_text(json.dumps(data))

    store(net.state_dict())
    assert torch.equal(open_package(pkg).load_networks()[0].state_dict()["decoder.encoder.stages.0.0.convs.0.conv.weight"],
                       net.state_dict()["encoder.stages.0.0.convs.0.conv.weight"])
    store(state)
    with pytest.raises(ModelPackageError, match="hold different values; rebuild the package"):
        open_package(pkg).load_networks()
